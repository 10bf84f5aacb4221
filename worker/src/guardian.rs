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
    // Never unmapped: the guardian runs on it for as long as the worker lives. A mapping of
    // its own, not a heap block: only the page or two the guardian uses are ever faulted in
    // (a zeroed 64 KiB heap block cost the worker's start 16 page faults, ≈ 40 µs).
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack as usize + STACK) & !15;
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
    // The signal comes when the *thread* that made the guardian (the worker's main thread)
    // ends, and another of the worker's threads adopts it: `getppid` still names the worker
    // then, so wait again until the whole worker is gone. Leaving at the first signal let
    // the guardian exit while a plugin thread of a SIGKILLed worker still ran; that thread
    // then held the last reference to the address space and tore it down (≈ 0.2 ms) before
    // closing the worker's sockets, on its caller's path. If the worker died before the
    // signal was armed, this acts at once.
    while armed.is_ok() && nix::unistd::getppid() == worker {
        let _ = wake.wait();
    }
    let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    // SAFETY: `_exit` ends this process alone, running nothing of the worker's.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{fork, getppid, pipe, read, setpgid, write, ForkResult};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the process the test starts to play the worker.
    const CHILD: &str = "PLUGVISOR_GUARDIAN_TEST_CHILD";
    const SIGNALLED: &str = "control: signalled at the main thread's exit";
    const SURVIVED: &str = "worker: alive after its main thread ended";

    /// A worker whose main thread ends while another thread lives on: the kernel sends the
    /// parent-death signal then (the control, a plain child armed the same way, says so), and
    /// the guardian must not take the group down until the whole worker is gone. Before the
    /// fix it did, and a SIGKILLed worker's last thread tore its memory down before its
    /// sockets closed (docs/PERFORMANCE.md, P8).
    #[test]
    fn waits_for_the_whole_worker_not_its_main_thread() {
        if std::env::var_os(CHILD).is_some() {
            play_worker();
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["guardian::tests::waits_for_the_whole_worker_not_its_main_thread"])
            .args(["--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let signalled = text
            .find(SIGNALLED)
            .expect("the control never got its signal");
        let survived = text.find(SURVIVED);
        assert!(
            survived.is_some_and(|at| at > signalled),
            "the guardian ended the worker when its main thread ended ({}): {text}",
            out.status
        );
        assert!(out.status.success(), "{}", out.status);
        // The guardian follows the worker and leaves nothing of the group running (zombies
        // wait for init to reap them).
        let group = out_pid(&text);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !running_in_group(group).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the worker's group outlived it: {:?}",
                running_in_group(group)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids of the processes of group `group` that are not zombies.
    fn running_in_group(group: u32) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // After the `(comm)`: state, ppid, pgrp.
                let mut rest = stat
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace();
                let state = rest.next();
                let pgrp = rest.nth(1).and_then(|g| g.parse::<u32>().ok());
                pgrp == Some(group) && state != Some("Z")
            })
            .collect()
    }

    /// The pid the child printed (its process group), after the harness's own words.
    fn out_pid(text: &str) -> u32 {
        text.split("group: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("the child printed its group")
    }

    /// The child's part, in a process of its own.
    fn play_worker() -> ! {
        // A group of its own: the guardian's `killpg` reaches this process, the control and
        // the guardian, nothing of the test's.
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).unwrap();
        println!("group: {}", std::process::id());
        let (ready_r, ready_w) = pipe().unwrap();
        // SAFETY: one thread so far; the child only makes syscalls and leaves with `_exit`.
        if let ForkResult::Child = unsafe { fork() }.unwrap() {
            let parent = getppid();
            let mut usr1 = SigSet::empty();
            usr1.add(Signal::SIGUSR1);
            usr1.thread_block().unwrap();
            nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1).unwrap();
            write(&ready_w, b"r").unwrap();
            if getppid() == parent {
                let _ = usr1.wait();
            }
            let line = format!("{SIGNALLED}\n");
            let _ = write(std::io::stdout(), line.as_bytes());
            // SAFETY: ends this forked child alone.
            unsafe { libc::_exit(0) }
        }
        read(&ready_r, &mut [0u8]).unwrap();
        // SAFETY: still one thread, fds 0–2 open.
        unsafe { spawn() }.unwrap();
        wait_until_armed(*GUARDIAN.get().unwrap());
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(400));
            println!("{SURVIVED}");
            std::process::exit(0);
        });
        // SAFETY: the raw `exit` ends this thread alone, running nothing (`pthread_exit`
        // would unwind through the test harness); the thread above ends the process.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!("the thread has exited")
    }

    /// Waits until the guardian sleeps in its signal wait (so its parent-death signal is set).
    fn wait_until_armed(guardian: Pid) {
        let wchan = format!("/proc/{guardian}/wchan");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("sigtimedwait")) {
            assert!(Instant::now() < deadline, "the guardian never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
