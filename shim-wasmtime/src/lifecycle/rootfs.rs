//! The container's root filesystem: containerd hands the shim the snapshot's
//! mounts in Create, and the shim mounts them at `<bundle>/rootfs` as runc's
//! shim does. Delete (and `shim delete` after a crash) unmounts it.

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;

use super::error::{Error, Kind, Result, ResultExt};

/// Where the rootfs of a bundle lives.
pub fn path(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts the snapshot, or, with no mounts, uses what the spec's `root.path`
/// already names (a rootfs prepared by hand). Returns the rootfs folder and
/// whether the shim mounted it.
pub async fn mount(
    bundle: &Path,
    mounts: &[Mount],
    spec_root: Option<&Path>,
) -> Result<(PathBuf, bool)> {
    if mounts.is_empty() {
        let root = match spec_root {
            Some(p) if p.is_absolute() => p.to_path_buf(),
            Some(p) => bundle.join(p),
            None => {
                return Err(Error::invalid(
                    "no rootfs mounts and no root.path in the spec",
                ))
            }
        };
        return Ok((root, false));
    }
    let target = path(bundle);
    tokio::fs::create_dir_all(&target)
        .await
        .kind(Kind::Internal, format!("create {}", target.display()))?;
    for m in mounts {
        // The image may hold device nodes and setuid files: a guest must
        // never open a device through its rootfs, so mount it `nodev`.
        let mut m = m.clone();
        for opt in ["nodev", "nosuid"] {
            if !m.options.iter().any(|o| o == opt) {
                m.options.push(opt.to_string());
            }
        }
        let m = &m;
        if let Err(err) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            unmount(&target).await;
            return Err(Error::wrap(Kind::Internal, err).context(format!(
                "mount {} rootfs at {}",
                m.type_,
                target.display()
            )));
        }
    }
    Ok((target, true))
}

/// Unmounts everything at and below `target`. Errors are logged: cleanup
/// carries on, since a failed unmount must not block the task's deletion.
pub async fn unmount(target: &Path) {
    let target = target.to_path_buf();
    let res = tokio::task::spawn_blocking(move || {
        let t = target.to_string_lossy().into_owned();
        containerd_shim::mount::umount_recursive(Some(&t), libc::MNT_DETACH)
            .map_err(|e| anyhow::anyhow!("unmount {t}: {e}"))
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!("{err:#}"),
        Err(err) => tracing::warn!("unmount task failed: {err}"),
    }
}
