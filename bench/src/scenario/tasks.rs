//! P18: how late scheduled task runs start (`every = "100ms"`), idle and under call load.

use crate::report::{Check, Outcome};
use crate::scenario::routes::{manifest, Server};
use crate::scenario::{small_input, Ctx};
use crate::stats::{median, quantile};
use anyhow::Result;
use plugvisor_host::{CallOptions, EventKind, LifecycleEvent};
use std::time::Duration;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

/// Callers kept busy during the loaded phase.
const LOADERS: usize = 4;

/// P18: a clock plugin with `every = "100ms"`; the lateness of its runs (from their
/// `task_started` events) for a while idle, then while callers keep another plugin busy.
///
/// # Errors
/// When the server cannot start or a call fails.
pub async fn lateness(ctx: &Ctx) -> Result<Outcome> {
    let manifests = [
        manifest("echo", "echo", "")?,
        manifest(
            "clock",
            "echo",
            "[[tasks]]\nname = \"tick\"\nevery = \"100ms\"\ninput = \"tick\"",
        )?,
    ];
    let server = Server::serving(ctx, &manifests).await?;
    let phase = if ctx.plan.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let mut events = server.manager.host().events();
    let idle = collect(&mut events, phase).await;
    let stop = Instant::now() + phase;
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..LOADERS {
        let manager = server.manager.clone();
        loaders.spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < stop {
                manager
                    .call("echo", small_input(), CallOptions::default())
                    .await?;
                calls += 1;
            }
            anyhow::Ok(calls)
        });
    }
    let loaded = collect(&mut events, phase).await;
    let mut calls = 0;
    while let Some(done) = loaders.join_next().await {
        calls += done??;
    }
    server.stop().await;
    anyhow::ensure!(
        idle.len() >= 5 && loaded.len() >= 5,
        "too few runs: {} idle, {} loaded",
        idle.len(),
        loaded.len()
    );
    Ok(outcome(&idle, &loaded, calls as f64 / phase.as_secs_f64()))
}

/// The lateness (ms) of the clock's runs for `phase`.
async fn collect(events: &mut Receiver<LifecycleEvent>, phase: Duration) -> Vec<f64> {
    let until = Instant::now() + phase;
    let mut late = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout_at(until, events.recv()).await {
        if let EventKind::TaskStarted { late_ms, .. } = event.kind {
            if event.plugin == "clock" {
                late.push(late_ms);
            }
        }
    }
    late
}

fn outcome(idle: &[f64], loaded: &[f64], calls_per_s: f64) -> Outcome {
    let (idle_p99, loaded_p99) = (quantile(idle, 0.99), quantile(loaded, 0.99));
    let mut o = Outcome::new(
        "P18",
        "lateness of a scheduled task's runs (every = \"100ms\"), idle and while 4 callers keep \
         another plugin busy",
        "p99 <= 10 ms, idle and under load",
    );
    o.measure("idle_p50_ms", median(idle));
    o.measure("idle_p99_ms", idle_p99);
    o.measure("loaded_p50_ms", median(loaded));
    o.measure("loaded_p99_ms", loaded_p99);
    o.measure("runs_idle", idle.len());
    o.measure("runs_loaded", loaded.len());
    o.base("load_calls_per_s", calls_per_s);
    o.checks
        .push(Check::at_most("idle p99, ms", idle_p99, 10.0));
    o.checks
        .push(Check::at_most("loaded p99, ms", loaded_p99, 10.0));
    o.measured_text = format!(
        "idle p50 {:.2} / p99 {idle_p99:.2} ms; loaded p50 {:.2} / p99 {loaded_p99:.2} ms",
        median(idle),
        median(loaded)
    );
    o.baseline_text = format!("load {calls_per_s:.0} calls/s");
    o
}
