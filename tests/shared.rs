//! Shared mode (`WASMTIME_SHIM_SHARED=1` in containerd's environment):
//! containers of no pod or group share one shim per namespace, which stays
//! warm for a while after its last task and then exits, leaving nothing.
//!
//! Its own test binary: the setting goes into this process's environment,
//! which the private containerd and its shims inherit.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::{Containerd, RUNTIME};

const LINGER_MS: u64 = 1500;

#[test]
fn containers_share_one_warm_shim_that_exits_when_idle() -> Result<()> {
    std::env::set_var("WASMTIME_SHIM_SHARED", "1");
    std::env::set_var("WASMTIME_SHIM_LINGER_MS", LINGER_MS.to_string());
    let cd = Containerd::start()?;
    let sleep = cd.import("sleep")?;
    let hello = cd.import("hello")?;

    let a = cd.run_detached("a", &["--runtime", RUNTIME, &sleep, "a"])?;
    let b = cd.run_detached("b", &["--runtime", RUNTIME, &sleep, "b"])?;
    assert_eq!(a, b, "both tasks run in the one shared shim");
    assert_eq!(cd.shim_pids(), vec![a]);
    // It joins no container's cgroup: it serves unrelated containers.
    assert!(cd.cgroups().is_empty(), "{:?}", cd.cgroups());

    // A container that names a group still gets that group's shim.
    let g = cd.run_detached(
        "g",
        &[
            "--runtime",
            RUNTIME,
            "--label",
            "io.containerd.runc.v2.group=own",
            &sleep,
            "g",
        ],
    )?;
    assert_ne!(g, a);
    cd.kill_and_remove("g")?;
    // The group's own shim exits once its last task is deleted (its output
    // pumps may hold it up to a second more).
    harness::wait_until(Duration::from_secs(5), "the group's shim to exit", || {
        !harness::pid_alive(g)
    })?;

    // The first container goes; the shim serves on, and logs through the
    // bundles of the containers that came after it.
    cd.kill_and_remove("a")?;
    for i in 0..3 {
        let out = cd.run_rm(&hello, &format!("h{i}"), &[])?.ok()?;
        assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    }
    assert_eq!(cd.shim_pids(), vec![a], "still the one shim");
    cd.kill_and_remove("b")?;
    let log = cd.log();
    for id in ["h0", "h1", "h2"] {
        assert!(
            log.contains(&format!("create id=\"{id}\"")),
            "the shim's log line for {id} reached containerd"
        );
    }

    // Idle now: it stays warm for the linger time, then exits.
    let idle_since = Instant::now();
    std::thread::sleep(Duration::from_millis(LINGER_MS / 3));
    assert_eq!(cd.shim_pids(), vec![a], "warm for the next container");
    let out = cd.run_rm(&hello, "late", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    assert_eq!(cd.shim_pids(), vec![a], "the warm shim served it");
    let left = Duration::from_millis(LINGER_MS * 4 + 12_000).saturating_sub(idle_since.elapsed());
    harness::wait_until(left, "the idle shared shim did not exit", || {
        cd.shim_pids().is_empty()
    })?;
    // And the next container starts a new one.
    let out = cd.run_rm(&hello, "after", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    cd.assert_clean()
}
