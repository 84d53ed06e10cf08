//! containerd's Task API over ttrpc, on top of the engine-neutral lifecycle.
//!
//! Each handler is a thin async function: look the task up, call the
//! lifecycle, publish an event, convert the answer. No handler blocks a thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{api, Task as TaskApi, TtrpcContext, TtrpcResult};
use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
};
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::task::ProcessInfo;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::lifecycle::cgroup::ShimCgroup;
use crate::lifecycle::devices::DevOutput;
use crate::lifecycle::error::{Error, Kind, Result, ResultExt};
use crate::lifecycle::events::Events;
use crate::lifecycle::limits::{self, Change, LiveLimits};
use crate::lifecycle::pause::Pause;
use crate::lifecycle::stdio::{Pumps, StdioPaths, TaskIo};
use crate::lifecycle::task::{ExitStatus, KillOutcome, Status, Task, TaskParts};
use crate::lifecycle::{binds, entrypoint, ledger, rootfs, Limits, Runtime, TaskSpec, Usage};
use crate::runc::Delegates;
use crate::sandbox::{self, Sandboxes};

pub struct TaskService {
    runtime: Arc<dyn Runtime>,
    /// Pods whose sandbox container the shim plays itself (`sandbox.rs`).
    sandboxes: Sandboxes,
    /// Output still being copied to clients; the shim waits for it to exit.
    pumps: Pumps,
    /// The cgroup the shim joins, sized for all its tasks together.
    cgroup: Arc<ShimCgroup>,
    /// Held while the tasks' limits and the cgroup's size change together.
    resizing: tokio::sync::Mutex<()>,
    tasks: Arc<Mutex<HashMap<String, Arc<Task>>>>,
    /// Linux containers (a pod's pause container, sidecars), run by runc.
    delegates: Arc<Delegates>,
    lifetime: Lifetime,
    /// Creates and Connects so far: an idle shim that saw one stays.
    activity: Arc<AtomicU64>,
    /// Set once the shim has decided to exit: Connect (which `start` calls
    /// before it hands containerd this shim's address) is then refused.
    closing: Arc<AtomicBool>,
    /// Set while an exit is on its way (see [`TaskService::exit_when_idle`]).
    exiting: Arc<AtomicBool>,
    /// The pods' ledgers, for `shim delete` after a crash.
    ledgers: ledger::Ledgers,
    events: Events,
    exit: Arc<ExitSignal>,
}

pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// How long a Delete that leaves the shim no task waits for containerd's
/// Shutdown before the shim exits on its own (see
/// [`TaskService::exit_when_idle`]).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How the shim ends once it has no task left, and what it may join.
#[derive(Debug, Clone, Default)]
pub struct Lifetime {
    /// How long to stay up without a task before exiting: a shared shim
    /// stays warm for the next container. Zero exits at once.
    pub linger: std::time::Duration,
    /// Join the first container's cgroup. Not for a shim shared by
    /// unrelated containers, whose limits Wasmtime enforces per task.
    pub join_cgroup: bool,
    /// The shim's socket, unlinked as the shim exits so that no new
    /// container is sent to a shim on its way out.
    pub socket: Option<PathBuf>,
}

/// Who runs a container, decided in Create.
enum Route {
    /// A Linux executable, with its spec (for the pod's pause, if any).
    Runc(Box<Spec>),
    /// A pod's sandbox container, played by the shim (nothing mounted).
    Sandbox(Box<Mounted>),
    Wasm(Box<Mounted>),
}

/// A wasm container's spec and rootfs, mounted for the engine.
struct Mounted {
    spec: Spec,
    rootfs: PathBuf,
    /// Whether the shim mounted the rootfs (and so must unmount it).
    mounted: bool,
    /// The read ends of the guest's `/dev/stdout` and `/dev/stderr`, when
    /// the shim made its `/dev` (`lifecycle::devices`).
    dev: Option<DevOutput>,
}

/// Sends a call for a container that runc runs to its runc shim, as it is.
macro_rules! forward_to_runc {
    ($self:ident, $ctx:ident, $method:literal, $req:ident) => {
        if let Some(runc) = $self.delegates.get(&$req.id) {
            return runc.call($ctx, $method, &$req).await;
        }
    };
}

/// The shim has one process per task: the init process. There is no exec.
fn no_exec(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "exec process {exec_id}: the wasmtime shim has no exec processes"
        )))
    }
}

impl TaskService {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        delegates: Delegates,
        lifetime: Lifetime,
        events: Events,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            runtime,
            sandboxes: Sandboxes::default(),
            delegates: Arc::new(delegates),
            cgroup: Arc::new(ShimCgroup::new(lifetime.join_cgroup)),
            lifetime,
            activity: Arc::default(),
            closing: Arc::default(),
            exiting: Arc::default(),
            ledgers: ledger::Ledgers::default(),
            pumps: Pumps::default(),
            resizing: tokio::sync::Mutex::new(()),
            tasks: Arc::default(),
            events,
            exit,
        }
    }

    /// Exits the shim once its last task is deleted (after `linger`, and
    /// once output copies and the cgroup are done), unless a task comes
    /// meanwhile. Called on Shutdown (`after` zero), which containerd sends
    /// once it has a task's Delete reply, and `after` [`SHUTDOWN_GRACE`] on
    /// every Delete: a pod's shim of task API 3 gets Shutdown only with its
    /// sandbox's Delete, which may come before its other containers' (the
    /// pause exited). The grace lets the Delete reply go out first, and a
    /// Shutdown that comes meanwhile does the exit.
    fn exit_when_idle(&self, after: std::time::Duration) {
        if !idle(&self.tasks, &self.delegates) {
            return;
        }
        // Leaving the cgroup waits on the kernel (an RCU grace period):
        // answer containerd now, and exit once it is done.
        let cgroup = self.cgroup.clone();
        let exit = self.exit.clone();
        let pumps = self.pumps.clone();
        let lifetime = self.lifetime.clone();
        let (tasks, delegates, activity, closing, exiting) = (
            self.tasks.clone(),
            self.delegates.clone(),
            self.activity.clone(),
            self.closing.clone(),
            self.exiting.clone(),
        );
        let idle = move || idle(&tasks, &delegates);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !idle() || exiting.swap(true, SeqCst) {
                return;
            }
            tracing::info!("last task deleted, shutting down");
            let mut seen = activity.load(SeqCst);
            pumps.idle(std::time::Duration::from_secs(12)).await;
            cgroup.leave().await;
            // Stay while anyone came by during the last linger period.
            loop {
                tokio::time::sleep(lifetime.linger).await;
                if !idle() {
                    // Busy again: its last Delete comes back here.
                    exiting.store(false, SeqCst);
                    return;
                }
                if activity.load(SeqCst) == seen {
                    // Set, then check: Connect bumps, then checks.
                    closing.store(true, SeqCst);
                    if activity.load(SeqCst) == seen && idle() {
                        break;
                    }
                    closing.store(false, SeqCst);
                }
                seen = activity.load(SeqCst);
            }
            if let Some(socket) = &lifetime.socket {
                let _ = std::fs::remove_file(socket);
            }
            if !lifetime.linger.is_zero() {
                tracing::info!("idle for {:?}, exiting", lifetime.linger);
            }
            exit.signal();
        });
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Task>> {
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("task {id} not found")))
    }

    /// Mounts the rootfs and decides who runs the container: runc, when its
    /// entrypoint is a Linux executable (the rootfs is then unmounted again,
    /// for runc's shim mounts it itself), else the wasm engine.
    async fn route(&self, req: &api::CreateTaskRequest) -> Result<Route> {
        self.activity.fetch_add(1, SeqCst);
        let id = &req.id;
        if self.tasks().contains_key(id) || self.delegates.get(id).is_some() {
            return Err(Error::new(
                Kind::AlreadyExists,
                format!("task {id} already exists"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = load_spec(&bundle).await?;
        if sandbox::can_play(&spec) {
            return Ok(Route::Sandbox(Box::new(Mounted {
                spec,
                rootfs: rootfs::path(&bundle),
                mounted: false,
                dev: None,
            })));
        }
        let spec_root = spec.root().as_ref().map(|r| r.path().clone());
        let (rootfs, mounted) = rootfs::mount(&bundle, &req.rootfs, spec_root.as_deref()).await?;
        let linux = {
            let (rootfs, spec) = (rootfs.clone(), spec.clone());
            tokio::task::spawn_blocking(move || entrypoint::is_linux_executable(&rootfs, &spec))
                .await
                .unwrap_or(false)
        };
        if linux {
            if mounted {
                rootfs::unmount(&rootfs).await;
            }
            return Ok(Route::Runc(Box::new(spec)));
        }
        let ready = async {
            self.sandboxes.rewrite_wasm(&mut spec)?;
            if !mounted {
                return Ok(None);
            }
            mount_tree(&rootfs, &spec, &req.stdin).await.map(Some)
        };
        let dev = match ready.await {
            Ok(dev) => dev,
            Err(err) => {
                if mounted {
                    rootfs::unmount(&rootfs).await;
                }
                return Err(err);
            }
        };
        Ok(Route::Wasm(Box::new(Mounted {
            spec,
            rootfs,
            mounted,
            dev,
        })))
    }

    /// Creates a task that `runtime` runs: the wasm engine, or the pause
    /// of a sandbox.
    async fn do_create(
        &self,
        req: api::CreateTaskRequest,
        mounted: Mounted,
        runtime: &dyn Runtime,
    ) -> Result<api::CreateTaskResponse> {
        let Mounted {
            spec,
            rootfs,
            mounted,
            dev,
        } = mounted;
        let unmount = || async {
            if mounted {
                rootfs::unmount(&rootfs).await;
            }
        };
        let id = req.id.clone();
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            unmount().await;
            return Err(Error::unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let t0 = std::time::Instant::now();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal
                || spec
                    .process()
                    .as_ref()
                    .is_some_and(|p| p.terminal().unwrap_or(false)),
        };
        let io = match TaskIo::open(&stdio, &self.pumps, dev).await {
            Ok(io) => io,
            Err(err) => {
                unmount().await;
                return Err(err);
            }
        };
        let t_io = t0.elapsed();
        let initial = Limits::from_spec(&spec);
        // A sandbox's cgroup is where runc would put a real pause: the
        // shim joins its first wasm container's, as without one.
        if !self.sandboxes.contains(&id) {
            self.cgroup.join_first(&spec, initial);
        }
        let t_cgroup = t0.elapsed();
        let usage = Arc::new(Usage::default());
        let limits = Arc::new(LiveLimits::new(initial));
        let task_spec = TaskSpec {
            id: id.clone(),
            rootfs: rootfs.clone(),
            binds_mounted: mounted,
            spec,
            limits: limits.clone(),
        };
        let prepared = match runtime.prepare(&task_spec, usage.clone()).await {
            Ok(p) => p,
            Err(err) => {
                unmount().await;
                return Err(Error::wrap(Kind::InvalidArgument, err));
            }
        };
        // Where Create's time goes, for profiling cold starts.
        tracing::debug!(
            id,
            io_us = t_io.as_micros() as u64,
            cgroup_us = (t_cgroup - t_io).as_micros() as u64,
            prepare_us = (t0.elapsed() - t_cgroup).as_micros() as u64,
            "create phases"
        );
        let task = Arc::new(Task::new(TaskParts {
            id: id.clone(),
            bundle,
            stdio: stdio.clone(),
            mounted_rootfs: mounted.then(|| rootfs.clone()),
            usage,
            limits,
            io,
            prepared,
        }));
        let pid = task.pid;
        let inserted = {
            let mut tasks = self.tasks();
            !tasks.contains_key(&id) && tasks.insert(id.clone(), task).is_none()
        };
        if !inserted {
            unmount().await;
            return Err(Error::new(
                Kind::AlreadyExists,
                format!("task {id} already exists"),
            ));
        }
        self.resize_cgroup().await;
        self.events.send(TaskCreate {
            container_id: id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            io: MessageField::some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: false,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// A pod's sandbox: a task of the shim's own (`sandbox.rs`).
    async fn create_sandbox(
        &self,
        req: api::CreateTaskRequest,
        mounted: Mounted,
    ) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        self.sandboxes.add(&req, &mounted.spec).await?;
        let created = self.do_create(req, mounted, &Pause).await;
        if created.is_err() {
            self.sandboxes.forget(&id);
        }
        created
    }

    async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        no_exec(&req.exec_id)?;
        let task = self.get(&req.id)?;
        let (id, pid) = (task.id.clone(), task.pid);
        let requested = std::time::Instant::now();
        let on_started = {
            let (events, id) = (self.events.clone(), id.clone());
            move || {
                events.send(TaskStart {
                    container_id: id,
                    pid,
                    ..Default::default()
                })
            }
        };
        let on_exit = {
            let (events, id) = (self.events.clone(), id.clone());
            move |status: ExitStatus| {
                events.send(TaskExit {
                    container_id: id.clone(),
                    id,
                    pid,
                    exit_status: status.code,
                    exited_at: MessageField::some(timestamp(status.at)),
                    ..Default::default()
                })
            }
        };
        task.start(on_started, on_exit).await?;
        tracing::info!(
            id,
            start_us = requested.elapsed().as_micros() as u64,
            "started: Start request to guest entry"
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: api::KillRequest) -> Result<api::Empty> {
        no_exec(&req.exec_id)?;
        let task = self.get(&req.id)?;
        match task.kill(req.signal)? {
            Some(KillOutcome::StoppedBeforeStart(status)) => self.events.send(TaskExit {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: task.pid,
                exit_status: status.code,
                exited_at: MessageField::some(timestamp(status.at)),
                ..Default::default()
            }),
            Some(KillOutcome::Signalled) | None => {}
        }
        Ok(api::Empty::new())
    }

    async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        no_exec(&req.exec_id)?;
        let task = self.get(&req.id)?;
        let status = task.prepare_delete()?;
        if let Some(rootfs) = &task.mounted_rootfs {
            rootfs::unmount(rootfs).await;
        }
        let others: Vec<PathBuf> = {
            let mut tasks = self.tasks();
            tasks.remove(&req.id);
            tasks.values().map(|t| t.bundle.clone()).collect()
        };
        self.resize_cgroup().await;
        if crate::logging::follows(&task.bundle) {
            // containerd removes this bundle next: log through a live one.
            let live = others.into_iter().chain(self.delegates.bundles());
            for bundle in live {
                if crate::logging::follow(&bundle) {
                    break;
                }
            }
        }
        self.events.send(TaskDelete {
            container_id: task.id.clone(),
            id: task.id.clone(),
            pid: task.pid,
            exit_status: status.code,
            exited_at: MessageField::some(timestamp(status.at)),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid: task.pid,
            exit_status: status.code,
            exited_at: MessageField::some(timestamp(status.at)),
            ..Default::default()
        })
    }

    /// Applies new resource limits to a running (or created) task: the
    /// engine reads them at the guest's next memory growth and epoch tick,
    /// and the shim's cgroup is resized for them. The cgroup grows before
    /// the guest may, and shrinks after. A memory limit below what the guest
    /// uses, or a size the shim's cgroup cannot take, fails the call and
    /// leaves the task as it was.
    async fn do_update(&self, req: api::UpdateTaskRequest) -> Result<api::Empty> {
        let task = self.get(&req.id)?;
        if task.status() == Status::Stopped {
            return Err(Error::not_found(format!(
                "task {}: cannot update a stopped task",
                req.id
            )));
        }
        let resources = linux_resources(req.resources.as_ref())?;
        let change = Change::from_resources(&resources);
        change
            .validate()
            .map_err(|e| Error::new(Kind::InvalidArgument, e))?;
        if !change.ignored.is_empty() {
            tracing::info!(
                id = req.id,
                ignored = ?change.ignored,
                "update: these resources mean nothing for a wasm task and are ignored"
            );
        }
        // One resize at a time, so that the cgroup's size follows the
        // tasks' limits in order.
        let _resizing = self.resizing.lock().await;
        let before = task.limits.get();
        let mut after = before;
        change.apply_to(&mut after);
        let grows = match (before.memory, after.memory) {
            (_, None) => true,
            (Some(b), Some(a)) => a >= b,
            (None, Some(_)) => false,
        };
        let refused = |err: anyhow::Error| {
            Error::new(
                Kind::FailedPrecondition,
                format!("the shim's cgroup cannot take the new limits: {err:#}"),
            )
        };
        if grows {
            self.cgroup
                .resize(self.total_limits_with(&req.id, after))
                .await
                .map_err(refused)?;
        }
        if let Err(err) = task.limits.update(&change, &task.usage) {
            if grows {
                self.resize_cgroup_now().await;
            }
            return Err(Error::precondition(err.to_string()));
        }
        if !grows {
            if let Err(err) = self.cgroup.resize(self.total_limits()).await {
                task.limits.restore(before);
                self.resize_cgroup_now().await;
                return Err(refused(err));
            }
        }
        tracing::info!(id = req.id, limits = ?task.limits.get(), "updated");
        Ok(api::Empty::new())
    }

    /// The limits of the tasks that run guests (a sandbox runs none), by id.
    fn guest_limits(&self) -> Vec<(String, Limits)> {
        self.tasks()
            .iter()
            .filter(|(id, _)| !self.sandboxes.contains(id))
            .map(|(id, t)| (id.clone(), t.limits.get()))
            .collect()
    }

    /// The limits of the shim's guests together.
    fn total_limits(&self) -> Limits {
        limits::total(self.guest_limits().iter().map(|(_, l)| l))
    }

    /// As [`Self::total_limits`], with task `id`'s limits replaced.
    fn total_limits_with(&self, id: &str, replaced: Limits) -> Limits {
        let all = self.guest_limits();
        limits::total(all.iter().map(|(k, l)| if k == id { &replaced } else { l }))
    }

    /// Sizes the shim's cgroup for its tasks as they are now, after a
    /// Create or Delete. A failure is logged: the tasks still run, within
    /// the older size. With no task left, the size stays: the shim is about
    /// to leave the cgroup, or serves only containers runc runs.
    async fn resize_cgroup(&self) {
        let _resizing = self.resizing.lock().await;
        self.resize_cgroup_now().await;
    }

    async fn resize_cgroup_now(&self) {
        if self.guest_limits().is_empty() {
            return;
        }
        if let Err(err) = self.cgroup.resize(self.total_limits()).await {
            tracing::warn!("cannot size the shim's cgroup: {err:#}");
        }
    }

    fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let task = self.get(&req.id)?;
        let status = match task.status() {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        };
        let exit = task.exit_status();
        Ok(api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid: task.pid,
            status: status.into(),
            stdin: task.stdio.stdin.clone(),
            stdout: task.stdio.stdout.clone(),
            stderr: task.stdio.stderr.clone(),
            terminal: false,
            exit_status: exit.map(|e| e.code).unwrap_or_default(),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    fn do_stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse> {
        let task = self.get(&req.id)?;
        let usage = &task.usage;
        let metrics = Metrics {
            memory: MessageField::some(MemoryStat {
                rss: usage.memory(),
                total_rss: usage.memory(),
                usage: MessageField::some(MemoryEntry {
                    usage: usage.memory(),
                    max: usage.memory_peak(),
                    limit: task.limits.get().memory.unwrap_or(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: usage.cpu_nanos(),
                    user: usage.cpu_nanos(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = metrics
            .write_to_bytes()
            .kind(Kind::Internal, "encode task metrics")?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".to_string(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// The `LinuxResources` an Update carries: containerd sends them as JSON in
/// an `Any` of type `types.containerd.io/opencontainers/runtime-spec/1/LinuxResources`.
fn linux_resources(any: Option<&Any>) -> Result<LinuxResources> {
    let Some(any) = any else {
        return Err(Error::new(
            Kind::InvalidArgument,
            "the update carries no resources",
        ));
    };
    if !any.type_url.ends_with("/LinuxResources") {
        return Err(Error::new(
            Kind::InvalidArgument,
            format!(
                "the update carries {:?}, not Linux resources (runtime-spec LinuxResources)",
                any.type_url
            ),
        ));
    }
    serde_json::from_slice(&any.value)
        .kind(Kind::InvalidArgument, "parse the update's LinuxResources")
}

/// Builds the container's tree in the rootfs the shim mounted: its `/dev`
/// and the spec's bind mounts (`lifecycle::binds`), on a blocking thread.
async fn mount_tree(rootfs: &Path, spec: &Spec, stdin: &str) -> Result<DevOutput> {
    let binds = binds::of_spec(spec).kind(Kind::InvalidArgument, "the spec's mounts")?;
    let root_read_only = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let rootfs = rootfs.to_path_buf();
    let stdin = (!stdin.is_empty()).then(|| PathBuf::from(stdin));
    tokio::task::spawn_blocking(move || {
        binds::mount_all(&rootfs, &binds, root_read_only, stdin.as_deref())
    })
    .await
    .kind(Kind::Internal, "mount task failed")?
    .kind(Kind::InvalidArgument, "mount the container's tree")
}

async fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bytes = tokio::fs::read(&path)
        .await
        .kind(Kind::InvalidArgument, format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).kind(Kind::InvalidArgument, format!("parse {}", path.display()))
}

/// Whether the shim has nothing left to serve.
fn idle(tasks: &Mutex<HashMap<String, Arc<Task>>>, delegates: &Delegates) -> bool {
    tasks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
        && delegates.is_empty()
}

/// Logs a failed request and turns it into a ttrpc error.
fn reply<T>(call: &str, id: &str, res: Result<T>) -> TtrpcResult<T> {
    res.map_err(|err| {
        match err.kind() {
            Kind::NotFound | Kind::Unimplemented => tracing::debug!(call, id, "{err}"),
            _ => tracing::warn!(call, id, "{err}"),
        }
        err.into()
    })
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        let bundle = Path::new(&req.bundle);
        // The bundle the log goes through may be gone (a shared shim
        // outlives the container it started for): take this one's.
        crate::logging::follow_if_gone(bundle);
        tracing::info!(id, bundle = req.bundle, "create");
        let res = match self.route(&req).await {
            Ok(Route::Runc(spec)) => {
                self.ledgers
                    .record(bundle, sandbox::pod_of(&spec).as_deref(), &spec, &id, true);
                // If the pod's pause exits, its sandbox ends with it.
                let tasks = self.tasks.clone();
                let end_sandbox = move |pod: String| {
                    let task = tasks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&pod)
                        .cloned();
                    if let Some(task) = task {
                        let _ = task.kill(libc::SIGKILL as u32);
                    }
                };
                return self
                    .sandboxes
                    .create_linux(ctx, &self.delegates, req, &spec, end_sandbox)
                    .await;
            }
            Ok(Route::Sandbox(mounted)) => self.create_sandbox(req, *mounted).await,
            Ok(Route::Wasm(mounted)) => {
                let pod = sandbox::pod_of(&mounted.spec);
                self.ledgers
                    .record(bundle, pod.as_deref(), &mounted.spec, &id, false);
                self.do_create(req, *mounted, &*self.runtime).await
            }
            Err(err) => Err(err),
        };
        let res = res.map_err(|e| e.context(format!("create container {id}")));
        reply("create", &id, res)
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let id = req.id.clone();
        if let Some(runc) = self.delegates.get(&id) {
            let res = runc.call(ctx, "Start", &req).await;
            return res.map_err(|e| crate::runc::explain(&id, e));
        }
        reply("start", &id, self.do_start(req).await)
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        forward_to_runc!(self, ctx, "State", req);
        let id = req.id.clone();
        reply("state", &id, self.do_state(req))
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        forward_to_runc!(self, ctx, "Wait", req);
        let res = async {
            no_exec(&req.exec_id)?;
            let status = self.get(&req.id)?.wait().await;
            Ok(api::WaitResponse {
                exit_status: status.code,
                exited_at: MessageField::some(timestamp(status.at)),
                ..Default::default()
            })
        }
        .await;
        reply("wait", &req.id, res)
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Kill", req);
        let id = req.id.clone();
        tracing::info!(id, signal = req.signal, "kill");
        let signal = req.signal;
        let res = self.do_kill(req).await;
        if res.is_ok() {
            self.sandboxes.kill(ctx, &self.delegates, &id, signal).await;
        }
        reply("kill", &id, res)
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let id = req.id.clone();
        tracing::info!(id, "delete");
        if let Some(runc) = self.delegates.get(&id) {
            let res = self.delegates.delete(ctx, &runc, &req).await;
            if res.is_ok() && req.exec_id.is_empty() {
                self.ledgers.forget(&id);
            }
            self.exit_when_idle(SHUTDOWN_GRACE);
            return res;
        }
        let res = self.do_delete(req).await;
        if res.is_ok() {
            self.ledgers.forget(&id);
            self.sandboxes.remove(ctx, &self.delegates, &id).await;
            self.exit_when_idle(SHUTDOWN_GRACE);
        }
        reply("delete", &id, res)
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        forward_to_runc!(self, ctx, "Pids", req);
        let res = self.get(&req.id).map(|task| api::PidsResponse {
            processes: vec![ProcessInfo {
                pid: task.pid,
                ..Default::default()
            }],
            ..Default::default()
        });
        reply("pids", &req.id, res)
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        forward_to_runc!(self, ctx, "Stats", req);
        let id = req.id.clone();
        reply("stats", &id, self.do_stats(req))
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "CloseIO", req);
        let res = no_exec(&req.exec_id)
            .and_then(|_| self.get(&req.id))
            .map(|task| {
                if req.stdin {
                    task.close_stdin();
                }
                api::Empty::new()
            });
        reply("close_io", &req.id, res)
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        // `start` asks before it hands containerd this shim for a new
        // container: count it as activity, then refuse if exiting (in that
        // order, against the exit's set-then-check: one of them sees the other).
        self.activity.fetch_add(1, SeqCst);
        if self.closing.load(SeqCst) {
            return Err(Error::new(Kind::Unavailable, "the shim is exiting").into());
        }
        forward_to_runc!(self, ctx, "Connect", req);
        let task_pid = self.get(&req.id).map(|t| t.pid).unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        self.exit_when_idle(std::time::Duration::ZERO);
        Ok(api::Empty::new())
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Pause", req);
        reply("pause", &req.id, Err(Error::unimplemented("Pause")))
    }

    async fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Resume", req);
        reply("resume", &req.id, Err(Error::unimplemented("Resume")))
    }

    async fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Checkpoint", req);
        reply(
            "checkpoint",
            &req.id,
            Err(Error::unimplemented("Checkpoint")),
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Update", req);
        let id = req.id.clone();
        tracing::info!(id, "update");
        let res = self.do_update(req).await;
        reply(
            "update",
            &id,
            res.map_err(|e| e.context(format!("update container {id}"))),
        )
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "Exec", req);
        reply("exec", &req.id, Err(Error::unimplemented("Exec")))
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        forward_to_runc!(self, ctx, "ResizePty", req);
        reply(
            "resize_pty",
            &req.id,
            Err(Error::unimplemented("ResizePty")),
        )
    }
}
