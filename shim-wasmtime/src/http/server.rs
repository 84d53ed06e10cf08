//! The listener and the HTTP/1.1 connections of one serving task.
//!
//! - [`bind`] makes the listening socket on the calling thread, so in the
//!   task's network namespace when called on that namespace's runtime
//!   (`lifecycle::netns`). A busy or forbidden address fails Start.
//! - [`serve`] accepts connections (`TCP_NODELAY`, keep-alive) and serves
//!   each with hyper, which answers malformed requests 400 and oversized
//!   heads 431 itself. A timer makes hyper enforce the header-read timeout,
//!   which also closes a kept-alive connection that sits idle that long.
//! - A stop request (SIGTERM or SIGINT) closes the listener at once, so the
//!   port is free for a restarted container, then lets requests in flight
//!   finish for the drain time: exit 0 when they all did, `128 + signal`
//!   when time ran out. Dropping the future (SIGKILL) drops every connection
//!   and every request with it.
//!
//! What a request means is the [`Handler`]'s business: the wasm kinds that
//! serve HTTP implement it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::settings::Settings;
use crate::lifecycle::{Exit, StopRequests};

/// Errors a response body may end with; hyper then cuts the response off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Largest request head (request line and headers) hyper accepts.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Serves one request.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = hyper::Response<Body>> + Send>>;
}

/// A short plain-text response from the shim itself.
pub fn respond(status: http::StatusCode, text: &str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Binds the listening socket, in the calling thread's network namespace.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("create the listening socket")?;
    // A restarted container binds at once, even with connections of its
    // predecessor still in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .context("set SO_REUSEADDR on the listening socket")?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .listen(backlog)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// How many connections one service keeps open at most: four per request
/// it may serve at once, and at least 64, for clients that keep idle
/// connections alive.
fn max_connections(settings: &Settings) -> usize {
    settings.max_concurrency.saturating_mul(4).max(64)
}

/// The connection semaphore is never closed.
fn unreachable_closed() {
    tracing::error!("the connection limit was closed");
}

/// Accepts and serves connections until a stop request, then drains.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    settings: &Settings,
    mut stop: StopRequests,
) -> Exit {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_header_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    // Open connections, each a descriptor and buffers in the shim: beyond
    // this many, new ones wait in the listen backlog.
    let open = Arc::new(Semaphore::new(max_connections(settings)));
    let mut stoppable = true;
    let signal = loop {
        tokio::select! {
            changed = stop.changed(), if stoppable => match changed {
                Ok(()) => match *stop.borrow_and_update() {
                    Some(signal) => break signal,
                    None => continue,
                },
                // Nobody can ask for a graceful stop any more; a kill
                // still drops this future.
                Err(_) => stoppable = false,
            },
            accepted = async {
                let permit = open.clone().acquire_owned().await;
                (listener.accept().await, permit)
            } => match accepted {
                (Ok((stream, remote)), Ok(permit)) => {
                    // Small response chunks go out at once, not after
                    // Nagle's 40 ms.
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let response = handler.clone().handle(request, remote);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    connections.spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(%remote, %err, "HTTP connection ended");
                        }
                        drop(permit);
                    });
                }
                (Ok(_), Err(_)) => unreachable_closed(),
                (Err(err), _) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: keep serving, a little later.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    let addr = listener.local_addr().ok();
    drop(listener);
    tracing::info!(
        signal,
        ?addr,
        in_flight = connections.len(),
        "stopped listening; draining"
    );
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if drained {
        Exit::code(0)
    } else {
        Exit {
            code: 128 + signal,
            reason: Some(format!(
                "requests still in flight {:?} after the stop signal were cut off",
                settings.drain_timeout
            )),
        }
    }
}
