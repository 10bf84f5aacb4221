//! The group guardian: a tiny process that takes the worker's whole process group down when
//! the host dies, grandchildren included.
//!
//! `PR_SET_PDEATHSIG` kills the worker when its host dies, but not processes the plugin
//! started. So a worker started by a host makes, before any thread exists, one guardian that
//! waits for the worker to die (its own parent-death signal, SIGUSR1, blocked and waited for)
//! and then SIGKILLs the process group: every grandchild that stayed in the group, and itself.
//! While the host lives it would do the same when the worker exits, so this changes nothing
//! then; when the host is gone (and the worker with it) nobody else is left to do it.
//!
//! The guardian is a `clone(CLONE_VM)` child, not a `fork`: it shares the worker's address
//! space instead of copying its page tables, so starting it costs no copy and no
//! copy-on-write faults afterwards, it owns no memory but its small stack, and a worker
//! that dies (SIGKILL) does not tear its memory down while its caller waits: the guardian
//! holds it until it follows a moment later. In exchange the guardian may only make plain
//! syscalls that cannot fail (a failing one would write `errno` in the worker's main thread)
//! and must leave with `_exit`, never `exit` (which would run the worker's exit handlers).

use nix::libc;
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;

/// The guardian's pid, once started.
static GUARDIAN: std::sync::OnceLock<Pid> = std::sync::OnceLock::new();

/// Bytes of the guardian's own stack (it makes a few syscalls and waits).
const STACK: usize = 64 * 1024;

/// Ends and reaps the guardian before a clean exit, so it is not left for init to reap.
pub(crate) fn dismiss() {
    if let Some(&pid) = GUARDIAN.get() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// Starts the guardian.
///
/// # Safety
/// Call it only while the process is single-threaded: before any other thread or the tokio
/// runtime exists, and with fds 0–2 open (a host started it), so the guardian's syscalls
/// cannot fail.
///
/// # Errors
/// The `clone` error, or that valgrind runs the worker (it cannot run a `clone(CLONE_VM)`
/// child and would abort the worker); the worker then runs without a guardian (its own stdin
/// watch and parent-death signal still apply).
pub(crate) unsafe fn spawn() -> std::io::Result<()> {
    if under_valgrind() {
        return Err(std::io::Error::other(
            "running under valgrind, which cannot run a clone(CLONE_VM) child",
        ));
    }
    let worker = nix::unistd::getpid().as_raw();
    // Never freed: the guardian runs on it for as long as the worker lives.
    let stack: &'static mut [u8] = Box::leak(vec![0u8; STACK].into_boxed_slice());
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    // SAFETY: `guardian` only makes syscalls that cannot fail here and ends in `_exit`; its
    // stack is its own and outlives it; the argument is a plain integer, not a pointer.
    let pid = unsafe {
        libc::clone(
            guardian,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            worker as usize as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = GUARDIAN.set(Pid::from_raw(pid));
    Ok(())
}

/// Whether valgrind runs this process (it preloads its `vgpreload_*` libraries).
fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload_"))
}

/// The guardian's body: `arg` is the worker's pid.
extern "C" fn guardian(arg: *mut libc::c_void) -> libc::c_int {
    let worker = Pid::from_raw(arg as usize as i32);
    let mut wake = SigSet::empty();
    wake.add(Signal::SIGUSR1);
    let armed = wake
        .thread_block()
        .and_then(|()| nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1));
    // Keep nothing of the worker's pipes open; the host waits for their EOF. (Its own fd
    // table: a copy, so this closes nothing of the worker's.)
    for fd in 0..3 {
        let _ = nix::unistd::close(fd);
    }
    // If the worker died before the signal was armed, act at once.
    if armed.is_ok() && nix::unistd::getppid() == worker {
        let _ = wake.wait();
    }
    let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    // SAFETY: `_exit` ends this process alone, running nothing of the worker's.
    unsafe { libc::_exit(0) }
}
