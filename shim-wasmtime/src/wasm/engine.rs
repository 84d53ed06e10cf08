//! The one Wasmtime `Engine` of a shim, its linkers, and the guests it has
//! compiled.
//!
//! Instances come from the pooling allocator, with copy-on-write memory
//! images, and each guest (module or component, see [`super::guest`]) is
//! linked once into an `InstancePre`: a start is then a slot reuse and a few
//! pointer writes, not an mmap and a link.
//!
//! Guests run as async calls on the shim's tokio runtime. Epoch interruption
//! makes every guest yield each [`TICK`], which keeps a spinning guest from
//! starving its siblings and lets a kill drop the guest's future promptly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, WasmBacktraceDetails,
};

use super::cache::DiskCache;
use super::compiler::Failure;
use super::guest::{EntryDropped, Linked, Toolbox};

/// How many guests one shim can hold at once (the pool's size).
/// `WASMTIME_SHIM_MAX_INSTANCES` overrides it.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// Settings of the engine, from the environment containerd gives the shim.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_instances: u32,
    /// Where compiled modules are kept; `None` for no disk cache.
    pub cache_dir: Option<PathBuf>,
    pub cache_max_bytes: u64,
    /// Whether guests are compiled in a child process (see
    /// [`super::compiler`]): when this process is the shim's binary.
    pub compile_in_child: bool,
}

impl Settings {
    /// Reads `WASMTIME_SHIM_MAX_INSTANCES`, `WASMTIME_SHIM_CACHE_DIR` and
    /// `WASMTIME_SHIM_CACHE_MAX_BYTES`; the cache defaults to
    /// `<containerd state>/io.containerd.wasmtime.v1/modules`, found from the
    /// bundle folder the shim runs in.
    pub fn from_env() -> Self {
        let num = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let cache_dir = match std::env::var_os("WASMTIME_SHIM_CACHE_DIR") {
            Some(d) if d.is_empty() => None,
            Some(d) => Some(PathBuf::from(d)),
            None => std::env::current_dir()
                .ok()
                .and_then(|cwd| state_dir_of_bundle(&cwd)),
        }
        .map(|state| state.join("io.containerd.wasmtime.v1").join("modules"));
        Self {
            max_instances: num("WASMTIME_SHIM_MAX_INSTANCES")
                .map(|n| n.clamp(1, 100_000) as u32)
                .unwrap_or(DEFAULT_MAX_INSTANCES),
            cache_dir,
            cache_max_bytes: num("WASMTIME_SHIM_CACHE_MAX_BYTES")
                .unwrap_or(super::cache::DEFAULT_MAX_BYTES),
            compile_in_child: std::env::current_exe().is_ok_and(|exe| {
                exe.file_name() == Some(std::ffi::OsStr::new(crate::flags::BINARY_NAME))
            }),
        }
    }
}

/// containerd's state folder, from a bundle at
/// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`.
fn state_dir_of_bundle(bundle: &std::path::Path) -> Option<PathBuf> {
    let tasks = bundle.parent()?.parent()?;
    (tasks.file_name()? == "io.containerd.runtime.v2.task")
        .then(|| tasks.parent().map(PathBuf::from))?
}

/// Bytes of a freed memory or table slot that are zeroed in place rather
/// than returned to the kernel.
const KEEP_RESIDENT: usize = 256 << 10;
/// Freed slots returned to the kernel per batch.
const DECOMMIT_BATCH: usize = 16;

/// How often the epoch advances: the longest a guest runs without yielding.
pub const TICK: Duration = Duration::from_millis(10);

/// A module's sha256.
pub type Digest32 = [u8; 32];

/// One guest's compile-and-link, done once however many Creates wait for it.
type LinkOnce = OnceCell<Arc<dyn Linked>>;

pub struct WasmEngine {
    pub engine: Engine,
    tools: Arc<Toolbox>,
    /// Compiles guests in a child process, into the disk cache.
    compile_in_child: bool,
    /// Compiled and linked guests by sha256. A `OnceCell` per digest makes
    /// concurrent Creates of one guest compile it once.
    linked: Mutex<HashMap<Digest32, Arc<LinkOnce>>>,
}

/// The shim's engine. The compiler child (`super::compiler`) builds the same
/// one, so that the code it compiles loads here.
pub fn build_engine(settings: &Settings) -> Result<Engine> {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // Guests get a 1 MiB wasm stack; the fiber stack must hold it plus
        // the host calls made from it.
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        .memory_init_cow(true)
        // A trap in a module that carries DWARF (`clang -g`) names file
        // and line for each frame. Set here, not read from the shim's
        // environment, which a user cannot reach: Wasmtime then never
        // appends its hint about `WASMTIME_BACKTRACE_DETAILS`. Modules
        // without debug sections cost nothing more; the setting is part
        // of the engine's compatibility hash, so of the cache's key.
        .wasm_backtrace_details(WasmBacktraceDetails::Enable);
    // A component made from a C program with the preview 1 adapter is
    // four core instances (program, adapter, and two of wit-component's
    // glue) sharing one memory, with two tables: size the pool so that
    // `max_instances` such guests fit as well as as many modules. Memory
    // slots, the costly part (reserved address space), stay one each.
    let n = settings.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n)
        .total_tables(n.saturating_mul(2))
        .total_stacks(n)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .decommit_batch_size(DECOMMIT_BATCH);
    let pooled = config
        .clone()
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .clone();
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            // e.g. an address-space limit too small for the pool.
            tracing::warn!(%err, "pooling allocator unavailable; allocating instances on demand");
            Engine::new(&config)
                .map_err(anyhow::Error::from)
                .context("create the wasmtime engine")
        }
    }
}

impl WasmEngine {
    pub fn new(settings: &Settings) -> Result<Self> {
        let engine = build_engine(settings)?;
        let disk = settings.cache_dir.as_ref().and_then(|dir| {
            DiskCache::open(dir, &engine, settings.cache_max_bytes)
                .inspect_err(|err| tracing::warn!("module cache disabled: {err:#}"))
                .ok()
        });
        let tools = Toolbox::new(engine.clone(), disk)?;
        spawn_epoch_ticker(engine.clone());
        Ok(Self {
            engine,
            tools: Arc::new(tools),
            compile_in_child: settings.compile_in_child,
            linked: Mutex::default(),
        })
    }

    /// Tells what kind of guest `bytes` are, compiles and links it, or
    /// returns the cached result. Parsing and compiling are CPU-heavy, so
    /// they run on a blocking thread, once per digest.
    pub async fn link(&self, digest: Digest32, bytes: Arc<Vec<u8>>) -> Result<Arc<dyn Linked>> {
        let cell = self
            .linked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest)
            .or_default()
            .clone();
        let linked = cell
            .get_or_try_init(|| async {
                let read = bytes.clone();
                let kind = tokio::task::spawn_blocking(move || super::guest::identify(&read))
                    .await
                    .context("compile task failed")??;
                let what = || format!("a {}", kind.name());
                self.compile_ahead(&digest, &bytes)
                    .await
                    .with_context(what)?;
                let link = || {
                    let (tools, bytes) = (self.tools.clone(), bytes.clone());
                    async move {
                        tokio::task::spawn_blocking(move || kind.link(&tools, &digest, &bytes))
                            .await
                            .context("compile task failed")?
                    }
                };
                // An entry that passed the header check but did not load is
                // gone: compile again in a child, as a miss would, rather
                // than here. Should the new entry not load either (evicted
                // meanwhile, or no memory to map it), the third link finds
                // none and compiles here, as with no cache.
                let mut attempt = 0;
                loop {
                    match link().await {
                        Err(err) if attempt < 2 && err.downcast_ref::<EntryDropped>().is_some() => {
                            tracing::warn!("{err:#}; compiling the guest again");
                            if attempt == 0 {
                                self.compile_ahead(&digest, &bytes)
                                    .await
                                    .with_context(what)?;
                            }
                            attempt += 1;
                        }
                        other => break other.with_context(what),
                    }
                }
            })
            .await;
        if linked.is_err() {
            // Do not keep a failed entry around.
            self.linked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest);
        }
        linked.cloned()
    }

    /// Compiles a guest the disk cache lacks in a child process, so that
    /// linking finds it there. Errors only for an invalid guest; when the
    /// child cannot do it, linking compiles in-process.
    async fn compile_ahead(&self, digest: &Digest32, bytes: &[u8]) -> Result<()> {
        let Some(disk) = self.tools.disk.as_ref().filter(|_| self.compile_in_child) else {
            return Ok(());
        };
        if disk.holds(digest) {
            return Ok(());
        }
        match super::compiler::compile(disk, digest, bytes).await {
            Ok(()) => Ok(()),
            Err(Failure::Invalid(err)) => Err(err),
            Err(Failure::Unavailable(err)) => {
                tracing::warn!("compiling in-process: {err:#}");
                Ok(())
            }
        }
    }
}

pub fn sha256(bytes: &[u8]) -> Digest32 {
    Sha256::digest(bytes).into()
}

/// Advances the engine's epoch forever. The engine lives as long as the shim.
fn spawn_epoch_ticker(engine: Engine) {
    let spawned = std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        });
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot start the epoch ticker: guests will not yield");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Module;

    fn engine(details: WasmBacktraceDetails) -> Engine {
        let mut config = Config::new();
        config.wasm_backtrace_details(details);
        Engine::new(&config).unwrap()
    }

    /// What keeping DWARF costs: compile time and compiled size of the
    /// example guest built with `-g`, with and without backtrace details,
    /// and of the stripped build. Run by hand (it needs the built examples):
    /// `cargo test --release -p shim-wasmtime -- --ignored --nocapture debug_info_cost`
    #[test]
    #[ignore]
    fn debug_info_cost() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/examples");
        for file in ["trap-debug.wasm", "trap.wasm"] {
            let bytes = std::fs::read(examples.join(file)).unwrap();
            for details in [WasmBacktraceDetails::Enable, WasmBacktraceDetails::Disable] {
                let e = engine(details);
                let mut times: Vec<Duration> = (0..7)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        Module::from_binary(&e, &bytes).unwrap();
                        t.elapsed()
                    })
                    .collect();
                times.sort();
                let size = Module::from_binary(&e, &bytes)
                    .unwrap()
                    .serialize()
                    .unwrap()
                    .len();
                println!(
                    "{file} ({} bytes), details {details:?}: compile p50 {:?}, compiled {size} bytes",
                    bytes.len(),
                    times[3]
                );
            }
        }
    }
}
