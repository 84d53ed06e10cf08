//! Logs go through `tracing`. The shim server writes them to the `log` FIFO
//! that containerd opens in the bundle folder and copies into its own log;
//! the short-lived `start` and `delete` commands write to stderr, which
//! containerd reports when they fail. `RUST_LOG` overrides the level.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

pub fn init(server: bool, debug: bool) {
    // The compiler's own debug output is thousands of lines per module: keep it out.
    let default = if debug {
        "debug,cranelift_codegen=info,wasmtime_internal_cranelift=info,wasmtime=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let fifo = server
        .then(|| OpenOptions::new().write(true).open("log").ok())
        .flatten();
    // A second init (tests, or a logger already set) is harmless: ignore it.
    let _ = match fifo {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
