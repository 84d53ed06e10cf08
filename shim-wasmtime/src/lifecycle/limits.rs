//! The resource limits a spec asks for (`linux.resources`), read once per
//! task: the engine enforces them on the guest, and the cgroup the shim joins
//! carries them for the kernel.

use std::time::Duration;

use oci_spec::runtime::Spec;

/// The period the kernel uses when a spec sets a quota without one.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

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
}

impl Limits {
    /// Reads `linux.resources.memory.limit` and `linux.resources.cpu`;
    /// zero or negative values mean no limit.
    pub fn from_spec(spec: &Spec) -> Self {
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let memory = resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64);
        let cpu = resources.and_then(|r| r.cpu().as_ref()).and_then(|c| {
            let quota = c.quota().filter(|q| *q > 0)?;
            let period = c
                .period()
                .filter(|p| *p > 0)
                .unwrap_or(DEFAULT_CPU_PERIOD_US);
            Some(CpuQuota {
                quota: Duration::from_micros(quota as u64),
                period: Duration::from_micros(period),
            })
        });
        Self { memory, cpu }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_and_cpu_and_ignores_zero() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"memory": {"limit": 1024}, "cpu": {"quota": 10000}}}
        }))
        .unwrap();
        let l = Limits::from_spec(&spec);
        assert_eq!(l.memory, Some(1024));
        assert_eq!(
            l.cpu,
            Some(CpuQuota {
                quota: Duration::from_micros(10_000),
                period: Duration::from_micros(100_000)
            })
        );
        let none: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"memory": {"limit": 0}, "cpu": {"quota": -1}}}
        }))
        .unwrap();
        assert_eq!(Limits::from_spec(&none), Limits::default());
    }
}
