//! The pod ledger: which containers of a pod its shim was given, kept in the
//! bundle of the pod's sandbox for `shim delete` after the shim died.
//!
//! On containerd 1.x (and 2.x told task API version 2), containerd runs
//! `shim delete` for every container of a dead shim. On 2.x told version 3
//! ([`crate::task_api`]) it runs it only for the sandbox: the pod's other
//! containers were connected to the shim without a `start`, and their
//! bundles may already be gone when that one `delete` runs. So each Create
//! of a pod's container appends a line here first, and the sandbox's
//! `delete` cleans up after every container on it: it asks the pod's runc
//! shim to delete the ones handed to runc (or their processes would run on,
//! and that shim with them), and removes the others' cgroups.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The file, in the sandbox's bundle.
const LEDGER: &str = "wasmtime-pod-members";
/// CRI's annotation naming a container's pod sandbox.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// A pod has few containers; a longer ledger is not ours.
const MAX_BYTES: u64 = 1 << 20;

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Handed to runc (a Linux executable), rather than run in the shim.
    pub runc: bool,
    /// The spec's `linux.cgroupsPath`, if any.
    pub cgroups_path: Option<String>,
}

/// Records container `id` (its bundle `bundle`, its spec `spec`) in its
/// pod's ledger, if it belongs to a pod whose sandbox bundle is beside its
/// own. Best effort: a failure is logged, and only the cleanup after a crash
/// would miss it.
pub fn record(bundle: &Path, spec: &Spec, id: &str, runc: bool) {
    let Some(sandbox) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID))
        .filter(|s| s.as_str() != id && is_plain_name(s))
    else {
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
        cgroups_path: spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned()),
    };
    if let Err(err) = append(&sandbox_bundle.join(LEDGER), &member) {
        tracing::warn!(
            id,
            sandbox,
            "cannot record the container in its pod's ledger: {err}"
        );
    }
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
    // One write(2) of a short line to an O_APPEND file: lines of
    // concurrent Creates never interleave.
    file.write_all(&line)
}

/// The containers recorded in the ledger of the sandbox whose bundle is
/// `sandbox_bundle`, each once, with the bundle each had.
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
    {
        if is_plain_name(&member.id) && !members.iter().any(|m| m.id == member.id) {
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

    fn spec(sandbox: &str) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {SANDBOX_ID: sandbox},
            "linux": {"cgroupsPath": "/k8s.io/c1"}
        }))
        .unwrap()
    }

    #[test]
    fn members_are_recorded_in_the_sandbox_s_bundle_and_read_back_once() {
        let tasks = tempfile::tempdir().unwrap();
        let (pod, c1, c2) = (
            tasks.path().join("pod"),
            tasks.path().join("c1"),
            tasks.path().join("c2"),
        );
        for d in [&pod, &c1, &c2] {
            std::fs::create_dir(d).unwrap();
        }
        record(&c1, &spec("pod"), "c1", false);
        record(&c2, &spec("pod"), "c2", true);
        record(&c1, &spec("pod"), "c1", false);
        // The sandbox itself, and pods that are not plain names, are not.
        record(&pod, &spec("pod"), "pod", false);
        record(&c1, &spec("../pod"), "c1", false);
        let read = read(&pod);
        let ids: Vec<_> = read
            .iter()
            .map(|(m, b)| (m.id.as_str(), m.runc, b.clone()))
            .collect();
        assert_eq!(
            ids,
            vec![("c1", false, c1.clone()), ("c2", true, c2.clone())]
        );
        assert_eq!(read[0].0.cgroups_path.as_deref(), Some("/k8s.io/c1"));
        // No sandbox bundle beside it: nothing is written.
        record(&c1, &spec("elsewhere"), "c1", false);
        assert!(!tasks.path().join("elsewhere").exists());
    }

    #[test]
    fn a_ledger_that_is_a_link_is_not_followed() {
        let tasks = tempfile::tempdir().unwrap();
        let pod = tasks.path().join("pod");
        let c1 = tasks.path().join("c1");
        std::fs::create_dir(&pod).unwrap();
        std::fs::create_dir(&c1).unwrap();
        let target = tasks.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, pod.join(LEDGER)).unwrap();
        record(&c1, &spec("pod"), "c1", false);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
        assert!(read(&pod).is_empty());
    }
}
