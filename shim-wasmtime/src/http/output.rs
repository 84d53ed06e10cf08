//! The output of many requests into one task's stdout or stderr: whole
//! lines, never two requests' partial lines mixed, written in batches.
//!
//! Each request's instance writes into its own [`RequestOutput`], which
//! keeps the partial last line and hands complete lines to the task's
//! [`Lines`]. One writer loop ([`Lines::run`]) moves whatever has gathered
//! into the task's stream with one write, so a busy service makes few
//! writes, and a request never waits for the client reading the task's
//! output. What a request leaves unterminated is ended with a newline when
//! its instance is dropped. If the client reads more slowly than requests
//! write, lines beyond [`MAX_PENDING`] bytes are dropped and counted, and
//! the count is written once the backlog clears.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Bytes of complete lines waiting for the writer loop, at most.
pub const MAX_PENDING: usize = 1 << 20;
/// How long the last writes may take once the service has stopped.
const FINAL_WRITE: std::time::Duration = std::time::Duration::from_secs(2);
/// A line longer than this is split, so one request cannot hold memory.
pub const MAX_LINE: usize = 16 << 10;

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
    dropped_lines: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// One task stream's line gatherer.
#[derive(Clone, Default)]
pub struct Lines(Arc<Shared>);

impl Lines {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer for one request.
    pub fn request(&self) -> RequestOutput {
        RequestOutput {
            lines: self.clone(),
            partial: Vec::new(),
        }
    }

    /// Appends whole lines, unless too much is waiting already.
    fn push(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.bytes.len() + lines.len() > MAX_PENDING {
            let n = lines.iter().filter(|b| **b == b'\n').count() as u64;
            self.0.dropped_lines.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let wake = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(lines);
        drop(pending);
        if wake {
            self.0.notify.notify_one();
        }
    }

    /// Writes the shim's own message, as whole lines.
    pub fn write_lines(&self, text: &str) {
        let mut text = text.trim_end().as_bytes().to_vec();
        text.push(b'\n');
        self.push(&text);
    }

    /// Lets [`Lines::run`] return once it has written what is waiting.
    pub fn close(&self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.0.notify.notify_one();
    }

    /// Writes what gathers into `out` until [`Lines::close`].
    pub async fn run(self, mut out: impl AsyncWrite + Unpin) {
        let mut batch = Vec::new();
        loop {
            let closed = {
                let mut pending = self
                    .0
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                std::mem::swap(&mut batch, &mut pending.bytes);
                pending.closed
            };
            let dropped = self.0.dropped_lines.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                batch.extend_from_slice(
                    format!("[containerd-shim-wasmtime] {dropped} lines of output dropped: the reader of this stream fell behind\n").as_bytes(),
                );
            }
            if !batch.is_empty() {
                // Once the service has stopped, a reader that does not read
                // cannot hold the task: what it does not take in 2 s is
                // dropped.
                let written = match closed {
                    false => out.write_all(&batch).await,
                    true => tokio::time::timeout(FINAL_WRITE, out.write_all(&batch))
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
                };
                if let Err(err) = written {
                    tracing::debug!(%err, "task output closed; request output discarded");
                    if closed {
                        return;
                    }
                }
                batch.clear();
                continue;
            }
            if closed {
                let _ = out.flush().await;
                return;
            }
            self.0.notify.notified().await;
        }
    }
}

/// One request's stdout or stderr.
pub struct RequestOutput {
    lines: Lines,
    partial: Vec<u8>,
}

impl RequestOutput {
    /// Hands on every complete line, and cuts a line at [`MAX_LINE`] bytes;
    /// the rest of a line waits for its end.
    fn take_lines(&mut self) {
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.partial[start..];
            let cut = match rest.iter().position(|b| *b == b'\n') {
                Some(newline) if newline <= MAX_LINE => newline + 1,
                _ if rest.len() >= MAX_LINE => MAX_LINE,
                _ => break,
            };
            out.extend_from_slice(&rest[..cut]);
            if rest[cut - 1] != b'\n' {
                out.push(b'\n');
            }
            start += cut;
        }
        self.partial.drain(..start);
        self.lines.push(&out);
    }
}

impl Drop for RequestOutput {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            self.lines.push(&self.partial);
        }
    }
}

impl AsyncWrite for RequestOutput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.partial.extend_from_slice(buf);
        self.take_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn requests_lines_stay_whole() {
        let lines = Lines::new();
        let (mut a, mut b) = (lines.request(), lines.request());
        a.write_all(b"a1 part").await.unwrap();
        b.write_all(b"b1\nb2 part").await.unwrap();
        a.write_all(b" end\na2").await.unwrap();
        drop(b);
        drop(a);
        lines.close();
        let mut out = Vec::new();
        lines.run(&mut out).await;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "b1\na1 part end\nb2 part\na2\n"
        );
    }

    #[tokio::test]
    async fn long_lines_are_split_and_overflow_is_counted() {
        let lines = Lines::new();
        let mut r = lines.request();
        r.write_all(&vec![b'x'; MAX_LINE + 5]).await.unwrap();
        drop(r);
        for _ in 0..(MAX_PENDING / MAX_LINE + 2) {
            let mut r = lines.request();
            r.write_all(&[b'y'; 100]).await.unwrap();
            r.write_all(&vec![b'z'; MAX_LINE - 101]).await.unwrap();
            r.write_all(b"\n").await.unwrap();
        }
        lines.close();
        let mut out = Vec::new();
        lines.run(&mut out).await;
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("{}\nxxxxx\n", "x".repeat(MAX_LINE))));
        assert!(
            text.contains("lines of output dropped"),
            "{}",
            &text[text.len() - 200..]
        );
        assert!(text.len() <= MAX_PENDING + 200);
    }
}
