//! P17: what one middleware in the chain adds to a request, against one plugin call.

use crate::report::{Check, Outcome};
use crate::scenario::routes::{manifest, since, Server};
use crate::scenario::{small_input, us, Ctx};
use crate::stats::{median, quantile};
use anyhow::Result;
use plugvisor_proto::Plugin;
use std::time::Instant;

/// The plugins of P17: three echoes, the second wrapped by a middleware serving one hook
/// (`before_request`), the third by one serving both.
fn manifests() -> Result<Vec<(String, String)>> {
    let middleware = |name: &str, hooks: &str, covers: &str| {
        let extra = format!(
            "kind = \"middleware\"\n[env]\nCHAOS_HOOKS = \"{hooks}\"\n\
             [middleware]\npaths = [\"/plugins/{covers}/**\"]\n"
        );
        manifest(name, "chaos", &extra)
    };
    Ok(vec![
        manifest("echo", "echo", "")?,
        manifest("echo1", "echo", "")?,
        manifest("echo2", "echo", "")?,
        middleware("one-hook", "before_request", "echo1")?,
        middleware("two-hooks", "before_request,after_response", "echo2")?,
    ])
}

/// P17: `GET /plugins/<echo>/hello` with no middleware, with one serving `before_request`, and
/// with one serving both hooks, on one kept-alive connection each, batches alternating; the
/// added time against one small `execute` of a worker called directly (`RemotePlugin`).
///
/// # Errors
/// When the server or a request fails.
pub async fn latency(ctx: &Ctx) -> Result<Outcome> {
    let server = Server::serving(ctx, &manifests()?).await?;
    // The last path calls no plugin: what the server itself costs.
    let paths = [
        "/plugins/echo/hello",
        "/plugins/echo1/hello",
        "/plugins/echo2/hello",
        "/api/plugins/echo",
    ];
    let mut conns = Vec::new();
    for _ in paths {
        conns.push(crate::baseline::client::HttpConn::tcp(&server.addr, None).await?);
    }
    let direct = ctx.host.spawn(ctx.spec("echo")?).await?;
    let input = small_input();
    let mut times: [Vec<f64>; 5] = Default::default();
    for trial in 0..=ctx.plan.trials {
        let n = if trial == 0 { 300 } else { ctx.plan.calls };
        let mut batch: [Vec<f64>; 5] = Default::default();
        for (i, path) in paths.iter().enumerate() {
            for _ in 0..n {
                let start = Instant::now();
                conns[i].get(path).await?;
                batch[i].push(since(start));
            }
        }
        for _ in 0..n {
            let start = Instant::now();
            direct.execute(input.clone()).await?;
            batch[4].push(since(start));
        }
        if trial > 0 {
            for (all, some) in times.iter_mut().zip(batch) {
                all.extend(some);
            }
        }
    }
    direct.shutdown().await;
    drop(conns);
    server.stop().await;
    Ok(outcome(&times))
}

fn outcome(times: &[Vec<f64>; 5]) -> Outcome {
    let [plain, one, two, server, call] = [0, 1, 2, 3, 4].map(|i| median(&times[i]));
    let (added_one, added_two) = (one - plain, two - plain);
    // One plugin call as the server makes it: the route minus the server's own work.
    let in_situ = plain - server;
    let ratio = added_one / in_situ;
    let mut o = Outcome::new(
        "P17",
        "GET /plugins/<echo>/hello through the API server with no middleware, with one serving \
         before_request, with one serving both hooks; the time a middleware adds vs the time \
         the route's own plugin call adds (route minus GET /api/plugins/echo, which calls no \
         plugin), and vs a warm direct call",
        "one middleware (one hook) adds <= 1.5 x one plugin call",
    );
    o.measure("plain_p50_us", plain);
    o.measure("one_hook_p50_us", one);
    o.measure("one_hook_p99_us", quantile(&times[1], 0.99));
    o.measure("two_hooks_p50_us", two);
    o.measure("added_one_hook_us", added_one);
    o.measure("added_two_hooks_us", added_two);
    o.measure("ratio_added_to_call", ratio);
    o.measure("ratio_added_two_hooks_to_call", added_two / in_situ);
    o.measure("ratio_added_to_direct_call", added_one / call);
    o.base("server_only_p50_us", server);
    o.base("plugin_call_in_route_us", in_situ);
    o.base("direct_call_p50_us", call);
    o.checks.push(Check::at_most(
        "time added by a one-hook middleware / a plugin call through the server",
        ratio,
        1.5,
    ));
    o.measured_text = format!(
        "+{} one hook ({ratio:.2}x a call), +{} two hooks",
        us(added_one),
        us(added_two)
    );
    o.baseline_text = format!("call in a route {}, direct {}", us(in_situ), us(call));
    o
}
