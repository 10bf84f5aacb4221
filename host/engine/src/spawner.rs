//! The long-lived spawner thread, and the exit watcher every worker process gets.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process, and
//! tokio retires idle blocking threads. So every worker is forked from one thread that lives as
//! long as the host process: if the host dies, the kernel SIGKILLs the workers.
//!
//! Each child is then handed to its own small waiter thread that blocks in `wait()` on exactly
//! that pid (never `waitpid(-1)`), so a child is reaped the moment it exits, whatever the async
//! runtime is doing, even after it has shut down.

use crate::sandbox::Prepared;
use crate::spec::ResourceLimits;
use plugvisor_proto::ExitReason;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Spawns `command` from the spawner thread, in its own process group, with the parent-death
/// signal set to SIGKILL, `limits` applied and, last before exec, the `sandbox`.
pub(crate) async fn spawn(
    mut command: Command,
    limits: ResourceLimits,
    sandbox: Option<Prepared>,
) -> io::Result<Child> {
    prepare(&mut command, limits, sandbox);
    let (reply, answer) = oneshot::channel();
    sender()?
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

fn sender() -> io::Result<mpsc::Sender<SpawnRequest>> {
    let cell = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("plugvisor-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let _ = req.reply.send(req.command.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    });
    cell.lock()
        .map(|tx| tx.clone())
        .map_err(|_| io::Error::other("spawner lock poisoned"))
}

fn prepare(command: &mut Command, limits: ResourceLimits, sandbox: Option<Prepared>) {
    let host_pid = nix::unistd::getpid();
    command.process_group(0);
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
}

impl ExitWatch {
    /// Starts the waiter thread that reaps `child` and records how it ended.
    pub(crate) fn start(mut child: Child) -> io::Result<Arc<Self>> {
        let (tx, _) = watch::channel(None);
        let cell = Arc::new(Self {
            state: Mutex::new(None),
            changed: Condvar::new(),
            tx,
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
                // The leader is gone; whatever it left in its group (grandchildren) goes too.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                shared.record(reason);
            })?;
        Ok(cell)
    }

    fn record(&self, reason: ExitReason) {
        if let Ok(mut state) = self.state.lock() {
            *state = Some(reason.clone());
        }
        self.changed.notify_all();
        self.tx.send_replace(Some(reason));
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
