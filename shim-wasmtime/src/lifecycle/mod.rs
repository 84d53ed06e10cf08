//! The engine-neutral task lifecycle: states, stdio, exits, events.
//!
//! Nothing in here knows about Wasmtime. An engine plugs in through two small
//! traits: [`Runtime`] prepares a task in Create (so bad input fails early,
//! with the container's name in the error), and [`Prepared`] starts it,
//! returning a future that runs the guest to its exit, on the runtime of the
//! guest's network namespace ([`netns`]) when it has sockets. Killing a task
//! aborts that future, which is why engines must yield regularly.

pub mod binds;
pub mod cgroup;
pub mod devices;
pub mod entrypoint;
pub mod error;
pub mod events;
pub mod ledger;
pub mod limits;
pub mod netns;
pub mod pause;
pub mod rootfs;
pub mod stdio;
pub mod task;
pub mod throttle;
pub mod usage;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncRead;

pub use self::limits::{Limits, LiveLimits};
pub use self::stdio::Writer;
pub use self::usage::Usage;

/// What an engine is told about a container when it prepares it.
#[derive(Debug)]
pub struct TaskSpec {
    pub id: String,
    /// The mounted root filesystem.
    pub rootfs: PathBuf,
    /// Whether the spec's bind mounts are mounted inside `rootfs` ([`binds`]),
    /// which is then the container's whole tree.
    pub binds_mounted: bool,
    pub spec: oci_spec::runtime::Spec,
    /// The task's resource limits, for the engine to enforce as they are
    /// at each memory growth and epoch tick: Update changes them.
    pub limits: Arc<LiveLimits>,
}

/// Stop requests for a guest that stops gracefully: the signal (SIGTERM or
/// SIGINT) once one arrives. See [`Prepared::stops_gracefully`].
pub type StopRequests = tokio::sync::watch::Receiver<Option<u32>>;

/// The guest's ends of its standard streams, and its stop requests.
pub struct GuestIo {
    pub stdin: Box<dyn AsyncRead + Send + Sync + Unpin>,
    pub stdout: Writer,
    pub stderr: Writer,
    pub stop: StopRequests,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    /// Why it ended, when that is not a normal exit (a trap, a failed
    /// instantiation). It is written to the task's stderr.
    pub reason: Option<String>,
}

impl Exit {
    pub fn code(code: u32) -> Self {
        Self { code, reason: None }
    }
}

/// A running guest: resolves when it exits. Dropping it stops the guest.
pub type Running = Pin<Box<dyn Future<Output = Exit> + Send>>;

/// An engine that runs tasks.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Loads and checks everything the task needs. Called in Create.
    async fn prepare(
        &self,
        task: &TaskSpec,
        usage: Arc<Usage>,
    ) -> anyhow::Result<Box<dyn Prepared>>;
}

/// A task that is ready to start.
#[async_trait]
pub trait Prepared: Send {
    /// The network namespace the guest must run in, on that namespace's
    /// runtime, from instantiation on (instantiating runs guest code too);
    /// `None`: the shim's own, on the shim's runtime.
    fn namespace(&self) -> Option<Arc<netns::Namespace>> {
        None
    }
    /// Whether SIGTERM and SIGINT ask the guest to finish its work and exit
    /// (through [`GuestIo::stop`]) rather than stop it at once: a service
    /// drains its requests. Other guests, which cannot catch a signal, are
    /// stopped at once by any signal that is not ignored by default.
    fn stops_gracefully(&self) -> bool {
        false
    }
    /// Instantiates the guest. Called in Start; an error fails Start.
    async fn start(self: Box<Self>, io: GuestIo) -> anyhow::Result<Running>;
}
