//! P20: the Python SDK's worker under the Rust host against the same plugin logic under
//! cjm-plugin-system's own proxy and worker, in one run: small call p50/p99, stream items per
//! second, spawn → first answer, idle memory.

use crate::baseline::cjm::{self, samples_us, Harness, CJM_VERSION};
use crate::procs::{children, pss_bytes, rss_bytes};
use crate::report::{Check, Outcome};
use crate::scenario::{rate, Ctx};
use crate::stats::{median, millis, quantile, Latency};
use anyhow::{bail, Context as _, Result};
use futures_util::StreamExt;
use plugvisor_host::{Plugin, RemotePlugin, WorkerSpec};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The small call's text (the input is `{"text": TEXT}` for the SDK, `execute(TEXT)` for cjm).
const TEXT: &str = "hello, plugvisor bench";
/// Calls before measuring, per contender.
const WARMUP: usize = 300;
const MIB: f64 = 1024.0 * 1024.0;

/// How much P20 measures (its cjm side is slow: a call as shipped takes 20 ms and more, so its
/// counts stay small, and the full run adds well under two minutes).
struct Sizes {
    spawns: usize,
    sdk_calls: usize,
    cjm_best_calls: usize,
    cjm_stalled_calls: usize,
    cjm_shipped_calls: usize,
    sdk_stream: u64,
    cjm_stream: u64,
    stream_trials: usize,
    call_trials: usize,
}

impl Sizes {
    fn new(ctx: &Ctx) -> Self {
        let quick = ctx.plan.quick;
        Self {
            spawns: if quick { 5 } else { 8 },
            sdk_calls: ctx.plan.calls,
            cjm_best_calls: 1_000,
            cjm_stalled_calls: 20,
            cjm_shipped_calls: 50,
            sdk_stream: ctx.plan.small_chunks,
            cjm_stream: if quick { 3_000 } else { 5_000 },
            stream_trials: ctx.plan.trials.min(3),
            call_trials: ctx.plan.trials,
        }
    }
}

/// Everything measured on one side.
#[derive(Default)]
struct Side {
    spawn_ms: Vec<f64>,
    calls: Vec<Latency>,
    stream: Vec<f64>,
    rss: f64,
    pss: f64,
    guardian_rss: f64,
    guardian_pss: f64,
}

/// What cjm measured beyond its [`Side`]: the other ways of calling it.
#[derive(Default)]
struct CjmExtra {
    /// Reused client against the proxy's own (`--fd`) worker.
    stalled: Vec<Latency>,
    /// `proxy.execute` as shipped (a new client per call).
    shipped: Vec<Latency>,
    /// Streams through the `--port` worker.
    stream_port: Vec<f64>,
    python: String,
}

/// P20.
///
/// # Errors
/// When the SDK's worker fails; cjm failing (no Python ≥ 3.12, no network) is reported as not
/// measured instead.
pub async fn python(ctx: &Ctx) -> Result<Outcome> {
    let sizes = Sizes::new(ctx);
    let load = load_average();
    let python = interpreter(ctx);
    let spec = sdk_spec(&python.0)?;
    let mut cjm = match &python.1 {
        Ok(venv_python) => {
            let data = ctx.dir().join("cjm-data");
            std::fs::create_dir_all(&data)?;
            match start_cjm(venv_python, &data).await {
                Ok(h) => Ok(h),
                Err(e) => Err(format!("{e:#}")),
            }
        }
        Err(e) => Err(e.clone()),
    };
    let (mut sdk, mut base, mut extra) = (Side::default(), Side::default(), CjmExtra::default());
    let result = measure(
        ctx, &sizes, &spec, &mut cjm, &mut sdk, &mut base, &mut extra,
    )
    .await;
    let cjm_error = match cjm {
        Ok(h) => {
            h.quit().await;
            None
        }
        Err(e) => Some(e),
    };
    result?;
    let mut o = outcome(&sizes, &python.0, &sdk, &base, &extra, cjm_error);
    o.measure("load_average_1m_before", load);
    o.measure("load_average_1m_after", load_average());
    Ok(o)
}

/// The 1-minute load average (`/proc/loadavg`): other work on the machine slows both sides,
/// and cjm's many-module start and SQLite journal more than the SDK's; NaN when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The interpreter both sides run (the venv's, so they compare like with like; `python3`
/// when there is no venv) and the venv's interpreter or why there is none.
fn interpreter(ctx: &Ctx) -> (PathBuf, Result<PathBuf, String>) {
    let dir = crate::procs::bench_dir()
        .map(|b| b.join("cjm-venv"))
        .unwrap_or_else(|_| ctx.dir().join("cjm-venv"));
    match cjm::venv(&dir) {
        Ok(python) => (python.clone(), Ok(python)),
        Err(e) => (PathBuf::from("python3"), Err(format!("{e:#}"))),
    }
}

/// The SDK worker: `bench/python/sdk_bench.py` with the tree's SDK on `PYTHONPATH`
/// (`PLUGVISOR_BENCH_PY_SDK` names another copy's `src`, to measure an older SDK).
fn sdk_spec(python: &Path) -> Result<WorkerSpec> {
    let script = cjm::scripts().join("sdk_bench.py");
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let sdk = std::env::var_os("PLUGVISOR_BENCH_PY_SDK")
        .map_or_else(|| cjm::repo().join("sdk/python/src"), PathBuf::from);
    let (key, value) = cjm::bytecode_cache();
    Ok(WorkerSpec::new(python)
        .arg(script)
        .env("PYTHONPATH", sdk)
        .env("PYTHONDONTWRITEBYTECODE", "")
        .env(key, value)
        .env("PLUGVISOR_LOG", "warn")
        .start_timeout(Duration::from_secs(30))
        .stop_grace(Duration::from_secs(2)))
}

async fn start_cjm(python: &Path, data: &Path) -> Result<Harness> {
    let mut h = Harness::start(python, data)?;
    h.ask(json!({"op": "info"})).await?;
    Ok(h)
}

/// Runs every measurement, the two sides interleaved trial by trial.
async fn measure(
    ctx: &Ctx,
    sizes: &Sizes,
    spec: &WorkerSpec,
    cjm: &mut Result<Harness, String>,
    sdk: &mut Side,
    base: &mut Side,
    extra: &mut CjmExtra,
) -> Result<()> {
    spawns(ctx, sizes, spec, cjm, sdk, base).await?;
    let worker = ctx.host.spawn(spec.clone()).await?;
    let run = calls_and_streams(sizes, &worker, cjm, sdk, base, extra).await;
    if run.is_ok() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sdk.rss = rss_bytes(worker.pid()).unwrap_or(0) as f64;
        sdk.pss = pss_bytes(worker.pid()).unwrap_or(0) as f64;
        if let Ok(h) = cjm.as_mut() {
            let memory = cjm_memory(h).await;
            note_cjm(
                cjm,
                memory.map(|(rss, pss)| (base.rss, base.pss) = (rss, pss)),
            );
        }
        let guardian = children(worker.pid()).first().copied();
        sdk.guardian_rss = guardian.and_then(rss_bytes).unwrap_or(0) as f64;
        sdk.guardian_pss = guardian.and_then(pss_bytes).unwrap_or(0) as f64;
    }
    worker.shutdown().await;
    run
}

/// Marks cjm as not measured when one of its steps failed.
fn note_cjm(cjm: &mut Result<Harness, String>, step: Result<()>) {
    if let Err(e) = step {
        *cjm = Err(format!("{e:#}"));
    }
}

/// Spawn → first answer, alternating: the SDK worker through the host, cjm's proxy.
async fn spawns(
    ctx: &Ctx,
    sizes: &Sizes,
    spec: &WorkerSpec,
    cjm: &mut Result<Harness, String>,
    sdk: &mut Side,
    base: &mut Side,
) -> Result<()> {
    for i in 0..=sizes.spawns {
        let start = Instant::now();
        let worker = ctx.host.spawn(spec.clone()).await?;
        let out = worker.execute(json!({"text": "spawned"})).await?;
        let elapsed = start.elapsed();
        worker.shutdown().await;
        check(&out, "spawned")?;
        // The first round warms the page cache (and compiles the SDK's bytecode).
        if i > 0 {
            sdk.spawn_ms.extend(millis(&[elapsed]));
        }
        if let Ok(h) = cjm.as_mut() {
            let answer = h.ask(json!({"op": "spawn"})).await;
            let step = answer.map(|a| {
                if i > 0 {
                    base.spawn_ms.push(a["ms"].as_f64().unwrap_or(f64::NAN));
                }
            });
            note_cjm(cjm, step);
        }
    }
    if let Ok(h) = cjm.as_mut() {
        let step = h.ask(json!({"op": "port_worker"})).await.map(drop);
        note_cjm(cjm, step);
    }
    Ok(())
}

async fn calls_and_streams(
    sizes: &Sizes,
    worker: &RemotePlugin,
    cjm: &mut Result<Harness, String>,
    sdk: &mut Side,
    base: &mut Side,
    extra: &mut CjmExtra,
) -> Result<()> {
    sdk_calls(worker, WARMUP).await?;
    if let Ok(h) = cjm.as_mut() {
        let step = cjm_warmup(h, extra).await;
        note_cjm(cjm, step);
    }
    for _ in 0..sizes.call_trials {
        sdk.calls
            .push(Latency::of_us(&sdk_calls(worker, sizes.sdk_calls).await?));
        if let Ok(h) = cjm.as_mut() {
            let step = cjm_calls(h, sizes, base, extra).await;
            note_cjm(cjm, step);
        }
    }
    sdk_stream(worker, 10_000).await?;
    for _ in 0..sizes.stream_trials {
        sdk.stream.push(sdk_stream(worker, sizes.sdk_stream).await?);
        if let Ok(h) = cjm.as_mut() {
            let step = cjm_streams(h, sizes.cjm_stream, base, extra).await;
            note_cjm(cjm, step);
        }
    }
    Ok(())
}

/// `n` sequential small calls of the SDK worker, in µs each.
async fn sdk_calls(worker: &RemotePlugin, n: usize) -> Result<Vec<f64>> {
    let input = json!({"text": TEXT});
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let out = worker.execute(input.clone()).await?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        check(&out, TEXT)?;
    }
    Ok(samples)
}

/// Items per second of one SDK stream of `n` items, every item checked.
async fn sdk_stream(worker: &RemotePlugin, n: u64) -> Result<f64> {
    let start = Instant::now();
    let mut stream = worker.execute_stream(json!({"n": n})).await?;
    let mut count = 0u64;
    while let Some(item) = stream.next().await {
        if item?.as_u64() != Some(count) {
            bail!("stream item {count} is wrong");
        }
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    if count != n {
        bail!("expected {n} items, got {count}");
    }
    Ok(n as f64 / secs)
}

async fn cjm_warmup(h: &mut Harness, extra: &mut CjmExtra) -> Result<()> {
    let info = h.ask(json!({"op": "info"})).await?;
    extra.python = info["python"].as_str().unwrap_or("?").to_owned();
    h.ask(json!({"op": "best", "n": WARMUP, "text": TEXT, "via": "port"}))
        .await?;
    h.ask(json!({"op": "best", "n": 5, "text": TEXT, "via": "proxy"}))
        .await?;
    h.ask(json!({"op": "shipped", "n": 5, "text": TEXT}))
        .await?;
    Ok(())
}

/// One trial of each way of calling cjm.
async fn cjm_calls(
    h: &mut Harness,
    sizes: &Sizes,
    base: &mut Side,
    extra: &mut CjmExtra,
) -> Result<()> {
    let ask = |n: usize, op: &str, via: &str| json!({"op": op, "n": n, "text": TEXT, "via": via});
    let best = h.ask(ask(sizes.cjm_best_calls, "best", "port")).await?;
    base.calls.push(Latency::of_us(&samples_us(&best)));
    let stalled = h.ask(ask(sizes.cjm_stalled_calls, "best", "proxy")).await?;
    extra.stalled.push(Latency::of_us(&samples_us(&stalled)));
    let shipped = h
        .ask(ask(sizes.cjm_shipped_calls, "shipped", "proxy"))
        .await?;
    extra.shipped.push(Latency::of_us(&samples_us(&shipped)));
    Ok(())
}

/// One cjm stream through the proxy's worker and one through the `--port` worker.
async fn cjm_streams(h: &mut Harness, n: u64, base: &mut Side, extra: &mut CjmExtra) -> Result<()> {
    for via in ["proxy", "port"] {
        let a = h.ask(json!({"op": "stream", "n": n, "via": via})).await?;
        let (items, secs) = (a["items"].as_f64(), a["s"].as_f64());
        let per_s = items.zip(secs).map_or(f64::NAN, |(i, s)| i / s);
        match via {
            "proxy" => base.stream.push(per_s),
            _ => extra.stream_port.push(per_s),
        }
    }
    Ok(())
}

/// RSS and PSS of the proxy's (idle) cjm worker.
async fn cjm_memory(h: &mut Harness) -> Result<(f64, f64)> {
    let a = h.ask(json!({"op": "pid", "via": "proxy"})).await?;
    let pid = a["pid"].as_u64().context("no pid")? as u32;
    let rss = rss_bytes(pid).context("reading cjm's worker RSS")? as f64;
    Ok((rss, pss_bytes(pid).unwrap_or(0) as f64))
}

fn check(out: &Value, text: &str) -> Result<()> {
    if out != &json!({"text": text}) {
        bail!("the plugin answered {out}");
    }
    Ok(())
}

fn latency(trials: &[Latency]) -> Latency {
    Latency::median_of(trials)
}

#[allow(clippy::too_many_lines)] // one figure per line: splitting it would hide the report's shape
fn outcome(
    sizes: &Sizes,
    python: &Path,
    sdk: &Side,
    base: &Side,
    extra: &CjmExtra,
    cjm_error: Option<String>,
) -> Outcome {
    let mut o = Outcome::new(
        "P20",
        "Python SDK worker through the Rust host vs the same plugin logic under \
         cjm-plugin-system's own proxy and worker: small call, stream of small items, spawn -> \
         first answer, idle memory",
        "call p50 >= 5 x faster than cjm's best case; stream >= 10 x; spawn >= 5 x",
    );
    let call = latency(&sdk.calls);
    let (spawn, stream) = (median(&sdk.spawn_ms), median(&sdk.stream));
    o.measure("call_p50_us", call.p50);
    o.measure("call_p99_us", call.p99);
    o.measure("stream_items_per_s", stream);
    o.measure("spawn_to_first_answer_p50_ms", spawn);
    o.measure("spawn_to_first_answer_p90_ms", quantile(&sdk.spawn_ms, 0.9));
    o.measure("idle_rss_mib", sdk.rss / MIB);
    o.measure("idle_pss_mib", sdk.pss / MIB);
    o.measure("guardian_rss_mib", sdk.guardian_rss / MIB);
    o.measure("guardian_pss_mib", sdk.guardian_pss / MIB);
    o.measure("python", python.display().to_string());
    let mut sizes_json = Map::new();
    for (k, v) in [
        ("spawns", sizes.spawns as u64),
        ("sdk_calls_per_trial", sizes.sdk_calls as u64),
        ("cjm_best_calls_per_trial", sizes.cjm_best_calls as u64),
        (
            "cjm_fd_worker_calls_per_trial",
            sizes.cjm_stalled_calls as u64,
        ),
        (
            "cjm_shipped_calls_per_trial",
            sizes.cjm_shipped_calls as u64,
        ),
        ("sdk_stream_items", sizes.sdk_stream),
        ("cjm_stream_items", sizes.cjm_stream),
        ("stream_trials", sizes.stream_trials as u64),
        ("call_trials", sizes.call_trials as u64),
    ] {
        sizes_json.insert(k.to_owned(), Value::from(v));
    }
    o.measure("sizes", Value::Object(sizes_json));
    o.measured_text = format!(
        "call p50 {:.0} µs p99 {:.0} µs; {}; spawn {:.0} ms; RSS {:.1} MiB",
        call.p50,
        call.p99,
        rate(stream, "items"),
        spawn,
        sdk.rss / MIB
    );
    let (ratios, text) = match &cjm_error {
        Some(e) => {
            o.base("cjm", "not measured");
            o.notes.push(format!("cjm-plugin-system not measured: {e}"));
            ([f64::NAN; 3], format!("cjm not measured ({e})"))
        }
        None => cjm_figures(&mut o, sdk, base, extra),
    };
    o.baseline_text = text;
    o.checks.push(Check::at_least(
        "cjm best-case call p50 / SDK call p50",
        ratios[0],
        5.0,
    ));
    o.checks.push(Check::at_least(
        "SDK stream items/s / cjm stream items/s",
        ratios[1],
        10.0,
    ));
    o.checks.push(Check::at_least(
        "cjm spawn p50 / SDK spawn p50",
        ratios[2],
        5.0,
    ));
    o.reference = "measured by hand earlier (issue 12): cjm best case 0.72-0.75 ms per call, \
                   20.4-20.8 ms as shipped, ~5,300 chunks/s, 0.37 s spawn -> first answer";
    o.notes.push(
        "both sides run bench/python/bench_logic.py in the same interpreter (the bench's venv); \
         the SDK from sdk/python/src on PYTHONPATH, cjm-plugin-system from PyPI"
            .to_owned(),
    );
    o
}

/// Records cjm's figures; returns the three ratios (call, stream, spawn) and the table text.
fn cjm_figures(o: &mut Outcome, sdk: &Side, base: &Side, extra: &CjmExtra) -> ([f64; 3], String) {
    let best = latency(&base.calls);
    let stalled = latency(&extra.stalled);
    let shipped = latency(&extra.shipped);
    let best_p50 = best.p50.min(stalled.p50);
    let (proxy_stream, port_stream) = (median(&base.stream), median(&extra.stream_port));
    let cjm_stream = proxy_stream.max(port_stream);
    let cjm_spawn = median(&base.spawn_ms);
    let call = latency(&sdk.calls);
    let ratios = [
        best_p50 / call.p50,
        median(&sdk.stream) / cjm_stream,
        cjm_spawn / median(&sdk.spawn_ms),
    ];
    o.base("cjm_plugin_system", CJM_VERSION);
    o.base("cjm_python", extra.python.as_str());
    o.base("best_case_call_p50_us", best.p50);
    o.base("best_case_call_p99_us", best.p99);
    o.base("fd_worker_reused_client_call_p50_us", stalled.p50);
    o.base("fd_worker_reused_client_call_p99_us", stalled.p99);
    o.base("as_shipped_call_p50_us", shipped.p50);
    o.base("as_shipped_call_p99_us", shipped.p99);
    o.base("stream_items_per_s", cjm_stream);
    o.base("stream_items_per_s_proxy_worker", proxy_stream);
    o.base("stream_items_per_s_port_worker", port_stream);
    o.base("spawn_to_first_answer_p50_ms", cjm_spawn);
    o.base("idle_rss_mib", base.rss / MIB);
    o.base("idle_pss_mib", base.pss / MIB);
    o.measure("ratio_call_vs_cjm_best", ratios[0]);
    o.measure("ratio_call_vs_cjm_shipped", shipped.p50 / call.p50);
    o.measure("ratio_stream_vs_cjm", ratios[1]);
    o.measure("ratio_spawn_vs_cjm", ratios[2]);
    o.notes.push(
        "cjm best case: one reused httpx.Client against cjm's worker started with --port; the \
         proxy's own worker (--fd) is also measured and the faster taken. On --fd, uvicorn wraps \
         the socket as AF_UNIX, so asyncio never sets TCP_NODELAY and small answers wait for \
         the client's delayed ACK (tens of ms)"
            .to_owned(),
    );
    let text = format!(
        "cjm best p50 {:.0} µs ({:.1}x), shipped {:.1} ms; {} ({:.1}x); spawn {:.0} ms ({:.1}x); RSS {:.1} MiB",
        best_p50,
        ratios[0],
        shipped.p50 / 1e3,
        rate(cjm_stream, "items"),
        ratios[1],
        cjm_spawn,
        ratios[2],
        base.rss / MIB
    );
    (ratios, text)
}
