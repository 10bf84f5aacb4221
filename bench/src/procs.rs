//! Binaries beside the benchmark, processes it starts itself, and its scratch directory.

use anyhow::{bail, Context as _, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The directory of the running executable (`target/release`), where the workers are.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the executable has no parent directory")
}

/// `target/bench`: the report, Go's build, cjm's virtual environment and bytecode, beside
/// the directory the binaries are in.
pub fn bench_dir() -> Result<PathBuf> {
    let bin = bin_dir()?;
    Ok(bin.parent().unwrap_or(&bin).join("bench"))
}

/// Path of the worker binary of `plugin` (`<plugin>-worker`) beside this executable.
///
/// # Errors
/// When the binary is missing.
pub fn worker_binary(plugin: &str) -> Result<PathBuf> {
    binary(&format!("{plugin}-worker"))
}

/// Path of the binary `name` beside this executable.
///
/// # Errors
/// When it does not exist (the workspace binaries were not built in this profile).
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; build with `cargo build --release --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is SIGKILLed (by its pid) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// Kills and reaps the child now.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` with stdout piped and returns it with the first line it prints (stdin is
/// the caller's choice).
///
/// # Errors
/// When it cannot be started or closes stdout without a line (it is killed then).
pub fn spawn_with_line(mut command: Command) -> Result<(ChildGuard, String)> {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take();
    let guard = ChildGuard::new(child);
    let line = first_line(stdout).with_context(|| format!("waiting for {command:?}"))?;
    Ok((guard, line))
}

/// Reads one line from `stdout`; an empty answer is an error.
pub fn first_line(stdout: Option<ChildStdout>) -> Result<String> {
    let stdout = stdout.context("stdout was not piped")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.is_empty() {
        bail!("it exited without printing its ready line");
    }
    Ok(line.trim_end().to_owned())
}

/// Runs the hidden subcommand `args` of this executable (a baseline server) and waits for
/// its ready line, which is returned.
pub fn spawn_self(args: &[&str]) -> Result<(ChildGuard, String)> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.args(args).stdin(Stdio::null());
    spawn_with_line(command)
}

/// A private scratch directory on tmpfs when possible (`/dev/shm`, the host's default base
/// too, so file references are staged by hard link), removed when dropped.
pub fn scratch() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("plugvisor-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch directory in {}", base.display()))
}

/// Makes this process die with its parent (the baseline servers), so a crashed benchmark
/// leaves nothing running.
pub fn die_with_parent() {
    let parent = nix::unistd::getppid();
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        std::process::exit(1);
    }
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "VmRSS").map(|kib| kib * 1024)
}

/// The KiB figure `field` (`VmRSS`, `VmHWM`, …) of `/proc/<pid>/status`; `pid` may be `self`.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The children of process `pid` (its main thread's, as `/proc` lists them).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Proportional set size of process `pid` in bytes (`Pss` of `/proc/<pid>/smaps_rollup`):
/// shared pages counted in part, so the sum over processes is the memory they really use.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Context switches (voluntary and involuntary) of every thread of process `pid` so far.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}
