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
//! (`serve.rs`). The request body streams into stdin (for a chunked request
//! `CONTENT_LENGTH` is empty and the program reads to end-of-file). The
//! response is gathered whole before it is sent, as a program may exit
//! non-zero after writing: at most [`MAX_OUTPUT`] bytes, counted against
//! the container's memory limit until sent.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use anyhow::Result;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyDataStream, BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;
use tokio_util::io::StreamReader;
use wasmtime_wasi::I32Exit;

use super::serve::{Admitted, Outcome, Serving};
use super::Linked;
use crate::http::cgi;
use crate::http::server::{respond, Body, BoxError, Handler};
use crate::lifecycle::{GuestIo, LiveLimits, Running, Usage};
use crate::wasm::instance::Guest;

/// The most a program may write as its response.
pub const MAX_OUTPUT: usize = 16 << 20;

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
        let Admitted {
            permit,
            deadline,
            what,
            content_length,
        } = match serving.admit(&request) {
            Ok(admitted) => admitted,
            Err(answer) => return *answer,
        };
        let (head, body) = request.into_parts();
        // Without one: no body, or a chunked one, which the program reads
        // to its end.
        let content_length = content_length.or(body.is_end_stream().then_some(0));
        let Ok(env) = cgi::variables(&head, content_length, remote, self.local) else {
            return respond(StatusCode::BAD_REQUEST, "the path decodes to a NUL byte");
        };
        // The body streams into stdin as the program reads it, never
        // gathered in the shim.
        let max = serving.guest.http.max_body_bytes as usize;
        let stdin = StreamReader::new(BodyDataStream::new(
            Limited::new(body, max).map_err(io::Error::other),
        ));
        let output = Capture::new(&serving.guest);
        let mut store = match serving.store(stdin, output.clone(), env, &what) {
            Ok(store) => store,
            Err(answer) => return *answer,
        };
        let linked = self.linked.clone();
        let timing = self.serving.clone();
        let started = std::time::Instant::now();
        let cpu = store.data().budget_cpu();
        let outcome = serving
            .spawn(cpu, permit, deadline, async move {
                let result = match linked.instantiate(&mut store).await {
                    Ok(entry) => {
                        timing.instantiations.record(started.elapsed());
                        entry.call(&mut store).await
                    }
                    Err(err) => Err(wasmtime::Error::from_anyhow(err)),
                };
                Outcome::of(result, &store)
            })
            .await;
        if let Err(err) = &outcome.result {
            match err.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                Some(I32Exit(code)) => {
                    serving.log(&format!(
                        "wasmtime: {what}: {} exited with status {code}",
                        serving.guest.module_path
                    ));
                    return respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed");
                }
                None => return serving.failed(outcome, &what),
            }
        }
        let (bytes, charge) = match output.finish() {
            Ok(done) => done,
            Err(why) => {
                serving.log(&format!("wasmtime: {what}: {why}"));
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed");
            }
        };
        match cgi::response(bytes) {
            Ok(response) => response.map(|body| {
                Charged {
                    inner: Full::new(body),
                    _charge: charge,
                }
                .boxed_unsync()
            }),
            Err(err) => {
                serving.log(&format!("wasmtime: {what}: {err:#}"));
                respond(StatusCode::INTERNAL_SERVER_ERROR, "the function failed")
            }
        }
    }
}

/// Memory the shim holds for a task, counted against the task's memory
/// limit like its instances' until dropped.
struct Charge {
    limits: Arc<LiveLimits>,
    usage: Arc<Usage>,
    bytes: u64,
}

impl Charge {
    /// Grows the charge by `n` bytes, if the task's limit allows.
    fn grow(&mut self, n: u64) -> bool {
        let to = self.bytes + n;
        if !self.limits.grow_memory(self.bytes, to, &self.usage) {
            return false;
        }
        self.bytes = to;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.limits.release_memory(self.bytes, &self.usage);
    }
}

/// A program's stdout, kept whole up to [`MAX_OUTPUT`] bytes and within the
/// task's memory limit.
#[derive(Clone)]
struct Capture(Arc<Mutex<Captured>>);

struct Captured {
    bytes: Vec<u8>,
    charge: Charge,
    /// Why the output was refused, once it was.
    refused: Option<String>,
}

impl Capture {
    fn new(guest: &Guest) -> Self {
        Self(Arc::new(Mutex::new(Captured {
            bytes: Vec::new(),
            charge: Charge {
                limits: guest.limits.clone(),
                usage: guest.usage.clone(),
                bytes: 0,
            },
            refused: None,
        })))
    }

    /// The output and what it is charged, or why it was refused.
    fn finish(&self) -> Result<(Bytes, Charge), String> {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = c.refused.take() {
            return Err(why);
        }
        let bytes = Bytes::from(std::mem::take(&mut c.bytes));
        let charge = Charge {
            limits: c.charge.limits.clone(),
            usage: c.charge.usage.clone(),
            bytes: std::mem::take(&mut c.charge.bytes),
        };
        Ok((bytes, charge))
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let c = &mut *c;
        if c.refused.is_none() && c.bytes.len() + buf.len() > MAX_OUTPUT {
            c.refused = Some(format!(
                "the program wrote more than {MAX_OUTPUT} bytes to stdout"
            ));
        }
        if c.refused.is_none() && !c.charge.grow(buf.len() as u64) {
            c.refused = Some(
                "the program's output does not fit in the container's memory limit".to_string(),
            );
        }
        if c.refused.is_some() {
            return Poll::Ready(Err(io::ErrorKind::StorageFull.into()));
        }
        c.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A response body that keeps its memory charged to the task until sent.
struct Charged {
    inner: Full<Bytes>,
    _charge: Charge,
}

impl HttpBody for Charged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|never| match never {})
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
