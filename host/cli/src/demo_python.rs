//! The demo's Python step: the Python SDK's `hello` (`plugins/python/`) loaded from its
//! manifest (`command = "python3"`), called, SIGKILLed and served again by its restart.

use anyhow::{bail, ensure};
use plugvisor_host::{CallOptions, HostConfig, PluginError};
use plugvisor_manager::{ManagerConfig, ManagerError, PluginManager};
use plugvisor_proto::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Small calls timed for the p50.
const CALLS: usize = 200;

/// Runs the step, or says why it was skipped (no `plugins/python`, no `python3`).
pub(crate) async fn hello(scratch: &Path, say: impl Fn(&str)) -> anyhow::Result<()> {
    let Some(dir) = python_dir() else {
        say("python: skipped (plugins/python not found: run the demo from the repository root)");
        return Ok(());
    };
    if !on_path("python3") {
        say("python: skipped (no python3 on PATH)");
        return Ok(());
    }
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: vec![dir],
        host: HostConfig {
            base_dir: Some(scratch.join("py-run")),
        },
        ..ManagerConfig::default()
    })?;
    let host_dir = manager.host().dir().to_path_buf();
    let result = tour(&manager, &say).await;
    manager.shutdown().await;
    result?;
    ensure!(!host_dir.exists(), "left {} behind", host_dir.display());
    Ok(())
}

async fn tour(manager: &PluginManager, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let started = Instant::now();
    manager.load("hello", None).await?;
    let spawn_ms = started.elapsed().as_secs_f64() * 1e3;
    let call = || manager.call("hello", json!("demo"), CallOptions::default());
    let answer = call().await?.value;
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        call().await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let p50 = times[CALLS / 2];
    let pid = manager.info("hello")?.pid.unwrap_or_default();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let seen = after_kill(manager, call().await, pid)?;
    let again = served_again(manager).await?;
    say(&format!(
        "python: hello (Python SDK, `command = \"python3\"`) loaded in {spawn_ms:.0} ms, \
         answered {answer}; small call p50 {p50:.0} µs; SIGKILLed (pid {pid}) → {seen}, \
         restarted, answered {again}"
    ));
    Ok(())
}

/// What the call right after the SIGKILL saw. Either is right, by a race the host does not
/// control: the call reached the dead worker (`WorkerCrashed`), or the host had already seen
/// the exit and the call waited for the restarted worker (then another pid answered).
fn after_kill(
    manager: &PluginManager,
    result: Result<plugvisor_host::CallOutput, ManagerError>,
    killed: u32,
) -> anyhow::Result<&'static str> {
    match result {
        Err(ManagerError::Plugin {
            source: PluginError::WorkerCrashed(_),
            ..
        }) => Ok("WorkerCrashed"),
        Ok(_) if manager.info("hello")?.pid.is_some_and(|p| p != killed) => {
            Ok("the host had already seen it die; the call waited for its restart")
        }
        other => {
            bail!("expected WorkerCrashed or the restarted worker after SIGKILL, got {other:?}")
        }
    }
}

/// The first answer after the restart (the call waits for the new worker).
async fn served_again(manager: &PluginManager) -> anyhow::Result<plugvisor_proto::Value> {
    let options = CallOptions {
        timeout: Some(Duration::from_secs(10)),
    };
    Ok(manager.call("hello", json!("again"), options).await?.value)
}

/// `plugins/python` of the repository: beside the working directory, or two levels above
/// the running binary (`target/release/plugvisor`).
fn python_dir() -> Option<PathBuf> {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()));
    [std::env::current_dir().ok(), from_exe]
        .into_iter()
        .flatten()
        .map(|root| root.join("plugins/python"))
        .find(|dir| dir.join("hello.toml").is_file())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}
