//! P12 (a small call to a sandboxed worker against an unsandboxed one) and P13 (spawn → first
//! answer, sandboxed against not): what the default sandbox costs, measured side by side.

use crate::report::{Check, Outcome};
use crate::scenario::{small_input, us, Ctx};
use crate::stats::{median, millis, quantile};
use anyhow::Result;
use plugvisor_host::{Plugin, RemotePlugin, Sandbox};
use std::time::{Duration, Instant};

/// Each call of a batch, timed.
async fn timed_calls(plugin: &RemotePlugin, n: usize) -> Result<Vec<Duration>> {
    let input = small_input();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        plugin.execute(input.clone()).await?;
        out.push(start.elapsed());
    }
    Ok(out)
}

fn micros(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e6).collect()
}

/// P12: small calls, batches alternating between an unsandboxed and a sandboxed echo.
///
/// # Errors
/// When a worker cannot be started or a call fails.
pub async fn calls(ctx: &Ctx) -> Result<Outcome> {
    let free = ctx.host.spawn(ctx.spec("echo")?).await?;
    let boxed = ctx
        .host
        .spawn(ctx.spec("echo")?.sandbox(Sandbox::default()))
        .await?;
    timed_calls(&free, 1000).await?;
    timed_calls(&boxed, 1000).await?;
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    for _ in 0..ctx.plan.trials {
        open.extend(timed_calls(&free, ctx.plan.calls).await?);
        closed.extend(timed_calls(&boxed, ctx.plan.calls).await?);
    }
    free.shutdown().await;
    boxed.shutdown().await;
    let (open, closed) = (micros(&open), micros(&closed));
    let (p50, base) = (median(&closed), median(&open));
    let ratio = p50 / base;
    let mut o = Outcome::new(
        "P12",
        "small execute to a sandboxed echo (Landlock, seccomp, own netns) vs an unsandboxed one",
        "p50 <= 1.1 x unsandboxed p50",
    );
    o.measure("p50_us", p50);
    o.measure("p99_us", quantile(&closed, 0.99));
    o.measure("ratio_to_unsandboxed", ratio);
    o.base("unsandboxed_p50_us", base);
    o.base("unsandboxed_p99_us", quantile(&open, 0.99));
    o.checks
        .push(Check::at_most("p50 / unsandboxed p50", ratio, 1.1));
    o.measured_text = format!("p50 {} ({ratio:.2}x)", us(p50));
    o.baseline_text = format!("unsandboxed {}", us(base));
    Ok(o)
}

/// P13: spawn + first answer, alternating unsandboxed and sandboxed.
///
/// # Errors
/// When a worker cannot be started.
pub async fn spawn(ctx: &Ctx) -> Result<Outcome> {
    let input = small_input();
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    for i in 0..ctx.plan.lifecycle_trials + 1 {
        for sandboxed in [false, true] {
            let mut spec = ctx.spec("echo")?;
            if sandboxed {
                spec = spec.sandbox(Sandbox::default());
            }
            let start = Instant::now();
            let echo = ctx.host.spawn(spec).await?;
            echo.execute(input.clone()).await?;
            let elapsed = start.elapsed();
            echo.shutdown().await;
            // The first round warms the page cache and the spawner thread.
            if i > 0 {
                if sandboxed { &mut closed } else { &mut open }.push(elapsed);
            }
        }
    }
    let (open, closed) = (millis(&open), millis(&closed));
    let (p50, base) = (median(&closed), median(&open));
    let ratio = p50 / base;
    let mut o = Outcome::new(
        "P13",
        "spawn -> first execute answered, sandboxed (default sandbox) vs unsandboxed (echo)",
        "p50 <= 1.5 x unsandboxed p50",
    );
    o.measure("p50_ms", p50);
    o.measure("ratio_to_unsandboxed", ratio);
    o.measure("trials", closed.len() as u64);
    o.base("unsandboxed_p50_ms", base);
    o.checks
        .push(Check::at_most("p50 / unsandboxed p50", ratio, 1.5));
    o.measured_text = format!("p50 {p50:.2} ms ({ratio:.2}x)");
    o.baseline_text = format!("unsandboxed {base:.2} ms");
    o.notes.push(
        "the sandboxed spawn also builds a Landlock ruleset, compiles two seccomp filters \
         and enters a new network namespace"
            .to_owned(),
    );
    Ok(o)
}
