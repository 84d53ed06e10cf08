//! Symbolic links resolve as inside the container: an absolute link, or
//! `..` past the top, resolves inside the container's tree, for every path
//! operation, into bind mounts with their read-only flag, and never to the
//! host's files. For modules and components.

use std::path::Path;

use anyhow::Result;
use harness::{bind_mount, Containerd, Output};

/// An image for `wasm` (a `files` build) at `/files.wasm`, with versioned
/// data behind an absolute link, a time zone link, a link to `/etc/shadow`,
/// a link above the root, and a link into a mount at `/mnt/vol`.
fn image(tar_path: &Path, name: &str, wasm: &Path) -> Result<()> {
    let wasm = std::fs::read(wasm)?;
    let mut b = tar::Builder::new(Vec::new());
    e2e::append_file(&mut b, "files.wasm", &wasm)?;
    e2e::append_file(&mut b, "data/v2/config.txt", b"v2 config")?;
    e2e::append_file(&mut b, "usr/share/zoneinfo/UTC", b"TZif2 UTC")?;
    e2e::append_file(&mut b, "etc/shadow", b"the image's shadow")?;
    e2e::append_file(&mut b, "etc/motd", b"the image's motd")?;
    e2e::append_dir(&mut b, "mnt/vol/")?;
    for (path, target) in [
        ("data/current", "/data/v2"),
        ("etc/localtime", "/usr/share/zoneinfo/UTC"),
        ("shadow-link", "/etc/shadow"),
        ("up", "../../../../.."),
        ("vol-link", "/mnt/vol/in.txt"),
    ] {
        e2e::append_symlink(&mut b, path, target)?;
    }
    e2e::files_image(b.into_inner()?, name, tar_path)
}

#[test]
fn links_resolve_inside_the_container() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol)?;
    std::fs::write(vol.join("in.txt"), "in the volume")?;
    let mount = bind_mount(&vol, "/mnt/vol", true);
    let examples = harness::examples_dir();
    for (kind, wasm) in [
        ("p1", examples.join("files.wasm")),
        ("p2", examples.join("p2/files.wasm")),
    ] {
        let name = format!("docker.io/test/links-{kind}:1");
        let tar = tmp.path().join(format!("links-{kind}.tar"));
        image(&tar, &name, &wasm)?;
        cd.import_tar(&tar)?;
        let run = |id: &str, args: &[&str]| -> Result<Output> {
            e2e::files(&cd, &name, &format!("{kind}-{id}"), &[mount.as_str()], args)
        };
        let ok = |id: &str, args: &[&str]| -> Result<String> { Ok(run(id, args)?.ok()?.stdout) };

        // Reading, listing and stat through absolute links.
        assert_eq!(
            ok("r", &["read", "/data/current/config.txt"])?,
            "v2 config",
            "{kind}"
        );
        assert_eq!(
            ok("ls", &["ls", "/data/current"])?,
            "config.txt\n",
            "{kind}"
        );
        assert_eq!(
            ok("kind", &["kind", "/data/current"])?,
            "directory\n",
            "{kind}"
        );
        assert_eq!(
            ok("tz", &["read", "/etc/localtime"])?,
            "TZif2 UTC",
            "{kind}"
        );
        assert_eq!(
            ok("rl", &["readlink", "/data/current"])?,
            "/data/v2\n",
            "{kind}"
        );

        // The host's files are never reached: the image's own are.
        assert_eq!(
            ok("shadow", &["read", "/shadow-link"])?,
            "the image's shadow",
            "{kind}"
        );
        assert_eq!(
            ok("dotdot", &["read", "/../../../etc/motd"])?,
            "the image's motd",
            "{kind}"
        );
        assert_eq!(
            ok("up", &["read", "/up/etc/motd"])?,
            "the image's motd",
            "{kind}"
        );
        assert_eq!(ok("upls", &["ls", "/up/data"])?, "current\nv2\n", "{kind}");

        // Into a read-only mount, with its flag.
        assert_eq!(
            ok("vol", &["read", "/vol-link"])?,
            "in the volume",
            "{kind}"
        );
        let out = run("volw", &["write", "/vol-link", "x"])?;
        assert_eq!(out.code, Some(1), "{kind}: {out:?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{kind}: {out:?}"
        );

        // Create, rename, link and remove through links, each checked by
        // the next command of the same run (each run has a fresh rootfs).
        let steps = [
            "write",
            "/data/current/new.txt",
            "made",
            "--",
            "read",
            "/data/v2/new.txt",
            "--",
            "rename",
            "/data/current/config.txt",
            "/data/current/moved.txt",
            "--",
            "read",
            "/data/v2/moved.txt",
            "--",
            "unlink",
            "/data/current/moved.txt",
            "--",
            "ls",
            "/data/v2",
            "--",
            "symlink",
            "/data/v2",
            "/data/made",
            "--",
            "readlink",
            "/data/made",
            "--",
            "read",
            "/data/made/new.txt",
            "--",
            "unlink",
            "/etc/localtime",
            "--",
            "ls",
            "/etc",
            "--",
            "stat",
            "/usr/share/zoneinfo/UTC",
        ];
        assert_eq!(
            ok("ops", &steps)?,
            "made\
             v2 config\
             new.txt\n\
             /data/v2\n\
             made\
             motd\nshadow\n\
             exists\n",
            "{kind}"
        );
    }
    cd.assert_clean()
}
