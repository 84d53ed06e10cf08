//! The compiled-module cache, end to end: a module is compiled once and later
//! shims load it from disk; the cache folder is root-only; and compiled code
//! smuggled in through an image is refused, never loaded.

use anyhow::{bail, Context, Result};
use harness::Containerd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn cache_dir(cd: &Containerd) -> std::path::PathBuf {
    cd.state_dir().join("io.containerd.wasmtime.v1/modules")
}

fn log_count(cd: &Containerd, needle: &str) -> usize {
    cd.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_module_is_compiled_once_and_then_loaded_from_disk() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello")?;
    for i in 0..3 {
        // Each `ctr run` has a shim process of its own, so only the disk
        // cache can carry the compiled code from one to the next.
        let out = cd.run_rm(&image, &format!("c{i}"), &[])?.ok()?;
        assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    }
    assert_eq!(
        log_count(&cd, "INFO compiled"),
        1,
        "compiled more than once:\n{}",
        cd.log()
    );

    let dir = cache_dir(&cd);
    let meta = std::fs::metadata(&dir)?;
    assert_eq!(meta.uid(), 0, "the cache belongs to root");
    assert_eq!(
        meta.permissions().mode() & 0o077,
        0,
        "the cache is private to root"
    );
    let entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].file_name().to_string_lossy().ends_with(".cwasm"));
    cd.assert_clean()
}

#[test]
fn the_shim_compiles_in_a_child_and_maps_the_code_from_the_cache() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    let shim = cd.run_detached(
        "cc1",
        &[
            "--runtime",
            harness::RUNTIME,
            &image,
            "cc1",
            "/sleep.wasm",
            "60",
        ],
    )?;
    assert_eq!(
        log_count(&cd, "INFO compiled in a child process"),
        1,
        "{}",
        cd.log()
    );
    // The compiler has exited and left nothing in the cache but its entry.
    assert_eq!(harness::children(shim)?, Vec::<u32>::new());
    let entries: Vec<String> = std::fs::read_dir(cache_dir(&cd))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.len() == 1 && entries[0].ends_with(".cwasm"),
        "{entries:?}"
    );
    // The running guest's code is the entry, mapped from the file (shared
    // with any other shim that runs the guest), not compiled in the shim.
    let maps = std::fs::read_to_string(format!("/proc/{shim}/maps"))?;
    assert!(
        maps.lines()
            .any(|l| l.contains(" r-xp ") && l.ends_with(entries[0].as_str())),
        "the shim does not map {}:\n{maps}",
        entries[0]
    );
    cd.kill_and_remove("cc1")?;
    cd.assert_clean()
}

#[test]
fn without_a_disk_cache_the_shim_compiles_in_process() -> Result<()> {
    let cd = Containerd::start()?;
    cd.set_shim_env(&[("WASMTIME_SHIM_CACHE_DIR", "")])?;
    let image = cd.import("hello")?;
    let out = cd.run_rm(&image, "nc1", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    assert_eq!(log_count(&cd, "INFO compiled"), 1, "{}", cd.log());
    assert_eq!(log_count(&cd, "in a child process"), 0, "{}", cd.log());
    assert!(!cache_dir(&cd).exists());
    cd.assert_clean()
}

/// Runs hello once, lets `spoil` change the compiled-code cache entry that
/// run made, runs hello again, and checks that it was compiled again, both
/// times in a child: the shim's own memory never holds a compile.
fn recompiled_after(spoil: impl FnOnce(&Path) -> Result<()>) -> Result<Containerd> {
    let cd = Containerd::start()?;
    let image = cd.import("hello")?;
    cd.run_rm(&image, "first", &[])?.ok()?;
    let entry = std::fs::read_dir(cache_dir(&cd))?
        .flatten()
        .next()
        .context("no cache entry")?;
    spoil(&entry.path())?;
    let out = cd.run_rm(&image, "second", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    assert_eq!(log_count(&cd, "INFO compiled"), 2, "{}", cd.log());
    assert_eq!(log_count(&cd, "in a child process"), 2, "{}", cd.log());
    Ok(cd)
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() -> Result<()> {
    let cd = recompiled_after(|entry| {
        Ok(std::fs::write(
            entry,
            b"\x7fELF this is not what the shim wrote",
        )?)
    })?;
    cd.assert_clean()
}

#[test]
fn a_cache_entry_that_passes_the_header_check_but_does_not_load_is_recompiled_in_a_child(
) -> Result<()> {
    let cd = recompiled_after(|entry| {
        // Another Wasmtime's code, as far as its engine section says
        // (format 0, then the 2-byte major version "48"): still an ELF file
        // of Wasmtime's by its header, so `holds` keeps it, and only
        // loading it fails.
        let mut code = std::fs::read(entry)?;
        let found: Vec<usize> = code
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"\x00\x0248")
            .map(|(at, _)| at)
            .collect();
        let [at] = found[..] else {
            bail!("the engine section's version, once, in the entry: found at {found:?}");
        };
        code[at + 2..at + 4].copy_from_slice(b"47");
        Ok(std::fs::write(entry, code)?)
    })?;
    assert_eq!(log_count(&cd, "did not load"), 1, "{}", cd.log());
    cd.assert_clean()
}

#[test]
fn precompiled_code_from_an_image_is_refused() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("hello")?;
    cd.run_rm(&image, "p1", &[])?.ok()?;
    // A real Wasmtime artifact, compiled by this very shim, packed as the
    // image's "module": it must still be refused, never deserialized.
    let entry = std::fs::read_dir(cache_dir(&cd))?
        .flatten()
        .next()
        .context("no cache entry")?;
    let tmp = tempfile::tempdir()?;
    let tar = tmp.path().join("precompiled.tar");
    harness::build_image(
        &entry.path(),
        "app.wasm",
        "docker.io/test/precompiled:1",
        &tar,
    )?;
    cd.import_tar(&tar)?;
    let out = cd.run_rm("docker.io/test/precompiled:1", "p2", &[])?;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("native"), "{}", out.stderr);
    cd.assert_clean()
}
