//! P1 (sequential small calls), P11 (the same over TCP loopback) and P2 (8 concurrent
//! callers), each against its baselines, trials interleaved so drift hits all alike.

use crate::baseline::bare_hyper::BareHyper;
use crate::baseline::client::HttpConn;
use crate::baseline::raw_uds::RawUds;
use crate::identity::{self, Identity};
use crate::procs::{binary, context_switches, spawn_with_line, ChildGuard};
use crate::report::{Check, Outcome};
use crate::scenario::{rate, small_input, us, Ctx};
use crate::stats::{median, Latency};
use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use plugvisor_host::RemotePlugin;
use plugvisor_proto::{json, Plugin, Value};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls made before measuring, per contender.
const WARMUP: usize = 500;

/// Token of the echo workers started by hand (P11).
const TOKEN: &str = "plugvisor-bench-token";

/// An echo worker started by hand (not through the host) on `--listen ADDR`, called with a
/// plain hyper client: isolates the transport (Unix socket vs TCP) from the host's code.
struct DirectWorker {
    conn: HttpConn,
    _process: ChildGuard,
}

impl DirectWorker {
    async fn start(listen: &str) -> Result<Self> {
        let mut command = Command::new(binary("echo-worker")?);
        // As the host starts workers: own process group, exit when stdin (held by the
        // guard) closes, so nothing outlives a benchmark that dies.
        command
            .args(["--listen", listen])
            .env("PLUGVISOR_TOKEN", TOKEN)
            .env("PLUGVISOR_WATCH_STDIN", "1")
            .env("PLUGVISOR_LOG", "warn")
            .stdin(Stdio::piped())
            .process_group(0);
        let (process, line) = spawn_with_line(command)?;
        let mut words = line.split_whitespace().skip(2);
        let conn = match (words.next(), words.next()) {
            (Some("unix"), Some(path)) => HttpConn::unix(path.as_ref(), Some(TOKEN)).await?,
            (Some("tcp"), Some(addr)) => HttpConn::tcp(addr, Some(TOKEN)).await?,
            _ => bail!("unexpected handshake {line:?}"),
        };
        Ok(Self {
            conn,
            _process: process,
        })
    }
}

/// Who answers a call.
enum Contender<'a> {
    Raw(RawUds),
    Http(HttpConn),
    Remote(&'a RemotePlugin),
    InProcess(Identity),
}

impl Contender<'_> {
    /// Times `n` sequential calls with `input`.
    async fn trial(&mut self, n: usize, input: &Value) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        match self {
            Self::Raw(raw) => return raw.round_trips(n),
            Self::Http(conn) => {
                for _ in 0..n {
                    let start = Instant::now();
                    let body = serde_json::to_vec(&json!({ "input": input }))?;
                    let answer = conn.post("/v1/execute", Bytes::from(body)).await?;
                    let mut answer: Value = serde_json::from_slice(&answer)?;
                    let output = answer.get_mut("output").map(Value::take);
                    samples.push(start.elapsed());
                    check_echo(output.as_ref(), input)?;
                }
            }
            Self::Remote(remote) => {
                for _ in 0..n {
                    let start = Instant::now();
                    let output = remote.execute(input.clone()).await?;
                    samples.push(start.elapsed());
                    check_echo(Some(&output), input)?;
                }
            }
            Self::InProcess(echo) => {
                for _ in 0..n {
                    let start = Instant::now();
                    let output = Plugin::execute(echo, input.clone()).await?;
                    samples.push(start.elapsed());
                    check_echo(Some(&output), input)?;
                }
            }
        }
        Ok(samples)
    }
}

fn check_echo(output: Option<&Value>, input: &Value) -> Result<()> {
    if output != Some(input) {
        bail!("echo answered {output:?} for {input}");
    }
    Ok(())
}

/// P1 and P11: median over trials of each contender's p50 and p99.
///
/// # Errors
/// When a server or worker cannot be started or a call fails.
pub async fn sequential(ctx: &Ctx) -> Result<(Outcome, Outcome)> {
    let dir = ctx.dir();
    let identity = ctx.host.spawn(ctx.spec(identity::NAME)?).await?;
    let echo = ctx.host.spawn(ctx.spec("echo")?).await?;
    let bare_uds = BareHyper::unix(dir, 1)?;
    let bare_tcp = BareHyper::tcp()?;
    let socket = dir.join("echo-direct.sock");
    let direct_unix = DirectWorker::start(&format!("unix:{}", socket.display())).await?;
    let direct_tcp = DirectWorker::start("tcp://127.0.0.1:0").await?;
    let mut contenders = [
        ("raw_uds", Contender::Raw(RawUds::start(dir)?)),
        ("bare_hyper", Contender::Http(bare_uds.connect().await?)),
        ("plugvisor", Contender::Remote(&identity)),
        ("bundled_echo", Contender::Remote(&echo)),
        ("in_process", Contender::InProcess(Identity)),
        ("bare_hyper_tcp", Contender::Http(bare_tcp.connect().await?)),
        ("worker_direct_unix", Contender::Http(direct_unix.conn)),
        ("worker_direct_tcp", Contender::Http(direct_tcp.conn)),
    ];
    let input = small_input();
    let mut trials: Vec<Vec<Latency>> = vec![Vec::new(); contenders.len()];
    for (_, c) in &mut contenders {
        c.trial(WARMUP, &input).await?;
    }
    let mut switches = Vec::new();
    for _ in 0..ctx.plan.trials {
        for ((name, c), t) in contenders.iter_mut().zip(&mut trials) {
            let before = context_switches(identity.pid());
            t.push(Latency::of(&c.trial(ctx.plan.calls, &input).await?));
            if *name == "plugvisor" {
                let after = context_switches(identity.pid());
                switches.push(after.saturating_sub(before) as f64 / ctx.plan.calls as f64);
            }
        }
    }
    let lat: Vec<(&str, Latency)> = contenders
        .iter()
        .zip(&trials)
        .map(|((name, _), t)| (*name, Latency::median_of(t)))
        .collect();
    drop(contenders);
    identity.shutdown().await;
    echo.shutdown().await;
    let get = |name: &str| {
        lat.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| *l)
            .context("missing contender")
    };
    let mut p1 = p1(ctx, &get)?;
    p1.measure("worker_context_switches_per_call", median(&switches));
    Ok((p1, p11(&get)?))
}

fn p1(ctx: &Ctx, get: &dyn Fn(&str) -> Result<Latency>) -> Result<Outcome> {
    let mut o = Outcome::new(
        "P1",
        "sequential small execute (32-byte input) through RemotePlugin over a Unix socket, to a \
         plugin that answers its input as bare-hyper does (the bundled echo, which also keeps \
         a history, beside it)",
        "p50 <= 2.0 x bare-hyper p50; p99 <= 100 us",
    );
    let pv = get("plugvisor")?;
    let bare = get("bare_hyper")?;
    o.measure("p50_us", pv.p50);
    o.measure("p99_us", pv.p99);
    o.measure("calls_per_trial", ctx.plan.calls as u64);
    o.measure("trials", ctx.plan.trials as u64);
    for name in ["bare_hyper", "raw_uds", "in_process"] {
        let l = get(name)?;
        o.base(&format!("{name}_p50_us"), l.p50);
        o.base(&format!("{name}_p99_us"), l.p99);
    }
    let ratio = pv.p50 / bare.p50;
    o.measure("p50_over_bare_hyper", ratio);
    let echo = get("bundled_echo")?;
    o.measure("bundled_echo_p50_us", echo.p50);
    o.measure("bundled_echo_p99_us", echo.p99);
    o.measure("bundled_echo_p50_over_bare_hyper", echo.p50 / bare.p50);
    o.checks
        .push(Check::at_most("p50 / bare-hyper p50", ratio, 2.0));
    o.checks.push(Check::at_most("p99 (us)", pv.p99, 100.0));
    o.measured_text = format!(
        "p50 {} p99 {} ({ratio:.2}x; bundled echo {})",
        us(pv.p50),
        us(pv.p99),
        us(echo.p50)
    );
    o.baseline_text = format!(
        "bare-hyper {} / raw-uds {} / in-process {}",
        us(bare.p50),
        us(get("raw_uds")?.p50),
        us(get("in_process")?.p50)
    );
    o.reference = "go-plugin: measured in P23; Python isolation library 0.7-20 ms; \
                   bare hyper over UDS ~10 us; raw UDS round trip ~3.5 us";
    Ok(o)
}

fn p11(get: &dyn Fn(&str) -> Result<Latency>) -> Result<Outcome> {
    let mut o = Outcome::new(
        "P11",
        "per-call cost over TCP loopback instead of a Unix socket (echo worker started with \
         --listen, called by a plain hyper client; bare-hyper likewise)",
        "reported beside P1",
    );
    let (wu, wt) = (get("worker_direct_unix")?, get("worker_direct_tcp")?);
    let (bu, bt) = (get("bare_hyper")?, get("bare_hyper_tcp")?);
    o.measure("worker_tcp_p50_us", wt.p50);
    o.measure("worker_tcp_p99_us", wt.p99);
    o.measure("worker_unix_p50_us", wu.p50);
    o.measure("worker_unix_p99_us", wu.p99);
    o.measure("tcp_overhead_p50_us", wt.p50 - wu.p50);
    o.measure("plugvisor_remote_unix_p50_us", get("plugvisor")?.p50);
    o.base("bare_hyper_tcp_p50_us", bt.p50);
    o.base("bare_hyper_unix_p50_us", bu.p50);
    o.base("bare_hyper_tcp_overhead_p50_us", bt.p50 - bu.p50);
    o.measured_text = format!(
        "worker TCP p50 {} vs UDS {} (+{:.1} µs)",
        us(wt.p50),
        us(wu.p50),
        wt.p50 - wu.p50
    );
    o.baseline_text = format!("bare-hyper TCP {} vs UDS {}", us(bt.p50), us(bu.p50));
    o.notes.push(
        "RemotePlugin always uses the worker's Unix socket; the TCP figure is the same worker \
         binary started with --listen tcp://127.0.0.1:0 and called by the benchmark's own \
         kept-alive hyper client, compared with that client over a Unix socket"
            .to_owned(),
    );
    Ok(o)
}

/// P2: calls per second of `callers` concurrent callers through one `RemotePlugin`, against
/// bare-hyper with as many connections (its faster flavour: one thread, or one per core).
///
/// The callers run on a multi-thread runtime of their own (one thread per core), on a thread
/// of their own, as in a server application.
///
/// # Errors
/// When a server or worker cannot be started or a call fails.
pub async fn concurrent(ctx: &Ctx) -> Result<Outcome> {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let work = || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()?;
        runtime.block_on(concurrent_rates(ctx, cores))
    };
    let (pv, bare1, bare_n) = std::thread::scope(|s| s.spawn(work).join())
        .map_err(|_| anyhow::anyhow!("the P2 thread panicked"))??;
    let base = bare1.max(bare_n);
    let ratio = pv / base;
    let callers = ctx.plan.callers;
    let mut o = Outcome::new(
        "P2",
        "8 concurrent callers through one RemotePlugin (the identity plugin of P1)",
        ">= 0.5 x bare-hyper with 8 connections",
    );
    o.measure("calls_per_s", pv);
    o.measure("callers", callers as u64);
    o.measure("seconds_per_trial", ctx.plan.concurrent_for.as_secs_f64());
    o.measure("ratio_to_bare_hyper", ratio);
    o.base("bare_hyper_calls_per_s", base);
    o.base("bare_hyper_1_thread_calls_per_s", bare1);
    o.base(&format!("bare_hyper_{cores}_threads_calls_per_s"), bare_n);
    o.checks
        .push(Check::at_least("calls/s / bare-hyper calls/s", ratio, 0.5));
    o.measured_text = format!("{} ({ratio:.2}x)", rate(pv, "calls"));
    o.baseline_text = format!("bare-hyper {}", rate(base, "calls"));
    o.reference = "go-plugin: measured in P23";
    o.notes.push(format!(
        "callers on a {cores}-thread runtime; the baseline is the faster of a 1-thread and a \
         {cores}-thread bare-hyper server"
    ));
    Ok(o)
}

/// Medians over trials of (plugvisor, bare-hyper 1 thread, bare-hyper `cores` threads).
async fn concurrent_rates(ctx: &Ctx, cores: usize) -> Result<(f64, f64, f64)> {
    let identity = Arc::new(ctx.host.spawn(ctx.spec(identity::NAME)?).await?);
    let (callers, window) = (ctx.plan.callers, ctx.plan.concurrent_for);
    let warm = Duration::from_millis(200);
    let mut bares = Vec::new();
    for threads in [1, cores] {
        let server = BareHyper::unix(ctx.dir(), threads)?;
        let mut conns = Vec::new();
        for _ in 0..callers {
            conns.push(server.connect().await?);
        }
        let (_, conns) = bare_rate(conns, warm).await?;
        bares.push((server, conns, Vec::new()));
    }
    remote_rate(&identity, callers, warm).await?;
    let mut pv_rates = Vec::new();
    for _ in 0..ctx.plan.trials.min(3) {
        for (_, conns, rates) in &mut bares {
            let (r, back) = bare_rate(std::mem::take(conns), window).await?;
            *conns = back;
            rates.push(r);
        }
        pv_rates.push(remote_rate(&identity, callers, window).await?);
    }
    if let Ok(identity) = Arc::try_unwrap(identity) {
        identity.shutdown().await;
    }
    let bare1 = median(&bares[0].2);
    let bare_n = median(&bares[1].2);
    Ok((median(&pv_rates), bare1, bare_n))
}

/// Calls per second of `callers` tasks calling `plugin` for `window`.
async fn remote_rate(plugin: &Arc<RemotePlugin>, callers: usize, window: Duration) -> Result<f64> {
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let plugin = Arc::clone(plugin);
        tasks.push(tokio::spawn(async move {
            let input = small_input();
            let mut n = 0u64;
            while Instant::now() < deadline {
                plugin.execute(input.clone()).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Calls per second over `conns` (one task each) for `window`; gives the connections back.
async fn bare_rate(conns: Vec<HttpConn>, window: Duration) -> Result<(f64, Vec<HttpConn>)> {
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for mut conn in conns {
        tasks.push(tokio::spawn(async move {
            let input = small_input();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = serde_json::to_vec(&json!({ "input": input }))?;
                let answer = conn.post("/v1/execute", Bytes::from(body)).await?;
                let answer: Value = serde_json::from_slice(&answer)?;
                if answer.get("output") != Some(&input) {
                    bail!("bare-hyper answered {answer}");
                }
                n += 1;
            }
            anyhow::Ok((n, conn))
        }));
    }
    let mut total = 0;
    let mut back = Vec::new();
    for task in tasks {
        let (n, conn) = task.await??;
        total += n;
        back.push(conn);
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), back))
}
