//! WASI preview 2 command components: linked against WASI 0.2 (`wasi:cli`,
//! `wasi:filesystem`, `wasi:io`, `wasi:clocks`, `wasi:random`,
//! `wasi:sockets`), run by calling their `wasi:cli/run` export.
//!
//! Exit codes: `wasi:cli/exit.exit(ok)` is 0, `exit(err)` is 1, and
//! `exit-with-code(n)` is n; `run` returning `err` is 1, as `wasmtime run`
//! reports it. A C program made a component with the preview 1 command
//! adapter can only call `exit(ok | err)`, so its non-zero codes become 1.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Type};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::{Command as CommandBindings, CommandPre};
use wasmtime_wasi::I32Exit;

use super::{compile, Entry, Kind, Linked, Toolbox};
use crate::wasm::engine::Digest32;
use crate::wasm::instance::GuestState;

pub struct Command;

impl Kind for Command {
    fn name(&self) -> &'static str {
        "WASI preview 2 command component"
    }

    fn link(&self, tools: &Toolbox, digest: &Digest32, bytes: &[u8]) -> Result<Arc<dyn Linked>> {
        let component: Component = compile(tools, digest, bytes)?;
        check_run_export(&tools.engine, &component)?;
        let pre = tools
            .components()?
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component cannot be linked against WASI 0.2")?;
        let pre = CommandPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("its wasi:cli/run export is not the interface WASI 0.2 defines")?;
        let sockets = component
            .component_type()
            .imports(&tools.engine)
            .any(|(name, _)| {
                name.starts_with("wasi:sockets/") || name.starts_with("wasi:http/outgoing-handler")
            });
        Ok(Arc::new(LinkedCommand { pre, sockets }))
    }
}

/// Checks, before any task starts, that the `wasi:cli/run` export is an
/// instance whose `run` is `func() -> result`, as WASI 0.2 defines it:
/// Wasmtime would otherwise find out only at instantiation, in Start.
fn check_run_export(engine: &Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let (name, export) = ty
        .exports(engine)
        .find(|(name, _)| name.starts_with("wasi:cli/run@0.2"))
        .context("the component exports no wasi:cli/run@0.2.x")?;
    let wrong = |found: String| {
        anyhow::anyhow!(
            "its {name} export is not the interface WASI 0.2 defines: \
             `run` must be `func() -> result`, found {found}"
        )
    };
    let ComponentItem::ComponentInstance(instance) = export.ty else {
        return Err(wrong("an export that is not an instance".into()));
    };
    let Some(run) = instance.get_export(engine, "run") else {
        return Err(wrong("an instance without `run`".into()));
    };
    let ComponentItem::ComponentFunc(func) = run.ty else {
        return Err(wrong("a `run` that is not a function".into()));
    };
    let results: Vec<Type> = func.results().collect();
    let ok = func.params().len() == 0
        && matches!(results.as_slice(), [Type::Result(r)] if r.ok().is_none() && r.err().is_none());
    if !ok {
        return Err(wrong(format!(
            "a function of {} parameters and results {results:?}",
            func.params().len()
        )));
    }
    Ok(())
}

struct LinkedCommand {
    pre: CommandPre<GuestState>,
    /// Whether it imports any `wasi:sockets` interface, or sends HTTP
    /// requests: either needs its container's network.
    sockets: bool,
}

#[async_trait]
impl Linked for LinkedCommand {
    fn kind(&self) -> &'static str {
        Command.name()
    }

    fn uses_sockets(&self) -> bool {
        self.sockets
    }

    async fn instantiate(&self, store: &mut Store<GuestState>) -> Result<Box<dyn Entry>> {
        let command = self
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(Box::new(Run(command)))
    }
}

struct Run(CommandBindings);

#[async_trait]
impl Entry for Run {
    async fn call(self: Box<Self>, store: &mut Store<GuestState>) -> wasmtime::Result<()> {
        match self.0.wasi_cli_run().call_run(store).await? {
            Ok(()) => Ok(()),
            Err(()) => Err(wasmtime::Error::new(I32Exit(1))),
        }
    }
}
