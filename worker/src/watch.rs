//! Shutdown triggers around a worker process: signals, stdin EOF, and the hard-exit watchdog.
//!
//! A dead host must mean a dead worker: besides `POST /v1/shutdown`, SIGTERM and SIGINT start
//! a graceful shutdown, and so does EOF on stdin when the host asked for it (the host holds
//! the only write end of that pipe, so the kernel closes it when the host dies). Should the
//! graceful path stall in plugin code, the watchdog exits the process anyway.

use crate::server::remove_socket_file;
use plugvisor_proto::wire::HOST_PID_ENV;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code of a worker the watchdog (or a second signal) had to stop.
pub(crate) const FORCED_EXIT: i32 = 1;

/// When the host named its pid in `PLUGVISOR_HOST_PID` (it spawned this process without a
/// pre-exec step), sets the parent-death signal to SIGKILL, then exits with [`FORCED_EXIT`]
/// if the host is gone already (it died before the signal was armed).
pub(crate) fn arm_parent_death() {
    let Some(host) = std::env::var(HOST_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    let armed = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // Under a wrapper the parent is not the host: then the host must still be alive.
    let parent = nix::unistd::getppid().as_raw();
    let host_alive = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), None).is_ok();
    if armed.is_err() || (parent != host && !host_alive()) {
        eprintln!("plugvisor worker: the host (pid {host}) is gone; exiting");
        std::process::exit(FORCED_EXIT);
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; exits at once on a second one.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub(crate) fn on_signals(
    shutdown: CancellationToken,
    socket: Option<PathBuf>,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for round in 0.. {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if round > 0 {
                force_exit(socket.as_deref(), &format!("second {name}"));
            }
            tracing::info!(signal = name, "shutting down");
            shutdown.cancel();
        }
    });
    Ok(())
}

/// Cancels `shutdown` when stdin reaches EOF (or fails).
///
/// When stdin is a pipe (a host started the worker), a task on the current runtime waits
/// for it: no thread of its own, so the worker starts and dies with one thread fewer. It
/// reads through a second, non-blocking open of the same pipe, so fd 0's own flags, which
/// the plugin's child processes inherit, stay as they were. Anything else (a file, a
/// terminal, `/proc` not mounted) is watched by a thread that blocks in `read`.
pub(crate) fn on_stdin_eof(
    shutdown: CancellationToken,
    deadline: Duration,
    socket: Option<PathBuf>,
) {
    let on_eof = move || {
        tracing::info!("stdin closed (host gone); shutting down");
        shutdown.cancel();
        arm_watchdog(deadline, socket);
    };
    match stdin_pipe() {
        Ok(pipe) => {
            tokio::spawn(async move {
                pipe_closed(&pipe).await;
                on_eof();
            });
        }
        Err(e) => {
            tracing::debug!(error = %e, "stdin is not a pipe; watching it from a thread");
            watch_stdin_thread(on_eof);
        }
    }
}

/// A non-blocking descriptor of the pipe on fd 0, registered with the runtime.
fn stdin_pipe() -> std::io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Checked before opening anything: a second open of a terminal or a device is not harmless.
    let stat = nix::sys::stat::fstat(std::io::stdin()).map_err(std::io::Error::from)?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        return Err(std::io::Error::other("not a pipe"));
    }
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open("/proc/self/fd/0")?;
    let interest = tokio::io::Interest::READABLE;
    // SAFETY: `File` owns its descriptor and keeps it open, unchanged, until it is dropped,
    // which happens only with the `AsyncFd` that owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(pipe, interest) }
        .map_err(std::io::Error::from)
}

/// Returns once the pipe reports EOF or an error; bytes written to it are read and dropped.
async fn pipe_closed(pipe: &tokio::io::unix::AsyncFd<std::fs::File>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok(mut ready) = pipe.readable().await else {
            return;
        };
        match ready.try_io(|fd| fd.get_ref().read(&mut buf)) {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_would_block) => {}
        }
    }
}

/// Runs `on_eof` from a thread that reads stdin until EOF or an error.
fn watch_stdin_thread(on_eof: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 512];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            on_eof();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot watch stdin");
    }
}

/// Arms the watchdog as soon as `shutdown` is cancelled.
pub(crate) fn watchdog_on(
    shutdown: CancellationToken,
    deadline: Duration,
    socket: Option<PathBuf>,
) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        arm_watchdog(deadline, socket);
    });
}

/// Exits the process `deadline` from now unless it has exited by then. Arms only once.
fn arm_watchdog(deadline: Duration, socket: Option<PathBuf>) {
    static ARMED: AtomicBool = AtomicBool::new(false);
    if ARMED.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            force_exit(socket.as_deref(), "graceful shutdown stalled");
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shutdown watchdog");
    }
}

/// Removes the socket file and exits with [`FORCED_EXIT`].
fn force_exit(socket: Option<&std::path::Path>, why: &str) -> ! {
    tracing::error!(reason = why, "exiting without finishing shutdown");
    if let Some(path) = socket {
        remove_socket_file(path);
    }
    if let Some(dir) = OWNED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(FORCED_EXIT)
}

/// The private transfer directory a remote worker made for itself, removed on a forced exit
/// too (the graceful path removes it when serving ends).
static OWNED_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes a forced exit remove `dir` (a remote worker's private transfer directory).
pub(crate) fn remove_on_forced_exit(dir: PathBuf) {
    let _ = OWNED_DIR.set(dir);
}
