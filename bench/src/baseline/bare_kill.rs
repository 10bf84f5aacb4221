//! bare-kill: SIGKILL a process and reap it with `waitpid`, no host in between: the kernel's
//! own floor of "SIGKILL → its parent knows", for the bare binary (one thread, std only) and
//! for the very worker binary P8 kills (started by hand, idle).

use crate::procs::{binary, spawn_with_line};
use anyhow::Result;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time for the process to settle into its wait after its ready line.
const SETTLE: Duration = Duration::from_millis(20);

/// SIGKILL → reaped for `plugvisor-bench-bare`, blocked in `accept`.
///
/// # Errors
/// When the binary is missing or misbehaves.
pub fn bare(dir: &Path, n: usize) -> Result<Duration> {
    let socket = dir.join(format!("bare-kill-{n}.sock"));
    let mut command = Command::new(binary("plugvisor-bench-bare")?);
    command.arg(&socket);
    let took = once(command);
    let _ = std::fs::remove_file(&socket);
    took
}

/// SIGKILL → reaped for the worker `program`, serving an idle Unix socket.
///
/// # Errors
/// When the worker cannot start.
pub fn worker(program: &Path, dir: &Path, n: usize) -> Result<Duration> {
    let socket = dir.join(format!("worker-kill-{n}.sock"));
    let mut command = Command::new(program);
    command
        .arg("--socket")
        .arg(&socket)
        .env(
            plugvisor_proto::wire::TOKEN_ENV,
            "bench-bare-kill-token-0123456789ab",
        )
        .env("PLUGVISOR_LOG", "warn");
    let took = once(command);
    let _ = std::fs::remove_file(&socket);
    took
}

/// Starts `command` in a process group of its own, waits for its first line, lets it settle,
/// then times SIGKILL → `waitpid` returning (`ChildGuard::stop`).
fn once(mut command: Command) -> Result<Duration> {
    command.stdin(Stdio::null()).process_group(0);
    let (guard, _) = spawn_with_line(command)?;
    std::thread::sleep(SETTLE);
    let start = Instant::now();
    guard.stop();
    Ok(start.elapsed())
}
