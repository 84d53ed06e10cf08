//! WAGI: a WASI preview 1 module serving HTTP the CGI way, when the
//! container's env sets `WASMTIME_WAGI=1`. Each request runs the module's
//! `_start` in a fresh instance: the request's CGI variables added to the
//! container's env (`crate::http::cgi`; a variable the container sets keeps
//! the container's value), its body on stdin then end-of-file; the output
//! on stdout is the response (headers, a blank line, the body), stderr
//! goes to the task's stderr. Exit 0 after the output is success; any other
//! exit, or output without a header block, is a 500 with a log line.
//!
//! The listener, limits, timeouts and stop are those of every serving kind
//! (`serve.rs`). The response is gathered whole before it is sent, at most
//! [`MAX_OUTPUT`] bytes, as CGI programs set headers before the body.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use anyhow::Result;
use http::StatusCode;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;
use wasmtime_wasi::I32Exit;

use super::serve::{Outcome, Serving};
use super::Linked;
use crate::http::cgi;
use crate::http::server::{respond, Body, Handler};
use crate::lifecycle::{GuestIo, Running};
use crate::wasm::instance::Guest;

/// The most a program may write as its response.
pub const MAX_OUTPUT: usize = 64 << 20;

/// Starts serving `linked` (a preview 1 module) the WAGI way.
pub async fn start(linked: Arc<dyn Linked>, guest: Guest, io: GuestIo) -> Result<Running> {
    let serving = Arc::new(Serving::new(guest));
    let listener = serving.listen()?;
    let local = listener.local_addr()?;
    let wagi = Arc::new(Wagi {
        linked,
        serving: serving.clone(),
        local,
    });
    Ok(serving.run(listener, wagi, io))
}

struct Wagi {
    linked: Arc<dyn Linked>,
    serving: Arc<Serving>,
    /// Where requests arrive: `SERVER_PORT`, and `SERVER_NAME` without a
    /// `Host` header.
    local: SocketAddr,
}

impl Handler for Wagi {
    fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = hyper::Response<Body>> + Send>> {
        Box::pin(self.serve(request, remote))
    }
}

impl Wagi {
    async fn serve(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> hyper::Response<Body> {
        let serving = &self.serving;
        let _permit = match serving.admit(&request) {
            Ok(permit) => permit,
            Err(answer) => return *answer,
        };
        let deadline = serving.deadline();
        let what = format!("{} {}", request.method(), request.uri());
        let (head, body) = request.into_parts();
        let max = serving.guest.http.max_body_bytes as usize;
        let body = match tokio::time::timeout_at(deadline, Limited::new(body, max).collect()).await
        {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(err)) if err.is::<LengthLimitError>() => {
                return respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is larger than the {max} bytes this service takes"),
                )
            }
            Ok(Err(err)) => {
                return respond(StatusCode::BAD_REQUEST, &format!("reading the body: {err}"))
            }
            Err(_) => return serving.timed_out(&what),
        };
        let env = cgi::variables(&head, body.len(), remote, self.local);
        let output = Capture::default();
        let mut store = match serving.store(io::Cursor::new(body), output.clone(), env) {
            Ok(store) => store,
            Err(err) => {
                serving.log(&format!("wasmtime: cannot serve {what}: {err:#}"));
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the function cannot be started now",
                );
            }
        };
        let linked = self.linked.clone();
        let guest = serving.spawn(async move {
            let result = match linked.instantiate(&mut store).await {
                Ok(entry) => entry.call(&mut store).await,
                Err(err) => Err(wasmtime::Error::from_anyhow(err)),
            };
            Outcome::of(result, &store)
        });
        let outcome = tokio::select! {
            outcome = guest => outcome,
            () = tokio::time::sleep_until(deadline) => return serving.timed_out(&what),
        };
        match outcome.result {
            Ok(()) => {}
            Err(err) => match err.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                Some(I32Exit(code)) => {
                    serving.log(&format!(
                        "wasmtime: {what}: {} exited with status {code}",
                        serving.guest.module_path
                    ));
                    return respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed");
                }
                None => return serving.failed(err, outcome.spent, outcome.refused, &what),
            },
        }
        let Some(output) = output.take() else {
            serving.log(&format!(
                "wasmtime: {what}: the program wrote more than {MAX_OUTPUT} bytes to stdout"
            ));
            return respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed");
        };
        match cgi::response(&output) {
            Ok(response) => response.map(|body| {
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }),
            Err(err) => {
                serving.log(&format!("wasmtime: {what}: {err:#}"));
                respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
            }
        }
    }
}

/// A program's stdout, kept whole up to [`MAX_OUTPUT`].
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

impl Capture {
    /// What was written; `None` when it overflowed.
    fn take(&self) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .or(Some(Vec::new()))
            .filter(|out| out.len() <= MAX_OUTPUT)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let out = out.get_or_insert_with(Vec::new);
        if out.len() + buf.len() > MAX_OUTPUT {
            // Remember the overflow; the program sees a failed write.
            out.resize(MAX_OUTPUT + 1, 0);
            return Poll::Ready(Err(io::ErrorKind::StorageFull.into()));
        }
        out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
