//! `wasm-bench`: the wasmtime shim against runc on the same containerd, side
//! by side. This file is the orchestration: options, the containerd to use,
//! the images, the order of the measures, cleanup, and where results go.
//!
//! Timings never fail the run. The exit code is 0 when every measure
//! completed, 1 when one failed (the others are still reported), 2 when the
//! benchmark could not start (no containerd, images missing, ...).

mod client;
mod ctr;
mod http;
mod image;
mod lifecycle;
mod measures;
mod memory;
mod pods;
mod progress;
mod report;
mod results;
mod spec;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;

use crate::client::Api;
use crate::ctr::Ctr;
use crate::image::ImageInfo;
use crate::lifecycle::Workload;
use crate::measures::{Bench, Pair};
use crate::progress::{phase, warn};
use crate::results::{ContainerdInfo, HostInfo, Measure, MeasureError, Results, RunConfig};

const WASM_RUNTIME: &str = harness::RUNTIME;
const WASM_SHIM: &str = harness::SHIM_BINARY;
const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const RUNC_SHIM: &str = "containerd-shim-runc-v2";
/// The wasm shim's module cache folder; unset so each containerd's shims
/// use their default, inside that containerd's state folder.
const CACHE_DIR_ENV: &str = "WASMTIME_SHIM_CACHE_DIR";
const SHARED_ENV: &str = "WASMTIME_SHIM_SHARED";

/// Benchmark the wasmtime shim against runc on the same containerd.
///
/// Measures cold start (through the API and through `ctr run --rm`),
/// throughput, idle memory per container, and the wasm shim's first start
/// against its cached starts. Prints a table on stdout and writes
/// results.json and results.svg into --out.
#[derive(Parser, Debug)]
#[command(name = "wasm-bench", version)]
struct Cli {
    /// containerd socket. Default: start a private containerd (from
    /// CONTAINERD_BIN_DIR, with the shim from SHIM_BIN_DIR).
    #[arg(long, value_name = "SOCK")]
    address: Option<PathBuf>,
    /// Namespace to work in. Default: the private containerd's own, or
    /// `wasm-bench` with --address.
    #[arg(long)]
    namespace: Option<String>,
    /// Cold starts per runtime, for each of the API and `ctr run` [default: 30; --quick: 10]
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,
    /// Tasks per throughput run [default: 100; --quick: 20]
    #[arg(long, value_name = "N")]
    throughput_tasks: Option<usize>,
    /// Tasks at a time in the concurrent throughput run [default: 4]
    #[arg(long, value_name = "C")]
    concurrency: Option<usize>,
    /// Numbers of idle containers to measure memory with [default: 1,50; --quick: 1,10]
    #[arg(long, value_name = "K,…", value_delimiter = ',')]
    idle: Option<Vec<usize>>,
    /// Fresh containerds for the first-start measure; 0 skips it [default: 3; --quick: 2]
    #[arg(long, value_name = "N")]
    first_runs: Option<usize>,
    /// Cached starts after each first start [default: 5; --quick: 3]
    #[arg(long, value_name = "N")]
    cached_runs: Option<usize>,
    /// A small configuration for CI (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Run the private containerd's wasm shims in shared mode
    /// (WASMTIME_SHIM_SHARED=1): one warm shim per namespace for containers
    /// of no pod, instead of one per container.
    #[arg(long)]
    shared: bool,
    /// CRI mode: only pod cold start through containerd's CRI (RunPodSandbox
    /// to the container's exit and first log line), wasm pods against runc
    /// pods, with host networking, a CNI network, and a sidecar.
    #[arg(long)]
    cri: bool,
    /// Snapshotter to prepare root filesystems with.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Folder with the example image tars.
    /// [default: <workspace>/target/examples/images]
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Where results.json and results.svg go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
}

impl Cli {
    fn config(&self) -> RunConfig {
        let q = self.quick;
        RunConfig {
            iterations: self.iterations.unwrap_or(if q { 10 } else { 30 }),
            throughput_tasks: self.throughput_tasks.unwrap_or(if q { 20 } else { 100 }),
            concurrency: self.concurrency.unwrap_or(4).max(1),
            idle: self
                .idle
                .clone()
                .unwrap_or_else(|| if q { vec![1, 10] } else { vec![1, 50] })
                .into_iter()
                .filter(|&k| k > 0)
                .collect(),
            first_runs: self.first_runs.unwrap_or(if q { 2 } else { 3 }),
            cached_runs: self.cached_runs.unwrap_or(if q { 3 } else { 5 }),
            quick: q,
            shim_mode: if self.shared {
                "shared"
            } else {
                "per-container"
            }
            .to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: the shims containerd starts inherit this
    // environment, and the first-start measure needs their default cache.
    std::env::remove_var(CACHE_DIR_ENV);
    if cli.shared {
        std::env::set_var(SHARED_ENV, "1");
    } else {
        std::env::remove_var(SHARED_ENV);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("wasm-bench: start the tokio runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("wasm-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The four example images the measures use.
struct Images {
    hello: (PathBuf, ImageInfo),
    /// The same hello as a WASI preview 2 command component.
    hello_p2: (PathBuf, ImageInfo),
    /// A component that uses wasi:sockets (`net`), for the cost of its network.
    net_p2: (PathBuf, ImageInfo),
    hello_native: (PathBuf, ImageInfo),
    sleep: (PathBuf, ImageInfo),
    busybox: (PathBuf, ImageInfo),
    /// HTTP functions: a wasi:http component, and a WAGI module.
    hello_http_p2: (PathBuf, ImageInfo),
    wagi: (PathBuf, ImageInfo),
    /// The file-system probe, for the cost of resolving paths.
    files: (PathBuf, ImageInfo),
}

fn read_images(dir: &Path) -> Result<Images> {
    let read = |example: &str| -> Result<(PathBuf, ImageInfo)> {
        let tar = measures::image_tar(dir, example);
        if !tar.exists() {
            anyhow::bail!(
                "{} is missing: run examples/build.sh and examples/images.sh \
                 (hello-native needs gcc, busybox needs busybox-static)",
                tar.display()
            );
        }
        let info = image::read_tar(&tar)?;
        Ok((tar, info))
    };
    Ok(Images {
        hello: read("hello")?,
        hello_p2: read("hello-p2")?,
        net_p2: read("net-p2")?,
        hello_native: read("hello-native")?,
        sleep: read("sleep")?,
        busybox: read("busybox")?,
        hello_http_p2: read("hello-http-p2")?,
        files: read("files")?,
        wagi: read("wagi")?,
    })
}

fn workload(
    label: &str,
    runtime: &str,
    shim: &str,
    example: &str,
    info: &ImageInfo,
    args: Option<Vec<String>>,
) -> Workload {
    Workload {
        label: label.to_string(),
        runtime: runtime.to_string(),
        shim_binary: shim.to_string(),
        image: info
            .name
            .clone()
            .unwrap_or_else(|| harness::image_name(example)),
        chain_id: info.chain_id.clone(),
        process: spec::Process {
            args: args.unwrap_or_else(|| info.default_args()),
            env: info.env.clone(),
            cwd: info.working_dir.clone(),
        },
    }
}

fn strings(args: &[&str]) -> Option<Vec<String>> {
    Some(args.iter().map(|a| a.to_string()).collect())
}

async fn run(cli: Cli) -> Result<bool> {
    let cfg = cli.config();
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let images_dir = cli
        .images
        .clone()
        .unwrap_or_else(|| harness::examples_dir().join("images"));
    let images = read_images(&images_dir)?;

    let (private, socket, namespace) = match &cli.address {
        Some(address) => (
            None,
            address.clone(),
            cli.namespace
                .clone()
                .unwrap_or_else(|| "wasm-bench".to_string()),
        ),
        None => {
            phase("starting a private containerd");
            let cd = tokio::task::spawn_blocking(harness::Containerd::start)
                .await
                .context("the containerd start task panicked")?
                .context("start a private containerd")?;
            let namespace = cli
                .namespace
                .clone()
                .unwrap_or_else(|| cd.namespace.clone());
            let socket = cd.socket.clone();
            (Some(cd), socket, namespace)
        }
    };
    let outcome = bench(
        &cli,
        cfg,
        &images,
        &socket,
        &namespace,
        private.is_some(),
        unix_time,
    )
    .await;
    // The shim's own timings, from the run's containerd (the pod measures
    // run on containerds of their own).
    if let Some(cd) = private.as_ref().filter(|_| !cli.cri) {
        report_start_to_entry(&cd.log(), &cli.out);
        report_instantiation(&cd.log(), &cli.out);
    }
    if let Some(cd) = private {
        if outcome.is_err() {
            let log = cd.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("containerd's log ends:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        // Stopping it runs ctr and waits: keep that off the runtime's threads.
        tokio::task::spawn_blocking(move || drop(cd))
            .await
            .context("the containerd stop task panicked")?;
        remove_empty_cgroups(&namespace);
    }
    outcome
}

/// The shim logs, for every Start, the time from the request's arrival to the
/// guest's entry (`start_us=`, from its tracing span). Summarises them from
/// the private containerd's log, which carries the shim's log lines, and
/// writes `start-to-entry.json` beside the other results.
fn report_start_to_entry(log: &str, out: &Path) {
    // Component containers carry the `p2` workload's tag (`<run>-p-…`).
    let is_component = |l: &str| {
        l.split("id=")
            .nth(1)
            .and_then(|id| id.split_whitespace().next())
            .is_some_and(|id| id.contains("-p-"))
    };
    let samples = |component: bool| -> Vec<f64> {
        log.lines()
            .filter(|l| is_component(l) == component)
            .filter_map(|l| {
                l.split("start_us=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .collect()
    };
    let mut json = serde_json::Map::new();
    for (key, what, samples) in [
        ("module", "module _start", samples(false)),
        ("component", "component wasi:cli/run", samples(true)),
    ] {
        let Some(s) = stats::summarize(&samples) else {
            warn(&format!(
                "no start_us lines for the {key} in containerd's log: its Start to entry time is unknown"
            ));
            continue;
        };
        println!(
            "shim: Start request -> {what} (warm cache), n={}: min {:.0} us, p50 {:.0} us, p95 {:.0} us, max {:.0} us",
            samples.len(),
            s.min,
            s.p50,
            s.p95,
            s.max
        );
        json.insert(
            key.to_string(),
            serde_json::json!({"unit": "us", "samples": samples, "min": s.min, "p50": s.p50, "p95": s.p95, "max": s.max}),
        );
    }
    if let Err(err) = std::fs::write(
        out.join("start-to-entry.json"),
        serde_json::Value::Object(json).to_string(),
    ) {
        warn(&format!("cannot write start-to-entry.json: {err}"));
    }
}

/// Each HTTP service the shim stopped logged its requests' instantiation
/// time (a new Store, its WASI context, and the instance from its
/// pre-linked component or module): prints those lines' p50 and p99 and
/// writes `instantiation.json`.
fn report_instantiation(log: &str, out: &Path) {
    let field = |line: &str, key: &str| -> Option<u64> {
        line.split(&format!("{key}="))
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut services = Vec::new();
    for line in log.lines().filter(|l| l.contains("HTTP service stopped")) {
        let (Some(requests), Some(p50), Some(p99)) = (
            field(line, "requests"),
            field(line, "instantiate_p50_us"),
            field(line, "instantiate_p99_us"),
        ) else {
            continue;
        };
        if requests > 0 {
            println!(
                "shim: per-request instantiation of an HTTP service, {requests} requests: p50 {p50} us, p99 {p99} us"
            );
            services.push(serde_json::json!({"requests": requests, "p50_us": p50, "p99_us": p99}));
        }
    }
    if services.is_empty() {
        warn("no \"HTTP service stopped\" lines in containerd's log: instantiation time unknown");
    }
    if let Err(err) = std::fs::write(
        out.join("instantiation.json"),
        serde_json::Value::Array(services).to_string(),
    ) {
        warn(&format!("cannot write instantiation.json: {err}"));
    }
}

/// runc leaves the empty `/<namespace>` cgroup parent behind (at the root of
/// a cgroup v2 tree, or in each v1 hierarchy): remove it, if empty.
fn remove_empty_cgroups(namespace: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        // remove_dir only succeeds on an empty cgroup.
        let _ = std::fs::remove_dir(h.path().join(namespace));
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(namespace));
}

async fn bench(
    cli: &Cli,
    cfg: RunConfig,
    images: &Images,
    socket: &Path,
    namespace: &str,
    private: bool,
    unix_time: u64,
) -> Result<bool> {
    let api = Api::connect(socket, namespace, &cli.snapshotter).await?;
    let (version, revision) = api.version().await?;
    eprintln!(
        "containerd {version} at {} · namespace {namespace} · {cfg:?}",
        socket.display()
    );
    let ctr_bin = harness::ctr_path();
    let ctr = Ctr::new(&ctr_bin, socket, namespace);

    phase("importing images");
    for (tar, _) in [
        &images.hello,
        &images.hello_p2,
        &images.net_p2,
        &images.hello_native,
        &images.sleep,
        &images.busybox,
        &images.hello_http_p2,
        &images.wagi,
        &images.files,
    ] {
        ctr.import(tar).await?;
    }
    let name = |(_, info): &(PathBuf, ImageInfo), example: &str| {
        info.name
            .clone()
            .unwrap_or_else(|| harness::image_name(example))
    };
    let files_image = name(&images.files, "files");
    let http_setup = http::HttpSetup::locate(
        &cli.images
            .clone()
            .unwrap_or_else(|| harness::examples_dir().join("images")),
        name(&images.hello_http_p2, "hello-http-p2"),
        name(&images.wagi, "wagi"),
        name(&images.busybox, "busybox"),
    )?;
    let hello = Pair([
        workload(
            "wasm",
            WASM_RUNTIME,
            WASM_SHIM,
            "hello",
            &images.hello.1,
            None,
        ),
        workload(
            "runc",
            RUNC_RUNTIME,
            RUNC_SHIM,
            "hello-native",
            &images.hello_native.1,
            None,
        ),
    ]);
    let idle = Pair([
        workload(
            "wasm",
            WASM_RUNTIME,
            WASM_SHIM,
            "sleep",
            &images.sleep.1,
            strings(&["/sleep.wasm", "3600"]),
        ),
        workload(
            "runc",
            RUNC_RUNTIME,
            RUNC_SHIM,
            "busybox",
            &images.busybox.1,
            strings(&["/busybox", "sleep", "3600"]),
        ),
    ]);
    // The hello component against the hello module, both through the shim.
    let component = Pair([
        workload(
            "p2",
            WASM_RUNTIME,
            WASM_SHIM,
            "hello-p2",
            &images.hello_p2.1,
            None,
        ),
        hello.side(0).clone(),
    ]);
    // A component with sockets, which runs in a network namespace of its own
    // (made by the shim, with a runtime of its threads), against the hello
    // component, which gets none. It only looks up an address literal and
    // prints it, so the difference is the cost of its network.
    let sockets = Pair([
        workload(
            "p2+net",
            WASM_RUNTIME,
            WASM_SHIM,
            "net-p2",
            &images.net_p2.1,
            strings(&["/net.wasm", "lookup", "127.0.0.1"]),
        ),
        component.side(0).clone(),
    ]);
    // Unique per run, so runs never collide and leftovers are recognized.
    let run = format!("wb{}-{:x}", std::process::id(), unix_time % 0x10000);
    let b = Arc::new(Bench::new(
        api.clone(),
        ctr,
        cfg.clone(),
        run.clone(),
        hello,
        idle,
        component,
        sockets,
        [images.hello.0.clone(), images.hello_p2.0.clone()],
        ctr_bin,
        cli.snapshotter.clone(),
    ));

    let pod_images = pods::PodImages {
        hello: [
            name(&images.hello, "hello"),
            name(&images.hello_native, "hello-native"),
        ],
        sleep: [
            name(&images.sleep, "sleep"),
            name(&images.busybox, "busybox"),
        ],
        busybox: name(&images.busybox, "busybox"),
        tars: vec![
            images.hello.0.clone(),
            images.hello_native.0.clone(),
            images.sleep.0.clone(),
            images.busybox.0.clone(),
        ],
    };
    let mut collected = Vec::new();
    let mut errors = Vec::new();
    let measuring = async {
        if cli.cri {
            run_pod_measures(&b, &pod_images, &mut collected, &mut errors).await
        } else {
            run_measures(&b, &http_setup, &files_image, &mut collected, &mut errors).await
        }
    };
    let interrupted = tokio::select! {
        () = measuring => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        warn("interrupted: removing what this run created, then reporting what was measured");
        errors.push(MeasureError {
            measure: "run".into(),
            error: "interrupted".into(),
        });
    }
    match measures::sweep(&api, &run).await {
        Ok(0) => {}
        Ok(n) => warn(&format!("removed {n} leftover containers")),
        Err(err) => {
            warn(&format!("cleanup failed: {err:#}"));
            errors.push(MeasureError {
                measure: "cleanup".into(),
                error: format!("{err:#}"),
            });
        }
    }

    let results = Results {
        tool: "wasm-bench".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        timestamp: report::rfc3339_utc(unix_time),
        unix_time,
        containerd: ContainerdInfo {
            version,
            revision,
            address: socket.display().to_string(),
            namespace: namespace.to_string(),
            private,
        },
        host: HostInfo {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        config: cfg,
        measures: collected,
        errors,
    };
    print!("{}", report::table(&results));
    let (json, svg) = report::write(&results, &cli.out)?;
    eprintln!("wrote {} and {}", json.display(), svg.display());
    Ok(results.errors.is_empty())
}

/// `--cri`: the pod measures alone.
async fn run_pod_measures(
    b: &Arc<Bench>,
    images: &pods::PodImages,
    collected: &mut Vec<Measure>,
    errors: &mut Vec<MeasureError>,
) {
    record(collected, errors, "pods", pods::pods(b, images).await);
}

/// Keeps a measure's results, or its error (also shown at once).
fn record(
    collected: &mut Vec<Measure>,
    errors: &mut Vec<MeasureError>,
    name: &str,
    result: Result<Vec<Measure>>,
) {
    match result {
        Ok(m) => collected.extend(m),
        Err(err) => {
            warn(&format!("{name} failed: {err:#}"));
            errors.push(MeasureError {
                measure: name.to_string(),
                error: format!("{err:#}"),
            });
        }
    }
}

/// Runs the measures in order, recording each one's result or error.
async fn run_measures(
    b: &Arc<Bench>,
    http_setup: &http::HttpSetup,
    files_image: &str,
    collected: &mut Vec<Measure>,
    errors: &mut Vec<MeasureError>,
) {
    let mut record =
        |name: &str, result: Result<Vec<Measure>>| record(collected, errors, name, result);

    phase("warm-up: one unmeasured run of each hello and of the sockets component");
    if let Err(err) = measures::warm_up(b).await {
        // Nothing would work: report that instead of every measure failing alike.
        record("warm-up", Err(err));
        return;
    }
    phase(&format!(
        "1/9 cold start through the API, {} runs each",
        b.cfg.iterations
    ));
    record("cold start, API", measures::cold_api(b).await);
    phase(&format!(
        "2/9 cold start through ctr run --rm, {} runs each",
        b.cfg.iterations
    ));
    record("cold start, ctr run", measures::cold_ctr(b).await);
    phase(&format!(
        "3/9 throughput, {} tasks in a row and {} at a time",
        b.cfg.throughput_tasks, b.cfg.concurrency
    ));
    record("throughput", measures::throughput(b).await);
    phase(&format!("4/9 idle memory, K = {:?}", b.cfg.idle));
    record("idle memory", measures::idle_memory(b).await);
    if b.cfg.first_runs > 0 {
        phase(&format!(
            "5/9 wasm first start in {} fresh containerds, {} cached starts after each",
            b.cfg.first_runs, b.cfg.cached_runs
        ));
        record("first vs cached start", measures::first_vs_cached(b).await);
    } else {
        phase("5/9 first start: skipped (--first-runs 0)");
    }
    phase(&format!(
        "6/9 the hello component against the hello module, {} runs each, and its first start",
        b.cfg.iterations
    ));
    record(
        "component vs module",
        measures::component_vs_module(b).await,
    );
    phase(&format!(
        "7/9 a component with sockets (its own network namespace) against the hello component, {} runs each",
        b.cfg.iterations
    ));
    record("sockets", measures::sockets(b).await);
    phase("8/9 HTTP functions: the shim against wasmtime serve, WAGI against httpd CGI, cold start to the first 200");
    record("http", http::http(b, http_setup).await);
    phase(&format!(
        "9/9 a file operation in the guest through an absolute link against by its own path, {} runs",
        b.cfg.iterations
    ));
    record("file operations", measures::file_ops(b, files_image).await);
}
