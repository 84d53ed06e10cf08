//! What `start` answers containerd: the shim's socket address, and on
//! containerd 2.x the version of the task API the shim serves (3).
//!
//! containerd 2.x reads a JSON answer, `{"version":3,"address":…,"protocol":
//! "ttrpc"}`, as its own runc shim gives it. For a shim of version 3, the
//! containers of a pod are connected straight to the socket of the pod's
//! sandbox, with no `start` run for each, and deleting one runs no `delete`
//! after it (core/runtime/v2/shim_manager.go). Version 2 costs each container
//! of a pod two more runs of this binary: a `start` that only finds the pod's
//! shim (about 5 ms of StartContainer), and a `delete` once its task is gone.
//! The server answers `containerd.task.v3.Task` beside `containerd.task.v2.Task`
//! (third_party/containerd-shim); the two are the same on the wire.
//!
//! containerd 1.7 refuses version 3 ("unsupported shim version"), and 1.6
//! takes the whole answer as the address, so they get the bare address.
//! containerd tells a shim nothing of its own version (`MAX_SHIM_VERSION` is 2
//! on all of them), so the shim reads the Go build information of the process
//! that runs `start`, containerd itself: 2.x's main package is
//! `github.com/containerd/containerd/v2/cmd/containerd`. Anything else (1.x, a
//! containerd built into another program, a parent that is not containerd, an
//! unreadable binary) gets the bare address, which every version takes.

use std::path::Path;

use anyhow::{Context, Result};
use object::read::elf::{FileHeader, SectionHeader};
use object::read::ReadCache;

/// The main package of containerd 2.x, and of nothing older.
const CONTAINERD_V2_MAIN: &str = "github.com/containerd/containerd/v2/";
/// `.go.buildinfo` holds a header, the Go version and the module
/// information: a few hundred bytes. Anything much larger is not that.
const MAX_BUILDINFO: u64 = 64 * 1024;

/// The answer to `start` for a shim listening on `address`.
pub fn start_answer(address: &str) -> String {
    if parent_is_containerd_v2() {
        serde_json::json!({"version": 3, "address": address, "protocol": "ttrpc"}).to_string()
    } else {
        address.to_string()
    }
}

fn parent_is_containerd_v2() -> bool {
    let exe = format!("/proc/{}/exe", std::os::unix::process::parent_id());
    match main_package(Path::new(&exe)) {
        Ok(Some(path)) => path.starts_with(CONTAINERD_V2_MAIN),
        Ok(None) => false,
        Err(err) => {
            tracing::debug!("cannot read the build information of {exe}: {err:#}");
            false
        }
    }
}

/// The main package path a Go binary was built from (the `path` line of its
/// `.go.buildinfo` section), or None for a binary that is not Go's or has
/// no such line. Reads the ELF header, the section headers and that section
/// only.
fn main_package(exe: &Path) -> Result<Option<String>> {
    let file = std::fs::File::open(exe).with_context(|| format!("open {}", exe.display()))?;
    let data = ReadCache::new(file);
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(&data) else {
        return Ok(None);
    };
    let endian = header.endian().context("ELF byte order")?;
    let sections = header.sections(endian, &data).context("ELF sections")?;
    let Some((_, section)) = sections.section_by_name(endian, b".go.buildinfo") else {
        return Ok(None);
    };
    if section.sh_size(endian) > MAX_BUILDINFO {
        return Ok(None);
    }
    let bytes = section.data(endian, &data).context("read .go.buildinfo")?;
    Ok(path_line(bytes))
}

/// The value of the `path\t…` line of Go's module information.
fn path_line(buildinfo: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(buildinfo);
    let start = text.find("path\t")? + "path\t".len();
    let line = text[start..].split('\n').next()?;
    Some(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_line_is_the_main_package() {
        let info = b"\xff Go buildinf:\x08\x02\x00\x00go1.24.4\xcf\x04path\tgithub.com/containerd/containerd/v2/cmd/containerd\nbuild\t-buildmode=exe\n";
        assert_eq!(
            path_line(info).as_deref(),
            Some("github.com/containerd/containerd/v2/cmd/containerd")
        );
        assert_eq!(path_line(b"no module information"), None);
    }

    #[test]
    fn a_binary_that_is_not_go_s_has_no_main_package() {
        // This test binary is Rust's: an ELF file without .go.buildinfo.
        let me = std::env::current_exe().unwrap();
        assert_eq!(main_package(&me).unwrap(), None);
    }

    #[test]
    fn the_bare_address_when_the_parent_is_not_containerd() {
        // cargo runs the tests; it is not containerd 2.x.
        assert_eq!(start_answer("unix:///x"), "unix:///x");
    }
}
