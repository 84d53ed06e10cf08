//! Resource limits from the OCI spec, enforced by Wasmtime, and the Stats a
//! task reports: a memory limit fails growth inside the guest, a CPU quota
//! throttles a spinning guest, and guests that misbehave end only themselves.

use std::time::Duration;

use anyhow::{Context, Result};
use harness::{Containerd, RUNTIME};

#[test]
fn memory_limit_fails_growth_inside_the_guest() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("memhog")?;
    // 16 MiB for the whole linear memory: the guest's malloc fails, and it
    // reports what it got, then exits normally.
    let out = cd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "16777216",
            &image,
            "m1",
            "/memhog.wasm",
            "64",
        ])?
        .ok()?;
    let got: u64 = out
        .stdout
        .trim()
        .strip_prefix("allocated ")
        .and_then(|s| s.strip_suffix(" MiB"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected output {:?}", out.stdout))?;
    assert!(
        got > 0 && got < 16,
        "allocated {got} MiB under a 16 MiB limit"
    );

    // Without the limit the same guest gets all 64 MiB it asks for.
    let out = cd.run_rm(&image, "m2", &["/memhog.wasm", "64"])?.ok()?;
    assert_eq!(out.stdout.trim(), "allocated 64 MiB");
    cd.assert_clean()
}

#[test]
fn a_module_too_big_for_its_limit_fails_to_start_with_a_reason() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("bad-huge-memory")?;
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "67108864",
        &image,
        "big1",
    ])?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("big1"), "{}", out.stderr);
    assert!(out.stderr.contains("memory"), "{}", out.stderr);
    cd.assert_clean()
}

#[test]
fn cpu_quota_throttles_a_spinning_guest() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("spin")?;
    // 10% of a CPU against no quota, side by side in the same containerd.
    cd.run_detached(
        "q1",
        &[
            "--runtime",
            RUNTIME,
            "--cpu-quota",
            "10000",
            "--cpu-period",
            "100000",
            &image,
            "q1",
        ],
    )?;
    cd.run_detached("q2", &["--runtime", RUNTIME, &image, "q2"])?;
    let (used1, used2) = cd.cpu_in_window("q1", "q2", Duration::from_secs(2))?;
    // Not a timing: a share. The throttled guest must use far less CPU than
    // the free one, and at most about its 10% quota of the 2 s.
    assert!(
        used1 < 600_000_000,
        "throttled guest used {used1} ns of CPU in 2 s"
    );
    assert!(used1 * 3 < used2, "throttled {used1} ns vs free {used2} ns");
    for id in ["q1", "q2"] {
        cd.kill_and_remove(id)?;
    }
    cd.assert_clean()
}

#[test]
fn stats_report_memory_of_a_running_guest() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    cd.run_detached(
        "st1",
        &[
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "33554432",
            &image,
            "st1",
        ],
    )?;
    let usage = cd.metric("st1", "memory.usage_in_bytes")?;
    let limit = cd.metric("st1", "memory.limit_in_bytes")?;
    assert!(usage >= 65536, "a C guest has at least one page: {usage}");
    assert_eq!(limit, 33_554_432);
    cd.kill_and_remove("st1")?;
    cd.assert_clean()
}

#[test]
fn the_shim_joins_its_container_cgroup_and_leaves_it() -> Result<()> {
    let cd = Containerd::start()?;
    let image = cd.import("sleep")?;
    let shim = cd.run_detached(
        "cg1",
        &[
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "33554432",
            &image,
            "cg1",
        ],
    )?;
    let dir = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(&cd.namespace)
        .join("cg1");
    if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
        assert!(
            procs.lines().any(|p| p == shim.to_string()),
            "shim {shim} not in {}: {procs}",
            dir.display()
        );
        let limit: u64 = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))?
            .trim()
            .parse()?;
        assert_eq!(
            limit,
            33_554_432 + (64 << 20),
            "the guest's limit plus the shim's allowance"
        );
    } else {
        let procs = std::fs::read_to_string(
            std::path::Path::new("/sys/fs/cgroup")
                .join(&cd.namespace)
                .join("cg1/cgroup.procs"),
        )?;
        assert!(procs.lines().any(|p| p == shim.to_string()));
    }
    cd.kill_and_remove("cg1")?;
    // assert_clean also checks that no cgroup of the namespace is left.
    cd.assert_clean()
}
