//! The shim process joins its first container's cgroup (`linux.cgroupsPath`),
//! so that the kernel's accounting and limits, `ctr task metrics`' host-side
//! view and the kubelet see the guests' real memory and CPU: a guest's
//! memory and CPU are the shim's.
//!
//! Under `ctr` each container has a shim of its own, so the cgroup is the
//! container's. With one shim per pod, the first container is the pod's
//! sandbox and its cgroup is the pod's.
//!
//! The kernel memory limit is the spec's plus [`SHIM_OVERHEAD`]: Wasmtime
//! already enforces the guest's limit on its linear memory, and the kernel's
//! must not kill the shim for its own runtime's few megabytes.
//!
//! Supported: cgroupfs-style absolute paths (`/a/b`), on cgroup v1 (the
//! memory, cpu, cpuacct and pids hierarchies) and v2. A systemd-style `slice:prefix:name` is left
//! alone, with a log line.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Limits;

/// Room for the shim's own memory above the guest's limit.
pub const SHIM_OVERHEAD: u64 = 64 << 20;

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
    if let Err(err) = std::fs::write(dir.join(file), value) {
        tracing::debug!(dir = %dir.display(), file, %err, "cgroup write failed");
    }
}

fn apply_limits(dir: &Path, limits: &Limits) {
    if let Some(mem) = limits.memory {
        let bytes = mem.saturating_add(SHIM_OVERHEAD).to_string();
        if dir.join("memory.limit_in_bytes").exists() {
            write(dir, "memory.limit_in_bytes", &bytes);
        } else if dir.join("memory.max").exists() {
            write(dir, "memory.max", &bytes);
        }
    }
    if let Some(cpu) = limits.cpu {
        let (quota, period) = (cpu.quota.as_micros(), cpu.period.as_micros());
        if dir.join("cpu.cfs_quota_us").exists() {
            write(dir, "cpu.cfs_period_us", &period.to_string());
            write(dir, "cpu.cfs_quota_us", &quota.to_string());
        } else if dir.join("cpu.max").exists() {
            write(dir, "cpu.max", &format!("{quota} {period}"));
        }
    }
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
            apply_limits(&dir, limits);
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

fn remove(dir: &Path) {
    if let Err(err) = std::fs::remove_dir(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove cgroup");
        }
    }
}

/// Removes a dead shim's cgroups (`shim delete`).
pub fn remove_all(cgroups_path: &str) {
    if let Ok(rel) = relative(cgroups_path) {
        for h in hierarchies() {
            remove(&h.join(&rel));
        }
    }
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
