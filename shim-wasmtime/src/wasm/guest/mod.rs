//! The kinds of guest the shim runs, each behind the same two small traits:
//!
//! - [`Kind`]: compiles a guest (or loads code the shim compiled before) and
//!   links it, once per module digest;
//! - [`Linked`]: instantiates it in a task's `Store` and hands back its
//!   entry point ([`Entry`]), which runs it to its end.
//!
//! | file | kind | entry point |
//! |---|---|---|
//! | `p1.rs` | WASI preview 1 core module | `_start`; with `WASMTIME_WAGI=1`, per request (`wagi.rs`) |
//! | `command.rs` | WASI preview 2 command component | `wasi:cli/run.run` |
//! | `proxy.rs` | `wasi:http/proxy` component (a service) | `wasi:http/incoming-handler.handle`, per request |
//!
//! [`identify`] tells the kinds apart from the bytes. A kind that runs to
//! its end with the WASI context every guest gets is one more file here and
//! one line in `identify`; a kind that serves requests also overrides
//! [`Linked::start`], and makes an instance per request.

mod command;
mod p1;
mod proxy;
mod serve;
mod wagi;

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use wasmtime::{Engine, Linker, Store};

use super::cache::{Artifact, DiskCache};
use super::engine::Digest32;
use super::instance::{Guest, GuestState};
use super::module::Format;
use crate::http::settings::Settings as HttpSettings;
use crate::lifecycle::{GuestIo, Running};

/// What compiling and linking need: one per shim.
pub struct Toolbox {
    pub engine: Engine,
    pub disk: Option<DiskCache>,
    /// WASI preview 1, for core modules.
    pub modules: Linker<GuestState>,
    /// WASI 0.2 (`wasi:cli`, `wasi:filesystem`, `wasi:sockets`, ...), for
    /// components: built when the first component arrives, so that a shim
    /// that runs only modules never holds its thousands of definitions.
    components: OnceLock<wasmtime::component::Linker<GuestState>>,
}

impl Toolbox {
    pub fn new(engine: Engine, disk: Option<DiskCache>) -> Result<Self> {
        Ok(Self {
            modules: super::instance::module_linker(&engine)?,
            components: OnceLock::new(),
            engine,
            disk,
        })
    }

    /// The component linker, built on first use.
    pub fn components(&self) -> Result<&wasmtime::component::Linker<GuestState>> {
        if let Some(linker) = self.components.get() {
            return Ok(linker);
        }
        let linker = super::instance::component_linker(&self.engine)?;
        Ok(self.components.get_or_init(|| linker))
    }
}

/// One kind of guest.
pub trait Kind: Send + Sync {
    /// How messages name it.
    fn name(&self) -> &'static str;
    /// Compiles and links the guest. CPU-heavy: call on a blocking thread.
    fn link(&self, tools: &Toolbox, digest: &Digest32, bytes: &[u8]) -> Result<Arc<dyn Linked>>;
}

/// A compiled and linked guest, shared by every task that runs it.
#[async_trait]
pub trait Linked: Send + Sync {
    /// The kind's name, for logs.
    fn kind(&self) -> &'static str;
    /// Whether the guest imports `wasi:sockets`: only such a guest gets a
    /// network, and runs in its container's network namespace.
    fn uses_sockets(&self) -> bool {
        false
    }
    /// Whether a task of this guest serves HTTP, given what the container's
    /// env asks (`WASMTIME_WAGI`). A service listens in its container's
    /// network namespace, and SIGTERM and SIGINT ask it to drain its
    /// requests rather than stop it at once. An error: the env asks for
    /// what this kind cannot do.
    fn serves(&self, settings: &HttpSettings) -> Result<bool> {
        refuse_wagi(self.kind(), settings)?;
        Ok(false)
    }
    /// Starts a task of this guest. Most kinds instantiate it once and run
    /// its entry point to its end; a kind that serves requests overrides
    /// this and makes an instance per request.
    async fn start(self: Arc<Self>, guest: Guest, io: GuestIo) -> Result<Running> {
        guest.run_once(io).await
    }
    /// Instantiates the guest in `store`; an error fails Start.
    async fn instantiate(&self, store: &mut Store<GuestState>) -> Result<Box<dyn Entry>>;
}

/// An instantiated guest's entry point.
#[async_trait]
pub trait Entry: Send {
    /// Runs the guest to its end. `I32Exit` errors carry its exit code.
    async fn call(self: Box<Self>, store: &mut Store<GuestState>) -> wasmtime::Result<()>;
}

/// Refuses `WASMTIME_WAGI=1` for a kind other than a preview 1 module.
fn refuse_wagi(kind: &str, settings: &HttpSettings) -> Result<()> {
    if settings.wagi {
        bail!(
            "WASMTIME_WAGI=1 serves a WASI preview 1 module the WAGI way; this is a {kind}: \
             remove the variable"
        );
    }
    Ok(())
}

/// The export that makes a component a command (any 0.2.x).
const RUN: &str = "wasi:cli/run@0.2.";
/// The export that makes a component an HTTP service.
const HTTP_HANDLER: &str = "wasi:http/incoming-handler@0.2.";
/// How many export names an error lists at most.
const LISTED: usize = 10;

/// Tells what kind of guest `bytes` are, from their header and, for a
/// component, its exports. Parses the whole component: call on a blocking
/// thread, once per digest.
pub fn identify(bytes: &[u8]) -> Result<&'static dyn Kind> {
    if super::module::classify(bytes)? == Format::CoreModule {
        return Ok(&p1::P1Module);
    }
    let info = oci_artifact::inspect::inspect(bytes).context("read the component's exports")?;
    let exports = |prefix: &str| info.exports.iter().any(|e| e.starts_with(prefix));
    if exports(HTTP_HANDLER) {
        return Ok(&proxy::HttpProxy);
    }
    if exports(RUN) {
        return Ok(&command::Command);
    }
    let found = match info.exports.len() {
        0 => "none".to_string(),
        n if n <= LISTED => info.exports.join(", "),
        n => format!(
            "{}, and {} more",
            info.exports[..LISTED].join(", "),
            n - LISTED
        ),
    };
    if info.exports.iter().any(|e| e.contains("@0.3")) {
        bail!("the component is a WASI 0.3 component (exports: {found}); this shim runs WASI 0.2 components");
    }
    bail!(
        "the component exports {found}; a command component exports {RUN}x, \
         an HTTP service {HTTP_HANDLER}x"
    )
}

/// A compiled-code cache entry passed the header check but did not load,
/// and has been removed: the caller compiles the guest again (in a child,
/// where it can) and links once more.
#[derive(Debug)]
pub struct EntryDropped;

impl std::fmt::Display for EntryDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest's compiled code in the cache did not load")
    }
}

impl std::error::Error for EntryDropped {}

/// Loads the code the shim compiled for `bytes` before, or compiles them.
/// Fails with [`EntryDropped`] when there was an entry that did not load.
fn compile<A: Artifact>(tools: &Toolbox, digest: &Digest32, bytes: &[u8]) -> Result<A> {
    if let Some(disk) = &tools.disk {
        // A stat, not `holds`: Create already checked the header.
        let had_entry = disk.has_file(digest);
        if let Some(compiled) = disk.load::<A>(&tools.engine, digest) {
            tracing::debug!(digest = hex::encode(digest), "compiled-code cache hit");
            return Ok(compiled);
        }
        if had_entry {
            return Err(EntryDropped.into());
        }
    }
    let started = std::time::Instant::now();
    let compiled = A::compile(&tools.engine, bytes)?;
    tracing::info!(
        digest = hex::encode(digest),
        compile_ms = started.elapsed().as_millis() as u64,
        "compiled"
    );
    if let Some(disk) = &tools.disk {
        disk.store(digest, &compiled);
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn kinds_are_told_apart_by_header_and_exports() {
        let module = wat::parse_str("(module)").unwrap();
        assert_eq!(identify(&module).unwrap().name(), p1::P1Module.name());

        let run = component(
            r#"(component
                (core module $m (func (export "run") (result i32) i32.const 0))
                (core instance $i (instantiate $m))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $e (export "run" (func $run)))
                (export "wasi:cli/run@0.2.3" (instance $e)))"#,
        );
        assert_eq!(identify(&run).unwrap().name(), command::Command.name());

        let none = identify(&component("(component)")).err().unwrap();
        assert!(none.to_string().contains("exports none"), "{none}");
        assert!(none.to_string().contains("wasi:cli/run"), "{none}");

        assert!(identify(b"\0asm\x0d\0\x01\0\x07")
            .err()
            .unwrap()
            .to_string()
            .contains("component"));
        assert!(identify(b"\x7fELF\x02")
            .err()
            .unwrap()
            .to_string()
            .contains("native"));
    }
}
