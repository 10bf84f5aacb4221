//! HashiCorp go-plugin as a peer (P23): builds `bench/go` (an echo plugin and a host harness)
//! in GOPATH mode against Debian's go-plugin 1.0.1, and runs the harness once per protocol.

use crate::plan::Plan;
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian's Go packages (go-plugin, gRPC, protobuf) live.
const GOCODE: &str = "/usr/share/gocode";

/// `target/bench/go`: the built binaries and Go's build cache.
fn out_dir() -> Result<PathBuf> {
    Ok(crate::procs::bench_dir()?.join("go"))
}

/// Builds the echo plugin and the harness; returns their directory.
///
/// # Errors
/// When `go` is missing (`scripts/bench` installs it) or a build fails.
pub fn build() -> Result<PathBuf> {
    let out = out_dir()?;
    std::fs::create_dir_all(&out)?;
    for package in ["echo-plugin", "harness"] {
        go_build(&out, package)?;
    }
    Ok(out)
}

fn go_build(out: &Path, package: &str) -> Result<()> {
    let gopath = format!("{}:{GOCODE}", super::cjm::repo().join("bench/go").display());
    let result = Command::new("go")
        .args(["build", "-o"])
        .arg(out.join(package))
        .arg(format!("pvbench/{package}"))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", out.join("cache"))
        .env("GOFLAGS", "")
        .stdin(Stdio::null())
        .output()
        .context("running go (is golang-go installed? scripts/bench --peers installs it)")?;
    if !result.status.success() {
        bail!("go build {package}: {}", tail(&result.stderr));
    }
    Ok(())
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// The harness's arguments: the same counts and sizes as plugvisor's scenarios.
fn args(plan: &Plan, proto: &str, big_calls: usize) -> Vec<String> {
    let pairs = [
        ("-proto", proto.to_owned()),
        ("-trials", plan.trials.to_string()),
        ("-calls", plan.calls.to_string()),
        ("-callers", plan.callers.to_string()),
        ("-seconds", plan.concurrent_for.as_secs_f64().to_string()),
        ("-chunks", plan.small_chunks.to_string()),
        ("-spawns", plan.lifecycle_trials.to_string()),
        ("-big-calls", big_calls.to_string()),
        ("-big-bytes", crate::plan::MIB.to_string()),
    ];
    pairs
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
}

/// Runs the harness over `proto` (`netrpc` or `grpc`) and returns its JSON answer.
///
/// # Errors
/// When it fails, prints no JSON, or runs over five minutes (it is then killed and reaped).
pub async fn measure(dir: &Path, plan: &Plan, proto: &str, big_calls: usize) -> Result<Value> {
    let child = tokio::process::Command::new(dir.join("harness"))
        .arg("-plugin")
        .arg(dir.join("echo-plugin"))
        .args(args(plan, proto, big_calls))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the go-plugin harness")?;
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .context("the go-plugin harness ran over 300 s")??;
    if !output.status.success() {
        bail!("go-plugin harness ({proto}): {}", tail(&output.stderr));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim()).context("the go-plugin harness printed no JSON")
}
