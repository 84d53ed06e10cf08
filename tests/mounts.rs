//! Bind mounts inside the container's tree, as runc mounts them: single
//! files as well as folders, read-only where asked, for modules and
//! components, through `ctr` and through CRI (the pod's `/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf`, and `/dev/termination-log`); and an
//! image whose symlinks point a mount's destination elsewhere only ever
//! reaches its own files.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::files;
use harness::cri::{log_lines, Cri};
use harness::{bind_mount, Containerd, RUNTIME};

#[test]
fn single_files_and_folders_are_mounted_where_the_spec_says() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let greeting = tmp.path().join("greeting");
    std::fs::write(&greeting, "hello from a file mount")?;
    let log = tmp.path().join("termination-log");
    std::fs::write(&log, "")?;
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol)?;
    let ro_file = bind_mount(&greeting, "/etc/greeting", true);
    let rw_file = bind_mount(&log, "/dev/termination-log", false);
    let rw_dir = bind_mount(&vol, "/data/vol", false);
    let mounts = [ro_file.as_str(), rw_file.as_str(), rw_dir.as_str()];
    for (kind, image) in [("p1", cd.import("files")?), ("p2", cd.import("files-p2")?)] {
        let id = |n: &str| format!("{kind}-{n}");
        let out = files(&cd, &image, &id("r"), &mounts, &["read", "/etc/greeting"])?.ok()?;
        assert_eq!(out.stdout, "hello from a file mount", "{kind}");

        let out = files(
            &cd,
            &image,
            &id("w"),
            &mounts,
            &["write", "/etc/greeting", "x"],
        )?;
        assert_eq!(out.code, Some(1), "{kind}: a read-only file mount: {out:?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{kind}: {out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&greeting)?,
            "hello from a file mount"
        );

        let msg = format!("{kind} says goodbye");
        let args = ["write", "/dev/termination-log", msg.as_str()];
        files(&cd, &image, &id("t"), &mounts, &args)?.ok()?;
        assert_eq!(std::fs::read_to_string(&log)?, msg, "{kind}");

        files(
            &cd,
            &image,
            &id("d"),
            &mounts,
            &["write", "/data/vol/f", "in the volume"],
        )?
        .ok()?;
        assert_eq!(std::fs::read_to_string(vol.join("f"))?, "in the volume");
        // `..` from a mount is the rootfs's folder it sits in, as in a
        // container; the mountpoints the shim made are there.
        let out = files(&cd, &image, &id("l"), &mounts, &["ls", "/data/vol/.."])?.ok()?;
        assert_eq!(out.stdout, "vol\n", "{kind}");
    }
    // A read-only root keeps its read-write mounts writable, as runc does.
    let image = cd.import("files")?;
    let ro_root = |id: &str, args: &[&str]| {
        let mut a = vec![
            "run",
            "--rm",
            "--read-only",
            "--runtime",
            RUNTIME,
            "--mount",
        ];
        a.extend([rw_dir.as_str(), image.as_str(), id, "/files.wasm"]);
        a.extend_from_slice(args);
        cd.ctr(&a)
    };
    ro_root("ro1", &["write", "/data/vol/g", "still writable"])?.ok()?;
    assert_eq!(std::fs::read_to_string(vol.join("g"))?, "still writable");
    let out = ro_root("ro2", &["write", "/new-file", "x"])?;
    assert_eq!(out.code, Some(1), "a read-only root: {out:?}");
    // Every mount went with its container.
    assert!(cd.mounts().is_empty(), "{:?}", cd.mounts());
    cd.assert_clean()
}

/// An image whose layer holds `/files.wasm`, the folders `etc`, `a` and
/// `a/b`, and the given symlinks.
fn image_with_links(tar_path: &Path, name: &str, links: &[(&str, &str)]) -> Result<()> {
    let mut b = e2e::files_layer()?;
    for dir in ["etc/", "a/", "a/b/"] {
        e2e::append_dir(&mut b, dir)?;
    }
    for (path, target) in links {
        e2e::append_symlink(&mut b, path, target)?;
    }
    e2e::files_image(b.into_inner()?, name, tar_path)
}

#[test]
fn an_image_cannot_point_a_mount_at_the_hosts_files() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    // Host files the image's links name by their absolute host paths.
    let victim_file = tmp.path().join("victim-file");
    std::fs::write(&victim_file, "the host's file")?;
    let victim_dir = tmp.path().join("victim-dir");
    std::fs::create_dir(&victim_dir)?;
    let host_file = victim_file.to_string_lossy().into_owned();
    let host_dir = victim_dir.to_string_lossy().into_owned();
    let tar = tmp.path().join("links.tar");
    image_with_links(
        &tar,
        "docker.io/test/links:1",
        &[
            ("etc/hosts", &host_file),
            ("etc/resolv.conf", "../../../../run/resolv.conf"),
            ("etc/motd", "../run/motd"),
            ("data", &host_dir),
            // A dangling relative link below a linked folder: `..` is taken
            // from where the folder really is (`a/b`), so it leads to `a/y`.
            ("alias", "a/b"),
            ("a/b/x", "../y"),
        ],
    )?;
    cd.import_tar(&tar)?;
    let content = tmp.path().join("content");
    std::fs::write(&content, "mounted")?;
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol)?;
    std::fs::write(vol.join("in-vol"), "volume")?;
    let m1 = bind_mount(&content, "/etc/hosts", true);
    let m2 = bind_mount(&content, "/etc/resolv.conf", true);
    let m3 = bind_mount(&vol, "/data/x", true);
    let m4 = bind_mount(&content, "/etc/motd", true);
    let m5 = bind_mount(&content, "/alias/x", true);
    let mounts = [
        m1.as_str(),
        m2.as_str(),
        m3.as_str(),
        m4.as_str(),
        m5.as_str(),
    ];
    let image = "docker.io/test/links:1";
    let read = |id: &str, path: &str| -> Result<String> {
        Ok(files(&cd, image, id, &mounts, &["read", path])?
            .ok()?
            .stdout)
    };
    // Each mount landed where the link leads inside the rootfs (an absolute
    // target, or `..` past the top, starts again at the rootfs's top), as in
    // a container. The guest finds it there, and through a link that stays
    // inside; absolute links and `..` past the top are still refused when a
    // guest follows them (issue 13, part 3).
    assert_eq!(read("ln1", &host_file)?, "mounted");
    assert_eq!(read("ln2", "/run/resolv.conf")?, "mounted");
    assert_eq!(read("ln3", &format!("{host_dir}/x/in-vol"))?, "volume");
    assert_eq!(read("ln4", "/etc/motd")?, "mounted");
    assert_eq!(read("ln5", "/a/y")?, "mounted");
    assert_eq!(read("ln6", "/alias/x")?, "mounted");
    // The host's files behind the links' targets were never touched.
    assert_eq!(std::fs::read_to_string(&victim_file)?, "the host's file");
    assert_eq!(std::fs::read_dir(&victim_dir)?.count(), 0);
    let tmp_dev = std::fs::metadata(tmp.path())?.dev();
    assert_eq!(std::fs::metadata(&victim_file)?.dev(), tmp_dev);
    assert!(cd.mounts().is_empty(), "{:?}", cd.mounts());
    cd.assert_clean()
}

/// What CRI mounts into every container as single files, and the
/// termination log the kubelet reads, for a wasm container of a pod; its
/// `/dev` holds them beside the devices, `/dev/stderr` reaches the
/// container's log, and a ConfigMap volume's links lead to its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_s_wasm_container_sees_its_hostname_hosts_and_termination_log() -> Result<()> {
    let cd = Containerd::start_cri(&Default::default())?;
    let image = cd.import("files")?;
    let tmp = tempfile::tempdir()?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri
        .run_pod("mounts-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let log = tmp.path().join("termination-log");
    std::fs::write(&log, "")?;
    // A ConfigMap volume as the kubelet lays it out: the data in a dated
    // folder, `..data` linking to it, and each key linking through `..data`.
    let config = tmp.path().join("config");
    std::fs::create_dir_all(config.join("..2026_12_01_00_00_00.1"))?;
    std::fs::write(
        config.join("..2026_12_01_00_00_00.1/app.conf"),
        "from a config map",
    )?;
    std::os::unix::fs::symlink("..2026_12_01_00_00_00.1", config.join("..data"))?;
    std::os::unix::fs::symlink("..data/app.conf", config.join("app.conf"))?;
    let mounts = [
        (log.as_path(), "/dev/termination-log", false),
        (config.as_path(), "/etc/config", true),
    ];
    for (name, args) in [
        ("hostname", vec!["read", "/etc/hostname"]),
        ("hosts", vec!["read", "/etc/hosts"]),
        ("resolv", vec!["stat", "/etc/resolv.conf"]),
        ("term", vec!["write", "/dev/termination-log", "done here"]),
        ("dev", vec!["ls", "/dev"]),
        (
            "devout",
            vec!["write", "/dev/stderr", "through /dev/stderr"],
        ),
        ("configmap", vec!["read", "/etc/config/app.conf"]),
    ] {
        let mut command = vec!["/files.wasm"];
        command.extend(args);
        let id = cri
            .start_with_mounts(&pod, name, &image, &command, &mounts)
            .await?;
        let status = cri.wait_exited(&id).await?;
        let want = |lines: &[String]| match name {
            "hostname" => lines == [hostname.trim().to_string()],
            "hosts" => lines.iter().any(|l| l.contains("localhost")),
            "resolv" => lines == ["exists".to_string()],
            // The pod's /dev: the devices, the streams, and the mounts CRI
            // puts there.
            "dev" => ["null", "urandom", "stdout", "fd", "termination-log"]
                .iter()
                .all(|want| lines.iter().any(|l| l == want)),
            "devout" => lines == ["through /dev/stderr".to_string()],
            "configmap" => lines == ["from a config map".to_string()],
            _ => true,
        };
        // containerd copies output into the log on its own time.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = log_lines(&pod, name).unwrap_or_default();
        while !want(&lines) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            lines = log_lines(&pod, name).unwrap_or_default();
        }
        assert_eq!(status.exit_code, 0, "{name}: {lines:?}");
        assert!(want(&lines), "{name}: {lines:?}");
        cri.remove_container(&id).await?;
    }
    assert_eq!(std::fs::read_to_string(&log)?, "done here");
    cri.remove_pod(&pod).await?;
    let mounts = cd.mounts();
    assert!(
        mounts.iter().all(|m| !m.contains("/rootfs")),
        "a container's mounts are left: {mounts:?}"
    );
    Ok(())
}
