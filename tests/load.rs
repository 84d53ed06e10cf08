//! Load: many tasks in a row and many at once through one shim, all exiting
//! 0, with nothing leaking: the shim's fds and threads, mounts, and state
//! folders are counted before and after.
//!
//! `LOAD_SEQUENTIAL` and `LOAD_CONCURRENT` size the run (default 1000 and 100).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::{Containerd, RUNTIME};

const GROUP: &str = "io.containerd.runc.v2.group=load";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    threads: usize,
    mounts: usize,
    state_dirs: usize,
}

fn footprint(cd: &Containerd, shim: u32) -> Footprint {
    Footprint {
        fds: count_dir(&format!("/proc/{shim}/fd")),
        threads: count_dir(&format!("/proc/{shim}/task")),
        mounts: cd.mounts().len(),
        state_dirs: cd.task_state_dirs().len(),
    }
}

/// Footprints settle a moment after the last task: blocking-pool threads
/// linger for a while before they exit. Wait for the figures to come back.
fn settled(cd: &Containerd, shim: u32, baseline: &Footprint) -> Footprint {
    let mut now = footprint(cd, shim);
    for _ in 0..150 {
        if now.fds <= baseline.fds
            && now.threads <= baseline.threads
            && now.mounts == baseline.mounts
            && now.state_dirs == baseline.state_dirs
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        now = footprint(cd, shim);
    }
    now
}

fn run_hello(cd: &Containerd, image: &str, id: &str) -> Result<()> {
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        GROUP,
        image,
        id,
    ])?;
    if !out.success() || out.stdout != "Hello from WebAssembly!\n" {
        // What the shim logged about this task, to tell where output went.
        let log = cd.log();
        let needle = format!("{id}-");
        let about: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("\"{id}\"")) || l.contains(&needle))
            .collect();
        bail!("task {id}: {out:?}\nits log lines:\n{}", about.join("\n"));
    }
    Ok(())
}

#[test]
fn many_tasks_in_a_row_and_at_once_leak_nothing() -> Result<()> {
    let sequential = env_count("LOAD_SEQUENTIAL", 1000);
    let concurrent = env_count("LOAD_CONCURRENT", 100);
    let cd = Containerd::start()?;
    let hello = cd.import("hello")?;
    let sleep = cd.import("sleep")?;
    // An anchor task keeps the shim alive between the tasks under load.
    let shim = cd.run_detached(
        "anchor",
        &[
            "--runtime",
            RUNTIME,
            "--annotation",
            GROUP,
            &sleep,
            "anchor",
        ],
    )?;
    // Warm up: the module cache, the runtime's thread pools.
    for i in 0..5 {
        run_hello(&cd, &hello, &format!("warm{i}"))?;
    }
    let baseline = settled(&cd, shim, &footprint(&cd, shim));

    for i in 0..sequential {
        run_hello(&cd, &hello, &format!("seq{i}"))
            .with_context(|| format!("after {i} tasks in a row"))?;
    }
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrent)
            .map(|i| {
                let (cd, hello) = (&cd, &hello);
                s.spawn(move || run_hello(cd, hello, &format!("par{i}")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {concurrent} concurrent tasks failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    assert_eq!(
        cd.task_pid("anchor")?,
        shim,
        "one shim served the whole load"
    );
    let after = settled(&cd, shim, &baseline);
    assert!(
        after.fds <= baseline.fds,
        "fds leaked: {baseline:?} -> {after:?}"
    );
    assert!(
        after.threads <= baseline.threads,
        "threads leaked: {baseline:?} -> {after:?}"
    );
    assert_eq!(after.mounts, baseline.mounts, "mounts leaked");
    assert_eq!(
        after.state_dirs, baseline.state_dirs,
        "state folders leaked"
    );

    cd.kill_and_remove("anchor")?;
    cd.assert_clean()
}
