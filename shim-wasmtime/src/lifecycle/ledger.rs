//! The pod ledger: which containers of a pod its shim was given, kept in the
//! bundle of the pod's sandbox for `shim delete` after the shim died.
//!
//! On containerd 1.x (and 2.x told task API version 2), containerd runs
//! `shim delete` for each container of a dead shim. On 2.x told version 3
//! ([`crate::task_api`]) it runs it for the sandbox alone, until it is
//! restarted: the pod's other containers were connected to the shim without
//! a `start`, and their bundles are removed at once. So each Create of a
//! pod's container appends a line here, each Delete a line that ends it, and
//! the sandbox's `delete`, when it finds the shim dead, cleans up after the
//! containers still listed: it asks the pod's runc shim to delete those
//! handed to runc (or their processes would run on, and that shim with
//! them), and removes the others' cgroups.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The file, in the sandbox's bundle.
const LEDGER: &str = "wasmtime-pod-members";
/// A pod has few containers; a longer ledger is not ours.
const MAX_BYTES: u64 = 1 << 20;
/// Past this, [`Ledgers::record`] drops the lines of deleted containers.
const COMPACT_AT: u64 = 64 << 10;

/// One container of a pod, or (`gone`) the end of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Handed to runc (a Linux executable), rather than run in the shim.
    #[serde(default)]
    pub runc: bool,
    /// The spec's `linux.cgroupsPath`, if any.
    #[serde(default)]
    pub cgroups_path: Option<String>,
    /// Deleted the ordinary way: nothing to clean up after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

/// The shim's side: appends to its pods' ledgers. One per shim, so that
/// its writes to a ledger never race (the `delete` process only reads).
#[derive(Default)]
pub struct Ledgers {
    /// Each recorded container's ledger file.
    files: Mutex<HashMap<String, PathBuf>>,
}

impl Ledgers {
    /// Records container `id` (its bundle `bundle`, its spec `spec`) in the
    /// ledger of its pod `pod` (see [`crate::sandbox::pod_of`]), if the
    /// pod's sandbox bundle is beside its own. Best effort: a failure is
    /// logged, and only the cleanup after a crash would miss it.
    pub fn record(&self, bundle: &Path, pod: Option<&str>, spec: &Spec, id: &str, runc: bool) {
        let Some(sandbox) = pod.filter(|s| *s != id && is_plain_name(s)) else {
            return;
        };
        let Some(sandbox_bundle) = bundle.parent().map(|tasks| tasks.join(sandbox)) else {
            return;
        };
        if !sandbox_bundle.is_dir() {
            return;
        }
        let member = Member {
            id: id.to_string(),
            runc,
            cgroups_path: super::cgroup::cgroups_path(spec),
            gone: false,
        };
        let file = sandbox_bundle.join(LEDGER);
        let mut files = lock(&self.files);
        if let Err(err) = compact_if_long(&file).and_then(|()| append(&file, &member)) {
            tracing::warn!(
                id,
                sandbox,
                "cannot record the container in its pod's ledger: {err}"
            );
            return;
        }
        files.insert(id.to_string(), file);
    }

    /// Marks container `id` deleted in its pod's ledger, if it was recorded.
    pub fn forget(&self, id: &str) {
        let mut files = lock(&self.files);
        let Some(file) = files.remove(id) else {
            return;
        };
        let gone = Member {
            id: id.to_string(),
            runc: false,
            cgroups_path: None,
            gone: true,
        };
        if let Err(err) = append(&file, &gone) {
            tracing::debug!(
                id,
                "cannot mark the container gone in its pod's ledger: {err}"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn append(path: &Path, member: &Member) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(member)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(&line)
}

/// A pod whose containers restart again and again (CrashLoopBackOff)
/// appends two lines per restart: past `COMPACT_AT` bytes, the ledger is
/// written anew with the members still there, and renamed over.
fn compact_if_long(path: &Path) -> std::io::Result<()> {
    let long = std::fs::symlink_metadata(path).is_ok_and(|m| m.len() > COMPACT_AT);
    if !long {
        return Ok(());
    }
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let mut text = Vec::new();
    for (member, _) in read(dir) {
        text.extend(serde_json::to_vec(&member)?);
        text.push(b'\n');
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(&text)?;
    std::fs::rename(&tmp, path)
}

/// The containers recorded in the ledger of the sandbox whose bundle is
/// `sandbox_bundle` and not deleted since, each once, with the bundle each
/// had.
pub fn read(sandbox_bundle: &Path) -> Vec<(Member, PathBuf)> {
    let path = sandbox_bundle.join(LEDGER);
    let too_big = std::fs::symlink_metadata(&path)
        .map_or(true, |m| !m.file_type().is_file() || m.len() > MAX_BYTES);
    if too_big {
        return Vec::new();
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let mut members: Vec<Member> = Vec::new();
    for member in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Member>(l).ok())
        .filter(|m| is_plain_name(&m.id))
    {
        members.retain(|m| m.id != member.id);
        if !member.gone {
            members.push(member);
        }
    }
    let tasks = sandbox_bundle.parent().unwrap_or(Path::new("/nonexistent"));
    members
        .into_iter()
        .map(|m| {
            let bundle = tasks.join(&m.id);
            (m, bundle)
        })
        .collect()
}

/// A container id as a single path component: never `/`, `.` or `..`.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s != "." && s != ".." && !s.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"cgroupsPath": "/k8s.io/c1"}
        }))
        .unwrap()
    }

    fn pod() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let tasks = tempfile::tempdir().unwrap();
        let (pod, c1, c2) = (
            tasks.path().join("pod"),
            tasks.path().join("c1"),
            tasks.path().join("c2"),
        );
        for d in [&pod, &c1, &c2] {
            std::fs::create_dir(d).unwrap();
        }
        (tasks, pod, c1, c2)
    }

    #[test]
    fn members_are_recorded_in_the_sandbox_s_bundle_until_deleted() {
        let (tasks, pod, c1, c2) = pod();
        let ledgers = Ledgers::default();
        ledgers.record(&c1, Some("pod"), &spec(), "c1", false);
        ledgers.record(&c2, Some("pod"), &spec(), "c2", true);
        ledgers.record(&c1, Some("pod"), &spec(), "c1", false);
        // The sandbox itself, and pods that are not plain names, are not.
        ledgers.record(&pod, Some("pod"), &spec(), "pod", false);
        ledgers.record(&c1, Some("../pod"), &spec(), "c1", false);
        let ids = |pod: &Path| -> Vec<(String, bool, PathBuf)> {
            read(pod)
                .into_iter()
                .map(|(m, b)| (m.id, m.runc, b))
                .collect()
        };
        assert_eq!(
            ids(&pod),
            vec![
                ("c2".into(), true, c2.clone()),
                ("c1".into(), false, c1.clone())
            ]
        );
        assert_eq!(read(&pod)[1].0.cgroups_path.as_deref(), Some("/k8s.io/c1"));
        ledgers.forget("c1");
        assert_eq!(ids(&pod), vec![("c2".into(), true, c2.clone())]);
        // No sandbox bundle beside it: nothing is written.
        ledgers.record(&c1, Some("elsewhere"), &spec(), "c1", false);
        assert!(!tasks.path().join("elsewhere").exists());
    }

    #[test]
    fn a_long_ledger_keeps_only_the_containers_still_there() {
        let (_tasks, pod, c1, c2) = pod();
        let ledgers = Ledgers::default();
        ledgers.record(&c2, Some("pod"), &spec(), "c2", true);
        // A container restarted over and over, each time a new id.
        for i in 0..2000 {
            let id = format!("restart-{i}");
            ledgers.record(&c1, Some("pod"), &spec(), &id, false);
            ledgers.forget(&id);
        }
        ledgers.record(&c1, Some("pod"), &spec(), "c1", false);
        let len = std::fs::metadata(pod.join(LEDGER)).unwrap().len();
        assert!(len <= COMPACT_AT + 1024, "{len} bytes");
        let ids: Vec<String> = read(&pod).into_iter().map(|(m, _)| m.id).collect();
        assert_eq!(ids, vec!["c2".to_string(), "c1".to_string()]);
    }

    #[test]
    fn a_ledger_that_is_a_link_is_not_followed() {
        let (tasks, pod, c1, _) = pod();
        let target = tasks.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, pod.join(LEDGER)).unwrap();
        Ledgers::default().record(&c1, Some("pod"), &spec(), "c1", false);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
        assert!(read(&pod).is_empty());
    }
}
