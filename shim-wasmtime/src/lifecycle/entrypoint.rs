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
    let mut out = PathBuf::new();
    for c in joined.components() {
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

/// The first candidate for `args[0]` that exists in `root`: its path relative
/// to the rootfs and its metadata (symlinks followed, inside the rootfs).
pub fn find(
    root: &Dir,
    arg0: &str,
    cwd: &str,
    env: &[String],
) -> std::io::Result<Option<(PathBuf, Metadata)>> {
    for rel in candidates(arg0, cwd, env) {
        if rel.as_os_str().is_empty() {
            // The rootfs itself: report it, so the caller says it is no file.
            return Ok(Some((rel, root.dir_metadata()?)));
        }
        match root.metadata(&rel) {
            Ok(m) => return Ok(Some((rel, m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether a file's first bytes make it something Linux executes natively:
/// an ELF binary or a `#!` script.
pub fn is_linux_executable_header(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") || head.starts_with(b"#!")
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
    let mut head = [0u8; 4];
    let read = root
        .open(&rel)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    is_linux_executable_header(&head[..read])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::write(bin.join("sh"), b"\x7fELF\x02\x01\x01").unwrap();
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
    fn symlinks_out_of_the_rootfs_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("tool"), b"\x7fELF\x02").unwrap();
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
