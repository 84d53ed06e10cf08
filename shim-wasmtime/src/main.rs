//! `containerd-shim-wasmtime-v1`: runs WebAssembly (WASI preview 1) modules as
//! containerd tasks, each in a Wasmtime instance of its own inside this process.
//!
//! Reading order: [`shim`] (process model) → [`service`] (Task API) →
//! [`lifecycle`] (engine-neutral task states) → [`wasm`] (Wasmtime).

mod lifecycle;
mod logging;
mod runc;
mod service;
mod shim;
mod wasm;

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<shim::WasmtimeShim>(RUNTIME_ID, None).await;
}
