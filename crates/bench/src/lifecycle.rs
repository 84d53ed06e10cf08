//! The container sequences the measures time, the same code for wasm and
//! runc: a run to exit (create → prepare → task create/start/wait/delete →
//! remove), a start left idle, and a teardown that removes whatever a failed
//! or idle run left behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::client::{is_not_found, Api, NewContainer};
use crate::spec;

/// Label on every container the benchmark creates, valued with the run's id
/// prefix, so leftovers can be found and removed.
pub const RUN_LABEL: &str = "io.wasmtime.bench.run";

/// How long a task may take to exit once waited for (a hello run) or killed.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A container to run: which runtime, which image, which process.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name in reports, e.g. "wasm" or "runc".
    pub label: String,
    /// containerd runtime, e.g. `io.containerd.wasmtime.v1`.
    pub runtime: String,
    /// The binary name of the runtime's shim, to find its processes.
    pub shim_binary: String,
    pub image: String,
    /// The snapshot the rootfs is prepared from.
    pub chain_id: String,
    pub process: spec::Process,
}

/// Timings of one run to exit.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Containers.Create up to Containers.Delete done.
    pub total: Duration,
    /// Tasks.Create up to Tasks.Delete done.
    pub task: Duration,
}

async fn create(api: &Api, w: &Workload, id: &str, run: &str) -> Result<()> {
    let oci = spec::runtime_spec(api.namespace(), id, &w.process);
    api.create_container(NewContainer {
        id,
        image: &w.image,
        runtime: &w.runtime,
        spec: spec::to_any(&oci)?,
        labels: HashMap::from([(RUN_LABEL.to_string(), run.to_string())]),
    })
    .await
}

/// Runs `w` as container `id` to its exit, and removes it. The task must
/// exit 0. Whatever fails, nothing of `id` is left behind.
pub async fn run_to_exit(api: &Api, w: &Workload, id: &str, run: &str) -> Result<Timings> {
    let started = Instant::now();
    if let Err(err) = create(api, w, id, run).await {
        // A create that failed may still have been recorded.
        let _ = teardown(api, id).await;
        return Err(err);
    }
    let task = async {
        let mounts = api.prepare_snapshot(id, &w.chain_id).await?;
        let task_started = Instant::now();
        api.create_task(id, mounts).await?;
        api.start_task(id).await?;
        let status = wait(api, id).await?;
        api.delete_task(id).await?;
        Ok::<_, anyhow::Error>((task_started.elapsed(), status))
    }
    .await;
    let (task, status) = match task {
        Ok(done) => done,
        Err(err) => {
            let _ = teardown(api, id).await;
            return Err(err);
        }
    };
    let snapshot = api.remove_snapshot(id).await;
    let container = api.delete_container(id).await;
    snapshot.and(container)?;
    let total = started.elapsed();
    if status != 0 {
        bail!(
            "{id} ({} on {}) exited with status {status}",
            w.label,
            w.runtime
        );
    }
    Ok(Timings { total, task })
}

async fn wait(api: &Api, id: &str) -> Result<u32> {
    match tokio::time::timeout(WAIT_LIMIT, api.wait_task(id)).await {
        Ok(status) => status,
        Err(_) => bail!("{id} did not exit within {WAIT_LIMIT:?}"),
    }
}

/// Starts `w` as container `id` and leaves it running; returns the task's
/// pid. On failure, removes what it created.
pub async fn start_idle(api: &Api, w: &Workload, id: &str, run: &str) -> Result<u32> {
    let started = async {
        create(api, w, id, run).await?;
        let mounts = api.prepare_snapshot(id, &w.chain_id).await?;
        let pid = api.create_task(id, mounts).await?;
        api.start_task(id).await?;
        Ok::<_, anyhow::Error>(pid)
    }
    .await;
    if started.is_err() {
        let _ = teardown(api, id).await;
    }
    started
}

/// Removes container `id` and all that belongs to it: kills its task
/// (SIGKILL), waits for it, deletes it, then its snapshot and its record.
/// What is already gone is fine; the first other failure is returned after
/// every step has been tried.
pub async fn teardown(api: &Api, id: &str) -> Result<()> {
    const SIGKILL: u32 = 9;
    let ok = |r: Result<()>| match r {
        Err(err) if is_not_found(&err) => Ok(()),
        other => other,
    };
    // A task that already exited refuses the kill; the delete below decides.
    let _ = api.kill_task(id, SIGKILL).await;
    let _ = tokio::time::timeout(WAIT_LIMIT, api.wait_task(id)).await;
    let task = ok(api.delete_task(id).await.map(drop));
    let snapshot = ok(api.remove_snapshot(id).await);
    let container = ok(api.delete_container(id).await);
    task.and(snapshot).and(container)
}
