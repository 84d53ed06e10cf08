//! What the guest can see of a filesystem: the spec's mounts turned into WASI
//! preopened directories, and nothing else.
//!
//! - The rootfs is preopened at `/`, read-only when `root.readonly` is set.
//! - Each bind mount of a directory is preopened at its destination,
//!   read-only when its options say `ro`.
//! - `proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`, `cgroup` and any other
//!   kernel filesystem are never the host's: they are not preopened, so the
//!   guest sees only what the image itself has at those paths.
//! - Bind mounts of single files cannot be preopened (WASI preopens
//!   directories) and are left out, with a log line.

use std::path::PathBuf;

use anyhow::{bail, Result};
use oci_spec::runtime::Spec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// The preopens for a task: the rootfs first, then the bind mounts in
/// order. A mount at the same destination as an earlier one (or at `/`)
/// replaces it, as it would hide it in a mount namespace.
pub fn preopens(spec: &Spec, rootfs: PathBuf) -> Result<Vec<Preopen>> {
    let root_ro = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut out = vec![Preopen {
        host: rootfs,
        guest: "/".to_string(),
        read_only: root_ro,
    }];
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        if !is_bind(m.typ().as_deref(), &options) {
            continue;
        }
        let dest = m.destination().to_string_lossy().into_owned();
        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
            bail!("mount destination {dest:?} must be an absolute path without '..'");
        }
        // `/a//b/./` is `/a/b`, and `/` stays `/`.
        let guest = format!(
            "/{}",
            dest.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect::<Vec<_>>()
                .join("/")
        );
        let Some(source) = m.source().clone() else {
            bail!("bind mount at {dest} has no source");
        };
        match std::fs::metadata(&source) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                tracing::debug!(
                    dest,
                    "file bind mount left out: WASI preopens directories only"
                );
                continue;
            }
            Err(err) => bail!("bind mount source {} for {dest}: {err}", source.display()),
        }
        // `ro` anywhere makes the mount read-only: a later `rw` never weakens it.
        let read_only = options.iter().any(|o| o == "ro");
        // As with mounts, a later one at the same place hides the earlier.
        out.retain(|p| p.guest != guest);
        out.push(Preopen {
            host: source,
            guest,
            read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_directory_binds_are_preopened() {
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
        let p = preopens(&s, PathBuf::from("/r")).unwrap();
        let got: Vec<_> = p.iter().map(|p| (p.guest.as_str(), p.read_only)).collect();
        assert_eq!(got, vec![("/", true), ("/data", true), ("/rw", false)]);
    }

    #[test]
    fn dotdot_destinations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/a/../b", "type": "bind", "source": dir.path()}]
        }));
        assert!(preopens(&s, PathBuf::from("/r")).is_err());
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
            let Ok(preopens) = preopens(&spec, PathBuf::from("/r")) else { return Ok(()) };
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
