//! `plugvisor demo`: a tour of the bundled plugins, with timings, that leaves nothing behind.

use crate::demo_remote::Line;
use crate::resolve::worker_binary;
use anyhow::{bail, ensure, Context};
use clap::Args;
use futures_util::StreamExt;
use plugvisor_host::{
    BackoffConfig, Host, HostConfig, Plugin, PluginError, RemotePlugin, Sandbox, SupervisorConfig,
    WorkerSpec, WorkerState,
};
use plugvisor_proto::{json, FileRef, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::Instant;

/// Arguments of `plugvisor demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where to look for `<name>-worker` binaries (default: beside plugvisor).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    /// Size of the generated file hashed through a file reference, in MiB.
    #[arg(long, default_value_t = 64)]
    file_mib: usize,
    /// Chunks streamed from the ticker plugin.
    #[arg(long, default_value_t = 100_000)]
    chunks: u64,
}

/// Runs the tour.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let base = tempfile::tempdir().context("cannot create a scratch directory")?;
    let host = Host::with_config(HostConfig {
        base_dir: Some(base.path().join("run")),
    })?;
    let mut events = host.events();
    let dir = args.worker_dir.as_deref();
    let result = tour(&host, dir, &args, base.path()).await;
    let host_dir = host.dir().to_path_buf();
    host.shutdown().await;
    result?;
    ensure!(
        !host_dir.exists(),
        "host directory {} was left behind",
        host_dir.display()
    );
    let pids = started_pids(&mut events);
    let alive: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
    ensure!(alive.is_empty(), "workers {alive:?} are still running");
    say(&format!(
        "done: all {} worker processes stopped and reaped; sockets and transfer files removed",
        pids.len()
    ));
    Ok(())
}

async fn tour(
    host: &Host,
    dir: Option<&Path>,
    args: &DemoArgs,
    scratch: &Path,
) -> anyhow::Result<()> {
    let echo = spawn(host, "echo", dir).await?;
    echo_calls(&echo).await?;
    let ticker = spawn(host, "ticker", dir).await?;
    ticker_stream(&ticker, args.chunks).await?;
    ticker.shutdown().await;
    let files = spawn(host, "files", dir).await?;
    hash_file(&files, scratch, args.file_mib).await?;
    files.shutdown().await;
    crash_and_recover(host, echo, dir).await?;
    supervised_chaos(host, dir).await?;
    sandboxed_intruder(host, dir).await?;
    confined_intruder(host, dir, scratch).await?;
    crate::demo_python::hello(scratch, say).await?;
    for line in [Line::Echo, Line::File] {
        crate::demo_remote::remote(line, host, dir, scratch, say).await?;
    }
    conformance(dir, scratch).await?;
    let files_worker = worker_binary("files", dir)?;
    let worker_dir = files_worker.parent().unwrap_or(Path::new("."));
    crate::demo_api::rest_files(scratch, worker_dir, say).await
}

/// The conformance kit on the echo worker: every rule of docs/PROTOCOL.md it can check.
async fn conformance(dir: Option<&Path>, scratch: &Path) -> anyhow::Result<()> {
    let program = worker_binary("echo", dir)?;
    let base = scratch.join("conformance");
    std::fs::create_dir_all(&base)?;
    let started = std::time::Instant::now();
    let report = crate::conformance::verify_command(&[program.into_os_string()], &base).await?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    let count = |key: &str| report[key].as_u64().unwrap_or_default();
    anyhow::ensure!(
        count("failed") == 0,
        "echo failed the conformance kit: {report}"
    );
    let alive: Vec<u64> = report["pids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .filter(|p| is_alive(*p as u32))
        .collect();
    anyhow::ensure!(alive.is_empty(), "conformance workers {alive:?} still run");
    say(&format!(
        "conformance: echo-worker passed {} checks of docs/PROTOCOL.md ({} skipped, each with \
         its reason; 0 failed) in {took:.0} ms: plugvisor conformance -- <any worker>",
        count("passed"),
        count("skipped")
    ));
    Ok(())
}

/// The same hostile attempts, from an unsandboxed and a sandboxed intruder.
async fn sandboxed_intruder(host: &Host, dir: Option<&Path>) -> anyhow::Result<()> {
    let program = worker_binary("intruder", dir)?;
    let free = host.spawn(WorkerSpec::new(&program)).await?;
    let started = Instant::now();
    let boxed = host
        .spawn(WorkerSpec::new(&program).sandbox(Sandbox::default()))
        .await?;
    let spawn_ms = ms(started);
    let attempts = [
        (
            "read /etc/shadow",
            json!({"op": "read", "path": "/etc/shadow"}),
        ),
        (
            "read the host's environment",
            json!({"op": "environ", "pid": std::process::id()}),
        ),
        ("bpf()", json!({"op": "syscall", "name": "bpf"})),
    ];
    let mut lines = Vec::new();
    for (what, attempt) in attempts {
        let outside = free.execute(attempt.clone()).await?["ok"] == json!(true);
        let inside = boxed.execute(attempt).await?["ok"] == json!(true);
        ensure!(!inside, "the sandboxed intruder could {what}");
        lines.push(format!(
            "{what}: {} → refused",
            if outside { "allowed" } else { "refused" }
        ));
    }
    say(&format!(
        "sandbox (Landlock, seccomp, no network; started in {spawn_ms:.1} ms): an intruder \
         unsandboxed / sandboxed: {}",
        lines.join("; ")
    ));
    free.shutdown().await;
    boxed.shutdown().await;
    Ok(())
}

/// The sandbox's cgroup: a fork bomb stopped at `pids`, an escapee killed with its worker,
/// and a memory balloon ended as `memory_limit`.
async fn confined_intruder(host: &Host, dir: Option<&Path>, scratch: &Path) -> anyhow::Result<()> {
    let sandbox = Sandbox {
        memory_mib: Some(64),
        pids: Some(32),
        write: vec![scratch.to_path_buf()],
        ..Sandbox::default()
    };
    let spec = WorkerSpec::new(worker_binary("intruder", dir)?).sandbox(sandbox);
    let boxed = host.spawn(spec).await?;
    let tree = boxed.sandbox().map(|e| e.tree.clone()).unwrap_or_default();
    let bomb = boxed
        .execute(json!({"op": "fork_bomb", "max": 1000}))
        .await?;
    ensure!(
        bomb["ok"] == json!(false),
        "the fork bomb was not stopped: {bomb}"
    );
    let lock = scratch.join("escapee.lock");
    let escapee = boxed.execute(json!({"op": "escape", "lock": lock})).await?;
    ensure!(escapee["locked"] == json!(true), "no escapee: {escapee}");
    let balloon = boxed.execute(json!({"op": "alloc", "mib": 256})).await;
    let Err(PluginError::WorkerCrashed(report)) = balloon else {
        bail!("256 MiB in a 64 MiB sandbox did not end the worker: {balloon:?}");
    };
    boxed.shutdown().await;
    let released = std::fs::File::open(&lock)?.try_lock().is_ok();
    ensure!(released, "the escapee outlived its worker");
    std::fs::remove_file(&lock)?;
    say(&format!(
        "sandbox cgroup (tree kill: {tree}): a fork bomb stopped after {} children (pids 32); \
         an escapee in a new session died with its worker; 256 MiB in 64 MiB ended it as {}",
        bomb["forked"],
        serde_json::to_value(report.cause)?.as_str().unwrap_or("?")
    ));
    Ok(())
}

/// A supervised chaos worker aborts mid-call and is back for the next call.
async fn supervised_chaos(host: &Host, dir: Option<&Path>) -> anyhow::Result<()> {
    let config = SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(10),
            ..BackoffConfig::default()
        },
        ..SupervisorConfig::default()
    };
    let chaos = host.supervise(WorkerSpec::new(worker_binary("chaos", dir)?), config);
    ensure!(
        chaos.wait_ready(Duration::from_secs(10)).await == WorkerState::Ready,
        "chaos did not start"
    );
    let before = chaos.pid();
    let started = Instant::now();
    let crashed = chaos.execute(json!({"fault": "abort"})).await;
    let Err(PluginError::WorkerCrashed(report)) = crashed else {
        bail!("expected the chaos worker to crash, got {crashed:?}");
    };
    say(&format!(
        "chaos aborted mid-call: the caller got WorkerCrashed ({:?}) in {:.1} ms",
        report.cause,
        ms(started)
    ));
    let started = Instant::now();
    let answer = chaos.execute(json!({"fault": "none"})).await?;
    say(&format!(
        "the supervisor restarted it (pid {} -> {}); the next call was answered {:.1} ms later",
        before.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        answer["pid"],
        ms(started)
    ));
    chaos.shutdown().await;
    Ok(())
}

pub(crate) fn started_pids(
    events: &mut tokio::sync::broadcast::Receiver<plugvisor_host::LifecycleEvent>,
) -> Vec<u32> {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e.kind {
            plugvisor_host::EventKind::Started { pid } => Some(pid),
            _ => None,
        })
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn spawn(host: &Host, name: &str, dir: Option<&Path>) -> anyhow::Result<RemotePlugin> {
    let started = Instant::now();
    let plugin = host
        .spawn(WorkerSpec::new(worker_binary(name, dir)?))
        .await?;
    say(&format!(
        "started {} {} in its own process (pid {}) in {:.1} ms",
        plugin.name(),
        plugin.version(),
        plugin.pid(),
        ms(started)
    ));
    Ok(plugin)
}

async fn echo_calls(echo: &RemotePlugin) -> anyhow::Result<()> {
    echo.initialize(Some(json!({"mode": "upper", "prefix": "> "})))
        .await?;
    let started = Instant::now();
    let out = echo
        .execute(json!({"greeting": "hello from a worker"}))
        .await?;
    say(&format!(
        "echo (mode upper) answered {out} in {:.2} ms",
        ms(started)
    ));
    let words: Vec<Value> = echo
        .execute_stream(json!("one word per chunk"))
        .await?
        .map(|item| item.unwrap_or(Value::Null))
        .collect()
        .await;
    say(&format!(
        "echo streamed {} chunks: {}",
        words.len(),
        Value::from(words)
    ));
    if let Some(rss) = echo.resident_bytes() {
        say(&format!(
            "echo's worker is resident in {:.1} MiB (start-up code in one run of pages, no libm; \
             mostly shared with its siblings)",
            rss as f64 / f64::from(1 << 20)
        ));
    }
    Ok(())
}

async fn ticker_stream(ticker: &RemotePlugin, n: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream = ticker.execute_stream(json!({"n": n, "bytes": 16})).await?;
    let mut count = 0u64;
    while let Some(item) = stream.next().await {
        item?;
        count += 1;
    }
    ensure!(count == n, "ticker sent {count} chunks, expected {n}");
    let secs = started.elapsed().as_secs_f64();
    say(&format!(
        "ticker streamed {count} chunks of 16 bytes in {:.1} ms ({:.0} chunks/s)",
        secs * 1e3,
        count as f64 / secs
    ));
    Ok(())
}

async fn hash_file(files: &RemotePlugin, scratch: &Path, mib: usize) -> anyhow::Result<()> {
    let path = scratch.join("demo-input.bin");
    let expected = write_pattern_file(&path, mib)?;
    let input = json!({"op": "sha256", "file": FileRef::new(&path, (mib << 20) as u64)});
    let started = Instant::now();
    let out = files.execute(input).await?;
    let got = out["sha256"].as_str().unwrap_or_default();
    ensure!(got == expected, "worker hashed {got}, expected {expected}");
    say(&format!(
        "files hashed a {mib} MiB file passed by reference (not through the socket) in {:.1} ms: sha256 {}…",
        ms(started),
        &got[..16]
    ));
    let gz = files
        .call(json!({"op": "gzip", "file": FileRef::new(&path, 0)}))
        .await?;
    say(&format!(
        "files gzipped it to {} bytes; the output file is owned by the caller and removed on drop",
        gz.value["size_out"]
    ));
    Ok(())
}

/// Writes `mib` MiB of a repeating pattern and returns its sha256 (hex).
fn write_pattern_file(path: &Path, mib: usize) -> anyhow::Result<String> {
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    for _ in 0..mib {
        file.write_all(&block)?;
        hasher.update(&block);
    }
    file.flush()?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn crash_and_recover(
    host: &Host,
    echo: RemotePlugin,
    dir: Option<&Path>,
) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(echo.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    let started = Instant::now();
    match echo.execute(json!("are you there?")).await {
        Err(PluginError::WorkerCrashed(report)) => say(&format!(
            "SIGKILLed echo (pid {pid}); the call failed with WorkerCrashed in {:.1} ms: {report}; the host is fine",
            ms(started)
        )),
        other => bail!("expected WorkerCrashed after SIGKILL, got {other:?}"),
    }
    echo.shutdown().await;
    let echo = spawn(host, "echo", dir).await?;
    let out = echo.execute(json!("back again")).await?;
    say(&format!("a fresh echo worker answered {out}"));
    echo.shutdown().await;
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn say(line: &str) {
    println!("plugvisor demo: {line}");
}
