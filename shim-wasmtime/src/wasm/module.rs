//! Finding the module inside a container's rootfs and telling what it is.
//!
//! The rootfs comes from an image, so every path in it is hostile: the module
//! is opened through a capability handle on the rootfs, which refuses `..`
//! and symlinks (absolute or relative) that lead outside it.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// The PATH a spec gets when its env has none, as in runc.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Modules larger than this are refused before they are read.
pub const MAX_MODULE_BYTES: u64 = 512 * 1024 * 1024;

/// `args[0]` names nothing in the rootfs. The module may then come from
/// the content store instead.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// What a file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A core WebAssembly module: what this shim runs.
    CoreModule,
    /// A WebAssembly component.
    Component,
}

/// Looks at a file's first bytes.
pub fn classify(bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    if bytes.starts_with(b"\x7fELF") {
        bail!(
            "the file is a native ELF binary (or precompiled native code), not WebAssembly; \
             the shim compiles every module itself and never loads native code from an image"
        );
    }
    if !bytes.starts_with(b"\0asm") {
        bail!("the file is not WebAssembly: it does not start with the \\0asm header");
    }
    match bytes.get(4..8) {
        Some([1, 0, 0, 0]) => Ok(Format::CoreModule),
        Some([_, _, 1, 0]) => Ok(Format::Component),
        Some(v) => bail!("unknown WebAssembly version {v:02x?}"),
        None => bail!("the file is truncated: it ends inside the WebAssembly header"),
    }
}

/// Turns `path` (absolute, or relative to `cwd`) into a path relative to the
/// rootfs. `..` is resolved lexically and can never climb above the root,
/// as in a real chroot.
fn rootfs_relative(cwd: &str, path: &str) -> PathBuf {
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
fn candidates(arg0: &str, cwd: &str, env: &[String]) -> Vec<PathBuf> {
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

/// Reads the module named by `args[0]` from the rootfs. Returns the guest path
/// it was found at and its bytes.
pub fn read_from_rootfs(
    rootfs: &Path,
    arg0: &str,
    cwd: &str,
    env: &[String],
) -> Result<(String, Vec<u8>)> {
    if arg0.is_empty() {
        bail!("process.args[0] is empty: it must name the .wasm module");
    }
    let root = Dir::open_ambient_dir(rootfs, ambient_authority())
        .with_context(|| format!("open rootfs {}", rootfs.display()))?;
    for rel in candidates(arg0, cwd, env) {
        let guest = format!("/{}", rel.display());
        if rel.as_os_str().is_empty() {
            bail!("module {guest} is not a regular file");
        }
        let meta = match root.metadata(&rel) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("module {guest}")),
        };
        if !meta.is_file() {
            bail!("module {guest} is not a regular file");
        }
        if meta.len() > MAX_MODULE_BYTES {
            bail!(
                "module {guest} is {} bytes, over the limit of {MAX_MODULE_BYTES}",
                meta.len()
            );
        }
        let bytes = root
            .read(&rel)
            .with_context(|| format!("read module {guest}"))?;
        return Ok((guest, bytes));
    }
    Err(anyhow::Error::new(NotFound(format!(
        "module {arg0} not found in the container's rootfs (process.args[0] must name a .wasm file in the image)"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert_eq!(classify(b"\0asm\x01\0\0\0").unwrap(), Format::CoreModule);
        assert_eq!(classify(b"\0asm\x0d\0\x01\0").unwrap(), Format::Component);
        assert!(classify(b"").unwrap_err().to_string().contains("empty"));
        assert!(classify(b"hello")
            .unwrap_err()
            .to_string()
            .contains("not WebAssembly"));
        assert!(classify(b"\x7fELF\x02")
            .unwrap_err()
            .to_string()
            .contains("native"));
        assert!(classify(b"\0asm\x01")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
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
    fn symlinks_out_of_the_rootfs_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.wasm"), b"\0asm\x01\0\0\0").unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.wasm"),
            rootfs.path().join("abs.wasm"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../../../tmp",
            rootfs.path().join("up"),
        )
        .unwrap();
        assert!(read_from_rootfs(rootfs.path(), "/abs.wasm", "/", &[]).is_err());
        let through_rel = format!(
            "/up/{}/secret.wasm",
            outside.path().file_name().unwrap().to_string_lossy()
        );
        assert!(read_from_rootfs(rootfs.path(), &through_rel, "/", &[]).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes get an answer, never a panic.
        #[test]
        fn classify_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify(&bytes);
        }

        /// Whatever the guest-supplied path, the result stays inside the rootfs.
        #[test]
        fn resolved_paths_stay_inside_the_rootfs(cwd in "(/|[a-z./]{0,12})", path in "[a-z./]{0,24}") {
            let rel = rootfs_relative(&cwd, &path);
            prop_assert!(rel.is_relative());
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        }
    }
}
