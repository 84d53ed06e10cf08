//! Through containerd's real CRI plugin, as the kubelet drives it: a pod on
//! the `wasmtime` handler whose two wasm containers (one from the tar-layer
//! image, one from the CNCF artifact, pulled from a loopback registry) run in
//! one shim, which plays the pod's sandbox itself (no pause process), beside
//! busybox sidecars that the shim hands to runc (with the pod's pause, started
//! for them), with everyone's output in CRI's log files.
//!
//! One test function, so that only one CRI containerd runs at a time: CRI
//! always works in the `k8s.io` namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::cri::{wait_log_line, Cri};
use harness::{oci_artifact, Containerd, CriOptions, Registry};

const HELLO: &str = "Hello from WebAssembly!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_wasm_containers_in_one_shim_beside_linux_ones() -> Result<()> {
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let hello = harness::examples_dir().join("hello.wasm");
    let hello = hello.to_string_lossy();

    // Which artifact this containerd can run through CRI: 1.6 only unpacks
    // one through the stream processor, from the variant that carries
    // rootfs.diff_ids; 1.7 and 2.x pull the standard artifact, and the shim
    // reads its module from the content store.
    let probe = Containerd::start()?;
    let is_16 = probe.version.starts_with("1.6");
    drop(probe);
    let form = if is_16 {
        "artifact-stream-processor"
    } else {
        "artifact"
    };

    let image_ref = reg.reference("cri/hello:image");
    let art_ref = reg.reference("cri/hello:artifact");
    for (reference, form, file) in [
        (&image_ref, "image", "image.tar"),
        (&art_ref, form, "art.tar"),
    ] {
        let tar = tmp.path().join(file);
        let tar = tar.to_string_lossy();
        oci_artifact(&[
            "build",
            &hello,
            "--name",
            reference,
            "--form",
            form,
            "--module-name",
            "app.wasm",
            "-o",
            &tar,
        ])?
        .ok()?;
        oci_artifact(&["push", &tar, reference])?.ok()?;
    }

    let mut cd = Containerd::start_cri(&CriOptions {
        registry: Some(reg.addr.clone()),
        stream_processor: is_16,
        ..Default::default()
    })?;
    let busybox = cd.import("busybox")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    cri.pull(&image_ref).await?;
    cri.pull(&art_ref).await?;

    let pod = cri
        .run_pod("wasm-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    let from_image = cri
        .start_container(&pod, "from-image", &image_ref, &[])
        .await?;
    let from_artifact = cri
        .start_container(&pod, "from-artifact", &art_ref, &["/app.wasm"])
        .await?;

    for (id, name) in [
        (&from_image, "from-image"),
        (&from_artifact, "from-artifact"),
    ] {
        let status = cri.wait_exited(id).await?;
        assert_eq!(status.exit_code, 0, "{name}: {status:?}");
        wait_log_line(&pod, name, 0, HELLO).await?;
    }
    // Both wasm containers: one pod, one shim, and no other process. The
    // shim plays the pod's sandbox itself: no pause, no runc shim.
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim per pod, found {shims:?}");
    assert_eq!(
        cd.runc_shim_pids(),
        Vec::<u32>::new(),
        "no pause, no runc shim"
    );
    assert_eq!(
        harness::children(shims[0])?,
        Vec::<u32>::new(),
        "the shim started no process"
    );

    // A Linux sidecar beside the wasm containers, in the same pod: it runs,
    // logs, answers an exec probe, and stops on StopContainer. It is the
    // first Linux container: the pod's pause starts for it, under runc.
    let sidecar = cri
        .start_container(
            &pod,
            "sidecar",
            &busybox,
            &[
                "/busybox",
                "sh",
                "-c",
                "echo sidecar up; exec /busybox sleep 600",
            ],
        )
        .await?;
    wait_log_line(&pod, "sidecar", 0, "sidecar up").await?;
    let (code, out) = cri
        .exec_sync(&sidecar, &["/busybox", "echo", "probe ok"])
        .await
        .context("ExecSync on the sidecar")?;
    assert_eq!((code, out.as_str()), (0, "probe ok\n"));
    assert_eq!(cd.shim_pids(), shims, "still the pod's one wasm shim");
    assert_eq!(cd.runc_shim_pids().len(), 1, "one runc shim per pod");
    // How containerd reached the pod's shim for the sidecar. 2.x, told task
    // API version 3 by the sandbox's `start`, connects a pod's container
    // straight to the pod's shim, and writes the bundle's `sandbox` file
    // only then. 1.x runs the binary's `start`, which writes `address`.
    let bundle = cd.bundle(&sidecar);
    let v3 = cd.version.starts_with('2');
    assert_eq!(
        (
            bundle.join("sandbox").exists(),
            bundle.join("address").exists()
        ),
        (v3, !v3),
        "containerd {}: (sandbox, address) files in {}",
        cd.version,
        bundle.display()
    );

    // A second sidecar shares the first one's IPC and UTS namespaces: the
    // pause's. Its IPC namespace is the pod's own, not the host's (its UTS
    // is the host's: the pod is on the host's network).
    let second = cri
        .start_container(&pod, "sidecar2", &busybox, &["/busybox", "sleep", "600"])
        .await?;
    let mut seen = Vec::new();
    for id in [&sidecar, &second] {
        let (code, out) = cri
            .exec_sync(
                id,
                &[
                    "/busybox",
                    "sh",
                    "-c",
                    "/busybox readlink /proc/self/ns/ipc; /busybox readlink /proc/self/ns/uts",
                ],
            )
            .await?;
        assert_eq!(code, 0, "{out}");
        seen.push(out);
    }
    assert_eq!(seen[0], seen[1], "the sidecars share IPC and UTS");
    let pause = pause_pid(&pod.id)?;
    let ns = |pid: &str, kind: &str| -> Result<String> {
        Ok(std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?
            .display()
            .to_string())
    };
    let pause = pause.to_string();
    assert_eq!(
        seen[0],
        format!("{}\n{}\n", ns(&pause, "ipc")?, ns(&pause, "uts")?),
        "the sidecars are in the pause's IPC and UTS namespaces"
    );
    assert_ne!(
        ns(&pause, "ipc")?,
        ns("self", "ipc")?,
        "the pod's IPC namespace is not the host's"
    );
    assert_eq!(
        cd.runc_shim_pids().len(),
        1,
        "still one runc shim, one pause"
    );

    // containerd restarts in the middle of the pod's life: the sidecar
    // still answers, and a new wasm container still starts.
    tokio::task::block_in_place(|| cd.restart())?;
    let mut cri = Cri::connect_ready(&cd.socket).await?;
    let (code, out) = cri
        .exec_sync(&sidecar, &["/busybox", "echo", "after restart"])
        .await
        .context("ExecSync on the sidecar after a containerd restart")?;
    assert_eq!((code, out.as_str()), (0, "after restart\n"));
    assert_eq!(cd.shim_pids(), shims, "the same shim");

    cri.stop_container(&second, 5).await?;
    cri.stop_container(&sidecar, 5).await?;
    let status = cri.wait_exited(&sidecar).await?;
    assert_eq!(
        status.exit_code,
        128 + 15,
        "SIGTERM ends the sidecar: {status:?}"
    );

    // The kubelet restarts a container in the same pod: a new attempt runs.
    let again = cri
        .start_attempt(&pod, "from-image", 1, &image_ref, &[])
        .await?;
    let status = cri.wait_exited(&again).await?;
    assert_eq!(status.exit_code, 0, "{status:?}");
    wait_log_line(&pod, "from-image", 1, HELLO).await?;

    // An exec probe on a wasm container gets a clear "unsupported" answer.
    let sleeper = cri
        .start_container(&pod, "sleeper", &harness::image_name("sleep"), &[])
        .await?;
    let err = cri.exec_sync(&sleeper, &["/bin/true"]).await;
    let err = err
        .err()
        .context("ExecSync on a wasm container must fail")?;
    assert!(err.message().contains("Exec is not implemented"), "{err:?}");
    assert_eq!(cd.shim_pids(), shims, "still the pod's one shim");

    cri.stop_container(&sleeper, 5).await?;
    for id in [
        &from_image,
        &from_artifact,
        &again,
        &sleeper,
        &sidecar,
        &second,
    ] {
        cri.remove_container(id).await?;
    }
    let removed = pod.id.clone();
    cri.remove_pod(&pod).await.context("remove the pod")?;
    gone(&cd, &removed, "the pause went with its pod").await?;

    // kill -9 of a pod's shim, with a wasm container and a sidecar (and so
    // the pause) running: containerd's cleanup (`shim delete`) stops what
    // runc runs too, and the pod is then removed cleanly.
    let (pod, sleeper, sidecar) =
        sleeper_and_sidecar(&mut cri, "killed-pod", tmp.path(), &busybox).await?;
    let shim = cd.shim_pids();
    assert_eq!(shim.len(), 1, "{shim:?}");
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shim[0] as i32, libc::SIGKILL) };
    for id in [&sleeper, &sidecar] {
        cri.wait_exited(id)
            .await
            .with_context(|| format!("{id} after kill -9 of the shim"))?;
    }
    for id in [&sleeper, &sidecar] {
        cri.remove_container(id).await?;
    }
    let killed = pod.id.clone();
    cri.remove_pod(&pod)
        .await
        .context("remove the pod whose shim was killed")?;
    gone(&cd, &killed, "the pause went with the killed shim's pod").await?;

    // The pod's pause exits on its own (kill -9): the sandbox ends with it,
    // before the pod's containers. Once they are removed too, the pod's
    // shim exits (on 2.x, Shutdown came only with the sandbox's delete,
    // while containers were left) and nothing is left behind.
    let (pod, sleeper, sidecar) =
        sleeper_and_sidecar(&mut cri, "pause-pod", tmp.path(), &busybox).await?;
    let pause = pause_pid(&pod.id)?;
    // SAFETY: kill(2) on the pause runc started for this test's pod.
    unsafe { libc::kill(pause as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cri.pod_ready(&pod).await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pod stayed ready without its pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&sleeper, &sidecar] {
        cri.stop_container(id, 0).await?;
        cri.remove_container(id).await?;
    }
    let ended = pod.id.clone();
    cri.remove_pod(&pod)
        .await
        .context("remove the pod whose pause exited")?;
    gone(&cd, &ended, "the pod whose pause exited").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cd.shim_pids().is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pod's shim stayed up with no task: {:?}",
            cd.shim_pids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 20 pods at once, each with a wasm container: all run, log and exit 0.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (mut cri, image, logs) = (
            cri.clone(),
            image_ref.clone(),
            tmp.path().join(format!("logs-{i}")),
        );
        set.spawn(async move {
            let pod = cri.run_pod(&format!("pod-{i}"), &logs, "wasmtime").await?;
            let id = cri.start_container(&pod, "hello", &image, &[]).await?;
            let status = cri.wait_exited(&id).await?;
            anyhow::ensure!(status.exit_code == 0, "pod-{i}: {status:?}");
            wait_log_line(&pod, "hello", 0, HELLO).await?;
            cri.remove_container(&id).await?;
            cri.remove_pod(&pod).await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    tokio::task::spawn_blocking(move || cd.assert_clean()).await?
}

/// A pod `name` of the `wasmtime` handler (logs under `dir`) running a
/// sleeping wasm container and a busybox sidecar (so the pod's pause too):
/// the pod, the sleeper's id and the sidecar's.
async fn sleeper_and_sidecar(
    cri: &mut Cri,
    name: &str,
    dir: &Path,
    busybox: &str,
) -> Result<(harness::cri::Pod, String, String)> {
    let pod = cri
        .run_pod(name, &dir.join(format!("logs-{name}")), "wasmtime")
        .await?;
    let sleeper = cri
        .start_container(&pod, "sleeper", &harness::image_name("sleep"), &[])
        .await?;
    let sidecar = cri
        .start_container(&pod, "sidecar", busybox, &["/busybox", "sleep", "600"])
        .await?;
    Ok((pod, sleeper, sidecar))
}

/// runc's state folder for a pod's pause (`<sandbox id>-pause`, in CRI's
/// `k8s.io` namespace).
fn pause_state(pod: &str) -> PathBuf {
    PathBuf::from(format!("/run/containerd/runc/k8s.io/{pod}-pause"))
}

/// The pid of the pod's pause, from runc's state.
fn pause_pid(pod: &str) -> Result<u32> {
    let path = pause_state(pod).join("state.json");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )?;
    state["init_process_pid"]
        .as_u64()
        .map(|p| p as u32)
        .with_context(|| format!("no init_process_pid in {}", path.display()))
}

/// Waits (up to 10 s) until pod `pod`'s pause is gone from runc and no runc
/// shim is left.
async fn gone(cd: &Containerd, pod: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shims = cd.runc_shim_pids();
        if shims.is_empty() && !pause_state(pod).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: runc shims {shims:?}, runc state of {pod}-pause: {}",
                pause_state(pod).exists()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
