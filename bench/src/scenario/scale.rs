//! P10: the memory of an idle worker, the host's memory per worker, and how long many
//! workers take to start at once.

use crate::procs::{children, pss_bytes, rss_bytes};
use crate::report::{Check, Outcome};
use crate::scenario::{small_input, Ctx};
use anyhow::{Context as _, Result};
use plugvisor_proto::Plugin;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// P10.
///
/// # Errors
/// When workers cannot be started or `/proc` cannot be read.
pub async fn scale(ctx: &Ctx) -> Result<Outcome> {
    let spec = ctx.spec("echo")?;
    let mut o = Outcome::new(
        "P10",
        "idle worker memory; host memory per worker and time to ready with many workers",
        "worker RSS <= 4 MiB (PSS reported); host RSS growth <= 256 KiB per worker; all ready \
         <= 2 s",
    );

    let echo = ctx.host.spawn(spec.clone()).await?;
    echo.execute(small_input()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = echo.pid();
    let rss = rss_bytes(pid).context("reading the worker's RSS")? as f64;
    let pss = pss_bytes(pid).unwrap_or(0) as f64;
    let guardian = children(pid).first().copied();
    let shared = guardian.is_some_and(|g| shares_memory(pid, g));
    // A guardian sharing the worker's address space has no pages of its own to count.
    let guardian_pss = match shared {
        true => 0.0,
        false => guardian.and_then(pss_bytes).unwrap_or(0) as f64,
    };
    echo.shutdown().await;

    let n = ctx.plan.workers;
    let own = std::process::id();
    let before = rss_bytes(own).context("reading the host's RSS")? as f64;
    let start = Instant::now();
    let spawns = (0..n).map(|_| ctx.host.spawn(spec.clone()));
    let results = futures_util::future::join_all(spawns).await;
    let ready = start.elapsed().as_secs_f64();
    let after = rss_bytes(own).context("reading the host's RSS")? as f64;
    let started: Vec<_> = results.into_iter().collect::<Result<_, _>>()?;
    let first_calls = started.iter().map(|w| w.execute(small_input()));
    let answered = futures_util::future::join_all(first_calls).await;
    let failures = answered.iter().filter(|r| r.is_err()).count();
    // With all of them up, one worker's share of the pages they have in common.
    let pss_among = started
        .first()
        .and_then(|w| pss_bytes(w.pid()))
        .unwrap_or(0) as f64;
    let stops = started.into_iter().map(|w| w.shutdown());
    futures_util::future::join_all(stops).await;
    let per_worker_kib = (after - before) / n as f64 / 1024.0;

    o.measure("idle_worker_rss_mib", rss / MIB);
    o.measure("idle_worker_pss_mib", pss / MIB);
    o.measure("worker_pss_among_all_mib", pss_among / MIB);
    o.measure("guardian_shares_worker_memory", u64::from(shared));
    o.measure("guardian_own_pss_mib", guardian_pss / MIB);
    o.measure("workers", n as u64);
    o.measure("host_rss_growth_per_worker_kib", per_worker_kib);
    o.measure("all_ready_s", ready);
    o.measure("first_call_failures", failures as u64);
    o.checks
        .push(Check::at_most("worker RSS (MiB)", rss / MIB, 4.0));
    o.checks.push(Check::at_most(
        "host RSS growth per worker (KiB)",
        per_worker_kib,
        256.0,
    ));
    o.checks.push(Check::at_most("all ready (s)", ready, 2.0));
    o.checks
        .push(Check::at_most("failed first calls", failures as f64, 0.0));
    o.measured_text = format!(
        "worker RSS {:.2} MiB (PSS {:.2} alone, {:.2} among {n}); host +{per_worker_kib:.0} \
         KiB/worker; {n} ready in {ready:.2} s",
        rss / MIB,
        pss / MIB,
        pss_among / MIB
    );
    o.baseline_text = "-".to_owned();
    o.notes.push(match shared {
        true => "each worker also has a guardian process that kills its process group if the \
                 worker dies with its host; it shares the worker's address space \
                 (clone(CLONE_VM): the same memory maps), so it adds no memory but its stack"
            .to_owned(),
        false => format!(
            "each worker also has a guardian process (PSS {:.2} MiB) that kills its process \
             group if the worker dies with its host",
            guardian_pss / MIB
        ),
    });
    Ok(o)
}

/// True when `a` and `b` share one address space (as a `clone(CLONE_VM)` child does with its
/// parent), by `kcmp(KCMP_VM)`.
fn shares_memory(a: u32, b: u32) -> bool {
    use nix::libc;
    const KCMP_VM: libc::c_long = 1;
    let (a, b) = (libc::c_long::from(a), libc::c_long::from(b));
    // SAFETY: kcmp reads nothing from our memory; it compares two processes' kernel objects.
    let same = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) };
    same == 0
}
