//! The demo's pool lines beyond the first: a reload that rolls over the three replicas under
//! load, and a pool that scales itself (`max_replicas`) up under load and down when idle.

use crate::client::ApiClient;
use anyhow::ensure;
use http::Method;
use plugvisor_proto::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The manifest line of the demo's scaling pool.
pub(crate) const ELASTIC: &str = "max_replicas = 3\nscale_down_idle_secs = 1\n";

/// `callers` loops of 20 ms calls on `plugin` until `stop`: (answered, failed).
async fn keep_busy(
    client: &ApiClient,
    plugin: &str,
    callers: usize,
    stop: &AtomicBool,
) -> (usize, usize) {
    let body = json!({"plugin_id": plugin, "input": {"fault": "sleep", "ms": 20}});
    let one = || async {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Acquire) {
            match client
                .json(Method::POST, "/api/plugins/execute", Some(&body))
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        (ok, failed)
    };
    let all = futures_util::future::join_all((0..callers).map(|_| one())).await;
    all.into_iter()
        .fold((0, 0), |(o, f), (a, b)| (o + a, f + b))
}

/// The pids of `plugin`'s ready replicas.
async fn ready_pids(client: &ApiClient, plugin: &str) -> anyhow::Result<BTreeSet<u64>> {
    let info = client
        .json(Method::GET, &format!("/api/plugins/{plugin}"), None)
        .await?;
    let workers = info["workers"].as_array().cloned().unwrap_or_default();
    let ready = workers.iter().filter(|w| w["state"] == "ready");
    Ok(ready.filter_map(|w| w["pid"].as_u64()).collect())
}

/// Waits up to 15 s until `plugin` has `count` ready replicas; returns their pids.
async fn until_ready(
    client: &ApiClient,
    plugin: &str,
    count: usize,
) -> anyhow::Result<BTreeSet<u64>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pids = ready_pids(client, plugin).await?;
        if pids.len() == count {
            return Ok(pids);
        }
        ensure!(
            Instant::now() < deadline,
            "{plugin} never had {count} ready replicas: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reloads the pool of three while four callers keep it busy.
pub(crate) async fn rolling_reload(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let before = until_ready(client, "pool", 3).await?;
    let stop = AtomicBool::new(false);
    let reload = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = client
            .json(Method::POST, "/api/plugins/pool/reload", None)
            .await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Release);
        answer.map(|_| took)
    };
    let ((ok, failed), took) = tokio::join!(keep_busy(client, "pool", 4, &stop), reload);
    let took = took?;
    let after = until_ready(client, "pool", 3).await?;
    ensure!(failed == 0, "{failed} calls failed during the reload");
    ensure!(
        after.is_disjoint(&before),
        "not every replica was replaced: {before:?} -> {after:?}"
    );
    say(&format!(
        "rolling reload: the pool's 3 workers were replaced one at a time in {:.0} ms \
         under 4 callers: {ok} calls answered, {failed} failed",
        took.as_secs_f64() * 1e3
    ));
    Ok(())
}

/// Loads six callers on the scaling pool until it has grown to three, then lets it idle
/// back to one.
pub(crate) async fn autoscaling(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    until_ready(client, "elastic", 1).await?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let grow = async {
        let grown = until_ready(client, "elastic", 3).await;
        stop.store(true, Ordering::Release);
        grown.map(|_| started.elapsed())
    };
    let ((ok, failed), grew) = tokio::join!(keep_busy(client, "elastic", 6, &stop), grow);
    let grew = grew?;
    let idle = Instant::now();
    until_ready(client, "elastic", 1).await?;
    let shrank = idle.elapsed();
    ensure!(failed == 0, "{failed} calls failed while the pool scaled");
    say(&format!(
        "autoscaling: max_replicas = 3 grew the pool from 1 to 3 workers in {:.1} s under 6 \
         callers ({ok} calls, {failed} failed) and back to 1 {:.1} s after they stopped",
        grew.as_secs_f64(),
        shrank.as_secs_f64()
    ));
    Ok(())
}
