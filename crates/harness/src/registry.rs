//! A private OCI registry on the loopback interface, and the CLIs that talk
//! to registries: `oci-artifact` and `skopeo`.
//!
//! The registry is Debian's `docker-registry` (the CNCF distribution registry
//! 2.8), serving plain HTTP on `127.0.0.1:PORT` from a folder of its own.
//! Which binary: `DOCKER_REGISTRY` (default `docker-registry` on the PATH).
//!
//! It runs open, with Basic auth from an htpasswd file (made by Debian's
//! `htpasswd`, apache2-utils), or in token mode with the small token service
//! in `token_service.py` (Python with Debian's python3-jwt), all on loopback:
//! see [`Auth`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::testnet::{TestCa, TestNetns};
use crate::{cmd, workspace, Output};

/// A private registry. Dropping it kills the server (and its token service)
/// and removes its folder (kept when `KEEP_REGISTRY` is set, to look at after
/// a failure).
pub struct Registry {
    /// `127.0.0.1:PORT`: the host part of the image references it serves.
    pub addr: String,
    /// Holds the config, the log and the storage.
    pub dir: PathBuf,
    child: Child,
    token_service: Option<Child>,
}

/// How a [`Registry`] authenticates clients.
pub enum Auth {
    /// Anyone may pull and push.
    Open,
    /// Basic auth: one user from an htpasswd file.
    Htpasswd { user: String, password: String },
    /// `auth: token`: the registry sends clients to the token service for a
    /// JWT. `policy` is `token_service.py`'s POLICY.json (users, anonymous
    /// pull prefixes, read-only prefixes); issuer and service are added.
    Token { policy: serde_json::Value },
}

/// Where a [`Registry`] listens.
pub enum Place<'a> {
    /// `127.0.0.1:PORT`, plain HTTP.
    Loopback,
    /// `10.99.0.1:5000` in a network namespace of the test's own (not
    /// loopback, so clients treat it as remote), over HTTPS when `tls` is
    /// given. The token service listens on that address too. Clients must
    /// run in the namespace (`TestNetns::command`); `Registry::get_status`
    /// does not reach it.
    Netns {
        netns: &'a TestNetns,
        tls: Option<&'a TestCa>,
    },
}

impl Place<'_> {
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Place::Loopback => Command::new(program),
            Place::Netns { netns, .. } => netns.command(program),
        }
    }

    fn host(&self) -> &'static str {
        match self {
            Place::Loopback => "127.0.0.1",
            Place::Netns { .. } => TestNetns::ADDR,
        }
    }

    /// Is the registry at `addr` up?
    fn answers(&self, addr: &str) -> bool {
        match self {
            // 401: up, and it wants credentials.
            Place::Loopback => matches!(get_status(addr, "/v2/"), Ok(200 | 401)),
            // It accepts connections (it may speak TLS).
            Place::Netns { netns, .. } => {
                let addr = addr.to_string();
                crate::in_netns(&netns.path(), move || {
                    addr.parse()
                        .ok()
                        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
                        .is_some()
                })
                .unwrap_or(false)
            }
        }
    }
}

/// Makes `cmd`'s process die with the test process, so that a test killed
/// midway (a timeout, SIGKILL) leaves no server behind. It survives the
/// exec of `ip netns exec` into the server.
fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The token service's issuer and the registry's service name.
const TOKEN_ISSUER: &str = "wasmtime-shim-test-token-service";
const TOKEN_SERVICE: &str = "wasmtime-shim-test-registry";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn registry_binary() -> PathBuf {
    std::env::var_os("DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-registry"))
}

impl Registry {
    /// Starts an open registry: see [`Registry::start_with`].
    pub fn start() -> Result<Self> {
        Self::start_with(Auth::Open)
    }

    /// Starts a registry on a free loopback port and waits until `GET /v2/`
    /// answers. A port taken between picking it and the server binding it
    /// is retried with another.
    pub fn start_with(auth: Auth) -> Result<Self> {
        Self::start_at(auth, Place::Loopback)
    }

    /// Starts a registry at `place` with `auth`.
    pub fn start_at(auth: Auth, place: Place) -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/wtreg{}x{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))
            .with_context(|| format!("create {}", dir.display()))?;
        let (auth_config, mut token_service) = match prepare_auth(&dir, auth, &place) {
            Ok(prepared) => prepared,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        let mut last_err = None;
        for _ in 0..5 {
            match Self::start_in(&dir, &auth_config, &place) {
                Ok(Some(mut reg)) => {
                    reg.token_service = token_service.take();
                    return Ok(reg);
                }
                // The port was taken meanwhile: try another.
                Ok(None) => continue,
                Err(err) => {
                    last_err = Some(err);
                    break;
                }
            }
        }
        if let Some(mut child) = token_service {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no free port for the registry after 5 tries")))
    }

    /// One attempt; `Ok(None)` when the server lost the race for its port.
    fn start_in(dir: &std::path::Path, auth_config: &str, place: &Place) -> Result<Option<Self>> {
        let addr = match place {
            // Port 0 makes the kernel pick a free port; the listener is
            // closed again right away so the registry can bind it.
            Place::Loopback => format!(
                "127.0.0.1:{}",
                TcpListener::bind("127.0.0.1:0")
                    .context("bind 127.0.0.1:0")?
                    .local_addr()?
                    .port()
            ),
            // A namespace of the test's own: every port is free.
            Place::Netns { .. } => format!("{}:5000", TestNetns::ADDR),
        };
        let tls = match place {
            Place::Netns { tls: Some(ca), .. } => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.cert.display(),
                ca.key.display()
            ),
            _ => String::new(),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: wasmtime-shim-tests\n{tls}{auth_config}",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let bin = registry_binary();
        let mut child = dies_with_parent(&mut place.command(&bin))
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
                // On loopback, another process took the port: try another.
                if log.contains("address already in use") && matches!(place, Place::Loopback) {
                    return Ok(None);
                }
                bail!("docker-registry exited ({status}) before answering; its log:\n{log}");
            }
            if place.answers(&addr) {
                return Ok(Some(Self {
                    addr,
                    dir: dir.to_path_buf(),
                    child,
                    token_service: None,
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

    /// The token service's requests so far, one JSON object each: `scope`,
    /// `auth` and `user` (when credentials came), `granted`, `status`.
    pub fn token_requests(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.dir.join("token-requests.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
        };
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display())))
            .collect()
    }
}

/// The registry's `auth:` config for `auth`, and the token service when it
/// needs one (started here, before the registry, which reads its
/// certificate at start).
fn prepare_auth(
    dir: &std::path::Path,
    auth: Auth,
    place: &Place,
) -> Result<(String, Option<Child>)> {
    match auth {
        Auth::Open => Ok((String::new(), None)),
        Auth::Htpasswd { user, password } => {
            let out = Command::new("htpasswd")
                .args(["-Bbn", &user, &password])
                .stdin(Stdio::null())
                .output()
                .context("run htpasswd (Debian package apache2-utils; scripts/install-deps.sh installs it)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let path = dir.join("htpasswd");
            std::fs::write(&path, &out.stdout)?;
            Ok((
                format!(
                    "auth:\n  htpasswd:\n    realm: wasmtime-shim-tests\n    path: {}\n",
                    path.display()
                ),
                None,
            ))
        }
        Auth::Token { mut policy } => {
            policy["issuer"] = TOKEN_ISSUER.into();
            policy["service"] = TOKEN_SERVICE.into();
            let policy_path = dir.join("token-policy.json");
            std::fs::write(&policy_path, serde_json::to_vec(&policy)?)?;
            let script = dir.join("token_service.py");
            std::fs::write(&script, include_str!("token_service.py"))?;
            let log = std::fs::File::create(dir.join("token-service.log"))?;
            // Debian's python, which the python3-jwt and python3-cryptography
            // packages serve (a python3 earlier on the PATH may not have them).
            let mut child = dies_with_parent(&mut place.command("/usr/bin/python3"))
                .arg(&script)
                .arg(dir)
                .arg(&policy_path)
                .arg(place.host())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .context("start the token service with /usr/bin/python3")?;
            // Its first line is the port, once the certificate is written.
            let stdout = child.stdout.take().context("the token service's stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut port = String::new();
                let _ =
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut port);
                let _ = tx.send(port);
            });
            let port = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
            if port.trim().parse::<u16>().is_err() {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the token service did not start (/usr/bin/python3 with python3-jwt and \
                     python3-cryptography; scripts/install-deps.sh installs them); its log:\n{}",
                    std::fs::read_to_string(dir.join("token-service.log")).unwrap_or_default()
                );
            }
            Ok((
                format!(
                    "auth:\n  token:\n    realm: http://{}:{}/token\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    place.host(),
                    port.trim(),
                    dir.join("token-cert.pem").display()
                ),
                Some(child),
            ))
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(child) = &mut self.token_service {
            let _ = child.kill();
            let _ = child.wait();
        }
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
    oci_artifact_with(args, &[], None, None)
}

/// [`oci_artifact`] with extra environment variables (e.g. `DOCKER_CONFIG`,
/// `PATH` for a credential helper), `stdin` as its input when given (e.g.
/// for `--password-stdin`), and inside `netns` when given.
pub fn oci_artifact_with(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    netns: Option<&TestNetns>,
) -> Result<Output> {
    let cli = oci_artifact_path();
    if !cli.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p oci-artifact-cli`",
            cli.display()
        );
    }
    let mut c = match netns {
        Some(netns) => netns.command(&cli),
        None => Command::new(&cli),
    };
    c.args(args).envs(env.iter().copied());
    let input = match stdin {
        Some(text) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("wtstdin{}x{n}", std::process::id()));
            // It may hold a password: for the owner's eyes only.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?
                .write_all(text.as_bytes())?;
            let file = std::fs::File::open(&path)?;
            // The open file stays readable after its name is gone.
            std::fs::remove_file(&path)?;
            Stdio::from(file)
        }
        None => Stdio::null(),
    };
    c.stdin(input);
    cmd::run(c, Duration::from_secs(120))
}

/// Runs `skopeo` with a 120 s limit (Debian package skopeo).
pub fn skopeo(args: &[&str]) -> Result<Output> {
    let mut c = Command::new("skopeo");
    c.args(args).stdin(Stdio::null());
    cmd::run(c, Duration::from_secs(120))
        .context("run skopeo (Debian package skopeo; scripts/install-deps.sh installs it)")
}
