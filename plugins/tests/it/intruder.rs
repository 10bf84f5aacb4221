//! The intruder's positive controls: unsandboxed, each attempt succeeds (or fails only for an
//! ordinary reason), reports without returning what it read, and leaves nothing behind.
//! Most tests call the plugin in-process; one runs the `intruder-worker` binary.

use crate::workers::{Worker, TOKEN};
use plugvisor_plugins::intruder::Intruder;
use plugvisor_proto::{json, FileRef, Plugin, PluginError, Value};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Serializes the tests that create processes, so "no child left" checks see only their own.
static PROCESSES: Mutex<()> = Mutex::new(());

fn processes() -> MutexGuard<'static, ()> {
    PROCESSES.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn try_call(input: Value) -> Result<Value, PluginError> {
    runtime().block_on(Intruder.execute(input))
}

/// Calls the plugin and checks the common answer shape.
fn call(input: Value) -> Value {
    let out = try_call(input.clone()).unwrap();
    assert!(out["ok"].is_boolean(), "{input} -> {out}");
    assert!(
        out["error"].is_null() || out["error"].is_string(),
        "{input} -> {out}"
    );
    out
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

/// State letter and parent pid of `pid`, or `None` once it is gone.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Every process whose parent is this test process (zombies included) and that is a fork of
/// it: the worker binaries the other tests of this binary start, side by side, are not.
fn own_children() -> Vec<i32> {
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(_, ppid)| ppid == own_pid()))
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            exe.is_none() || exe == own_exe
        })
        .collect()
}

/// Waits up to 10 s until `pid` is gone or a zombie (dead, waiting for its adopter's reap).
fn wait_dead(pid: i32) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        match stat(pid) {
            None | Some(('Z' | 'X', _)) => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// SIGKILLs `pid` when dropped, so a failed assertion leaves no escapee behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A `sleep 30` child, killed and reaped when dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null());
        cmd.envs(env.iter().copied());
        let sleeper = Self(cmd.spawn().unwrap());
        // spawn returns once exec has begun, before the kernel has placed the new
        // environment: until then /proc/PID/environ reads empty.
        let environ = format!("/proc/{}/environ", sleeper.pid());
        let start = Instant::now();
        while std::fs::read(&environ).unwrap().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sleep did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sleeper
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_invalid(input: Value) {
    match try_call(input.clone()) {
        Err(PluginError::InvalidInput(msg)) => assert!(!msg.is_empty()),
        other => panic!("{input}: expected invalid input, got {other:?}"),
    }
}

#[test]
fn read_reports_success_without_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "top-secret-content").unwrap();
    let out = call(json!({"op": "read", "path": file}));
    assert_eq!(out, json!({"ok": true, "error": null, "errno": 0}));
    let out = call(json!({"op": "read", "path": dir.path().join("missing")}));
    assert_eq!((&out["ok"], &out["errno"]), (&json!(false), &json!(2)));
}

#[test]
fn write_creates_and_removes_or_appends_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new");
    let out = call(json!({"op": "write", "path": new}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(
        (&out["created"], &out["removed"]),
        (&json!(true), &json!(true))
    );
    assert!(!new.exists());
    let old = dir.path().join("old");
    std::fs::write(&old, "hello").unwrap();
    let out = call(json!({"op": "write", "path": old}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(
        (&out["created"], &out["restored"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "hello");
    let out = call(json!({"op": "write", "path": dir.path().join("no/such/dir")}));
    assert_eq!((&out["ok"], &out["errno"]), (&json!(false), &json!(2)));
    let out = call(json!({"op": "write", "path": dir.path()}));
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn truncate_and_list_report_counts_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "data").unwrap();
    std::fs::write(dir.path().join("g"), "").unwrap();
    let out = call(json!({"op": "truncate", "path": file}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    let out = call(json!({"op": "truncate", "path": dir.path().join("missing")}));
    assert_eq!(out["ok"], false);
    let out = call(json!({"op": "list", "path": dir.path()}));
    assert_eq!(
        out,
        json!({"ok": true, "error": null, "errno": 0, "entries": 2})
    );
    let out = call(json!({"op": "list", "path": dir.path().join("missing")}));
    assert_eq!((&out["ok"], &out["entries"]), (&json!(false), &json!(null)));
}

#[test]
fn modify_input_appends_to_the_referenced_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    std::fs::write(&path, "abc").unwrap();
    let file = FileRef::new(&path, 3).to_value();
    let out = call(json!({"op": "modify_input", "file": file}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "abcx");
    assert_invalid(json!({"op": "modify_input", "file": {"$file": {"path": 1}}}));
    assert_invalid(json!({"op": "modify_input", "file": "/etc/passwd"}));
}

#[test]
fn tcp_connects_to_a_listener_and_not_to_a_closed_port() {
    // A child forked meanwhile by another test would inherit the listener and keep it open.
    let _guard = processes();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = call(json!({"op": "connect", "addr": addr}));
    assert_eq!(out["ok"], true, "{out}");
    drop(listener);
    // A worker another test of this binary forks in the meantime holds a copy of the listener
    // until its exec (close-on-exec): the port is closed once that copy is gone.
    let mut out = call(json!({"op": "connect", "addr": addr}));
    for _ in 0..40 {
        // Refused: closed. Connected, or reset by the inherited copy closing: not yet.
        if out["errno"] == json!(libc::ECONNREFUSED) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        out = call(json!({"op": "connect", "addr": addr}));
    }
    assert_eq!(
        (&out["ok"], &out["errno"]),
        (&json!(false), &json!(libc::ECONNREFUSED))
    );
}

#[test]
fn udp_sends_a_datagram() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let out = call(json!({"op": "udp", "addr": addr}));
    assert_eq!(out["ok"], true, "{out}");
    let mut buf = [0u8; 4];
    assert_eq!(socket.recv(&mut buf).unwrap(), 1);
}

#[test]
fn unix_sockets_by_path_and_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let out = call(json!({"op": "unix", "path": path}));
    assert_eq!(out["ok"], true, "{out}");
    let out = call(json!({"op": "unix", "path": dir.path().join("none.sock")}));
    assert_eq!(out["ok"], false);
    let name = format!("plugvisor-intruder-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _abstract = UnixListener::bind_addr(&addr).unwrap();
    let out = call(json!({"op": "abstract", "name": name}));
    assert_eq!(out["ok"], true, "{out}");
    let out = call(json!({"op": "abstract", "name": format!("{name}-none")}));
    assert_eq!(out["ok"], false);
}

#[test]
fn fork_bomb_forks_max_children_and_reaps_them_all() {
    let _guard = processes();
    let out = call(json!({"op": "fork_bomb", "max": 20}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["forked"], 20);
    assert_eq!(own_children(), Vec::<i32>::new());
}

#[test]
fn escape_leaves_an_escapee_that_only_sigkill_ends() {
    let _guard = processes();
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    let out = call(json!({"op": "escape", "lock": lock}));
    assert_eq!(
        (&out["ok"], &out["locked"]),
        (&json!(true), &json!(true)),
        "{out}"
    );
    let pid = i32::try_from(out["pid"].as_i64().unwrap()).unwrap();
    let _kill = KillOnDrop(pid);
    let (state, ppid) = stat(pid).expect("the escapee is not running");
    assert!(state != 'Z' && ppid != own_pid(), "{state} {ppid}");
    assert_eq!(
        own_children(),
        Vec::<i32>::new(),
        "the middle child was not reaped"
    );
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_eq!(sid.as_raw(), pid, "the escapee leads its own session");
    let held = std::fs::File::open(&lock).unwrap();
    let try_lock = || {
        nix::fcntl::Flock::lock(
            held.try_clone().unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
    };
    assert!(try_lock().is_err(), "the escapee does not hold the lock");
    send(pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(stat(pid).is_some_and(|(s, _)| s != 'Z'), "SIGTERM ended it");
    send(pid, libc::SIGKILL);
    assert!(wait_dead(pid), "the escapee survived SIGKILL");
    assert!(try_lock().is_ok(), "the lock outlived the escapee");
}

fn send(pid: i32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn ptrace_attaches_and_detaches() {
    let _guard = processes();
    let sleeper = Sleeper::start(&[]);
    let out = call(json!({"op": "ptrace", "pid": sleeper.pid()}));
    assert_eq!(
        (&out["ok"], &out["detached"]),
        (&json!(true), &json!(true)),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(50));
    let (state, _) = stat(sleeper.pid()).unwrap();
    assert_eq!(state, 'S', "the tracee was left stopped");
}

#[test]
fn environ_reports_the_token_variable_but_never_its_value() {
    let _guard = processes();
    let secret = "s3cret-intruder-value";
    let sleeper = Sleeper::start(&[("PLUGVISOR_API_TOKEN", secret)]);
    let out = call(json!({"op": "environ", "pid": sleeper.pid()}));
    assert_eq!(
        (&out["ok"], &out["has_token_var"]),
        (&json!(true), &json!(true))
    );
    assert!(!out.to_string().contains(secret));
    let plain = Sleeper::start(&[]);
    let out = call(json!({"op": "environ", "pid": plain.pid()}));
    assert_eq!(
        out["has_token_var"],
        std::env::var_os("PLUGVISOR_API_TOKEN").is_some()
    );
    let out = call(json!({"op": "own_env"}));
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(out["names"], json!(names));
}

#[test]
fn signal_probes_and_kills() {
    let _guard = processes();
    let out = call(json!({"op": "signal", "pid": own_pid()}));
    assert_eq!(out["ok"], true, "{out}");
    let mut sleeper = Sleeper::start(&[]);
    let out = call(json!({"op": "signal", "pid": sleeper.pid(), "sig": 9}));
    assert_eq!(out["ok"], true, "{out}");
    let status = sleeper.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // Refused before any kill(): a broken check would only hit a nonexistent group.
    assert_invalid(json!({"op": "signal", "pid": -2_147_483_647, "sig": 9}));
    assert_invalid(json!({"op": "signal", "pid": own_pid(), "sig": 65}));
}

static PROBED: u8 = 7;

#[test]
fn process_vm_readv_reads_its_own_memory_and_reports_errno() {
    let addr = std::ptr::addr_of!(PROBED) as usize;
    let out = call(json!({"op": "process_vm_readv", "pid": own_pid(), "addr": addr}));
    assert_eq!(out, json!({"ok": true, "error": null, "errno": 0}));
    let hex = format!("{addr:#x}");
    let out = call(json!({"op": "process_vm_readv", "pid": own_pid(), "addr": hex}));
    assert_eq!(out["ok"], true, "{out}");
    let out = call(json!({"op": "process_vm_readv", "pid": own_pid()}));
    assert_eq!(
        (&out["ok"], &out["errno"]),
        (&json!(false), &json!(libc::EFAULT))
    );
}

#[test]
fn alloc_touches_and_frees() {
    let out = call(json!({"op": "alloc", "mib": 16}));
    assert_eq!(
        out,
        json!({"ok": true, "error": null, "errno": 0, "mib": 16})
    );
}

#[test]
fn syscall_probes_answer_an_errno_and_do_no_harm() {
    let _guard = processes();
    let names = [
        "unshare_user",
        "unshare_net",
        "mount",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "io_uring_setup",
        "kexec_load",
        "init_module",
        "reboot_probe",
        "ptrace_traceme",
        "chroot",
        "setns",
    ];
    for name in names {
        let out = call(json!({"op": "syscall", "name": name}));
        eprintln!("{name}: {out}");
        assert_eq!(out["syscall"], name);
        let errno = out["errno"].as_i64().unwrap_or_else(|| panic!("{out}"));
        let refused = errno == i64::from(libc::EPERM) || errno == i64::from(libc::ENOSYS);
        assert_eq!(out["ok"], !refused, "{out}");
        assert_eq!(out["error"].is_null(), errno == 0, "{out}");
    }
    let errno = |name: &str| call(json!({"op": "syscall", "name": name}))["errno"].clone();
    assert_eq!(errno("mount"), libc::ENOENT);
    assert_eq!(errno("chroot"), libc::ENOENT);
    assert_eq!(errno("setns"), libc::EBADF);
    assert_eq!(own_children(), Vec::<i32>::new());
}

#[test]
fn status_fds_tiocsti_and_self_exe_report_about_itself() {
    let out = call(json!({"op": "status"}));
    assert_eq!(out["ok"], true, "{out}");
    for key in ["no_new_privs", "seccomp", "cap_eff", "cgroup"] {
        assert!(out[key].is_string(), "{key}: {out}");
    }
    let uids = out["uid"].as_str().unwrap().split(' ').count();
    assert_eq!(uids, 4, "{out}");
    assert!(
        out["net_ns"].as_str().unwrap().starts_with("net:["),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap().join("held");
    let held = std::fs::File::create(&path).unwrap();
    let out = call(json!({"op": "fds"}));
    let targets = out["targets"].as_array().unwrap();
    assert_eq!(out["count"], targets.len());
    let fd = held.as_raw_fd();
    assert!(
        targets.contains(&json!({"fd": fd, "target": path})),
        "{out}"
    );

    // On a regular file, never on the terminal the tests may run in.
    for high_bits in [false, true] {
        let out = call(json!({"op": "tiocsti", "fd": fd, "high_bits": high_bits}));
        assert_eq!(
            (&out["ok"], &out["errno"]),
            (&json!(false), &json!(libc::ENOTTY))
        );
    }
    let out = call(json!({"op": "write_self_exe"}));
    eprintln!("write_self_exe: {out}");
    assert!(out["errno"].is_i64(), "{out}");
}

#[test]
fn bad_input_is_invalid_input_never_a_panic() {
    for input in [
        json!(42),
        json!({}),
        json!({"op": 1}),
        json!({"op": "nope"}),
        json!({"op": "read"}),
        json!({"op": "read", "path": "a\0b"}),
        json!({"op": "connect", "addr": "localhost"}),
        json!({"op": "udp", "addr": 80}),
        json!({"op": "abstract"}),
        json!({"op": "ptrace", "pid": -1}),
        json!({"op": "ptrace", "pid": "1"}),
        json!({"op": "environ", "pid": 1u64 << 40}),
        json!({"op": "fork_bomb", "max": -1}),
        json!({"op": "fork_bomb", "max": "20"}),
        json!({"op": "alloc"}),
        json!({"op": "alloc", "mib": 1u64 << 40}),
        json!({"op": "syscall", "name": "reboot"}),
        json!({"op": "syscall"}),
        json!({"op": "tiocsti", "high_bits": "yes"}),
        json!({"op": "tiocsti", "fd": -1}),
        json!({"op": "process_vm_readv", "pid": 1, "addr": "zz"}),
        json!({"op": "escape", "lock": 5}),
    ] {
        assert_invalid(input);
    }
}

/// The worker binary serves the same ops; its answers carry no values of its environment.
#[tokio::test]
async fn the_worker_binary_answers_over_its_socket() {
    let w = Worker::start(env!("CARGO_BIN_EXE_intruder-worker")).await;
    let execute = |input: Value| w.post_json("/v1/execute", json!({ "input": input }));
    let (_, out) = execute(json!({"op": "own_env"})).await;
    let names = out["output"]["names"].as_array().unwrap();
    assert!(names.contains(&json!("PLUGVISOR_LOG")), "{out}");
    // The worker runtime takes its token out of the environment before serving.
    assert!(!names.contains(&json!("PLUGVISOR_TOKEN")), "{out}");
    assert!(!out.to_string().contains(TOKEN), "{out}");
    let (_, out) = execute(json!({"op": "status"})).await;
    assert_eq!(out["output"]["ok"], true, "{out}");
    let (status, out) = execute(json!({"op": "nope"})).await;
    assert_eq!(
        (status, &out["error"]["kind"]),
        (400, &json!("invalid_input")),
        "{out}"
    );
    w.stop().await;
}
