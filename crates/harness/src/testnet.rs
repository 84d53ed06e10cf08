//! A network of the test's own for servers that must not be on loopback
//! (a registry reached over HTTPS, a token service on plain HTTP elsewhere),
//! and a certificate authority for them. Nothing leaves the machine: the
//! namespace has only its `lo`, with [`TestNetns::ADDR`] on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), removed on drop. Processes
/// started in it with [`TestNetns::command`] must be gone by then.
pub struct TestNetns {
    pub name: String,
}

/// Runs `program args` in `dir`, failing with its stderr.
fn tool(program: &str, package: &str, args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program} (Debian package {package})"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    tool("ip", "iproute2", args, Path::new("/"))
}

impl TestNetns {
    /// The namespace's one address (on its `lo`), not a loopback address.
    pub const ADDR: &'static str = "10.99.0.1";

    pub fn new() -> Result<Self> {
        remove_stale();
        let name = format!(
            "wttest{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let this = Self { name };
        ip(&["-n", &this.name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &this.name,
            "addr",
            "add",
            &format!("{}/32", Self::ADDR),
            "dev",
            "lo",
        ])?;
        Ok(this)
    }

    /// The namespace file, for `setns` (see `harness::in_netns`).
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `program`, to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

/// Removes the namespaces of test processes that died before their drop
/// (killed by a timeout, say): `wttest<pid>x<n>` whose pid is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("wttest")
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A certificate authority and one server certificate it signed, for
/// [`TestNetns::ADDR`], made with the `openssl` CLI in `dir`.
pub struct TestCa {
    /// The CA's certificate: what a client trusts (`SSL_CERT_FILE`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> Result<Self> {
        let file = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| tool("openssl", "openssl", args, dir);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=wasmtime-shim test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={}", TestNetns::ADDR),
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(
            file("server.ext"),
            format!(
                "subjectAltName=IP:{}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                TestNetns::ADDR
            ),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])?;
        Ok(Self {
            ca: file("ca.pem"),
            cert: file("server.pem"),
            key: file("server.key"),
        })
    }
}
