//! `containerd-shim-wasmtime-v1`: runs WebAssembly (WASI preview 1) modules as
//! containerd tasks, each in a Wasmtime instance of its own inside this process.
//!
//! Reading order: [`shim`] (process model) → [`service`] (Task API) →
//! [`lifecycle`] (engine-neutral task states) → [`wasm`] (Wasmtime).
//! [`flags`] answers `-v` and `-info` before any of that starts, and
//! [`wasm::compiler`] the shim's own `compile` child; [`http`] serves the
//! tasks that answer requests.

mod child;
mod flags;
mod http;
mod lifecycle;
mod logging;
mod runc;
mod sandbox;
mod service;
mod shim;
mod task_api;
mod wasm;

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = wasm::compiler::child_main(&args) {
        std::process::exit(code);
    }
    if let Some(flag) = flags::own_flag(&args) {
        std::process::exit(flags::answer(flag));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<shim::WasmtimeShim>(
        RUNTIME_ID, None,
    ));
}
