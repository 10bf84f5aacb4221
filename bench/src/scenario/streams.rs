//! P3 (one stream of 100,000 chunks of 16 bytes) and P4 (one bulk stream in 64 KiB chunks),
//! both from the `ticker` plugin, end to end: from the call to the last item in the caller's
//! hands, every item checked.

use crate::report::{Check, Outcome};
use crate::scenario::{rate, Ctx};
use crate::stats::median;
use anyhow::{bail, Result};
use futures_util::StreamExt;
use plugvisor_plugins::Ticker;
use plugvisor_proto::{json, DynPlugin};
use std::time::Instant;

/// Bytes per item of the bulk stream.
const BULK_ITEM: u64 = 64 * 1024;

/// Items, payload bytes and seconds of one stream of `n` items of `bytes` bytes.
async fn one_stream(plugin: &dyn DynPlugin, n: u64, bytes: u64) -> Result<(u64, u64, f64)> {
    let start = Instant::now();
    let mut stream = plugin
        .execute_stream(json!({"n": n, "bytes": bytes}))
        .await?;
    let (mut items, mut payload) = (0u64, 0u64);
    while let Some(item) = stream.next().await {
        let item = item?;
        payload += item.as_str().map_or(0, str::len) as u64;
        items += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    if items != n || payload != n * bytes {
        bail!("expected {n} items of {bytes} bytes, got {items} items, {payload} bytes");
    }
    Ok((items, payload, secs))
}

/// Medians of items/s and bytes/s over `trials` streams from `plugin`.
async fn rates(plugin: &dyn DynPlugin, trials: usize, n: u64, bytes: u64) -> Result<(f64, f64)> {
    let mut items = Vec::new();
    let mut payload = Vec::new();
    for _ in 0..trials {
        let (i, p, secs) = one_stream(plugin, n, bytes).await?;
        items.push(i as f64 / secs);
        payload.push(p as f64 / secs);
    }
    Ok((median(&items), median(&payload)))
}

/// P3 and P4.
///
/// # Errors
/// When the worker cannot be started or a stream fails or is incomplete.
pub async fn streams(ctx: &Ctx) -> Result<(Outcome, Outcome)> {
    let ticker = ctx.host.spawn(ctx.spec("ticker")?).await?;
    let local = Ticker;
    let plan = &ctx.plan;
    // Warm-up: connections, allocator.
    rates(&ticker, 1, 10_000, 16).await?;
    let mut p3 = Outcome::new(
        "P3",
        "one stream of 100,000 chunks of 16 bytes (ticker), end to end",
        ">= 1,000,000 chunks/s",
    );
    let n3 = plan.small_chunks;
    // One stream takes a few tens of milliseconds: more trials keep the median steady.
    let trials3 = plan.trials * 3;
    let (pv, _) = rates(&ticker, trials3, n3, 16).await?;
    let (local_rate, _) = rates(&local, trials3, n3, 16).await?;
    p3.measure("chunks_per_s", pv);
    p3.measure("chunks", n3);
    p3.measure("trials", trials3 as u64);
    p3.base("in_process_chunks_per_s", local_rate);
    p3.checks.push(Check::at_least("chunks/s", pv, 1e6));
    p3.measured_text = rate(pv, "chunks");
    p3.baseline_text = format!("in-process {}", rate(local_rate, "chunks"));
    p3.reference = "go-plugin: measured in P23; Python isolation library ~6,000 chunks/s";

    let n4 = plan.big_bytes / BULK_ITEM;
    let mut p4 = Outcome::new(
        "P4",
        "one stream of the big size in 64 KiB chunks (ticker), end to end",
        ">= 1 GB/s",
    );
    // Warm the bulk path (allocator, buffer sizes) first; five trials, as one can dip when
    // the scheduler puts both ends on one CPU for a while.
    rates(&ticker, 1, n4.min(512), BULK_ITEM).await?;
    let trials = plan.trials.max(5);
    let (_, pv) = rates(&ticker, trials, n4, BULK_ITEM).await?;
    let (_, local_rate) = rates(&local, trials, n4, BULK_ITEM).await?;
    ticker.shutdown().await;
    p4.measure("bytes_per_s", pv);
    p4.measure("gb_per_s", pv / 1e9);
    p4.measure("total_bytes", n4 * BULK_ITEM);
    p4.measure("trials", trials as u64);
    p4.base("in_process_gb_per_s", local_rate / 1e9);
    p4.checks.push(Check::at_least("GB/s", pv / 1e9, 1.0));
    p4.measured_text = format!("{:.2} GB/s", pv / 1e9);
    p4.baseline_text = format!("in-process {:.2} GB/s", local_rate / 1e9);
    p4.notes.push(format!(
        "{} MiB per stream; payload bytes counted (item strings), 1 GB = 1e9 bytes",
        plan.big_bytes >> 20
    ));
    Ok((p3, p4))
}
