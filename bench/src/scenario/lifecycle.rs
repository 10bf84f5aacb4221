//! P7 (spawn → handshake → first answer), P8 (SIGKILL mid-call → `WorkerCrashed`, beside the
//! kernel's own SIGKILL → reaped) and P9
//! (crash → a restarted worker answers, backoff 0).

use crate::baseline::{bare_kill, bare_spawn, hyper_spawn};
use crate::report::{Check, Outcome};
use crate::scenario::{small_input, Ctx};
use crate::stats::{median, millis, quantile};
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plugvisor_host::{BackoffConfig, Plugin, PluginError, SupervisorConfig, WorkerState};
use plugvisor_proto::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ms(value: f64) -> String {
    format!("{value:.2} ms")
}

/// P7: host spawn + first `execute` answered, against bare-spawn and a minimal tokio + hyper
/// server's spawn, interleaved.
///
/// # Errors
/// When a worker or a baseline binary cannot be started.
pub async fn spawn(ctx: &Ctx) -> Result<Outcome> {
    let spec = ctx.spec("echo")?;
    let input = small_input();
    let body = bytes::Bytes::from(serde_json::to_vec(&json!({ "input": input }))?);
    let (mut pv, mut bare, mut stack) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ctx.plan.lifecycle_trials + 1 {
        let b = bare_spawn::once(ctx.dir(), i)?;
        let h = hyper_spawn::once(ctx.dir(), i, &body).await?;
        let start = Instant::now();
        let echo = ctx.host.spawn(spec.clone()).await?;
        echo.execute(input.clone()).await?;
        let elapsed = start.elapsed();
        echo.shutdown().await;
        // The first round warms the page cache and the spawner thread.
        if i > 0 {
            bare.push(b);
            stack.push(h);
            pv.push(elapsed);
        }
    }
    let (pv, bare, stack) = (millis(&pv), millis(&bare), millis(&stack));
    let (p50, base, hyper) = (median(&pv), median(&bare), median(&stack));
    let ratio = p50 / base;
    let mut o = Outcome::new(
        "P7",
        "spawn -> handshake (with the plugin's info) -> first execute answered (echo)",
        "p50 <= 1.5 x bare-spawn p50",
    );
    o.measure("p50_ms", p50);
    o.measure("p90_ms", quantile(&pv, 0.9));
    o.measure("ratio_to_bare_spawn", ratio);
    o.measure("trials", pv.len() as u64);
    o.base("bare_spawn_p50_ms", base);
    o.base("bare_spawn_p90_ms", quantile(&bare, 0.9));
    o.base("tokio_hyper_spawn_p50_ms", hyper);
    o.base("tokio_hyper_spawn_ratio_to_bare_spawn", hyper / base);
    o.measure("ratio_to_tokio_hyper_spawn", p50 / hyper);
    o.checks
        .push(Check::at_most("p50 / bare-spawn p50", ratio, 1.5));
    o.measured_text = format!(
        "p50 {} ({ratio:.2}x; {:.2}x tokio+hyper)",
        ms(p50),
        p50 / hyper
    );
    o.baseline_text = format!(
        "bare-spawn {}; tokio+hyper {} ({:.2}x)",
        ms(base),
        ms(hyper),
        hyper / base
    );
    o.reference = "go-plugin: measured in P23; Python isolation library 370 ms";
    o.notes.push(
        "bare-spawn: spawn a std-only binary that binds a Unix socket and prints one line, \
         connect, one 16-byte round trip"
            .to_owned(),
    );
    o.notes.push(
        "tokio+hyper: spawn plugvisor-bench-hyper (a multi-thread tokio runtime of two threads \
         and a hyper HTTP/1.1 JSON echo, nothing of plugvisor), connect, one call: the floor of \
         the stack a worker is built on"
            .to_owned(),
    );
    Ok(o)
}

/// Waits until the worker reports a call in flight.
async fn until_in_flight(plugin: &plugvisor_host::RemotePlugin) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if plugin.health().await?.in_flight > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("the hanging call never reached the worker")
}

/// P8: SIGKILL during a call, time until the caller holds `WorkerCrashed`.
///
/// # Errors
/// When a worker cannot be started or the call does not fail as `WorkerCrashed`.
pub async fn crash(ctx: &Ctx) -> Result<Outcome> {
    let spec = ctx.spec("chaos")?;
    let program = crate::procs::binary("chaos-worker")?;
    let (mut samples, mut bare, mut worker) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..ctx.plan.lifecycle_trials {
        bare.push(bare_kill::bare(ctx.dir(), n)?);
        worker.push(bare_kill::worker(&program, ctx.dir(), n)?);
        let chaos = Arc::new(ctx.host.spawn(spec.clone()).await?);
        let caller = Arc::clone(&chaos);
        let call = tokio::spawn(async move {
            let result = caller.execute(json!({"fault": "hang"})).await;
            (result, Instant::now())
        });
        until_in_flight(&chaos).await?;
        let start = Instant::now();
        kill(Pid::from_raw(chaos.pid() as i32), Signal::SIGKILL)?;
        let (result, done) = call.await?;
        samples.push(done.duration_since(start));
        match result {
            Err(PluginError::WorkerCrashed(_)) => {}
            other => bail!("expected WorkerCrashed, got {other:?}"),
        }
        if let Ok(chaos) = Arc::try_unwrap(chaos) {
            chaos.shutdown().await;
        }
    }
    let v = millis(&samples);
    let p50 = median(&v);
    let (bare, worker) = (median(&millis(&bare)), median(&millis(&worker)));
    let mut o = Outcome::new(
        "P8",
        "worker SIGKILLed during a call -> the caller gets WorkerCrashed (with exit status and \
         stderr tail)",
        "p50 <= 0.3 ms",
    );
    o.measure("p50_ms", p50);
    o.measure("p99_ms", quantile(&v, 0.99));
    o.measure("trials", v.len() as u64);
    o.checks.push(Check::at_most("p50 (ms)", p50, 0.3));
    o.base("bare_kill_p50_ms", bare);
    o.base("worker_kill_p50_ms", worker);
    o.measure("ratio_to_worker_waitpid", p50 / worker);
    o.measured_text = format!(
        "p50 {} p99 {} ({:.2}x the same worker's SIGKILL -> waitpid)",
        ms(p50),
        ms(quantile(&v, 0.99)),
        p50 / worker
    );
    o.baseline_text = format!(
        "SIGKILL -> waitpid, no host: bare process {}, the same worker {}",
        ms(bare),
        ms(worker)
    );
    o.notes.push(
        "the baselines kill a process and reap it with a plain waitpid (no host), interleaved \
         with the trials: the bare binary blocked in accept, and chaos-worker started by hand \
         and idle. The caller hears when the worker's sockets close, which comes before the \
         teardown of its memory that waitpid waits for (the guardian holds the address space \
         until the worker's last thread is gone), so P8 can be below the same worker's waitpid"
            .to_owned(),
    );
    Ok(o)
}

/// P9: SIGKILL an idle supervised worker, then call until a new worker answers.
///
/// # Errors
/// When the supervisor does not become ready or never answers again.
pub async fn restart(ctx: &Ctx) -> Result<Outcome> {
    let config = SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            factor: 1.0,
            jitter: 0.0,
        },
        max_restarts: 10_000,
        health: None,
        ..SupervisorConfig::default()
    };
    let sup = ctx.host.supervise(ctx.spec("chaos")?, config);
    if sup.wait_ready(Duration::from_secs(10)).await != WorkerState::Ready {
        bail!("the supervised worker did not become ready");
    }
    let none = json!({"fault": "none"});
    let mut samples = Vec::new();
    let mut failed_calls = 0u64;
    for _ in 0..ctx.plan.lifecycle_trials {
        let answer = sup.execute(none.clone()).await?;
        let old = answer["pid"].as_u64().context("chaos answered no pid")?;
        let start = Instant::now();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL)?;
        loop {
            match sup.execute(none.clone()).await {
                Ok(v) if v["pid"].as_u64() != Some(old) => break,
                Ok(_) => {}
                Err(_) if start.elapsed() < Duration::from_secs(10) => failed_calls += 1,
                Err(e) => bail!("no restarted worker answered within 10 s: {e}"),
            }
        }
        samples.push(start.elapsed());
    }
    sup.shutdown().await;
    let v = millis(&samples);
    let p50 = median(&v);
    let mut o = Outcome::new(
        "P9",
        "SIGKILL a supervised worker -> a restarted worker answers a call (backoff 0)",
        "p50 <= 10 ms",
    );
    o.measure("p50_ms", p50);
    o.measure("p99_ms", quantile(&v, 0.99));
    o.measure("trials", v.len() as u64);
    o.measure("calls_failed_in_between", failed_calls);
    o.checks.push(Check::at_most("p50 (ms)", p50, 10.0));
    o.measured_text = format!("p50 {} p99 {}", ms(p50), ms(quantile(&v, 0.99)));
    o.baseline_text = "-".to_owned();
    o.notes.push(
        "the caller retries at once on an error (the call that raced the kill gets \
         WorkerCrashed); later calls wait in the supervisor's queue for the new worker"
            .to_owned(),
    );
    Ok(o)
}
