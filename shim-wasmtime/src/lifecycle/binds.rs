//! The spec's bind mounts, mounted inside the rootfs the shim mounted, as
//! runc mounts them inside a container's root: directories and single files
//! alike (`/etc/hosts`, `/etc/resolv.conf`, `/dev/termination-log`, a
//! `subPath`), read-only where the options say `ro`, in the spec's order (a
//! later mount at or below an earlier one covers it). The rootfs is then the
//! container's whole tree, and a guest gets it as one directory.
//!
//! The rootfs comes from an image, which is hostile: a destination is
//! resolved with `openat2(RESOLVE_IN_ROOT)` on the rootfs, so a symlink in
//! the image (`/etc/hosts -> /etc/shadow`, `/data -> /`) resolves inside the
//! rootfs as it would in the container, never to the host's files. Missing
//! parents and the mountpoint itself are made the same way (in the
//! container's writable layer, as runc makes them), and the mount goes onto
//! `/proc/self/fd/N` of what was opened, so nothing can swap the path in
//! between. The rootfs mount is made private first, so these mounts do not
//! propagate to other mount namespaces; Delete's recursive unmount of the
//! rootfs (`MNT_DETACH`) takes every one of them.
//!
//! The container's `/dev` (`devices`) is mounted first, so the spec's mounts
//! below it (`/dev/termination-log`, `/dev/shm`) land in it, and it is made
//! read-only after them. `root.readonly` makes the rootfs mount read-only
//! after the mountpoints exist; bind mounts keep their own flag.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::MountPropagationFlags;

use super::devices::{self, DevOutput};
use super::entrypoint::in_root;

/// Symlinks followed while making one destination, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// One bind mount of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// Where the container sees it: absolute and normal (`/a/b`).
    pub destination: String,
    pub read_only: bool,
    /// `rbind`: the source's own submounts come along.
    pub recursive: bool,
}

/// Whether a spec mount is a bind mount.
pub fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// `/a//b/./` is `/a/b`, and `/` stays `/`. Relative paths and `..` are
/// refused.
pub fn normal(dest: &str) -> Result<String> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        bail!("mount destination {dest:?} must be an absolute path without '..'");
    }
    Ok(format!(
        "/{}",
        dest.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/")
    ))
}

/// The spec's bind mounts, in order. Kernel filesystems (`proc`, `sysfs`,
/// `tmpfs`, ...) are left out: a guest never gets the host's.
pub fn of_spec(spec: &Spec) -> Result<Vec<Bind>> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        if !is_bind(m.typ().as_deref(), &options) {
            continue;
        }
        let destination = normal(&m.destination().to_string_lossy())?;
        let Some(source) = m.source().clone() else {
            bail!("bind mount at {destination} has no source");
        };
        out.push(Bind {
            source,
            destination,
            // `ro` anywhere makes the mount read-only: a later `rw` never
            // weakens it.
            read_only: options.iter().any(|o| o == "ro"),
            recursive: options.iter().any(|o| o == "rbind"),
        });
    }
    Ok(out)
}

/// Mounts the container's `/dev` (with `stdin`, containerd's stdin FIFO, at
/// `/dev/stdin`) and `binds` inside `rootfs` (a mount the shim made), and
/// makes the rootfs read-only when `root_read_only`. Returns the read ends
/// of the guest's `/dev/stdout` and `/dev/stderr`. Blocking. On an error
/// some mounts may be in place: the caller unmounts the rootfs recursively.
pub fn mount_all(
    rootfs: &Path,
    binds: &[Bind],
    root_read_only: bool,
    stdin: Option<&Path>,
) -> Result<DevOutput> {
    // Where links resolve from is read back as a path below this one.
    let rootfs =
        &std::fs::canonicalize(rootfs).with_context(|| format!("resolve {}", rootfs.display()))?;
    rustix::mount::mount_change(
        rootfs,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .with_context(|| format!("make {} private", rootfs.display()))?;
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open {}", rootfs.display()))?;
    let (dev, output) =
        devices::mount(&root, rootfs, stdin).context("make the container's /dev")?;
    for bind in binds {
        mount_one(&root, rootfs, bind).with_context(|| {
            format!(
                "bind mount {} at {}",
                bind.source.display(),
                bind.destination
            )
        })?;
    }
    set_read_only(dev.as_fd(), false).context("make /dev read-only")?;
    if root_read_only {
        set_read_only(root.as_fd(), false).context("make the rootfs read-only")?;
    }
    Ok(output)
}

fn mount_one(root: &OwnedFd, rootfs: &Path, bind: &Bind) -> Result<()> {
    let meta = std::fs::metadata(&bind.source)
        .with_context(|| format!("source {}", bind.source.display()))?;
    let dir = meta.is_dir();
    let rel = bind.destination.trim_start_matches('/');
    if rel.is_empty() {
        bail!("a bind mount over the container's root is not supported");
    }
    let target = mountpoint(root, rootfs, Path::new(rel), dir)?;
    let on = proc_fd(target.as_fd());
    if bind.recursive {
        rustix::mount::mount_bind_recursive(&bind.source, &on)
    } else {
        rustix::mount::mount_bind(&bind.source, &on)
    }
    .context("mount")?;
    if bind.read_only {
        // The path now leads to the new mount's root.
        let mounted = open_in_root(root, Path::new(rel), dir)?;
        set_read_only(mounted.as_fd(), bind.recursive).context("make it read-only")?;
    }
    Ok(())
}

/// Opens `rel` inside `root` (the folder `rootfs`) as the container would
/// resolve it, making what is missing: parent folders, and the mountpoint
/// itself (a folder, or an empty file when `dir` is false). A symlink on the
/// way, dangling or not, is followed inside `root`.
pub(super) fn mountpoint(root: &OwnedFd, rootfs: &Path, rel: &Path, dir: bool) -> Result<OwnedFd> {
    let mut want = rel.to_path_buf();
    for _ in 0..MAX_LINKS {
        match open_in_root(root, &want, dir) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("open /{}", want.display()));
            }
        }
        // Find the first component that is missing, and make it, or follow
        // the dangling symlink that stands in its place.
        let parts: Vec<&OsStr> = want
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect();
        let mut parent = rustix::fs::openat(
            root,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut next = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let prefix: PathBuf = parts[..=i].iter().collect();
            match open_in_root(root, &prefix, !last || dir) {
                Ok(fd) => {
                    parent = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("open /{}", prefix.display()));
                }
            }
            if let Ok(target) = rustix::fs::readlinkat(&parent, *part, Vec::new()) {
                // A dangling symlink: go on from where it points, inside
                // `root` (an absolute target starts again at its top).
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                // A relative target starts where the link is: the parent as
                // resolved (through any symlinks before it), not as spelled.
                let base: PathBuf = if target.is_absolute() {
                    PathBuf::new()
                } else {
                    let at =
                        std::fs::read_link(proc_fd(parent.as_fd())).context("where a link is")?;
                    at.strip_prefix(rootfs)
                        .with_context(|| format!("{} is outside the rootfs", at.display()))?
                        .to_path_buf()
                };
                let rest: PathBuf = parts[i + 1..].iter().collect();
                next = Some(in_root(&base.join(target).join(rest)));
                break;
            }
            if !last || dir {
                match rustix::fs::mkdirat(&parent, *part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => {
                        return Err(err).with_context(|| format!("make /{}", prefix.display()));
                    }
                }
            } else {
                rustix::fs::openat(
                    &parent,
                    *part,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .with_context(|| format!("make /{}", prefix.display()))?;
            }
            parent = open_in_root(root, &prefix, !last || dir)
                .with_context(|| format!("open /{}", prefix.display()))?;
        }
        match next {
            Some(path) => want = path,
            None => return Ok(parent),
        }
    }
    bail!("too many symlinks at /{}", rel.display())
}

/// Tries of `openat2` that a rename elsewhere on the host interrupted.
const OPENAT2_TRIES: usize = 16;

pub(super) fn open_in_root(root: &OwnedFd, rel: &Path, dir: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // With `..` in the path (or a link's target), the kernel answers
            // EAGAIN when any rename on the host raced the lookup: try again,
            // as cap-std does.
            Err(Errno::AGAIN) if tries + 1 < OPENAT2_TRIES => tries += 1,
            res => return res,
        }
    }
}

/// `/proc/self/fd/N`: mounting there mounts on what `fd` is.
pub(super) fn proc_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_int = 0x8000;

/// Makes the mount whose root `fd` is read-only (with its submounts when
/// `recursive`), keeping its other flags (`nosuid`, `nodev`, ...) as they
/// are, which a remount would have to restate.
fn set_read_only(fd: BorrowedFd<'_>, recursive: bool) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr(2) with a descriptor we hold, an empty
    // NUL-terminated path, and a `mount_attr` of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_bind_mounts_count_in_order() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc//hosts", "type": "bind", "source": "/h", "options": ["rbind", "ro"]},
                {"destination": "/data/", "source": "/d", "options": ["bind", "rw"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
            ]
        }));
        let binds = of_spec(&s).unwrap();
        assert_eq!(
            binds,
            vec![
                Bind {
                    source: "/h".into(),
                    destination: "/etc/hosts".into(),
                    read_only: true,
                    recursive: true,
                },
                Bind {
                    source: "/d".into(),
                    destination: "/data".into(),
                    read_only: false,
                    recursive: false,
                },
            ]
        );
    }

    #[test]
    fn destinations_must_be_absolute_without_dot_dot() {
        assert_eq!(normal("/a//b/./").unwrap(), "/a/b");
        assert_eq!(normal("/").unwrap(), "/");
        assert!(normal("a/b").is_err());
        assert!(normal("/a/../b").is_err());
    }

    #[test]
    fn links_resolve_lexically_inside_the_root() {
        assert_eq!(in_root(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(in_root(Path::new("../../etc/x")), PathBuf::from("etc/x"));
        assert_eq!(in_root(Path::new("/etc/x")), PathBuf::from("etc/x"));
    }
}
