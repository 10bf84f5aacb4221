//! P19: a service call from one plugin to another through the host, against the host's own
//! call of the same plugin.

use crate::report::{Check, Outcome};
use crate::scenario::routes::{manifest, since, Server};
use crate::scenario::{small_input, us, Ctx};
use crate::stats::{median, quantile};
use anyhow::{Context, Result};
use plugvisor_host::CallOptions;
use serde_json::{json, Value};
use std::time::Instant;

/// P19: `echo` (providing `text.transform`) called by the manager (the direct call: host →
/// plugin, as every API call goes), and called as a service by `chaos` from inside its own
/// `execute` (plugin → host → plugin → host → plugin, timed by chaos around each call),
/// batches alternating, the same small input.
///
/// # Errors
/// When the server or a call fails.
pub async fn call(ctx: &Ctx) -> Result<Outcome> {
    let manifests = [
        manifest("echo", "echo", "provides = [\"text.transform\"]")?,
        manifest("caller", "chaos", "requires = [\"text.transform\"]")?,
    ];
    let server = Server::serving(ctx, &manifests).await?;
    let (mut direct, mut service) = (Vec::new(), Vec::new());
    for trial in 0..=ctx.plan.trials {
        let n = if trial == 0 { 300 } else { ctx.plan.calls };
        let mut d = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let options = CallOptions::default();
            server.manager.call("echo", small_input(), options).await?;
            d.push(since(start));
        }
        let s = service_calls(&server, n).await?;
        if trial > 0 {
            direct.extend(d);
            service.extend(s);
        }
    }
    server.stop().await;
    Ok(outcome(&direct, &service))
}

/// `n` service calls made by the caller inside one of its calls, in µs each.
async fn service_calls(server: &Server, n: usize) -> Result<Vec<f64>> {
    let input = json!({"fault": "call_service", "service": "text.transform",
                       "input": small_input(), "repeat": n});
    let answer = server
        .manager
        .call("caller", input, CallOptions::default())
        .await?
        .value;
    anyhow::ensure!(answer.get("inner_error").is_none(), "{answer}");
    let nanos = answer["nanos"].as_array().context("no nanos")?;
    Ok(nanos
        .iter()
        .filter_map(Value::as_f64)
        .map(|ns| ns / 1000.0)
        .collect())
}

fn outcome(direct: &[f64], service: &[f64]) -> Outcome {
    let (d50, s50) = (median(direct), median(service));
    let ratio = s50 / d50;
    let mut o = Outcome::new(
        "P19",
        "a service call (plugin -> host -> plugin, timed inside the calling plugin) vs the host's \
         direct call of the same plugin (PluginManager::call), same small input",
        "service call p50 <= 2 x direct call p50",
    );
    o.measure("service_p50_us", s50);
    o.measure("service_p99_us", quantile(service, 0.99));
    o.measure("ratio_service_to_direct", ratio);
    o.base("direct_p50_us", d50);
    o.base("direct_p99_us", quantile(direct, 0.99));
    o.checks.push(Check::at_most(
        "service call p50 / direct call p50",
        ratio,
        2.0,
    ));
    o.measured_text = format!(
        "service p50 {} / p99 {} ({ratio:.2}x direct)",
        us(s50),
        us(quantile(service, 0.99))
    );
    o.baseline_text = format!(
        "direct p50 {} / p99 {}",
        us(d50),
        us(quantile(direct, 0.99))
    );
    o
}
