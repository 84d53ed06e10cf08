//! The task's standard streams: containerd's FIFOs (or a `file://` log URI),
//! turned into async readers and writers that an engine hands to its guest.
//!
//! As runc's shim does, output does not go straight into the FIFO:
//! - The guest writes into an in-memory pipe. A pump copies it into the FIFO
//!   once the client (ctr, CRI) has opened the FIFO's read end, so nothing
//!   written before the client is there is lost, and closing our end never
//!   throws away data the client has yet to read.
//! - The pump also holds a read end of its own, so a client that goes away
//!   (`ctr run -d`) does not turn the guest's writes into `EPIPE`.
//! - When the guest ends, its end is closed; the pump drains what is left
//!   and closes the FIFO, and the client sees EOF.
//!
//! stdin is the guest's `/dev/stdin` too (`devices`), so nothing reads it
//! ahead: the FIFO is opened, on a blocking thread (the open waits for the
//! client's end), and copied only once the guest first reads fd 0. CloseIO
//! hands the guest what the client wrote, then EOF.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::devices::{DevOutput, DevPumps};
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

/// A shareable writer that the shim can close from outside, whoever holds a
/// clone. Several tasks may write at once (the guest's fd 1 and its
/// `/dev/stdout`): the writers underneath keep one waker each, so every
/// writer that finds it full is remembered and all are woken when it drains.
#[derive(Clone)]
pub struct Writer(Arc<WriterShared>);

struct WriterShared {
    inner: Mutex<Option<BoxWriter>>,
    waiting: Arc<Waiting>,
}

/// The writers waiting for the one underneath; woken together.
#[derive(Default)]
struct Waiting(Mutex<Vec<Waker>>);

impl Wake for Waiting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiting = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiting {
            waker.wake();
        }
    }
}

impl Writer {
    fn new(inner: impl AsyncWrite + Send + Sync + 'static) -> Self {
        Self(Arc::new(WriterShared {
            inner: Mutex::new(Some(Box::pin(inner))),
            waiting: Arc::default(),
        }))
    }

    /// Drops the underlying file, so readers of the FIFO see EOF. Later writes fail.
    pub fn close(&self) {
        self.0
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Writers waiting for room get their error now.
        Waker::from(self.0.waiting.clone()).wake();
    }

    fn with<R>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(
            Pin<&mut (dyn AsyncWrite + Send + Sync)>,
            &mut Context<'_>,
        ) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut guard = self.0.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = guard.as_mut() else {
            tracing::debug!("a write after the task's output was closed");
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let all = Waker::from(self.0.waiting.clone());
        let mut all = Context::from_waker(&all);
        if let Poll::Ready(done) = f(w.as_mut(), &mut all) {
            return Poll::Ready(done);
        }
        // Full: wait with the others. The writer underneath may have woken
        // them between that poll and this registration, so poll again now
        // that this task is among them.
        let waiting = &self.0.waiting.0;
        {
            let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
        }
        let polled = f(w.as_mut(), &mut all);
        if polled.is_ready() {
            waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|w| !w.will_wake(cx.waker()));
        }
        polled
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(cx, |w, cx| w.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(cx, |w, cx| w.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(cx, |w, cx| w.poll_shutdown(cx))
    }
}

/// The open streams of one task.
pub struct TaskIo {
    /// Taken once, by the engine, when the task starts.
    pub stdin: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    pub stdout: Writer,
    pub stderr: Writer,
    stdin_path: String,
    stdin_pump: Option<StdinPump>,
    /// Set when the task is deleted: output pumps still waiting for a
    /// client give up.
    released: Arc<AtomicBool>,
    /// Where each output pump is: see [`TaskIo::close_output`].
    pumped: Vec<PumpWatch>,
    /// The copies of what guests write into `/dev/stdout` and `/dev/stderr`.
    dev: Option<DevPumps>,
}

/// Where an output pump is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpState {
    /// No client has opened the FIFO yet.
    Waiting,
    /// Copying into a client's FIFO.
    Copying,
    Done,
}

/// What the task sees of one output pump: its state, and how many bytes it
/// has handed its client so far.
#[derive(Clone)]
struct PumpWatch {
    state: watch::Receiver<PumpState>,
    copied: Arc<AtomicU64>,
}

/// Sets a pump's state to Done however it ends.
struct DoneOnDrop(watch::Sender<PumpState>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(PumpState::Done);
    }
}

impl TaskIo {
    /// Opens the streams, and copies what guests write into `dev` (their
    /// `/dev/stdout` and `/dev/stderr`) to them. Fails with a clear error
    /// for a terminal, which a wasm guest cannot drive, and for log URIs
    /// other than `file://`.
    pub async fn open(paths: &StdioPaths, pumps: &Pumps, dev: Option<DevOutput>) -> Result<Self> {
        if paths.terminal {
            return Err(Error::invalid(
                "a terminal was requested (-t), but wasm guests have no terminal: run without -t",
            ));
        }
        let released = Arc::new(AtomicBool::new(false));
        let mut pumped = Vec::new();
        let stdout = open_output(&paths.stdout, &released, pumps, &mut pumped)
            .await
            .kind(Kind::Internal, "open stdout")?;
        let stderr = open_output(&paths.stderr, &released, pumps, &mut pumped)
            .await
            .kind(Kind::Internal, "open stderr")?;
        let dev = dev
            .map(|dev| dev.pump(&stdout, &stderr))
            .transpose()
            .kind(Kind::Internal, "read /dev/stdout and /dev/stderr")?;
        let (stdin, stdin_pump) = open_input(&paths.stdin);
        Ok(Self {
            stdin: Some(stdin),
            stdout,
            stderr,
            stdin_path: paths.stdin.clone(),
            stdin_pump,
            released,
            pumped,
            dev,
        })
    }

    /// Ends the guest's output (its pumps see EOF, once what is left in its
    /// `/dev/stdout` and `/dev/stderr` is copied) and returns a future that
    /// resolves once every pump has handed its client all, or the client has
    /// stopped reading: nothing moved for [`STALL_LIMIT`], or [`MAX_DRAIN`]
    /// has passed. A client that has not opened its FIFO yet gets
    /// [`CLIENT_OPEN_WAIT`]. A task reports its exit only then, as a process
    /// would after its last write: clients (`ctr`) act on the exit at once,
    /// and lost the tail of a large output still on its way, or all of it
    /// when they had not opened their FIFO yet (they open them on
    /// goroutines, late on a loaded machine).
    pub fn close_output(&mut self) -> impl std::future::Future<Output = ()> {
        let dev = self.dev.take();
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let mut pumped = self.pumped.clone();
        async move {
            if let Some(dev) = dev {
                dev.finish().await;
            }
            stdout.close();
            stderr.close();
            let give_up = tokio::time::Instant::now() + MAX_DRAIN;
            for pump in &mut pumped {
                loop {
                    let step = match *pump.state.borrow() {
                        PumpState::Waiting => CLIENT_OPEN_WAIT,
                        _ => STALL_LIMIT,
                    };
                    let before = pump.copied.load(Ordering::Relaxed);
                    let done = pump.state.wait_for(|s| *s == PumpState::Done);
                    if tokio::time::timeout(step, done).await.is_ok() {
                        break;
                    }
                    let moving = pump.copied.load(Ordering::Relaxed) != before;
                    if !moving || tokio::time::Instant::now() >= give_up {
                        break;
                    }
                }
            }
        }
    }

    /// Ends the guest's stdin (CloseIO): it reads what the client wrote,
    /// then EOF. The client asks once it has written all it had, so what it
    /// wrote is in the FIFO: an open pump copies that and ends. A pump that
    /// has not opened the FIFO yet (the guest has not read fd 0) ends
    /// without it, its open released if it waits.
    pub fn close_stdin(&mut self) {
        if let Some(close) = self.stdin_pump.as_mut().and_then(|p| p.close.take()) {
            let _ = close.send(());
            release_blocked_open(&self.stdin_path);
        }
    }

    /// Stops reading stdin at once, and releases any open of the FIFO still
    /// waiting for its other end (the shim's, or a guest's of `/dev/stdin`).
    fn stop_stdin(&mut self) {
        if let Some(pump) = self.stdin_pump.take() {
            pump.task.abort();
            release_blocked_open(&self.stdin_path);
        }
    }

    /// Closes every stream. Called when the task exits and when it is deleted.
    pub fn close(&mut self) {
        self.dev.take();
        self.stop_stdin();
        self.stdout.close();
        self.stderr.close();
    }
}

impl Drop for TaskIo {
    fn drop(&mut self) {
        self.close();
        self.released.store(true, Ordering::Relaxed);
    }
}

async fn open_output(
    path: &str,
    released: &Arc<AtomicBool>,
    pumps: &Pumps,
    pumped: &mut Vec<PumpWatch>,
) -> io::Result<Writer> {
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
    let meta = tokio::fs::metadata(path).await?;
    if !std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path} is not a FIFO"),
        ));
    }
    let (guest_end, shim_end) = tokio::io::duplex(64 * 1024);
    let active = pumps.start();
    let (state, watching) = watch::channel(PumpState::Waiting);
    let copied = Arc::new(AtomicU64::new(0));
    pumped.push(PumpWatch {
        state: watching,
        copied: copied.clone(),
    });
    // Open the FIFO now, in Create, when the client is already there (ctr
    // and CRI open their read ends before they send Create): a client that
    // reads before any writer has opened the FIFO sees end-of-file, and
    // stops. Only a client that is not there yet is waited for.
    let opened = open_for_writing(path);
    let pump = pump_output(
        path.to_owned(),
        opened,
        shim_end,
        released.clone(),
        state,
        copied,
    );
    tokio::spawn(async move {
        pump.await;
        drop(active);
    });
    Ok(Writer::new(guest_end))
}

/// Copies the guest's output into the FIFO at `path`, once a client has
/// opened it for reading. Ends when the guest's end is closed and all is
/// copied, or when the task is deleted with no client ever there.
/// Counts the output pumps still running, so the shim can let them finish
/// before it exits: a client may read a short task's output only after the
/// task (and the shim's last task) has been deleted.
#[derive(Clone, Default)]
pub struct Pumps(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

/// One running pump; dropping it counts it out.
pub struct ActivePump(Pumps);

impl Drop for ActivePump {
    fn drop(&mut self) {
        if (self.0).0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
            (self.0).0 .1.notify_waiters();
        }
    }
}

impl Pumps {
    fn start(&self) -> ActivePump {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        ActivePump(self.clone())
    }

    /// Waits until no pump runs, or `limit` has passed.
    pub async fn idle(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.0 .1.notified();
                if self.0 .0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

/// How long an output pump still waits for a client after its task is deleted.
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// How long a task's exit waits for output that does not move: a client
/// that reads nothing for this long must not hold the exit up.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// The longest a task's exit waits for a client that keeps reading.
const MAX_DRAIN: Duration = Duration::from_secs(60);

/// How long a task's exit waits for a client to open its output FIFO. A
/// pump exists only for a FIFO containerd named, so a client is coming.
const CLIENT_OPEN_WAIT: Duration = Duration::from_secs(5);

/// Opens the FIFO's write end without blocking: `ENXIO` while no reader
/// has it open.
fn open_for_writing(path: &str) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

async fn pump_output(
    path: String,
    mut opened: io::Result<std::fs::File>,
    mut from: tokio::io::DuplexStream,
    released: Arc<AtomicBool>,
    state: watch::Sender<PumpState>,
    copied: Arc<AtomicU64>,
) {
    let state = DoneOnDrop(state);
    // A non-blocking write-open succeeds only once a reader exists.
    //
    // A client may open its end late (ctr opens its FIFOs on goroutines,
    // and under load that can come after a short guest has already ended).
    // So keep trying: every few ms at first, then less often; and once the
    // task is deleted, quickly again for a grace period before giving up,
    // since that is exactly when a waiting client reads.
    let mut backoff = Duration::from_millis(2);
    let mut released_at: Option<std::time::Instant> = None;
    let fifo = loop {
        match opened {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if released.load(Ordering::Relaxed) {
                    let since = *released_at.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > RELEASE_GRACE {
                        tracing::debug!(%path, "output FIFO never opened by a client");
                        return;
                    }
                    backoff = Duration::from_millis(2);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                opened = open_for_writing(&path);
            }
            Err(e) => {
                tracing::debug!(%path, err = %e, "cannot open the output FIFO");
                return;
            }
        }
    };
    state.0.send_replace(PumpState::Copying);
    // Our own read end keeps writes from failing if the client goes away.
    let keep_open = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path);
    let mut sender = match pipe::Sender::from_file(fifo) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%path, err = %e, "cannot use the output FIFO");
            return;
        }
    };
    match copy_counting(&mut from, &mut sender, &copied).await {
        Ok(()) => tracing::debug!(%path, bytes = copied.load(Ordering::Relaxed), "output copied"),
        Err(e) => tracing::debug!(%path, err = %e, "output copy ended"),
    }
    wait_until_read(&sender, &path, &released).await;
    drop(keep_open);
}

/// How long a pump waits for its client to take what is in the FIFO; and,
/// once the task is deleted (a client that was going to read has read by
/// then, or has given up), how much longer at most.
const READ_WAIT: Duration = Duration::from_secs(10);
const READ_WAIT_AFTER_DELETE: Duration = Duration::from_secs(1);

/// Waits until the client has read everything in the FIFO. Until it has
/// read, it may still be inside its open(2) (woken by our open, not yet
/// back), and containerd's client cancels FIFO opens that have not
/// returned when it deletes the task, which it does as soon as the exit is
/// reported: a short guest's whole output was lost that way, under load.
async fn wait_until_read(fifo: &impl std::os::fd::AsRawFd, path: &str, released: &AtomicBool) {
    let mut deadline = tokio::time::Instant::now() + READ_WAIT;
    let mut shortened = false;
    let mut pause = Duration::from_micros(200);
    loop {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD on a pipe writes one int: the bytes unread.
        let rc = unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut unread) };
        if rc != 0 || unread == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        if !shortened && released.load(Ordering::Relaxed) {
            shortened = true;
            deadline = deadline.min(now + READ_WAIT_AFTER_DELETE);
        }
        if now >= deadline {
            tracing::debug!(%path, unread, "output FIFO not read by its client");
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Copies `from` into `to` until EOF, counting the bytes handed on.
async fn copy_counting(
    from: &mut tokio::io::DuplexStream,
    to: &mut pipe::Sender,
    copied: &AtomicU64,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The task that copies containerd's stdin FIFO into the guest's stdin.
struct StdinPump {
    task: JoinHandle<()>,
    /// Asks the pump to copy what is in the FIFO, then end (CloseIO).
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Returns the guest's stdin, and the task that copies the FIFO into it. The
/// copy starts when the guest first reads: until then the FIFO is the
/// guest's to read through `/dev/stdin` (`devices`), as a process's fd 0
/// and `/dev/stdin` are one pipe.
fn open_input(path: &str) -> (Box<dyn AsyncRead + Send + Sync + Unpin>, Option<StdinPump>) {
    if path.is_empty() {
        return (Box::new(tokio::io::empty()), None);
    }
    let (guest_end, shim_end) = tokio::io::duplex(64 * 1024);
    let (first_read, wanted) = tokio::sync::oneshot::channel();
    let (close, closed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(pump_input(path.to_owned(), wanted, closed, shim_end));
    let guest_end = OnFirstRead {
        inner: guest_end,
        first_read: Some(first_read),
    };
    let pump = StdinPump {
        task,
        close: Some(close),
    };
    (Box::new(guest_end), Some(pump))
}

/// Copies the stdin FIFO at `path` into `to` once the guest wants it, until
/// the client closes its end, or until CloseIO (`closed`) and what the
/// FIFO holds then is copied.
async fn pump_input(
    path: String,
    wanted: tokio::sync::oneshot::Receiver<()>,
    mut closed: tokio::sync::oneshot::Receiver<()>,
    mut to: tokio::io::DuplexStream,
) {
    tokio::select! {
        first = wanted => if first.is_err() { return },
        Ok(()) = &mut closed => return,
    }
    let file = match tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::OpenOptions::new().read(true).open(path)
    })
    .await
    {
        Ok(Ok(file)) => file,
        Ok(Err(err)) => {
            tracing::warn!(%path, %err, "cannot open stdin");
            return;
        }
        Err(_) => return,
    };
    let fifo = match pipe::Receiver::from_file(file) {
        Ok(fifo) => fifo,
        Err(err) => {
            tracing::warn!(%path, %err, "stdin is not a FIFO");
            return;
        }
    };
    let closed = async {
        if closed.await.is_err() {
            // No CloseIO will come: copy until the client's end closes.
            std::future::pending::<()>().await;
        }
    };
    if let Err(err) = copy_fifo(&fifo, &mut to, closed).await {
        tracing::debug!(%path, %err, "stdin copy ended");
    }
}

/// Copies the non-blocking FIFO `from` into `to` until every writer has
/// closed it, or until `stop` resolves and what the FIFO holds then is
/// copied (the writers are done: a client after CloseIO, the guests of an
/// ended task). A buffer exists only while there is something to copy, so
/// an idle copy holds none.
pub(super) async fn copy_fifo(
    from: &pipe::Receiver,
    to: &mut (impl AsyncWrite + Unpin),
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    const CHUNK: usize = 16 * 1024;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            ready = from.readable() => ready?,
            () = &mut stop => break,
        }
        let mut buf = vec![0u8; CHUNK];
        match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n]).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    // read(2) itself: tokio's `try_read` tries only once the reactor has
    // seen the FIFO readable.
    let mut buf = vec![0u8; CHUNK];
    while let Ok(n @ 1..) = rustix::io::read(from, &mut buf) {
        to.write_all(&buf[..n]).await?;
    }
    Ok(())
}

/// A reader that says when it is first read.
struct OnFirstRead {
    inner: tokio::io::DuplexStream,
    first_read: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AsyncRead for OnFirstRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(first_read) = self.first_read.take() {
            let _ = first_read.send(());
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// An open of a FIFO waits for its other end: the shim's read-open for a
/// writer, a guest's open of `/dev/stdin` for a writer or a reader. If that
/// end never came, open each end once without blocking, so those threads
/// can finish.
fn release_blocked_open(path: &str) {
    if path.is_empty() || path.contains("://") {
        return;
    }
    for write in [true, false] {
        let _ = std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(Path::new(path));
    }
}
