//! The container's `/dev`, as runc gives one: `null`, `zero`, `full`,
//! `random` and `urandom` behaving as on Linux, `/dev/stdin`, `/dev/stdout`,
//! `/dev/stderr` and `/dev/fd/N` reaching the task's streams, nothing else
//! of the host's, no files made there by a guest, and a node an image ships
//! in its own `/dev` unusable. For modules and components; the pod's `/dev`
//! through CRI is in `mounts.rs`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::files;
use harness::{Containerd, RUNTIME};

#[test]
fn a_guest_has_the_devices_of_a_container() -> Result<()> {
    let cd = Containerd::start()?;
    for (kind, image) in [("p1", cd.import("files")?), ("p2", cd.import("files-p2")?)] {
        let id = |n: &str| format!("{kind}-{n}");

        let out = files(&cd, &image, &id("ls"), &[], &["ls", "/dev"])?.ok()?;
        assert_eq!(
            out.stdout, "fd\nfull\nnull\nrandom\nstderr\nstdin\nstdout\nurandom\nzero\n",
            "{kind}: /dev holds the devices and the streams, nothing else"
        );
        let out = files(&cd, &image, &id("lsfd"), &[], &["ls", "/dev/fd"])?.ok()?;
        assert_eq!(out.stdout, "0\n1\n2\n", "{kind}");
        let out = files(&cd, &image, &id("kind"), &[], &["kind", "/dev/null"])?.ok()?;
        assert_eq!(out.stdout, "character device\n", "{kind}");

        // null: writes vanish, reads end at once.
        files(
            &cd,
            &image,
            &id("wnull"),
            &[],
            &["write", "/dev/null", "gone"],
        )?
        .ok()?;
        let out = files(&cd, &image, &id("rnull"), &[], &["read", "/dev/null"])?.ok()?;
        assert_eq!(out.stdout, "", "{kind}");

        let out = files(&cd, &image, &id("zero"), &[], &["head", "/dev/zero", "16"])?.ok()?;
        assert_eq!(out.stdout.trim(), "00".repeat(16), "{kind}");

        let out = files(&cd, &image, &id("full"), &[], &["write", "/dev/full", "x"])?;
        assert_eq!(out.code, Some(1), "{kind}: a write to /dev/full: {out:?}");
        assert!(
            out.stderr.contains("No space left on device"),
            "{kind}: {out:?}"
        );

        for dev in ["/dev/random", "/dev/urandom"] {
            let a = files(&cd, &image, &id("rand1"), &[], &["head", dev, "32"])?.ok()?;
            let b = files(&cd, &image, &id("rand2"), &[], &["head", dev, "32"])?.ok()?;
            assert_eq!(a.stdout.trim().len(), 64, "{kind}: 32 bytes of {dev}");
            assert_ne!(
                a.stdout, b.stdout,
                "{kind}: {dev} gave the same bytes twice"
            );
            assert_ne!(a.stdout.trim(), "00".repeat(32), "{kind}: {dev}");
        }

        // The streams reach the task's output, by either name.
        for (path, to_stdout) in [
            ("/dev/stdout", true),
            ("/dev/fd/1", true),
            ("/dev/stderr", false),
            ("/dev/fd/2", false),
        ] {
            let text = format!("{kind} through {path}");
            let out = files(&cd, &image, &id("out"), &[], &["write", path, &text])?.ok()?;
            let (got, other) = if to_stdout {
                (&out.stdout, &out.stderr)
            } else {
                (&out.stderr, &out.stdout)
            };
            assert_eq!(got.trim(), text, "{kind}: {path}: {out:?}");
            assert!(!other.contains(&text), "{kind}: {path}: {out:?}");
        }

        // Nothing else of the host's, and no new files.
        for missing in ["/dev/tty", "/dev/ptmx", "/dev/kmsg", "/dev/shm"] {
            let out = files(&cd, &image, &id("miss"), &[], &["stat", missing])?;
            assert_eq!(out.code, Some(1), "{kind}: {missing}: {out:?}");
            assert!(
                out.stderr.contains("No such file or directory"),
                "{kind}: {missing}: {out:?}"
            );
        }
        let out = files(&cd, &image, &id("new"), &[], &["write", "/dev/new", "x"])?;
        assert_eq!(out.code, Some(1), "{kind}: a file made in /dev: {out:?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{kind}: {out:?}"
        );
    }
    cd.assert_clean()
}

#[test]
fn dev_stdin_reads_the_task_s_input() -> Result<()> {
    let cd = Containerd::start()?;
    for (kind, image) in [("p1", cd.import("files")?), ("p2", cd.import("files-p2")?)] {
        let id = format!("{kind}-stdin");
        let mut child = cd
            .ctr_command(&[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                &image,
                &id,
                "/files.wasm",
                "read",
                "/dev/stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // More than the pipes between ctr and the guest hold at once; written
        // while the output is read, as the guest echoes it.
        let input = format!("{kind} line\n").repeat(20_000);
        let mut stdin = child.stdin.take().context("no stdin")?;
        let writer = std::thread::spawn({
            let input = input.clone();
            move || stdin.write_all(input.as_bytes())
        });
        let out = harness::cmd::wait(child, Duration::from_secs(30))
            .with_context(|| format!("{kind}: the guest never saw the end of /dev/stdin"))?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the stdin writer panicked"))??;
        assert_eq!(out.code, Some(0), "{kind}: {}", out.stderr);
        assert!(
            out.stdout == input,
            "{kind}: /dev/stdin gave {} bytes of {}",
            out.stdout.len(),
            input.len()
        );
    }
    cd.assert_clean()
}

/// An image's own `/dev` is covered: a node it ships there is neither
/// listed nor usable.
#[test]
fn an_image_s_own_dev_is_covered() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let mut b = e2e::files_layer()?;
    e2e::append_dir(&mut b, "dev")?;
    // /dev/mem, 1:1: all of the host's memory, were it usable.
    let mut node = tar::Header::new_ustar();
    node.set_entry_type(tar::EntryType::Char);
    node.set_device_major(1)?;
    node.set_device_minor(1)?;
    node.set_mode(0o666);
    node.set_size(0);
    node.set_mtime(0);
    b.append_data(&mut node, "dev/mem", std::io::empty())?;
    let tar = tmp.path().join("own-dev.tar");
    let image = "docker.io/test/own-dev:1";
    e2e::files_image(b.into_inner()?, image, &tar)?;
    cd.import_tar(&tar)?;
    let out = files(&cd, image, "own-ls", &[], &["ls", "/dev"])?.ok()?;
    assert!(!out.stdout.contains("mem"), "{out:?}");
    let out = files(&cd, image, "own-mem", &[], &["head", "/dev/mem", "16"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    cd.assert_clean()
}
