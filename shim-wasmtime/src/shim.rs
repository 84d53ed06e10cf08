//! The shim process: what containerd runs as `containerd-shim-wasmtime-v1`.
//!
//! - `start` finds or spawns the long-lived server for this container's group
//!   and prints its socket address (with the task API version on containerd
//!   2.x: [`crate::task_api`]). Containers of one Kubernetes pod share a
//!   group (`io.kubernetes.cri.sandbox-id`), so one shim serves a whole pod;
//!   under `ctr` each container gets its own.
//! - `delete` cleans a bundle up after a shim died without doing so (containerd
//!   also runs it after a live shim's task is gone; it then finds little to
//!   do), and, for a dead shim's pod sandbox, after the pod's other containers
//!   ([`crate::lifecycle::ledger`]).
//! - Containers whose entrypoint is a Linux executable go on to runc's own
//!   shim ([`crate::runc`]), so one RuntimeClass serves a pod's pause
//!   container and sidecars beside its wasm containers.
//! - With no action, the process is the server: it serves the Task API until
//!   its last task is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, Error, Flags, StartOpts};
use containerd_shim_protos::protobuf::MessageField;

use crate::lifecycle::events::Events;
use crate::lifecycle::{cgroup, ledger, rootfs};
use crate::runc;
use crate::service::{Lifetime, TaskService};
use crate::task_api;
use crate::wasm::content::ContentStore;
use crate::wasm::WasmtimeRuntime;

/// `WASMTIME_SHIM_SHARED=1` in containerd's environment: containers that name
/// no pod or group share one shim per namespace, which stays up
/// `WASMTIME_SHIM_LINGER_MS` (default 30 s) after its last task, warm for the
/// next. Such a shim joins no container's cgroup.
const ENV_SHARED: &str = "WASMTIME_SHIM_SHARED";
const ENV_LINGER_MS: &str = "WASMTIME_SHIM_LINGER_MS";
/// Set by `start` for a server that serves the shared group.
const ENV_SERVES_SHARED: &str = "WASMTIME_SHIM_SERVES_SHARED";
const DEFAULT_LINGER_MS: u64 = 30_000;
/// The group of the shared shim.
const SHARED_GROUP: &str = "io.containerd.wasmtime.v1.shared";

/// Annotations that put containers into one shim, in order of precedence.
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

pub struct WasmtimeShim {
    namespace: String,
    /// containerd's gRPC socket, for reading artifacts from its content store.
    address: String,
    bundle: String,
    id: String,
    socket: String,
    publish_binary: String,
    debug: bool,
    exit: Arc<ExitSignal>,
}

/// The group a container's shim serves: a pod's sandbox id, a group label,
/// the namespace's shared shim (in shared mode), or the container's own id.
/// True when it is the shared one.
async fn grouping(id: &str) -> (String, bool) {
    let spec = match containerd_shim::asynchronous::util::read_spec("").await {
        Ok(spec) => spec,
        Err(err) => {
            tracing::warn!(%err, "cannot read config.json to group the shim; using the container id");
            return (id.to_string(), false);
        }
    };
    if labelled_group(&spec).is_none() && std::env::var(ENV_SHARED).is_ok_and(|v| v == "1") {
        return (SHARED_GROUP.to_string(), true);
    }
    (group_of(&spec, id), false)
}

/// The group of a container with this spec, as runc's shim computes it too.
fn group_of(spec: &oci_spec::runtime::Spec, id: &str) -> String {
    labelled_group(spec).unwrap_or_else(|| id.to_string())
}

/// The pod or group a spec's annotations name.
fn labelled_group(spec: &oci_spec::runtime::Spec) -> Option<String> {
    spec.annotations()
        .as_ref()
        .and_then(|a| GROUP_LABELS.iter().find_map(|l| a.get(*l)))
        .cloned()
}

/// Whether a shim serves `address` and takes a new container. One that is
/// exiting refuses Connect and then removes its socket: wait for that, so
/// that a fresh server can take the address.
async fn running_shim(address: &str, id: &str) -> bool {
    use containerd_shim_protos::shim_async::{Client, TaskClient};
    for _ in 0..100 {
        let Ok(client) = Client::connect(address).await else {
            return false;
        };
        let req = api::ConnectRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let ctx = containerd_shim_protos::ttrpc::context::with_timeout(2_000_000_000);
        match TaskClient::new(client).connect(ctx, &req).await {
            Ok(_) => return true,
            Err(containerd_shim_protos::ttrpc::Error::RpcStatus(s))
                if s.code() == containerd_shim_protos::ttrpc::Code::UNAVAILABLE =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(_) => return false,
        }
    }
    false
}

/// A shim that was killed (SIGKILL, the OOM killer) leaves its socket file
/// behind. `shim delete` removes the socket the bundle's `address` names once
/// nothing answers on it; while the shim (or a new one for the same group)
/// serves it, it stays. Returns whether it found the shim dead that way: a
/// shim that exits on its own removes its socket first, after its last task.
async fn remove_dead_socket(bundle: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(address) = tokio::fs::read_to_string(bundle.join("address")).await else {
        return false;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return false;
    };
    // Only a socket file: never anything else a bad address could name.
    let is_socket = tokio::fs::symlink_metadata(path)
        .await
        .is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return false;
    }
    // A shim being killed can still hold its listening socket, and accept,
    // a moment after containerd saw its connection drop and ran us: ask a
    // few times before taking an answer as a live shim's.
    for _ in 0..DEAD_SOCKET_TRIES {
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => tokio::time::sleep(DEAD_SOCKET_RETRY).await,
            Err(err) => {
                if err.kind() != std::io::ErrorKind::ConnectionRefused {
                    return false;
                }
                if tokio::fs::remove_file(path).await.is_ok() {
                    tracing::info!(socket = path, "removed the socket of a shim that died");
                }
                return true;
            }
        }
    }
    false
}

/// How often, and how far apart, `shim delete` asks whether a socket's shim
/// is alive: 100 ms at most, spent only when it answers.
const DEAD_SOCKET_TRIES: usize = 5;
const DEAD_SOCKET_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Every task's files are this process's descriptors: take the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, writable struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}

impl WasmtimeShim {
    /// Where the runc shim of the group of container `id` (its spec `spec`)
    /// listens: runc's shim hashes the bare group id.
    fn runc_socket(&self, id: &str, spec: Option<&oci_spec::runtime::Spec>) -> String {
        let group = spec
            .map(|s| group_of(s, id))
            .unwrap_or_else(|| id.to_string());
        containerd_shim::socket_address(&self.address, &self.namespace, &group)
    }

    /// Cleans up after the containers of a dead shim's pod that its
    /// ledger names (see [`ledger`]), before the sandbox itself: the pod's
    /// runc shim deletes those handed to it, and the others' root
    /// filesystems and cgroups go.
    async fn clean_up_pod(&self, sandbox_bundle: &Path, runc_socket: &str) {
        for (member, bundle) in ledger::read(sandbox_bundle) {
            if member.runc {
                runc::delete_member_after_crash(&member.id, &bundle, runc_socket).await;
            } else {
                release(&bundle, member.cgroups_path).await;
            }
        }
    }
}

/// What a dead shim held for a wasm container: its root filesystem's
/// mounts (in bundle `bundle`) and its cgroup.
async fn release(bundle: &Path, cgroups_path: Option<String>) {
    rootfs::unmount(&rootfs::path(bundle)).await;
    if let Some(path) = cgroups_path {
        let _ = tokio::task::spawn_blocking(move || cgroup::remove_all(&path)).await;
    }
}

#[async_trait]
impl Shim for WasmtimeShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        config.no_setup_logger = true;
        crate::logging::init(args.action.is_empty(), args.debug);
        Self {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            bundle: args.bundle.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            publish_binary: args.publish_binary.clone(),
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // Our own socket name for the group: runc's shim, which runs the
        // pod's Linux containers, hashes the bare group id.
        let (group, shared) = grouping(&opts.id).await;
        let group = format!("{group}/wasmtime");
        // The group's shim already runs (a pod's, or the shared one): hand
        // containerd its address, without starting a server only to find that.
        let existing = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if running_shim(&existing, &opts.id).await {
            containerd_shim::asynchronous::util::write_str_to_file("address", &existing).await?;
            return Ok(task_api::start_answer(&existing));
        }
        let runc = runc::Launcher::find(&opts.publish_binary)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let publish_binary = opts.publish_binary.clone();
        let mut vars = vec![
            (runc::ENV_RUNC_SHIM, runc.as_str()),
            (runc::ENV_PUBLISH_BINARY, publish_binary.as_str()),
        ];
        if shared {
            vars.push((ENV_SERVES_SHARED, "1"));
        }
        let address = spawn(opts, &group, vars).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(task_api::start_answer(&address))
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().map_err(|e| Error::Other(format!("current dir: {e}")))?
        } else {
            PathBuf::from(&self.bundle)
        };
        let died = remove_dead_socket(&bundle).await;
        let spec = containerd_shim::asynchronous::util::read_spec(&bundle)
            .await
            .ok();
        let runc_socket = self.runc_socket(&self.id, spec.as_ref());
        // containerd also runs `shim delete` for a live shim's task (after
        // each delete, and when a restarted containerd cannot load it):
        // the pod's other containers are then the live shim's to end.
        if died {
            self.clean_up_pod(&bundle, &runc_socket).await;
        }
        let launcher = runc::Launcher::beside(
            &self.publish_binary,
            &self.namespace,
            &self.address,
            self.debug,
        );
        if let Some(res) = runc::delete_after_crash(&self.id, &bundle, launcher, &runc_socket).await
        {
            return Ok(res);
        }
        release(&bundle, spec.as_ref().and_then(cgroup::cgroups_path)).await;
        Ok(api::DeleteResponse {
            // The shim died, so its task was killed: report SIGKILL.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(crate::service::timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let events = Events::spawn(publisher, self.namespace.clone());
        raise_fd_limit();
        let settings = crate::wasm::engine::Settings::from_env();
        tracing::info!(?settings, "engine settings");
        let content = (!self.address.is_empty()).then(|| ContentStore {
            address: PathBuf::from(&self.address),
            namespace: self.namespace.clone(),
        });
        let runtime = WasmtimeRuntime::new(settings, content);
        let runc = runc::Launcher::from_env(&self.namespace, &self.address, self.debug);
        let shared = std::env::var(ENV_SERVES_SHARED).is_ok_and(|v| v == "1");
        let linger_ms = if shared {
            let ms = std::env::var(ENV_LINGER_MS)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_LINGER_MS);
            tracing::info!(linger_ms = ms, "the namespace's shared shim");
            ms
        } else {
            0
        };
        let lifetime = Lifetime {
            linger: std::time::Duration::from_millis(linger_ms),
            join_cgroup: !shared,
            socket: self.socket.strip_prefix("unix://").map(PathBuf::from),
        };
        TaskService::new(
            Arc::new(runtime),
            runc::Delegates::new(runc),
            lifetime,
            events,
            self.exit.clone(),
        )
    }
}
