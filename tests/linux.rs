//! Linux containers on the wasm runtime: the shim hands them to runc's shim,
//! so one runtime (and one Kubernetes RuntimeClass) serves a pod's pause
//! container and sidecars beside its wasm containers.

use std::time::Duration;

use anyhow::Result;
use harness::{Containerd, RUNTIME};

/// Puts containers into one shim, as a pod would be.
const GROUP: &str = "io.containerd.runc.v2.group=linux-test";

#[test]
fn a_linux_binary_runs_under_runc_with_its_output_and_exit_code() -> Result<()> {
    let cd = Containerd::start()?;
    let busybox = cd.import("busybox")?;
    let out = cd
        .run_rm(
            &busybox,
            "lx-echo",
            &["/busybox", "echo", "hello from runc"],
        )?
        .ok()?;
    assert_eq!(out.stdout, "hello from runc\n");

    let out = cd.run_rm(&busybox, "lx-exit", &["/busybox", "sh", "-c", "exit 7"])?;
    assert_eq!(out.code, Some(7), "{out:?}");

    // The same C program as the hello example, compiled natively.
    let native = cd.import("hello-native")?;
    let out = cd.run_rm(&native, "lx-native", &[])?.ok()?;
    assert!(out.stdout.starts_with("Hello"), "{out:?}");

    // A missing Linux binary is runc's error, and it reaches ctr.
    let out = cd.run_rm(&busybox, "lx-missing", &["/no-such-binary"])?;
    assert_ne!(out.code, Some(0));
    cd.assert_clean()
}

#[test]
fn a_linux_sidecar_and_a_wasm_guest_share_one_shim() -> Result<()> {
    let cd = Containerd::start()?;
    let busybox = cd.import("busybox")?;
    let sleep = cd.import("sleep")?;
    let hello = cd.import("hello")?;

    let sidecar_pid = cd.run_detached(
        "sidecar",
        &[
            "--runtime",
            RUNTIME,
            "--label",
            GROUP,
            &busybox,
            "sidecar",
            "/busybox",
            "sleep",
            "600",
        ],
    )?;
    let wasm_pid = cd.run_detached(
        "guest",
        &["--runtime", RUNTIME, "--label", GROUP, &sleep, "guest"],
    )?;
    // The sidecar is a real process of its own; the wasm guest lives in the shim.
    assert_ne!(sidecar_pid, wasm_pid);
    let comm = std::fs::read_to_string(format!("/proc/{sidecar_pid}/comm"))?;
    assert_eq!(comm.trim(), "busybox");
    assert_eq!(
        cd.shim_pids(),
        vec![wasm_pid],
        "one wasm shim for the group"
    );
    assert_eq!(cd.runc_shim_pids().len(), 1, "one runc shim for the group");

    // Calls for the sidecar reach runc: exec works there, and not on wasm.
    let out = cd
        .ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "sidecar",
            "/busybox",
            "echo",
            "exec ok",
        ])?
        .ok()?;
    assert_eq!(out.stdout, "exec ok\n");
    let out = cd.ctr(&["tasks", "exec", "--exec-id", "e2", "guest", "/x"])?;
    assert!(out.stderr.contains("Exec"), "{out:?}");

    // A wasm task started in the same group after the sidecar still runs.
    let out = cd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--label",
            GROUP,
            &hello,
            "hello",
        ])?
        .ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");

    // Killing the sidecar ends only the sidecar.
    cd.kill_and_remove("sidecar")?;
    cd.wait_status("guest", "RUNNING")?;
    harness::wait_until(
        Duration::from_secs(1),
        "the runc shim goes with its last container",
        || cd.runc_shim_pids().is_empty(),
    )?;
    cd.kill_and_remove("guest")?;
    cd.assert_clean()
}

#[test]
fn a_killed_wasm_shim_takes_its_linux_containers_down_cleanly() -> Result<()> {
    let cd = Containerd::start()?;
    let busybox = cd.import("busybox")?;
    let sidecar = cd.run_detached(
        "side-k9",
        &[
            "--runtime",
            RUNTIME,
            "--label",
            GROUP,
            &busybox,
            "side-k9",
            "/busybox",
            "sleep",
            "600",
        ],
    )?;
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };

    // containerd runs `shim delete`, which has runc's shim kill and delete
    // the container and then shut down.
    harness::wait_until(
        Duration::from_secs(20),
        "the sidecar still runs after its shim died",
        || !harness::pid_alive(sidecar),
    )?;
    let _ = cd.ctr(&["tasks", "delete", "side-k9"]);
    cd.ctr(&["containers", "delete", "side-k9"])?.ok()?;
    cd.assert_clean()
}
