//! Logs go through `tracing`. The shim server writes them to the `log` FIFO
//! that containerd opens in the bundle folder and copies into its own log;
//! the short-lived `start` and `delete` commands write to stderr, which
//! containerd reports when they fail. `RUST_LOG` overrides the level, as
//! `target=level` directives (`debug`, `info,wasmtime=debug`): a
//! `filter::Targets`, whose parser needs no regular expressions, unlike
//! `EnvFilter`'s (which would keep a regex engine's code and tables in
//! every idle shim).
//!
//! A shim outlives the bundle it started in when it is shared (a pod's, or a
//! namespace's in shared mode): containerd opens a `log` FIFO for every
//! container's bundle, so the server moves its log to a live one: when the
//! container it logs through is deleted, and when a Create finds that
//! container's bundle gone.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where the server's log lines go: the `log` FIFO of one bundle.
static TARGET: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

pub fn init(server: bool, debug: bool) {
    // The compiler's own debug output is thousands of lines per module: keep it out.
    let default = if debug {
        "debug,cranelift_codegen=info,wasmtime_internal_cranelift=info,wasmtime=info"
    } else {
        "info"
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| default.parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false);
    // A second init (tests, or a logger already set) is harmless: ignore it.
    let _ = if server && follow(Path::new(".")) {
        builder
            .with_writer(FifoWriter)
            .finish()
            .with(filter)
            .try_init()
    } else {
        builder
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .try_init()
    };
}

/// Sends the log to `bundle`'s `log` FIFO from now on, if containerd reads
/// it. Returns whether it does.
pub fn follow(bundle: &Path) -> bool {
    // Non-blocking open: it fails at once when no one reads the FIFO.
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"));
    let Ok(file) = file else {
        return false;
    };
    let dir = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
    *TARGET.lock().unwrap_or_else(|e| e.into_inner()) = Some((dir, file));
    true
}

/// Sends the log to `bundle`'s FIFO if the bundle it goes to is gone.
pub fn follow_if_gone(bundle: &Path) {
    let gone = TARGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_none_or(|(dir, _)| !dir.exists());
    if gone {
        follow(bundle);
    }
}

/// Whether the log goes to this bundle's FIFO.
pub fn follows(bundle: &Path) -> bool {
    TARGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|(dir, _)| dir == bundle)
}

struct FifoWriter;

/// One log line's writer. A full FIFO (containerd not reading) drops the
/// line rather than stall the shim.
struct Line;

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((_, file)) = TARGET.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FifoWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line
    }
}
