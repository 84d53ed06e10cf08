//! Isolation: what a guest can reach, and what one guest can do to others in
//! the same shim. Device nodes in an image, hard links, other tasks' files
//! and environment, descriptor exhaustion and huge output.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use harness::{bind_mount, Containerd, RUNTIME};

/// Tasks of these tests share a shim through runc's grouping annotation.
const GROUP: &str = "io.containerd.runc.v2.group=isolation";

/// An image whose layer holds the files guest and two character devices:
/// `/devzero` (1:5) and `/devmem` (1:1). containerd creates them when it
/// unpacks the layer, as root.
fn image_with_devices(tar_path: &Path) -> Result<()> {
    let mut b = e2e::files_layer()?;
    for (name, minor) in [("devzero", 5), ("devmem", 1)] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1)?;
        h.set_device_minor(minor)?;
        h.set_mode(0o666);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, std::io::empty())?;
    }
    e2e::files_image(b.into_inner()?, "docker.io/test/devices:1", tar_path)
}

#[test]
fn device_nodes_in_an_image_cannot_be_opened() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let tar = tmp.path().join("devices.tar");
    image_with_devices(&tar)?;
    cd.import_tar(&tar)?;
    for (id, dev) in [("dev1", "/devzero"), ("dev2", "/devmem")] {
        let out = cd.run_rm(
            "docker.io/test/devices:1",
            id,
            &["/files.wasm", "read", dev],
        )?;
        assert_eq!(out.code, Some(1), "reading {dev} must fail: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{dev} gave data: {} bytes",
            out.stdout.len()
        );
    }
    cd.assert_clean()
}

#[test]
fn hard_links_cannot_reach_outside() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("files")?;
    let rw = tempfile::tempdir()?;
    let ro = tempfile::tempdir()?;
    std::fs::write(ro.path().join("in.txt"), "read-only data")?;
    let rw_mount = bind_mount(rw.path(), "/data", false);
    let ro_mount = bind_mount(ro.path(), "/ro", true);
    for (id, from, to) in [
        ("hl1", "/data/../../../../etc/passwd", "/data/pw"),
        ("hl2", "/ro/in.txt", "/data/in-link.txt"),
        ("hl3", "/files.wasm", "/data/guest.wasm"),
    ] {
        let out = cd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &rw_mount,
            "--mount",
            &ro_mount,
            &image,
            id,
            "/files.wasm",
            "link",
            from,
            to,
        ])?;
        assert_eq!(out.code, Some(1), "link {from} -> {to} must fail: {out:?}");
    }
    assert_eq!(
        std::fs::read_dir(rw.path())?.count(),
        0,
        "nothing was linked into the mount"
    );
    assert_eq!(std::fs::metadata(ro.path().join("in.txt"))?.nlink(), 1);
    cd.assert_clean()
}

#[test]
fn tasks_cannot_see_each_others_files_or_environment() -> Result<()> {
    let cd = Containerd::start()?;
    let files = cd.import("files")?;
    let args_env = cd.import("args-env")?;
    let run = |id: &str, extra: &[&str], image: &str, args: &[&str]| {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, "--annotation", GROUP];
        a.extend_from_slice(extra);
        a.extend([image, id]);
        a.extend_from_slice(args);
        cd.ctr(&a)
    };
    // A writes a file into its rootfs; B, in the same shim, has its own.
    run(
        "ta",
        &[],
        &files,
        &["/files.wasm", "write", "/secret.txt", "task a"],
    )?
    .ok()?;
    let out = run("tb", &[], &files, &["/files.wasm", "read", "/secret.txt"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!out.stdout.contains("task a"));

    let out = run("tc", &["--env", "SECRET=task-c"], &args_env, &[])?.ok()?;
    assert!(out.stdout.contains("env:SECRET=task-c"));
    let out = run("td", &[], &args_env, &[])?.ok()?;
    assert!(!out.stdout.contains("SECRET"), "{}", out.stdout);
    cd.assert_clean()
}

#[test]
fn a_descriptor_hog_ends_only_itself() -> Result<()> {
    let cd = Containerd::start()?;
    let files = cd.import("files")?;
    let sleep = cd.import("sleep")?;
    let hello = cd.import("hello")?;
    let shim = cd.run_detached(
        "calm",
        &["--runtime", RUNTIME, "--annotation", GROUP, &sleep, "calm"],
    )?;

    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        GROUP,
        &files,
        "hog",
        "/files.wasm",
        "hog",
        "/files.wasm",
    ])?;
    // The hog hits the per-task handle limit and ends, saying why.
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(
        out.stderr.contains("open files and other handles"),
        "{}",
        out.stderr
    );

    // The shim and its other task are fine, and it still starts new ones.
    assert_eq!(cd.task_pid("calm")?, shim);
    cd.wait_status("calm", "RUNNING")?;
    let out = cd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            GROUP,
            &hello,
            "after",
        ])?
        .ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    cd.kill_and_remove("calm")?;
    cd.assert_clean()
}

#[test]
fn huge_output_reaches_the_client_whole() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("spew")?;
    let out = cd.run_rm(&image, "spew1", &["/spew.wasm", "64"])?.ok()?;
    assert_eq!(out.stdout.len(), 64 << 20);
    assert!(out.stdout.bytes().all(|b| b == b'x'));
    cd.assert_clean()
}
