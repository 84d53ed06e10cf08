//! Update: resizing a running wasm task, through containerd's Task API (as
//! containerd's own client sends it) and through CRI's
//! UpdateContainerResources (Kubernetes' in-place pod resize). The guest
//! feels the new limits at once, the shim's cgroup moves with them, and a
//! memory limit below what the guest holds is refused, changing nothing.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use harness::cri::{wait_log_line, Cri, LinuxContainerResources};
use harness::{wait_until, Containerd, CriOptions, RUNTIME};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// The shim's memory cgroup limit for container `id`: `Some(None)` where
/// the machine has no memory controller for it to read (v2 without the
/// controller delegated), so that the checks below run where they can.
fn shim_cgroup_memory_limit(cd: &Containerd, id: &str) -> Option<Option<u64>> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let file = if v1.exists() {
        v1.join(&cd.namespace)
            .join(id)
            .join("memory.limit_in_bytes")
    } else {
        let f = Path::new("/sys/fs/cgroup")
            .join(&cd.namespace)
            .join(id)
            .join("memory.max");
        if !f.exists() {
            return Some(None);
        }
        f
    };
    Some(std::fs::read_to_string(file).ok()?.trim().parse().ok())
}

/// Asserts the shim's cgroup memory limit where the machine can show it.
fn assert_shim_limit(cd: &Containerd, id: &str, want: u64, why: &str) {
    match shim_cgroup_memory_limit(cd, id) {
        Some(None) => {}
        got => assert_eq!(got, Some(Some(want)), "{why}"),
    }
}

#[test]
fn update_changes_a_running_guests_memory_and_cpu() -> Result<()> {
    let cd = Containerd::start()?;
    let memhog = cd.import("memhog")?;
    // Wants 40 MiB, may have 16: it holds what it got and retries.
    cd.run_detached(
        "up1",
        &[
            "--runtime",
            RUNTIME,
            "--memory-limit",
            &(16 * MIB).to_string(),
            &memhog,
            "up1",
            "/memhog.wasm",
            "40",
            "retry",
        ],
    )?;
    wait_until(
        Duration::from_secs(20),
        "memhog never reached its limit",
        || {
            cd.metric("up1", "memory.usage_in_bytes")
                .is_ok_and(|u| u > 12 * MIB)
        },
    )?;
    assert!(cd.metric("up1", "memory.usage_in_bytes")? <= 16 * MIB);
    assert_shim_limit(
        &cd,
        "up1",
        16 * MIB + 64 * MIB,
        "the guest's limit plus the shim's allowance",
    );

    // Raised to 64 MiB: the guest's retries succeed and it gets all 40.
    cd.update_task("up1", json!({"memory": {"limit": 64 * MIB}}))??;
    wait_until(
        Duration::from_secs(20),
        "memhog never grew past 16 MiB",
        || {
            cd.metric("up1", "memory.usage_in_bytes")
                .is_ok_and(|u| u >= 40 * MIB)
        },
    )?;
    assert_eq!(cd.metric("up1", "memory.limit_in_bytes")?, 64 * MIB);
    assert_shim_limit(
        &cd,
        "up1",
        64 * MIB + 64 * MIB,
        "the shim's cgroup moved with the guest's limit",
    );

    // Below what it holds: refused, and nothing changes.
    let err = cd
        .update_task("up1", json!({"memory": {"limit": 8 * MIB}}))?
        .expect_err("a limit below the guest's memory must be refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("below"), "{err:?}");
    assert!(err.message().contains("up1"), "{err:?}");
    assert_eq!(cd.metric("up1", "memory.limit_in_bytes")?, 64 * MIB);
    assert_shim_limit(&cd, "up1", 128 * MIB, "the shim's cgroup kept its size");

    // Not Linux resources: a clear error.
    let bad = cd.update_task("up1", json!({"memory": {"limit": "lots"}}))?;
    assert_eq!(
        bad.expect_err("malformed resources").code(),
        tonic::Code::InvalidArgument
    );
    cd.kill_and_remove("up1")?;

    // CPU: two spinners side by side; one is throttled to 10% of a CPU by
    // an Update, then freed again. Shares of the same windows, never
    // durations: throttled, it uses far less CPU than its free neighbour;
    // freed, about as much.
    let spin = cd.import("spin")?;
    cd.run_detached("up2", &["--runtime", RUNTIME, &spin, "up2"])?;
    cd.run_detached("up3", &["--runtime", RUNTIME, &spin, "up3"])?;
    cd.update_task(
        "up2",
        json!({"cpu": {"quota": 10_000, "period": 100_000}, "pids": {"limit": 10}}),
    )??;
    let (throttled, free) = cd.cpu_in_window("up2", "up3", Duration::from_secs(2))?;
    assert!(
        throttled * 3 < free,
        "throttled {throttled} ns vs its free neighbour's {free} ns"
    );
    // Out of the kernel's bounds: refused.
    let bad = cd.update_task("up2", json!({"cpu": {"period": 10}}))?;
    assert_eq!(
        bad.expect_err("a 10 µs period").code(),
        tonic::Code::InvalidArgument
    );
    cd.update_task("up2", json!({"cpu": {"quota": -1}}))??;
    let (lifted, free) = cd.cpu_in_window("up2", "up3", Duration::from_secs(2))?;
    assert!(
        lifted * 2 > free,
        "lifted {lifted} ns vs its free neighbour's {free} ns"
    );
    let log = cd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ignored") && l.contains("pids")),
        "the ignored pids limit is named in the log"
    );
    cd.kill_and_remove("up3")?;
    cd.kill_and_remove("up2")?;
    cd.assert_clean()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_resize_reaches_a_running_guest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start_cri(&CriOptions::default())?;
    let memhog = cd.import("memhog")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri
        .run_pod("resize-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    let limits = |memory: u64| LinuxContainerResources {
        memory_limit_in_bytes: memory as i64,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    let id = cri
        .start_with_resources(
            &pod,
            "hog",
            &memhog,
            &["/memhog.wasm", "40", "retry"],
            limits(16 * MIB),
        )
        .await?;
    wait_until(
        Duration::from_secs(20),
        "memhog never reached its limit",
        || {
            cd.metric(&id, "memory.usage_in_bytes")
                .is_ok_and(|u| u > 12 * MIB)
        },
    )?;
    assert_eq!(cd.metric(&id, "memory.limit_in_bytes")?, 16 * MIB);

    // Below what it holds: CRI gets the shim's refusal, and the guest keeps
    // its limit.
    let err = cri
        .update_resources(&id, limits(4 * MIB))
        .await
        .expect_err("a limit below the guest's memory must be refused");
    assert!(err.message().contains("below"), "{err:?}");
    assert_eq!(cd.metric(&id, "memory.limit_in_bytes")?, 16 * MIB);

    // The kubelet's in-place resize: the guest gets the rest of its 40 MiB.
    cri.update_resources(&id, limits(64 * MIB)).await?;
    wait_log_line(&pod, "hog", 0, "allocated 40 MiB").await?;
    assert_eq!(cd.metric(&id, "memory.limit_in_bytes")?, 64 * MIB);

    cri.stop_container(&id, 0).await?;
    cri.remove_container(&id).await?;
    cri.remove_pod(&pod).await?;
    cd.assert_clean()
}
