//! `wasi:http/proxy` components: HTTP services, with a fresh instance for
//! every request.
//!
//! The task stays running and listens (`crate::http::server`) in its
//! network namespace. Each request gets a new `Store` and an instance from
//! the pre-linked [`ProxyPre`] (a pooling-allocator slot and copy-on-write
//! memory): nothing one request leaves in memory is seen by the next. Each
//! instance has the container's env, args and preopens, like a command;
//! its stdout and stderr go to the task's, as whole lines
//! (`crate::http::output`). All instances share the task's memory limit and
//! CPU quota.
//!
//! | what happens | answer |
//! |---|---|
//! | more than `WASMTIME_HTTP_MAX_CONCURRENCY` requests at once | 503 |
//! | the instance pool is exhausted, or instantiation fails | 503 |
//! | a `Content-Length` above `WASMTIME_HTTP_MAX_BODY_BYTES` | 413 |
//! | the guest traps, or returns without a response | 500, the trap and its backtrace on stderr |
//! | the guest answers with a `wasi:http` error code | 500 |
//! | the execution budget or the request timeout runs out | 504 |
//! | a trap or timeout after the response head went out | the body is cut off |
//!
//! wasmtime-wasi-http's `handler` module, which `wasmtime serve` uses,
//! needs component-model-async (concurrency support in every `Store`) for
//! what it adds over this: reusing an instance for several requests,
//! which this shim does not do. The pieces below are the same crate's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use wasmtime::component::Component;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use super::{compile, Entry, Kind, Linked, Toolbox};
use crate::http::output::Lines;
use crate::http::server::{self, respond, Body, BoxError, Handler};
use crate::lifecycle::usage::Metered;
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::engine::Digest32;
use crate::wasm::instance::{failure_report, Budget, Guest, GuestState};

pub struct HttpProxy;

impl Kind for HttpProxy {
    fn name(&self) -> &'static str {
        "wasi:http/proxy component (an HTTP service)"
    }

    fn link(&self, tools: &Toolbox, digest: &Digest32, bytes: &[u8]) -> Result<Arc<dyn Linked>> {
        let component: Component = compile(tools, digest, bytes)?;
        let pre = tools
            .components()?
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component cannot be linked against WASI 0.2 and wasi:http")?;
        let pre = ProxyPre::new(pre).map_err(anyhow::Error::from).context(
            "its wasi:http/incoming-handler export is not the interface WASI 0.2 defines",
        )?;
        Ok(Arc::new(LinkedProxy { pre }))
    }
}

struct LinkedProxy {
    pre: ProxyPre<GuestState>,
}

#[async_trait]
impl Linked for LinkedProxy {
    fn kind(&self) -> &'static str {
        HttpProxy.name()
    }

    /// Its listener is a socket in the container's network namespace.
    fn uses_sockets(&self) -> bool {
        true
    }

    fn stops_gracefully(&self) -> bool {
        true
    }

    async fn start(self: Arc<Self>, guest: Guest, io: GuestIo) -> Result<Running> {
        let settings = guest.http.clone();
        if settings.wagi {
            bail!(
                "WASMTIME_WAGI=1 serves a WASI preview 1 module the WAGI way; this is a \
                 wasi:http component, which serves HTTP without it: remove the variable"
            );
        }
        let privileged = guest.sockets.as_ref().is_some_and(|s| s.privileged_ports);
        if settings.addr.port() != 0 && settings.addr.port() < 1024 && !privileged {
            bail!(
                "cannot listen on {}: ports below 1024 need CAP_NET_BIND_SERVICE, which the container does not have",
                settings.addr
            );
        }
        let listener = server::bind(settings.addr, settings.backlog)?;
        tracing::info!(
            addr = %listener.local_addr().map_or(settings.addr, |a| a),
            module = guest.module_path,
            "serving HTTP"
        );
        let service = Arc::new(Service {
            pre: self.pre.clone(),
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            stdout: Lines::new(),
            stderr: Lines::new(),
            guest,
        });
        let (stdout, stderr) = (service.stdout.clone(), service.stderr.clone());
        Ok(Box::pin(async move {
            let serving = async {
                let exit = server::serve(listener, service, &settings, io.stop).await;
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
        }))
    }

    async fn instantiate(&self, _store: &mut Store<GuestState>) -> Result<Box<dyn Entry>> {
        bail!("an HTTP service has no entry point to run: it is instantiated per request")
    }
}

/// One serving task.
struct Service {
    pre: ProxyPre<GuestState>,
    guest: Guest,
    permits: Arc<Semaphore>,
    stdout: Lines,
    stderr: Lines,
}

/// How one request's instance ended.
struct Outcome {
    result: wasmtime::Result<()>,
    /// Its execution budget ran out.
    spent: bool,
    refused: Option<usize>,
}

/// A request's instance, running on a task of its own so that it can go on
/// writing the body after the response head is sent. Dropping it stops it.
struct GuestTask(JoinHandle<Outcome>);

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

impl Handler for Service {
    fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        _remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = hyper::Response<Body>> + Send>> {
        Box::pin(self.serve(request))
    }
}

impl Service {
    async fn serve(self: Arc<Self>, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let settings = &self.guest.http;
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is answering as many requests as it may at once",
            );
        };
        let max = settings.max_body_bytes;
        if content_length(&request).is_some_and(|n| n > max) {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than the {max} bytes this service takes"),
            );
        }
        let deadline = tokio::time::Instant::now() + settings.request_timeout;
        let what = format!("{} {}", request.method(), request.uri());
        let request = request.map(move |body| {
            Limited::new(body, max as usize).map_err(move |err| body_error(err, max))
        });

        let started = Instant::now();
        let mut store = match self.guest.store(
            tokio::io::empty(),
            self.stdout.request(),
            self.stderr.request(),
            Some(Budget::of(settings.execution_timeout)),
        ) {
            Ok(store) => store,
            Err(err) => {
                self.log(&format!("wasmtime: cannot serve {what}: {err:#}"));
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the function cannot be started now",
                );
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handles = (|| {
            let mut http = store.data_mut().http();
            let request = http.new_incoming_request(Scheme::Http, request)?;
            let out = http.new_response_outparam(tx)?;
            wasmtime::Result::<_>::Ok((request, out))
        })();
        let (request, out) = match handles {
            Ok(handles) => handles,
            Err(err) => return respond(StatusCode::BAD_REQUEST, &format!("{err}")),
        };
        let pre = self.pre.clone();
        let run = async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                tracing::debug!(
                    instantiate_us = started.elapsed().as_micros() as u64,
                    "request instance ready"
                );
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
            }
            .await;
            let data = store.data();
            Outcome {
                result,
                spent: data.budget().is_some_and(|b| b.spent),
                refused: data.memory_refused(),
            }
        };
        let mut guest = GuestTask(tokio::spawn(Metered::new(run, self.guest.usage.clone())));

        tokio::select! {
            head = rx => match head {
                Ok(Ok(response)) => response.map(|body| {
                    GuardedBody {
                        inner: body,
                        guest: Some(guest),
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        service: self.clone(),
                        what,
                        _permit: permit,
                    }
                    .boxed_unsync()
                }),
                Ok(Err(code)) => {
                    self.log(&format!("wasmtime: {what}: the component answered with error {code:?}"));
                    respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
                }
                // The guest is done, and never set a response.
                Err(_) => {
                    let outcome = (&mut guest).await;
                    self.ended_without_response(outcome, &what)
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                drop(guest);
                self.log(&format!(
                    "wasmtime: {what}: no response within {:?} (WASMTIME_HTTP_REQUEST_TIMEOUT); the instance was stopped",
                    settings.request_timeout
                ));
                respond(StatusCode::GATEWAY_TIMEOUT, "the function did not answer in time")
            }
        }
    }

    fn ended_without_response(&self, outcome: Outcome, what: &str) -> hyper::Response<Body> {
        match outcome.result {
            Ok(()) => {
                self.log(&format!(
                    "wasmtime: {what}: the component returned without setting a response"
                ));
                respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
            }
            Err(err) if err.is::<wasmtime::PoolConcurrencyLimitError>() => {
                self.log(&format!(
                    "wasmtime: {what}: no instance slot free in the shim's pool \
                     (WASMTIME_SHIM_MAX_INSTANCES): {err}"
                ));
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the function cannot be started now",
                )
            }
            Err(_) if outcome.spent => {
                self.log(&format!(
                    "wasmtime: {what}: the request's instance ran wasm for longer than {:?} \
                     (WASMTIME_HTTP_EXECUTION_TIMEOUT) and was stopped",
                    self.guest.http.execution_timeout
                ));
                respond(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the function did not answer in time",
                )
            }
            Err(err) => {
                self.log(&failure_report(
                    &err,
                    &format!("{} failed serving {what}", self.guest.module_path),
                    outcome.refused,
                ));
                respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
            }
        }
    }

    /// Writes the shim's message about a request to the task's stderr.
    fn log(&self, text: &str) {
        self.stderr.write_lines(text);
    }
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

fn body_error(err: BoxError, max: u64) -> HttpError {
    if err.is::<LengthLimitError>() {
        return HttpError::HttpRequestBodySize(Some(max));
    }
    match err.downcast::<hyper::Error>() {
        Ok(err) => HttpError::from(*err),
        Err(_) => HttpError::HttpProtocolError,
    }
}

/// A response body that ends with an error, so hyper cuts the response off
/// rather than end it cleanly, when the instance writing it traps or runs
/// out of time; it holds the request's instance and concurrency permit.
struct GuardedBody {
    inner: HyperOutgoingBody,
    guest: Option<GuestTask>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    service: Arc<Service>,
    what: String,
    _permit: OwnedSemaphorePermit,
}

impl GuardedBody {
    fn cut_off(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.guest = None;
        self.service.log(&why);
        Poll::Ready(Some(Err(why.into())))
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.guest.is_some() && this.deadline.as_mut().poll(cx).is_ready() {
            let why = format!(
                "wasmtime: {}: the response was cut off: the request ran past {:?} (WASMTIME_HTTP_REQUEST_TIMEOUT)",
                this.what, this.service.guest.http.request_timeout
            );
            return this.cut_off(why);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(err))) => {
                let why = format!("wasmtime: {}: the response body failed: {err}", this.what);
                this.cut_off(why)
            }
            Poll::Pending => Poll::Pending,
            // The body ended: cleanly only if the instance did not fail
            // (a trapped instance's body ends as if complete).
            Poll::Ready(None) => {
                let Some(guest) = this.guest.as_mut() else {
                    return Poll::Ready(None);
                };
                let outcome = match Pin::new(guest).poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                };
                this.guest = None;
                match outcome.result {
                    Ok(()) => Poll::Ready(None),
                    Err(err) => {
                        let why = if outcome.spent {
                            format!(
                                "wasmtime: {}: the response was cut off: the instance ran wasm for longer than {:?} (WASMTIME_HTTP_EXECUTION_TIMEOUT)",
                                this.what, this.service.guest.http.execution_timeout
                            )
                        } else {
                            failure_report(
                                &err,
                                &format!(
                                    "{} failed serving {} after its response began; the response was cut off",
                                    this.service.guest.module_path, this.what
                                ),
                                outcome.refused,
                            )
                        };
                        this.cut_off(why)
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
