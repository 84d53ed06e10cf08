//! A guest's stdin that nothing reads until the guest reads it.
//!
//! wasmtime-wasi's `AsyncStdinStream` starts reading its source as soon as
//! it is made, and it is made with the guest's WASI context. The task's
//! stdin is also the guest's `/dev/stdin` (`lifecycle::devices`), and bytes
//! read ahead for fd 0 would be missing there. So the stream is made on the
//! guest's first read (or poll) of fd 0, and until then the source, which
//! starts copying from containerd's FIFO only when first polled itself
//! (`lifecycle::stdio`), is left alone.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use tokio::io::AsyncRead;
use wasmtime_wasi::cli::{AsyncStdinStream, IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamResult};

type Source = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// The guest's stdin; every handle the guest opens on it shares one stream.
pub struct GuestStdin(Arc<Shared>);

struct Shared {
    source: Mutex<Option<Source>>,
    stream: OnceLock<AsyncStdinStream>,
}

impl Shared {
    fn stream(&self) -> &AsyncStdinStream {
        self.stream.get_or_init(|| {
            let source = self
                .source
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match source {
                Some(source) => AsyncStdinStream::new(source),
                None => AsyncStdinStream::new(tokio::io::empty()),
            }
        })
    }
}

impl GuestStdin {
    pub fn new(source: impl AsyncRead + Send + Sync + Unpin + 'static) -> Self {
        Self(Arc::new(Shared {
            source: Mutex::new(Some(Box::new(source))),
            stream: OnceLock::new(),
        }))
    }
}

impl IsTerminal for GuestStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for GuestStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(Handle {
            shared: self.0.clone(),
            stream: None,
        })
    }

    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        self.0.stream().async_stream()
    }
}

/// One handle on the guest's stdin, which makes the shared stream when it is
/// first used.
struct Handle {
    shared: Arc<Shared>,
    stream: Option<Box<dyn InputStream>>,
}

impl Handle {
    fn stream(&mut self) -> &mut Box<dyn InputStream> {
        self.stream
            .get_or_insert_with(|| self.shared.stream().p2_stream())
    }
}

#[async_trait::async_trait]
impl InputStream for Handle {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.stream().read(size)
    }

    fn skip(&mut self, size: usize) -> StreamResult<usize> {
        self.stream().skip(size)
    }

    async fn cancel(&mut self) {
        if let Some(stream) = &mut self.stream {
            stream.cancel().await;
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Handle {
    async fn ready(&mut self) {
        self.stream().ready().await
    }
}
