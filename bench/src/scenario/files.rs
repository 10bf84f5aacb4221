//! P5 (a file reference costs the same for 1 KiB and the big size; inline JSON for contrast)
//! and P6 (hashing a file passed by reference vs hashing it in-process).

use crate::report::{Check, Outcome};
use crate::scenario::{us, Ctx};
use crate::stats::{median, micros, quantile};
use anyhow::{bail, Context as _, Result};
use plugvisor_host::RemotePlugin;
use plugvisor_plugins::Files;
use plugvisor_proto::{json, FileRef, Plugin, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size of the small file.
const SMALL: u64 = 1024;

/// Writes `size` bytes of printable ASCII (so the same bytes can travel as a JSON string).
pub(crate) fn make_file(path: &Path, size: u64) -> Result<()> {
    let block: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

fn stat_input(path: &Path, size: u64) -> Value {
    json!({"op": "stat", "file": FileRef::new(path, size).to_value()})
}

/// Times one call and checks the answer's `size`.
async fn timed(files: &RemotePlugin, input: Value, size: u64) -> Result<Duration> {
    let start = Instant::now();
    let out = files.execute(input).await?;
    let elapsed = start.elapsed();
    if out["size"] != size {
        bail!("files answered {out}, expected size {size}");
    }
    Ok(elapsed)
}

/// The scratch files of P5 and P6, removed when dropped.
struct Inputs {
    small: PathBuf,
    big: PathBuf,
    big_size: u64,
}

impl Drop for Inputs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.small);
        let _ = std::fs::remove_file(&self.big);
    }
}

/// P5 and P6.
///
/// # Errors
/// When a file cannot be written, the worker cannot start, or a call fails.
pub async fn files(ctx: &Ctx) -> Result<(Outcome, Outcome)> {
    let big_size = ctx.plan.big_bytes;
    let inputs = Inputs {
        small: ctx.dir().join("small.bin"),
        big: ctx.dir().join("big.bin"),
        big_size,
    };
    make_file(&inputs.small, SMALL)?;
    make_file(&inputs.big, big_size)?;
    // Room for the inline contrast: the big file as one JSON string, plus the envelope.
    let spec = ctx.spec("files")?.max_body(big_size + (1 << 20));
    let files = ctx.host.spawn(spec).await?;
    let result = measure(ctx, &files, &inputs).await;
    files.shutdown().await;
    result
}

async fn measure(ctx: &Ctx, files: &RemotePlugin, inputs: &Inputs) -> Result<(Outcome, Outcome)> {
    let p5 = by_reference(ctx, files, inputs).await?;
    let p6 = hashing(ctx, files, inputs).await?;
    Ok((p5, p6))
}

async fn by_reference(ctx: &Ctx, files: &RemotePlugin, inputs: &Inputs) -> Result<Outcome> {
    let big = inputs.big_size;
    for _ in 0..50 {
        timed(files, stat_input(&inputs.small, SMALL), SMALL).await?;
    }
    let (mut small_p50, mut big_p50, mut small_p99, mut big_p99) = (vec![], vec![], vec![], vec![]);
    let mut ratios = Vec::new();
    for _ in 0..ctx.plan.trials {
        let (mut s, mut b) = (Vec::new(), Vec::new());
        // Alternate call by call, so noise hits both sizes alike.
        for _ in 0..ctx.plan.file_calls {
            s.push(timed(files, stat_input(&inputs.small, SMALL), SMALL).await?);
            b.push(timed(files, stat_input(&inputs.big, big), big).await?);
        }
        let (s, b) = (micros(&s), micros(&b));
        // Each big call against the small call just before it: noise that lasts longer
        // than two calls cancels out.
        let paired: Vec<f64> = s.iter().zip(&b).map(|(s, b)| b / s).collect();
        ratios.push(median(&paired));
        small_p50.push(quantile(&s, 0.5));
        small_p99.push(quantile(&s, 0.99));
        big_p50.push(quantile(&b, 0.5));
        big_p99.push(quantile(&b, 0.99));
    }
    let (small, large) = (median(&small_p50), median(&big_p50));
    let inline = inline_contrast(ctx, files, inputs).await?;
    let ratio = median(&ratios);
    let mut o = Outcome::new(
        "P5",
        "execute with a FileRef (files op stat): 1 KiB file vs the big file; host-side time",
        "time with the big file <= 1.2 x time with 1 KiB",
    );
    o.measure("big_file_p50_us", large);
    o.measure("big_file_p99_us", median(&big_p99));
    o.measure("big_file_bytes", big);
    o.measure("ratio_big_to_small", ratio);
    o.measure("inline_json_ms", inline.as_secs_f64() * 1e3);
    o.measure("inline_json_bytes", big);
    o.base("small_file_p50_us", small);
    o.base("small_file_p99_us", median(&small_p99));
    o.measure("ratio_of_p50s", large / small);
    o.checks.push(Check::at_most(
        "median of paired (big / 1 KiB) call times",
        ratio,
        1.2,
    ));
    o.measured_text = format!(
        "{} MiB by ref {} ({ratio:.2}x); inline {:.0} ms",
        big >> 20,
        us(large),
        inline.as_secs_f64() * 1e3
    );
    o.baseline_text = format!("1 KiB by ref {}", us(small));
    o.notes.push(format!(
        "inline: the same {} MiB as one JSON string in the input (worker max_body raised to \
         fit), measured directly, not extrapolated; median of {} calls",
        big >> 20,
        inline_trials(ctx)
    ));
    o.notes.push(
        "the file lives on the same tmpfs as the transfer directory, so staging is a hard link"
            .to_owned(),
    );
    Ok(o)
}

fn inline_trials(ctx: &Ctx) -> usize {
    if ctx.plan.quick {
        2
    } else {
        3
    }
}

/// Median time of a `stat` call whose input also carries the big file's bytes inline.
async fn inline_contrast(ctx: &Ctx, files: &RemotePlugin, inputs: &Inputs) -> Result<Duration> {
    let text = String::from_utf8(std::fs::read(&inputs.big)?).context("the big file is ASCII")?;
    let input = json!({
        "op": "stat",
        "file": FileRef::new(&inputs.small, SMALL).to_value(),
        "data": text,
    });
    let mut samples = Vec::new();
    for _ in 0..inline_trials(ctx) {
        let copy = input.clone();
        samples.push(timed(files, copy, SMALL).await?);
    }
    let ms: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    Ok(Duration::from_secs_f64(median(&ms)))
}

async fn hashing(ctx: &Ctx, files: &RemotePlugin, inputs: &Inputs) -> Result<Outcome> {
    let big = inputs.big_size;
    let input = json!({"op": "sha256", "file": FileRef::new(&inputs.big, big).to_value()});
    let local = Files;
    let (mut remote_rates, mut local_rates) = (Vec::new(), Vec::new());
    let mut digests = Vec::new();
    for _ in 0..ctx.plan.trials.min(3) {
        let start = Instant::now();
        let out = Plugin::execute(&local, input.clone()).await?;
        local_rates.push(big as f64 / start.elapsed().as_secs_f64());
        digests.push(out["sha256"].clone());
        let start = Instant::now();
        let out = files.execute(input.clone()).await?;
        remote_rates.push(big as f64 / start.elapsed().as_secs_f64());
        digests.push(out["sha256"].clone());
    }
    if digests.windows(2).any(|w| w[0] != w[1]) {
        bail!("the digests differ: {digests:?}");
    }
    let (pv, base) = (median(&remote_rates), median(&local_rates));
    let ratio = pv / base;
    let mut o = Outcome::new(
        "P6",
        "files sha256 of the big file by FileRef vs the same plugin in-process",
        ">= 0.9 x in-process throughput",
    );
    o.measure("gb_per_s", pv / 1e9);
    o.measure("bytes", big);
    o.measure("ratio_to_in_process", ratio);
    o.base("in_process_gb_per_s", base / 1e9);
    o.checks
        .push(Check::at_least("throughput / in-process", ratio, 0.9));
    o.measured_text = format!("{:.2} GB/s ({ratio:.2}x)", pv / 1e9);
    o.baseline_text = format!("in-process {:.2} GB/s", base / 1e9);
    Ok(o)
}
