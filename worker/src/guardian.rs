//! The group guardian: a tiny process that takes the worker's whole process group down when
//! the host dies, grandchildren included.
//!
//! `PR_SET_PDEATHSIG` kills the worker when its host dies, but not processes the plugin
//! started. So a worker started by a host forks, before any thread exists, one guardian that
//! waits for the worker to die (its own parent-death signal, SIGUSR1, blocked and waited for)
//! and then SIGKILLs the process group: every grandchild that stayed in the group, and itself.
//! While the host lives it would do the same when the worker exits, so this changes nothing
//! then; when the host is gone (and the worker with it) nobody else is left to do it.

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::{fork, ForkResult, Pid};

/// The guardian's pid, once forked.
static GUARDIAN: std::sync::OnceLock<Pid> = std::sync::OnceLock::new();

/// Ends and reaps the guardian before a clean exit, so it is not left for init to reap.
pub(crate) fn dismiss() {
    if let Some(&pid) = GUARDIAN.get() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// Forks the guardian.
///
/// # Safety
/// Call it only while the process is single-threaded: before any other thread or the tokio
/// runtime exists. The forked child is a copy of the calling thread alone; with other threads
/// about, a lock one of them held (the allocator's, stdio's) would stay locked in the child
/// for good.
///
/// # Errors
/// The `fork` error; the worker then runs without a guardian (its own stdin watch and
/// parent-death signal still apply).
pub(crate) unsafe fn spawn() -> nix::Result<()> {
    let worker = nix::unistd::getpid();
    // SAFETY: the caller guarantees the process is single-threaded, so the child is a
    // faithful copy; it only makes plain syscalls (`guard`) and never returns.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            let _ = GUARDIAN.set(child);
            Ok(())
        }
        ForkResult::Child => guard(worker),
    }
}

fn guard(worker: Pid) -> ! {
    let mut wake = SigSet::empty();
    wake.add(Signal::SIGUSR1);
    let armed = wake
        .thread_block()
        .and_then(|()| nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1));
    // Keep nothing of the worker's pipes open; the host waits for their EOF.
    for fd in 0..3 {
        let _ = nix::unistd::close(fd);
    }
    // If the worker died before the signal was armed, act at once.
    if armed.is_ok() && nix::unistd::getppid() == worker {
        let _ = wake.wait();
    }
    let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    std::process::exit(0)
}
