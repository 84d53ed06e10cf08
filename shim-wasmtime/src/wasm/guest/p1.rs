//! WASI preview 1 core modules: linked against `wasi_snapshot_preview1`,
//! run by calling their `_start` export: once, or, with `WASMTIME_WAGI=1`,
//! once per HTTP request (`wagi.rs`).

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use wasmtime::{InstancePre, Module, Store, TypedFunc};

use super::{compile, Entry, Kind, Linked, Toolbox};
use crate::http::settings::Settings as HttpSettings;
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::engine::Digest32;
use crate::wasm::instance::{Guest, GuestState};

pub struct P1Module;

impl Kind for P1Module {
    fn name(&self) -> &'static str {
        "WASI preview 1 module"
    }

    fn link(&self, tools: &Toolbox, digest: &Digest32, bytes: &[u8]) -> Result<Arc<dyn Linked>> {
        let module: Module = compile(tools, digest, bytes)?;
        let pre = tools
            .modules
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("the module cannot be linked against WASI preview 1")?;
        Ok(Arc::new(LinkedModule(pre)))
    }
}

struct LinkedModule(InstancePre<GuestState>);

#[async_trait]
impl Linked for LinkedModule {
    fn kind(&self) -> &'static str {
        P1Module.name()
    }

    /// With `WASMTIME_WAGI=1`, the module serves HTTP the WAGI way.
    fn serves(&self, settings: &HttpSettings) -> Result<bool> {
        Ok(settings.wagi)
    }

    async fn start(self: Arc<Self>, guest: Guest, io: GuestIo) -> Result<Running> {
        if guest.http.wagi {
            super::wagi::start(self, guest, io).await
        } else {
            guest.run_once(io).await
        }
    }

    async fn instantiate(&self, store: &mut Store<GuestState>) -> Result<Box<dyn Entry>> {
        let instance = self
            .0
            .instantiate_async(&mut *store)
            .await
            .map_err(anyhow::Error::from)?;
        let start = instance
            .get_typed_func::<(), ()>(&mut *store, "_start")
            .map_err(anyhow::Error::from)
            .context("it exports no `_start` function: it is not a WASI command")?;
        Ok(Box::new(Start(start)))
    }
}

struct Start(TypedFunc<(), ()>);

#[async_trait]
impl Entry for Start {
    async fn call(self: Box<Self>, store: &mut Store<GuestState>) -> wasmtime::Result<()> {
        self.0.call_async(store, ()).await
    }
}
