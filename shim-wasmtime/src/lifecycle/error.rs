//! Errors of the task service, and how each maps to a ttrpc status code.
//!
//! containerd turns the status code back into one of its `errdefs` errors
//! (`not found`, `failed precondition`, ...), and `ctr` prints the message, so
//! every message names the container and the cause.

use containerd_shim_protos::ttrpc;

/// The kind of failure, which decides the ttrpc status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or the spec asks for something we cannot do.
    InvalidArgument,
    /// No such task, or no such process.
    NotFound,
    /// A task with that id already exists.
    AlreadyExists,
    /// The task is in the wrong state for the request.
    FailedPrecondition,
    /// The call is not part of what this shim implements.
    Unimplemented,
    /// The shim is exiting and takes nothing new.
    Unavailable,
    /// Anything else: I/O, mounts, the engine.
    Internal,
}

/// An error with a kind and a chain of context.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    source: anyhow::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            source: anyhow::anyhow!("{message}"),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Wraps any error with a kind. The error's own chain is kept.
    pub fn wrap(kind: Kind, err: impl Into<anyhow::Error>) -> Self {
        Self {
            kind,
            source: err.into(),
        }
    }

    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::new(Kind::NotFound, message)
    }

    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }

    pub fn precondition(message: impl std::fmt::Display) -> Self {
        Self::new(Kind::FailedPrecondition, message)
    }

    pub fn unimplemented(call: &str) -> Self {
        Self::new(
            Kind::Unimplemented,
            format!("{call} is not implemented by the wasmtime shim"),
        )
    }

    /// Adds context in front of the message, keeping the kind.
    pub fn context(self, context: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        Self {
            kind: self.kind,
            source: self.source.context(context),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:#}` prints the whole chain on one line: "a: b: c".
        write!(f, "{:#}", self.source)
    }
}

impl From<anyhow::Error> for Error {
    fn from(source: anyhow::Error) -> Self {
        Self {
            kind: Kind::Internal,
            source,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::wrap(Kind::Internal, err)
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        let code = match err.kind {
            Kind::InvalidArgument => ttrpc::Code::INVALID_ARGUMENT,
            Kind::NotFound => ttrpc::Code::NOT_FOUND,
            Kind::AlreadyExists => ttrpc::Code::ALREADY_EXISTS,
            Kind::FailedPrecondition => ttrpc::Code::FAILED_PRECONDITION,
            Kind::Unimplemented => ttrpc::Code::UNIMPLEMENTED,
            Kind::Unavailable => ttrpc::Code::UNAVAILABLE,
            Kind::Internal => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
    }
}

/// Adds a kind and context to a `Result` whose error is anything `anyhow` takes.
pub trait ResultExt<T> {
    fn kind(self, kind: Kind, context: impl std::fmt::Display + Send + Sync + 'static)
        -> Result<T>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for std::result::Result<T, E> {
    fn kind(
        self,
        kind: Kind,
        context: impl std::fmt::Display + Send + Sync + 'static,
    ) -> Result<T> {
        self.map_err(|e| Error::wrap(kind, e.into().context(context)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_code_and_message_survive_the_mapping() {
        let err = Error::not_found("no module").context("container c1");
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(err) else {
            panic!("expected an RPC status");
        };
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(status.message(), "container c1: no module");
    }

    #[test]
    fn unimplemented_names_the_call() {
        let ttrpc::Error::RpcStatus(status) = Error::unimplemented("Exec").into() else {
            panic!("expected an RPC status");
        };
        assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED);
        assert!(status.message().contains("Exec"));
    }
}
