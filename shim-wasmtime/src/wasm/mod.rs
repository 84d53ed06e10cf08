//! The Wasmtime engine behind the lifecycle's [`Runtime`] trait.
//!
//! Create finds the module in the rootfs (or containerd's content store),
//! tells what kind of guest it is ([`guest`]: a preview 1 module or a
//! preview 2 command component), compiles it (or takes it from the cache)
//! and links it; Start instantiates it in a `Store` of its own and calls its
//! entry point.

pub mod cache;
pub mod compiler;
pub mod content;
pub mod engine;
pub mod guest;
pub mod instance;
pub mod module;
pub mod mounts;
pub mod names;
pub mod stdin;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use self::engine::WasmEngine;
use self::instance::{Guest, Sockets};
use crate::lifecycle::netns::{Namespaces, Network};
use crate::lifecycle::{GuestIo, Prepared, Running, Runtime, TaskSpec, Usage};

pub struct WasmtimeRuntime {
    /// Built in the background as the shim starts, so that the shim answers
    /// containerd (and containerd sends Create) meanwhile; Create waits for it.
    engine: Arc<tokio::sync::OnceCell<Arc<WasmEngine>>>,
    settings: engine::Settings,
    /// Where artifacts' modules are read from, when the rootfs has none.
    content: Option<content::ContentStore>,
    /// The network namespaces guests with sockets run in.
    namespaces: Arc<Namespaces>,
}

impl WasmtimeRuntime {
    /// Starts building the engine on a blocking thread. Call inside tokio.
    pub fn new(settings: engine::Settings, content: Option<content::ContentStore>) -> Self {
        let runtime = Self {
            engine: Arc::default(),
            settings,
            content,
            namespaces: Arc::new(Namespaces::new()),
        };
        let (cell, settings) = (runtime.engine.clone(), runtime.settings.clone());
        tokio::spawn(async move {
            if let Err(err) = init_engine(&cell, settings).await {
                tracing::error!("{err:#}");
            }
        });
        runtime
    }

    async fn engine(&self) -> Result<Arc<WasmEngine>> {
        init_engine(&self.engine, self.settings.clone()).await
    }

    /// The network of a guest that imports `wasi:sockets`: its container's
    /// namespace (joined or made, see `lifecycle::netns`) and name lookup.
    async fn sockets(&self, task: &TaskSpec) -> Result<Sockets> {
        let network = Network::of(&task.spec);
        let namespaces = self.namespaces.clone();
        let (spec, rootfs, id) = (task.spec.clone(), task.rootfs.clone(), task.id.clone());
        tokio::task::spawn_blocking(move || {
            let names = names::ContainerNames::read(&spec, &rootfs);
            let namespace = namespaces.place(&network, &id)?;
            tracing::debug!(
                id,
                netns = namespace.as_ref().map(|ns| ns.inode()),
                "guest has sockets"
            );
            Ok(Sockets {
                namespace,
                names: Arc::new(names),
                privileged_ports: may_bind_privileged_ports(&spec),
            })
        })
        .await
        .context("network setup panicked")?
    }
}

/// The engine, built once. A failure is returned to the Create that waited
/// for it, and the next Create tries again.
async fn init_engine(
    cell: &tokio::sync::OnceCell<Arc<WasmEngine>>,
    settings: engine::Settings,
) -> Result<Arc<WasmEngine>> {
    cell.get_or_try_init(|| async move {
        let started = std::time::Instant::now();
        let engine = tokio::task::spawn_blocking(move || WasmEngine::new(&settings))
            .await
            .context("engine setup panicked")?
            .context("set up the Wasmtime engine")?;
        tracing::info!(
            init_us = started.elapsed().as_micros() as u64,
            "engine ready"
        );
        Ok(Arc::new(engine))
    })
    .await
    .cloned()
}

/// The image a container names in its annotations, if any.
fn image_of(spec: &oci_spec::runtime::Spec) -> Option<String> {
    let annotations = spec.annotations().as_ref()?;
    content::IMAGE_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(*a))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Whether the spec's process has `CAP_NET_BIND_SERVICE` in its effective
/// set (containerd's default set has it).
fn may_bind_privileged_ports(spec: &oci_spec::runtime::Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.effective().as_ref())
        .is_some_and(|set| set.contains(&oci_spec::runtime::Capability::NetBindService))
}

/// Splits the spec's `KEY=VALUE` strings. An entry without `=` is a name with
/// an empty value, as `execve` would pass it.
fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

#[async_trait]
impl Runtime for WasmtimeRuntime {
    async fn prepare(&self, task: &TaskSpec, usage: Arc<Usage>) -> Result<Box<dyn Prepared>> {
        let process = task
            .spec
            .process()
            .as_ref()
            .context("the spec has no process section")?;
        let args = process.args().clone().unwrap_or_default();
        let Some(arg0) = args.first().cloned() else {
            bail!("process.args is empty: the first argument must name the .wasm module");
        };
        // The variables the shim reads are its own: the guest never sees them.
        let (shim_env, env): (Vec<_>, Vec<_>) =
            env_pairs(process.env().as_deref().unwrap_or_default())
                .into_iter()
                .partition(|(name, _)| crate::http::settings::is_shim_variable(name));
        let http = crate::http::settings::Settings::from_env(&shim_env)?;
        let cwd = process.cwd().to_string_lossy().into_owned();

        // The module is looked up on the spec's own PATH, as before.
        let (rootfs, lookup_env) = (
            task.rootfs.clone(),
            process.env().clone().unwrap_or_default(),
        );
        let from_rootfs = tokio::task::spawn_blocking(move || {
            module::read_from_rootfs(&rootfs, &arg0, &cwd, &lookup_env)
        })
        .await
        .context("module loader failed")?;
        let (module_path, bytes) = match (from_rootfs, image_of(&task.spec), &self.content) {
            (Ok(found), _, _) => found,
            // Not in the rootfs, but the container names an image: an
            // artifact, whose module only the content store has.
            (Err(err), Some(image), Some(store)) if err.is::<module::NotFound>() => {
                store.module(&image).await.with_context(|| {
                    format!("{err}; reading it from image {image} in containerd's content store failed too")
                })?
            }
            (Err(err), _, _) => return Err(err),
        };
        let digest = engine::sha256(&bytes);
        let engine = self.engine().await?;

        let linked = engine
            .link(digest, Arc::new(bytes))
            .await
            .with_context(|| format!("module {module_path}"))?;
        let preopens = mounts::preopens(&task.spec, task.rootfs.clone(), task.binds_mounted)?;
        let serves = linked.serves(&http)?;
        let sockets = match linked.uses_sockets() || serves {
            true => Some(self.sockets(task).await?),
            false => None,
        };
        tracing::debug!(
            id = task.id,
            module = module_path,
            digest = hex::encode(digest),
            kind = linked.kind(),
            "prepared"
        );
        Ok(Box::new(WasmPrepared(Guest {
            engine: engine.engine.clone(),
            linked,
            module_path,
            args,
            env,
            cwd: process.cwd().to_string_lossy().into_owned(),
            preopens,
            limits: task.limits.clone(),
            throttle: crate::lifecycle::throttle::Throttle::new(task.limits.clone(), usage.clone()),
            usage,
            sockets,
            http,
            serves,
        })))
    }
}

struct WasmPrepared(Guest);

#[async_trait]
impl Prepared for WasmPrepared {
    fn stops_gracefully(&self) -> bool {
        self.0.serves
    }

    fn namespace(&self) -> Option<Arc<crate::lifecycle::netns::Namespace>> {
        self.0.sockets.as_ref().and_then(|s| s.namespace.clone())
    }

    async fn start(self: Box<Self>, io: GuestIo) -> Result<Running> {
        self.0.start(io).await
    }
}
