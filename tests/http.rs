//! HTTP functions: `wasi:http/proxy` components served by the shim, a fresh
//! instance per request, with `examples/http/hello-http.c` (C, wit-bindgen's
//! bindings, the preview 1 proxy adapter). Requests go to loopback, in the
//! host's namespace (`ctr run --net-host`) or a pod's.
//!
//! - answers, per-request isolation, keep-alive, large bodies both ways,
//!   repeated headers, 1000 requests at concurrency 50 (`hey`);
//! - the guest's output in the task's stdout and stderr, whole lines;
//! - a trap (500, with its backtrace on stderr), a spin (504), a wait past
//!   the request timeout (504), a trap after the head (a cut-off body), the
//!   memory limit, the concurrency cap (503): the service keeps serving;
//! - a CPU quota bounds all of a service's request instances together; a
//!   full instance pool is answered 503;
//! - a malformed request (400), an oversized head (431) or body (413), and
//!   idle connections closed after the header-read timeout;
//! - SIGTERM drains and exits 0, or 143 when the drain runs out; SIGKILL
//!   is 137; the port is free once the task stops;
//! - a busy port, a malformed address, WAGI on a component: Start or Create
//!   fails with a clear error and nothing is left behind;
//! - a pod in its own network namespace serves on its 127.0.0.1:8080, and
//!   its outgoing requests (`wasi:http/outgoing-handler`) leave from there;
//! - a componentize-py component (`examples/http-py/app.py`) sees the
//!   container's env, args and files, but not the shim's variables;
//! - WAGI (`examples/wagi/wagi.c`, a preview 1 module): CGI variables,
//!   headers, body, status, location, repeated headers, httpoxy, output
//!   without headers and a failed exit answered 500.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::cri::{attempt_log_lines, Cri};
use harness::{in_netns, Containerd, CriOptions, RUNTIME};

const ADDR: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";

/// The statuses of `n` GETs of `url` sent at once (0: no answer).
fn at_once(n: usize, url: &str) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| get(&agent(), url).map(|r| r.0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap_or(0))
            .collect()
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// A status and a body (or the error reading the body).
fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Result<String, String>)> {
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| e.to_string());
    Ok((status, body))
}

/// `ctr run --rm --net-host` of the HTTP example, in the background, with
/// its stdout and stderr gathered.
struct Service {
    child: Child,
    id: String,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn start(cd: &Containerd, image: &str, id: &str, port: u16, options: &[&str]) -> Result<Self> {
        Self::start_with_args(cd, image, id, port, options, &[])
    }

    fn start_with_args(
        cd: &Containerd,
        image: &str,
        id: &str,
        port: u16,
        options: &[&str],
        command: &[&str],
    ) -> Result<Self> {
        let env = format!("{ADDR}=127.0.0.1:{port}");
        let mut args = vec![
            "run",
            "--rm",
            "--net-host",
            "--runtime",
            RUNTIME,
            "--env",
            &env,
        ];
        args.extend_from_slice(options);
        args.extend([image, id]);
        args.extend_from_slice(command);
        let mut child = cd
            .ctr_command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ctr run")?;
        let gather = |stream: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let t = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut t = t.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let stdout = gather(Box::new(child.stdout.take().context("stdout")?));
        let stderr = gather(Box::new(child.stderr.take().context("stderr")?));
        // An 18 MB component compiles for seconds on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                let err = stderr.lock().unwrap().clone();
                bail!("ctr run {id} ended ({status}) before the service listened: {err}");
            }
            ensure!(Instant::now() < deadline, "{id} never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            id: id.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` to the task and returns ctr's exit code (the task's).
    fn stop(mut self, cd: &Containerd, signal: &str) -> Result<(i32, String, String)> {
        cd.ctr(&["tasks", "kill", "-s", signal, &self.id])?.ok()?;
        let code = harness::wait_exit(&mut self.child, Duration::from_secs(30))?
            .context("ctr run did not end after the signal")?;
        // Let the gathering threads see the end of both streams.
        std::thread::sleep(Duration::from_millis(100));
        Ok((code, self.stdout(), self.stderr()))
    }

    /// SIGTERM, and a clean drain: exit 0.
    fn stop_cleanly(self, cd: &Containerd) -> Result<()> {
        let (code, _, stderr) = self.stop(cd, "SIGTERM")?;
        assert_eq!(code, 0, "{stderr}");
        Ok(())
    }

    /// A fresh instance still answers `GET /`: the service serves on.
    fn serves_on(&self) -> Result<()> {
        assert_eq!(
            get(&agent(), &format!("{}/", self.url))?,
            (200, Ok("hello from wasm, request 1\n".into()))
        );
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_component_serves_each_request_in_a_fresh_instance() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;
    let port = harness::free_port()?;
    let svc = Service::start(&cd, &image, "web1", port, &[])?;
    let agent = agent();

    // A fresh instance per request: the guest's counter is 1 every time,
    // over one kept-alive connection and over new ones.
    for _ in 0..5 {
        let (status, body) = get(&agent, &format!("{}/", svc.url))?;
        assert_eq!(
            (status, body.as_deref()),
            (200, Ok("hello from wasm, request 1\n"))
        );
    }
    assert_eq!(get(&agent, &format!("{}/nope", svc.url))?.0, 404);

    // Bodies both ways: 3 MiB echoed, 8 MiB streamed in 64 KiB writes.
    let sent: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let mut echoed = agent
        .post(&format!("{}/echo", svc.url))
        .send(&sent[..])
        .context("POST /echo")?;
    assert_eq!(echoed.status().as_u16(), 200);
    let back = echoed
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    assert!(
        back == sent,
        "echoed {} bytes of {}",
        back.len(),
        sent.len()
    );
    let (status, big) = get(&agent, &format!("{}/big?n={}", svc.url, 8 << 20))?;
    assert_eq!((status, big.map(|b| b.len())), (200, Ok(8 << 20)));

    // Repeated headers stay repeated.
    let response = agent.get(&format!("{}/header", svc.url)).call()?;
    let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // The guest's output, whole lines, in the task's stdout and stderr,
    // though it wrote each line in two pieces.
    assert_eq!(get(&agent, &format!("{}/log", svc.url))?.0, 200);
    harness::wait_until(Duration::from_secs(10), "the guest's log lines", || {
        svc.stdout().contains("log: stdout line\n") && svc.stderr().contains("log: stderr line\n")
    })?;

    // 1000 requests at concurrency 50, all answered 200.
    let hey = harness::cmd::run(
        {
            let mut c = Command::new("hey");
            c.args([
                "-n",
                "1000",
                "-c",
                "50",
                "-t",
                "30",
                &format!("{}/", svc.url),
            ]);
            c
        },
        Duration::from_secs(120),
    )?;
    ensure!(hey.success(), "hey failed: {}", hey.stderr);
    assert!(
        hey.stdout.contains("[200]\t1000 responses"),
        "hey: {}",
        hey.stdout
    );

    // SIGTERM: a clean drain, exit 0, and the port is free at once.
    svc.stop_cleanly(&cd)?;
    TcpListener::bind(("127.0.0.1", port)).context("the port is still taken")?;
    cd.assert_clean()
}

#[test]
fn failures_are_answered_and_the_service_keeps_serving() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;
    let port = harness::free_port()?;
    let svc = Service::start(
        &cd,
        &image,
        "web2",
        port,
        &[
            "--memory-limit",
            &(32u64 << 20).to_string(),
            "--env",
            "WASMTIME_HTTP_EXECUTION_TIMEOUT=500ms",
            "--env",
            "WASMTIME_HTTP_REQUEST_TIMEOUT=2s",
            "--env",
            "WASMTIME_HTTP_MAX_CONCURRENCY=3",
        ],
    )?;
    let agent = agent();
    let ok = |agent: &ureq::Agent| -> Result<()> {
        let (status, body) = get(agent, &format!("{}/", svc.url))?;
        ensure!(
            status == 200 && body.is_ok(),
            "after a failure: {status} {body:?}"
        );
        Ok(())
    };

    // A trap before the response: 500, the trap and its backtrace on stderr.
    assert_eq!(get(&agent, &format!("{}/trap", svc.url))?.0, 500);
    ok(&agent)?;
    harness::wait_until(Duration::from_secs(10), "the trap on stderr", || {
        let e = svc.stderr();
        e.contains("about to trap")
            && e.contains("failed serving GET /trap")
            && e.contains("wasm backtrace")
    })?;

    // A spinning guest is stopped by its execution budget: 504.
    let started = Instant::now();
    assert_eq!(get(&agent, &format!("{}/spin", svc.url))?.0, 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    ok(&agent)?;

    // A guest that waits past the request timeout: 504.
    assert_eq!(get(&agent, &format!("{}/sleep?ms=10000", svc.url))?.0, 504);
    ok(&agent)?;

    // A trap after the head went out: the client sees a cut-off body, not
    // a complete one.
    let (status, body) = get(&agent, &format!("{}/trap-late", svc.url))?;
    assert_eq!(status, 200);
    assert!(body.is_err(), "a complete body after a trap: {body:?}");
    ok(&agent)?;

    // The memory limit: 40 MiB is more than the container's 32 MiB; the
    // guest's allocation fails, and 8 MiB still works afterwards.
    let (status, _) = get(&agent, &format!("{}/alloc?mb=40", svc.url))?;
    assert!(status == 507 || status == 500, "{status}");
    assert_eq!(get(&agent, &format!("{}/alloc?mb=8", svc.url))?.0, 200);

    // The concurrency cap: of 5 requests at once, the ones past 3 get 503.
    let statuses = at_once(5, &format!("{}/sleep?ms=1000", svc.url));
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    ok(&agent)?;

    let (code, _, stderr) = svc.stop(&cd, "SIGKILL")?;
    assert_eq!(code, 137, "{stderr}");
    TcpListener::bind(("127.0.0.1", port)).context("the port is still taken")?;
    cd.assert_clean()
}

#[test]
fn hostile_clients_get_http_errors_and_idle_connections_close() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;
    let port = harness::free_port()?;
    let svc = Service::start(
        &cd,
        &image,
        "web5",
        port,
        &["--env", "WASMTIME_HTTP_HEADER_READ_TIMEOUT=1s"],
    )?;
    // Sends `bytes` on a new connection and reads until the server closes it.
    let raw = |bytes: &[u8]| -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        std::io::Write::write_all(&mut s, bytes)?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let malformed = raw(b"NOT HTTP AT ALL\r\n\r\n")?;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let big_head = raw(big_head.as_bytes())?;
    assert!(big_head.starts_with("HTTP/1.1 431"), "{big_head}");
    let big_body = raw(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 99999999999\r\n\r\n",
    )?;
    assert!(big_body.starts_with("HTTP/1.1 413"), "{big_body}");

    // A connection that sends nothing, or sits idle after a request, is
    // closed after the header-read timeout.
    let started = Instant::now();
    assert_eq!(raw(b"")?, "");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let kept = raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    assert!(kept.starts_with("HTTP/1.1 200"), "{kept}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // None of it stopped the service.
    svc.serves_on()?;
    svc.stop_cleanly(&cd)?;
    cd.assert_clean()
}

#[test]
fn a_cpu_quota_bounds_all_of_a_services_requests_together() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;
    // Each request spins until its 300 ms execution budget runs out.
    let budget = ["--env", "WASMTIME_HTTP_EXECUTION_TIMEOUT=300ms"];
    let (p1, p2) = (harness::free_port()?, harness::free_port()?);
    let mut quota = budget.to_vec();
    quota.extend(["--cpu-quota", "10000", "--cpu-period", "100000"]);
    let limited = Service::start(&cd, &image, "cpu-q", p1, &quota)?;
    let free = Service::start(&cd, &image, "cpu-f", p2, &budget)?;
    // Four requests at a time on each, for longer than the window below.
    let load = |url: String| {
        std::thread::spawn(move || {
            let mut c = Command::new("hey");
            c.args(["-z", "4s", "-c", "4", "-t", "30", &url]);
            harness::cmd::run(c, Duration::from_secs(60))
        })
    };
    let loads = [
        load(format!("{}/spin", limited.url)),
        load(format!("{}/spin", free.url)),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let (q, f) = cd.cpu_in_window("cpu-q", "cpu-f", Duration::from_secs(2))?;
    for l in loads {
        l.join().unwrap()?;
    }
    // Every request instance shares the one 10% quota: the limited service
    // gets a small part of what its unlimited twin gets in the same window.
    eprintln!("CPU in the window: limited {q} ns, free {f} ns");
    assert!(f > 0 && q * 3 < f, "limited {q} ns vs free {f} ns");
    for svc in [limited, free] {
        svc.stop_cleanly(&cd)?;
    }
    cd.assert_clean()
}

#[test]
fn a_full_instance_pool_is_answered_503_and_the_service_serves_on() -> Result<()> {
    let cd = Containerd::start()?;
    // A shim whose pool holds two guests' worth of instances: fewer than
    // five requests of the example component need at once.
    cd.set_shim_env(&[("WASMTIME_SHIM_MAX_INSTANCES", "2")])?;
    let image = cd.import("hello-http-p2")?;
    let port = harness::free_port()?;
    let svc = Service::start(&cd, &image, "pool1", port, &[])?;
    // One request alone fits.
    svc.serves_on()?;
    let statuses = at_once(5, &format!("{}/sleep?ms=1500", svc.url));
    // What fits depends on how many core instances the component is made
    // of, and concurrent instantiations may each take part of the pool:
    // some are 503, and none fails any other way.
    let full = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        full >= 1 && statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    harness::wait_until(Duration::from_secs(10), "the pool's 503s on stderr", || {
        svc.stderr().contains("no instance slot free")
    })?;
    svc.serves_on()?;
    svc.stop_cleanly(&cd)?;
    cd.assert_clean()
}

#[test]
fn sigterm_drains_requests_in_flight() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;

    // A request in flight finishes; new connections are refused.
    let port = harness::free_port()?;
    let svc = Service::start(&cd, &image, "web3", port, &[])?;
    let url = format!("{}/sleep?ms=1500", svc.url);
    let in_flight = std::thread::spawn(move || get(&agent(), &url));
    std::thread::sleep(Duration::from_millis(300));
    cd.ctr(&["tasks", "kill", "-s", "SIGTERM", "web3"])?.ok()?;
    harness::wait_until(Duration::from_secs(5), "the listener to close", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    })?;
    let (status, body) = in_flight.join().unwrap()?;
    assert_eq!((status, body.as_deref()), (200, Ok("slept\n")));
    let (code, _, stderr) = svc.stop_after_signal()?;
    assert_eq!(code, 0, "{stderr}");

    // A drain that runs out of time: 143.
    let port = harness::free_port()?;
    let svc = Service::start(
        &cd,
        &image,
        "web4",
        port,
        &["--env", "WASMTIME_HTTP_DRAIN_TIMEOUT=300ms"],
    )?;
    let url = format!("{}/sleep?ms=20000", svc.url);
    let in_flight = std::thread::spawn(move || get(&agent(), &url));
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, stderr) = svc.stop(&cd, "SIGTERM")?;
    assert_eq!(code, 143, "{stderr}");
    assert!(stderr.contains("cut off"), "{stderr}");
    let cut = in_flight.join().unwrap();
    assert!(!matches!(cut, Ok((200, Ok(_)))), "{cut:?}");
    TcpListener::bind(("127.0.0.1", port)).context("the port is still taken")?;
    cd.assert_clean()
}

impl Service {
    /// Waits for a task that was signalled from outside to end.
    fn stop_after_signal(mut self) -> Result<(i32, String, String)> {
        let code = harness::wait_exit(&mut self.child, Duration::from_secs(30))?
            .context("ctr run did not end")?;
        std::thread::sleep(Duration::from_millis(100));
        Ok((code, self.stdout(), self.stderr()))
    }
}

#[test]
fn bad_addresses_fail_with_clear_errors() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello-http-p2")?;

    // A busy port fails Start, naming the address.
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = busy.local_addr()?;
    let env = format!("{ADDR}={addr}");
    let out = cd.run_rm_with(&["--net-host", "--env", &env], &image, "busy", &[])?;
    assert!(!out.success());
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        out.stderr
    );

    // Malformed settings name their variable.
    for (env, says) in [
        (format!("{ADDR}=localhost:80"), ADDR),
        (
            "WASMTIME_HTTP_REQUEST_TIMEOUT=10".to_string(),
            "WASMTIME_HTTP_REQUEST_TIMEOUT",
        ),
        ("WASMTIME_WAGI=1".to_string(), "WAGI"),
    ] {
        let out = cd.run_rm_with(&["--net-host", "--env", &env], &image, "bad", &[])?;
        assert!(!out.success());
        assert!(out.stderr.contains(says), "{env}: {}", out.stderr);
    }
    cd.assert_clean()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_serves_in_its_own_network_namespace() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start_cri(&CriOptions {
        pod_network: true,
        ..Default::default()
    })?;
    let image = cd.import("hello-http-p2")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri
        .run_pod_with_network("http-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    // The pod's own namespace, as CRI pinned it; no pause holds it.
    let netns = cri.virtual_pod_netns(&pod, &cd.shim_pids()).await?;
    assert!(
        cd.runc_shim_pids().is_empty(),
        "no pause for a pod of wasm containers"
    );
    let id = cri.start_container(&pod, "web", &image, &[]).await?;

    // Served on the pod's loopback, port 8080 (the default), from inside
    // the pod's namespace; not on the host's.
    let answered = wait_in_pod(&netns, "/").await?;
    assert_eq!(
        answered,
        (200, Ok("hello from wasm, request 1\n".to_string()))
    );
    // Outgoing requests leave from the pod's namespace: a server in it
    // answers; the host's loopback server, on another port, is out of reach.
    let inside = in_netns(&netns, || TcpListener::bind("127.0.0.1:0"))??;
    let inside_port = inside.local_addr()?.port();
    upstream(inside, "in the pod");
    let outside = loop {
        let l = TcpListener::bind("127.0.0.1:0")?;
        if l.local_addr()?.port() != inside_port {
            break l;
        }
    };
    let outside_port = outside.local_addr()?.port();
    upstream(outside, "on the host");
    assert_eq!(
        in_pod(&netns, &format!("/fetch?port={inside_port}")).await?,
        (200, Ok("upstream 200: in the pod".to_string()))
    );
    let escaped = in_pod(&netns, &format!("/fetch?port={outside_port}")).await?;
    assert_eq!(escaped.0, 502, "{escaped:?}");
    let log = in_pod(&netns, "/log").await?;
    assert_eq!(log.0, 200);
    harness::wait_until(
        Duration::from_secs(10),
        "the guest's log in the pod's log",
        || {
            attempt_log_lines(&pod, "web", 0)
                .unwrap_or_default()
                .iter()
                .any(|l| l.ends_with("log: stdout line"))
        },
    )?;

    // The kubelet's graceful stop: SIGTERM, a clean drain, exit 0.
    cri.stop_container(&id, 10).await?;
    assert_eq!(cri.status(&id).await?.exit_code, 0);
    cri.remove_container(&id).await?;
    cri.remove_pod(&pod).await?;
    cd.assert_clean()
}

async fn in_pod(netns: &Path, path: &str) -> Result<(u16, Result<String, String>)> {
    let url = format!("http://127.0.0.1:8080{path}");
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || in_netns(&netns, move || get(&agent(), &url))).await??
}

async fn wait_in_pod(netns: &Path, path: &str) -> Result<(u16, Result<String, String>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match in_pod(netns, path).await {
            Ok(answer) => return Ok(answer),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A tiny HTTP server on `listener`: answers every request 200 with `body`
/// and closes the connection.
fn upstream(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = std::io::Write::write_all(
                &mut conn,
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
}

/// A header a test sends twice, as `name: value` lines.
fn get_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call()?;
    Ok((
        response.status().as_u16(),
        response.body_mut().read_to_string()?,
    ))
}

#[test]
fn wagi_serves_a_preview1_module_per_request() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("wagi")?;
    let port = harness::free_port()?;
    let svc = Service::start(
        &cd,
        &image,
        "wagi1",
        port,
        &[
            "--env",
            "WASMTIME_WAGI=1",
            "--env",
            "GREETING=from the container",
            "--env",
            "SERVER_NAME=configured.example",
        ],
    )?;
    let url = |path: &str| format!("{}{path}", svc.url);

    // CGI variables; the container's own win; httpoxy; a fresh instance.
    for _ in 0..2 {
        let (status, body) = get_with_headers(
            &url("/env?x=1&y=%20"),
            &[
                ("x-test", "a"),
                ("x-test", "b"),
                ("proxy", "http://evil.example:1"),
            ],
        )?;
        assert_eq!(status, 200, "{body}");
        let port_line = format!("SERVER_PORT={port}\n");
        for line in [
            "REQUEST_METHOD=GET\n",
            "PATH_INFO=/env\n",
            "QUERY_STRING=x=1&y=%20\n",
            "SCRIPT_NAME=\n",
            "SERVER_NAME=configured.example\n",
            port_line.as_str(),
            "SERVER_PROTOCOL=HTTP/1.1\n",
            "REMOTE_ADDR=127.0.0.1\n",
            "CONTENT_LENGTH=0\n",
            "HTTP_X_TEST=a, b\n",
            "HTTP_PROXY=(unset)\n",
            "GREETING=from the container\n",
            "WASMTIME_WAGI=(unset)\n",
            "requests=1\n",
        ] {
            assert!(body.contains(line), "{line:?} missing from:\n{body}");
        }
    }
    // PATH_INFO is decoded.
    let (_, body) = get_with_headers(&url("/a%20b"), &[])?;
    assert_eq!(body, "hello from wagi\n");

    // The body on stdin, then end-of-file; CRLF headers.
    let sent: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let mut echoed = agent().post(&url("/echo")).send(&sent[..])?;
    assert_eq!(echoed.status().as_u16(), 200);
    assert!(
        echoed
            .body_mut()
            .with_config()
            .limit(8 << 20)
            .read_to_vec()?
            == sent
    );

    // Status, Location (302 without a status), repeated headers.
    assert_eq!(
        get(&agent(), &url("/status"))?,
        (418, Ok("teapot\n".into()))
    );
    let redirect = agent().get(&url("/redirect")).call()?;
    assert_eq!(redirect.status().as_u16(), 302);
    assert_eq!(redirect.headers()["location"], "/elsewhere");
    let cookies = agent().get(&url("/cookies")).call()?;
    let cookies: Vec<_> = cookies.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // The program's own framing headers are dropped: the whole body arrives,
    // and the kept-alive connection still works.
    let framed = agent();
    assert_eq!(
        get(&framed, &url("/framing"))?,
        (200, Ok("longer body\n".into()))
    );
    assert_eq!(
        get(&framed, &url("/"))?,
        (200, Ok("hello from wagi\n".into()))
    );

    // Output without a header block, and a failed exit: 500, said on stderr.
    assert_eq!(get(&agent(), &url("/noheaders"))?.0, 500);
    assert_eq!(get(&agent(), &url("/fail"))?.0, 500);
    assert_eq!(get(&agent(), &url("/log"))?.0, 200);
    harness::wait_until(Duration::from_secs(10), "the WAGI errors on stderr", || {
        let e = svc.stderr();
        e.contains("no header block")
            && e.contains("exited with status 3")
            && e.contains("wagi: stderr line\n")
    })?;
    assert_eq!(
        get(&agent(), &url("/"))?,
        (200, Ok("hello from wagi\n".into()))
    );

    svc.stop_cleanly(&cd)?;
    cd.assert_clean()
}

#[test]
fn a_python_component_sees_the_containers_env_args_and_files() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("note.txt"), "a note from the host\n")?;
    let cd = Containerd::start()?;
    let image = cd.import("hello-py-p2")?;
    let port = harness::free_port()?;
    let mount = harness::bind_mount(tmp.path(), "/data", true);
    let svc = Service::start_with_args(
        &cd,
        &image,
        "py1",
        port,
        &["--env", "GREETING=hi there", "--mount", &mount],
        &["/hello-py.wasm", "one", "two"],
    )?;
    let url = |path: &str| format!("{}{path}", svc.url);
    for _ in 0..2 {
        assert_eq!(
            get(&agent(), &url("/"))?,
            (200, Ok("hello from python, request 1\n".into()))
        );
    }
    assert_eq!(
        get(&agent(), &url("/env?name=GREETING"))?,
        (200, Ok("hi there".into()))
    );
    assert_eq!(get(&agent(), &url(&format!("/env?name={ADDR}")))?.0, 404);
    assert_eq!(
        get(&agent(), &url("/args"))?,
        (200, Ok("/hello-py.wasm one two".into()))
    );
    assert_eq!(
        get(&agent(), &url("/file?path=/data/note.txt"))?,
        (200, Ok("a note from the host\n".into()))
    );
    assert_eq!(get(&agent(), &url("/print"))?.0, 200);
    harness::wait_until(Duration::from_secs(10), "the Python guest's output", || {
        svc.stdout().contains("py: stdout line\n") && svc.stderr().contains("py: stderr line\n")
    })?;
    svc.stop_cleanly(&cd)?;
    cd.assert_clean()
}
