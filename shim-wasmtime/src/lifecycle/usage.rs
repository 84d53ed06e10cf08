//! Per-task resource figures for the Stats call: memory, kept up to date by
//! the engine, and CPU time, measured around every poll of the guest's future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Shared between the engine (which writes memory figures) and the service.
#[derive(Debug, Default)]
pub struct Usage {
    memory_bytes: AtomicU64,
    memory_peak: AtomicU64,
    cpu_nanos: AtomicU64,
}

impl Usage {
    /// Records the guest's current memory footprint (linear memories and tables).
    pub fn set_memory(&self, bytes: u64) {
        self.memory_bytes.store(bytes, Ordering::Relaxed);
        self.memory_peak.fetch_max(bytes, Ordering::Relaxed);
    }

    pub fn memory(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    pub fn memory_peak(&self) -> u64 {
        self.memory_peak.load(Ordering::Relaxed)
    }

    /// Charges CPU time to the task.
    pub fn add_cpu_nanos(&self, nanos: u64) {
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }
}

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Wraps a guest's future and charges the thread CPU time of each poll to it.
/// A guest runs only while it is being polled, so this is exact even with
/// many guests sharing the runtime's threads.
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    usage: Arc<Usage>,
}

impl<F> Metered<F> {
    pub fn new(inner: F, usage: Arc<Usage>) -> Self {
        Self {
            inner: Box::pin(inner),
            usage,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = thread_cpu_nanos();
        let out = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_nanos().saturating_sub(before);
        self.usage.add_cpu_nanos(spent);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_the_highest_value() {
        let u = Usage::default();
        u.set_memory(10);
        u.set_memory(30);
        u.set_memory(20);
        assert_eq!((u.memory(), u.memory_peak()), (20, 30));
    }

    #[tokio::test]
    async fn metered_future_counts_cpu_time() {
        let usage = Arc::new(Usage::default());
        let work = async {
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            x
        };
        Metered::new(work, usage.clone()).await;
        assert!(usage.cpu_nanos() > 0);
    }
}
