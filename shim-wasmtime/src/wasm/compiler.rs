//! Compiling a guest in a short-lived child process.
//!
//! A shim lives as long as its containers, and most of that time it is idle.
//! Compiling in it would leave behind what no later task needs: Cranelift's
//! pages of code faulted in (about 5 MiB), and the heap the compile used
//! (about 8 MiB: the allocator keeps freed memory, Wasmtime keeps compiler
//! contexts for the next compile, and rayon keeps its threads). So on a
//! cache miss the shim runs its own binary as `compile DIR MAX_BYTES`, hands
//! it the wasm on stdin, and the child compiles with the same engine settings
//! and writes the code into the compiled-code cache ([`super::cache`]). The
//! shim then maps it from there like any cache hit: file-backed, and shared
//! with every other shim that runs the guest.
//!
//! The child is the running binary (`/proc/self/exe`), so an upgrade of the
//! file on disk cannot give the shim code from another engine; if it did,
//! the entry's name (which includes the engine's compatibility hash) would
//! not match and the shim would compile in-process. It also compiles
//! in-process when there is no disk cache, or when the child cannot run.
//! The child dies with the shim (`PR_SET_PDEATHSIG`) and with a cancelled
//! Create.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use wasmtime::component::Component;
use wasmtime::Module;

use super::cache::{Artifact, DiskCache};
use super::engine::{self, Settings};
use super::module::{classify, Format};

/// The first argument that makes the binary a compiler.
pub const SUBCOMMAND: &str = "compile";

/// The child's exit status when its input is not a guest it can compile;
/// its stderr says why. It exits with [`EXIT_FAILED`] for anything else.
const EXIT_INVALID: i32 = 1;
const EXIT_FAILED: i32 = 2;

/// Longest child's message kept in an error.
const MAX_MESSAGE: usize = 4096;

/// Why a child did not compile a guest.
#[derive(Debug)]
pub enum Failure {
    /// The guest is not valid: the error for Create.
    Invalid(anyhow::Error),
    /// The child could not do its work: compile in-process instead.
    Unavailable(anyhow::Error),
}

/// The compiler: the running shim binary.
const EXE: &str = "/proc/self/exe";

/// Compiles `bytes` (whose sha256 is `digest`) into `disk` in a child.
/// `Ok` once the cache holds the code.
pub async fn compile(
    disk: &DiskCache,
    digest: &engine::Digest32,
    bytes: &[u8],
) -> Result<(), Failure> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(EXE);
    cmd.arg(SUBCOMMAND)
        .arg(disk.dir())
        .arg(disk.max_bytes().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl(2) is async-signal-safe and takes no pointers.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = crate::child::output(&mut cmd, bytes)
        .await
        .map_err(|err| Failure::Unavailable(anyhow!(err).context("run the compiler")))?;
    let said = || {
        let text = String::from_utf8_lossy(&out.stderr);
        let text = text.trim();
        let mut end = text.len().min(MAX_MESSAGE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    };
    match out.status {
        0 if disk.holds(digest) => {
            tracing::info!(
                digest = hex::encode(digest),
                compile_ms = started.elapsed().as_millis() as u64,
                "compiled in a child process"
            );
            Ok(())
        }
        0 => Err(Failure::Unavailable(anyhow!(
            "the compiler wrote no cache entry (another engine?)"
        ))),
        EXIT_INVALID => Err(Failure::Invalid(anyhow!(said()))),
        status => Err(Failure::Unavailable(anyhow!(
            "the compiler failed (exit status {status}): {}",
            said()
        ))),
    }
}

/// The child's side: `containerd-shim-wasmtime-v1 compile DIR MAX_BYTES`
/// with the wasm on stdin. `None` when `args` ask for something else.
pub fn child_main(args: &[OsString]) -> Option<i32> {
    let [sub, dir, max_bytes] = args else {
        return None;
    };
    if sub.as_bytes() != SUBCOMMAND.as_bytes() {
        return None;
    }
    let (code, err) = match run_child(Path::new(dir), max_bytes) {
        Ok(()) => return Some(0),
        Err(Failure::Invalid(err)) => (EXIT_INVALID, err),
        Err(Failure::Unavailable(err)) => (EXIT_FAILED, err),
    };
    let _ = write!(std::io::stderr(), "{err:#}");
    Some(code)
}

fn run_child(dir: &Path, max_bytes: &OsString) -> Result<(), Failure> {
    let failed = Failure::Unavailable;
    let max_bytes: u64 = max_bytes
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(anyhow!("MAX_BYTES is not a number")))?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|err| failed(anyhow!(err).context("read the guest from stdin")))?;
    // The same engine as the shim's, from the same environment.
    let engine = engine::build_engine(&Settings::from_env()).map_err(failed)?;
    let disk = DiskCache::open(dir, &engine, max_bytes).map_err(failed)?;
    let digest = engine::sha256(&bytes);
    match classify(&bytes).map_err(Failure::Invalid)? {
        Format::CoreModule => store(&disk, &digest, Module::compile(&engine, &bytes)),
        Format::Component => store(&disk, &digest, Component::compile(&engine, &bytes)),
    }
}

fn store<A: Artifact>(
    disk: &DiskCache,
    digest: &engine::Digest32,
    compiled: Result<A>,
) -> Result<(), Failure> {
    let compiled = compiled.map_err(Failure::Invalid)?;
    disk.try_store(digest, &compiled)
        .context("write the compiled code")
        .map_err(Failure::Unavailable)
}
