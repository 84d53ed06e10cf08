//! The task's standard streams: containerd's FIFOs (or a `file://` log URI),
//! turned into async readers and writers that an engine hands to its guest.
//!
//! Two details matter for `ctr` to behave as it does with runc:
//! - stdout and stderr FIFOs are opened read-write. Opening never blocks, and a
//!   client that goes away (`ctr run -d`) does not turn the guest's writes into
//!   `EPIPE`. The shim must then close its ends when the task exits, or a
//!   client waiting for EOF would wait forever: [`Writer::close`] does that.
//! - stdin is opened read-only, which blocks until the client opens its end;
//!   that happens on a blocking thread so it never holds up a request.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::error::{Error, Kind, Result, ResultExt};

/// The paths containerd gave for a task's streams.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

type BoxWriter = Pin<Box<dyn AsyncWrite + Send + Sync>>;

/// A shareable writer that the shim can close from outside, whoever holds a clone.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<Option<BoxWriter>>>);

impl Writer {
    fn new(inner: impl AsyncWrite + Send + Sync + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::pin(inner)))))
    }

    /// Drops the underlying file, so readers of the FIFO see EOF. Later writes fail.
    pub fn close(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn with<R>(
        &self,
        f: impl FnOnce(Pin<&mut (dyn AsyncWrite + Send + Sync)>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(w) => f(w.as_mut()),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|w| w.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|w| w.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|w| w.poll_shutdown(cx))
    }
}

/// The open streams of one task.
pub struct TaskIo {
    /// Taken once, by the engine, when the task starts.
    pub stdin: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    pub stdout: Writer,
    pub stderr: Writer,
    stdin_path: String,
    stdin_pump: Option<JoinHandle<()>>,
}

impl TaskIo {
    /// Opens the streams. Fails with a clear error for a terminal, which a
    /// wasm guest cannot drive, and for log URIs other than `file://`.
    pub async fn open(paths: &StdioPaths) -> Result<Self> {
        if paths.terminal {
            return Err(Error::invalid(
                "a terminal was requested (-t), but wasm guests have no terminal: run without -t",
            ));
        }
        let stdout = open_output(&paths.stdout)
            .await
            .kind(Kind::Internal, "open stdout")?;
        let stderr = open_output(&paths.stderr)
            .await
            .kind(Kind::Internal, "open stderr")?;
        let (stdin, stdin_pump) = open_input(&paths.stdin);
        Ok(Self {
            stdin: Some(stdin),
            stdout,
            stderr,
            stdin_path: paths.stdin.clone(),
            stdin_pump,
        })
    }

    /// Ends the guest's stdin (CloseIO): it reads EOF from now on.
    pub fn close_stdin(&mut self) {
        if let Some(pump) = self.stdin_pump.take() {
            pump.abort();
            release_blocked_open(&self.stdin_path);
        }
    }

    /// Closes every stream. Called when the task exits and when it is deleted.
    pub fn close(&mut self) {
        self.close_stdin();
        self.stdout.close();
        self.stderr.close();
    }
}

impl Drop for TaskIo {
    fn drop(&mut self) {
        self.close();
    }
}

async fn open_output(path: &str) -> io::Result<Writer> {
    if path.is_empty() {
        return Ok(Writer::new(tokio::io::sink()));
    }
    if let Some(file) = path.strip_prefix("file://") {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .await?;
        return Ok(Writer::new(f));
    }
    if path.contains("://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("log URI {path:?} is not supported; use a FIFO or file://"),
        ));
    }
    let sender = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)?;
    Ok(Writer::new(sender))
}

/// Returns the guest's stdin, and the task that copies the FIFO into it.
fn open_input(
    path: &str,
) -> (
    Box<dyn AsyncRead + Send + Sync + Unpin>,
    Option<JoinHandle<()>>,
) {
    if path.is_empty() {
        return (Box::new(tokio::io::empty()), None);
    }
    let (guest_end, mut shim_end) = tokio::io::duplex(64 * 1024);
    let path = path.to_owned();
    let pump = tokio::spawn(async move {
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::OpenOptions::new().read(true).open(path)
        })
        .await;
        let file = match opened {
            Ok(Ok(file)) => file,
            Ok(Err(err)) => {
                tracing::warn!(%path, %err, "cannot open stdin");
                return;
            }
            Err(_) => return,
        };
        match pipe::Receiver::from_file(file) {
            Ok(mut fifo) => {
                if let Err(err) = tokio::io::copy(&mut fifo, &mut shim_end).await {
                    tracing::debug!(%path, %err, "stdin copy ended");
                }
            }
            Err(err) => tracing::warn!(%path, %err, "stdin is not a FIFO"),
        }
    });
    (Box::new(guest_end), Some(pump))
}

/// A blocking read-open of a FIFO waits for a writer. If the client never
/// came, open the write end once without blocking, so that thread can finish.
fn release_blocked_open(path: &str) {
    if path.is_empty() || path.contains("://") {
        return;
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(Path::new(path));
}
