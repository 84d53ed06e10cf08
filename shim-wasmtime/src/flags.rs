//! The shim's own flags, answered before containerd-shim's bootstrap (which
//! needs `TTRPC_ADDRESS` and a bundle, and knows neither flag's answer):
//!
//! - `-v` / `-version`: name, version and revision, as
//!   `containerd-shim-runc-v2 -v` prints them.
//! - `-info`: a `containerd.types.RuntimeInfo` protobuf on stdout, which
//!   containerd 2.x asks for to introspect a runtime (`ctr plugins
//!   inspect-runtime`, and CRI's runtime handler features). containerd may
//!   write the runtime's options, an `Any`, on stdin; they are echoed back.
//!
//! Both work with no containerd, no environment and any working folder, and
//! build no engine.

use std::io::{IsTerminal, Read, Write};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

/// The binary's name, as containerd finds it for [`crate::RUNTIME_ID`].
pub const BINARY_NAME: &str = "containerd-shim-wasmtime-v1";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the shim was built from (empty outside a checkout).
pub const REVISION: &str = env!("SHIM_REVISION");
pub const WASMTIME_VERSION: &str = env!("SHIM_WASMTIME_VERSION");
const RUSTC_VERSION: &str = env!("SHIM_RUSTC_VERSION");

/// The `Any` type of an OCI runtime features document, as runc's shim sends it.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// One of the flags this module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnFlag {
    Version,
    Info,
}

/// Which of our own flags the command line asks for, parsed the way
/// containerd-shim parses it (Go flag syntax). `None` when neither: the
/// bootstrap takes over, and reports a malformed command line itself.
pub fn own_flag(args: &[std::ffi::OsString]) -> Option<OwnFlag> {
    let flags = containerd_shim::parse(args).ok()?;
    if flags.version {
        Some(OwnFlag::Version)
    } else if flags.info {
        Some(OwnFlag::Info)
    } else {
        None
    }
}

/// Answers the flag on stdout; returns the process's exit code.
pub fn answer(flag: OwnFlag) -> i32 {
    let res = match flag {
        OwnFlag::Version => std::io::stdout().write_all(version_text().as_bytes()),
        OwnFlag::Info => info().and_then(|i| {
            let bytes = i.write_to_bytes().map_err(std::io::Error::other)?;
            let mut out = std::io::stdout();
            out.write_all(&bytes)?;
            out.flush()
        }),
    };
    match res {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("{BINARY_NAME}: {err}");
            1
        }
    }
}

/// What `-v` prints.
pub fn version_text() -> String {
    let revision = if REVISION.is_empty() {
        "unknown"
    } else {
        REVISION
    };
    format!(
        "{BINARY_NAME}:\n  Version:  {VERSION}\n  Revision: {revision}\n  Wasmtime: {WASMTIME_VERSION}\n  Rust version: {RUSTC_VERSION}\n\n"
    )
}

/// The `RuntimeInfo` `-info` prints, with the options read from stdin.
fn info() -> std::io::Result<RuntimeInfo> {
    let mut options = Vec::new();
    // containerd writes the options and closes stdin; a person at a terminal
    // writes nothing, so do not wait for them.
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        stdin.lock().read_to_end(&mut options)?;
    }
    runtime_info(&options)
}

/// The `RuntimeInfo` for the given options (an encoded `Any`, or nothing).
pub fn runtime_info(options: &[u8]) -> std::io::Result<RuntimeInfo> {
    let options = if options.is_empty() {
        MessageField::none()
    } else {
        let any = Any::parse_from_bytes(options).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the runtime options on stdin are not a protobuf Any: {e}"),
            )
        })?;
        MessageField::some(any)
    };
    Ok(RuntimeInfo {
        name: crate::RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
            ..Default::default()
        }),
        options,
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features().to_string().into_bytes(),
            ..Default::default()
        }),
        annotations: [(
            "io.containerd.wasmtime.v1.wasmtime.version".to_string(),
            WASMTIME_VERSION.to_string(),
        )]
        .into(),
        ..Default::default()
    })
}

/// What the shim supports, as an OCI runtime features document
/// (runtime-spec `features.md`). Guests get no hooks, no seccomp and no
/// AppArmor or SELinux: they are sandboxed by WebAssembly. Mount options
/// are those the shim reads for bind mounts. Linux containers go to runc,
/// whose own features containerd learns from runc's shim.
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": [],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.containerd.wasmtime.v1.wasmtime.version": WASMTIME_VERSION,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn flags_are_told_apart() {
        assert_eq!(own_flag(&args(&["-v"])), Some(OwnFlag::Version));
        assert_eq!(own_flag(&args(&["-version"])), Some(OwnFlag::Version));
        assert_eq!(own_flag(&args(&["-info"])), Some(OwnFlag::Info));
        assert_eq!(
            own_flag(&args(&["-namespace", "ns", "-id", "x", "start"])),
            None
        );
    }

    #[test]
    fn info_echoes_options_and_names_the_runtime() {
        let opts = Any {
            type_url: "example/Options".into(),
            value: b"x".to_vec(),
            ..Default::default()
        };
        let info = runtime_info(&opts.write_to_bytes().unwrap()).unwrap();
        assert_eq!(info.name, "io.containerd.wasmtime.v1");
        assert_eq!(info.options.type_url, "example/Options");
        assert_eq!(info.version.version, VERSION);
        let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(features["ociVersionMin"], "1.0.0");
        assert!(runtime_info(b"\xff\xff").is_err());
        assert!(runtime_info(b"").unwrap().options.is_none());
    }
}
