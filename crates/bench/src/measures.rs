//! The measures: the first five compare the wasm shim with runc on the same
//! containerd, the sixth a component with the same program as a module, the
//! seventh a component with sockets (in a namespace of its own) against one
//! without; run by run, alternating which goes first so that neither is
//! always the one that follows the other. Each returns its measures or the
//! error that stopped it, after removing the containers it created.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::Api;
use crate::ctr::Ctr;
use crate::lifecycle::{self, Workload};
use crate::memory;
use crate::progress::{self, Counter};
use crate::results::{Better, Measure, RunConfig, Series, Unit};
use crate::WASM_RUNTIME;

/// How long idle containers are left to settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// The same program under both runtimes: `[wasm, runc]`.
#[derive(Debug, Clone)]
pub struct Pair(pub [Workload; 2]);

impl Pair {
    pub fn side(&self, i: usize) -> &Workload {
        &self.0[i % 2]
    }

    pub fn both(&self) -> &[Workload; 2] {
        &self.0
    }
}

/// Everything the measures share.
pub struct Bench {
    pub api: Api,
    pub ctr: Ctr,
    pub cfg: RunConfig,
    /// Prefix of every container id, and the value of the run label.
    pub run: String,
    /// Prints "hello" and exits: `[wasm hello, runc hello-native]`.
    pub hello: Pair,
    /// Sleeps: `[wasm sleep, runc busybox sleep]`.
    pub idle: Pair,
    /// The hello component against the hello module: `[p2, wasm]`.
    pub component: Pair,
    /// A component with sockets, in the network namespace the shim makes
    /// for it, printing an address literal it looked up, against the hello
    /// component: `[p2+net, p2]`.
    pub sockets: Pair,
    /// For the first-start measures, which need containerds of their own:
    /// the hello module's image and the hello component's.
    pub hello_tars: [PathBuf; 2],
    pub ctr_bin: PathBuf,
    pub snapshotter: String,
    seq: AtomicU64,
}

impl Bench {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api: Api,
        ctr: Ctr,
        cfg: RunConfig,
        run: String,
        hello: Pair,
        idle: Pair,
        component: Pair,
        sockets: Pair,
        hello_tars: [PathBuf; 2],
        ctr_bin: PathBuf,
        snapshotter: String,
    ) -> Self {
        Self {
            api,
            ctr,
            cfg,
            run,
            hello,
            idle,
            component,
            sockets,
            hello_tars,
            ctr_bin,
            snapshotter,
            seq: AtomicU64::new(0),
        }
    }

    /// A new scratch folder path (not created) for `ctr images mount`.
    pub fn scratch(&self, tag: &str) -> PathBuf {
        std::env::temp_dir().join(self.id(&format!("{tag}-unpack")))
    }

    /// A new container id: `<run>-<tag>-<n>`.
    pub fn id(&self, tag: &str) -> String {
        format!(
            "{}-{tag}-{}",
            self.run,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A containerd of its own with its CRI plugin on (`opts`), and `tars`
/// imported: for the measures that go through CRI.
pub async fn cri_containerd(
    opts: harness::CriOptions,
    tars: Vec<PathBuf>,
) -> Result<harness::Containerd> {
    tokio::task::spawn_blocking(move || -> Result<harness::Containerd> {
        let cd = harness::Containerd::start_cri(&opts)?;
        for tar in &tars {
            cd.import_tar(tar)?;
        }
        Ok(cd)
    })
    .await?
}

/// Which side goes first in round `i`: wasm on even rounds, runc on odd.
pub fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn series(w: &Workload, samples: Vec<f64>) -> Series {
    Series::new(&w.label, &w.runtime, samples)
}

/// Makes sure `w`'s image is unpacked in the API's snapshotter, unpacking
/// it with `ctr` (without running it) when the import did not.
pub async fn ensure_unpacked(api: &Api, ctr: &Ctr, w: &Workload, scratch: &Path) -> Result<()> {
    if api.snapshot_exists(&w.chain_id).await? {
        return Ok(());
    }
    ctr.unpack(&w.image, api.snapshotter(), scratch).await?;
    if !api.snapshot_exists(&w.chain_id).await? {
        bail!(
            "{} is not unpacked: no snapshot {} in namespace {} after `ctr images mount`",
            w.image,
            w.chain_id,
            api.namespace()
        );
    }
    Ok(())
}

/// One unmeasured run of each hello, through `ctr run` and through the API,
/// so that no measure pays for the first touch of binaries and images.
pub async fn warm_up(b: &Bench) -> Result<()> {
    for w in b
        .hello
        .both()
        .iter()
        .chain(b.idle.both())
        .chain(b.component.both())
        .chain(&b.sockets.both()[..1])
    {
        ensure_unpacked(&b.api, &b.ctr, w, &b.scratch(tag(w))).await?;
    }
    for w in b
        .hello
        .both()
        .iter()
        .chain(&b.component.both()[..1])
        .chain(&b.sockets.both()[..1])
    {
        let id = b.id(&format!("{}-warm", tag(w)));
        if let Err(err) = b
            .ctr
            .run_rm(&w.runtime, &w.image, &id, &w.process.args)
            .await
        {
            let _ = lifecycle::teardown(&b.api, &id).await;
            return Err(err).with_context(|| format!("warm-up: ctr run of {}", w.label));
        }
        let id = b.id(&format!("{}-warm", tag(w)));
        lifecycle::run_to_exit(&b.api, w, &id, &b.run)
            .await
            .with_context(|| format!("warm-up: API run of {}", w.label))?;
    }
    Ok(())
}

/// `w` or `r`, for container ids.
fn tag(w: &Workload) -> &str {
    w.label.get(..1).unwrap_or("x")
}

/// `iterations` runs to exit of each side of `pair` through the API,
/// alternating; returns the whole sequences' and the task lifecycles'
/// times in ms, per side.
async fn cold_runs(b: &Bench, pair: &Pair) -> Result<([Vec<f64>; 2], [Vec<f64>; 2])> {
    let n = b.cfg.iterations;
    let counter = Counter::new("runs", 2 * n);
    let mut total: [Vec<f64>; 2] = Default::default();
    let mut task: [Vec<f64>; 2] = Default::default();
    for i in 0..n {
        for side in order(i) {
            let w = pair.side(side);
            let id = b.id(&format!("{}-cold", tag(w)));
            let t = lifecycle::run_to_exit(&b.api, w, &id, &b.run)
                .await
                .inspect_err(|_| counter.finish())?;
            total[side].push(ms(t.total));
            task[side].push(ms(t.task));
            counter.tick();
        }
    }
    Ok((total, task))
}

/// The two cold-start measures of a pair, run by run through the API:
/// `(<key>_total, <key>_task)`, labelled "cold start, API: <what>...".
async fn cold_measures(
    b: &Bench,
    pair: &Pair,
    key: &str,
    what: &str,
) -> Result<(Measure, Measure)> {
    let (total, task) = cold_runs(b, pair).await?;
    let [first, second] = pair.both();
    let [total_1, total_2] = total;
    let [task_1, task_2] = task;
    Ok((
        Measure::new(
            &format!("{key}_total"),
            &format!("cold start, API: {what}whole sequence"),
            Unit::Ms,
            Better::Lower,
            series(first, total_1),
            series(second, total_2),
        ),
        Measure::new(
            &format!("{key}_task"),
            &format!("cold start, API: {what}task create..delete"),
            Unit::Ms,
            Better::Lower,
            series(first, task_1),
            series(second, task_2),
        ),
    ))
}

/// 1. Cold start through the API: the whole sequence, and the task's
///    lifecycle alone.
pub async fn cold_api(b: &Bench) -> Result<Vec<Measure>> {
    let (total, task) = cold_measures(b, &b.hello, "cold_api", "").await?;
    Ok(vec![total, task])
}

/// 2. Cold start through `ctr run --rm`, as a user sees it.
pub async fn cold_ctr(b: &Bench) -> Result<Vec<Measure>> {
    let n = b.cfg.iterations;
    let counter = Counter::new("runs", 2 * n);
    let mut samples: [Vec<f64>; 2] = Default::default();
    for i in 0..n {
        for side in order(i) {
            let w = b.hello.side(side);
            let id = b.id(&format!("{}-ctr", tag(w)));
            match b.ctr.run_rm(&w.runtime, &w.image, &id, &[]).await {
                Ok(d) => samples[side].push(ms(d)),
                Err(err) => {
                    counter.finish();
                    // `ctr run --rm` leaves the container behind when it fails.
                    let _ = lifecycle::teardown(&b.api, &id).await;
                    return Err(err);
                }
            }
            counter.tick();
        }
    }
    let [wasm, runc] = b.hello.both();
    let [a, r] = samples;
    Ok(vec![Measure::new(
        "cold_ctr_run",
        "cold start, ctr run --rm",
        Unit::Ms,
        Better::Lower,
        series(wasm, a),
        series(runc, r),
    )])
}

/// Tasks per second for `n` runs to exit, `c` at a time; returns the rate
/// and the wall time in seconds.
async fn rate(b: &Arc<Bench>, side: usize, n: usize, c: usize) -> Result<(f64, f64)> {
    let w = b.hello.side(side);
    let counter = Arc::new(Counter::new(format!("{} tasks, {c} at a time", w.label), n));
    let id_tag = format!("{}-tp{c}", tag(w));
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..c.max(1) {
        let (b, counter, id_tag) = (Arc::clone(b), Arc::clone(&counter), id_tag.clone());
        let (next, failed) = (Arc::clone(&next), Arc::clone(&failed));
        workers.spawn(async move {
            let w = b.hello.side(side);
            while !failed.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < n {
                let id = b.id(&id_tag);
                if let Err(err) = lifecycle::run_to_exit(&b.api, w, &id, &b.run).await {
                    failed.store(true, Ordering::Relaxed);
                    return Err(err);
                }
                counter.tick();
            }
            Ok(())
        });
    }
    let mut first_err = None;
    while let Some(joined) = workers.join_next().await {
        if let Err(err) = joined
            .context("a throughput worker panicked")
            .and_then(|r| r)
        {
            first_err.get_or_insert(err);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(err) = first_err {
        counter.finish();
        return Err(err);
    }
    Ok((n as f64 / secs, secs))
}

/// 3. Throughput: tasks per second in a row, and `concurrency` at a time.
pub async fn throughput(b: &Arc<Bench>) -> Result<Vec<Measure>> {
    let n = b.cfg.throughput_tasks;
    let c = b.cfg.concurrency.max(1);
    let mut out = Vec::new();
    for (round, (id, title, conc)) in [
        (
            "throughput_seq",
            format!("throughput, {n} tasks in a row"),
            1,
        ),
        (
            "throughput_conc",
            format!("throughput, {n} tasks, {c} at a time"),
            c,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rates: [Option<Series>; 2] = Default::default();
        for side in order(round) {
            let w = b.hello.side(side);
            let (per_sec, secs) = rate(b, side, n, conc).await?;
            rates[side] = Some(series(w, vec![per_sec]).with_details(json!({
                "tasks": n,
                "concurrency": conc,
                "seconds": secs,
            })));
        }
        let [Some(wasm), Some(runc)] = rates else {
            bail!("{id}: a side was not measured");
        };
        out.push(Measure::new(
            id,
            &title,
            Unit::TasksPerSec,
            Better::Higher,
            wasm,
            runc,
        ));
    }
    Ok(out)
}

/// Starts `k` idle containers of `w`, reads the memory of their processes,
/// and removes them all again (also when starting one failed).
async fn idle_round(b: &Bench, w: &Workload, k: usize) -> Result<memory::Total> {
    let counter = Counter::new(format!("{} containers started", w.label), k);
    let ids: Vec<String> = (0..k)
        .map(|_| b.id(&format!("{}-idle{k}", tag(w))))
        .collect();
    let measured = async {
        let mut task_pids = Vec::with_capacity(k);
        for id in &ids {
            task_pids.push(lifecycle::start_idle(&b.api, w, id, &b.run).await?);
            counter.tick();
        }
        tokio::time::sleep(SETTLE).await;
        for id in &ids {
            if !b.api.task_running(id).await? {
                bail!("{id} ({} on {}) is not running", w.label, w.runtime);
            }
        }
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        let shims = memory::shim_pids(&w.shim_binary, b.api.namespace(), &wanted)?;
        // A shared shim (WASMTIME_SHIM_SHARED=1) was started for another
        // container, so no `-id` names these; its pid is their task pid.
        let tasks_are_shims = task_pids
            .iter()
            .all(|&p| memory::runs_binary(p, &w.shim_binary));
        if shims.is_empty() && !tasks_are_shims {
            bail!(
                "no {} process serves these containers in namespace {}",
                w.shim_binary,
                b.api.namespace()
            );
        }
        // For runc the task pids are the container processes; for the wasm
        // shim they are the shim itself, counted once.
        memory::total(shims.into_iter().chain(task_pids))
    }
    .await;
    counter.finish();
    let removing = Counter::new(format!("{} containers removed", w.label), k);
    let mut removal = Ok(());
    for id in &ids {
        if let Err(err) = lifecycle::teardown(&b.api, id).await {
            if removal.is_ok() {
                removal = Err(err);
            }
        }
        removing.tick();
    }
    let total = measured?;
    removal?;
    Ok(total)
}

/// 4. Memory of idle containers, per container, for each K.
pub async fn idle_memory(b: &Bench) -> Result<Vec<Measure>> {
    let mut out = Vec::new();
    for (round, &k) in b.cfg.idle.iter().enumerate().filter(|&(_, &k)| k > 0) {
        progress::phase(&format!("idle memory, K={k}"));
        let mut totals: [Option<memory::Total>; 2] = Default::default();
        for side in order(round) {
            totals[side] = Some(idle_round(b, b.idle.side(side), k).await?);
        }
        let [Some(wasm_t), Some(runc_t)] = totals else {
            bail!("idle memory K={k}: a side was not measured");
        };
        let [wasm, runc] = b.idle.both();
        let per = |kib: u64| kib as f64 / 1024.0 / k as f64;
        let details = |t: &memory::Total| -> Result<serde_json::Value> {
            Ok(json!({
                "containers": k,
                "total": serde_json::to_value(t).context("serialize the memory totals")?,
            }))
        };
        out.push(Measure::new(
            &format!("idle_pss_k{k}"),
            &format!("idle memory per container, PSS, K={k}"),
            Unit::MiB,
            Better::Lower,
            series(wasm, vec![per(wasm_t.pss_kib)]).with_details(details(&wasm_t)?),
            series(runc, vec![per(runc_t.pss_kib)]).with_details(details(&runc_t)?),
        ));
        out.push(Measure::new(
            &format!("idle_rss_k{k}"),
            &format!("idle memory per container, RSS, K={k}"),
            Unit::MiB,
            Better::Lower,
            series(wasm, vec![per(wasm_t.rss_kib)]),
            series(runc, vec![per(runc_t.rss_kib)]),
        ));
    }
    Ok(out)
}

/// The first run and the cached runs in one fresh containerd: task and
/// whole-sequence times.
async fn fresh_containerd_runs(
    b: &Bench,
    cd: &harness::Containerd,
    round: usize,
    (tar, w): (&Path, &Workload),
) -> Result<([f64; 2], Vec<[f64; 2]>)> {
    let ctr = Ctr::new(&b.ctr_bin, &cd.socket, &cd.namespace);
    ctr.import(tar).await?;
    let api = Api::connect(&cd.socket, &cd.namespace, &b.snapshotter).await?;
    ensure_unpacked(&api, &ctr, w, &b.scratch("first")).await?;
    let id = |what: &str, i: usize| format!("{}-{what}{round}-{i}", b.run);
    let first = lifecycle::run_to_exit(&api, w, &id("first", 0), &b.run).await?;
    let mut cached = Vec::with_capacity(b.cfg.cached_runs);
    for i in 0..b.cfg.cached_runs {
        let t = lifecycle::run_to_exit(&api, w, &id("cached", i), &b.run).await?;
        cached.push([ms(t.task), ms(t.total)]);
    }
    Ok(([ms(first.task), ms(first.total)], cached))
}

/// 5. First start of the wasm hello in a brand-new containerd (module cache
///    cold: the module is compiled) against the starts after it.
pub async fn first_vs_cached(b: &Bench) -> Result<Vec<Measure>> {
    first_and_cached(b, (&b.hello_tars[0], b.hello.side(0)), "wasm").await
}

/// First starts in fresh containerds against the cached starts after them,
/// for one wasm workload; `name` prefixes the measures.
async fn first_and_cached(
    b: &Bench,
    (tar, w): (&Path, &Workload),
    name: &str,
) -> Result<Vec<Measure>> {
    let rounds = b.cfg.first_runs;
    let counter = Counter::new("fresh containerds", rounds);
    let mut first: [Vec<f64>; 2] = Default::default();
    let mut cached: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let cd = tokio::task::spawn_blocking(harness::Containerd::start)
            .await
            .context("the containerd start task panicked")?
            .context("start a fresh containerd")
            .inspect_err(|_| counter.finish())?;
        let outcome = fresh_containerd_runs(b, &cd, round, (tar, w)).await;
        let log = if outcome.is_err() {
            cd.log()
        } else {
            String::new()
        };
        // Stopping containerd blocks (it runs ctr and waits): not on a runtime thread.
        tokio::task::spawn_blocking(move || drop(cd))
            .await
            .context("the containerd stop task panicked")?;
        let (f, c) = outcome.map_err(|err| {
            counter.finish();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            err.context(format!(
                "in a fresh containerd; its log ends:\n{}",
                tail.join("\n")
            ))
        })?;
        for (j, (first_j, cached_j)) in first.iter_mut().zip(cached.iter_mut()).enumerate() {
            first_j.push(f[j]);
            cached_j.extend(c.iter().map(|s| s[j]));
        }
        counter.tick();
    }
    let [first_task, first_total] = first;
    let [cached_task, cached_total] = cached;
    let s = |label: &str, samples: Vec<f64>| Series::new(label, &w.runtime, samples);
    Ok(vec![
        Measure::new(
            &format!("{name}_first_vs_cached_task"),
            &format!("{name} start: cached vs first in a fresh containerd, task create..delete"),
            Unit::Ms,
            Better::Lower,
            s("cached", cached_task),
            s("first", first_task),
        ),
        Measure::new(
            &format!("{name}_first_vs_cached_total"),
            &format!("{name} start: cached vs first in a fresh containerd, whole sequence"),
            Unit::Ms,
            Better::Lower,
            s("cached", cached_total),
            s("first", first_total),
        ),
    ])
}

/// 6. The hello component against the hello module, both through the shim:
///    cold start through the API (task lifecycle and whole sequence), run by
///    run, alternating; then the component's first start in fresh
///    containerds against its cached starts.
pub async fn component_vs_module(b: &Bench) -> Result<Vec<Measure>> {
    let (total, task) = cold_measures(
        b,
        &b.component,
        "component_vs_module",
        "component vs module, ",
    )
    .await?;
    let component = &b.component.both()[0];
    let mut out = vec![task, total];
    if b.cfg.first_runs > 0 {
        out.extend(first_and_cached(b, (&b.hello_tars[1], component), "component").await?);
    }
    Ok(out)
}

/// 7. A component with sockets against the hello component, through the
///    API, run by run, alternating: the cost of its network namespace (made
///    with loopback up) and of the runtime whose threads entered it.
pub async fn sockets(b: &Bench) -> Result<Vec<Measure>> {
    let what = "component with sockets vs without, ";
    let (total, task) = cold_measures(b, &b.sockets, "sockets_vs_component", what).await?;
    Ok(vec![task, total])
}

/// Rounds of open, fstat and close per run of the file measure.
const FILE_ROUNDS: &str = "2000";

/// 9. What resolving paths inside the container's root costs a guest per
///    file operation (open, fstat and close of one file), as the guest times
///    it (`files bench`): by the file's own path, which cap-std resolves
///    beneath the root as before, and through an absolute symlink to it,
///    which cap-std refuses and `in-root` resolves again from the root. Both
///    in each run, `iterations` runs of `ctr run --rm`.
pub async fn file_ops(b: &Bench, image: &str) -> Result<Vec<Measure>> {
    let runs = b.cfg.iterations.max(1);
    let counter = Counter::new("runs", runs);
    let (mut direct, mut linked) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let id = b.id("files");
        let args = [
            "run",
            "--rm",
            "--runtime",
            WASM_RUNTIME,
            image,
            &id,
            "/files.wasm",
            "symlink",
            "/files.wasm",
            "/link",
            "--",
            "bench",
            "/files.wasm",
            FILE_ROUNDS,
            "--",
            "bench",
            "/link",
            FILE_ROUNDS,
        ];
        let out = match b.ctr.run(&args, Duration::from_secs(120)).await {
            Ok((_, out)) => out,
            Err(err) => {
                counter.finish();
                let _ = lifecycle::teardown(&b.api, &id).await;
                return Err(err);
            }
        };
        let ns: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let [d, l] = ns[..] else {
            counter.finish();
            anyhow::bail!("files bench printed {out:?}, not two numbers");
        };
        // Nanoseconds per round, in µs.
        direct.push(d / 1e3);
        linked.push(l / 1e3);
        counter.tick();
    }
    Ok(vec![Measure::new(
        "file_op_in_root",
        "open + fstat + close in the guest, through an absolute link vs by the file's own path",
        Unit::Us,
        Better::Lower,
        Series::new("absolute link", "wasm", linked),
        Series::new("own path", "wasm", direct),
    )])
}

/// Removes every container of this run that is still there (after an error
/// or an interrupt); returns how many there were.
pub async fn sweep(api: &Api, run: &str) -> Result<usize> {
    let prefix = format!("{run}-");
    let leftovers: Vec<String> = api
        .list_containers()
        .await?
        .into_iter()
        .filter(|(id, labels)| {
            id.starts_with(&prefix) || labels.get(lifecycle::RUN_LABEL).is_some_and(|v| v == run)
        })
        .map(|(id, _)| id)
        .collect();
    let mut result = Ok(leftovers.len());
    for id in &leftovers {
        if let Err(err) = lifecycle::teardown(api, id).await {
            if result.is_ok() {
                result = Err(err);
            }
        }
    }
    result
}

/// The image tar of an example, as `examples/images.sh` names it.
pub fn image_tar(images: &Path, example: &str) -> PathBuf {
    images.join(format!("{example}.tar"))
}
