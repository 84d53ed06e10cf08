//! `--cri`: pod cold start through containerd's real CRI, as the kubelet
//! starts a pod: RunPodSandbox, then CreateContainer and StartContainer, to
//! the container's exit and to its first log line. The `wasmtime` handler
//! with the hello module against the `runc` handler with the same program
//! built natively, interleaved, on a containerd of its own (CRI plugin on):
//!
//! - host-network pods;
//! - pods with a network namespace of their own (CNI `ptp`);
//! - host-network pods with a busybox sidecar started before the hello.
//!
//! And the memory of K idle pods per side (one sleeping container each),
//! per pod: for wasm, the shims serving them; for runc, the runc shims and
//! every process under them (pause, the container).
//!
//! Each pod starts once the last one's shims have exited. Times come from
//! containerd's own clock readings, so polling does not blur them: the exit from ContainerStatus's `finished_at`, the first log
//! line from the timestamp containerd writes on it. Both are measured from
//! just before RunPodSandbox. Pod teardown is not timed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use harness::cri::{Cri, Pod};

use crate::measures::{cri_containerd, order, Bench};
use crate::results::{Better, Measure, Series, Unit};

/// The images the pods run, with their tars for the CRI containerd.
pub struct PodImages {
    /// `[wasm hello, native hello]`.
    pub hello: [String; 2],
    /// `[wasm sleep, busybox]`, for idle pods.
    pub sleep: [String; 2],
    pub busybox: String,
    pub tars: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Cni,
    Sidecar,
}

impl Kind {
    fn id(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Cni => "cni",
            Kind::Sidecar => "sidecar",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Host => "host-network pod",
            Kind::Cni => "pod with its own network namespace (CNI ptp)",
            Kind::Sidecar => "host-network pod with a busybox sidecar",
        }
    }
}

const HANDLERS: [&str; 2] = ["wasmtime", "runc"];
const LABELS: [&str; 2] = ["wasm", "runc"];

/// Every pod measure, each kind on a containerd of its own.
pub async fn pods(b: &Bench, images: &PodImages) -> Result<Vec<Measure>> {
    let mut all = Vec::new();
    for kind in [Kind::Host, Kind::Cni, Kind::Sidecar] {
        crate::progress::phase(&format!("pods: {}", kind.what()));
        all.extend(measure(b, images, kind).await?);
    }
    crate::progress::phase(&format!("pods: idle memory, K = {:?}", b.cfg.idle));
    all.extend(idle_memory(b, images).await?);
    Ok(all)
}

/// Memory per idle pod, for each K of `--idle`: K host-network pods per
/// side, each with one sleeping container.
async fn idle_memory(b: &Bench, images: &PodImages) -> Result<Vec<Measure>> {
    // Shims of the earlier measures' containerds that are still exiting map
    // the same binaries, and would lower the PSS measured here.
    quiesce(
        &format!("wt{}x", std::process::id()),
        Duration::from_secs(10),
    )
    .await;
    let cd = cri_containerd(Default::default(), images.tars.clone()).await?;
    let result = async {
        let mut cri = Cri::connect(&cd.socket).await?;
        let logs = std::env::temp_dir().join(b.id("idle-pod-logs"));
        let mut out = Vec::new();
        for &k in b.cfg.idle.iter().filter(|&&k| k > 0) {
            let mut totals = Vec::new();
            for side in 0..2 {
                let mut pods = Vec::new();
                let started = async {
                    for _ in 0..k {
                        let name = b.id(&format!("idle-{}", LABELS[side]));
                        let pod = cri
                            .run_pod(&name, &logs.join(&name), HANDLERS[side])
                            .await?;
                        pods.push(pod);
                        let pod = pods.last().context("a pod")?;
                        let command: &[&str] = if side == 0 {
                            &["/sleep.wasm", "3600"]
                        } else {
                            &["/busybox", "sleep", "3600"]
                        };
                        cri.start_container(pod, "sleep", &images.sleep[side], command)
                            .await?;
                    }
                    // Let startup's transient memory settle.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let socket = cd.socket.to_string_lossy().into_owned();
                    let pids: Vec<u32> = if side == 0 {
                        harness::processes_with_args(&["containerd-shim-wasmtime-v1", &socket])
                    } else {
                        let shims =
                            harness::processes_with_args(&["containerd-shim-runc-v2", &socket]);
                        shims.iter().flat_map(|&p| with_descendants(p)).collect()
                    };
                    crate::memory::total(pids)
                }
                .await;
                for pod in &pods {
                    cri.remove_pod(pod).await?;
                }
                totals.push(started?);
            }
            let per = |kib: u64| kib as f64 / 1024.0 / k as f64;
            let series = |side: usize, kib: u64, details: bool| -> Result<Series> {
                let s = Series::new(LABELS[side], HANDLERS[side], vec![per(kib)]);
                Ok(if details {
                    s.with_details(serde_json::json!({
                        "pods": k,
                        "total": serde_json::to_value(&totals[side])?,
                    }))
                } else {
                    s
                })
            };
            // PSS carries the totals' details; RSS is beside it.
            let pss = [totals[0].pss_kib, totals[1].pss_kib];
            let rss = [totals[0].rss_kib, totals[1].rss_kib];
            for (what, kib, details) in [("pss", pss, true), ("rss", rss, false)] {
                out.push(Measure::new(
                    &format!("pod_idle_{what}_k{k}"),
                    &format!(
                        "idle memory per pod (one sleeping container), {}, K={k}",
                        what.to_uppercase()
                    ),
                    Unit::MiB,
                    Better::Lower,
                    series(0, kib[0], details)?,
                    series(1, kib[1], details)?,
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&logs);
        anyhow::Ok(out)
    }
    .await;
    tokio::task::spawn_blocking(move || drop(cd)).await?;
    result
}

/// `pid` and every process below it.
fn with_descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        // A process that ended meanwhile has none.
        all.extend(harness::children(all[i]).unwrap_or_default());
        i += 1;
    }
    all
}

async fn measure(b: &Bench, images: &PodImages, kind: Kind) -> Result<Vec<Measure>> {
    let opts = harness::CriOptions {
        pod_network: kind == Kind::Cni,
        ..Default::default()
    };
    let cd = cri_containerd(opts, images.tars.clone()).await?;
    let result = async {
        let mut cri = Cri::connect(&cd.socket).await?;
        let logs = std::env::temp_dir().join(b.id("pod-logs"));
        let n = if b.cfg.quick { 5 } else { 10 };
        let mut exit = [Vec::new(), Vec::new()];
        let mut first_line = [Vec::new(), Vec::new()];
        for i in 0..=n {
            for side in order(i) {
                let (to_exit, to_line) = one_pod(b, &mut cri, images, kind, side, &logs).await?;
                // The last pod's shims exit (and containerd cleans up after
                // them) in the background: let that finish first, so that no
                // sample pays for the one before.
                quiesce(&cd.socket.to_string_lossy(), Duration::from_secs(2)).await;
                // The first round warms both sides (caches, page cache).
                if i > 0 {
                    exit[side].push(to_exit);
                    first_line[side].push(to_line);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&logs);
        let series = |samples: &[Vec<f64>; 2], side: usize| {
            Series::new(LABELS[side], HANDLERS[side], samples[side].clone())
        };
        anyhow::Ok(vec![
            Measure::new(
                &format!("pod_start_{}", kind.id()),
                &format!(
                    "Pod cold start, {}: RunPodSandbox to the container's exit (wasm hello vs native hello under runc)",
                    kind.what()
                ),
                Unit::Ms,
                Better::Lower,
                series(&exit, 0),
                series(&exit, 1),
            ),
            Measure::new(
                &format!("pod_first_log_{}", kind.id()),
                &format!(
                    "Pod cold start, {}: RunPodSandbox to the container's first log line",
                    kind.what()
                ),
                Unit::Ms,
                Better::Lower,
                series(&first_line, 0),
                series(&first_line, 1),
            ),
        ])
    }
    .await;
    tokio::task::spawn_blocking(move || drop(cd)).await?;
    result
}

/// Waits (up to `limit`) until no shim whose command line holds `needle`
/// (a containerd's socket, or the namespace prefix of this run's) runs.
async fn quiesce(needle: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let wasm = harness::processes_with_args(&["containerd-shim-wasmtime-v1", needle]);
        let runc = harness::processes_with_args(&["containerd-shim-runc-v2", needle]);
        if wasm.is_empty() && runc.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one pod to its hello's exit and removes it; returns the ms from
/// just before RunPodSandbox to the exit and to the first log line.
async fn one_pod(
    b: &Bench,
    cri: &mut Cri,
    images: &PodImages,
    kind: Kind,
    side: usize,
    logs: &Path,
) -> Result<(f64, f64)> {
    let name = b.id(&format!("pod-{}", LABELS[side]));
    let started = SystemTime::now();
    let pod = match kind {
        Kind::Cni => {
            cri.run_pod_with_network(&name, &logs.join(&name), HANDLERS[side])
                .await?
        }
        Kind::Host | Kind::Sidecar => {
            cri.run_pod(&name, &logs.join(&name), HANDLERS[side])
                .await?
        }
    };
    let mut containers = Vec::new();
    let timed = async {
        if kind == Kind::Sidecar {
            let sidecar = ["/busybox", "sleep", "600"];
            containers.push(
                cri.start_container(&pod, "sidecar", &images.busybox, &sidecar)
                    .await?,
            );
        }
        let hello = cri
            .start_container(&pod, "hello", &images.hello[side], &[])
            .await?;
        containers.push(hello.clone());
        let status = cri.wait_exited(&hello).await?;
        ensure!(status.exit_code == 0, "{name}: hello exited {status:?}");
        let exited = ms_since(started, status.finished_at)?;
        let logged = first_log_ms(&pod, started).await?;
        anyhow::Ok((exited, logged))
    }
    .await;
    for id in &containers {
        let _ = cri.stop_container(id, 0).await;
        let _ = cri.remove_container(id).await;
    }
    cri.remove_pod(&pod).await?;
    timed
}

/// Milliseconds from `start` to `unix_ns`, a CRI timestamp.
fn ms_since(start: SystemTime, unix_ns: i64) -> Result<f64> {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_ns)?);
    let d = at
        .duration_since(start)
        .context("containerd's clock reading is before the start")?;
    Ok(d.as_secs_f64() * 1e3)
}

/// Milliseconds from `start` to the timestamp of the hello's first CRI log
/// line (`<RFC 3339 time> <stream> <tag> <text>`), which containerd writes
/// as it copies the line. Waits up to 10 s for it.
async fn first_log_ms(pod: &Pod, start: SystemTime) -> Result<f64> {
    let path = pod.log_dir.join("hello.0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let stamp = line.split_whitespace().next().unwrap_or_default();
            let at = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
                .with_context(|| format!("the CRI log line {line:?} has no RFC 3339 time"))?;
            let d = at
                .duration_since(start)
                .context("the log line's time is before the start")?;
            return Ok(d.as_secs_f64() * 1e3);
        }
        if std::time::Instant::now() > deadline {
            bail!("{} stayed empty", path.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
