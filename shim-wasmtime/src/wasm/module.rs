//! Finding the module inside a container's rootfs and telling what it is.
//!
//! The rootfs comes from an image, so every path in it is hostile: the module
//! is opened through a capability handle on the rootfs, which refuses `..`
//! and symlinks (absolute or relative) that lead outside it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::lifecycle::entrypoint;

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
    /// A core WebAssembly module (a WASI preview 1 guest).
    CoreModule,
    /// A WebAssembly component (see `guest::identify` for which kinds run).
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
    let found =
        entrypoint::find(&root, arg0, cwd, env).with_context(|| format!("module {arg0}"))?;
    if let Some((rel, meta)) = found {
        let guest = format!("/{}", rel.display());
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

    }
}
