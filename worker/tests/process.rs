//! `run` in a real process: usage errors, handshake and the stdout rule, and every shutdown
//! trigger (SIGTERM, stdin EOF, HTTP, the watchdog).
//!
//! This test has `harness = false`: its `main` either runs the tests or, when started by one
//! of them with `NOISY_WORKER_CHILD=1`, *is* the worker (`plugvisor_worker::run(Noisy)`), so
//! the tests need no extra binary. The `Noisy` plugin prints to stdout from plugin code (which
//! `run` has pointed at stderr) and, after `{"stall_cleanup": true}`, blocks its thread in
//! cleanup, which only the shutdown watchdog can end.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use futures_util::future::BoxFuture;
use plugvisor_proto::wire::{Handshake, Transport};
use plugvisor_proto::{json, Plugin, PluginError, Value};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const CHILD_ENV: &str = "NOISY_WORKER_CHILD";

#[derive(Default)]
struct Noisy {
    stall_cleanup: AtomicBool,
}

impl Plugin for Noisy {
    fn name(&self) -> &str {
        "noisy"
    }

    fn version(&self) -> &str {
        "0.1.0"
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        println!("noise on stdout from plugin code");
        if input.get("stall_cleanup").is_some() {
            self.stall_cleanup.store(true, Ordering::SeqCst);
        }
        Ok(json!({ "echo": input }))
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        if self.stall_cleanup.load(Ordering::SeqCst) {
            // Blocks the runtime thread on purpose: no timeout inside the process can help.
            std::thread::sleep(Duration::from_secs(3600));
        }
        Ok(())
    }
}

type Test = fn() -> BoxFuture<'static, ()>;

const TESTS: [(&str, Test); 9] = [
    (
        "without_a_listen_address_it_explains_itself_and_exits_2",
        || Box::pin(without_a_listen_address_it_explains_itself_and_exits_2()),
    ),
    ("a_missing_or_empty_token_is_a_usage_error", || {
        Box::pin(a_missing_or_empty_token_is_a_usage_error())
    }),
    ("start_up_failures_exit_1_without_a_handshake", || {
        Box::pin(start_up_failures_exit_1_without_a_handshake())
    }),
    (
        "handshake_then_stdout_stays_silent_and_sigterm_stops_cleanly",
        || Box::pin(handshake_then_stdout_stays_silent_and_sigterm_stops_cleanly()),
    ),
    ("stdin_eof_stops_a_watching_worker", || {
        Box::pin(stdin_eof_stops_a_watching_worker())
    }),
    ("stdin_eof_stops_a_worker_whose_stdin_is_a_socket", || {
        Box::pin(stdin_eof_stops_a_worker_whose_stdin_is_a_socket())
    }),
    ("tcp_port_zero_and_shutdown_over_http", || {
        Box::pin(tcp_port_zero_and_shutdown_over_http())
    }),
    ("a_stalled_cleanup_is_ended_by_the_watchdog", || {
        Box::pin(a_stalled_cleanup_is_ended_by_the_watchdog())
    }),
    (
        "the_log_filter_is_applied_and_an_unusable_one_reported",
        || Box::pin(the_log_filter_is_applied_and_an_unusable_one_reported()),
    ),
];

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        plugvisor_worker::run(Noisy::default())
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let selected = TESTS
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())));
    let mut count = 0;
    for (name, test) in selected {
        println!("test {name} ...");
        runtime.block_on(test());
        println!("test {name} ... ok");
        count += 1;
    }
    println!("test result: ok. {count} passed");
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(args)
        .env(CHILD_ENV, "1")
        .env_remove("PLUGVISOR_TOKEN")
        .env_remove("PLUGVISOR_WATCH_STDIN")
        .env_remove("PLUGVISOR_TRANSFER_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn wait(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the worker did not exit")
        .unwrap()
}

async fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .await
        .unwrap();
    text
}

/// Runs to completion and returns (exit code, stderr).
async fn run_to_end(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    let status = wait(&mut child).await;
    (status.code(), stderr_of(&mut child).await)
}

/// A started worker: the child and its stdout after the handshake line.
struct Started {
    child: Child,
    handshake: Handshake,
    stdout: BufReader<ChildStdout>,
}

async fn start(mut cmd: Command) -> Started {
    cmd.env("PLUGVISOR_TOKEN", common::TOKEN);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .expect("no handshake")
        .unwrap();
    let handshake = Handshake::parse(&line).unwrap();
    Started {
        child,
        handshake,
        stdout,
    }
}

fn unix_path(handshake: &Handshake) -> PathBuf {
    match &handshake.transport {
        Transport::Unix(path) => path.clone(),
        other => panic!("not unix: {other:?}"),
    }
}

async fn execute(socket: &Path, body: &str) -> String {
    let request = format!(
        "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        common::TOKEN,
        body.len()
    );
    common::raw(socket, request.as_bytes()).await
}

async fn without_a_listen_address_it_explains_itself_and_exits_2() {
    let (code, stderr) = run_to_end(command(&[])).await;
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(" --listen tcp://127.0.0.1:9000 --token-file TOKEN"),
        "{stderr}"
    );
}

async fn a_missing_or_empty_token_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let (code, stderr) = run_to_end(command(&["--socket", socket.to_str().unwrap()])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("PLUGVISOR_TOKEN"), "{stderr}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, " \n").unwrap();
    let args = [
        "--socket",
        socket.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let (code, stderr) = run_to_end(command(&args)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");
    assert!(!socket.exists());
}

async fn start_up_failures_exit_1_without_a_handshake() {
    let mut cmd = command(&["--listen", "unix:/nonexistent-dir/w.sock"]);
    cmd.env("PLUGVISOR_TOKEN", common::TOKEN);
    let (code, stderr) = run_to_end(cmd).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on unix:/nonexistent-dir/w.sock"),
        "{stderr}"
    );
}

/// Starts a worker with `PLUGVISOR_LOG=filter`, makes one call, stops it with SIGTERM and
/// returns its stderr.
async fn log_of_one_call(filter: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let mut cmd = command(&["--socket", socket.to_str().unwrap()]);
    cmd.env("PLUGVISOR_LOG", filter);
    let mut w = start(cmd).await;
    let answer = execute(&socket, r#"{"input": "hi"}"#).await;
    assert!(answer.ends_with(r#"{"output":{"echo":"hi"}}"#), "{answer}");
    let pid = nix::unistd::Pid::from_raw(w.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(wait(&mut w.child).await.code(), Some(0));
    stderr_of(&mut w.child).await
}

async fn the_log_filter_is_applied_and_an_unusable_one_reported() {
    // `info` shows the start-up line; `warn`, and `info` for other targets only, hide it.
    let info = log_of_one_call("info").await;
    assert!(info.contains(" listening "), "{info}");
    for quiet in ["warn", "warn,hyper=info"] {
        let log = log_of_one_call(quiet).await;
        assert!(!log.contains(" listening "), "{quiet}: {log}");
    }
    let targeted = log_of_one_call("warn,plugvisor_worker=info").await;
    assert!(targeted.contains(" listening "), "{targeted}");
    // EnvFilter's span filter: named as the problem, and the worker logs at info.
    let span = log_of_one_call("plugvisor_worker[call]=debug").await;
    assert!(
        span.contains(
            r#"PLUGVISOR_LOG="plugvisor_worker[call]=debug" is not used: span and field filters"#
        ),
        "{span}"
    );
    assert!(span.contains(" listening "), "{span}");
    let bad = log_of_one_call("plugvisor_worker=loud").await;
    assert!(bad.contains("is not used"), "{bad}");
}

async fn handshake_then_stdout_stays_silent_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let mut w = start(command(&["--socket", socket.to_str().unwrap()])).await;
    assert_eq!(unix_path(&w.handshake), socket);
    let answer = execute(&socket, r#"{"input": "hi"}"#).await;
    assert!(answer.ends_with(r#"{"output":{"echo":"hi"}}"#), "{answer}");
    let pid = nix::unistd::Pid::from_raw(w.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(wait(&mut w.child).await.code(), Some(0));
    let mut rest = String::new();
    w.stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "nothing may follow the handshake on stdout");
    let stderr = stderr_of(&mut w.child).await;
    assert!(
        stderr.contains("noise on stdout from plugin code"),
        "{stderr}"
    );
    assert!(!socket.exists());
}

async fn stdin_eof_stops_a_watching_worker() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let mut cmd = command(&["--listen", &format!("unix:{}", socket.display())]);
    cmd.env("PLUGVISOR_WATCH_STDIN", "1").stdin(Stdio::piped());
    let mut w = start(cmd).await;
    // Bytes on stdin are read and dropped: only EOF stops the worker.
    let mut stdin = w.child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &[b'x'; 5000])
        .await
        .unwrap();
    let answer = execute(&socket, r#"{"input": 1}"#).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The pipe is watched without changing fd 0's flags, which plugin children inherit.
    let pid = w.child.id().unwrap();
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/0")).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap();
    let flags = i32::from_str_radix(flags.trim(), 8).unwrap();
    assert_eq!(flags & nix::libc::O_NONBLOCK, 0, "{fdinfo}");
    drop(stdin);
    assert_eq!(wait(&mut w.child).await.code(), Some(0));
    assert!(!socket.exists());
    assert!(stderr_of(&mut w.child).await.contains("stdin closed"));
}

/// A stdin that is not a pipe (here a socket) is watched from a thread instead.
async fn stdin_eof_stops_a_worker_whose_stdin_is_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = command(&["--socket", socket.to_str().unwrap()]);
    cmd.env("PLUGVISOR_WATCH_STDIN", "1")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
    let mut w = start(cmd).await;
    let answer = execute(&socket, r#"{"input": 1}"#).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(ours);
    assert_eq!(wait(&mut w.child).await.code(), Some(0));
    assert!(!socket.exists());
    assert!(stderr_of(&mut w.child).await.contains("stdin closed"));
}

async fn tcp_port_zero_and_shutdown_over_http() {
    let mut w = start(command(&["--listen", "tcp://127.0.0.1:0"])).await;
    let Transport::Tcp(addr) = &w.handshake.transport else {
        panic!("{:?}", w.handshake)
    };
    assert!(!addr.ends_with(":0"), "{addr}");
    let mut conn = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    let request = format!(
        "POST /v1/shutdown HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\n\r\n",
        common::TOKEN
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"stopping"}"#), "{answer}");
    assert_eq!(wait(&mut w.child).await.code(), Some(0));
}

async fn a_stalled_cleanup_is_ended_by_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let mut w = start(command(&["--socket", socket.to_str().unwrap()])).await;
    let answer = execute(&socket, r#"{"input": {"stall_cleanup": true}}"#).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let pid = nix::unistd::Pid::from_raw(w.child.id().unwrap() as i32);
    let asked = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait(&mut w.child).await;
    assert_eq!(status.code(), Some(1));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let stderr = stderr_of(&mut w.child).await;
    assert!(stderr.contains("graceful shutdown stalled"), "{stderr}");
    assert!(!socket.exists());
}
