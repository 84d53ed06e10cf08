//! A task's CPU quota, enforced by making its guests wait: a task that has
//! used its quota in the current period waits until the period ends. Shared
//! by all of a task's instances (an HTTP service has one per request), so
//! the quota bounds the task as a whole. The engine asks at each epoch tick
//! while a guest runs ([`Throttle::check`]), and before a new instance of
//! the task starts ([`Throttle::admit`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{LiveLimits, Usage};

/// The current period of a task's quota.
#[derive(Debug)]
struct Period {
    start: Instant,
    cpu_at_start: u64,
}

#[derive(Clone)]
pub struct Throttle {
    limits: Arc<LiveLimits>,
    usage: Arc<Usage>,
    period: Arc<Mutex<Period>>,
}

impl Throttle {
    pub fn new(limits: Arc<LiveLimits>, usage: Arc<Usage>) -> Self {
        let period = Period {
            start: Instant::now(),
            cpu_at_start: usage.cpu_nanos(),
        };
        Self {
            limits,
            usage,
            period: Arc::new(Mutex::new(period)),
        }
    }

    /// When the task has spent its quota for the current period: the
    /// instant to wait until. `None`: it may run on.
    pub fn check(&self) -> Option<Instant> {
        let limit = self.limits.get().cpu?;
        let mut p = self.period.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let cpu = self.usage.cpu_nanos();
        // Another instance found the quota spent: wait with it.
        if now < p.start {
            return Some(p.start);
        }
        let used = Duration::from_nanos(cpu.saturating_sub(p.cpu_at_start));
        if now.saturating_duration_since(p.start) >= limit.period {
            p.start = now;
            p.cpu_at_start = cpu;
            return None;
        }
        if used < limit.quota {
            return None;
        }
        let wake = p.start + limit.period;
        p.start = wake;
        // What was used beyond the quota is charged to the next period.
        p.cpu_at_start = cpu.saturating_sub((used - limit.quota).as_nanos() as u64);
        Some(wake)
    }

    /// Waits, before a new instance starts, until the task may run.
    pub async fn admit(&self) {
        if let Some(wake) = self.check() {
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::limits::{CpuQuota, Limits};

    #[test]
    fn a_task_over_its_quota_waits_for_the_next_period() {
        let usage = Arc::new(Usage::default());
        let limits = Arc::new(LiveLimits::new(Limits {
            cpu: Some(CpuQuota {
                quota: Duration::from_millis(10),
                period: Duration::from_millis(100),
            }),
            ..Default::default()
        }));
        let throttle = Throttle::new(limits, usage.clone());
        let other = throttle.clone();
        assert_eq!(throttle.check(), None);
        usage.add_cpu_nanos(20_000_000);
        // Any instance of the task sees the quota spent.
        let wake = other.check().expect("over quota");
        assert!(wake > Instant::now());
        // Until then every instance waits for the same instant.
        assert_eq!(throttle.check(), Some(wake));
    }

    #[test]
    fn no_quota_never_waits() {
        let usage = Arc::new(Usage::default());
        let throttle = Throttle::new(Arc::new(LiveLimits::new(Limits::default())), usage.clone());
        usage.add_cpu_nanos(u64::MAX / 2);
        assert_eq!(throttle.check(), None);
    }
}
