//! The resource limits a spec asks for (`linux.resources`): read once per
//! task in Create, changed by Update while it runs. The engine enforces them
//! on the guest, reading [`LiveLimits`] at every memory growth and epoch
//! tick, and the cgroup the shim joins carries their sum for the kernel.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Spec};

use super::Usage;

/// The period the kernel uses when a spec sets a quota without one.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The kernel's bounds: a quota or period of at least 1 ms, a period of at
/// most 1 s.
const MIN_CPU_US: u64 = 1_000;
const MAX_CPU_PERIOD_US: u64 = 1_000_000;

/// A limit as runc reads it: positive sets it, negative lifts it (`Some(None)`),
/// zero leaves it as it is (`None`).
fn lift_or_set(v: i64) -> Option<Option<u64>> {
    match v {
        0 => None,
        v if v < 0 => Some(None),
        v => Some(Some(v as u64)),
    }
}

/// A CPU quota: `quota` of CPU time per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota: Duration,
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    pub cpu: Option<CpuQuota>,
    /// The relative CPU weight (`cpu.shares`), which only the kernel applies:
    /// to the shim's cgroup.
    pub cpu_shares: Option<u64>,
}

impl Limits {
    /// Reads `linux.resources.memory.limit` and `linux.resources.cpu`;
    /// zero or negative values mean no limit.
    pub fn from_spec(spec: &Spec) -> Self {
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let mut limits = Self::default();
        if let Some(r) = resources {
            Change::from_resources(r).apply_to(&mut limits);
        }
        limits
    }
}

/// What an Update asks to change. `None` leaves a limit as it is; `Some(None)`
/// lifts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub memory: Option<Option<u64>>,
    /// A new quota (`Some(None)`: none), and separately a new period.
    pub cpu_quota_us: Option<Option<u64>>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// The fields the request sets that mean nothing for a wasm task (a
    /// guest is one process, and sees no devices, huge pages or swap).
    pub ignored: Vec<&'static str>,
}

impl Change {
    /// Reads the OCI `LinuxResources` an Update carries. As runc does, a
    /// field left out, or zero, changes nothing; a memory limit or CPU quota
    /// of -1 (any negative value) lifts it.
    pub fn from_resources(r: &LinuxResources) -> Self {
        let mut change = Self::default();
        if let Some(m) = r.memory() {
            change.memory = m.limit().and_then(lift_or_set);
            for (set, name) in [
                (m.reservation().is_some(), "memory.reservation"),
                (m.swap().is_some(), "memory.swap"),
                (m.kernel().is_some(), "memory.kernel"),
                (m.kernel_tcp().is_some(), "memory.kernelTCP"),
                (m.swappiness().is_some(), "memory.swappiness"),
            ] {
                if set {
                    change.ignored.push(name);
                }
            }
        }
        if let Some(c) = r.cpu() {
            change.cpu_quota_us = c.quota().and_then(lift_or_set);
            change.cpu_period_us = c.period().filter(|p| *p > 0);
            change.cpu_shares = c.shares().filter(|s| *s > 0);
            for (set, name) in [
                (c.cpus().as_ref().is_some_and(|s| !s.is_empty()), "cpu.cpus"),
                (c.mems().as_ref().is_some_and(|s| !s.is_empty()), "cpu.mems"),
                (c.realtime_runtime().is_some(), "cpu.realtimeRuntime"),
                (c.realtime_period().is_some(), "cpu.realtimePeriod"),
            ] {
                if set {
                    change.ignored.push(name);
                }
            }
        }
        for (set, name) in [
            (r.pids().is_some(), "pids"),
            (r.block_io().is_some(), "blockIO"),
            (
                r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
                "hugepageLimits",
            ),
            (r.network().is_some(), "network"),
            (
                r.devices().as_ref().is_some_and(|d| !d.is_empty()),
                "devices",
            ),
            (r.rdma().as_ref().is_some_and(|d| !d.is_empty()), "rdma"),
            (
                r.unified().as_ref().is_some_and(|u| !u.is_empty()),
                "unified",
            ),
        ] {
            if set {
                change.ignored.push(name);
            }
        }
        change
    }

    /// Refuses values the kernel refuses too: a CPU period outside
    /// [1 ms, 1 s] or a quota under 1 ms (a period of hours would freeze
    /// the guest).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.cpu_period_us {
            if !(MIN_CPU_US..=MAX_CPU_PERIOD_US).contains(&p) {
                return Err(format!(
                    "cpu.period {p} µs is outside [{MIN_CPU_US}, {MAX_CPU_PERIOD_US}] µs"
                ));
            }
        }
        if let Some(Some(q)) = self.cpu_quota_us {
            if q < MIN_CPU_US {
                return Err(format!("cpu.quota {q} µs is under {MIN_CPU_US} µs"));
            }
        }
        Ok(())
    }

    /// The limits after this change.
    pub fn apply_to(&self, limits: &mut Limits) {
        if let Some(memory) = self.memory {
            limits.memory = memory;
        }
        let period = self
            .cpu_period_us
            .map(|p| Duration::from_micros(p.clamp(MIN_CPU_US, MAX_CPU_PERIOD_US)))
            .or(limits.cpu.map(|c| c.period))
            .unwrap_or(Duration::from_micros(DEFAULT_CPU_PERIOD_US));
        match self.cpu_quota_us {
            Some(Some(q)) => {
                limits.cpu = Some(CpuQuota {
                    quota: Duration::from_micros(q.max(MIN_CPU_US)),
                    period,
                })
            }
            Some(None) => limits.cpu = None,
            None => {
                if let Some(cpu) = &mut limits.cpu {
                    cpu.period = period;
                }
            }
        }
        if self.cpu_shares.is_some() {
            limits.cpu_shares = self.cpu_shares;
        }
    }
}

/// A memory limit below what the guest holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BelowUsage {
    pub limit: u64,
    pub used: u64,
}

impl std::fmt::Display for BelowUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit {} bytes is below the {} bytes the task's linear memory uses now \
             (WebAssembly memory cannot shrink)",
            self.limit, self.used
        )
    }
}

impl std::error::Error for BelowUsage {}

/// A running task's limits. One lock guards the limit and the guest's
/// memory figure together, so a growth and an Update never pass each other.
#[derive(Debug)]
pub struct LiveLimits {
    limits: Mutex<Limits>,
}

impl LiveLimits {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Mutex::new(limits),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self) -> Limits {
        *self.lock()
    }

    /// Records that one of the task's instances grows its memory from
    /// `from` to `to` bytes, if the task's memory limit allows the task's
    /// new total; false when it does not. (A task has one instance, or, when
    /// it serves HTTP, one per request in flight, all under one limit.)
    pub fn grow_memory(&self, from: u64, to: u64, usage: &Usage) -> bool {
        let limits = self.lock();
        let total = usage.memory().saturating_sub(from).saturating_add(to);
        if limits.memory.is_some_and(|m| total > m) {
            return false;
        }
        usage.set_memory(total);
        true
    }

    /// Records that an instance holding `bytes` of memory is gone.
    pub fn release_memory(&self, bytes: u64, usage: &Usage) {
        let _limits = self.lock();
        usage.set_memory(usage.memory().saturating_sub(bytes));
    }

    /// Applies `change`, unless it sets a memory limit below what the guest
    /// uses now; then nothing changes.
    pub fn update(&self, change: &Change, usage: &Usage) -> Result<(), BelowUsage> {
        let mut limits = self.lock();
        let mut after = *limits;
        change.apply_to(&mut after);
        if let Some(limit) = after.memory {
            let used = usage.memory();
            if used > limit {
                return Err(BelowUsage { limit, used });
            }
        }
        *limits = after;
        Ok(())
    }

    /// Puts back limits an update replaced.
    pub fn restore(&self, limits: Limits) {
        *self.lock() = limits;
    }
}

/// What the shim's own cgroup must allow for all its tasks together: the sum
/// of their memory limits and CPU quotas (none when any task has none, or
/// when there is no task), and the sum of their CPU shares, as the kubelet
/// sums a pod's. Quotas are added per 100 ms period, in whole microseconds,
/// rounded down, so that the sum never exceeds what a pod's parent cgroup
/// allows for the same containers.
pub fn total<'a>(all: impl IntoIterator<Item = &'a Limits>) -> Limits {
    let mut memory = Some(0u64);
    let mut quota_us = Some(0u128);
    let mut shares: Option<u64> = None;
    let mut any = false;
    for l in all {
        any = true;
        memory = memory.zip(l.memory).map(|(a, b)| a.saturating_add(b));
        quota_us = quota_us.zip(l.cpu).map(|(a, c)| {
            let per_period = c.quota.as_micros() * u128::from(DEFAULT_CPU_PERIOD_US)
                / c.period.as_micros().max(1);
            a + per_period
        });
        if let Some(s) = l.cpu_shares {
            shares = Some(shares.unwrap_or(0).saturating_add(s));
        }
    }
    if !any {
        return Limits::default();
    }
    Limits {
        memory,
        cpu: quota_us.map(|q| CpuQuota {
            quota: Duration::from_micros(u64::try_from(q).unwrap_or(u64::MAX).max(MIN_CPU_US)),
            period: Duration::from_micros(DEFAULT_CPU_PERIOD_US),
        }),
        cpu_shares: shares,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": resources}
        }))
        .unwrap()
    }

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_memory_and_cpu_and_ignores_zero() {
        let l = Limits::from_spec(&spec(
            serde_json::json!({"memory": {"limit": 1024}, "cpu": {"quota": 10000, "shares": 512}}),
        ));
        assert_eq!(l.memory, Some(1024));
        assert_eq!(
            l.cpu,
            Some(CpuQuota {
                quota: Duration::from_micros(10_000),
                period: Duration::from_micros(100_000)
            })
        );
        assert_eq!(l.cpu_shares, Some(512));
        let none = spec(serde_json::json!({"memory": {"limit": 0}, "cpu": {"quota": -1}}));
        assert_eq!(Limits::from_spec(&none), Limits::default());
    }

    #[test]
    fn a_change_touches_only_what_it_names() {
        let mut l = Limits {
            memory: Some(1 << 20),
            cpu: Some(CpuQuota {
                quota: Duration::from_millis(10),
                period: Duration::from_millis(100),
            }),
            cpu_shares: None,
        };
        let c = Change::from_resources(&resources(serde_json::json!({"cpu": {"period": 50000}})));
        c.apply_to(&mut l);
        assert_eq!(l.memory, Some(1 << 20));
        assert_eq!(l.cpu.unwrap().period, Duration::from_millis(50));
        assert_eq!(l.cpu.unwrap().quota, Duration::from_millis(10));

        // Zero changes nothing, as in runc.
        let c = Change::from_resources(&resources(
            serde_json::json!({"memory": {"limit": 0}, "cpu": {"quota": 0}}),
        ));
        c.apply_to(&mut l);
        assert_eq!(l.memory, Some(1 << 20));
        assert!(l.cpu.is_some());

        let c = Change::from_resources(&resources(
            serde_json::json!({"memory": {"limit": -1}, "cpu": {"quota": -1}, "pids": {"limit": 5}}),
        ));
        assert_eq!(c.ignored, vec!["pids"]);
        c.apply_to(&mut l);
        assert_eq!((l.memory, l.cpu), (None, None));

        // The kernel's bounds.
        for bad in [
            serde_json::json!({"cpu": {"period": 100}}),
            serde_json::json!({"cpu": {"period": 10_000_000_000u64}}),
            serde_json::json!({"cpu": {"quota": 10}}),
        ] {
            assert!(Change::from_resources(&resources(bad)).validate().is_err());
        }
    }

    #[test]
    fn an_update_below_usage_changes_nothing() {
        let usage = Usage::default();
        let live = LiveLimits::new(Limits {
            memory: Some(1 << 20),
            ..Default::default()
        });
        assert!(live.grow_memory(0, 1 << 19, &usage));
        assert!(!live.grow_memory(1 << 19, 2 << 20, &usage));
        let shrink = Change {
            memory: Some(Some(1 << 18)),
            ..Default::default()
        };
        let err = live.update(&shrink, &usage).unwrap_err();
        assert_eq!(
            err,
            BelowUsage {
                limit: 1 << 18,
                used: 1 << 19
            }
        );
        assert_eq!(live.get().memory, Some(1 << 20));
        let grow = Change {
            memory: Some(Some(4 << 20)),
            ..Default::default()
        };
        live.update(&grow, &usage).unwrap();
        assert!(live.grow_memory(1 << 19, 2 << 20, &usage));
        assert_eq!(live.get().memory, Some(4 << 20));
    }

    #[test]
    fn instances_of_one_task_share_its_memory_limit() {
        let usage = Usage::default();
        let live = LiveLimits::new(Limits {
            memory: Some(3 << 20),
            ..Default::default()
        });
        assert!(live.grow_memory(0, 1 << 20, &usage));
        assert!(live.grow_memory(0, 2 << 20, &usage));
        assert!(
            !live.grow_memory(0, 1 << 20, &usage),
            "a third MiB past the limit"
        );
        live.release_memory(2 << 20, &usage);
        assert_eq!(usage.memory(), 1 << 20);
        assert!(live.grow_memory(0, 2 << 20, &usage));
    }

    #[test]
    fn totals_add_up_and_any_unlimited_task_lifts_the_sum() {
        let q = |ms| {
            Some(CpuQuota {
                quota: Duration::from_millis(ms),
                period: Duration::from_millis(100),
            })
        };
        let a = Limits {
            memory: Some(10),
            cpu: q(10),
            cpu_shares: Some(2),
        };
        let b = Limits {
            memory: Some(20),
            cpu: q(50),
            cpu_shares: None,
        };
        let t = total([&a, &b]);
        assert_eq!(t.memory, Some(30));
        assert_eq!(t.cpu, q(60));
        assert_eq!(t.cpu_shares, Some(2));
        let t = total([&a, &Limits::default()]);
        assert_eq!((t.memory, t.cpu), (None, None));
        // No task: nothing to hold the shim to.
        assert_eq!(total([]), Limits::default());
        // 100m + 200m is 30000 µs per 100 ms, not a float's 30001.
        let m = |ms| Limits {
            cpu: q(ms),
            ..Default::default()
        };
        assert_eq!(total([&m(10), &m(20)]).cpu, q(30));
        // Periods other than 100 ms are scaled, rounding down.
        let odd = Limits {
            cpu: Some(CpuQuota {
                quota: Duration::from_micros(10_000),
                period: Duration::from_micros(30_000),
            }),
            ..Default::default()
        };
        assert_eq!(
            total([&odd]).cpu.unwrap().quota,
            Duration::from_micros(33_333)
        );
    }
}
