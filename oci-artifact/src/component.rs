//! Making a WASI preview 2 component from a WASI preview 1 module, the way
//! the ecosystem does it: `wit-component` wraps the module with Wasmtime's
//! preview 1 adapter, which implements `wasi_snapshot_preview1` on top of
//! WASI 0.2. The adapter comes from the Wasmtime release the shim links
//! (`wasi-preview1-component-adapter-provider`), so the component's
//! `wasi:*@0.2.x` imports are ones the shim provides.

use anyhow::{ensure, Context, Result};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

/// Which adapter: what the component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// A program with a `main` (`_start`): exports `wasi:cli/run`.
    Command,
    /// A library: exports what the module exports.
    Reactor,
    /// An HTTP handler: exports `wasi:http/incoming-handler`.
    Proxy,
}

/// A WIT world that declares what a module imports from WASI 0.2 (or
/// elsewhere) directly, beside preview 1: a folder of WIT with its `deps/`,
/// and the world's name.
pub struct World<'a> {
    pub wit: &'a std::path::Path,
    pub name: &'a str,
}

/// Wraps a preview 1 core module into a component with `adapter`. A module
/// that also imports component-model functions directly (C code declaring
/// `wasi:sockets` imports, say) needs the `world` that declares them; it is
/// embedded in the module first, as `wit-bindgen` would.
pub fn componentize(module: &[u8], adapter: Adapter, world: Option<World<'_>>) -> Result<Vec<u8>> {
    ensure!(
        wasmparser::Parser::is_core_wasm(module),
        "the input is not a WebAssembly core module (a component already, or not wasm)"
    );
    let mut module = module.to_vec();
    if let Some(world) = world {
        let mut resolve = wit_parser::Resolve::default();
        let (package, _) = resolve
            .push_path(world.wit)
            .with_context(|| format!("read the WIT in {}", world.wit.display()))?;
        let id = resolve
            .select_world(&[package], Some(world.name))
            .with_context(|| format!("find world {} in {}", world.name, world.wit.display()))?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            id,
            wit_component::StringEncoding::UTF8,
        )
        .context("embed the world in the module")?;
    }
    let bytes = match adapter {
        Adapter::Command => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        Adapter::Reactor => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        Adapter::Proxy => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
    };
    let mut encoder = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("read the module")?;
    // A module that imports nothing of preview 1 (all of its WASI through
    // its world) needs no adapter, and the adapter's own exports would
    // clash with the module's.
    if imports_preview1(&module)? {
        encoder = encoder
            .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, bytes)
            .context("add the preview 1 adapter")?;
    }
    encoder
        .validate(true)
        .encode()
        .context("encode the component")
}

/// Whether the core module imports anything from `wasi_snapshot_preview1`.
fn imports_preview1(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(imports) = payload.context("parse the module")? {
            for import in imports.into_imports() {
                if import.context("parse the module's imports")?.module
                    == WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_module_becomes_a_command_component() {
        let module = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") i32.const 3 call $exit))"#,
        )
        .unwrap();
        let component = componentize(&module, Adapter::Command, None).unwrap();
        let info = crate::inspect::inspect(&component).unwrap();
        assert!(info.component);
        assert!(
            info.exports
                .iter()
                .any(|e| e.starts_with("wasi:cli/run@0.2.")),
            "{info:?}"
        );
        assert!(componentize(&component, Adapter::Command, None).is_err());
    }
}
