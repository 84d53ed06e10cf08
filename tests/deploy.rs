//! `deploy/`: the node installer's config edits, proven by starting
//! containerd on the result and running a pod through CRI with the handler,
//! and the Kubernetes manifests, validated against the Kubernetes schemas.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use harness::cri::{wait_log_line, Cri};
use harness::Containerd;
use toml_edit::{value, DocumentMut};

const HANDLER: &str = "wasmtime";

/// Runs a tool this test needs, with a hint on how to get it; returns
/// whether it succeeded, and its stdout and stderr together.
fn run_tool(bin: &Path, args: &[&str], hint: &str) -> Result<(bool, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let out = harness::cmd::run(cmd, Duration::from_secs(120))
        .with_context(|| format!("run {} ({hint})", bin.display()))?;
    Ok((out.success(), format!("{}{}", out.stdout, out.stderr)))
}

fn installer(args: &[&str]) -> Result<String> {
    let bin = harness::shim_bin_dir().join("wasmtime-node-installer");
    let (ok, text) = run_tool(&bin, args, "cargo build --release -p node-installer")?;
    ensure!(ok, "installer {args:?} failed: {text}");
    Ok(text)
}

/// What this machine needs on top of any config, and nothing about the
/// runtime: the locally imported pause image as the sandbox, no OOM score
/// changes (root lacks CAP_SYS_RESOURCE here), a private opt folder, no NRI.
fn for_this_machine(config: &str, dir: &Path) -> Result<String> {
    let mut doc: DocumentMut = config.parse()?;
    let opt = dir.join("opt").to_string_lossy().into_owned();
    doc["plugins"]["io.containerd.internal.v1.opt"]["path"] = value(opt);
    if doc["version"].as_integer() == Some(3) {
        doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] =
            value(harness::CRI_SANDBOX_IMAGE);
        doc["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] = value(true);
        doc["plugins"]["io.containerd.nri.v1.nri"]["disable"] = value(true);
    } else {
        let cri = &mut doc["plugins"]["io.containerd.grpc.v1.cri"];
        cri["sandbox_image"] = value(harness::CRI_SANDBOX_IMAGE);
        cri["restrict_oom_score_adj"] = value(true);
    }
    Ok(doc.to_string())
}

/// Runs a pod with the handler and a wasm container; returns the error of
/// the first CRI call that failed.
async fn run_hello_pod(cd: &Containerd, logs: &Path) -> Result<()> {
    let hello = cd.import("hello")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri.run_pod("installed", logs, HANDLER).await?;
    let id = cri.start_container(&pod, "hello", &hello, &[]).await?;
    let status = cri.wait_exited(&id).await?;
    ensure!(status.exit_code == 0, "{status:?}");
    wait_log_line(&pod, "hello", 0, "Hello from WebAssembly!").await?;
    cri.remove_container(&id).await?;
    cri.remove_pod(&pod).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_edits_a_real_config_that_containerd_then_serves() -> Result<()> {
    // containerd's own default config: version 2 for 1.x, version 3 for 2.x.
    let containerd = harness::containerd_bin_dir().join("containerd");
    let out = Command::new(&containerd)
        .args(["config", "default"])
        .output()?;
    ensure!(out.status.success(), "containerd config default failed");
    let original = String::from_utf8(out.stdout)?;

    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().context("folder")?)?;
    std::fs::write(&config, &original)?;
    // A config may hold registry credentials: its mode must survive the edit.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    let bin_dir = tmp.path().join("bin");
    let shim = harness::shim_bin_dir().join(harness::SHIM_BINARY);
    let (config_s, bin_s, shim_s) = (
        config.to_string_lossy().into_owned(),
        bin_dir.to_string_lossy().into_owned(),
        shim.to_string_lossy().into_owned(),
    );
    let args = |action| {
        vec![
            action,
            "--config",
            &config_s,
            "--bin-dir",
            &bin_s,
            "--shim",
            &shim_s,
            "--restart",
            "none",
        ]
    };

    let out = installer(&args("install"))?;
    assert!(out.contains("runtime wasmtime added"), "{out}");
    assert_eq!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777,
        0o600
    );
    let installed_shim: PathBuf = bin_dir.join(harness::SHIM_BINARY);
    assert_eq!(std::fs::read(&installed_shim)?, std::fs::read(&shim)?);
    let edited = std::fs::read_to_string(&config)?;
    let doc: DocumentMut = edited.parse()?;
    let plugin = if doc["version"].as_integer() == Some(3) {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    assert_eq!(
        doc["plugins"][plugin]["containerd"]["runtimes"][HANDLER]["runtime_type"].as_str(),
        Some(installed_shim.to_string_lossy().as_ref()),
        "an absolute runtime_type in the right table:\n{edited}"
    );
    assert_eq!(
        doc["plugins"][plugin]["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2"),
        "runc kept"
    );

    // Again: nothing changes, byte for byte.
    let out = installer(&args("install"))?;
    assert!(
        out.contains("unchanged") && out.contains("up to date"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&config)?, edited);

    // containerd starts on the edited config and serves the handler, with
    // the installed copy of the shim.
    let cd = Containerd::start_cri_with_config(|dir| for_this_machine(&edited, dir))?;
    run_hello_pod(&cd, &tmp.path().join("logs")).await?;
    let cd = tokio::task::spawn_blocking(move || cd.assert_clean().map(|()| cd)).await??;
    drop(cd);

    // Uninstall: the config is containerd's default again, byte for byte,
    // the shim is gone, and containerd no longer knows the handler.
    let out = installer(&args("uninstall"))?;
    assert!(out.contains("runtime wasmtime removed"), "{out}");
    assert_eq!(std::fs::read_to_string(&config)?, original);
    assert!(!installed_shim.exists());
    let remaining: Vec<_> = std::fs::read_dir(config.parent().context("folder")?)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        remaining,
        vec!["config.toml"],
        "no backup or temp file left"
    );
    let cd = Containerd::start_cri_with_config(|dir| for_this_machine(&original, dir))?;
    let err = run_hello_pod(&cd, &tmp.path().join("logs2"))
        .await
        .expect_err("the handler must be gone");
    assert!(format!("{err:#}").contains(HANDLER), "{err:#}");
    Ok(())
}

/// The Kubernetes manifests in `deploy/kubernetes`, against the schemas of
/// a Kubernetes release, offline, with PyPI's kubernetes-validate
/// (installed by scripts/install-deps.sh).
#[test]
fn the_kubernetes_manifests_validate() -> Result<()> {
    let dir = harness::workspace().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "manifests in {}: {files:?}",
        dir.display()
    );
    let tool = harness::workspace().join("target/tools/kv-venv/bin/kubernetes-validate");
    // The oldest Kubernetes still commonly run, and the newest the tool knows.
    for version in ["1.30.0", "1.37.0"] {
        let mut args = vec!["--strict", "--kubernetes-version", version];
        args.extend(files.iter().filter_map(|f| f.to_str()));
        let (ok, text) = run_tool(&tool, &args, "scripts/install-deps.sh installs it")?;
        assert!(ok, "Kubernetes {version}: {text}");
        let passed = text.matches(" passed for resource ").count();
        assert!(passed >= files.len(), "Kubernetes {version}: {text}");
    }

    // The RuntimeClass waits for the label the installer sets, and names
    // the handler the installer registers.
    let rc = std::fs::read_to_string(dir.join("runtimeclass.yaml"))?;
    assert!(rc.contains("handler: wasmtime"), "{rc}");
    assert!(
        rc.contains("io.containerd.wasmtime/installed: \"true\""),
        "{rc}"
    );
    Ok(())
}
