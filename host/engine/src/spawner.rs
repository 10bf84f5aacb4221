//! Spawning a worker from the spawner thread (`fork_thread`), and the exit watcher every
//! worker process gets.
//!
//! Each child is then handed to its own small waiter thread that blocks in `wait()` on exactly
//! that pid (never `waitpid(-1)`), so a child is reaped the moment it exits, whatever the async
//! runtime is doing, even after it has shut down.

use crate::cgroup::WorkerGroup;
use crate::fork_thread::on_spawner_thread;
use crate::sandbox::Prepared;
use crate::spec::ResourceLimits;
use plugvisor_proto::wire;
use plugvisor_proto::ExitReason;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Spawns `command` from the spawner thread, in its own process group (a session of its own
/// when sandboxed), with the parent-death signal set to SIGKILL, `limits` applied and, last
/// before exec, the `sandbox`. When the worker arms its own parent-death signal
/// (`self_armed`) and has neither limits nor a sandbox there is no step between fork and
/// exec, so it spawns with `posix_spawn` and names the host's pid in [`wire::HOST_PID_ENV`].
pub(crate) async fn spawn(
    mut command: Command,
    limits: ResourceLimits,
    sandbox: Option<Prepared>,
    self_armed: bool,
) -> io::Result<Child> {
    prepare(&mut command, limits, sandbox, self_armed);
    let (reply, answer) = oneshot::channel();
    on_spawner_thread(move || {
        let _ = reply.send(command.spawn());
    })?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

fn prepare(
    command: &mut Command,
    limits: ResourceLimits,
    sandbox: Option<Prepared>,
    self_armed: bool,
) {
    let host_pid = nix::unistd::getpid();
    if sandbox.is_none() {
        // A sandboxed child calls setsid instead, which a group leader may not.
        command.process_group(0);
    }
    if self_armed && sandbox.is_none() && limits == ResourceLimits::default() {
        // Nothing to do between fork and exec: without a `pre_exec`, std spawns with
        // `posix_spawn` (vfork-like, no page-table copy of the host). The worker sets its own
        // parent-death signal and checks its parent against this pid (docs/PROTOCOL.md, §2).
        command.env(wire::HOST_PID_ENV, host_pid.to_string());
        return;
    }
    // SAFETY: the closure runs in the forked child of a multithreaded process, before exec,
    // where only async-signal-safe work is allowed. It makes the syscalls prctl, getppid and
    // setrlimit (and the sandbox's unshare, prctl, landlock_restrict_self and seccomp), and
    // allocates nothing: every error it returns is an errno
    // (`io::Error::from_raw_os_error` stores the number inline).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The host may have died between fork and prctl; then nobody would signal us.
            // The parent then sees the spawn fail with ESRCH ("no such process").
            if nix::unistd::getppid() != host_pid {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            apply_limits(limits)?;
            if let Some(sandbox) = &sandbox {
                sandbox.apply_in_child()?;
            }
            Ok(())
        });
    }
}

fn apply_limits(limits: ResourceLimits) -> nix::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    if let Some(n) = limits.open_files {
        setrlimit(Resource::RLIMIT_NOFILE, n, n)?;
    }
    if let Some(secs) = limits.cpu_seconds {
        setrlimit(Resource::RLIMIT_CPU, secs, secs.saturating_add(1))?;
    }
    Ok(())
}

/// Converts an exit status into the wire's [`ExitReason`].
pub(crate) fn exit_reason(status: ExitStatus) -> ExitReason {
    if let Some(code) = status.code() {
        return ExitReason::Code(code);
    }
    match status.signal() {
        Some(number) => ExitReason::Signal {
            number,
            name: signal_name(number),
            core_dumped: status.core_dumped(),
        },
        None => ExitReason::Unknown,
    }
}

fn signal_name(number: i32) -> String {
    nix::sys::signal::Signal::try_from(number)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {number}"))
}

/// How a worker process ended, observable from async code and from plain threads.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    state: Mutex<Option<ExitReason>>,
    changed: Condvar,
    tx: watch::Sender<Option<ExitReason>>,
    memory_limit: AtomicBool,
}

impl ExitWatch {
    /// Starts the waiter thread that reaps `child`, kills what it leaves behind (its process
    /// group, and its whole tree when it has a cgroup), and records how it ended.
    pub(crate) fn start(mut child: Child, group: Option<WorkerGroup>) -> io::Result<Arc<Self>> {
        let (tx, _) = watch::channel(None);
        let cell = Arc::new(Self {
            state: Mutex::new(None),
            changed: Condvar::new(),
            tx,
            memory_limit: AtomicBool::new(false),
        });
        let shared = Arc::clone(&cell);
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::Builder::new()
            .name(format!("plugvisor-wait-{}", child.id()))
            .stack_size(64 * 1024)
            .spawn(move || {
                let reason = match child.wait() {
                    Ok(status) => exit_reason(status),
                    Err(_) => ExitReason::Unknown,
                };
                // The leader is gone; whatever it left in its group (grandchildren) goes too,
                // and with a cgroup, descendants that left the group as well.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                if let Some(group) = group {
                    group.kill_tree();
                    let oom = group.oom_kills() > 0;
                    shared.memory_limit.store(oom, Ordering::Release);
                    drop(group);
                }
                shared.record(reason);
            })?;
        Ok(cell)
    }

    /// A watch no thread fills: a remote worker's, set by [`ExitWatch::lose`].
    pub(crate) fn detached() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(None),
            changed: Condvar::new(),
            tx: watch::channel(None).0,
            memory_limit: AtomicBool::new(false),
        })
    }

    /// Records that a remote worker is gone (its connection was lost, or the host detached);
    /// only the first call counts.
    pub(crate) fn lose(&self) {
        if self.get().is_none() {
            self.record(ExitReason::Unknown);
        }
    }

    fn record(&self, reason: ExitReason) {
        if let Ok(mut state) = self.state.lock() {
            *state = Some(reason.clone());
        }
        self.changed.notify_all();
        self.tx.send_replace(Some(reason));
    }

    /// True when the kernel killed a process of the worker's cgroup for its memory limit
    /// (known once the exit is recorded).
    pub(crate) fn hit_memory_limit(&self) -> bool {
        self.memory_limit.load(Ordering::Acquire)
    }

    /// How it ended, if it has.
    pub(crate) fn get(&self) -> Option<ExitReason> {
        self.state.lock().ok().and_then(|s| s.clone())
    }

    /// Waits, without a runtime, up to `timeout` for the exit.
    pub(crate) fn wait_blocking(&self, timeout: Duration) -> Option<ExitReason> {
        let guard = self.state.lock().ok()?;
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .ok()?;
        guard.clone()
    }

    /// Waits for the exit.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub(crate) async fn wait(&self) -> ExitReason {
        let mut rx = self.tx.subscribe();
        let reason = match rx.wait_for(|s| s.is_some()).await {
            Ok(state) => state.clone(),
            Err(_) => None,
        };
        reason.unwrap_or(ExitReason::Unknown)
    }

    /// Waits up to `timeout` for the exit.
    pub(crate) async fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }
}
