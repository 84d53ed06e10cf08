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
use std::sync::atomic::{AtomicU32, Ordering};
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
use crate::lifecycle::Usage;
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::instance::{
    failure_report, may_bind, Budget, Guest, GuestState, FIRST_UNPRIVILEGED_PORT,
};

/// One serving task's shared state.
pub struct Serving {
    pub guest: Guest,
    permits: Arc<Semaphore>,
    pub stdout: Lines,
    pub stderr: Lines,
    /// How long requests' instantiations took, summarized in the log when
    /// the service stops.
    pub instantiations: Histogram,
}

/// Microsecond durations, counted in 1 µs buckets up to [`Histogram::MAX_US`]
/// (4 KiB of counters), for percentiles without keeping samples.
pub struct Histogram {
    buckets: Vec<AtomicU32>,
}

impl Histogram {
    pub const MAX_US: usize = 1000;

    fn new() -> Self {
        Self {
            buckets: (0..=Self::MAX_US).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn record(&self, took: std::time::Duration) {
        let us = (took.as_micros() as usize).min(Self::MAX_US);
        self.buckets[us].fetch_add(1, Ordering::Relaxed);
    }

    /// The count, and the p50 and p99 in µs (`MAX_US` means at least that).
    fn summary(&self) -> (u64, usize, usize) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return (0, 0, 0);
        }
        let at = |q: f64| {
            let rank = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(Self::MAX_US)
        };
        (n, at(0.5), at(0.99))
    }
}

/// An admitted request: its concurrency permit, when it must be answered
/// by, how the log names it (method and path, never the query), and its
/// `Content-Length`, if it has a valid one.
pub struct Admitted {
    pub permit: OwnedSemaphorePermit,
    pub deadline: tokio::time::Instant,
    pub what: String,
    pub content_length: Option<u64>,
}

/// How one request's instance ended.
pub struct Outcome {
    pub result: wasmtime::Result<()>,
    /// Its execution budget ran out.
    pub spent: bool,
    /// The request timeout ran out, and the instance was stopped.
    pub timed_out: bool,
    pub refused: Option<usize>,
}

impl Outcome {
    /// Reads what the store knows about how its instance ended.
    pub fn of(result: wasmtime::Result<()>, store: &Store<GuestState>) -> Self {
        let data = store.data();
        Self {
            result,
            spent: data.budget_spent(),
            timed_out: false,
            refused: data.memory_refused(),
        }
    }

    /// An instance the shim stopped, or lost: no store to read.
    fn stopped(err: wasmtime::Error, timed_out: bool) -> Self {
        Self {
            result: Err(err),
            spent: false,
            timed_out,
            refused: None,
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
            joined.unwrap_or_else(|err| {
                let err = wasmtime::format_err!("the request's task failed: {err}");
                Outcome::stopped(err, false)
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
            instantiations: Histogram::new(),
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
        if !may_bind(privileged, addr.port()) {
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
        // Logged however the service ends, drained or killed.
        let summary = Summary(self.clone());
        Box::pin(async move {
            let _summary = summary;
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
    ) -> Result<Admitted, Box<hyper::Response<Body>>> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(Box::new(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is answering as many requests as it may at once",
            )));
        };
        let max = self.guest.http.max_body_bytes;
        let content_length = content_length(request);
        if content_length.is_some_and(|n| n > max) {
            return Err(Box::new(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than the {max} bytes this service takes"),
            )));
        }
        Ok(Admitted {
            permit,
            deadline: tokio::time::Instant::now() + self.guest.http.request_timeout,
            what: format!("{} {}", request.method(), request.uri().path()),
            content_length,
        })
    }

    /// A store for one request's instance, with its execution budget, its
    /// stderr into the task's, and `extra_env` after the container's env
    /// (a name the container sets keeps the container's value). Or the
    /// answer (503) when none can be made, said in the log.
    pub fn store(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
        stdout: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        extra_env: Vec<(String, String)>,
        what: &str,
    ) -> Result<Store<GuestState>, Box<hyper::Response<Body>>> {
        self.guest
            .store_with_env(
                stdin,
                stdout,
                self.stderr.request(),
                Some(Budget::of(self.guest.http.execution_timeout)),
                extra_env,
            )
            .map_err(|err| {
                self.log(&format!("wasmtime: cannot serve {what}: {err:#}"));
                Box::new(respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the function cannot be started now",
                ))
            })
    }

    /// A writer into the task's stdout for one request.
    pub fn request_stdout(&self) -> RequestOutput {
        self.stdout.request()
    }

    /// Runs a request's instance on a task of its own: once the task is
    /// within its CPU quota, and until the request's deadline, when it is
    /// stopped wherever it is (even if nobody polls its response body: a
    /// client that stops reading holds no instance). It holds the request's
    /// concurrency permit, and its CPU time is charged to the task and to
    /// the instance's execution budget (`cpu`). Instantiation is the
    /// kind's to time, into [`Serving::instantiations`].
    pub fn spawn(
        &self,
        cpu: Option<Arc<Usage>>,
        permit: OwnedSemaphorePermit,
        deadline: tokio::time::Instant,
        run: impl Future<Output = Outcome> + Send + 'static,
    ) -> GuestTask {
        let throttle = self.guest.throttle.clone();
        let run = async move {
            let _permit = permit;
            let admitted = async {
                throttle.admit().await;
                run.await
            };
            tokio::time::timeout_at(deadline, admitted)
                .await
                .unwrap_or_else(|_| {
                    Outcome::stopped(wasmtime::format_err!("the request timed out"), true)
                })
        };
        let run = Metered::new(run, self.guest.usage.clone());
        GuestTask(match cpu {
            Some(cpu) => tokio::spawn(Metered::new(run, cpu)),
            None => tokio::spawn(run),
        })
    }

    /// Writes the shim's message about a request to the task's stderr.
    pub fn log(&self, text: &str) {
        self.stderr.write_lines(text);
    }

    /// The answer for a request whose instance failed, and the log line
    /// that says why: 503 when no slot was free, 504 when its execution
    /// budget or the request timeout ran out, 500 for a trap.
    pub fn failed(&self, outcome: Outcome, what: &str) -> hyper::Response<Body> {
        let status = self.log_failure(outcome, what);
        let text = match status {
            StatusCode::SERVICE_UNAVAILABLE => "the function cannot be started now",
            StatusCode::GATEWAY_TIMEOUT => "the function did not answer in time",
            _ => "the function failed",
        };
        respond(status, text)
    }

    /// Logs why a request's instance failed; returns the status it means.
    pub fn log_failure(&self, outcome: Outcome, what: &str) -> StatusCode {
        let settings = &self.guest.http;
        let err = match outcome.result {
            Ok(()) => return StatusCode::INTERNAL_SERVER_ERROR,
            Err(err) => err,
        };
        if outcome.timed_out {
            self.log(&format!(
                "wasmtime: {what}: not done within {:?} (WASMTIME_HTTP_REQUEST_TIMEOUT); the instance was stopped",
                settings.request_timeout
            ));
            return StatusCode::GATEWAY_TIMEOUT;
        }
        if err.is::<wasmtime::PoolConcurrencyLimitError>() {
            self.log(&format!(
                "wasmtime: {what}: no instance slot free in the shim's pool \
                 (WASMTIME_SHIM_MAX_INSTANCES): {err}"
            ));
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if outcome.spent {
            self.log(&format!(
                "wasmtime: {what}: the request's instance ran wasm for longer than {:?} \
                 (WASMTIME_HTTP_EXECUTION_TIMEOUT) and was stopped",
                settings.execution_timeout
            ));
            return StatusCode::GATEWAY_TIMEOUT;
        }
        self.log(&failure_report(
            &err,
            &format!("{} failed serving {what}", self.guest.module_path),
            outcome.refused,
        ));
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Logs how many requests a service served and how long their
/// instantiations took, when it ends.
struct Summary(Arc<Serving>);

impl Drop for Summary {
    fn drop(&mut self) {
        let (requests, p50, p99) = self.0.instantiations.summary();
        tracing::info!(
            requests,
            instantiate_p50_us = p50,
            instantiate_p99_us = p99,
            "HTTP service stopped"
        );
    }
}

fn content_length<B>(request: &hyper::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_percentiles() {
        let h = Histogram::new();
        assert_eq!(h.summary(), (0, 0, 0));
        for us in 1..=100 {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(1));
        let (n, p50, p99) = h.summary();
        assert_eq!((n, p50, p99), (101, 51, 100));
    }
}
