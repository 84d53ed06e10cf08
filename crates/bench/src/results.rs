//! The results document: every measure with its raw samples and summary, and
//! the context they were taken in. It is what `results.json` holds and what
//! the table and the chart are drawn from, so it has no behaviour beyond
//! building a measure and its ratio.

use serde::Serialize;

use crate::stats::{self, Summary};

/// The unit of a measure's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Us,
    Ms,
    TasksPerSec,
    RequestsPerSec,
    MiB,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Us => "µs",
            Unit::Ms => "ms",
            Unit::TasksPerSec => "tasks/s",
            Unit::RequestsPerSec => "req/s",
            Unit::MiB => "MiB",
        }
    }
}

/// Which way a measure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One side of a comparison, e.g. "wasm" or "runc".
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub label: String,
    /// The containerd runtime the samples were taken with.
    pub runtime: String,
    pub samples: Vec<f64>,
    pub summary: Option<Summary>,
    /// Raw material behind the samples (e.g. the processes a memory sample
    /// added up), when there is any.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Series {
    pub fn new(label: &str, runtime: &str, samples: Vec<f64>) -> Self {
        let summary = stats::summarize(&samples);
        Self {
            label: label.to_string(),
            runtime: runtime.to_string(),
            samples,
            summary,
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    fn p50(&self) -> Option<f64> {
        self.summary.map(|s| s.p50)
    }
}

/// Two series compared on one quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub id: String,
    pub title: String,
    pub unit: Unit,
    pub better: Better,
    /// `[a, b]`: a is the subject (wasm, or the cached start), b the baseline.
    pub series: [Series; 2],
    /// How many times better a's p50 is than b's: b/a when lower is better,
    /// a/b when higher is better. Above 1 means a wins.
    pub ratio: Option<f64>,
    /// How the ratio was formed, e.g. `runc/wasm`.
    pub ratio_label: String,
}

impl Measure {
    pub fn new(id: &str, title: &str, unit: Unit, better: Better, a: Series, b: Series) -> Self {
        let (ratio, ratio_label) = match (better, a.p50(), b.p50()) {
            (Better::Lower, pa, pb) => (
                pa.zip(pb).and_then(|(pa, pb)| stats::ratio(pb, pa)),
                format!("{}/{}", b.label, a.label),
            ),
            (Better::Higher, pa, pb) => (
                pa.zip(pb).and_then(|(pa, pb)| stats::ratio(pa, pb)),
                format!("{}/{}", a.label, b.label),
            ),
        };
        Self {
            id: id.to_string(),
            title: title.to_string(),
            unit,
            better,
            series: [a, b],
            ratio,
            ratio_label,
        }
    }
}

/// The containerd the measures ran against.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerdInfo {
    pub version: String,
    pub revision: String,
    pub address: String,
    pub namespace: String,
    /// Whether the benchmark started this containerd itself.
    pub private: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub kernel: String,
    pub cpus: usize,
}

/// The settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub iterations: usize,
    pub throughput_tasks: usize,
    pub concurrency: usize,
    pub idle: Vec<usize>,
    pub first_runs: usize,
    pub cached_runs: usize,
    pub quick: bool,
    /// How the private containerd runs wasm shims: "per-container" or "shared".
    pub shim_mode: String,
}

/// A measure that could not be completed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct MeasureError {
    pub measure: String,
    pub error: String,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub tool: String,
    pub tool_version: String,
    /// When the run started, RFC 3339 in UTC.
    pub timestamp: String,
    pub unix_time: u64,
    pub containerd: ContainerdInfo,
    pub host: HostInfo,
    pub config: RunConfig,
    pub measures: Vec<Measure>,
    pub errors: Vec<MeasureError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_favours_the_subject_when_above_one() {
        let wasm = Series::new("wasm", "w", vec![10.0, 10.0]);
        let runc = Series::new("runc", "r", vec![30.0, 30.0]);
        let m = Measure::new(
            "t",
            "t",
            Unit::Ms,
            Better::Lower,
            wasm.clone(),
            runc.clone(),
        );
        assert_eq!(m.ratio, Some(3.0));
        assert_eq!(m.ratio_label, "runc/wasm");

        let m = Measure::new("r", "r", Unit::TasksPerSec, Better::Higher, wasm, runc);
        assert_eq!(m.ratio, Some(10.0 / 30.0));
        assert_eq!(m.ratio_label, "wasm/runc");
    }

    #[test]
    fn no_ratio_without_samples() {
        let a = Series::new("wasm", "w", vec![]);
        let b = Series::new("runc", "r", vec![1.0]);
        assert_eq!(
            Measure::new("x", "x", Unit::MiB, Better::Lower, a, b).ratio,
            None
        );
    }
}
