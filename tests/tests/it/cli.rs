//! The `plugvisor` command as a user runs it, and a host process killed with SIGKILL.

use plugvisor_tests::{bin, eventually, files_under, proc_entries, process_state, serially};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn plugvisor(args: &[&str], base: &std::path::Path) -> Output {
    Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", base.join("run"))
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout {text}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn call_prints_the_result_and_config_applies_first() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let out = plugvisor(
            &[
                "call",
                "echo",
                r#"{"x": "hi"}"#,
                "--config",
                r#"{"mode": "upper"}"#,
            ],
            base.path(),
        );
        assert_eq!(stdout_json(&out), json!({"x": "HI"}));
    })
}

#[test]
fn stream_prints_one_line_per_chunk() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let out = plugvisor(&["stream", "echo", r#""a b c""#], base.path());
        assert!(out.status.success());
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![json!("a"), json!("b"), json!("c")]);
    })
}

#[test]
fn file_flag_passes_a_file_ref_and_outputs_land_in_out_dir() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data.txt");
        std::fs::write(&data, b"abc").unwrap();
        let file_arg = format!("file={}", data.display());
        let out = plugvisor(
            &["call", "files", r#"{"op": "sha256"}"#, "--file", &file_arg],
            base.path(),
        );
        assert_eq!(
            stdout_json(&out)["sha256"],
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let out_dir = base.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let out_arg = out_dir.to_string_lossy().into_owned();
        let out = plugvisor(
            &[
                "call",
                "files",
                r#"{"op": "gzip"}"#,
                "--file",
                &file_arg,
                "--out-dir",
                &out_arg,
            ],
            base.path(),
        );
        let path = stdout_json(&out)["file"]["$file"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(path.starts_with(&out_arg), "{path}");
        assert!(std::path::Path::new(&path).is_file());
    })
}

#[test]
fn errors_go_to_stderr_with_a_non_zero_exit() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        for (args, needle) in [
            (vec!["call", "nosuch", "{}"], "unknown plugin"),
            (vec!["call", "echo", "{bad"], "not valid JSON"),
            (
                vec!["call", "echo", "{}", "--config", r#"{"mode": 3}"#],
                "invalid config",
            ),
            (vec!["call", "files", r#"{"op": "x"}"#], "invalid input"),
        ] {
            let out = plugvisor(&args, base.path());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    })
}

#[test]
fn a_host_killed_with_sigkill_leaves_no_worker_alive() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let (mut host, first) = streaming_host(
            &[
                "stream",
                "ticker",
                r#"{"n": 1000000000, "bytes": 8, "interval_ms": 20}"#,
            ],
            base.path(),
        );
        assert!(!first.is_empty(), "the stream started");
        let workers = children_of(host.id());
        assert_eq!(
            workers.len(),
            1,
            "one worker: {workers:?}; the host is {:?} after printing {first:?}",
            process_state(host.id())
        );
        host.kill().unwrap();
        host.wait().unwrap();
        let gone = eventually(Duration::from_secs(2), || {
            workers
                .iter()
                .all(|&p| matches!(process_state(p), None | Some('Z')))
        })
        .await;
        assert!(gone, "worker {workers:?} outlived its host");
        // The dead host could not clean up; the next host that starts sweeps its directory.
        let host_dirs = || -> Vec<_> {
            files_under(&base.path().join("run"))
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("h-"))
                })
                .collect()
        };
        assert_eq!(host_dirs().len(), 1, "the killed host's directory is there");
        let next = plugvisor(&["call", "echo", "1"], base.path());
        assert!(next.status.success());
        let left = host_dirs();
        let holders: Vec<_> = left.iter().map(|d| holders_of(&d.join(".lock"))).collect();
        assert!(left.is_empty(), "{left:?}, their locks open in {holders:?}");
    })
}

/// The processes (pid and name) that have `path` open, to explain a lock still held.
fn holders_of(path: &std::path::Path) -> Vec<(u32, String)> {
    proc_entries()
        .into_iter()
        .filter(|p| {
            std::fs::read_dir(format!("/proc/{}/fd", p.pid))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
        })
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).unwrap_or_default();
            (p.pid, comm.trim().to_owned())
        })
        .collect()
}

/// Starts `plugvisor ARGS` as a host process and returns it with its first stdout line.
fn streaming_host(args: &[&str], base: &std::path::Path) -> (std::process::Child, String) {
    let mut host = Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", base.join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    (host, first)
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    proc_entries()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

#[test]
fn a_host_killed_with_sigkill_takes_the_workers_grandchildren_too() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let (mut host, first) = streaming_host(
            &["stream", "chaos", r#"{"fault": "stream_fork"}"#],
            base.path(),
        );
        let line: Value = serde_json::from_str(first.trim()).unwrap();
        let grandchild = line["grandchild"].as_u64().unwrap() as u32;
        let workers = children_of(host.id());
        assert!(process_state(grandchild).is_some());
        host.kill().unwrap();
        host.wait().unwrap();
        let gone = eventually(Duration::from_secs(2), || {
            workers
                .iter()
                .chain([&grandchild])
                .all(|&p| matches!(process_state(p), None | Some('Z')))
        })
        .await;
        assert!(
            gone,
            "worker {workers:?} or grandchild {grandchild} outlived the host"
        );
    })
}

/// `plugvisor serve` on a directory holding `manifests`, with its URL (from its first stderr
/// line).
fn serve(manifests: &std::path::Path, run: &std::path::Path) -> (std::process::Child, String) {
    let mut server = Command::new(bin("plugvisor"))
        .args(["serve", "--plugins", manifests.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("PLUGVISOR_RUNTIME_DIR", run)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://"));
    let url = url
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (server, url)
}

#[test]
fn a_sandboxed_workers_escapee_dies_with_a_host_killed_by_sigkill() {
    serially(async {
        let (run, manifests, locks) = (tempdir(), tempdir(), tempdir());
        let command = bin("intruder-worker");
        let write = |name: &str, extra: &str| {
            let text = format!(
                "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{extra}\n",
                command.display()
            );
            std::fs::write(manifests.path().join(format!("{name}.toml")), text).unwrap();
        };
        write("free", "");
        let lock_dir = locks.path().display();
        write("boxed", &format!("[sandbox]\nwrite = [\"{lock_dir}\"]"));
        let (mut server, url) = serve(manifests.path(), run.path());
        let escape = |name: &str| {
            let lock = locks.path().join(format!("{name}.lock"));
            let input = json!({"op": "escape", "lock": lock}).to_string();
            let out = plugvisor(&["call", name, &input, "--server", &url], run.path());
            let answer = stdout_json(&out);
            assert_eq!(answer["locked"], json!(true), "{name}: {answer}");
            (lock, answer["pid"].as_i64().unwrap() as i32)
        };
        let (free_lock, free_pid) = escape("free");
        let (boxed_lock, _) = escape("boxed");
        // `plugvisor list` shows what each sandbox really enforces.
        let list = plugvisor(&["list", "--server", &url], run.path());
        let listed = String::from_utf8_lossy(&list.stdout).into_owned();
        let row = |name: &str| {
            let found = listed.lines().find(|l| l.starts_with(name));
            found
                .unwrap_or_else(|| panic!("{name} in {listed}"))
                .to_owned()
        };
        assert!(
            row("boxed").ends_with("landlock,net=none,seccomp,tree=cgroup"),
            "{listed}"
        );
        assert!(row("free").ends_with(" -"), "{listed}");
        let server_pid = server.id();
        server.kill().unwrap();
        server.wait().unwrap();
        let held = |lock: &std::path::Path| std::fs::File::open(lock).unwrap().try_lock().is_err();
        let released = eventually(Duration::from_secs(5), || !held(&boxed_lock)).await;
        assert!(released, "the sandboxed escapee outlived its host");
        // The positive control: the unsandboxed escapee is still there; the test ends it.
        assert!(
            held(&free_lock),
            "the unsandboxed escapee died with its host?"
        );
        let free_pid = nix::unistd::Pid::from_raw(free_pid);
        nix::sys::signal::kill(free_pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(eventually(Duration::from_secs(3), || !held(&free_lock)).await);
        // The keeper removed the host's cgroups, the workers' groups inside included.
        let prefix = format!("plugvisor-{server_pid}-");
        let left = || {
            ["unified", "pids"]
                .iter()
                .flat_map(|h| std::fs::read_dir(format!("/sys/fs/cgroup/{h}")).into_iter())
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        };
        assert!(eventually(Duration::from_secs(3), || left() == 0).await);
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
