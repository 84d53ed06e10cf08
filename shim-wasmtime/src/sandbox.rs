//! Pods whose sandbox container the shim plays itself, with no pause
//! process.
//!
//! CRI creates a pod as a sandbox container (annotation
//! `io.kubernetes.cri.container-type=sandbox`), running Kubernetes' `pause`,
//! and builds every later container's namespace paths from that task's pid:
//! `/proc/<pid>/ns/{net,ipc,uts,pid}`. For wasm containers none of it is
//! needed: they run in this process, and CRI pins the pod's network
//! namespace itself (the sandbox spec's network path, `/var/run/netns/…`).
//! So the sandbox is a task of the shim's own (`lifecycle::pause`), which
//! reports the shim's pid, and then:
//!
//! - **wasm containers** whose network path is `/proc/<shim pid>/ns/net`
//!   get the pod's pinned namespace instead. No guest ever lands in the
//!   shim's own (the host's) namespace: a path into the shim's namespaces
//!   with no pod of this shim behind it fails Create.
//! - **Linux containers** (sidecars) need namespaces a process holds, so
//!   the first one starts the real pause then, through runc as any Linux
//!   container, in the pod's pinned network namespace, as container
//!   `<sandbox id>-pause` in the sandbox's bundle. Its namespace paths
//!   replace the shim's in the sidecar's `config.json`; later sidecars
//!   reuse it. Wasm containers already running are untouched.
//! - **A sandbox spec with sysctls** (which only a process in the pod's
//!   namespaces can hold, and runc applies), or with a new network
//!   namespace of no path (which CRI never asks for), gets the real pause at
//!   once.
//! - Killing and deleting the sandbox kills and deletes its real pause; a
//!   marker in the bundle lets `shim delete` do the same after a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::TtrpcContext;
use containerd_shim_protos::api;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::lifecycle::error::{Error, Kind, Result, ResultExt};
use crate::lifecycle::netns::Network;
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

pub struct Pod {
    id: String,
    /// The pod's network: the namespace CRI pinned, or the host's. (A new
    /// one without a path, which CRI never asks for, is the real pause's.)
    network: Network,
    /// The real pause's pid, for the sync readers, once it runs.
    pause_pid: AtomicU32,
    /// The sandbox's Create, to start the real pause from.
    create: api::CreateTaskRequest,
    /// The real pause's pid, once a Linux container needed it.
    pause: tokio::sync::Mutex<Option<u32>>,
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

    /// Records a sandbox at its Create.
    pub fn add(&self, req: &api::CreateTaskRequest, spec: &Spec) {
        let pod = Pod {
            id: req.id.clone(),
            network: Network::of(spec),
            pause_pid: AtomicU32::new(0),
            create: req.clone(),
            pause: tokio::sync::Mutex::new(None),
        };
        self.pods().insert(req.id.clone(), Arc::new(pod));
    }

    /// Whether a sandbox spec holds what only a process in the pod's
    /// namespaces can hold, so that the real pause must start at once.
    pub fn needs_pause_at_once(spec: &Spec) -> bool {
        let sysctls = spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().as_ref())
            .is_some_and(|s| !s.is_empty());
        sysctls || Network::of(spec) == Network::New
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
        match &pod.network {
            Network::Join(path) => {
                namespaces[at].set_path(Some(path.clone()));
            }
            Network::Host => {
                namespaces.remove(at);
            }
            Network::New => match pod.pause_pid.load(SeqCst) {
                0 => return Err(own_namespace(Some(&pod.id))),
                pid => {
                    namespaces[at].set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/net"))));
                }
            },
        }
        Ok(())
    }

    /// A Linux container's bundle: if it joins the shim's namespaces (its
    /// pod's sandbox is played by this shim), the pod's real pause is
    /// started if it is not yet, and the container's namespace paths are
    /// pointed at it in `config.json`.
    pub async fn join_linux(
        &self,
        ctx: &TtrpcContext,
        delegates: &Delegates,
        req: &api::CreateTaskRequest,
    ) -> Result<()> {
        let path = Path::new(&req.bundle).join("config.json");
        let bytes = tokio::fs::read(&path)
            .await
            .kind(Kind::InvalidArgument, format!("read {}", path.display()))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
            .kind(Kind::InvalidArgument, format!("parse {}", path.display()))?;
        let own = own_ns_prefix();
        let joins_own = namespace_paths(&mut spec).any(|p| p.starts_with(&own));
        if !joins_own {
            return Ok(());
        }
        let pod_id = spec
            .pointer(&format!("/annotations/{}", SANDBOX_ID.replace('/', "~1")))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let pod = pod_id
            .as_deref()
            .and_then(|id| self.pods().get(id).cloned());
        let Some(pod) = pod else {
            return Err(own_namespace(pod_id.as_deref()));
        };
        let pid = self.ensure_pause(ctx, delegates, &pod).await?;
        let theirs = format!("/proc/{pid}/ns/");
        for path in namespace_paths(&mut spec) {
            if let Some(kind) = path.strip_prefix(&own) {
                *path = format!("{theirs}{kind}");
            }
        }
        let bytes = serde_json::to_vec(&spec).kind(Kind::Internal, "encode config.json")?;
        let tmp = path.with_extension("json.wasmtime");
        tokio::fs::write(&tmp, bytes)
            .await
            .kind(Kind::Internal, format!("write {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .kind(Kind::Internal, format!("replace {}", path.display()))?;
        tracing::info!(
            id = req.id,
            pod = pod.id,
            pause = pid,
            "joins the pod's pause"
        );
        Ok(())
    }

    /// The real pause of sandbox `id` now, for a spec that needs it at once.
    pub async fn start_pause(
        &self,
        ctx: &TtrpcContext,
        delegates: &Delegates,
        id: &str,
    ) -> Result<u32> {
        let pod = self
            .pods()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("sandbox {id} not found")))?;
        self.ensure_pause(ctx, delegates, &pod).await
    }

    /// Starts the pod's real pause through runc, once.
    async fn ensure_pause(
        &self,
        ctx: &TtrpcContext,
        delegates: &Delegates,
        pod: &Pod,
    ) -> Result<u32> {
        let mut pause = pod.pause.lock().await;
        if let Some(pid) = *pause {
            return Ok(pid);
        }
        let id = pod.pause_id();
        let mut req = pod.create.clone();
        req.id = id.clone();
        delegates
            .create(ctx, req)
            .await
            .map_err(|e| Error::new(Kind::Internal, format!("create the pod's pause: {e}")))?;
        let pid = match delegates.start(ctx, &id).await {
            Ok(pid) => pid,
            Err(err) => {
                delegates.remove(ctx, &id).await;
                return Err(Error::new(
                    Kind::Internal,
                    format!("start the pod's pause: {err}"),
                ));
            }
        };
        tracing::info!(
            pod = pod.id,
            pid,
            "started the pod's pause for its Linux containers"
        );
        *pause = Some(pid);
        Ok(pid)
    }

    /// A signal for sandbox `id` also reaches its real pause.
    pub async fn kill(&self, ctx: &TtrpcContext, delegates: &Delegates, id: &str, signal: u32) {
        let Some(pod) = self.pods().get(id).cloned() else {
            return;
        };
        if pod.pause.lock().await.is_some() {
            delegates.kill(ctx, &pod.pause_id(), signal).await;
        }
    }

    /// Sandbox `id` is deleted: so is its real pause.
    pub async fn remove(&self, ctx: &TtrpcContext, delegates: &Delegates, id: &str) {
        let Some(pod) = self.pods().remove(id) else {
            return;
        };
        if pod.pause.lock().await.take().is_some() {
            pod.pause_pid.store(0, SeqCst);
            delegates.remove(ctx, &pod.pause_id()).await;
        }
    }
}

/// The pod a container belongs to (CRI's `sandbox-id` annotation).
fn pod_of(spec: &Spec) -> Option<String> {
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

    #[test]
    fn wasm_containers_get_the_pods_pinned_namespace() {
        let sandboxes = Sandboxes::default();
        let sandbox = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE: "sandbox"},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"}]}
        }));
        assert!(is_sandbox(&sandbox));
        let req = api::CreateTaskRequest {
            id: "pod1".into(),
            ..Default::default()
        };
        sandboxes.add(&req, &sandbox);
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
        assert_eq!(err.kind(), Kind::FailedPrecondition);

        // A pod on the host's network: so is its container.
        let host_pod = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE: "sandbox"},
            "linux": {"namespaces": [{"type": "ipc"}]}
        }));
        let req = api::CreateTaskRequest {
            id: "pod3".into(),
            ..Default::default()
        };
        sandboxes.add(&req, &host_pod);
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
    fn sysctls_need_the_real_pause() {
        let with = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}}
        }));
        assert!(Sandboxes::needs_pause_at_once(&with));
        let without = spec(serde_json::json!({"ociVersion": "1.0.2", "linux": {}}));
        assert!(!Sandboxes::needs_pause_at_once(&without));
    }
}
