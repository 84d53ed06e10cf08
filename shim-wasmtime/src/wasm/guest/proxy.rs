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
//! Besides the answers every serving kind gives (`serve.rs`): a guest that
//! answers with a `wasi:http` error code, or returns without a response,
//! is answered 500; a trap or timeout after the response head went out cuts
//! the body off, so the client sees an incomplete response.
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
use wasmtime::component::Component;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use super::serve::{Admitted, GuestTask, Outcome, Serving};
use super::{compile, Entry, Kind, Linked, Toolbox};
use crate::http::server::{respond, Body, BoxError, Handler};
use crate::http::settings::Settings as HttpSettings;
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::engine::Digest32;
use crate::wasm::instance::{Guest, GuestState};

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

    /// Always, through `wasi:http`: WAGI does not apply.
    fn serves(&self, settings: &HttpSettings) -> Result<bool> {
        super::refuse_wagi(self.kind(), settings)?;
        Ok(true)
    }

    async fn start(self: Arc<Self>, guest: Guest, io: GuestIo) -> Result<Running> {
        let serving = Arc::new(Serving::new(guest));
        let listener = serving.listen()?;
        let service = Arc::new(Service {
            pre: self.pre.clone(),
            serving: serving.clone(),
        });
        Ok(serving.run(listener, service, io))
    }

    async fn instantiate(&self, _store: &mut Store<GuestState>) -> Result<Box<dyn Entry>> {
        bail!("an HTTP service has no entry point to run: it is instantiated per request")
    }
}

/// One serving task.
struct Service {
    pre: ProxyPre<GuestState>,
    serving: Arc<Serving>,
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
        let serving = &self.serving;
        let Admitted {
            permit,
            deadline,
            what,
            ..
        } = match serving.admit(&request) {
            Ok(admitted) => admitted,
            Err(answer) => return *answer,
        };
        let max = serving.guest.http.max_body_bytes;
        let request = request.map(move |body| {
            Limited::new(body, max as usize).map_err(move |err| body_error(err, max))
        });

        let started = Instant::now();
        let stdout = serving.request_stdout();
        let mut store = match serving.store(tokio::io::empty(), stdout, Vec::new(), &what) {
            Ok(store) => store,
            Err(answer) => return *answer,
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
        let timing = self.serving.clone();
        let cpu = store.data().budget_cpu();
        let mut guest = serving.spawn(cpu, permit, deadline, async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                timing.instantiations.record(started.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
            }
            .await;
            Outcome::of(result, &store)
        });

        match rx.await {
            Ok(Ok(response)) => response.map(|body| {
                GuardedBody {
                    inner: body,
                    guest: Some(guest),
                    serving: self.serving.clone(),
                    what,
                }
                .boxed_unsync()
            }),
            Ok(Err(code)) => {
                serving.log(&format!(
                    "wasmtime: {what}: the component answered with error {code:?}"
                ));
                respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
            }
            // The instance ended (or was stopped at the deadline) without
            // setting a response.
            Err(_) => {
                let outcome = (&mut guest).await;
                if outcome.result.is_ok() {
                    serving.log(&format!(
                        "wasmtime: {what}: the component returned without setting a response"
                    ));
                }
                serving.failed(outcome, &what)
            }
        }
    }
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
/// rather than end it cleanly, when the instance writing it traps or is
/// stopped (a trapped instance's body would otherwise end as if complete).
struct GuardedBody {
    inner: HyperOutgoingBody,
    guest: Option<GuestTask>,
    serving: Arc<Serving>,
    what: String,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(err))) => {
                this.guest = None;
                this.serving.log(&format!(
                    "wasmtime: {}: the response body failed: {err}",
                    this.what
                ));
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Pending => Poll::Pending,
            // The body ended: cleanly only if the instance did not fail.
            Poll::Ready(None) => {
                let Some(guest) = this.guest.as_mut() else {
                    return Poll::Ready(None);
                };
                let outcome = match Pin::new(guest).poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                };
                this.guest = None;
                if outcome.result.is_ok() {
                    return Poll::Ready(None);
                }
                let what = format!("{} (after its response began)", this.what);
                this.serving.log_failure(outcome, &what);
                Poll::Ready(Some(Err(format!(
                    "the function failed after its response began: {what}"
                )
                .into())))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
