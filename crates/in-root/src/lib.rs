//! Path resolution inside a container's root, for a WASI filesystem.
//!
//! cap-std resolves a path beneath the folder a call starts from and refuses
//! whatever would leave it: an absolute path or symbolic link, or `..` past
//! the top. Inside a container those are ordinary (`/etc/localtime ->
//! /usr/share/zoneinfo/UTC`, `/data/current -> /data/v2`, `../` from a folder
//! the guest opened): the kernel resolves them inside the container's root.
//!
//! [`retry`] keeps cap-std's resolution for every path it accepts, and
//! resolves only what it refused again, from the root, as the kernel does
//! there: the path's folder with `openat2(RESOLVE_IN_ROOT)` (an absolute link
//! restarts at the root, `..` at the root stays there, and nothing the
//! kernel finds can be outside it, whatever is renamed meanwhile), then the
//! last name, followed by hand when the operation follows links. The
//! operation then runs on that folder and that one name, beneath it, through
//! cap-std again. So a path that stays beneath its folder costs nothing more,
//! and one that leaves it costs one failed attempt plus a few system calls
//! per link.
//!
//! The folder a call starts from may be below the root (a folder the guest
//! opened): the path is then taken from where that folder is in the root,
//! read from `/proc/self/fd`. If the folder was moved meanwhile, the path
//! may name another file than the kernel would have found through the
//! folder, but never one outside the root.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symbolic links followed for one path, as the kernel's limit.
pub const MAX_LINKS: usize = 40;

/// Tries of `openat2` that a rename elsewhere on the host interrupted.
const OPENAT2_TRIES: usize = 16;

/// Whether an operation follows a symbolic link in the path's last name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Yes,
    No,
}

/// Whether `err` is cap-std's refusal of a path that leaves its folder (it
/// carries no OS error: the kernel's `EXDEV` from `openat2(RESOLVE_BENEATH)`
/// is turned into it).
pub fn is_escape(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied && err.raw_os_error().is_none()
}

/// Runs `op(base, path)`, and when cap-std refuses `path` as leaving `base`
/// and `root` is given (`base` is `root` or a folder inside it), runs
/// `op(folder, name)` on what `path` names inside the root: see the crate's
/// documentation.
pub fn retry<T>(
    root: Option<&File>,
    base: &File,
    path: &Path,
    follow: Follow,
    op: impl Fn(&File, &Path) -> io::Result<T>,
) -> io::Result<T> {
    match op(base, path) {
        Err(err) if is_escape(&err) => match root {
            Some(root) => {
                let (folder, name) = resolve(root, base, path, follow)?;
                op(&folder, &name)
            }
            None => Err(err),
        },
        done => done,
    }
}

/// [`retry`] for an operation on two paths (rename, link), neither of
/// which is followed at its last name.
pub fn retry2<T>(
    root: Option<&File>,
    (base1, path1): (&File, &Path),
    (base2, path2): (&File, &Path),
    op: impl Fn(&File, &Path, &File, &Path) -> io::Result<T>,
) -> io::Result<T> {
    match op(base1, path1, base2, path2) {
        Err(err) if is_escape(&err) => match root {
            Some(root) => {
                let (folder1, name1) = resolve(root, base1, path1, Follow::No)?;
                let (folder2, name2) = resolve(root, base2, path2, Follow::No)?;
                op(&folder1, &name1, &folder2, &name2)
            }
            None => Err(err),
        },
        done => done,
    }
}

/// What `path`, taken from `base`, names inside `root`, as the kernel would
/// resolve it there: the folder it is in, opened, and its last name (`.`
/// when the path names a folder by `.`, `..` or nothing). With
/// [`Follow::Yes`] a symbolic link in the last name is followed, inside the
/// root.
pub fn resolve(
    root: &File,
    base: &File,
    path: &Path,
    follow: Follow,
) -> io::Result<(File, PathBuf)> {
    let mut full = where_in(root, base)?.join(path);
    for _ in 0..=MAX_LINKS {
        let (folder_path, name) = split(&full);
        let folder = open_in_root(root, &folder_path)?;
        if follow == Follow::Yes && name != Path::new(".") {
            // EINVAL: not a link; ENOENT: nothing there. Either way the
            // operation itself says what it finds.
            if let Ok(target) = rustix::fs::readlinkat(&folder, &name, Vec::new()) {
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                full = if target.has_root() {
                    target
                } else {
                    where_in(root, &folder)?.join(target)
                };
                continue;
            }
        }
        return Ok((folder, name));
    }
    Err(Errno::LOOP.into())
}

/// Where `dir` is inside `root`, as a relative path (empty for the root).
fn where_in(root: &File, dir: &File) -> io::Result<PathBuf> {
    let (r, d) = (root.metadata()?, dir.metadata()?);
    if (r.dev(), r.ino()) == (d.dev(), d.ino()) {
        return Ok(PathBuf::new());
    }
    let root_at = fd_path(root)?;
    let dir_at = fd_path(dir)?;
    match dir_at.strip_prefix(&root_at) {
        Ok(rel) => Ok(rel.to_path_buf()),
        // Not below the root (it cannot be, through WASI): refuse, as
        // cap-std would.
        Err(_) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a path led outside of the filesystem",
        )),
    }
}

/// The path the kernel has for an open file, in the shim's mount namespace.
fn fd_path(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd()))
}

/// `a/b/c` is (`a/b`, `c`); a path ending in `.`, `..` or nothing names a
/// folder: (the whole path, `.`). The folder part keeps `..`, which the
/// kernel resolves; a leading `/` is dropped, since the folder part is
/// resolved from the root anyway.
fn split(path: &Path) -> (PathBuf, PathBuf) {
    let parts: Vec<Component<'_>> = path
        .components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect();
    match parts.split_last() {
        Some((Component::Normal(name), folder)) => {
            let folder: PathBuf = folder.iter().collect();
            let folder = if folder.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                folder
            };
            (folder, PathBuf::from(name))
        }
        _ => {
            let all: PathBuf = parts.iter().collect();
            let all = if all.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                all
            };
            (all, PathBuf::from("."))
        }
    }
}

/// Opens the folder `path` of `root` as the kernel resolves it inside it.
fn open_in_root(root: &File, path: &Path) -> io::Result<File> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(File::from(fd)),
            // A rename anywhere on the host raced a lookup with `..`: the
            // kernel asks to try again, as cap-std does.
            Err(Errno::AGAIN) if tries + 1 < OPENAT2_TRIES => tries += 1,
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests;
