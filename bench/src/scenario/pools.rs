//! P21: a pool of two replicas against one worker, for a CPU-bound Python plugin (one
//! interpreter uses one core at a time, so only more processes use more cores).

use crate::baseline::cjm;
use crate::report::{Check, Outcome};
use crate::scenario::routes::Server;
use crate::scenario::Ctx;
use crate::stats::median;
use anyhow::{Context, Result};
use plugvisor_host::CallOptions;
use plugvisor_manager::PluginManager;
use serde_json::json;
use std::time::{Duration, Instant};

/// Iterations of the sum of squares per call (about 10 ms of one core).
const WORK: u64 = 200_000;

/// Concurrent callers: enough to keep two replicas busy.
const CALLERS: usize = 4;

/// P21: calls per second of `pycpu` with `replicas = 1` and `replicas = 2`, 4 callers, trials
/// alternating.
///
/// # Errors
/// When `python3` is not on `PATH`, or the server or a call fails.
pub async fn cpu(ctx: &Ctx) -> Result<Outcome> {
    let manifests = [manifest("one", 1)?, manifest("two", 2)?];
    let server = Server::serving(ctx, &manifests).await?;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for trial in 0..=ctx.plan.trials {
        let a = rate(&server.manager, "one", ctx.plan.concurrent_for).await?;
        let b = rate(&server.manager, "two", ctx.plan.concurrent_for).await?;
        if trial > 0 {
            one.push(a);
            two.push(b);
        }
    }
    server.stop().await;
    Ok(outcome(&one, &two))
}

/// A manifest running `bench/python/cpu_bench.py` with the tree's SDK, as `replicas` workers.
fn manifest(name: &str, replicas: usize) -> Result<(String, String)> {
    let script = cjm::scripts().join("cpu_bench.py");
    let sdk = cjm::repo().join("sdk/python/src");
    anyhow::ensure!(script.is_file(), "{} is missing", script.display());
    let text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"python3\"\nargs = [{:?}]\n\
         replicas = {replicas}\nenv = {{ PYTHONPATH = {:?} }}\n",
        script.display().to_string(),
        sdk.display().to_string()
    );
    Ok((name.to_owned(), text))
}

/// Calls per second of `plugin` with [`CALLERS`] callers for `span`.
async fn rate(manager: &PluginManager, plugin: &str, span: Duration) -> Result<f64> {
    let until = Instant::now() + span;
    let caller = || async {
        let mut done = 0u64;
        while Instant::now() < until {
            let input = json!({"n": WORK});
            manager
                .call(plugin, input, CallOptions::default())
                .await
                .with_context(|| format!("a call of {plugin}"))?;
            done += 1;
        }
        anyhow::Ok(done)
    };
    let started = Instant::now();
    let counts = futures_util::future::join_all((0..CALLERS).map(|_| caller())).await;
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn outcome(one: &[f64], two: &[f64]) -> Outcome {
    let (a, b) = (median(one), median(two));
    let ratio = b / a;
    let mut o = Outcome::new(
        "P21",
        "a CPU-bound Python plugin (pure-Python sum of squares, ~10 ms a call) with replicas = 2 \
         vs replicas = 1, 4 concurrent callers through PluginManager::call, trials alternating",
        "replicas = 2 >= 1.8 x the calls/s of one worker (2 cores; issue 13's target)",
    );
    o.measure("replicas_2_calls_per_s", b);
    o.measure("ratio_2_to_1", ratio);
    o.base("replicas_1_calls_per_s", a);
    o.checks.push(Check::at_least(
        "replicas = 2 calls/s / replicas = 1 calls/s",
        ratio,
        1.8,
    ));
    o.measured_text = format!("replicas = 2: {b:.0} calls/s ({ratio:.2}x)");
    o.baseline_text = format!("replicas = 1: {a:.0} calls/s");
    o
}
