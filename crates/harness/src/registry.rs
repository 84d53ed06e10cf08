//! A private OCI registry on the loopback interface, and the CLIs that talk
//! to registries: `oci-artifact` and `skopeo`.
//!
//! The registry is Debian's `docker-registry` (the CNCF distribution registry
//! 2.8), serving plain HTTP on `127.0.0.1:PORT` from a folder of its own.
//! Which binary: `DOCKER_REGISTRY` (default `docker-registry` on the PATH).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cmd, workspace, Output};

/// A private registry. Dropping it kills the server and removes its folder
/// (kept when `KEEP_REGISTRY` is set, to look at after a failure).
pub struct Registry {
    /// `127.0.0.1:PORT`: the host part of the image references it serves.
    pub addr: String,
    /// Holds the config, the log and the storage.
    pub dir: PathBuf,
    child: Child,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn registry_binary() -> PathBuf {
    std::env::var_os("DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-registry"))
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `GET /v2/`
    /// answers. A port taken between picking it and the server binding it
    /// is retried with another.
    pub fn start() -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/wtreg{}x{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))
            .with_context(|| format!("create {}", dir.display()))?;
        let mut last_err = None;
        for _ in 0..5 {
            match Self::start_in(&dir) {
                Ok(Some(reg)) => return Ok(reg),
                // The port was taken meanwhile: try another.
                Ok(None) => continue,
                Err(err) => {
                    last_err = Some(err);
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no free port for the registry after 5 tries")))
    }

    /// One attempt; `Ok(None)` when the server lost the race for its port.
    fn start_in(dir: &std::path::Path) -> Result<Option<Self>> {
        // Port 0 makes the kernel pick a free port; the listener is closed
        // again right away so the registry can bind it.
        let port = TcpListener::bind("127.0.0.1:0")
            .context("bind 127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: wasmtime-shim-tests\n",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let bin = registry_binary();
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (Debian package docker-registry; scripts/install-deps.sh installs it)",
                    bin.display()
                )
            })?;
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = read_log();
                if log.contains("address already in use") {
                    return Ok(None);
                }
                bail!("docker-registry exited ({status}) before answering; its log:\n{log}");
            }
            if let Ok(200) = get_status(&addr, "/v2/") {
                return Ok(Some(Self {
                    addr,
                    dir: dir.to_path_buf(),
                    child,
                }));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "docker-registry did not answer GET /v2/ on {addr} within 20 s; its log:\n{}",
                    read_log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `ADDR/<name>`, e.g. `reference("wasm/hello:1")` is `127.0.0.1:PORT/wasm/hello:1`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// The status code the registry answers a `GET` of `path` with, e.g.
    /// `/v2/wasm/hello/tags/list`.
    pub fn get_status(&self, path: &str) -> Result<u16> {
        get_status(&self.addr, path)
    }

    /// The registry's own log (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KEEP_REGISTRY").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/json";

/// A plain HTTP/1.0 `GET` over a raw socket; returns the status code.
fn get_status(addr: &str, path: &str) -> Result<u16> {
    let sock_addr: std::net::SocketAddr =
        addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock_addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    // The registry answers 404 for an OCI manifest unless the client says it
    // accepts OCI manifests.
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {MANIFEST_TYPES}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    // HTTP/1.0: the server closes the connection after the answer.
    s.take(64 * 1024).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP answer from {addr}: {status_line:?}"),
    }
}

/// The `oci-artifact` CLI under test: `OCI_ARTIFACT`, or
/// `<workspace>/target/release/oci-artifact`.
pub fn oci_artifact_path() -> PathBuf {
    std::env::var_os("OCI_ARTIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/oci-artifact"))
}

/// Runs the `oci-artifact` CLI with a 120 s limit. The exit code is the
/// caller's to check: 0 ok, 1 error, 2 usage, 3 the image is invalid.
pub fn oci_artifact(args: &[&str]) -> Result<Output> {
    let cli = oci_artifact_path();
    if !cli.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p oci-artifact`",
            cli.display()
        );
    }
    let mut c = Command::new(&cli);
    c.args(args).stdin(Stdio::null());
    cmd::run(c, Duration::from_secs(120))
}

/// Runs `skopeo` with a 120 s limit (Debian package skopeo).
pub fn skopeo(args: &[&str]) -> Result<Output> {
    let mut c = Command::new("skopeo");
    c.args(args).stdin(Stdio::null());
    cmd::run(c, Duration::from_secs(120))
        .context("run skopeo (Debian package skopeo; scripts/install-deps.sh installs it)")
}
