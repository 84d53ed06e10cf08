//! Pods whose sandbox container the shim plays itself, with no pause
//! process.
//!
//! CRI creates a pod as a sandbox container (annotation
//! `io.kubernetes.cri.container-type=sandbox`), running Kubernetes' `pause`,
//! and builds every later container's namespace paths from that task's pid:
//! `/proc/<pid>/ns/{net,ipc,uts,pid}`. For wasm containers none of it is
//! needed: they run in this process, and CRI pins a pod's network namespace
//! itself (the sandbox spec's network path, `/var/run/netns/…`). So the
//! sandbox is a task of the shim's own (`lifecycle::pause`), which reports
//! the shim's pid, and then:
//!
//! - **wasm containers** whose network path is `/proc/<shim pid>/ns/net`
//!   get the pod's pinned namespace instead, or none for a pod on the
//!   host's network. No guest lands in the shim's own namespace by
//!   accident: such a path with no pod of this shim behind it fails Create.
//! - **Linux containers** (sidecars) need namespaces a process holds, so
//!   the first one starts the real pause then, through runc as any Linux
//!   container, as container `<sandbox id>-pause` in the sandbox's bundle
//!   (so in the pod's pinned network namespace). Its namespace paths
//!   replace the shim's in the sidecar's `config.json`; later sidecars reuse
//!   it. Wasm containers already running are untouched. If the pause exits,
//!   the sandbox task ends too, as the pod's sandbox would.
//! - **Sysctls** in the sandbox's spec: `net.*` ones are written into the
//!   pod's network namespace at Create (containerd 2.x sets two on every
//!   pod with a network of its own); others (IPC) need a process in the
//!   pod's IPC namespace, which only Linux containers share, so runc applies
//!   them when the pause starts.
//! - **Not played**, so run by a real pause as before: a sandbox with a user
//!   namespace, or a network namespace of no path (CRI then pins the
//!   sandbox process's own, which must not be the shim's), or `net.*`
//!   sysctls on the host's network (runc refuses them).
//! - Killing and deleting the sandbox kills and deletes its real pause; a
//!   marker in the bundle lets `shim delete` do the same after a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::TtrpcContext;
use containerd_shim_protos::api;
use containerd_shim_protos::ttrpc;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::lifecycle::error::{Error, Kind, Result, ResultExt};
use crate::lifecycle::netns::{self, Network};
use crate::runc::Delegates;

/// CRI's annotations: what a container is, and which pod it belongs to.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Is `spec` a pod's sandbox container?
pub fn is_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox")
}

/// Is `spec` a sandbox the shim can play (see the module's doc)?
pub fn can_play(spec: &Spec) -> bool {
    if !is_sandbox(spec) {
        return false;
    }
    let user_ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|all| all.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    match Network::of(spec) {
        Network::Join(_) => !user_ns,
        Network::Host => !user_ns && net_sysctls(spec).is_empty(),
        Network::New => false,
    }
}

/// The sandbox spec's `net.*` sysctls.
fn net_sysctls(spec: &Spec) -> Vec<(String, String)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .map(|all| {
            all.iter()
                .filter(|(k, _)| k.starts_with("net."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `/proc/<shim pid>/ns/`: where CRI points containers of a pod whose
/// sandbox this shim plays.
fn own_ns_prefix() -> String {
    format!("/proc/{}/ns/", std::process::id())
}

/// The pods whose sandbox this shim plays, by sandbox id.
#[derive(Default)]
pub struct Sandboxes {
    pods: Mutex<HashMap<String, Arc<Pod>>>,
}

struct Pod {
    id: String,
    /// The pinned network namespace; `None`: the host's.
    netns: Option<PathBuf>,
    /// The sandbox's Create, to start the real pause from.
    create: api::CreateTaskRequest,
    /// The real pause. Held while a Linux container is created, so that
    /// the pod cannot go (nor its pause) halfway through.
    pause: Arc<tokio::sync::Mutex<PauseState>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseState {
    NotStarted,
    Running {
        pid: u32,
    },
    /// It exited on its own: the pod's sandbox is over.
    Exited,
    /// The sandbox was deleted.
    Removed,
}

impl Pod {
    fn pause_id(&self) -> String {
        format!("{}-pause", self.id)
    }
}

impl Sandboxes {
    fn pods(&self) -> MutexGuard<'_, HashMap<String, Arc<Pod>>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `id` is a sandbox this shim plays.
    pub fn contains(&self, id: &str) -> bool {
        self.pods().contains_key(id)
    }

    /// Records a sandbox at its Create, and writes its `net.*` sysctls into
    /// its network namespace.
    pub async fn add(&self, req: &api::CreateTaskRequest, spec: &Spec) -> Result<()> {
        let netns = match Network::of(spec) {
            Network::Join(path) => Some(path),
            Network::Host | Network::New => None,
        };
        let sysctls = net_sysctls(spec);
        if let (Some(path), false) = (&netns, sysctls.is_empty()) {
            let path = path.clone();
            tokio::task::spawn_blocking(move || write_sysctls(&path, &sysctls))
                .await
                .kind(Kind::Internal, "write the pod's sysctls")??;
        }
        let pod = Arc::new(Pod {
            id: req.id.clone(),
            netns,
            create: req.clone(),
            pause: Arc::new(tokio::sync::Mutex::new(PauseState::NotStarted)),
        });
        let mut pods = self.pods();
        if pods.contains_key(&req.id) {
            return Err(Error::new(
                Kind::AlreadyExists,
                format!("sandbox {} already exists", req.id),
            ));
        }
        pods.insert(req.id.clone(), pod);
        Ok(())
    }

    /// Forgets sandbox `id` after its Create failed (it has no pause yet).
    pub fn forget(&self, id: &str) {
        self.pods().remove(id);
    }

    /// A wasm container's spec: its network path into the shim's own
    /// namespace becomes its pod's pinned one, or, for a pod on the host's
    /// network, no path (the host's, as `--net-host` gives).
    pub fn rewrite_wasm(&self, spec: &mut Spec) -> Result<()> {
        let own = format!("{}net", own_ns_prefix());
        let pod_id = pod_of(spec);
        let Some(namespaces) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
        else {
            return Ok(());
        };
        let Some(at) = namespaces.iter().position(|ns| {
            ns.typ() == LinuxNamespaceType::Network && ns.path().as_deref() == Some(Path::new(&own))
        }) else {
            return Ok(());
        };
        let pod = pod_id
            .as_deref()
            .and_then(|id| self.pods().get(id).cloned());
        let Some(pod) = pod else {
            return Err(own_namespace(pod_id.as_deref()));
        };
        match &pod.netns {
            Some(path) => {
                namespaces[at].set_path(Some(path.clone()));
            }
            None => {
                namespaces.remove(at);
            }
        }
        Ok(())
    }

    /// Creates a Linux container (`spec`, as its bundle has it) through
    /// runc. If it joins the shim's namespaces (its pod's sandbox is played
    /// here), the pod's real pause is started first if it is not yet, and
    /// the container's namespace paths are pointed at it in `config.json`.
    /// `on_pause_exit(pod id)` ends the sandbox task when the pause exits on
    /// its own.
    pub async fn create_linux(
        &self,
        ctx: &TtrpcContext,
        delegates: &Arc<Delegates>,
        req: api::CreateTaskRequest,
        spec: &Spec,
        on_pause_exit: impl FnOnce(String) + Send + 'static,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let own = own_ns_prefix();
        let joins_own = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|all| {
                all.iter()
                    .filter_map(|ns| ns.path().as_deref())
                    .any(|p| p.starts_with(&own))
            });
        if !joins_own {
            return delegates.create(ctx, req).await;
        }
        let pod_id = pod_of(spec);
        let Some(pod) = pod_id
            .as_deref()
            .and_then(|id| self.pods().get(id).cloned())
        else {
            let err = own_namespace(pod_id.as_deref());
            return Err(err.context(format!("create container {}", req.id)).into());
        };
        // Held until runc has the container: the pause cannot go meanwhile.
        // Started in a task of its own, which a caller that gives up (a
        // ttrpc deadline) does not cancel: runc would otherwise have a
        // pause the state never recorded, running for no one.
        let started = tokio::spawn({
            let (delegates, pod, ctx) = (delegates.clone(), pod.clone(), detached(ctx));
            async move {
                let mut pause = pod.pause.clone().lock_owned().await;
                if *pause == PauseState::NotStarted {
                    let pid = start_pause(&ctx, &delegates, &pod).await?;
                    *pause = PauseState::Running { pid };
                    watch_pause(delegates, pod.clone(), pid, on_pause_exit);
                }
                Ok::<_, Error>(pause)
            }
        });
        let pause = started
            .await
            .kind(Kind::Internal, "start the pod's pause")??;
        let pid = match *pause {
            PauseState::Running { pid } => pid,
            PauseState::NotStarted | PauseState::Exited | PauseState::Removed => {
                return Err(Error::new(
                    Kind::FailedPrecondition,
                    format!(
                        "create container {}: pod {} has ended (its sandbox is stopped)",
                        req.id, pod.id
                    ),
                )
                .into())
            }
        };
        let path = Path::new(&req.bundle).join("config.json");
        if let Err(err) = point_at(&path, pid).await {
            return Err(err.context(format!("create container {}", req.id)).into());
        }
        tracing::info!(
            id = req.id,
            pod = pod.id,
            pause = pid,
            "joins the pod's pause"
        );
        delegates.create(ctx, req).await
    }

    /// A signal for sandbox `id` also reaches its real pause.
    pub async fn kill(&self, ctx: &TtrpcContext, delegates: &Delegates, id: &str, signal: u32) {
        let Some(pod) = self.pods().get(id).cloned() else {
            return;
        };
        if matches!(*pod.pause.lock().await, PauseState::Running { .. }) {
            delegates.kill(ctx, &pod.pause_id(), signal).await;
        }
    }

    /// Sandbox `id` is deleted: so is its real pause, in a task of its own
    /// that a caller giving up does not cancel halfway.
    pub async fn remove(&self, ctx: &TtrpcContext, delegates: &Arc<Delegates>, id: &str) {
        let Some(pod) = self.pods().remove(id) else {
            return;
        };
        let (delegates, ctx) = (delegates.clone(), detached(ctx));
        let removed = tokio::spawn(async move {
            let mut pause = pod.pause.lock().await;
            let had = matches!(*pause, PauseState::Running { .. } | PauseState::Exited);
            *pause = PauseState::Removed;
            if had {
                delegates.remove(&ctx, &pod.pause_id()).await;
            }
        });
        if let Err(err) = removed.await {
            tracing::error!(sandbox = id, %err, "removing the pod's pause failed");
        }
    }
}

/// `ctx` for calls made on a request's behalf that must finish even if the
/// request is given up: its metadata, no deadline.
fn detached(ctx: &TtrpcContext) -> TtrpcContext {
    TtrpcContext {
        mh: ctx.mh,
        metadata: ctx.metadata.clone(),
        timeout_nano: 0,
    }
}

/// Starts the pod's real pause through runc; its pid.
async fn start_pause(ctx: &TtrpcContext, delegates: &Delegates, pod: &Pod) -> Result<u32> {
    let id = pod.pause_id();
    let mut req = pod.create.clone();
    req.id = id.clone();
    let failed = |what: &str, err: ttrpc::Error| {
        let said = match err {
            ttrpc::Error::RpcStatus(status) => status.message().to_string(),
            other => other.to_string(),
        };
        Error::new(Kind::Internal, format!("{what} the pod's pause: {said}"))
    };
    delegates
        .create(ctx, req)
        .await
        .map_err(|e| failed("create", e))?;
    match delegates.start(ctx, &id).await {
        Ok(pid) => {
            tracing::info!(
                pod = pod.id,
                pid,
                "started the pod's pause for its Linux containers"
            );
            Ok(pid)
        }
        Err(err) => {
            delegates.remove(ctx, &id).await;
            Err(failed("start", err))
        }
    }
}

/// When the pause exits on its own, the pod's sandbox is over: the state
/// says so and `on_exit` ends the sandbox task.
fn watch_pause(
    delegates: Arc<Delegates>,
    pod: Arc<Pod>,
    pid: u32,
    on_exit: impl FnOnce(String) + Send + 'static,
) {
    tokio::spawn(async move {
        let status = delegates.wait(&pod.pause_id()).await;
        let mut pause = pod.pause.lock().await;
        if *pause == (PauseState::Running { pid }) {
            tracing::warn!(
                pod = pod.id,
                pid,
                ?status,
                "the pod's pause exited: ending its sandbox"
            );
            *pause = PauseState::Exited;
            drop(pause);
            on_exit(pod.id.clone());
        }
    });
}

/// Points a Linux container's namespace paths into the shim's at the
/// pause's (pid `pid`) in its `config.json`, edited as JSON so that every
/// field the spec library does not know stays as it is.
async fn point_at(path: &Path, pid: u32) -> Result<()> {
    let bytes = tokio::fs::read(path)
        .await
        .kind(Kind::InvalidArgument, format!("read {}", path.display()))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .kind(Kind::InvalidArgument, format!("parse {}", path.display()))?;
    let own = own_ns_prefix();
    let theirs = format!("/proc/{pid}/ns/");
    for p in namespace_paths(&mut spec) {
        if let Some(kind) = p.strip_prefix(&own) {
            *p = format!("{theirs}{kind}");
        }
    }
    let bytes = serde_json::to_vec(&spec).kind(Kind::Internal, "encode config.json")?;
    let tmp = path.with_extension("json.wasmtime");
    tokio::fs::write(&tmp, bytes)
        .await
        .kind(Kind::Internal, format!("write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .kind(Kind::Internal, format!("replace {}", path.display()))
}

/// Writes `net.*` sysctls in the network namespace at `netns`, from a
/// thread in it (`/proc/sys/net` is the opener's namespace's).
fn write_sysctls(netns: &Path, sysctls: &[(String, String)]) -> Result<()> {
    for (key, _) in sysctls {
        let sane = key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !sane {
            return Err(Error::new(
                Kind::InvalidArgument,
                format!("sysctl {key:?} is not a sysctl name"),
            ));
        }
    }
    netns::run_in(netns, || -> Result<()> {
        for (key, value) in sysctls {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value).kind(
                Kind::InvalidArgument,
                format!("sysctl {key}={value} in the pod's network namespace"),
            )?;
        }
        Ok(())
    })
    .kind(Kind::Internal, "enter the pod's network namespace")?
}

/// The pod a container belongs to (CRI's `sandbox-id` annotation).
pub fn pod_of(spec: &Spec) -> Option<String> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID))
        .cloned()
}

/// Create fails rather than put a container into the shim's namespaces.
fn own_namespace(pod: Option<&str>) -> Error {
    Error::new(
        Kind::FailedPrecondition,
        format!(
            "the spec joins the namespaces of the shim's own process ({}), and pod {} is not one \
             whose sandbox this shim plays",
            own_ns_prefix(),
            pod.unwrap_or("(none named)")
        ),
    )
}

/// Every `linux.namespaces[].path` of a spec as JSON.
fn namespace_paths(spec: &mut serde_json::Value) -> impl Iterator<Item = &mut String> {
    spec.pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
        .into_iter()
        .flatten()
        .filter_map(|ns| match ns.get_mut("path") {
            Some(serde_json::Value::String(p)) => Some(p),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn request(id: &str) -> api::CreateTaskRequest {
        api::CreateTaskRequest {
            id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn wasm_containers_get_the_pods_pinned_namespace() {
        let sandboxes = Sandboxes::default();
        let sandbox = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE: "sandbox"},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"}]}
        }));
        assert!(can_play(&sandbox));
        sandboxes.add(&request("pod1"), &sandbox).await.unwrap();
        // The same id again is refused, and the first stays.
        assert!(sandboxes.add(&request("pod1"), &sandbox).await.is_err());
        assert!(sandboxes.contains("pod1"));
        let own = format!("{}net", own_ns_prefix());
        let mut container = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"},
            "linux": {"namespaces": [{"type": "network", "path": own}]}
        }));
        assert!(!is_sandbox(&container));
        sandboxes.rewrite_wasm(&mut container).unwrap();
        let ns = &container
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            ns.path().as_deref(),
            Some(Path::new("/var/run/netns/cni-1"))
        );

        // Another pod, unknown here: refused, never the shim's namespace.
        let mut stray = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {SANDBOX_ID: "pod2"},
            "linux": {"namespaces": [{"type": "network", "path": own}]}
        }));
        let err = sandboxes.rewrite_wasm(&mut stray).unwrap_err();
        assert!(matches!(err.kind(), Kind::FailedPrecondition));

        // A pod on the host's network: so is its container.
        let host_pod = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE: "sandbox"},
            "linux": {"namespaces": [{"type": "ipc"}]}
        }));
        sandboxes.add(&request("pod3"), &host_pod).await.unwrap();
        let mut on_host = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {SANDBOX_ID: "pod3"},
            "linux": {"namespaces": [{"type": "network", "path": own}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]}
        }));
        sandboxes.rewrite_wasm(&mut on_host).unwrap();
        let left = on_host
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].typ(), LinuxNamespaceType::Ipc);

        // A path elsewhere is left as it is.
        let mut other = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/x"}]}
        }));
        sandboxes.rewrite_wasm(&mut other).unwrap();
    }

    #[test]
    fn which_sandboxes_the_shim_plays() {
        let with = |linux: serde_json::Value| {
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "annotations": {CONTAINER_TYPE: "sandbox"},
                "linux": linux
            }))
        };
        let pinned = serde_json::json!({"type": "network", "path": "/var/run/netns/cni-1"});
        // A pinned network, with net sysctls (written by the shim): played.
        assert!(can_play(&with(serde_json::json!({
            "namespaces": [pinned.clone()],
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
        }))));
        // A user namespace, or a network of no path: a real pause.
        assert!(!can_play(&with(serde_json::json!({
            "namespaces": [pinned, {"type": "user"}]
        }))));
        assert!(!can_play(&with(serde_json::json!({
            "namespaces": [{"type": "network"}]
        }))));
        // net sysctls on the host's network: runc's to refuse.
        assert!(!can_play(&with(serde_json::json!({
            "sysctl": {"net.ipv4.ping_group_range": "0 1"}
        }))));
        assert!(can_play(&with(serde_json::json!({
            "sysctl": {"kernel.shm_rmid_forced": "1"}
        }))));
        // Not a sandbox at all.
        assert!(!can_play(&spec(serde_json::json!({"ociVersion": "1.0.2"}))));
    }

    #[test]
    fn sysctl_names_are_checked_before_any_write() {
        let err = write_sysctls(
            Path::new("/nonexistent"),
            &[("net.ipv4/../../x".to_string(), "1".to_string())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a sysctl name"), "{err}");
    }
}
