//! `plugvisor-bench`: measures plugvisor and, in the same run, its baselines (raw-uds,
//! bare-hyper, in-process, bare-spawn); prints a table and writes `target/bench/latest.json`
//! (and a chart of how each figure compares with its target, `latest.svg`).
//!
//! Run it through `scripts/bench` (which builds the release binaries first); `--quick`
//! shrinks sizes and durations. The hidden subcommands `serve-bare-hyper` and
//! `serve-raw-uds` are the baseline servers, started by the benchmark itself; `hot-text`
//! profiles the workers for `worker/hot-text.ld` (run through `scripts/hot-text`).

mod baseline;
mod chart;
mod hot_text;
mod identity;
mod machine;
mod plan;
mod procs;
mod report;
mod scenario;
mod stats;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use plugvisor_host::Host;
use report::{Outcome, Report};
use scenario::Ctx;
use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

/// Benchmark plugvisor against its baselines.
#[derive(Debug, Parser)]
#[command(name = "plugvisor-bench")]
struct Cli {
    /// Shrink sizes and durations (1 GiB → 128 MiB, 3 s → 1 s, 200 workers → 50).
    #[arg(long)]
    quick: bool,
    /// Also measure HashiCorp go-plugin (P23; always in a full run): builds `bench/go` with
    /// Debian's Go, which `scripts/bench --peers` installs when missing.
    #[arg(long)]
    peers: bool,
    /// Also count instructions per call under valgrind's callgrind (P24; in a full run when
    /// valgrind is installed; `scripts/bench --callgrind` installs it).
    #[arg(long)]
    callgrind: bool,
    /// Run only these scenarios, e.g. `--only P1,P7` (the others are marked skipped).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON document [default: target/bench/latest.json].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    serve: Option<Serve>,
}

/// The hidden subcommands: the baseline servers and P24's client (started by the benchmark
/// itself), and `hot-text` (`scripts/hot-text`).
#[derive(Debug, Subcommand)]
enum Serve {
    /// bare-hyper on a socket path or `tcp://HOST:PORT`.
    #[command(name = "serve-bare-hyper", hide = true)]
    BareHyper {
        addr: String,
        /// Threads: 1 is a current-thread runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// raw-uds on a socket path.
    #[command(name = "serve-raw-uds", hide = true)]
    RawUds { socket: PathBuf },
    /// P24's host side: `WARM + calls` small calls, run under callgrind by the benchmark.
    #[command(name = "callgrind-client", hide = true)]
    CallgrindClient { target: String, calls: usize },
    /// Profiles the bundled workers under callgrind and reports how much of the code they
    /// run at start lies in their hot text; `--write` also writes the linker script
    /// (`scripts/hot-text` runs both and rebuilds).
    #[command(name = "hot-text", hide = true)]
    HotText {
        /// Write the linker script here instead of checking the current build.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.serve {
        Some(Serve::BareHyper { addr, threads }) => {
            procs::die_with_parent();
            return baseline::bare_hyper::serve(addr, *threads);
        }
        Some(Serve::RawUds { socket }) => {
            procs::die_with_parent();
            return baseline::raw_uds::serve(socket);
        }
        Some(Serve::CallgrindClient { target, calls }) => {
            return callgrind_client(target, *calls);
        }
        Some(Serve::HotText { write }) => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(hot_text::run(write.as_deref()));
        }
        None => {}
    }
    raise_fd_limit();
    // One thread, like a caller awaiting its calls one after the other; P2 brings a
    // multi-thread runtime of its own for its concurrent callers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli))?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    print!("{}", report.table());
    let out = match &cli.out {
        Some(path) => path.clone(),
        // target/release/plugvisor-bench → target/bench/latest.json
        None => procs::bench_dir()?.join("latest.json"),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(&out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    let chart = out.with_extension("svg");
    std::fs::write(&chart, chart::svg(&report))
        .with_context(|| format!("writing {}", chart.display()))?;
    println!("wrote {} and {}", out.display(), chart.display());
    Ok(())
}

/// Runs every selected scenario in turn.
async fn run(cli: &Cli) -> Result<Report> {
    let started = Instant::now();
    let ctx = Ctx {
        plan: plan::Plan::new(cli.quick),
        host: Host::new().context("creating the host")?,
        scratch: procs::scratch()?,
    };
    let wants = |ids: &[&str]| {
        cli.only.is_empty()
            || ids
                .iter()
                .any(|id| cli.only.iter().any(|o| o.eq_ignore_ascii_case(id)))
    };
    let mut outcomes = Vec::new();
    if wants(&["P1", "P11"]) {
        let pair = step("P1/P11", scenario::calls::sequential(&ctx)).await;
        outcomes.extend(pair_or_errors(pair, ["P1", "P11"]));
    }
    if wants(&["P2"]) {
        let one = step("P2", scenario::calls::concurrent(&ctx)).await;
        outcomes.push(one_or_error(one, "P2"));
    }
    // Spawning forks the host process, so it runs before the big-memory scenarios (P5).
    if wants(&["P7"]) {
        let one = step("P7", scenario::lifecycle::spawn(&ctx)).await;
        outcomes.push(one_or_error(one, "P7"));
    }
    if wants(&["P12"]) {
        let one = step("P12", scenario::sandbox::calls(&ctx)).await;
        outcomes.push(one_or_error(one, "P12"));
    }
    if wants(&["P13"]) {
        let one = step("P13", scenario::sandbox::spawn(&ctx)).await;
        outcomes.push(one_or_error(one, "P13"));
    }
    if wants(&["P15"]) {
        let one = step("P15", scenario::routes::latency(&ctx)).await;
        outcomes.push(one_or_error(one, "P15"));
    }
    if wants(&["P17"]) {
        let one = step("P17", scenario::middleware::latency(&ctx)).await;
        outcomes.push(one_or_error(one, "P17"));
    }
    if wants(&["P18"]) {
        let one = step("P18", scenario::tasks::lateness(&ctx)).await;
        outcomes.push(one_or_error(one, "P18"));
    }
    if wants(&["P19"]) {
        let one = step("P19", scenario::services::call(&ctx)).await;
        outcomes.push(one_or_error(one, "P19"));
    }
    // P20 spawns Python workers (the SDK's, cjm's); like P7 it runs before P5's big files.
    if wants(&["P20"]) {
        let one = step("P20", scenario::python::python(&ctx)).await;
        outcomes.push(one_or_error(one, "P20"));
    }
    if wants(&["P21"]) {
        let one = step("P21", scenario::pools::cpu(&ctx)).await;
        outcomes.push(one_or_error(one, "P21"));
    }
    if wants(&["P22"]) {
        let one = step("P22", scenario::remote::tls(&ctx)).await;
        outcomes.push(one_or_error(one, "P22"));
    }
    if wants(&["P25"]) {
        let one = step("P25", scenario::remote_file::file(&ctx)).await;
        outcomes.push(one_or_error(one, "P25"));
    }
    if wants(&["P16"]) {
        let one = step("P16", scenario::routes::streaming(&ctx)).await;
        outcomes.push(one_or_error(one, "P16"));
    }
    if wants(&["P14"]) {
        let one = step("P14", scenario::escape::table(&ctx)).await;
        outcomes.push(one_or_error(one, "P14"));
    }
    if wants(&["P8"]) {
        let one = step("P8", scenario::lifecycle::crash(&ctx)).await;
        outcomes.push(one_or_error(one, "P8"));
    }
    if wants(&["P9"]) {
        let one = step("P9", scenario::lifecycle::restart(&ctx)).await;
        outcomes.push(one_or_error(one, "P9"));
    }
    if wants(&["P10"]) {
        let one = step("P10", scenario::scale::scale(&ctx)).await;
        outcomes.push(one_or_error(one, "P10"));
    }
    if wants(&["P3", "P4"]) {
        let pair = step("P3/P4", scenario::streams::streams(&ctx)).await;
        outcomes.extend(pair_or_errors(pair, ["P3", "P4"]));
    }
    if wants(&["P5", "P6"]) {
        let pair = step("P5/P6", scenario::files::files(&ctx)).await;
        outcomes.extend(pair_or_errors(pair, ["P5", "P6"]));
    }
    // P23 compares go-plugin with the figures measured above, so it runs last.
    if (cli.peers || !cli.quick) && wants(&["P23"]) {
        let one = step("P23", scenario::peers::peers(&ctx, &outcomes)).await;
        outcomes.push(one_or_error(one, "P23"));
    }
    let callgrind = cli.callgrind || (!cli.quick && scenario::callgrind::available());
    if callgrind && wants(&["P24"]) {
        let one = step("P24", scenario::callgrind::counts(&ctx)).await;
        outcomes.push(one_or_error(one, "P24"));
    }
    outcomes.sort_by_key(|o| report::SCENARIOS.iter().position(|id| *id == o.id));
    let plan = ctx.plan.to_json();
    ctx.host.shutdown().await;
    Ok(Report {
        machine: machine::Machine::detect(),
        quick: cli.quick,
        plan,
        duration_s: started.elapsed().as_secs_f64(),
        outcomes,
    })
}

/// The hidden subcommand `callgrind-client`, on a current-thread runtime like the benchmark's.
fn callgrind_client(target: &str, calls: usize) -> Result<()> {
    let target = scenario::callgrind::Target::parse(target)?;
    let scratch = procs::scratch()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(scenario::callgrind::client(target, calls, scratch.path()))
}

/// Runs one scenario step, saying on stderr what runs and how long it took.
async fn step<T>(name: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    eprint!("{name} … ");
    let start = Instant::now();
    let result = work.await;
    match &result {
        Ok(_) => eprintln!("{:.1} s", start.elapsed().as_secs_f64()),
        Err(e) => eprintln!("failed: {e:#}"),
    }
    result
}

fn one_or_error(result: Result<Outcome>, id: &'static str) -> Outcome {
    result.unwrap_or_else(|e| failed(id, &e))
}

fn pair_or_errors(result: Result<(Outcome, Outcome)>, ids: [&'static str; 2]) -> Vec<Outcome> {
    match result {
        Ok((a, b)) => vec![a, b],
        Err(e) => ids.iter().map(|id| failed(id, &e)).collect(),
    }
}

fn failed(id: &'static str, err: &anyhow::Error) -> Outcome {
    let mut o = Outcome::new(id, "", "");
    o.error = Some(format!("{err:#}"));
    o.measured_text = "error".to_owned();
    o
}

/// Many workers at once need many descriptors: use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
