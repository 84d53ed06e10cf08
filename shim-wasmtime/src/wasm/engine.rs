//! The one Wasmtime `Engine` of a shim, its `Linker`, and the modules it has
//! compiled.
//!
//! Guests run as async calls on the shim's tokio runtime. Epoch interruption
//! makes every guest yield each [`TICK`], which keeps a spinning guest from
//! starving its siblings and lets a kill drop the guest's future promptly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::instance::GuestState;

/// How often the epoch advances: the longest a guest runs without yielding.
pub const TICK: Duration = Duration::from_millis(10);

/// A module's sha256.
pub type Digest32 = [u8; 32];

pub struct WasmEngine {
    pub engine: Engine,
    linker: Linker<GuestState>,
    /// Compiled and linked modules by sha256. A `OnceCell` per digest makes
    /// concurrent Creates of one module compile it once.
    modules: Mutex<HashMap<Digest32, Arc<OnceCell<InstancePre<GuestState>>>>>,
}

impl WasmEngine {
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Guests get a 1 MiB wasm stack; the fiber stack must hold it plus
            // the host calls made from it.
            .max_wasm_stack(1 << 20)
            .async_stack_size(2 << 20);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("create the wasmtime engine")?;
        let linker = super::instance::linker(&engine)?;
        spawn_epoch_ticker(engine.clone());
        Ok(Self {
            engine,
            linker,
            modules: Mutex::default(),
        })
    }

    /// Compiles and links a core module, or returns the cached result.
    /// Compiling is CPU-heavy, so it runs on a blocking thread.
    pub async fn instance_pre(
        &self,
        digest: Digest32,
        bytes: Arc<Vec<u8>>,
    ) -> Result<InstancePre<GuestState>> {
        let cell = self
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest)
            .or_default()
            .clone();
        let pre = cell
            .get_or_try_init(|| async {
                let engine = self.engine.clone();
                let module =
                    tokio::task::spawn_blocking(move || Module::from_binary(&engine, &bytes))
                        .await
                        .context("compile task failed")?
                        .map_err(anyhow::Error::from)
                        .context("the module is not valid WebAssembly")?;
                self.linker
                    .instantiate_pre(&module)
                    .map_err(anyhow::Error::from)
                    .context("the module cannot be linked against WASI preview 1")
            })
            .await;
        if pre.is_err() {
            // Do not keep a failed entry around.
            self.modules
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest);
        }
        pre.cloned()
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
