//! Finding a container's entrypoint (`process.args[0]`) in its rootfs, as
//! `execvp` would, and telling whether it is a Linux executable.
//!
//! The rootfs comes from an image, so every path in it is hostile: lookups go
//! through a capability handle on the rootfs, which refuses `..` and symlinks
//! (absolute or relative) that lead outside it.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata};

/// The PATH a spec gets when its env has none, as in runc.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Turns `path` (absolute, or relative to `cwd`) into a path relative to the
/// rootfs. `..` is resolved lexically and can never climb above the root,
/// as in a real chroot.
pub fn rootfs_relative(cwd: &str, path: &str) -> PathBuf {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(cwd).join(path)
    };
    in_root(&joined)
}

/// `path` relative to a root, lexically: `a/./b/../c` is `a/c`, and `..` at
/// the top stays at the top, as in a root.
pub fn in_root(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Candidate paths for `args[0]`: itself when it has a slash, otherwise each
/// folder of the spec's PATH, as `execvp` would search.
pub fn candidates(arg0: &str, cwd: &str, env: &[String]) -> Vec<PathBuf> {
    if arg0.contains('/') {
        return vec![rootfs_relative(cwd, arg0)];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| rootfs_relative(cwd, &format!("{d}/{arg0}")))
        .collect()
}

/// How many symlinks one lookup may follow, as Linux's limit (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// Resolves `rel` inside `root` the way the path would resolve inside the
/// container: every symlink is followed, an absolute target starts again at
/// the rootfs (not the host's `/`), and `..` stops at the rootfs. The result
/// names no symlink, so opening it through `root` cannot leave the rootfs.
pub fn resolve(root: &Dir, rel: &Path) -> std::io::Result<PathBuf> {
    let mut done = PathBuf::new();
    let mut todo: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut followed = 0;
    while let Some(part) = todo.pop() {
        match Path::new(&part).components().next() {
            Some(Component::Normal(name)) => {
                let next = done.join(name);
                let meta = root.symlink_metadata(&next)?;
                if !meta.file_type().is_symlink() {
                    done = next;
                    continue;
                }
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = root.read_link_contents(&next)?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                todo.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| c.as_os_str().to_os_string()),
                );
            }
            Some(Component::ParentDir) => {
                done.pop();
            }
            _ => {}
        }
    }
    Ok(done)
}

/// The first candidate for `args[0]` that exists in `root`: its resolved
/// path relative to the rootfs (see [`resolve`]) and its metadata.
pub fn find(
    root: &Dir,
    arg0: &str,
    cwd: &str,
    env: &[String],
) -> std::io::Result<Option<(PathBuf, Metadata)>> {
    for rel in candidates(arg0, cwd, env) {
        let resolved = match resolve(root, &rel) {
            Ok(r) => r,
            // Not there, or a PATH folder that is no folder: try the next.
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e),
        };
        if resolved.as_os_str().is_empty() {
            // The rootfs itself: report it, so the caller says it is no file.
            return Ok(Some((resolved, root.dir_metadata()?)));
        }
        return Ok(Some((resolved.clone(), root.symlink_metadata(&resolved)?)));
    }
    Ok(None)
}

fn is_absent(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// The ELF OS/ABI byte Wasmtime stamps on its compiled modules (`.cwasm`).
const ELFOSABI_WASMTIME: u8 = 200;

/// Whether a file's first bytes make it something Linux executes: a `#!`
/// script, or an ELF executable or shared object (`e_type` EXEC or DYN).
/// Other ELF files, Wasmtime's precompiled modules above all, are no
/// program: the wasm engine refuses them with its own message.
pub fn is_linux_executable_header(head: &[u8]) -> bool {
    if head.starts_with(b"#!") {
        return true;
    }
    if !head.starts_with(b"\x7fELF") || head.len() < 18 || head[7] == ELFOSABI_WASMTIME {
        return false;
    }
    let e_type = match head[5] {
        1 => u16::from_le_bytes([head[16], head[17]]),
        2 => u16::from_be_bytes([head[16], head[17]]),
        _ => return false,
    };
    matches!(e_type, 2 | 3)
}

/// Whether the spec's entrypoint is a Linux executable in `rootfs`: such a
/// container (a pod's pause container, a sidecar) belongs to runc, not to the
/// wasm engine. Anything unreadable or missing counts as "no", so the engine
/// reports it with its own, clearer error.
pub fn is_linux_executable(rootfs: &Path, spec: &oci_spec::runtime::Spec) -> bool {
    let Some(process) = spec.process().as_ref() else {
        return false;
    };
    let Some(arg0) = process.args().as_ref().and_then(|a| a.first()) else {
        return false;
    };
    let env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().to_string_lossy();
    let Ok(root) = Dir::open_ambient_dir(rootfs, ambient_authority()) else {
        return false;
    };
    let Ok(Some((rel, meta))) = find(&root, arg0, &cwd, &env) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut head = [0u8; 18];
    let read = root
        .open(&rel)
        .and_then(|mut f| f.read_exact(&mut head).map(|()| head.len()))
        .unwrap_or(0);
    is_linux_executable_header(&head[..read])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header of type `e_type` and OS/ABI `abi`.
    fn elf(e_type: u16, abi: u8) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, abi, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(&e_type.to_le_bytes());
        h.extend_from_slice(&[0x3e, 0]);
        h
    }

    #[test]
    fn elf_programs_are_told_from_other_elf_files() {
        assert!(is_linux_executable_header(&elf(2, 0)));
        assert!(is_linux_executable_header(&elf(3, 3)));
        assert!(is_linux_executable_header(b"#!/bin/sh\n"));
        // Relocatable objects, core dumps, Wasmtime's own compiled code,
        // a bare or truncated header: no program.
        assert!(!is_linux_executable_header(&elf(1, 0)));
        assert!(!is_linux_executable_header(&elf(4, 0)));
        assert!(!is_linux_executable_header(&elf(3, ELFOSABI_WASMTIME)));
        assert!(!is_linux_executable_header(b"\x7fELF\x02\x01\x01"));
        assert!(!is_linux_executable_header(b"\0asm\x01\0\0\0"));
    }

    #[test]
    fn dotdot_cannot_climb_above_the_root() {
        assert_eq!(
            rootfs_relative("/", "/../../etc/passwd"),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            rootfs_relative("/app", "../x.wasm"),
            PathBuf::from("x.wasm")
        );
        assert_eq!(
            rootfs_relative("/app", "./m.wasm"),
            PathBuf::from("app/m.wasm")
        );
    }

    #[test]
    fn bare_names_search_the_spec_path() {
        let env = vec!["PATH=/bin:/opt".to_string()];
        assert_eq!(
            candidates("m.wasm", "/", &env),
            vec![PathBuf::from("bin/m.wasm"), PathBuf::from("opt/m.wasm")]
        );
    }

    #[test]
    fn linux_executables_are_told_from_wasm() {
        let rootfs = tempfile::tempdir().unwrap();
        let bin = rootfs.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("sh"), elf(3, 0)).unwrap();
        std::fs::write(bin.join("run"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(bin.join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("link")).unwrap();
        let spec_for = |arg0: &str| {
            let process = oci_spec::runtime::ProcessBuilder::default()
                .args(vec![arg0.to_string()])
                .env(vec!["PATH=/bin".to_string()])
                .build()
                .unwrap();
            oci_spec::runtime::SpecBuilder::default()
                .process(process)
                .build()
                .unwrap()
        };
        for (arg0, linux) in [
            ("/bin/sh", true),
            ("sh", true),
            ("link", true),
            ("/bin/run", true),
            ("/bin/app.wasm", false),
            ("/missing", false),
            ("/bin", false),
        ] {
            assert_eq!(
                is_linux_executable(rootfs.path(), &spec_for(arg0)),
                linux,
                "{arg0}"
            );
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs_as_in_the_container() {
        let rootfs = tempfile::tempdir().unwrap();
        let r = rootfs.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("bin/busybox"), elf(2, 0)).unwrap();
        // Alpine's layout: absolute links into the image.
        std::os::unix::fs::symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("../../bin/busybox", r.join("usr/bin/env")).unwrap();
        std::os::unix::fs::symlink("/../../../../bin/sh", r.join("deep")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let root = Dir::open_ambient_dir(r, ambient_authority()).unwrap();
        for link in ["bin/sh", "usr/bin/env", "deep"] {
            assert_eq!(
                resolve(&root, Path::new(link)).unwrap(),
                PathBuf::from("bin/busybox"),
                "{link}"
            );
        }
        let err = resolve(&root, Path::new("loop")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        // PATH search skips a folder that is a file.
        std::fs::write(r.join("notdir"), b"x").unwrap();
        let env = vec!["PATH=/notdir:/bin".to_string()];
        let (found, _) = find(&root, "sh", "/", &env).unwrap().unwrap();
        assert_eq!(found, PathBuf::from("bin/busybox"));
    }

    #[test]
    fn symlinks_out_of_the_rootfs_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("tool"), elf(2, 0)).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("tool"), rootfs.path().join("abs")).unwrap();
        let process = oci_spec::runtime::ProcessBuilder::default()
            .args(vec!["/abs".to_string()])
            .build()
            .unwrap();
        let spec = oci_spec::runtime::SpecBuilder::default()
            .process(process)
            .build()
            .unwrap();
        assert!(!is_linux_executable(rootfs.path(), &spec));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the guest-supplied path, the result stays inside the rootfs.
        #[test]
        fn resolved_paths_stay_inside_the_rootfs(cwd in "(/|[a-z./]{0,12})", path in "[a-z./]{0,24}") {
            let rel = rootfs_relative(&cwd, &path);
            prop_assert!(rel.is_relative());
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        }
    }
}
