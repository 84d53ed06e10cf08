//! One guest: its WASI context, its `Store` with memory limits, and the call
//! to its entry point (see [`super::guest`]), turned into an exit code.
//!
//! Exit codes follow what the same program would get natively, so operators
//! read them the usual way:
//!
//! | how the guest ended | code |
//! |---|---|
//! | `proc_exit(n)` or `return n` from `main` | `n & 0xff` |
//! | a component's `wasi:cli/exit.exit-with-code(n)` | `n` |
//! | a component's `exit(err)`, or `run` returning `err` | 1 |
//! | trap: `unreachable` (also C's `abort()`), and any other trap | 134 (SIGABRT) |
//! | trap: integer division by zero, integer overflow, bad float conversion | 136 (SIGFPE) |
//! | trap: stack overflow, out-of-bounds memory or table access | 139 (SIGSEGV) |
//! | killed with signal `s` | `128 + s` |
//!
//! A trap's message and wasm backtrace go to the task's stderr.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component;
use wasmtime::{Engine, Linker, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::guest::Linked;
use super::mounts::Preopen;
use super::names::{ContainerLookup, ContainerNames, NamesView};
use super::stdin::GuestStdin;
use crate::http::settings::{Outgoing, Settings as HttpSettings};
use crate::lifecycle::netns::Namespace;
use crate::lifecycle::throttle::Throttle;
use crate::lifecycle::{Exit, GuestIo, LiveLimits, Running, Usage};

/// The exit code of a guest that trapped, unless the trap maps to SIGFPE or SIGSEGV.
pub const TRAP_EXIT_CODE: u32 = 128 + libc::SIGABRT as u32;

/// How many bytes of output a guest may have in flight to its stdout/stderr.
const OUTPUT_BUDGET: usize = 64 * 1024;

/// How many WASI handles (open files, directories, streams) one guest may
/// hold. Each is a host file descriptor or more, and the shim's descriptors
/// are shared by all its tasks: past this, the guest's opens fail (`EMFILE`
/// style) and its siblings are unaffected.
pub const MAX_HANDLES_PER_TASK: usize = 1024;

/// Live component-model handles (resources a component creates, its WASI
/// streams and descriptors among them) one task may hold; Wasmtime's default
/// is 100,000.
pub const MAX_COMPONENT_HANDLES: usize = 4 * MAX_HANDLES_PER_TASK;

/// Bytes a component may hand the host in one call (Wasmtime's default is
/// 128 MiB): the host copies them, outside the guest's memory limit.
pub const MAX_HOSTCALL_BYTES: usize = 16 << 20;

/// Everything a guest's `Store` holds.
pub struct GuestState {
    pub wasi: WasiP1Ctx,
    /// The container's name lookup, for a guest with sockets.
    names: Option<Arc<ContainerNames>>,
    limiter: Limiter,
    throttle: Throttle,
    /// `wasi:http`: for a component that serves requests or sends them.
    http: WasiHttpCtx,
    outgoing: OutgoingRequests,
    /// For an instance that serves one request: the epoch ticks of wasm
    /// execution it has left.
    budget: Option<Budget>,
}

/// How long an instance may run wasm code: the CPU time it may use,
/// charged to `cpu` as it runs (waiting on I/O costs nothing).
#[derive(Clone)]
pub struct Budget {
    pub cpu: Arc<Usage>,
    limit_nanos: u64,
    /// Set when the budget ran out and the instance was interrupted.
    pub spent: bool,
}

impl Budget {
    pub fn of(time: Duration) -> Self {
        Self {
            cpu: Arc::new(Usage::default()),
            limit_nanos: time.as_nanos().min(u128::from(u64::MAX)) as u64,
            spent: false,
        }
    }
}

impl GuestState {
    /// The CPU time counter of the instance's execution budget, if it has one.
    pub fn budget_cpu(&self) -> Option<Arc<Usage>> {
        self.budget.as_ref().map(|b| b.cpu.clone())
    }

    /// Whether the instance's execution budget ran out.
    pub fn budget_spent(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.spent)
    }

    /// The total a refused memory growth asked for, if one was refused.
    pub fn memory_refused(&self) -> Option<usize> {
        self.limiter.refused
    }

    /// Called at every epoch tick: interrupt an instance whose budget is
    /// spent, else yield (and throttle).
    fn on_tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if let Some(budget) = &mut self.budget {
            if budget.cpu.cpu_nanos() > budget.limit_nanos {
                budget.spent = true;
                return Err(Trap::Interrupt.into());
            }
        }
        Ok(match self.throttle.check() {
            None => UpdateDeadline::Yield(1),
            Some(wake) => {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep_until(wake.into())))
            }
        })
    }

    fn names_view(&mut self) -> NamesView<'_> {
        NamesView {
            table: self.wasi.ctx().table,
            names: self.names.as_ref(),
        }
    }
}

/// Caps the total size of a guest's linear memories at the task's memory
/// limit, as it is at each growth, and reports it.
struct Limiter {
    limits: Arc<LiveLimits>,
    total: usize,
    usage: Arc<Usage>,
    /// Set when a growth was refused, to explain a later trap.
    refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if !self
            .limits
            .grow_memory(self.total as u64, total as u64, &self.usage)
        {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold references; a generous fixed cap keeps a guest from
        // growing one without bound.
        Ok(desired <= 10_000_000)
    }
}

/// A store's memory stops counting against its task once it is dropped:
/// all of an HTTP service's request instances share the task's limit.
impl Drop for Limiter {
    fn drop(&mut self) {
        self.limits.release_memory(self.total as u64, &self.usage);
    }
}

/// The linker core modules are linked with: WASI preview 1, with
/// `proc_exit` replaced so that any status, not only those below 126,
/// becomes the exit code.
pub fn module_linker(engine: &Engine) -> Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
        .map_err(anyhow::Error::from)
        .context("add WASI preview 1 to the linker")?;
    linker.allow_shadowing(true);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "proc_exit",
            |code: i32| -> wasmtime::Result<()> { Err(wasmtime::Error::new(I32Exit(code))) },
        )
        .map_err(anyhow::Error::from)
        .context("define proc_exit")?;
    Ok(linker)
}

/// The linker components are linked with: WASI 0.2, every interface
/// wasmtime-wasi implements, with `wasi:sockets/ip-name-lookup` replaced by
/// the container's own (see [`super::names`]). Sockets work only for a
/// guest whose context allows them (one that imports them).
pub fn component_linker(engine: &Engine) -> Result<component::Linker<GuestState>> {
    let mut linker = component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("add WASI 0.2 to the component linker")?;
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<GuestState, ContainerLookup>(&mut linker, |s| s.names_view())
        .map_err(anyhow::Error::from)
        .context("add the container's name lookup to the component linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("add wasi:http to the component linker")?;
    Ok(linker)
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: self.wasi.ctx().table,
            hooks: &mut self.outgoing,
        }
    }
}

/// Sends a guest's outgoing requests with wasmtime-wasi-http's client, from
/// the thread that polls the guest (so from its network namespace), with
/// the timeouts a guest may ask for capped by the container's settings.
struct OutgoingRequests(Outgoing);

impl WasiHttpHooks for OutgoingRequests {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        let cap = |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |t| t.min(max)));
        let asked = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(asked.connect_timeout, self.0.connect_timeout),
            first_byte_timeout: cap(asked.first_byte_timeout, self.0.timeout),
            between_bytes_timeout: cap(asked.between_bytes_timeout, self.0.timeout),
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// Components reach their WASI context through this view; modules through
/// the preview 1 context itself, which holds the same context.
impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// A guest ready to start: its linked module or component and what its
/// WASI context needs.
pub struct Guest {
    pub engine: Engine,
    pub linked: Arc<dyn Linked>,
    pub module_path: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The spec's `process.cwd`: a component's `initial-cwd`. (Preview 1
    /// has no way to carry it.)
    pub cwd: String,
    pub preopens: Vec<Preopen>,
    pub limits: Arc<LiveLimits>,
    pub usage: Arc<Usage>,
    /// For a guest that imports `wasi:sockets`: its network. `None`: no
    /// sockets, and no name lookup.
    pub sockets: Option<Sockets>,
    /// What the container's environment set for serving HTTP (and for
    /// outgoing requests); those variables are not in `env`.
    pub http: HttpSettings,
    /// Whether the task serves HTTP (see `Linked::serves`).
    pub serves: bool,
    /// The task's CPU quota, shared by all its instances.
    pub throttle: Throttle,
}

/// What a guest with sockets gets, as a process in its container would.
pub struct Sockets {
    /// Where its sockets live: `None` for the shim's own namespace.
    pub namespace: Option<Arc<Namespace>>,
    pub names: Arc<ContainerNames>,
    /// Whether it may bind ports below 1024: only with
    /// `CAP_NET_BIND_SERVICE` in its effective capabilities, as a process.
    /// (The shim is root; its sockets would otherwise allow any port.)
    pub privileged_ports: bool,
}

/// Ports below this need `CAP_NET_BIND_SERVICE` (Linux's default
/// `net.ipv4.ip_unprivileged_port_start`).
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Whether a guest may bind `port`: one below 1024 only with
/// `CAP_NET_BIND_SERVICE` (`privileged`), as a process; port 0 is any.
pub fn may_bind(privileged: bool, port: u16) -> bool {
    privileged || port == 0 || port >= FIRST_UNPRIVILEGED_PORT
}

impl Guest {
    fn wasi(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
        stdout: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        stderr: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        extra_env: Vec<(String, String)>,
    ) -> Result<WasiP1Ctx> {
        let mut b = WasiCtxBuilder::new();
        // WASI preview 1 writes to these with write-and-flush: a guest's
        // write returns once its bytes are in the task's pipe.
        // A guest that imports wasi:sockets has the network its container
        // has (any address, in its namespace); any other has none.
        let network = self.sockets.is_some();
        b.allow_tcp(network)
            .allow_udp(network)
            .allow_ip_name_lookup(network);
        if let Some(sockets) = &self.sockets {
            let privileged = sockets.privileged_ports;
            b.socket_addr_check(move |addr, used| {
                let bind = matches!(used, SocketAddrUse::TcpBind | SocketAddrUse::UdpBind);
                Box::pin(std::future::ready(
                    !bind || may_bind(privileged, addr.port()),
                ))
            });
        }
        // Variables a request adds (WAGI's) never replace the container's.
        let extra = extra_env
            .into_iter()
            .filter(|(name, _)| !self.env.iter().any(|(n, _)| n == name));
        b.args(&self.args)
            .envs(&self.env)
            .envs(&extra.collect::<Vec<_>>())
            .initial_cwd(&self.cwd)
            .stdin(GuestStdin::new(stdin))
            .stdout(AsyncStdoutStream::new(OUTPUT_BUDGET, stdout))
            .stderr(AsyncStdoutStream::new(OUTPUT_BUDGET, stderr));
        for p in &self.preopens {
            let perms = if p.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if p.root {
                b.preopened_root(&p.host, &p.guest, perms)
            } else {
                b.preopened_dir(&p.host, &p.guest, perms)
            }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("open {} for {}", p.host.display(), p.guest))?;
        }
        let mut wasi = b.build_p1();
        wasi.ctx().table.set_max_capacity(MAX_HANDLES_PER_TASK);
        Ok(wasi)
    }

    /// Starts a task of this guest, as its kind does it: most run their
    /// entry point once ([`Guest::run_once`]); a service serves.
    pub async fn start(self, io: GuestIo) -> Result<Running> {
        self.linked.clone().start(self, io).await
    }

    /// A store for one instance of the guest, with its own WASI context on
    /// the given streams, the task's limits, and for an instance that
    /// serves one request, its execution budget and the variables the
    /// request adds to the container's env.
    pub fn store_with_env(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
        stdout: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        stderr: impl tokio::io::AsyncWrite + Send + Sync + 'static,
        budget: Option<Budget>,
        extra_env: Vec<(String, String)>,
    ) -> Result<Store<GuestState>> {
        let wasi = self.wasi(stdin, stdout, stderr, extra_env)?;
        let limiter = Limiter {
            limits: self.limits.clone(),
            total: 0,
            usage: self.usage.clone(),
            refused: None,
        };
        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi,
                names: self.sockets.as_ref().map(|s| s.names.clone()),
                limiter,
                throttle: self.throttle.clone(),
                http: WasiHttpCtx::new(),
                outgoing: OutgoingRequests(self.http.outgoing),
                budget,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // A component's own handle tables and the data it hands the host in
        // one call, bounded like its WASI handles.
        store.set_max_component_handles(MAX_COMPONENT_HANDLES);
        store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
        // Yield to the runtime at every epoch tick; throttle while the task
        // has a CPU quota; interrupt a request's instance out of budget.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().on_tick());
        Ok(store)
    }

    /// Instantiates the guest and returns the future that runs its entry
    /// point to its end.
    pub async fn run_once(self, io: GuestIo) -> Result<Running> {
        let mut store = self.store_with_env(io.stdin, io.stdout, io.stderr, None, Vec::new())?;
        let path = self.module_path;
        let entry = self
            .linked
            .instantiate(&mut store)
            .await
            .with_context(|| format!("instantiate {path}"))?;
        Ok(Box::pin(async move {
            let result = entry.call(&mut store).await;
            let refused = store.data().limiter.refused;
            exit_of(result, &path, refused)
        }))
    }
}

fn exit_of(result: wasmtime::Result<()>, path: &str, refused: Option<usize>) -> Exit {
    let err = match result {
        Ok(()) => return Exit::code(0),
        Err(err) => err,
    };
    if let Some(I32Exit(code)) = err.downcast_ref::<I32Exit>() {
        return Exit::code((*code as u32) & 0xff);
    }
    let code = match err.downcast_ref::<Trap>() {
        Some(
            Trap::IntegerDivisionByZero | Trap::IntegerOverflow | Trap::BadConversionToInteger,
        ) => 128 + libc::SIGFPE as u32,
        Some(
            Trap::StackOverflow
            | Trap::MemoryOutOfBounds
            | Trap::TableOutOfBounds
            | Trap::HeapMisaligned,
        ) => 128 + libc::SIGSEGV as u32,
        _ => TRAP_EXIT_CODE,
    };
    Exit {
        code,
        reason: Some(failure_report(&err, &format!("{path} failed"), refused)),
    }
}

/// What a guest's failure says: `wasmtime: {what}: {err}`, its causes (the
/// wasm backtrace is one), and notes on limits that explain it.
pub fn failure_report(err: &wasmtime::Error, what: &str, refused: Option<usize>) -> String {
    // The message and its causes, as `{:?}` would print them, but never a
    // Rust backtrace: with RUST_BACKTRACE set in containerd's environment,
    // symbolizing one costs the shim tens of MiB, enough to push it past a
    // small memory limit.
    let mut reason = format!("wasmtime: {what}: {err}");
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        reason.push_str("\n\nCaused by:");
        for cause in causes {
            reason.push_str(&format!("\n    {cause}"));
        }
    }
    if format!("{err:#}").contains("resource table has no free keys") {
        reason.push_str(&format!(
            "\nnote: the guest holds more than {MAX_HANDLES_PER_TASK} open files and other handles, the limit per task"
        ));
    }
    if let Some(total) = refused {
        reason.push_str(&format!(
            "\nnote: a memory growth to {total} bytes was refused by the container's memory limit"
        ));
    }
    reason
}
