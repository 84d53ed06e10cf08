//! `ctr`, the way a user drives containerd: importing the images, and the
//! `ctr run --rm` measure, timed from spawning `ctr` to its exit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::Command;

/// `ctr -a ADDRESS -n NAMESPACE …`
#[derive(Debug, Clone)]
pub struct Ctr {
    bin: PathBuf,
    address: PathBuf,
    namespace: String,
}

impl Ctr {
    pub fn new(bin: &Path, address: &Path, namespace: &str) -> Self {
        Self {
            bin: bin.to_path_buf(),
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
        }
    }

    /// Runs `ctr ARGS…` to its end, within `limit`; fails unless it exits 0.
    /// Returns how long it took and what it printed on stdout.
    pub async fn run(&self, args: &[&str], limit: Duration) -> Result<(Duration, String)> {
        let shown = format!("ctr {}", args.join(" "));
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timeout drops the future, and with it the child.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} ({shown})", self.bin.display()))?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("{shown} did not finish within {limit:?}"))?
            .with_context(|| format!("wait for {shown}"))?;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "{shown} failed ({})\nstdout: {}\nstderr: {}",
                output.status,
                stdout.trim_end(),
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok((elapsed, stdout))
    }

    /// `ctr images import --all-platforms TAR`, which also unpacks it into
    /// the default snapshotter.
    pub async fn import(&self, tar: &Path) -> Result<()> {
        let tar = tar.to_string_lossy();
        self.run(
            &["images", "import", "--all-platforms", &tar],
            Duration::from_secs(120),
        )
        .await
        .with_context(|| format!("import {tar}"))?;
        Ok(())
    }

    /// Unpacks `image` into `snapshotter` without running it:
    /// `ctr images mount` unpacks before it mounts a view at `scratch`, and
    /// `ctr images unmount --rm` takes the view away again. (Not every
    /// `ctr images import` unpacks: containerd 2's transfer-based import
    /// skips images of another platform, such as wasm ones.)
    pub async fn unpack(&self, image: &str, snapshotter: &str, scratch: &Path) -> Result<()> {
        std::fs::create_dir_all(scratch)
            .with_context(|| format!("create {}", scratch.display()))?;
        let target = scratch.to_string_lossy();
        let limit = Duration::from_secs(120);
        let mounted = self
            .run(
                &[
                    "images",
                    "mount",
                    "--snapshotter",
                    snapshotter,
                    image,
                    &target,
                ],
                limit,
            )
            .await;
        let unmounted = self
            .run(
                &[
                    "images",
                    "unmount",
                    "--snapshotter",
                    snapshotter,
                    "--rm",
                    &target,
                ],
                limit,
            )
            .await;
        let _ = std::fs::remove_dir(scratch);
        mounted.with_context(|| format!("unpack {image}"))?;
        unmounted.with_context(|| format!("unmount {target} after unpacking {image}"))?;
        Ok(())
    }

    /// `ctr run --rm --runtime RUNTIME IMAGE ID ARGS…`, timed.
    pub async fn run_rm(
        &self,
        runtime: &str,
        image: &str,
        id: &str,
        args: &[String],
    ) -> Result<Duration> {
        let mut all = vec!["run", "--rm", "--runtime", runtime, image, id];
        all.extend(args.iter().map(String::as_str));
        let (elapsed, _) = self.run(&all, Duration::from_secs(120)).await?;
        Ok(elapsed)
    }
}
