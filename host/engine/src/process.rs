//! `WorkerProcess`: one running worker, its pipes, its exit, and how it is stopped; or, for a
//! remote worker, the link to it (no process of ours: "exit" means the link was lost).
//!
//! Stopping escalates: `POST /v1/shutdown` (and stdin EOF), then SIGTERM to the process group,
//! then SIGKILL, each step after the grace period. The waiter thread (see `spawner`) reaps the
//! child and SIGKILLs whatever is left in its process group the moment the leader exits.

use crate::dirs::HostDir;
use crate::spawner::ExitWatch;
use crate::stderr::StderrTail;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use plugvisor_proto::{CrashCause, CrashReport, ExitReason};
use std::fs;
use std::path::PathBuf;
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a crash report waits for the dead worker's stderr to drain.
const STDERR_DRAIN: Duration = Duration::from_millis(250);
/// How long to wait for the exit after SIGKILL (only an uninterruptible sleep takes longer).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One running worker process.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    pub(crate) label: String,
    pub(crate) pid: u32,
    stdin: Mutex<Option<ChildStdin>>,
    pub(crate) exit: Arc<ExitWatch>,
    pub(crate) stderr: Arc<StderrTail>,
    pub(crate) grace: Duration,
    pub(crate) socket: PathBuf,
    pub(crate) transfer_dir: PathBuf,
    stopping: AtomicBool,
    killed_unresponsive: AtomicBool,
    // Keeps the host directory (and so the socket and transfer dir) alive as long as we are.
    pub(crate) host_dir: Arc<HostDir>,
    /// Set for a worker started elsewhere: no signals, no stdin, no shutdown request.
    remote: Option<RemoteLink>,
}

/// What the host knows of a remote worker's link: where it is, why it was lost, and when it
/// last answered a health probe.
#[derive(Debug)]
struct RemoteLink {
    address: String,
    lost: Mutex<Option<String>>,
    last_answer: Mutex<std::time::Instant>,
}

/// What a [`WorkerProcess`] is made of.
pub(crate) struct ProcessParts {
    pub(crate) label: String,
    pub(crate) pid: u32,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) exit: Arc<ExitWatch>,
    pub(crate) stderr: Arc<StderrTail>,
    pub(crate) grace: Duration,
    pub(crate) socket: PathBuf,
    pub(crate) transfer_dir: PathBuf,
    pub(crate) host_dir: Arc<HostDir>,
}

impl WorkerProcess {
    pub(crate) fn new(p: ProcessParts) -> Self {
        Self {
            label: p.label,
            pid: p.pid,
            stdin: Mutex::new(p.stdin),
            exit: p.exit,
            stderr: p.stderr,
            grace: p.grace,
            socket: p.socket,
            transfer_dir: p.transfer_dir,
            stopping: AtomicBool::new(false),
            killed_unresponsive: AtomicBool::new(false),
            host_dir: p.host_dir,
            remote: None,
        }
    }

    /// A remote worker at `address` (its `pid` as it reported it), with a host-side
    /// `transfer_dir` for the files its calls exchange.
    pub(crate) fn remote(p: ProcessParts, address: String) -> Self {
        let mut process = Self::new(p);
        process.remote = Some(RemoteLink {
            address,
            lost: Mutex::new(None),
            last_answer: Mutex::new(std::time::Instant::now()),
        });
        process
    }

    /// True for a worker started elsewhere.
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// A remote worker's link is lost (`why`): it counts as its exit from now on. Nothing for
    /// a local worker, whose exit is its own.
    pub(crate) fn lose(&self, why: &str) {
        let Some(link) = &self.remote else {
            return;
        };
        if let Ok(mut lost) = link.lost.lock() {
            lost.get_or_insert_with(|| why.to_owned());
        }
        self.exit.lose();
    }

    /// A remote worker answered (a health probe): remembered for its crash report.
    pub(crate) fn answered(&self) {
        if let Some(link) = &self.remote {
            if let Ok(mut at) = link.last_answer.lock() {
                *at = std::time::Instant::now();
            }
        }
    }

    /// What a remote worker's crash report says instead of an exit status.
    fn remote_detail(&self) -> Option<String> {
        let link = self.remote.as_ref()?;
        let why = link.lost.lock().ok().and_then(|l| l.clone());
        let ago = link.last_answer.lock().ok().map(|at| at.elapsed());
        let mut detail = format!("remote worker at {}", link.address);
        match why {
            Some(why) => detail.push_str(&format!(": {why}")),
            None => detail.push_str(": connection lost"),
        }
        if let Some(ago) = ago {
            detail.push_str(&format!("; it last answered {} ms before", ago.as_millis()));
        }
        Some(detail)
    }

    /// True once a stop was asked for (an exit after that is not a crash).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sends `signal` to the worker's process group, unless the worker was already reaped.
    pub(crate) fn signal_group(&self, signal: Signal) {
        // A remote worker's pid is in another machine's (or namespace's) numbering.
        if self.exit.get().is_some() || self.remote.is_some() {
            return;
        }
        let pgid = Pid::from_raw(self.pid as i32);
        if let Err(e) = killpg(pgid, signal) {
            tracing::debug!(plugin = %self.label, pid = self.pid, %signal, error = %e, "killpg");
        }
    }

    /// Closes the worker's stdin: a worker started by the host exits on that EOF.
    fn close_stdin(&self) {
        if let Ok(mut stdin) = self.stdin.lock() {
            stdin.take();
        }
    }

    /// Builds the crash report, waiting briefly for the exit and the last stderr lines.
    pub(crate) async fn crash_report(&self) -> CrashReport {
        let exit = match self.remote_detail() {
            Some(detail) => ExitReason::Disconnected(detail),
            None => self
                .exit
                .wait_timeout(Duration::from_secs(1))
                .await
                .unwrap_or(ExitReason::Unknown),
        };
        self.stderr.wait_closed(STDERR_DRAIN).await;
        let stderr_tail = self.stderr.lines();
        let cause = if self.remote.is_some() {
            CrashCause::classify(&exit, &stderr_tail)
        } else if self.killed_unresponsive.load(Ordering::Acquire) {
            CrashCause::Unresponsive
        } else if self.exit.hit_memory_limit()
            && matches!(exit, ExitReason::Signal { number: 9, .. })
        {
            CrashCause::MemoryLimit
        } else {
            CrashCause::classify(&exit, &stderr_tail)
        };
        CrashReport {
            plugin: self.label.clone(),
            pid: self.pid,
            exit,
            cause,
            stderr_tail,
        }
    }

    /// Marks the worker as stopping and closes its stdin.
    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.close_stdin();
    }

    /// Escalates SIGTERM, then SIGKILL, waiting `grace` for the exit before each.
    pub(crate) async fn terminate(&self) -> ExitReason {
        self.begin_stop();
        if self.remote.is_some() {
            // Detaching: the worker is not ours to stop (other hosts may use it).
            self.exit.lose();
            return ExitReason::Unknown;
        }
        if let Some(exit) = self.exit.wait_timeout(self.grace).await {
            return exit;
        }
        tracing::info!(plugin = %self.label, pid = self.pid, "worker still running; SIGTERM");
        self.signal_group(Signal::SIGTERM);
        if let Some(exit) = self.exit.wait_timeout(self.grace).await {
            return exit;
        }
        tracing::warn!(plugin = %self.label, pid = self.pid, "worker ignored SIGTERM; SIGKILL");
        self.signal_group(Signal::SIGKILL);
        self.exit
            .wait_timeout(KILL_WAIT)
            .await
            .unwrap_or(ExitReason::Unknown)
    }

    /// SIGKILLs a worker that stopped answering health probes; its crash report says so.
    pub(crate) fn kill_unresponsive(&self) {
        self.killed_unresponsive.store(true, Ordering::Release);
        self.lose("it stopped answering health probes");
        self.signal_group(Signal::SIGKILL);
    }

    /// SIGKILLs the group at once and waits for the exit (a start that went wrong).
    pub(crate) async fn kill(&self) {
        self.begin_stop();
        if self.remote.is_some() {
            self.exit.lose();
        }
        self.signal_group(Signal::SIGKILL);
        self.exit.wait_timeout(KILL_WAIT).await;
    }

    /// Removes the socket file and the transfer directory.
    pub(crate) fn remove_files(&self) {
        remove_files(&self.socket, &self.transfer_dir);
    }
}

fn remove_files(socket: &PathBuf, transfer_dir: &PathBuf) {
    if let Err(e) = fs::remove_file(socket) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %socket.display(), error = %e, "could not remove socket");
        }
    }
    if let Err(e) = fs::remove_dir_all(transfer_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %transfer_dir.display(), error = %e, "could not remove transfer dir");
        }
    }
}

impl Drop for WorkerProcess {
    /// The last handle is gone without an async stop: close stdin, SIGTERM the group now, and
    /// let a short-lived thread SIGKILL it after the grace period. Works without a runtime.
    fn drop(&mut self) {
        self.begin_stop();
        if self.exit.get().is_some() || self.remote.is_some() {
            self.remove_files();
            return;
        }
        self.signal_group(Signal::SIGTERM);
        let exit = Arc::clone(&self.exit);
        let (socket, transfer_dir) = (self.socket.clone(), self.transfer_dir.clone());
        let (pid, grace, host_dir) = (self.pid, self.grace, Arc::clone(&self.host_dir));
        let reaper = move || {
            if exit.wait_blocking(grace).is_none() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                exit.wait_blocking(KILL_WAIT);
            }
            remove_files(&socket, &transfer_dir);
            drop(host_dir);
        };
        let spawned = std::thread::Builder::new()
            .name(format!("plugvisor-stop-{pid}"))
            .stack_size(64 * 1024)
            .spawn(reaper);
        if spawned.is_err() {
            // No thread to wait with: kill at once rather than leave it running.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}
