//! `intruder`: a hostile plugin on demand, for sandbox tests; every op *attempts* one escape.
//!
//! Each op tries something a malicious plugin would do and reports whether it worked instead
//! of crashing, so a test runs it unsandboxed (the positive control: it succeeds) and
//! sandboxed (it must fail). It never answers with what it read, only whether it could;
//! `status`, `fds` and `own_env` describe the worker itself (names of its variables, never
//! their values). Bad input is [`PluginError::InvalidInput`] naming the field, never a panic.
//! It is deliberately not in the bundled manifests.
//!
//! Input `{"op": NAME, ...}`. Every answer is `{"ok": bool, "error": string|null, ...}`; most
//! carry `"errno"` too (0 on success, null when a failure had no OS error number).
//!
//! | op | input | answer (besides `ok`, `error`, `errno`) |
//! |---|---|---|
//! | `read` | `path` | — (open, read up to 1 byte) |
//! | `write` | `path` | `created`, then `removed` or `restored` (see `write` below) |
//! | `truncate` | `path` | — (`truncate(path, 0)`: only on files the caller owns!) |
//! | `list` | `path` | `entries` (a count, never names) |
//! | `connect` | `addr` `"IP:PORT"` | — (TCP, 2 s timeout) |
//! | `udp` | `addr` | — (one datagram sent) |
//! | `loopback` | — | — (listen on its own 127.0.0.1 and connect to itself) |
//! | `unix` / `abstract` | `path` / `name` | — (connect to a pathname / abstract Unix socket) |
//! | `fork_bomb` | `max` (10000) | `forked`; every child is killed and reaped before answering |
//! | `alloc` | `mib` | `mib` (allocated, every page written, freed) |
//! | `ptrace` | `pid` | `detached` (attach, wait for the stop, detach) |
//! | `process_vm_readv` | `pid`, `addr` (0; number or `"0x…"`) | — (`EFAULT`: permitted) |
//! | `signal` | `pid`, `sig` (0) | — (`pid <= 0` only with `sig` 0) |
//! | `environ` | `pid` | `has_token_var` (a `PLUGVISOR_API_TOKEN=` entry; never a value) |
//! | `own_env` | — | `names` (sorted) |
//! | `escape` | `lock` (optional path) | `pid` of the escapee, `locked` (see `escape` below) |
//! | `modify_input` | `file` (`{"$file": …}`) | — (append one byte to the referenced file) |
//! | `syscall` | `name` | `syscall`, `signal` if a probe child was killed (see `syscall` below) |
//! | `status` | — | `no_new_privs`, `seccomp`, `cap_eff`, `uid`, `cgroup`, `net_ns` |
//! | `fds` | — | `count`, `targets: [{"fd", "target"}]` (fds 3..4096) |
//! | `tiocsti` | `fd` (0), `high_bits` (false) | — (`ioctl(fd, TIOCSTI, "x")`) |
//! | `write_self_exe` | — | — (open `/proc/self/exe` for writing, close at once) |
//! | `symlink_out` | `target`, `as_ref` (true) | `file`: a `FileRef` to a symlink to `target` made where outputs go (or, with `as_ref` false, its `path` as a plain string) |

use plugvisor_proto::{json, FileRef, Plugin, PluginError, Value};
use serde_json::Map;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::time::Duration;

use libc::{c_int, c_long, c_ulong, pid_t};

/// The ops, for error messages.
const OPS: &str = "read, write, truncate, list, connect, udp, unix, abstract, fork_bomb, \
    alloc, ptrace, process_vm_readv, signal, environ, own_env, escape, modify_input, syscall, \
    status, fds, tiocsti, write_self_exe, loopback, symlink_out";
/// The syscall probes, for error messages.
const SYSCALLS: &str = "unshare_user, unshare_net, mount, bpf, perf_event_open, userfaultfd, \
    keyctl, io_uring_setup, kexec_load, init_module, reboot_probe, ptrace_traceme, chroot, setns";
/// The environment entry `environ` looks for (the host's API token).
const TOKEN_VAR: &[u8] = b"PLUGVISOR_API_TOKEN=";
/// Timeout of `connect`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of `fork_bomb`'s `max`.
const MAX_FORKS: u64 = 100_000;
/// Upper bound of `alloc`'s `mib` (1 TiB).
const MAX_MIB: u64 = 1 << 20;
/// How long a fork-bomb child and the escapee sleep.
const CHILD_SLEEP_S: u32 = 30;
const ESCAPEE_SLEEP_S: u32 = 300;

/// The intruder plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct Intruder;

impl Plugin for Intruder {
    fn name(&self) -> &str {
        "intruder"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        tokio::task::spawn_blocking(move || run(&input))
            .await
            .map_err(|e| PluginError::failed(format!("the attempt did not finish: {e}")))?
    }
}

/// Runs one op (blocking).
fn run(input: &Value) -> Result<Value, PluginError> {
    let op = input
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("op: required, one of {OPS}")))?;
    let answer = match op {
        "read" => read(path(input, "path")?),
        "write" => write(path(input, "path")?),
        "truncate" => truncate(path(input, "path")?),
        "list" => list(path(input, "path")?),
        "connect" => connect(socket_addr(input)?),
        "udp" => udp(socket_addr(input)?),
        "loopback" => loopback(),
        "unix" => unix(path(input, "path")?),
        "abstract" => abstract_socket(text(input, "name")?),
        "fork_bomb" => fork_bomb(number(input, "max", Some(10_000), MAX_FORKS)?),
        "alloc" => alloc(number(input, "mib", None, MAX_MIB)?),
        "ptrace" => ptrace(pid(input)?),
        "process_vm_readv" => vm_read(pid(input)?, address(input)?),
        "signal" => signal(input)?,
        "environ" => environ(pid(input)?),
        "own_env" => own_env(),
        "escape" => escape(optional_path(input, "lock")?)?,
        "modify_input" => modify_input(&file_ref(input)?),
        "syscall" => syscall(text(input, "name")?)?,
        "status" => status(),
        "fds" => fds(),
        "tiocsti" => tiocsti(input)?,
        "write_self_exe" => write_self_exe(),
        "symlink_out" => symlink_out(
            path(input, "target")?,
            input.get("as_ref") != Some(&json!(false)),
        )?,
        other => {
            return Err(invalid(format!(
                "op: unknown {other:?}, must be one of {OPS}"
            )))
        }
    };
    Ok(answer.done())
}

// ---------------------------------------------------------------------------------------
// Answers and input
// ---------------------------------------------------------------------------------------

/// An answer under construction: `ok`, `error`, `errno`, then extra fields.
struct Answer(Map<String, Value>);

impl Answer {
    fn of<T>(result: &io::Result<T>) -> Self {
        match result {
            Ok(_) => Self::success(),
            Err(e) => Self::failure(e),
        }
    }

    fn success() -> Self {
        Self::new(true, Value::Null, json!(0))
    }

    fn failure(err: &io::Error) -> Self {
        Self::new(false, json!(err.to_string()), json!(err.raw_os_error()))
    }

    fn new(ok: bool, error: Value, errno: Value) -> Self {
        let mut map = Map::new();
        map.insert("ok".to_owned(), Value::Bool(ok));
        map.insert("error".to_owned(), error);
        map.insert("errno".to_owned(), errno);
        Self(map)
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn invalid(msg: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_input(msg)
}

/// `got …` for messages: the offending value, or `nothing`.
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), Value::to_string)
}

/// A required string field.
fn text<'a>(input: &'a Value, key: &str) -> Result<&'a str, PluginError> {
    input.get(key).and_then(Value::as_str).ok_or_else(|| {
        invalid(format!(
            "{key}: required, a string, got {}",
            shown(input.get(key))
        ))
    })
}

/// A required path: a string without NUL bytes.
fn path<'a>(input: &'a Value, key: &str) -> Result<&'a str, PluginError> {
    let path = text(input, key)?;
    if path.contains('\0') {
        return Err(invalid(format!("{key}: must not contain a NUL byte")));
    }
    Ok(path)
}

/// An optional path (absent or null: none).
fn optional_path<'a>(input: &'a Value, key: &str) -> Result<Option<&'a str>, PluginError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => path(input, key).map(Some),
    }
}

/// An integer `0..=max`, `default` when absent.
fn number(input: &Value, key: &str, default: Option<u64>, max: u64) -> Result<u64, PluginError> {
    match (input.get(key), default) {
        (None, Some(default)) => Ok(default),
        (None, None) => Err(invalid(format!("{key}: required, an integer 0..={max}"))),
        (Some(v), _) => v
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| invalid(format!("{key}: must be an integer 0..={max}, got {v}"))),
    }
}

/// An optional boolean, false when absent.
fn flag(input: &Value, key: &str) -> Result<bool, PluginError> {
    match input.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(format!("{key}: must be a boolean, got {v}"))),
    }
}

/// Any process id, including 0 and negative ones (`signal` only).
fn any_pid(input: &Value) -> Result<pid_t, PluginError> {
    input
        .get("pid")
        .and_then(Value::as_i64)
        .and_then(|p| pid_t::try_from(p).ok())
        .ok_or_else(|| {
            invalid(format!(
                "pid: required, a process id, got {}",
                shown(input.get("pid"))
            ))
        })
}

/// A positive process id.
fn pid(input: &Value) -> Result<pid_t, PluginError> {
    any_pid(input).ok().filter(|p| *p > 0).ok_or_else(|| {
        invalid(format!(
            "pid: required, a positive process id, got {}",
            shown(input.get("pid"))
        ))
    })
}

/// `addr` of `process_vm_readv`: an integer or a `0x` hex string; 0 when absent.
fn address(input: &Value) -> Result<usize, PluginError> {
    let parsed = match input.get("addr") {
        None => Some(0),
        Some(Value::String(s)) => s
            .strip_prefix("0x")
            .and_then(|hex| usize::from_str_radix(hex, 16).ok()),
        Some(v) => v.as_u64().and_then(|a| usize::try_from(a).ok()),
    };
    parsed.ok_or_else(|| {
        invalid(format!(
            "addr: must be an address (an integer or \"0x…\"), got {}",
            shown(input.get("addr"))
        ))
    })
}

/// `addr` of `connect` and `udp`: `IP:PORT`.
fn socket_addr(input: &Value) -> Result<SocketAddr, PluginError> {
    text(input, "addr")?.parse().map_err(|_| {
        invalid(format!(
            "addr: must be IP:PORT, got {}",
            shown(input.get("addr"))
        ))
    })
}

/// `file` of `modify_input`: a `{"$file": {...}}` reference.
fn file_ref(input: &Value) -> Result<FileRef, PluginError> {
    input
        .get("file")
        .map(FileRef::from_value)
        .transpose()
        .map_err(|e| invalid(format!("file: {e}")))?
        .flatten()
        .ok_or_else(|| invalid("file: required, a {\"$file\": {...}} reference"))
}

/// `Err(errno)` for a raw -1 return.
fn cvt(ret: impl Into<i64>) -> io::Result<i64> {
    let ret = ret.into();
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Waits for the child `pid` (retrying on EINTR); its wait status, or `None`.
fn reap(pid: pid_t) -> Option<c_int> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live local the kernel writes the wait status to.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Some(status);
        }
        if ret < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Opens `path` and reads up to one byte, which is thrown away.
fn read(path: &str) -> Answer {
    let mut byte = [0u8; 1];
    let read = File::open(path).and_then(|mut f| f.read(&mut byte));
    Answer::of(&read)
}

/// Writes one byte to `path`, leaving no trace when it can.
///
/// A new file is created (`O_WRONLY|O_CREAT|O_EXCL`, mode 0600), written and removed again
/// (`created: true`, `removed`). An existing file is opened `O_WRONLY|O_APPEND`, gets one
/// byte appended and is cut back to its old length (`created: false`, `restored`), so a
/// positive control leaves its contents as they were.
fn write(path: &str) -> Answer {
    let opened = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match opened {
        Ok(file) => {
            let written = (&file).write_all(b"x");
            drop(file);
            let removed = std::fs::remove_file(path).is_ok();
            Answer::of(&written)
                .with("created", true)
                .with("removed", removed)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => append_and_restore(path),
        Err(e) => Answer::failure(&e).with("created", false),
    }
}

/// The existing-file half of [`write`].
fn append_and_restore(path: &str) -> Answer {
    let file = match OpenOptions::new().append(true).open(path) {
        Ok(file) => file,
        Err(e) => return Answer::failure(&e).with("created", false),
    };
    let written = file
        .metadata()
        .and_then(|meta| (&file).write_all(b"x").map(|()| meta.len()));
    let restored = written.as_ref().is_ok_and(|len| file.set_len(*len).is_ok());
    Answer::of(&written)
        .with("created", false)
        .with("restored", restored)
}

/// `truncate(path, 0)`.
fn truncate(path: &str) -> Answer {
    Answer::of(&nix::unistd::truncate(path, 0).map_err(io::Error::from))
}

/// Lists `path`, answering only the number of entries.
fn list(path: &str) -> Answer {
    let entries = std::fs::read_dir(path).map(Iterator::count);
    Answer::of(&entries).with("entries", entries.ok())
}

/// Appends one byte to the file a reference points at (the caller's own file, if the host
/// hard-linked it into the transfer area).
fn modify_input(file: &FileRef) -> Answer {
    let appended = OpenOptions::new()
        .append(true)
        .open(&file.path)
        .and_then(|mut f| f.write_all(b"x"));
    Answer::of(&appended)
}

/// Opens its own binary for writing and closes it at once: nothing is written.
fn write_self_exe() -> Answer {
    Answer::of(&OpenOptions::new().write(true).open("/proc/self/exe"))
}

/// Makes an output that is a symlink to `target`, and returns it as a file reference (for
/// the host to adopt, which it must refuse) or as a plain path (for a test to follow).
fn symlink_out(target: &str, as_ref: bool) -> Result<Answer, PluginError> {
    let (file, path) = plugvisor_worker::files::create_output("link")?;
    drop(file);
    let made = std::fs::remove_file(&path).and_then(|()| std::os::unix::fs::symlink(target, &path));
    let answer = Answer::of(&made);
    Ok(match as_ref {
        true => answer.with("file", FileRef::new(&path, 0).to_value()),
        false => answer.with("path", path.display().to_string()),
    })
}

// ---------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> Answer {
    Answer::of(&TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
}

fn loopback() -> Answer {
    let connected = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| {
        let addr = listener.local_addr()?;
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
    });
    Answer::of(&connected)
}

fn udp(addr: SocketAddr) -> Answer {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sent = UdpSocket::bind(local).and_then(|s| s.send_to(b"x", addr));
    Answer::of(&sent)
}

fn unix(path: &str) -> Answer {
    Answer::of(&UnixStream::connect(path))
}

/// Connects to the abstract Unix socket `\0name`.
fn abstract_socket(name: &str) -> Answer {
    let connected = UnixAddr::from_abstract_name(name.as_bytes())
        .and_then(|addr| UnixStream::connect_addr(&addr));
    Answer::of(&connected)
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Children forked by `fork_bomb`: killed and reaped when dropped, also on unwinding.
struct Children(Vec<pid_t>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill takes no pointers; `pid` is an unreaped child of ours, so the
            // number cannot have been reused by another process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            reap(pid);
        }
    }
}

/// Forks sleeping children until `max` or a failed fork, then kills and reaps them all.
fn fork_bomb(max: u64) -> Answer {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    // Allocated up front: no reallocation between forks.
    let mut children = Children(Vec::with_capacity(max));
    let mut outcome = Ok(());
    while children.0.len() < max {
        match fork_sleeper() {
            Ok(pid) => children.0.push(pid),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let forked = children.0.len();
    drop(children);
    Answer::of(&outcome).with("forked", forked)
}

fn fork_sleeper() -> io::Result<pid_t> {
    // SAFETY: the child only runs `sleeper`, which makes async-signal-safe calls, as a child
    // of a multi-threaded process must.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => sleeper(),
        pid => Ok(pid),
    }
}

/// A fork-bomb child: dies with the thread that forked it, holds none of the worker's
/// descriptors (sockets, pipes), sleeps and exits.
fn sleeper() -> ! {
    // SAFETY: prctl, sleep and _exit are async-signal-safe and pass no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong);
        close_all_but(-1);
        libc::sleep(CHILD_SLEEP_S);
        libc::_exit(0)
    }
}

/// Allocates `mib` MiB, writes every byte (so every page is touched), frees it.
fn alloc(mib: u64) -> Answer {
    // `mib` is at most MAX_MIB, so the product fits a 64-bit usize.
    let bytes = usize::try_from(mib << 20).unwrap_or(usize::MAX);
    let mut block = Vec::<u8>::new();
    let reserved = block
        .try_reserve_exact(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()));
    if reserved.is_ok() {
        block.resize(bytes, 0xA5);
        std::hint::black_box(&block);
    }
    Answer::of(&reserved).with("mib", mib)
}

/// `PTRACE_ATTACH`, then (if attached) wait for the stop and detach.
fn ptrace(pid: pid_t) -> Answer {
    // SAFETY: PTRACE_ATTACH ignores addr and data; no memory is passed.
    let attached = cvt(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) });
    let detached = attached.is_ok() && detach(pid);
    Answer::of(&attached).with("detached", detached)
}

/// Waits for the attach stop of tracee `pid` (passing on any other signal), then detaches.
fn detach(pid: pid_t) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live local the kernel writes to.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if ret < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if ret != pid || !libc::WIFSTOPPED(status) {
            return false;
        }
        let sig = libc::WSTOPSIG(status);
        if sig == libc::SIGSTOP {
            // SAFETY: PTRACE_DETACH with data 0 (no signal) passes no memory.
            return unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) } == 0;
        }
        // SAFETY: PTRACE_CONT with a signal number as data passes no memory.
        if unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0usize, sig as usize) } != 0 {
            return false;
        }
    }
}

/// `process_vm_readv` of one byte at `addr` in `pid`; the byte is thrown away.
fn vm_read(pid: pid_t, addr: usize) -> Answer {
    let mut byte = [0u8; 1];
    let local = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: `local` describes a live 1-byte buffer; `remote` is only dereferenced by the
    // kernel in the other process, where a bad address is reported as EFAULT.
    let read = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as i64);
    Answer::of(&read)
}

/// `kill(pid, sig)`; `pid <= 0` (a process group, or -1: every process) only with `sig` 0,
/// so a positive control run as root can never signal the whole machine.
fn signal(input: &Value) -> Result<Answer, PluginError> {
    let pid = any_pid(input)?;
    let sig = c_int::try_from(number(input, "sig", Some(0), 64)?).unwrap_or(0);
    if pid <= 0 && sig != 0 {
        return Err(invalid(
            "pid: 0 and negative pids (process groups, -1: every process) only with sig 0",
        ));
    }
    // SAFETY: kill takes no pointers.
    let sent = cvt(unsafe { libc::kill(pid, sig) });
    Ok(Answer::of(&sent))
}

/// Reads `/proc/PID/environ`, answering only whether it holds the host's token variable.
fn environ(pid: pid_t) -> Answer {
    let data = std::fs::read(format!("/proc/{pid}/environ"));
    let has_token = data
        .as_ref()
        .ok()
        .map(|d| d.split(|b| *b == 0).any(|e| e.starts_with(TOKEN_VAR)));
    Answer::of(&data).with("has_token_var", has_token)
}

/// The names (never the values) of this process's environment variables.
fn own_env() -> Answer {
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    Answer::success().with("names", names)
}

// ---------------------------------------------------------------------------------------
// Escape: setsid + double fork
// ---------------------------------------------------------------------------------------

/// Leaves an escapee behind: the worker forks a child, which starts a new session, forks the
/// escapee and exits at once (the worker reaps it). The escapee ignores SIGTERM and SIGHUP,
/// starts its own session, takes an exclusive `flock` on `lock` if given (creating the file,
/// mode 0600), sends `pid` and `locked` back through a pipe, closes every other descriptor
/// (so it holds none of the worker's pipes) and sleeps 300 s. Only SIGKILL ends it early.
fn escape(lock: Option<&str>) -> Result<Answer, PluginError> {
    let lock = lock
        .map(CString::new)
        .transpose()
        .map_err(|_| invalid("lock: must not contain a NUL byte"))?;
    let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return Ok(Answer::failure(&e.into())),
    };
    // SAFETY: the child only runs `middle`, which makes async-signal-safe calls.
    let child = unsafe { libc::fork() };
    if child == 0 {
        middle(writer.as_raw_fd(), lock.as_deref());
    }
    let forked = cvt(child);
    drop(writer);
    if let Err(e) = forked {
        return Ok(Answer::failure(&e));
    }
    reap(child);
    Ok(escapee_report(File::from(reader)))
}

/// Reads the escapee's 5-byte message: its pid (native endian) and whether it holds the lock.
fn escapee_report(mut reader: File) -> Answer {
    let mut message = [0u8; 5];
    let read = reader.read_exact(&mut message);
    let [a, b, c, d, locked] = message;
    let pid = read.is_ok().then(|| pid_t::from_ne_bytes([a, b, c, d]));
    Answer::of(&read)
        .with("pid", pid)
        .with("locked", read.is_ok().then_some(locked == 1))
}

/// The escapee's parent: a new session, one more fork, an immediate exit.
fn middle(writer: RawFd, lock: Option<&CStr>) -> ! {
    // SAFETY: setsid, fork and _exit are async-signal-safe and pass no pointers.
    unsafe {
        libc::setsid();
        if libc::fork() == 0 {
            escapee(writer, lock);
        }
        libc::_exit(0)
    }
}

/// The escapee itself (see `escape` below).
fn escapee(writer: RawFd, lock: Option<&CStr>) -> ! {
    // SAFETY: async-signal-safe calls only; `message` is a live local of the given length.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::setsid();
        let held = lock.map_or(-1, hold_lock);
        let [a, b, c, d] = libc::getpid().to_ne_bytes();
        let message = [a, b, c, d, u8::from(held >= 0)];
        libc::write(writer, message.as_ptr().cast(), message.len());
        close_all_but(held);
        let mut left = ESCAPEE_SLEEP_S;
        while left > 0 {
            left = libc::sleep(left);
        }
        libc::_exit(0)
    }
}

/// Opens (creating) `path` and takes an exclusive, non-blocking `flock`; the fd or -1.
fn hold_lock(path: &CStr) -> c_int {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated; open, flock and close are async-signal-safe.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint);
        if fd >= 0 && libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

/// Closes every descriptor except `keep` (none if negative).
fn close_all_but(keep: c_int) {
    let keep = u32::try_from(keep).ok();
    if let Some(below) = keep.filter(|k| *k > 0) {
        close_fds(0, below - 1);
    }
    close_fds(keep.map_or(0, |k| k + 1), u32::MAX);
}

/// `close_range(first, last)`, or closing 0..4096 one by one where that is not available.
fn close_fds(first: u32, last: u32) {
    let (lo, hi) = (c_long::from(first), c_long::from(last));
    // SAFETY: close_range passes no memory; this process uses none of these fds again.
    if unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as c_long) } == 0 {
        return;
    }
    for fd in first..=last.min(4095) {
        // SAFETY: as above; `fd` is at most 4095, so it fits a c_int.
        unsafe { libc::close(fd as c_int) };
    }
}

// ---------------------------------------------------------------------------------------
// Syscall probes
// ---------------------------------------------------------------------------------------

/// Where a probe runs: in the worker, or in a forked child that exits right after the call
/// (for calls that would change the worker if they succeeded).
#[derive(Debug, Clone, Copy)]
enum Place {
    Worker,
    Child,
}

/// A probe makes one raw call with harmless arguments and returns its raw result.
type Probe = fn() -> c_long;

/// How a probe ended.
enum Outcome {
    /// The call returned; errno 0 means success.
    Errno(c_int),
    /// The probe child was killed by this signal (a kill-on-violation filter).
    Killed(c_int),
    /// No child could be forked or waited for.
    NoChild(io::Error),
}

/// Calls the raw syscall `name` with deliberately invalid or harmless arguments (as
/// bubblewrap's `try-syscall.c` does), so even a success unsandboxed as root does no harm,
/// and a permitted call shows up as `EINVAL`/`EFAULT`/`ENOENT`... while a filter shows up as
/// `EPERM`/`ENOSYS` (or a killed process). Answers `syscall`, `errno` (0 on success) and
/// `ok` = the errno is neither `EPERM` nor `ENOSYS`; `error` describes a nonzero errno.
fn syscall(name: &str) -> Result<Answer, PluginError> {
    let (place, probe) = probe(name).ok_or_else(|| {
        invalid(format!(
            "name: unknown probe {name:?}, must be one of {SYSCALLS}"
        ))
    })?;
    let outcome = match place {
        Place::Worker => Outcome::Errno(errno_of(probe())),
        Place::Child => in_child(probe),
    };
    Ok(outcome_answer(outcome).with("syscall", name))
}

fn probe(name: &str) -> Option<(Place, Probe)> {
    Some(match name {
        "unshare_user" => (Place::Child, unshare_user),
        "unshare_net" => (Place::Child, unshare_net),
        "mount" => (Place::Worker, mount),
        "bpf" => (Place::Worker, bpf),
        "perf_event_open" => (Place::Worker, perf_event_open),
        "userfaultfd" => (Place::Worker, userfaultfd),
        "keyctl" => (Place::Worker, keyctl),
        "io_uring_setup" => (Place::Worker, io_uring_setup),
        "kexec_load" => (Place::Worker, kexec_load),
        "init_module" => (Place::Worker, init_module),
        "reboot_probe" => (Place::Worker, reboot_probe),
        "ptrace_traceme" => (Place::Child, ptrace_traceme),
        "chroot" => (Place::Child, chroot),
        "setns" => (Place::Worker, setns),
        _ => return None,
    })
}

/// The errno of a raw result (0 for a success).
fn errno_of(ret: c_long) -> c_int {
    if ret < 0 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// Runs `probe` in a forked child that exits with the errno as its status.
fn in_child(probe: Probe) -> Outcome {
    // SAFETY: the child makes one raw syscall, reads errno and calls _exit: all
    // async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let errno = errno_of(probe());
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(errno.min(255)) }
    }
    if pid < 0 {
        return Outcome::NoChild(io::Error::last_os_error());
    }
    match reap(pid) {
        Some(s) if libc::WIFEXITED(s) => Outcome::Errno(libc::WEXITSTATUS(s)),
        Some(s) if libc::WIFSIGNALED(s) => Outcome::Killed(libc::WTERMSIG(s)),
        _ => Outcome::NoChild(io::Error::other("the probe child could not be waited for")),
    }
}

fn outcome_answer(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Errno(errno) => {
            let ok = errno != libc::EPERM && errno != libc::ENOSYS;
            let error = (errno != 0).then(|| io::Error::from_raw_os_error(errno).to_string());
            Answer::new(ok, json!(error), json!(errno))
        }
        Outcome::Killed(sig) => {
            let error = format!("the probe child was killed by signal {sig}");
            Answer::new(false, json!(error), Value::Null).with("signal", sig)
        }
        Outcome::NoChild(e) => Answer::failure(&e),
    }
}

/// Closes `ret` if it is a descriptor (a probe that unexpectedly succeeded); returns it.
fn close_if_fd(ret: c_long) -> c_long {
    if ret >= 0 {
        // SAFETY: `ret` is a descriptor the probe just opened and nothing else owns.
        unsafe { libc::close(ret as c_int) };
    }
    ret
}

/// `unshare(CLONE_NEWUSER)` in a child: a user namespace that dies with the child at once.
fn unshare_user() -> c_long {
    // SAFETY: unshare passes no memory; it runs in a throwaway child.
    c_long::from(unsafe { libc::unshare(libc::CLONE_NEWUSER) })
}

/// `unshare(CLONE_NEWNET)` in a child: a network namespace that dies with the child at once.
fn unshare_net() -> c_long {
    // SAFETY: as for `unshare_user`.
    c_long::from(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// `mount("/nonexistent/plugvisor-intruder/src", "/nonexistent/plugvisor-intruder/dst",
/// NULL, MS_BIND, NULL)`: neither path exists, so a permitted call fails with ENOENT.
fn mount() -> c_long {
    let src = c"/nonexistent/plugvisor-intruder/src";
    let dst = c"/nonexistent/plugvisor-intruder/dst";
    // SAFETY: both paths are NUL-terminated literals; fstype and data are NULL.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    c_long::from(ret)
}

/// `bpf(cmd = -1 (no such command), attr = NULL, size = 0)`: EINVAL when permitted.
fn bpf() -> c_long {
    // SAFETY: size 0 means the kernel reads nothing through the NULL attr.
    close_if_fd(unsafe { libc::syscall(libc::SYS_bpf, -1 as c_long, 0 as c_long, 0 as c_long) })
}

/// `perf_event_open(attr = NULL, pid = 0, cpu = -1, group_fd = -1, flags = 0)`: the attr is
/// copied first, so EFAULT when permitted.
fn perf_event_open() -> c_long {
    // SAFETY: the kernel faults on the NULL attr; no memory of ours is touched.
    close_if_fd(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            0 as c_long,
            0 as c_long,
            -1 as c_long,
            -1 as c_long,
            0 as c_long,
        )
    })
}

/// `userfaultfd(UFFD_USER_MODE_ONLY | 1 << 30)`: bit 30 is no flag, so EINVAL when
/// permitted (user-mode-only skips the `vm.unprivileged_userfaultfd` EPERM).
fn userfaultfd() -> c_long {
    let flags: c_long = 1 | 1 << 30;
    // SAFETY: no pointers.
    close_if_fd(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })
}

/// `keyctl(0x7fffffff (no such operation), 0, 0, 0, 0)`: EOPNOTSUPP when permitted.
fn keyctl() -> c_long {
    let zero: c_long = 0;
    // SAFETY: an unknown operation reads none of its arguments.
    unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            0x7fff_ffff as c_long,
            zero,
            zero,
            zero,
            zero,
        )
    }
}

/// `io_uring_setup(entries = 0, params = NULL)`: the params are copied first, so EFAULT
/// when permitted.
fn io_uring_setup() -> c_long {
    // SAFETY: the kernel faults on the NULL params; no memory of ours is touched.
    close_if_fd(unsafe { libc::syscall(libc::SYS_io_uring_setup, 0 as c_long, 0 as c_long) })
}

/// `kexec_load(entry = 0, nr_segments = 17 (> KEXEC_SEGMENT_MAX), segments = NULL,
/// flags = 0xffff_8000 (undefined flag bit 15, architecture 0xffff))`: three independent
/// reasons for EINVAL as root, EPERM without CAP_SYS_BOOT; nothing is loaded or unloaded.
fn kexec_load() -> c_long {
    let flags: c_long = 0xffff_8000;
    // SAFETY: the argument checks fail before the NULL segments would be read.
    unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0 as c_long,
            17 as c_long,
            0 as c_long,
            flags,
        )
    }
}

/// `init_module(image = NULL, len = 0, params = "")`: an image shorter than an ELF header is
/// ENOEXEC as root, EPERM without CAP_SYS_MODULE.
fn init_module() -> c_long {
    let params = c"";
    // SAFETY: len 0: the kernel reads nothing through the NULL image; params is a literal.
    unsafe {
        libc::syscall(
            libc::SYS_init_module,
            0 as c_long,
            0 as c_long,
            params.as_ptr(),
        )
    }
}

/// `reboot(magic1 = 0, magic2 = 0, cmd = 0x0bad_c0de, arg = NULL)`: the magic numbers are
/// wrong (and the command unknown), so EINVAL as root, EPERM without CAP_SYS_BOOT. Never the
/// libc wrapper, which would supply the right magic.
fn reboot_probe() -> c_long {
    let zero: c_long = 0;
    // SAFETY: the magic check fails before `arg` would be read.
    unsafe { libc::syscall(libc::SYS_reboot, zero, zero, 0x0bad_c0de as c_long, zero) }
}

/// `ptrace(PTRACE_TRACEME, 0, NULL, NULL)` in a child, which is then traced by the worker
/// only until it exits at once.
fn ptrace_traceme() -> c_long {
    // SAFETY: PTRACE_TRACEME passes no memory.
    unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) }
}

/// `chroot("/nonexistent/plugvisor-intruder")` in a child: ENOENT when permitted.
fn chroot() -> c_long {
    let path = c"/nonexistent/plugvisor-intruder";
    // SAFETY: the path is a NUL-terminated literal.
    c_long::from(unsafe { libc::chroot(path.as_ptr()) })
}

/// `setns(fd = -1, nstype = 0)`: EBADF when permitted.
fn setns() -> c_long {
    // SAFETY: no pointers.
    c_long::from(unsafe { libc::setns(-1, 0) })
}

// ---------------------------------------------------------------------------------------
// About itself
// ---------------------------------------------------------------------------------------

/// `NoNewPrivs`, `Seccomp`, `CapEff`, `Uid` from `/proc/self/status` (whitespace collapsed
/// to single spaces, null if absent), the first 500 characters of `/proc/self/cgroup` and
/// the link of `/proc/self/ns/net` (null where unreadable).
fn status() -> Answer {
    let status = std::fs::read_to_string("/proc/self/status");
    let Ok(text) = &status else {
        return Answer::of(&status);
    };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .map(|c| c.chars().take(500).collect::<String>());
    let net_ns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|link| link.to_string_lossy().into_owned());
    Answer::success()
        .with("no_new_privs", status_field(text, "NoNewPrivs"))
        .with("seccomp", status_field(text, "Seccomp"))
        .with("cap_eff", status_field(text, "CapEff"))
        .with("uid", status_field(text, "Uid"))
        .with("cgroup", cgroup)
        .with("net_ns", net_ns)
}

fn status_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Its own open descriptors 3..4096 with their link targets.
fn fds() -> Answer {
    let listed = std::fs::read_dir("/proc/self/fd").map(|dir| {
        dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|fd| (3..4096).contains(fd))
            .collect::<Vec<_>>()
    });
    // The listing's own descriptor is closed by now: its readlink fails and it drops out.
    let targets: Vec<Value> = listed
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(json!({"fd": fd, "target": target.to_string_lossy()}))
        })
        .collect();
    Answer::of(&listed)
        .with("count", targets.len())
        .with("targets", targets)
}

/// `ioctl(fd, TIOCSTI, "x")` (fd 0 by default); with `high_bits` the request number has bit
/// 32 set, which the kernel truncates away but a 64-bit seccomp comparison may not.
fn tiocsti(input: &Value) -> Result<Answer, PluginError> {
    let fd = c_long::try_from(number(input, "fd", Some(0), i32::MAX as u64)?).unwrap_or(0);
    let high: c_ulong = if flag(input, "high_bits")? {
        1 << 32
    } else {
        0
    };
    let request = libc::TIOCSTI as c_ulong | high;
    let byte = b'x';
    let ptr: *const u8 = &byte;
    // SAFETY: TIOCSTI reads one byte through `ptr`, which points at a live local.
    let pushed = cvt(unsafe { libc::syscall(libc::SYS_ioctl, fd, request, ptr) });
    Ok(Answer::of(&pushed))
}
