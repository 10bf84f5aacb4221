//! P23: plugvisor against HashiCorp go-plugin (net/rpc and gRPC), measured in the same run:
//! plugvisor's figures are this run's P1, P2, P3, P7, P8 and a 1 MiB call measured here.

use super::Ctx;
use crate::baseline::goplugin;
use crate::report::{Check, Outcome};
use crate::stats::{median, micros, quantile};
use anyhow::Result;
use plugvisor_host::Plugin as _;
use plugvisor_proto::{json, Value};
use std::time::Instant;

/// One figure shared by plugvisor and go-plugin.
struct Shared {
    /// Key in the harness's JSON and in this outcome.
    key: &'static str,
    /// Where plugvisor's figure comes from: scenario id and measured key.
    from: (&'static str, &'static str),
    /// True when smaller is better (latencies).
    lower_is_better: bool,
}

const SHARED: [Shared; 6] = [
    Shared {
        key: "p1_p50_us",
        from: ("P1", "p50_us"),
        lower_is_better: true,
    },
    Shared {
        key: "p2_calls_per_s",
        from: ("P2", "calls_per_s"),
        lower_is_better: false,
    },
    Shared {
        key: "p3_chunks_per_s",
        from: ("P3", "chunks_per_s"),
        lower_is_better: false,
    },
    Shared {
        key: "p7_p50_ms",
        from: ("P7", "p50_ms"),
        lower_is_better: true,
    },
    Shared {
        key: "p8_p50_ms",
        from: ("P8", "p50_ms"),
        lower_is_better: true,
    },
    Shared {
        key: "mib_p50_us",
        from: ("P23", "mib_p50_us"),
        lower_is_better: true,
    },
];

/// Calls with a 1 MiB input per trial.
fn big_calls(ctx: &Ctx) -> usize {
    if ctx.plan.quick {
        50
    } else {
        200
    }
}

/// P23: builds and runs the go-plugin peer; "not measured" (an error) when Go is missing.
///
/// # Errors
/// When plugvisor's 1 MiB call fails; Go's failures become the outcome's error.
pub async fn peers(ctx: &Ctx, done: &[Outcome]) -> Result<Outcome> {
    let mut o = Outcome::new(
        "P23",
        "go-plugin 1.0.1 (net/rpc and gRPC) vs plugvisor: P1, P2, P3, P7, P8 and a 1 MiB call",
        ">= 3x better than go-plugin on each shared figure",
    );
    o.measure("mib_p50_us", big_call(ctx).await?);
    let peer = match go_figures(ctx).await {
        Ok(peer) => peer,
        Err(e) => {
            o.error = Some(format!("go-plugin not measured: {e:#}"));
            o.measured_text = "go-plugin not measured".to_owned();
            return Ok(o);
        }
    };
    for (proto, figures) in &peer {
        compare(&mut o, done, proto, figures);
    }
    o.measured_text = summary(&o);
    o.baseline_text = "go-plugin, same run".to_owned();
    o.notes.push(
        "go-plugin has no stream over net/rpc: P3 is not applicable there (no batch stands in); \
         over gRPC it is a server stream of 16-byte messages"
            .to_owned(),
    );
    o.notes.push(
        "same counts as plugvisor's scenarios; small input 32 raw bytes (plugvisor: 32 bytes of \
         JSON); P8 kills 20 ms after the hanging call was sent (no in-flight probe in go-plugin)"
            .to_owned(),
    );
    Ok(o)
}

async fn go_figures(ctx: &Ctx) -> Result<Vec<(&'static str, Value)>> {
    let dir = tokio::task::spawn_blocking(goplugin::build).await??;
    let mut out = Vec::new();
    for proto in ["netrpc", "grpc"] {
        let figures = goplugin::measure(&dir, &ctx.plan, proto, big_calls(ctx)).await?;
        out.push((proto, figures));
    }
    Ok(out)
}

/// plugvisor's figure for `s`: from an earlier outcome of this run, or this one's.
fn ours(o: &Outcome, done: &[Outcome], s: &Shared) -> Option<f64> {
    let (id, key) = s.from;
    let outcome = done.iter().find(|d| d.id == id).unwrap_or(o);
    outcome.measured.get(key).and_then(Value::as_f64)
}

/// Records go-plugin's figures over `proto`, the "times better" ratios and their checks.
fn compare(o: &mut Outcome, done: &[Outcome], proto: &str, figures: &Value) {
    for s in &SHARED {
        let theirs = figures[s.key].as_f64();
        o.base(&format!("{proto}_{}", s.key), figures[s.key].clone());
        let (Some(theirs), Some(ours)) = (theirs, ours(o, done, s)) else {
            o.notes.push(format!("{proto} {}: not measured", s.key));
            continue;
        };
        let better = if s.lower_is_better {
            theirs / ours
        } else {
            ours / theirs
        };
        let figure = format!("{} x better than go-plugin {proto}", s.key);
        o.measure(&format!("better_than_{proto}_{}", s.key), better);
        o.notes.push(format!(
            "{proto} {}: plugvisor {ours:.1}, go-plugin {theirs:.1}, {better:.2}x better",
            s.key
        ));
        o.checks.push(Check::at_least(&figure, better, 3.0));
    }
    if let Some(p99) = figures["p1_p99_us"].as_f64() {
        o.base(&format!("{proto}_p1_p99_us"), p99);
    }
}

/// `netrpc 1.2-5.0x, grpc …`: the smallest and largest "times better" per protocol.
fn summary(o: &Outcome) -> String {
    ["netrpc", "grpc"]
        .iter()
        .map(|proto| {
            let prefix = format!("better_than_{proto}_");
            let v: Vec<f64> = o
                .measured
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(_, v)| v.as_f64())
                .collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{proto} {lo:.1}-{hi:.1}x better")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// plugvisor's p50 of a call with a 1 MiB input to the identity plugin (go-plugin's echo
/// answers its bytes too), median over trials.
async fn big_call(ctx: &Ctx) -> Result<f64> {
    let identity = ctx.host.spawn(ctx.spec(crate::identity::NAME)?).await?;
    let input = json!("y".repeat(crate::plan::MIB as usize));
    let mut p50s = Vec::new();
    let result = async {
        identity.execute(input.clone()).await?;
        for _ in 0..ctx.plan.trials {
            let mut samples = Vec::new();
            for _ in 0..big_calls(ctx) {
                let start = Instant::now();
                identity.execute(input.clone()).await?;
                samples.push(start.elapsed());
            }
            p50s.push(quantile(&micros(&samples), 0.5));
        }
        anyhow::Ok(())
    }
    .await;
    identity.shutdown().await;
    result?;
    Ok(median(&p50s))
}
