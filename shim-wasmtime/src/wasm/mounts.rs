//! What the guest can see of a filesystem, as WASI preopened directories.
//!
//! - With a rootfs the shim mounted (every `ctr run` and CRI container), the
//!   spec's bind mounts, files and directories, are mounted inside it
//!   ([`crate::lifecycle::binds`]): the guest gets that one tree at `/`, and
//!   the kernel enforces `ro` and `root.readonly`.
//! - With a rootfs prepared by hand (`root.path`, no mounts), the shim does
//!   not mount into it: the rootfs is preopened at `/` (read-only when
//!   `root.readonly`), and each directory bind mount at its destination
//!   (read-only when `ro`); bind mounts of single files are left out.
//! - `proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`, `cgroup` and any other
//!   kernel filesystem are never the host's: they are not mounted nor
//!   preopened, so the guest sees only what the image itself has there.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::lifecycle::binds::{self, is_bind, normal};
use crate::lifecycle::entrypoint;
use oci_spec::runtime::Spec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
    /// The container's whole tree: absolute symlinks and `..` at the top
    /// resolve inside it, as in the container (wasmtime-wasi's patched
    /// `preopened_root`, crate `in-root`), rather than fail.
    pub root: bool,
}

/// The preopens for a task. `binds_mounted`: the bind mounts are inside
/// `rootfs` already, which is then the only preopen. Otherwise the rootfs
/// comes first, then the directory bind mounts in order; a mount at the
/// same destination as an earlier one (or at `/`) replaces it, as it would
/// hide it in a mount namespace.
pub fn preopens(spec: &Spec, rootfs: PathBuf, binds_mounted: bool) -> Result<Vec<Preopen>> {
    if binds_mounted {
        return Ok(vec![Preopen {
            host: rootfs,
            guest: "/".to_string(),
            read_only: false,
            root: true,
        }]);
    }
    let root_ro = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut out = vec![Preopen {
        host: rootfs,
        guest: "/".to_string(),
        read_only: root_ro,
        root: false,
    }];
    for bind in binds::of_spec(spec)? {
        match std::fs::metadata(&bind.source) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                tracing::debug!(
                    dest = bind.destination,
                    "file bind mount left out: the rootfs was not mounted by the shim"
                );
                continue;
            }
            Err(err) => anyhow::bail!(
                "bind mount source {} for {}: {err}",
                bind.source.display(),
                bind.destination
            ),
        }
        // As with mounts, a later one at the same place hides the earlier.
        out.retain(|p| p.guest != bind.destination);
        out.push(Preopen {
            host: bind.source,
            guest: bind.destination,
            read_only: bind.read_only,
            root: false,
        });
    }
    Ok(out)
}

/// Reads `path` (absolute, normal) as the container sees it, at most
/// `limit` bytes: from the last bind mount of that file or of a directory
/// above it, else from the rootfs. Below a mount or the rootfs, symlinks
/// resolve as they would inside it (an absolute target starts again at its
/// top, `..` stops there), never out. `Ok(None)`: the container has no
/// such regular file. Blocking.
pub fn read_container_file(
    spec: &Spec,
    rootfs: &Path,
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let mut from = (
        rootfs.to_path_buf(),
        path.trim_start_matches('/').to_string(),
    );
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let (Some(source), true) = (m.source(), is_bind(m.typ().as_deref(), &options)) else {
            continue;
        };
        let dest = normal(&m.destination().to_string_lossy())?;
        if dest == path {
            // A mount of the file itself: its source is what containerd
            // named, read as it is.
            from = (source.clone(), String::new());
        } else if let Some(rel) = path.strip_prefix(&format!("{}/", dest.trim_end_matches('/'))) {
            from = (source.clone(), rel.to_string());
        }
    }
    let (base, rel) = from;
    let open = || -> std::io::Result<Option<std::fs::File>> {
        if rel.is_empty() {
            // A mount of the file itself: its source is what containerd named.
            if !std::fs::metadata(&base)?.is_file() {
                return Ok(None);
            }
            return std::fs::File::open(&base).map(Some);
        }
        let dir = Dir::open_ambient_dir(&base, ambient_authority())?;
        let resolved = entrypoint::resolve(&dir, Path::new(&rel))?;
        // Only a regular file: a FIFO or a device would block or never end.
        if !dir.symlink_metadata(&resolved)?.is_file() {
            return Ok(None);
        }
        Ok(Some(dir.open(&resolved)?.into_std()))
    };
    let file = match open() {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("open {path} of the container")),
    };
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("read {path} of the container"))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn with_the_binds_in_the_rootfs_the_tree_is_the_one_preopen() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/d", "options": ["ro"]}]
        }));
        let p = preopens(&s, PathBuf::from("/r"), true).unwrap();
        let want = Preopen {
            host: PathBuf::from("/r"),
            guest: "/".into(),
            read_only: false,
            root: true,
        };
        assert_eq!(p, vec![want]);
    }

    #[test]
    fn without_the_tree_only_directory_binds_are_preopened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "x").unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
                {"destination": "/data", "type": "bind", "source": dir.path(), "options": ["rbind", "ro"]},
                {"destination": "/rw/", "source": dir.path(), "options": ["bind"]},
                {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["bind"]}
            ]
        }));
        let p = preopens(&s, PathBuf::from("/r"), false).unwrap();
        let got: Vec<_> = p.iter().map(|p| (p.guest.as_str(), p.read_only)).collect();
        assert_eq!(got, vec![("/", true), ("/data", true), ("/rw", false)]);
    }

    #[test]
    fn container_files_come_from_the_last_mount_or_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hosts"), "rootfs").unwrap();
        std::fs::write(root.path().join("secret"), "host").unwrap();
        std::os::unix::fs::symlink("../../secret", rootfs.join("etc/resolv.conf")).unwrap();
        let hosts = root.path().join("pod-hosts");
        std::fs::write(&hosts, "pod").unwrap();
        let etc = root.path().join("etc-dir");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "dir").unwrap();

        let read = |mounts: serde_json::Value, path: &str| {
            let s = spec(serde_json::json!({
                "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": mounts
            }));
            read_container_file(&s, &rootfs, path, 1 << 20)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(
            read(serde_json::json!([]), "/etc/hosts").as_deref(),
            Some("rootfs")
        );
        assert_eq!(read(serde_json::json!([]), "/etc/missing"), None);
        // A link out of the rootfs resolves inside it: to nothing here, then
        // to the rootfs's own file; an absolute one starts at the rootfs.
        assert_eq!(read(serde_json::json!([]), "/etc/resolv.conf"), None);
        std::fs::write(rootfs.join("secret"), "rootfs secret").unwrap();
        assert_eq!(
            read(serde_json::json!([]), "/etc/resolv.conf").as_deref(),
            Some("rootfs secret")
        );
        std::os::unix::fs::symlink("/etc/hosts", rootfs.join("etc/abs")).unwrap();
        assert_eq!(
            read(serde_json::json!([]), "/etc/abs").as_deref(),
            Some("rootfs")
        );
        // Only regular files are read.
        assert_eq!(read(serde_json::json!([]), "/etc"), None);
        let file = serde_json::json!([
            {"destination": "/etc", "type": "bind", "source": etc, "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]}
        ]);
        assert_eq!(read(file, "/etc/hosts").as_deref(), Some("pod"));
        let dir = serde_json::json!([
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
            {"destination": "/etc/", "type": "bind", "source": etc, "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "tmpfs", "source": "tmpfs"}
        ]);
        assert_eq!(read(dir, "/etc/hosts").as_deref(), Some("dir"));
    }

    #[test]
    fn dotdot_destinations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/a/../b", "type": "bind", "source": dir.path()}]
        }));
        assert!(preopens(&s, PathBuf::from("/r"), false).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn mount() -> impl Strategy<Value = serde_json::Value> {
        (
            "(/[a-z.]{0,6}){1,3}",
            prop_oneof![Just("bind"), Just("proc"), Just("tmpfs"), Just("sysfs"), Just("")],
            proptest::collection::vec(prop_oneof![Just("ro"), Just("rw"), Just("rbind"), Just("bind"), Just("nosuid")], 0..4),
        )
            .prop_map(|(dest, typ, options)| {
                serde_json::json!({"destination": dest, "type": typ, "source": "/tmp", "options": options})
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any list of mounts maps to preopens without a panic; a mount asked
        /// to be read-only is never writable, and no destination climbs with `..`.
        #[test]
        fn spec_mounts_map_safely(mounts in proptest::collection::vec(mount(), 0..6), ro_root in any::<bool>()) {
            let spec: Spec = serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs", "readonly": ro_root},
                "mounts": mounts.clone(),
            })).unwrap();
            let Ok(preopens) = preopens(&spec, PathBuf::from("/r"), false) else { return Ok(()) };
            let mut guests: Vec<&str> = preopens.iter().map(|p| p.guest.as_str()).collect();
            guests.sort();
            guests.dedup();
            prop_assert_eq!(guests.len(), preopens.len(), "one preopen per guest path");
            for p in &preopens {
                prop_assert!(p.guest.starts_with('/'));
                prop_assert!(!p.guest.split('/').any(|c| c == ".." || c == "."));
                // The mount that decides is the last one at that place, if any.
                let normal = |d: &str| format!("/{}", d.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/"));
                let last = mounts.iter().rev().find(|m| {
                    let binds = m["type"] == "bind" || m["options"].as_array().unwrap().iter().any(|o| o == "bind" || o == "rbind");
                    binds && m["destination"].as_str().map(normal).as_deref() == Some(p.guest.as_str())
                });
                match last {
                    Some(m) => {
                        let ro = m["options"].as_array().unwrap().iter().any(|o| o == "ro");
                        prop_assert_eq!(p.read_only, ro);
                    }
                    None => prop_assert_eq!(p.read_only, ro_root),
                }
            }
        }
    }
}
