//! What the kinds that serve HTTP share (`proxy.rs` for `wasi:http`
//! components, `wagi.rs` for preview 1 modules the WAGI way): the listener
//! in the task's network namespace, the task's output as whole lines, the
//! concurrency cap, a `Store` per request with its execution budget, the
//! request's instance on a task of its own, and how a failed instance is
//! answered.
//!
//! | what happens | answer |
//! |---|---|
//! | more than `WASMTIME_HTTP_MAX_CONCURRENCY` requests at once | 503 |
//! | the instance pool is exhausted | 503 |
//! | a `Content-Length` above `WASMTIME_HTTP_MAX_BODY_BYTES` | 413 |
//! | the guest traps | 500, the trap and its backtrace on stderr |
//! | the execution budget or the request timeout runs out | 504 |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{bail, Result};
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use wasmtime::Store;

use crate::http::output::{Lines, RequestOutput};
use crate::http::server::{self, respond, Body, Handler};
use crate::lifecycle::usage::Metered;
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::instance::{failure_report, Budget, Guest, GuestState};

/// Ports below this need `CAP_NET_BIND_SERVICE`.
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// One serving task's shared state.
pub struct Serving {
    pub guest: Guest,
    permits: Arc<Semaphore>,
    pub stdout: Lines,
    pub stderr: Lines,
}

/// How one request's instance ended.
pub struct Outcome {
    pub result: wasmtime::Result<()>,
    /// Its execution budget ran out.
    pub spent: bool,
    pub refused: Option<usize>,
}

impl Outcome {
    /// Reads what the store knows about how its instance ended.
    pub fn of(result: wasmtime::Result<()>, store: &Store<GuestState>) -> Self {
        let data = store.data();
        Self {
            result,
            spent: data.budget().is_some_and(|b| b.spent),
            refused: data.memory_refused(),
        }
    }
}

/// A request's instance, running on a task of its own. Dropping it stops it.
pub struct GuestTask(JoinHandle<Outcome>);

impl Drop for GuestTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for GuestTask {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|err| Outcome {
                result: Err(wasmtime::format_err!("the request's task failed: {err}")),
                spent: false,
                refused: None,
            })
        })
    }
}

impl Serving {
    pub fn new(guest: Guest) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(guest.http.max_concurrency)),
            stdout: Lines::new(),
            stderr: Lines::new(),
            guest,
        }
    }

    /// Binds the task's listener, on the calling thread: in Start, on the
    /// task's network namespace's runtime. A port below 1024 needs
    /// `CAP_NET_BIND_SERVICE`, as it would for a process.
    pub fn listen(&self) -> Result<TcpListener> {
        let addr = self.guest.http.addr;
        let privileged = self
            .guest
            .sockets
            .as_ref()
            .is_some_and(|s| s.privileged_ports);
        if addr.port() != 0 && addr.port() < FIRST_UNPRIVILEGED_PORT && !privileged {
            bail!(
                "cannot listen on {addr}: ports below {FIRST_UNPRIVILEGED_PORT} need \
                 CAP_NET_BIND_SERVICE, which the container does not have"
            );
        }
        let listener = server::bind(addr, self.guest.http.backlog)?;
        tracing::info!(
            addr = %listener.local_addr().unwrap_or(addr),
            module = self.guest.module_path,
            kind = self.guest.linked.kind(),
            "serving HTTP"
        );
        Ok(listener)
    }

    /// The task's future: serves with `handler` until a stop request, then
    /// writes out what the requests left in the output.
    pub fn run(
        self: &Arc<Self>,
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        io: GuestIo,
    ) -> Running {
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let settings = self.guest.http.clone();
        Box::pin(async move {
            let serving = async {
                let exit = server::serve(listener, handler, &settings, io.stop).await;
                stdout.close();
                stderr.close();
                exit
            };
            let (exit, (), ()) = tokio::join!(
                serving,
                stdout.clone().run(io.stdout),
                stderr.clone().run(io.stderr)
            );
            exit
        })
    }

    /// Admits a request: a concurrency permit, and a body no larger than
    /// the limit says it may be. Otherwise the answer to give.
    pub fn admit<B>(
        &self,
        request: &hyper::Request<B>,
    ) -> Result<OwnedSemaphorePermit, Box<hyper::Response<Body>>> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(Box::new(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is answering as many requests as it may at once",
            )));
        };
        let max = self.guest.http.max_body_bytes;
        if content_length(request).is_some_and(|n| n > max) {
            return Err(Box::new(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than the {max} bytes this service takes"),
            )));
        }
        Ok(permit)
    }

    /// When a request arriving now must be answered by.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.guest.http.request_timeout
    }

    /// A store for one request's instance, with its execution budget, its
    /// stderr into the task's, and `extra_env` after the container's env
    /// (a name the container sets keeps the container's value).
    pub fn store(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Sync + 'static,
        stdout: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        extra_env: Vec<(String, String)>,
    ) -> Result<Store<GuestState>> {
        self.guest.store_with_env(
            stdin,
            stdout,
            self.stderr.request(),
            Some(Budget::of(self.guest.http.execution_timeout)),
            extra_env,
        )
    }

    /// A writer into the task's stdout for one request.
    pub fn request_stdout(&self) -> RequestOutput {
        self.stdout.request()
    }

    /// Runs a request's instance on a task of its own, its CPU time charged
    /// to the task.
    pub fn spawn(&self, run: impl Future<Output = Outcome> + Send + 'static) -> GuestTask {
        GuestTask(tokio::spawn(Metered::new(run, self.guest.usage.clone())))
    }

    /// Writes the shim's message about a request to the task's stderr.
    pub fn log(&self, text: &str) {
        self.stderr.write_lines(text);
    }

    /// The answer for a request whose instance failed: 503 when no slot
    /// was free, 504 when its execution budget ran out, 500 for a trap.
    pub fn failed(
        &self,
        err: wasmtime::Error,
        spent: bool,
        refused: Option<usize>,
        what: &str,
    ) -> hyper::Response<Body> {
        let limits = self.guest.http.clone();
        if is_pool_limit(&err) {
            self.log(&format!(
                "wasmtime: {what}: no instance slot free in the shim's pool \
                 (WASMTIME_SHIM_MAX_INSTANCES): {err}"
            ));
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "the function cannot be started now",
            );
        }
        if spent {
            self.log(&format!(
                "wasmtime: {what}: the request's instance ran wasm for longer than {:?} \
                 (WASMTIME_HTTP_EXECUTION_TIMEOUT) and was stopped",
                limits.execution_timeout
            ));
            return respond(
                StatusCode::GATEWAY_TIMEOUT,
                "the function did not answer in time",
            );
        }
        self.log(&failure_report(
            &err,
            &format!("{} failed serving {what}", self.guest.module_path),
            refused,
        ));
        respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
    }

    /// As [`Self::failed`], for an outcome.
    pub fn outcome_failed(&self, outcome: Outcome, what: &str) -> hyper::Response<Body> {
        match outcome.result {
            Ok(()) => respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed"),
            Err(err) => self.failed(err, outcome.spent, outcome.refused, what),
        }
    }

    /// The answer when the request timeout ran out first.
    pub fn timed_out(&self, what: &str) -> hyper::Response<Body> {
        self.log(&format!(
            "wasmtime: {what}: no response within {:?} (WASMTIME_HTTP_REQUEST_TIMEOUT); the instance was stopped",
            self.guest.http.request_timeout
        ));
        respond(
            StatusCode::GATEWAY_TIMEOUT,
            "the function did not answer in time",
        )
    }
}

fn is_pool_limit(err: &wasmtime::Error) -> bool {
    err.is::<wasmtime::PoolConcurrencyLimitError>()
        || err
            .chain()
            .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
}

fn content_length<B>(request: &hyper::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
