//! The shim process joins its first container's cgroup (`linux.cgroupsPath`),
//! so that the kernel's accounting and limits, `ctr task metrics`' host-side
//! view and the kubelet see the guests' real memory and CPU: a guest's
//! memory and CPU are the shim's.
//!
//! Under `ctr` each container has a shim of its own, so the cgroup is the
//! container's. With one shim per pod, it is the pod's first wasm
//! container's (the sandbox, which the shim plays, runs nothing).
//!
//! The kernel memory limit is the sum of the shim's tasks' limits plus
//! [`SHIM_OVERHEAD`], kept up to date as tasks are created, updated and
//! deleted: Wasmtime already enforces each guest's limit on its linear
//! memory, and the kernel must not kill the shim for a limit a guest was
//! granted, nor for its own runtime's few megabytes. CPU quotas add up the
//! same way, and CPU shares as the kubelet adds up a pod's.
//!
//! Supported: cgroupfs-style absolute paths (`/a/b`), on cgroup v1 (the
//! memory, cpu, cpuacct and pids hierarchies) and v2. A systemd-style `slice:prefix:name` is left
//! alone, with a log line.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

use super::Limits;

/// Room for the shim's own memory above the guest's limit.
pub const SHIM_OVERHEAD: u64 = 64 << 20;

/// The kernel's default `cpu.shares`, for a shim none of whose tasks sets any.
const DEFAULT_CPU_SHARES: u64 = 1024;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup folders this shim joined, one per hierarchy, with the one it
/// came from in each.
#[derive(Debug)]
pub struct Membership {
    dirs: Vec<(PathBuf, PathBuf)>,
}

/// Where this process is now, in hierarchy `h`, from `/proc/self/cgroup`.
fn current(h: &Path) -> PathBuf {
    let name = h
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v2 = h == Path::new(ROOT) || name == "unified";
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = if v2 {
                controllers.is_empty()
            } else {
                controllers.trim_start_matches("name=") == name
            };
            matches.then(|| h.join(path.trim_start_matches('/')))
        })
        .filter(|d| d.exists())
        .unwrap_or_else(|| h.to_path_buf())
}

/// The v1 controllers whose figures and limits concern a wasm guest. The
/// others (cpuset, devices, blkio, freezer, ...) change nothing for it, and
/// joining them costs time on every cold start (cpuset most of all).
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "cpu,cpuacct", "pids"];

/// The cgroup hierarchies to join: the v1 ones above that are mounted at
/// `/sys/fs/cgroup/<name>`, or `/sys/fs/cgroup` itself on v2.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    V1_CONTROLLERS
        .iter()
        .map(|c| root.join(c))
        .filter(|p| !p.is_symlink() && p.join("cgroup.procs").exists())
        .collect()
}

/// The cgroup folders this process is in now, one per hierarchy: before it
/// joins a container's, where it was started.
pub fn own_dirs() -> Vec<PathBuf> {
    hierarchies().iter().map(|h| current(h)).collect()
}

/// Checks a cgroupfs path: absolute, no `..`, nothing odd.
fn relative(cgroups_path: &str) -> Result<PathBuf> {
    let p = Path::new(cgroups_path);
    if !p.is_absolute() {
        bail!("cgroupsPath {cgroups_path:?} is not an absolute cgroupfs path");
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => bail!("cgroupsPath {cgroups_path:?} must not contain '.' or '..'"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("cgroupsPath {cgroups_path:?} names the root cgroup");
    }
    Ok(out)
}

/// Creates `h/rel` level by level. A new v1 cpuset cgroup starts with no
/// CPUs and no memory nodes, and no process may join it: give each level its
/// parent's, as runc does.
fn create(h: &Path, rel: &Path) -> Result<()> {
    let mut dir = h.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if dir.join(file).exists() && own.trim().is_empty() {
                let inherited = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                write(&dir, file, inherited.trim());
            }
        }
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) {
    if let Err(err) = try_write(dir, file, value) {
        tracing::debug!("{err:#}");
    }
}

fn try_write(dir: &Path, file: &str, value: &str) -> Result<()> {
    std::fs::write(dir.join(file), value)
        .with_context(|| format!("write {value} to {}", dir.join(file).display()))
}

/// Writes `limits` into one cgroup folder, whichever version it is: memory
/// (plus the shim's own allowance), CPU quota and shares. A missing limit is
/// written as "none" (and missing shares as the default weight), so that a
/// lifted limit is lifted in the kernel too. Every write is tried; the first
/// failure is returned.
fn apply_limits(dir: &Path, limits: &Limits) -> Result<()> {
    let has = |f: &str| dir.join(f).exists();
    let mut first_err: Option<anyhow::Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    let memory = limits.memory.map(|m| m.saturating_add(SHIM_OVERHEAD));
    if has("memory.limit_in_bytes") {
        // v1 refuses (EBUSY) a limit below what the cgroup uses.
        note(try_write(
            dir,
            "memory.limit_in_bytes",
            &memory.map_or("-1".into(), |m| m.to_string()),
        ));
    } else if has("memory.max") {
        // v2 would accept it and then OOM-kill the shim: check first.
        let current: Option<u64> = std::fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|c| c.trim().parse().ok());
        match (memory, current) {
            (Some(m), Some(c)) if c > m => note(Err(anyhow::anyhow!(
                "the shim's cgroup {} uses {c} bytes, more than the {m} bytes asked for",
                dir.display()
            ))),
            _ => note(try_write(
                dir,
                "memory.max",
                &memory.map_or("max".into(), |m| m.to_string()),
            )),
        }
    }
    let quota = limits
        .cpu
        .map(|c| (c.quota.as_micros(), c.period.as_micros()));
    if has("cpu.cfs_quota_us") {
        // The kernel checks quota against period: lift, set the period, set the quota.
        note(try_write(dir, "cpu.cfs_quota_us", "-1"));
        if let Some((quota, period)) = quota {
            note(try_write(dir, "cpu.cfs_period_us", &period.to_string()));
            note(try_write(dir, "cpu.cfs_quota_us", &quota.to_string()));
        }
    } else if has("cpu.max") {
        let value = match quota {
            Some((quota, period)) => format!("{quota} {period}"),
            None => "max".to_string(),
        };
        note(try_write(dir, "cpu.max", &value));
    }
    let shares = limits
        .cpu_shares
        .unwrap_or(DEFAULT_CPU_SHARES)
        .clamp(2, 262_144);
    if has("cpu.shares") {
        note(try_write(dir, "cpu.shares", &shares.to_string()));
    } else if has("cpu.weight") {
        // The conversion runc and the kubelet use, from [2, 262144] to [1, 10000].
        let weight = 1 + (shares - 2) * 9999 / 262_142;
        note(try_write(dir, "cpu.weight", &weight.to_string()));
    }
    first_err.map_or(Ok(()), Err)
}

impl Membership {
    /// Creates the cgroup in every hierarchy, applies the limits, and moves
    /// this process into it.
    pub fn join(cgroups_path: &str, limits: &Limits) -> Result<Self> {
        if cgroups_path.contains(':') {
            bail!("systemd cgroup paths ({cgroups_path}) are not supported; the shim stays where it is");
        }
        let rel = relative(cgroups_path)?;
        let pid = std::process::id().to_string();
        let mut dirs = Vec::new();
        for h in hierarchies() {
            let dir = h.join(&rel);
            let from = current(&h);
            create(&h, &rel)?;
            if let Err(err) = apply_limits(&dir, limits) {
                tracing::warn!("{err:#}");
            }
            if let Err(err) = std::fs::write(dir.join("cgroup.procs"), &pid) {
                // Leave no half-joined state behind.
                Self { dirs }.leave();
                remove(&dir);
                return Err(err).with_context(|| format!("join {}", dir.display()));
            }
            dirs.push((dir, from));
        }
        Ok(Self { dirs })
    }

    /// Writes new limits for the shim's tasks together.
    pub fn resize(&self, limits: &Limits) -> Result<()> {
        for (dir, _) in &self.dirs {
            apply_limits(dir, limits)?;
        }
        Ok(())
    }

    /// Moves this process back where it came from and removes the cgroups
    /// it joined. Called as the shim exits.
    pub fn leave(&self) {
        let pid = std::process::id().to_string();
        for (dir, from) in &self.dirs {
            write(from, "cgroup.procs", &pid);
            remove(dir);
        }
    }
}

/// The cgroup the shim process sits in: its first container's, joined off
/// Create's path (moving a process between cgroups waits out an RCU grace
/// period in the kernel, 10 ms and more), and sized for all the shim's
/// tasks together as they come, change and go.
#[derive(Default)]
pub struct ShimCgroup {
    /// False for a shim shared by unrelated containers: it joins none.
    enabled: bool,
    tried: AtomicBool,
    state: Arc<Mutex<Joined>>,
    joining: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Joined {
    membership: Option<Membership>,
    /// The limits last asked for, applied once the join is done.
    wanted: Option<Limits>,
    /// The limits the cgroup has now.
    applied: Option<Limits>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ShimCgroup {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Default::default()
        }
    }

    /// Joins the first container's cgroup, once per shim, in the
    /// background. A failure is logged: the task still runs, only outside
    /// the cgroup.
    pub fn join_first(&self, spec: &Spec, limits: Limits) {
        if !self.enabled || self.tried.swap(true, SeqCst) {
            return;
        }
        let Some(path) = cgroups_path(spec) else {
            return;
        };
        let state = self.state.clone();
        let joining = tokio::task::spawn_blocking(move || {
            let m = match Membership::join(&path, &limits) {
                Ok(m) => m,
                Err(err) => return tracing::warn!("not joining a cgroup: {err:#}"),
            };
            tracing::info!(cgroup = %path, "joined the container's cgroup");
            let mut state = lock(&state);
            state.applied = Some(limits);
            if let Some(wanted) = state.wanted.filter(|w| *w != limits) {
                match m.resize(&wanted) {
                    Ok(()) => state.applied = Some(wanted),
                    Err(err) => tracing::warn!("cannot size the shim's cgroup: {err:#}"),
                }
            }
            state.membership = Some(m);
        });
        *lock(&self.joining) = Some(joining);
    }

    /// Sizes the shim's cgroup for `total`, the limits of all its tasks
    /// together (see [`super::limits::total`]). Writes only when the size
    /// changes, on a blocking thread; before the join there is nothing to
    /// write: the join applies the latest total once done.
    pub async fn resize(&self, total: Limits) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        {
            let mut state = lock(&self.state);
            state.wanted = Some(total);
            if state.membership.is_none() || state.applied == Some(total) {
                return Ok(());
            }
        }
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&state);
            let state = &mut *guard;
            if let Some(m) = &state.membership {
                m.resize(&total)?;
                state.applied = Some(total);
            }
            Ok(())
        })
        .await
        .context("cgroup resize panicked")?
    }

    /// Leaves the cgroup (waiting for a join still under way) and removes
    /// it. Called as the shim exits.
    pub async fn leave(&self) {
        let joining = lock(&self.joining).take();
        if let Some(joining) = joining {
            let _ = joining.await;
        }
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(m) = lock(&state).membership.take() {
                m.leave();
            }
        })
        .await;
    }
}

fn remove(dir: &Path) {
    if let Err(err) = std::fs::remove_dir(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove cgroup");
        }
    }
}

/// A spec's `linux.cgroupsPath`, if it has one.
pub fn cgroups_path(spec: &Spec) -> Option<String> {
    let path = spec.linux().as_ref()?.cgroups_path().as_ref()?;
    Some(path.to_string_lossy().into_owned())
}

/// Removes a dead shim's cgroups (`shim delete`). A shim killed with
/// SIGKILL closes its sockets (which is how containerd learns of its death
/// and runs `shim delete`) before the kernel takes it out of its cgroups, so
/// while every process left in one is exiting, this waits for them: up to
/// 2 s in all (containerd gives `shim delete` 5 s). A cgroup a live process
/// is in (a live shim's, whose container containerd cleans up after its
/// connection closed) is left at once.
pub fn remove_all(cgroups_path: &str) {
    let Ok(rel) = relative(cgroups_path) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for h in hierarchies() {
        let dir = h.join(&rel);
        while std::time::Instant::now() < deadline {
            match std::fs::remove_dir(&dir) {
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) && only_exiting(&dir) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => break,
            }
        }
        remove(&dir);
    }
}

/// Whether every process in the cgroup at `dir` is exiting (or gone).
fn only_exiting(dir: &Path) -> bool {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return false;
    };
    // None at all: busy with child cgroups, which waiting will not change.
    !procs.trim().is_empty()
        && procs.split_whitespace().all(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return true;
            };
            // After the `(comm)`: state, ppid, pgrp, session, tty, tpgid, flags.
            let flags = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(6))
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            const PF_EXITING: u64 = 0x4;
            flags & PF_EXITING != 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_climb() {
        assert_eq!(relative("/ns/id").unwrap(), PathBuf::from("ns/id"));
        assert!(relative("/ns/../../etc").is_err());
        assert!(relative("ns/id").is_err());
        assert!(relative("/").is_err());
    }
}
