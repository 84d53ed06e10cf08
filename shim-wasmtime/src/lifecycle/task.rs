//! One task and its state machine.
//!
//! ```text
//!            start            guest exits / kill
//! Created ─────────► Running ────────────────────► Stopped ──► (deleted)
//!    │                                               ▲
//!    └──────────────── kill / failed start ──────────┘
//! ```
//!
//! The exit is kept in a `watch` channel, so any number of `Wait` calls, made
//! before or after the exit, all see it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

use super::error::{Error, Result};
use super::limits::LiveLimits;
use super::stdio::{StdioPaths, TaskIo};
use super::usage::{Metered, Usage};
use super::{Exit, GuestIo, Prepared};

/// The code a task gets when Start fails after Create succeeded, as runc
/// reports for a start error.
pub const START_FAILED_EXIT_CODE: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    pub at: SystemTime,
}

/// A started guest's controls.
struct Running {
    /// Stops it at once with a signal number.
    kill: Option<oneshot::Sender<u32>>,
    /// Asks it to stop, for a guest that stops gracefully.
    stop: Option<watch::Sender<Option<u32>>>,
}

enum State {
    Created(Box<dyn Prepared>),
    /// Between Start's arrival and the guest's instantiation.
    Starting,
    /// The sender stops the guest with a signal number.
    Running(Running),
    Stopped,
}

pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    pub pid: u32,
    /// The rootfs, when the shim mounted it and must unmount it.
    pub mounted_rootfs: Option<PathBuf>,
    pub usage: Arc<Usage>,
    /// Read by the engine as the guest runs; changed by Update.
    pub limits: Arc<LiveLimits>,
    state: Mutex<State>,
    io: Mutex<TaskIo>,
    exit: watch::Sender<Option<ExitStatus>>,
}

/// What a task is made of, as Create assembles it.
pub struct TaskParts {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    /// The rootfs, when the shim mounted it and must unmount it.
    pub mounted_rootfs: Option<PathBuf>,
    pub usage: Arc<Usage>,
    pub limits: Arc<LiveLimits>,
    pub io: TaskIo,
    pub prepared: Box<dyn Prepared>,
}

/// What happened when a task was asked to stop.
pub enum KillOutcome {
    /// A running guest was told to stop; its exit follows.
    Signalled,
    /// A task that never started is now stopped.
    StoppedBeforeStart(ExitStatus),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Task {
    pub fn new(parts: TaskParts) -> Self {
        let TaskParts {
            id,
            bundle,
            stdio,
            mounted_rootfs,
            usage,
            limits,
            io,
            prepared,
        } = parts;
        Self {
            id,
            bundle,
            stdio,
            pid: std::process::id(),
            mounted_rootfs,
            usage,
            limits,
            state: Mutex::new(State::Created(prepared)),
            io: Mutex::new(io),
            exit: watch::channel(None).0,
        }
    }

    pub fn status(&self) -> Status {
        match *lock(&self.state) {
            State::Created(_) => Status::Created,
            State::Starting | State::Running(_) => Status::Running,
            State::Stopped => Status::Stopped,
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the task to stop.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return status;
            }
            // The sender lives in `self`, so it cannot be dropped while we wait.
            if rx.changed().await.is_err() {
                return ExitStatus {
                    code: START_FAILED_EXIT_CODE,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// Instantiates the guest and runs it on its own async task.
    /// `on_started` runs once the guest is instantiated, before it can exit;
    /// `on_exit` runs once it has stopped and its streams are closed.
    pub async fn start(
        self: &Arc<Self>,
        on_started: impl FnOnce(),
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> Result<()> {
        let prepared = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, State::Starting) {
                State::Created(p) => p,
                other => {
                    *state = other;
                    return Err(Error::precondition(format!(
                        "task {} was already started",
                        self.id
                    )));
                }
            }
        };
        let graceful = prepared.stops_gracefully();
        let (stop_tx, stop_rx) = watch::channel(None);
        let io = {
            let mut io = lock(&self.io);
            GuestIo {
                stdin: io
                    .stdin
                    .take()
                    .unwrap_or_else(|| Box::new(tokio::io::empty())),
                stdout: io.stdout.clone(),
                stderr: io.stderr.clone(),
                stop: stop_rx,
            }
        };
        let stderr = io.stderr.clone();
        // The guest runs where its sockets must be made: on its network
        // namespace's runtime, or on the shim's; instantiation too, since a
        // component's start functions can call the host. CPU time is
        // metered on whichever thread polls the guest.
        let namespace = prepared.namespace();
        let runtime = namespace
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |ns| ns.handle());
        let started = match &namespace {
            // Only a guest with a namespace of its own pays for the hop.
            Some(_) => runtime
                .spawn(prepared.start(io))
                .await
                .unwrap_or_else(|err| {
                    Err(anyhow::anyhow!("instantiation failed in the shim: {err}"))
                }),
            None => prepared.start(io).await,
        };
        let running = match started {
            Ok(running) => running,
            Err(err) => {
                let err = Error::from(err).context(format!("start container {}", self.id));
                self.finish(ExitStatus {
                    code: START_FAILED_EXIT_CODE,
                    at: SystemTime::now(),
                });
                return Err(err);
            }
        };
        let (kill_tx, kill_rx) = oneshot::channel::<u32>();
        *lock(&self.state) = State::Running(Running {
            kill: Some(kill_tx),
            stop: graceful.then_some(stop_tx),
        });
        on_started();

        let task = Arc::clone(self);
        tokio::spawn(async move {
            let mut guest = runtime.spawn(Metered::new(running, task.usage.clone()));
            let exit = tokio::select! {
                joined = &mut guest => joined.unwrap_or_else(|err| Exit {
                    code: 128 + libc::SIGABRT as u32,
                    reason: Some(format!("the shim failed while running the guest: {err}")),
                }),
                Ok(signal) = kill_rx => {
                    // Wait until the guest is dropped, so that its sockets
                    // and files are closed before the exit is reported.
                    guest.abort();
                    let _ = guest.await;
                    Exit::code(128 + signal)
                }
            };
            // Last of all the guest's namespace runtime, if this was its
            // last task.
            drop(namespace);
            if let Some(reason) = &exit.reason {
                write_reason(&stderr, reason).await;
            }
            let drained = lock(&task.io).close_output();
            drained.await;
            let status = ExitStatus {
                code: exit.code,
                at: SystemTime::now(),
            };
            task.finish(status);
            on_exit(status);
        });
        Ok(())
    }

    /// Stops the task with `signal`. Signals whose default action is to be
    /// ignored, and signal 0, change nothing: a wasm guest cannot catch any.
    /// Nor do the stop signals, which would only stop a process until
    /// SIGCONT (a stopped `pause` is a running one; freezing a guest is the
    /// Task API's Pause). A guest that stops gracefully is asked to stop by
    /// SIGTERM and SIGINT (and stopped at once by SIGKILL, or any other
    /// signal).
    pub fn kill(&self, signal: u32) -> Result<Option<KillOutcome>> {
        const IGNORED: [i32; 8] = [
            libc::SIGCHLD,
            libc::SIGCONT,
            libc::SIGURG,
            libc::SIGWINCH,
            libc::SIGSTOP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ];
        let mut state = lock(&self.state);
        match &mut *state {
            State::Stopped => Err(Error::not_found(format!(
                "task {}: process already finished",
                self.id
            ))),
            _ if signal == 0 || IGNORED.contains(&(signal as i32)) => Ok(None),
            State::Running(running) => {
                let asks = [libc::SIGTERM, libc::SIGINT].contains(&(signal as i32));
                match (&running.stop, asks) {
                    (Some(stop), true) => {
                        stop.send_replace(Some(signal));
                    }
                    _ => {
                        if let Some(kill) = running.kill.take() {
                            let _ = kill.send(signal);
                        }
                    }
                }
                Ok(Some(KillOutcome::Signalled))
            }
            State::Starting => Err(Error::precondition(format!("task {} is starting", self.id))),
            State::Created(_) => {
                *state = State::Stopped;
                drop(state);
                let status = ExitStatus {
                    code: 128 + signal,
                    at: SystemTime::now(),
                };
                self.finish(status);
                Ok(Some(KillOutcome::StoppedBeforeStart(status)))
            }
        }
    }

    /// Ends the guest's stdin.
    pub fn close_stdin(&self) {
        lock(&self.io).close_stdin();
    }

    /// Checks that the task may be deleted, and stops a created one.
    /// Returns its exit status.
    pub fn prepare_delete(&self) -> Result<ExitStatus> {
        let mut state = lock(&self.state);
        match &*state {
            State::Starting | State::Running(_) => Err(Error::precondition(format!(
                "task {} is running: stop it before deleting it",
                self.id
            ))),
            State::Created(_) => {
                *state = State::Stopped;
                drop(state);
                // Deleting a created task kills it, as runc does: SIGKILL.
                let status = ExitStatus {
                    code: 128 + libc::SIGKILL as u32,
                    at: SystemTime::now(),
                };
                self.finish(status);
                Ok(status)
            }
            State::Stopped => Ok(self.exit_status().unwrap_or(ExitStatus {
                code: 0,
                at: SystemTime::now(),
            })),
        }
    }

    /// Marks the task stopped: closes its streams, so clients see EOF, then
    /// releases every waiter.
    fn finish(&self, status: ExitStatus) {
        *lock(&self.state) = State::Stopped;
        lock(&self.io).close();
        self.exit.send_replace(Some(status));
    }
}

/// Writes why a guest ended to its stderr, without waiting on a client that
/// has stopped reading.
async fn write_reason(stderr: &super::Writer, reason: &str) {
    let mut stderr = stderr.clone();
    let mut text = reason.trim_end().to_owned();
    text.push('\n');
    let write = async {
        stderr.write_all(text.as_bytes()).await?;
        stderr.flush().await
    };
    if let Err(err) = tokio::time::timeout(std::time::Duration::from_secs(2), write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(%err, "could not write exit reason to stderr");
    }
}
