//! The keeper: a tiny process, forked once per host process, that kills everything in the
//! host's cgroup v2 group when the host dies, so that a sandboxed worker's escapee (a
//! grandchild in a session of its own) cannot outlive a host that was SIGKILLed, and then
//! removes the host's groups.
//!
//! It is forked from the spawner thread, which lives as long as the host, with that thread's
//! death as its parent-death signal (SIGUSR1, blocked and waited for). It lives outside every
//! worker's group, holds only the `cgroup.kill` file of the host's group, and makes raw
//! syscalls only (it is the child of a multithreaded process).

use nix::libc;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Forks the keeper of the host's `groups` (`v2`, if any, is the one to kill) from the
/// spawner thread.
pub(crate) fn start(v2: Option<&Path>, groups: &[&PathBuf]) -> io::Result<()> {
    let kill = match v2 {
        Some(v2) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(v2.join("cgroup.kill"))?,
        ),
        None => None,
    };
    let dirs = groups
        .iter()
        .map(|g| c_path(g))
        .collect::<io::Result<Vec<CString>>>()?;
    crate::fork_thread::on_spawner_thread(move || {
        let kill_fd = kill.as_ref().map_or(-1, |k| k.as_raw_fd());
        let host = std::process::id() as libc::pid_t;
        // SAFETY: the child runs `keep` only, which makes async-signal-safe syscalls and
        // never returns; it touches no lock and allocates nothing.
        match unsafe { libc::fork() } {
            -1 => tracing::warn!(error = %io::Error::last_os_error(), "cannot fork the keeper"),
            0 => keep(kill_fd, host, &dirs),
            pid => tracing::debug!(pid, "keeper started"),
        }
        // The parent's copy of the kill file closes here; the keeper has its own.
        drop(kill);
    })
}

/// The keeper's whole life: wait for the host's death, kill the v2 group (`kill`, or -1),
/// remove the groups, exit.
fn keep(kill: RawFd, host: libc::pid_t, dirs: &[CString]) -> ! {
    // SAFETY: sigset and timespec are local plain data; every call is a raw syscall on
    // descriptors and memory this process owns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // Out of the terminal's process group: Ctrl-C is the host's to handle.
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as libc::c_ulong);
        close_all_but(kill);
        // The host may have died before the prctl; then nothing would wake us.
        if libc::getppid() == host {
            while libc::sigwaitinfo(&set, std::ptr::null_mut()) != libc::SIGUSR1 {}
        }
        if kill >= 0 {
            libc::write(kill, b"1".as_ptr().cast(), 1);
        }
        // The groups empty within milliseconds of the kill; the workers' groups inside are
        // gone already unless the host died abruptly.
        for dir in dirs {
            remove_children(dir);
            remove_dir(libc::AT_FDCWD, dir.as_ptr());
        }
        libc::_exit(0)
    }
}

/// Removes a group directory, retrying while it is busy (its last processes dying), 1 s at
/// most.
fn remove_dir(at: RawFd, name: *const libc::c_char) {
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    for _ in 0..100 {
        // SAFETY: `name` is NUL-terminated and outlives the call; `pause` is a local.
        unsafe {
            if libc::unlinkat(at, name, libc::AT_REMOVEDIR) == 0
                || *libc::__errno_location() != libc::EBUSY
            {
                return;
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
    }
}

/// Removes the worker groups (subdirectories) left inside `dir`, reading it with raw
/// `getdents64` into a stack buffer.
fn remove_children(dir: &CString) {
    // SAFETY: `buf` is a local the kernel fills with whole `linux_dirent64` records; each
    // record is read within the `n` bytes returned, its name NUL-terminated by the kernel.
    unsafe {
        let fd = libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            while at < n as usize {
                let record = buf.as_ptr().add(at);
                let reclen = u16::from_ne_bytes([*record.add(16), *record.add(17)]) as usize;
                let kind = *record.add(18);
                let name = record.add(19).cast::<libc::c_char>();
                let dot = *name == b'.' as libc::c_char;
                if kind == libc::DT_DIR && !dot {
                    remove_dir(fd, name);
                }
                at += reclen.max(1);
            }
        }
        libc::close(fd);
    }
}

/// The NUL-terminated form of `path`.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Closes every descriptor but `keep` (all of them if it is negative).
fn close_all_but(keep: RawFd) {
    // SAFETY: close_range passes no memory; the keeper uses no other descriptor.
    unsafe {
        let Ok(keep) = libc::c_uint::try_from(keep) else {
            libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0);
            return;
        };
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
}
