//! The shim's own flags: `-v` answers as containerd's runc shim does, and
//! `-info` writes the `RuntimeInfo` protobuf containerd 2.x reads to
//! introspect a runtime. Both with no environment, from any folder, with no
//! containerd; and `ctr plugins inspect-runtime` on containerd 2.x.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;
use harness::{shim_bin_dir, Containerd, RUNTIME, SHIM_BINARY};

/// Runs the shim binary with `args`, an empty environment and `/` as its
/// working folder, feeding `stdin`.
fn shim(args: &[&str], stdin: &[u8]) -> Result<std::process::Output> {
    let mut child = Command::new(shim_bin_dir().join(SHIM_BINARY))
        .args(args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run the shim")?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

#[test]
fn version_flag_answers_like_the_runc_shim() -> Result<()> {
    for flag in ["-v", "-version"] {
        let out = shim(&[flag], b"")?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{SHIM_BINARY}:"), "{text}");
        assert_eq!(
            lines[1],
            format!("  Version:  {}", env!("CARGO_PKG_VERSION"))
        );
        let revision = lines[2].strip_prefix("  Revision: ").context("revision")?;
        assert!(
            revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
            "a git commit: {text}"
        );
        let wasmtime = lines[3].strip_prefix("  Wasmtime: ").context("wasmtime")?;
        assert!(
            wasmtime.split('.').count() == 3
                && wasmtime.split('.').all(|n| n.parse::<u32>().is_ok()),
            "a Wasmtime version: {text}"
        );
        assert!(out.stderr.is_empty(), "{out:?}");
    }
    Ok(())
}

#[test]
fn info_flag_writes_runtime_info() -> Result<()> {
    let out = shim(&["-info"], b"")?;
    assert!(out.status.success(), "{out:?}");
    let info = RuntimeInfo::parse_from_bytes(&out.stdout)?;
    assert_eq!(info.name, RUNTIME);
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    assert!(info.options.is_none());
    assert_eq!(
        info.features.type_url,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    );
    let features: serde_json::Value = serde_json::from_slice(&info.features.value)?;
    assert_eq!(features["ociVersionMin"], "1.0.0");

    // Options containerd passes on stdin come back as they were.
    let options = Any {
        type_url: "example.com/Options".into(),
        value: vec![1, 2, 3],
        ..Default::default()
    };
    let out = shim(&["-info"], &options.write_to_bytes()?)?;
    assert!(out.status.success(), "{out:?}");
    let info = RuntimeInfo::parse_from_bytes(&out.stdout)?;
    assert_eq!(info.options.type_url, "example.com/Options");
    assert_eq!(info.options.value, vec![1, 2, 3]);

    // Garbage on stdin: a clear error and a failed exit, no panic.
    let out = shim(&["-info"], b"\xff\xff\xff")?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runtime options"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn containerd_introspects_the_runtime() -> Result<()> {
    let cd = Containerd::start()?;
    if cd.version.starts_with('1') {
        // 1.x has no runtime introspection (`ctr plugins inspect-runtime`
        // and the shim's -info flag came with 2.0).
        return Ok(());
    }
    let out = cd
        .ctr(&["plugins", "inspect-runtime", "--runtime", RUNTIME])?
        .ok()?;
    assert!(out.stdout.contains(RUNTIME), "{}", out.stdout);
    assert!(out.stdout.contains("ociVersionMin"), "{}", out.stdout);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
    Ok(())
}
