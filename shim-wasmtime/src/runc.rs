//! Linux containers that land on this shim are handed to containerd's own
//! runc shim (`containerd-shim-runc-v2`).
//!
//! A pod's sandbox (pause) container and its sidecars are Linux executables.
//! They come to us because the pod's RuntimeClass names our handler, and one
//! shim serves a whole pod. Create sees the entrypoint is ELF (or `#!`) and
//! passes the request to a runc shim, started the way containerd starts one
//! (`… start` in the bundle, grouped by the same pod annotation). From then on
//! every call for that container is forwarded as it is, and the answer or
//! error comes back as it is: runc's semantics stay runc's, exec included.
//! The runc shim publishes that container's events to containerd itself.
//!
//! containerd 2.x's runc shim serves `containerd.task.v3.Task`, earlier ones
//! `containerd.task.v2.Task`. The two carry the same messages, so one
//! forwarder serves both: only the service name differs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::TtrpcContext;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{self, r#async::Client};
use serde::Deserialize;

use crate::child::output;
use crate::lifecycle::error::{Error, Kind, ResultExt};

/// Environment through which `start` tells the server how to start a runc
/// shim: containerd's binary and the runc shim found beside it.
pub const ENV_PUBLISH_BINARY: &str = "WASMTIME_SHIM_PUBLISH_BINARY";
pub const ENV_RUNC_SHIM: &str = "WASMTIME_SHIM_RUNC_SHIM";

/// The runc shim's binary name, as containerd names it.
const RUNC_SHIM: &str = "containerd-shim-runc-v2";

/// The runc shim's working folder inside a bundle (see [`Launcher::start`]).
const RUNC_WORK_DIR: &str = "runc-shim";

/// A file in a handed-over container's bundle: `shim delete` after a crash
/// passes the cleanup on to the runc shim too. It holds the id runc knows
/// the container by (a pod's pause, started in its sandbox's bundle, has an
/// id of its own; see `sandbox.rs`).
const MARKER: &str = "wasmtime-handed-to-runc";

/// How to run the runc shim's command line, as containerd would.
#[derive(Debug, Clone)]
pub struct Launcher {
    binary: PathBuf,
    namespace: String,
    address: String,
    publish_binary: String,
    debug: bool,
    /// `cgroup.procs` of the cgroups the shim started in. The runc shim is
    /// started there, as containerd starts it beside ours, not in the
    /// container cgroup the shim joins: it may start after that (a pod's
    /// pause starts with its first Linux container), and it must neither
    /// count against a wasm container nor keep its cgroup busy.
    origin: Vec<std::ffi::CString>,
}

impl Launcher {
    /// Finds the runc shim that matches the containerd that started us: the
    /// one beside containerd's binary, else the first on PATH.
    pub fn find(publish_binary: &str) -> Option<PathBuf> {
        let beside = Path::new(publish_binary)
            .parent()
            .map(|d| d.join(RUNC_SHIM))
            .filter(|p| p.is_file());
        beside.or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(RUNC_SHIM))
                    .find(|p| p.is_file())
            })
        })
    }

    /// What the server was told by `start`, if a runc shim was found.
    pub fn from_env(namespace: &str, address: &str, debug: bool) -> Option<Self> {
        let binary = PathBuf::from(std::env::var_os(ENV_RUNC_SHIM).filter(|b| !b.is_empty())?);
        let publish_binary = std::env::var(ENV_PUBLISH_BINARY).unwrap_or_default();
        Some(Self::new(
            binary,
            namespace,
            address,
            &publish_binary,
            debug,
        ))
    }

    /// The runc shim beside containerd's binary (or on PATH), for `shim delete`.
    pub fn beside(
        publish_binary: &str,
        namespace: &str,
        address: &str,
        debug: bool,
    ) -> Option<Self> {
        let binary = Self::find(publish_binary)?;
        Some(Self::new(binary, namespace, address, publish_binary, debug))
    }

    fn new(
        binary: PathBuf,
        namespace: &str,
        address: &str,
        publish_binary: &str,
        debug: bool,
    ) -> Self {
        let origin = crate::lifecycle::cgroup::own_dirs()
            .into_iter()
            .filter_map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .ok()
            })
            .collect();
        Self {
            binary,
            namespace: namespace.to_string(),
            address: address.to_string(),
            publish_binary: publish_binary.to_string(),
            debug,
            origin,
        }
    }

    fn command(&self, id: &str, bundle: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.current_dir(bundle)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .args(["-namespace", &self.namespace, "-address", &self.address]);
        if !self.publish_binary.is_empty() {
            cmd.args(["-publish-binary", &self.publish_binary]);
        }
        if self.debug {
            cmd.arg("-debug");
        }
        cmd.args(["-id", id]);
        let origin = self.origin.clone();
        // SAFETY: between fork and exec the child only calls open(2),
        // write(2) and close(2), which are async-signal-safe, on strings
        // made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for procs in &origin {
                    // Writing 0 moves the writer. Best effort: if it fails
                    // the runc shim stays in the shim's cgroup, as before.
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// `containerd-shim-runc-v2 … start`: finds or starts the runc shim of
    /// this container's group and returns its address and the Task API
    /// service it serves.
    ///
    /// It runs in a folder of its own inside the bundle, with a copy of
    /// `config.json` (for the grouping annotations) and a link to the
    /// bundle's `log` FIFO, not in the bundle:
    /// runc's `start` writes its `address` and `shim.pid` into its working
    /// folder, where the bundle has ours (containerd must keep talking to
    /// us), and the runc shim, as it exits, removes the socket that its
    /// folder's `address` names, which must be its own.
    async fn start(&self, id: &str, bundle: &Path) -> crate::lifecycle::error::Result<Endpoint> {
        let work = bundle.join(RUNC_WORK_DIR);
        tokio::fs::create_dir_all(&work)
            .await
            .kind(Kind::Internal, format!("create {}", work.display()))?;
        tokio::fs::copy(bundle.join("config.json"), work.join("config.json"))
            .await
            .kind(Kind::Internal, "copy config.json for the runc shim")?;
        // Its server logs into `log` in its folder: containerd's FIFO.
        let log = work.join("log");
        if tokio::fs::symlink_metadata(&log).await.is_err() {
            tokio::fs::symlink("../log", &log)
                .await
                .kind(Kind::Internal, "link the runc shim's log")?;
        }
        let out = output(self.command(id, &work).arg("start"), &[]).await;
        let out = out.kind(
            Kind::Internal,
            format!("run {} start", self.binary.display()),
        )?;
        if out.status != 0 {
            return Err(Error::new(
                Kind::Internal,
                format!(
                    "{} start failed (exit status {}): {}",
                    self.binary.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Endpoint::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `containerd-shim-runc-v2 … -bundle B delete`: cleans up a container
    /// whose shim died, and returns runc's answer.
    async fn delete(&self, id: &str, bundle: &Path) -> anyhow::Result<api::DeleteResponse> {
        let out = output(
            self.command(id, bundle)
                .args(["-bundle", &bundle.to_string_lossy(), "delete"]),
            &[],
        )
        .await?;
        if out.status != 0 {
            anyhow::bail!(
                "{} delete failed (exit status {}): {}",
                self.binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(api::DeleteResponse::parse_from_bytes(&out.stdout)?)
    }
}

/// Where a runc shim listens, and which Task API version it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    address: String,
    service: &'static str,
}

impl Endpoint {
    /// `start` prints a bare address (containerd 1.x) or bootstrap JSON
    /// (`{"version":3,"address":…,"protocol":"ttrpc"}`, containerd 2.x).
    fn parse(out: &str) -> crate::lifecycle::error::Result<Self> {
        let out = out.trim();
        if !out.starts_with('{') {
            if out.is_empty() {
                return Err(Error::new(
                    Kind::Internal,
                    "runc shim start printed no address",
                ));
            }
            return Ok(Self {
                address: out.to_string(),
                service: "containerd.task.v2.Task",
            });
        }
        #[derive(Deserialize)]
        struct Bootstrap {
            version: u32,
            address: String,
            #[serde(default)]
            protocol: String,
        }
        let b: Bootstrap = serde_json::from_str(out)
            .kind(Kind::Internal, format!("runc shim start printed {out:?}"))?;
        if !b.protocol.is_empty() && b.protocol != "ttrpc" {
            return Err(Error::new(
                Kind::Internal,
                format!("runc shim speaks {}, not ttrpc", b.protocol),
            ));
        }
        Ok(Self {
            address: b.address,
            service: if b.version >= 3 {
                "containerd.task.v3.Task"
            } else {
                "containerd.task.v2.Task"
            },
        })
    }
}

/// A connection to one runc shim.
pub struct RuncShim {
    endpoint: Endpoint,
    client: Client,
}

impl RuncShim {
    /// Forwards one Task API call and returns the runc shim's answer, or its
    /// error with its own status code.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        ctx: &TtrpcContext,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        self.call_with(ctx.timeout_nano, ctx.metadata.clone(), method, req)
            .await
    }

    /// A call of the shim's own (no containerd request behind it), with a
    /// limit in seconds.
    async fn ask<Req: Message, Resp: Message>(
        &self,
        seconds: i64,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        self.call_with(seconds * 1_000_000_000, HashMap::new(), method, req)
            .await
    }

    async fn call_with<Req: Message, Resp: Message>(
        &self,
        timeout_nano: i64,
        metadata: HashMap<String, Vec<String>>,
        method: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encode {method}: {e}")))?;
        let request = ttrpc::Request {
            service: self.endpoint.service.to_string(),
            method: method.to_string(),
            timeout_nano,
            metadata: ttrpc::context::to_pb(metadata),
            payload,
            ..Default::default()
        };
        let res = self.client.request(request).await?;
        Resp::parse_from_bytes(&res.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decode {method} reply: {e}")))
    }
}

/// Says which container failed and why runc was involved, keeping runc's
/// status code and message.
pub fn explain(id: &str, err: ttrpc::Error) -> ttrpc::Error {
    match err {
        ttrpc::Error::RpcStatus(mut status) => {
            let message = format!(
                "container {id} (its entrypoint is a Linux executable, run by runc): {}",
                status.message()
            );
            status.set_message(message);
            ttrpc::Error::RpcStatus(status)
        }
        other => ttrpc::Error::Others(format!(
            "container {id} (its entrypoint is a Linux executable, run by runc): {other}"
        )),
    }
}

/// The runc shims this shim hands containers to, and which container went where.
#[derive(Default)]
pub struct Delegates {
    launcher: Option<Launcher>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Connections, by the runc shim's address.
    shims: HashMap<String, Arc<RuncShim>>,
    containers: HashMap<String, Handed>,
    /// Creates between `start` and their entry above: while any is, no runc
    /// shim is told to shut down, as it may be the one they were given.
    pending: usize,
}

/// A container handed to runc.
struct Handed {
    shim: Arc<RuncShim>,
    bundle: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// runc's options for a container: its defaults, except the cgroup driver,
/// which the spec's cgroups path tells (`slice:prefix:name` is systemd's,
/// as the kubelet's systemd driver makes them). Our own runtime options
/// mean nothing to runc.
fn runc_options(bundle: &Path) -> Option<Any> {
    let spec = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&spec).ok()?;
    let path = crate::lifecycle::cgroup::cgroups_path(&spec)?;
    let systemd = !path.starts_with('/') && path.split(':').count() == 3;
    // containerd.runc.v1.Options, field 9 (systemd_cgroup) = true.
    systemd.then(|| Any {
        type_url: "containerd.runc.v1.Options".to_string(),
        value: vec![9 << 3, 1],
        ..Default::default()
    })
}

/// Whether a failed call means the runc shim no longer knows the container
/// (or is gone): then there is nothing left to ask it.
fn is_gone(err: &ttrpc::Error) -> bool {
    match err {
        ttrpc::Error::RpcStatus(s) => s.code() == ttrpc::Code::NOT_FOUND,
        _ => true,
    }
}

impl Delegates {
    pub fn new(launcher: Option<Launcher>) -> Self {
        if launcher.is_none() {
            tracing::warn!("no {RUNC_SHIM} found: Linux containers cannot run on this shim");
        }
        Self {
            launcher,
            ..Default::default()
        }
    }

    /// The runc shim a container was handed to.
    pub fn get(&self, id: &str) -> Option<Arc<RuncShim>> {
        lock(&self.state).containers.get(id).map(|h| h.shim.clone())
    }

    /// The bundles of the containers handed to runc.
    pub fn bundles(&self) -> Vec<PathBuf> {
        lock(&self.state)
            .containers
            .values()
            .map(|h| h.bundle.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        let state = lock(&self.state);
        state.containers.is_empty() && state.pending == 0
    }

    /// Hands a Create to the runc shim of the container's group.
    pub async fn create(
        &self,
        ctx: &TtrpcContext,
        mut req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let Some(launcher) = &self.launcher else {
            return Err(Error::new(
                Kind::FailedPrecondition,
                format!(
                    "the entrypoint is a Linux executable, and no {RUNC_SHIM} was found beside containerd or on PATH to run it"
                ),
            )
            .into());
        };
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        lock(&self.state).pending += 1;
        let connected = async {
            let endpoint = launcher.start(&id, &bundle).await?;
            self.connect(endpoint).await
        }
        .await;
        let shim = {
            let mut state = lock(&self.state);
            state.pending -= 1;
            let shim = connected?;
            let handed = Handed {
                shim: shim.clone(),
                bundle: bundle.clone(),
            };
            state.containers.insert(id.clone(), handed);
            shim
        };
        req.options = runc_options(&bundle).into();
        let _ = std::fs::write(bundle.join(MARKER), id.as_bytes());
        let res: ttrpc::Result<api::CreateTaskResponse> = shim.call(ctx, "Create", &req).await;
        match &res {
            Ok(r) => tracing::info!(
                id,
                pid = r.pid,
                address = shim.endpoint.address,
                "handed to runc"
            ),
            Err(_) => {
                // A Create that failed after the runc shim made the
                // container (the call itself failed, say) would leave it
                // there until that shim stops: delete it. Best effort: not
                // found, the usual answer, changes nothing, and a Create
                // still under way in runc is not found yet either.
                let delete = api::DeleteRequest {
                    id: id.clone(),
                    ..Default::default()
                };
                let _: ttrpc::Result<api::DeleteResponse> = shim.ask(5, "Delete", &delete).await;
                self.forget(ctx, &id).await
            }
        }
        res.map_err(|e| explain(&id, e))
    }

    /// Start, for a container of the shim's own making (a pod's pause):
    /// its pid.
    pub async fn start(&self, ctx: &TtrpcContext, id: &str) -> ttrpc::Result<u32> {
        let shim = self
            .get(id)
            .ok_or_else(|| ttrpc::Error::Others(format!("{id} was not handed to runc")))?;
        let req = api::StartRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let res: api::StartResponse = shim.call(ctx, "Start", &req).await?;
        Ok(res.pid)
    }

    /// Waits, with no time limit, for a container of the shim's own making
    /// to exit; `None` when its runc shim can no longer say.
    pub async fn wait(&self, id: &str) -> Option<u32> {
        let shim = self.get(id)?;
        let req = api::WaitRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let res: ttrpc::Result<api::WaitResponse> =
            shim.call_with(0, HashMap::new(), "Wait", &req).await;
        res.ok().map(|r| r.exit_status)
    }

    /// Kill, for a container of the shim's own making; a failure (it is
    /// gone already) is only logged.
    pub async fn kill(&self, ctx: &TtrpcContext, id: &str, signal: u32) {
        let Some(shim) = self.get(id) else { return };
        let req = api::KillRequest {
            id: id.to_string(),
            signal,
            all: true,
            ..Default::default()
        };
        let res: ttrpc::Result<api::Empty> = shim.call(ctx, "Kill", &req).await;
        if let Err(err) = res {
            tracing::debug!(id, "kill: {err}");
        }
    }

    /// Stops and deletes a container of the shim's own making, and forgets
    /// it: SIGKILL, Wait, Delete.
    pub async fn remove(&self, ctx: &TtrpcContext, id: &str) {
        let Some(shim) = self.get(id) else { return };
        self.kill(ctx, id, libc::SIGKILL as u32).await;
        let wait = api::WaitRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let _: ttrpc::Result<api::WaitResponse> = shim.ask(10, "Wait", &wait).await;
        let delete = api::DeleteRequest {
            id: id.to_string(),
            ..Default::default()
        };
        if let Err(err) = self.delete(ctx, &shim, &delete).await {
            tracing::warn!(id, "delete: {err}");
        }
    }

    async fn connect(&self, endpoint: Endpoint) -> ttrpc::Result<Arc<RuncShim>> {
        if let Some(shim) = lock(&self.state).shims.get(&endpoint.address) {
            return Ok(shim.clone());
        }
        let client = Client::connect(&endpoint.address).await?;
        let shim = Arc::new(RuncShim {
            endpoint: endpoint.clone(),
            client,
        });
        Ok(lock(&self.state)
            .shims
            .entry(endpoint.address)
            .or_insert(shim)
            .clone())
    }

    /// Delete, forwarded. If the runc shim no longer knows the container (it
    /// died, say), runc's own `delete` cleans up what is left, and the
    /// container is forgotten either way, so that this shim can still exit.
    pub async fn delete(
        &self,
        ctx: &TtrpcContext,
        shim: &RuncShim,
        req: &api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let res = shim.call(ctx, "Delete", req).await;
        if !req.exec_id.is_empty() {
            return res;
        }
        let res = match res {
            Err(err) if is_gone(&err) => {
                tracing::warn!(
                    id = req.id,
                    "runc shim cannot delete it ({err}): cleaning up after it"
                );
                let bundle = lock(&self.state)
                    .containers
                    .get(&req.id)
                    .map(|h| h.bundle.clone());
                lock(&self.state).shims.remove(&shim.endpoint.address);
                match (&self.launcher, bundle) {
                    (Some(launcher), Some(bundle)) => launcher
                        .delete(&req.id, &bundle)
                        .await
                        .map_err(|e| ttrpc::Error::Others(format!("{e:#}"))),
                    _ => Err(err),
                }
            }
            other => other,
        };
        self.forget(ctx, &req.id).await;
        res.map_err(|e| explain(&req.id, e))
    }

    /// Drops a deleted (or failed) container. A runc shim left with no
    /// container of ours, and no Create on its way to it, is asked to shut
    /// down, as containerd would.
    pub async fn forget(&self, ctx: &TtrpcContext, id: &str) {
        let unused = {
            let mut state = lock(&self.state);
            let Some(Handed { shim, bundle }) = state.containers.remove(id) else {
                return;
            };
            // runc is done with it: `shim delete` has nothing to pass on.
            let _ = std::fs::remove_file(bundle.join(MARKER));
            let in_use = state.pending > 0
                || state
                    .containers
                    .values()
                    .any(|h| Arc::ptr_eq(&h.shim, &shim));
            if in_use {
                return;
            }
            state.shims.remove(&shim.endpoint.address);
            shim
        };
        let req = api::ShutdownRequest {
            id: id.to_string(),
            ..Default::default()
        };
        // The runc shim exits while answering, so a closed connection is success.
        let res: ttrpc::Result<api::Empty> = unused.call(ctx, "Shutdown", &req).await;
        if let Err(err) = res {
            tracing::debug!(id, "runc shim shutdown: {err}");
        }
        // It removes its socket as it exits, unless the folder it started
        // in (a bundle's) went first: then nothing else will.
        if let Some(path) = unused.endpoint.address.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if tokio::net::UnixStream::connect(&path).await.is_err() {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            });
        }
    }
}

/// `shim delete` for a bundle whose container was handed to runc and not
/// deleted, after this shim died: the group's runc shim (listening on
/// `runc_socket`) still runs the container, so it is asked to kill, delete
/// and, with nothing left, shut down, as containerd would have. If it is
/// gone, runc shim's own `delete` cleans up what it can. None when the
/// bundle's container was not handed to runc.
pub async fn delete_after_crash(
    id: &str,
    bundle: &Path,
    launcher: Option<Launcher>,
    runc_socket: &str,
) -> Option<api::DeleteResponse> {
    let Ok(handed) = std::fs::read_to_string(bundle.join(MARKER)) else {
        return None;
    };
    // An empty marker names the container itself.
    let id = if handed.is_empty() {
        id
    } else {
        handed.as_str()
    };
    let Some(launcher) = launcher else {
        tracing::warn!(
            id,
            "handed to runc, but no {RUNC_SHIM} is found to clean it up"
        );
        return None;
    };
    match stop_in_runc_shim(runc_socket, id).await {
        Ok(res) => return Some(res),
        Err(err) => tracing::warn!(id, "asking the runc shim to delete: {err:#}"),
    }
    match launcher.delete(id, bundle).await {
        Ok(res) => Some(res),
        Err(err) => {
            tracing::warn!(id, "{err:#}");
            None
        }
    }
}

/// Deletes container `id` of a dead shim's pod in the pod's runc shim
/// (listening on `runc_socket`), when its bundle `bundle` may be gone:
/// recorded in the pod's ledger ([`crate::lifecycle::ledger`]). One already
/// deleted (containerd ran `shim delete` for it too) is not found: nothing
/// to do.
pub async fn delete_member_after_crash(id: &str, bundle: &Path, runc_socket: &str) {
    // runc writes its errors to `log.json` in the bundle, and fails every
    // command when it cannot; containerd removes a container's bundle as
    // soon as its task is gone. An empty folder in its place, for as long
    // as runc works on it, lets runc kill and delete the container.
    let stand_in = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(bundle)
            .is_ok()
    };
    match stop_in_runc_shim(runc_socket, id).await {
        Ok(_) => tracing::info!(id, "deleted in the pod's runc shim after the shim died"),
        Err(err) => tracing::debug!(id, "deleting in the pod's runc shim: {err:#}"),
    }
    if stand_in {
        let _ = std::fs::remove_dir_all(bundle);
    }
}

async fn stop_in_runc_shim(address: &str, id: &str) -> anyhow::Result<api::DeleteResponse> {
    // containerd 2.x's runc shim serves v3, 1.x's v2: ask v3 first.
    let mut shim = RuncShim {
        client: Client::connect(address).await?,
        endpoint: Endpoint {
            address: address.to_string(),
            service: "containerd.task.v3.Task",
        },
    };
    let id = id.to_string();
    let state: ttrpc::Result<api::StateResponse> = shim
        .ask(
            5,
            "State",
            &api::StateRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await;
    if let Err(ttrpc::Error::RpcStatus(s)) = &state {
        if s.code() == ttrpc::Code::UNIMPLEMENTED {
            shim.endpoint.service = "containerd.task.v2.Task";
        }
    }
    let kill = api::KillRequest {
        id: id.clone(),
        signal: libc::SIGKILL as u32,
        all: true,
        ..Default::default()
    };
    // It may have stopped already: then only Delete matters.
    let _: ttrpc::Result<api::Empty> = shim.ask(5, "Kill", &kill).await;
    let _: ttrpc::Result<api::WaitResponse> = shim
        .ask(
            10,
            "Wait",
            &api::WaitRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await;
    let res: api::DeleteResponse = shim
        .ask(
            10,
            "Delete",
            &api::DeleteRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await?;
    let _: ttrpc::Result<api::Empty> = shim
        .ask(
            5,
            "Shutdown",
            &api::ShutdownRequest {
                id,
                ..Default::default()
            },
        )
        .await;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_output_of_every_version_parses() {
        assert_eq!(
            Endpoint::parse("unix:///run/containerd/s/abc\n").unwrap(),
            Endpoint {
                address: "unix:///run/containerd/s/abc".into(),
                service: "containerd.task.v2.Task"
            }
        );
        assert_eq!(
            Endpoint::parse(
                r#"{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}"#
            )
            .unwrap()
            .service,
            "containerd.task.v3.Task"
        );
        assert_eq!(
            Endpoint::parse(r#"{"version":2,"address":"unix:///x","protocol":"ttrpc"}"#)
                .unwrap()
                .service,
            "containerd.task.v2.Task"
        );
        assert!(Endpoint::parse("").is_err());
        assert!(Endpoint::parse(r#"{"version":3,"address":"x","protocol":"grpc"}"#).is_err());
        assert!(Endpoint::parse("{not json").is_err());
    }

    #[test]
    fn runc_gets_the_systemd_driver_when_the_cgroups_path_is_systemds() {
        let bundle = tempfile::tempdir().unwrap();
        let write = |path: &str| {
            let spec = format!(r#"{{"ociVersion":"1.0.2","linux":{{"cgroupsPath":"{path}"}}}}"#);
            std::fs::write(bundle.path().join("config.json"), spec).unwrap();
        };
        write("kubepods-besteffort-pod1.slice:cri-containerd:abc");
        let any = runc_options(bundle.path()).unwrap();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        assert_eq!(any.value, vec![0x48, 1]);
        write("/kubepods/besteffort/pod1/abc");
        assert!(runc_options(bundle.path()).is_none());
    }
}
