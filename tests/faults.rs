//! Faults around the shim: it is killed, containerd restarts, it has nothing
//! left to do. Each must end with nothing left behind.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::{pid_alive, Containerd, RUNTIME};

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    let shim = cd.run_detached("k9", &["--runtime", RUNTIME, &image, "k9"])?;
    assert!(
        !cd.mounts().is_empty(),
        "the rootfs should be mounted while the task runs"
    );
    // The shim's socket, as its bundle records it.
    let address = std::fs::read_to_string(cd.bundle("k9").join("address"))?;
    let socket = std::path::PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };

    // containerd notices, runs `shim delete`, and drops the task.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = cd.ctr(&["tasks", "ls", "-q"])?.stdout;
        if !tasks.contains("k9") || cd.ctr(&["tasks", "ls"])?.stdout.contains("STOPPED") {
            break;
        }
        if Instant::now() > deadline {
            bail!("containerd still lists k9 as running after its shim died:\n{tasks}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = cd.ctr(&["tasks", "delete", "k9"]);
    cd.ctr(&["containers", "delete", "k9"])?.ok()?;
    // `shim delete` removed the dead shim's socket file.
    assert!(!socket.exists(), "{} is left behind", socket.display());
    cd.assert_clean()
}

#[test]
fn tasks_survive_a_containerd_restart_which_then_sees_them_exit() -> Result<()> {
    let mut cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    // Two guests: one ends while containerd is down, one after it is back.
    cd.run_detached(
        "r1",
        &["--runtime", RUNTIME, &image, "r1", "/sleep.wasm", "1"],
    )?;
    let r2 = cd.run_detached(
        "r2",
        &["--runtime", RUNTIME, &image, "r2", "/sleep.wasm", "4"],
    )?;

    cd.restart()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pid_alive(r2), "the shim of r2 must survive the restart");
    cd.wait_status("r2", "RUNNING")?;
    cd.wait_status("r1", "STOPPED")?;
    cd.wait_status("r2", "STOPPED")?;
    for id in ["r1", "r2"] {
        let del = cd.ctr(&["tasks", "delete", id])?.ok()?;
        assert!(!del.stdout.contains("exit status"), "{del:?}");
        cd.ctr(&["containers", "delete", id])?.ok()?;
    }
    cd.assert_clean()
}

#[test]
fn the_shim_exits_once_its_last_task_is_deleted() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    let shim = cd.run_detached(
        "x1",
        &["--runtime", RUNTIME, &image, "x1", "/sleep.wasm", "3600"],
    )?;
    assert!(pid_alive(shim));
    cd.ctr(&["tasks", "kill", "x1"])?.ok()?;
    cd.wait_status("x1", "STOPPED")?;
    assert!(
        pid_alive(shim),
        "a stopped but undeleted task keeps its shim"
    );
    cd.ctr(&["tasks", "delete", "x1"])?.ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(shim) {
        if Instant::now() > deadline {
            bail!("shim {shim} still running after its last task was deleted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cd.ctr(&["containers", "delete", "x1"])?.ok()?;
    cd.assert_clean()
}
