//! `plugvisor serve`, `list`, `inspect`, `validate`, `completions` and `demo`, run as a user
//! runs them.

use plugvisor_tests::{bin, eventually, files_under, proc_entries, process_state, serially};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bundled() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/manifests")
}

fn plugvisor(args: &[&str], runtime: &Path) -> Output {
    Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", runtime)
        .output()
        .unwrap()
}

/// Runs `plugvisor` like [`plugvisor`], but SIGKILLs it past `limit` and fails the test with
/// what it printed so far: a hang fails fast instead of holding CI until its own limit.
fn plugvisor_within(args: &[&str], runtime: &Path, limit: Duration) -> Output {
    let mut child = Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", runtime)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            let printed = text(&stdout.join().unwrap());
            panic!("plugvisor {args:?} ran past {limit:?}; it printed:\n{printed}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_bundled_manifests_and_lists_every_problem() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let dir = bundled();
        let out = plugvisor(&["validate", dir.to_str().unwrap()], run.path());
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let bundled_count = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("toml".as_ref()))
            .count();
        let ok = format!("{bundled_count} manifest(s) OK");
        assert!(text(&out.stdout).contains(&ok), "{}", text(&out.stdout));

        let bad = tempfile::tempdir().unwrap();
        std::fs::write(
            bad.path().join("a.toml"),
            "name = \"a\"\nversion = \"1\"\ncommand = \"no-such-worker\"\nrequires = [\"db\"]\n",
        )
        .unwrap();
        std::fs::write(bad.path().join("b.toml"), "name = \"b\"\nversion = 1\n").unwrap();
        // A UI plugin must ship its assets: a directory holding index.html.
        std::fs::create_dir(bad.path().join("empty-ui")).unwrap();
        std::fs::write(
            bad.path().join("c.toml"),
            "name = \"c\"\nversion = \"1\"\ncommand = \"/bin/true\"\nkind = \"ui\"\n\
             ui = { dir = \"empty-ui\", mount_point = \"sidebar\" }\n",
        )
        .unwrap();
        std::fs::write(
            bad.path().join("d.toml"),
            "name = \"d\"\nversion = \"1\"\ncommand = \"/bin/true\"\nkind = \"ui\"\n",
        )
        .unwrap();
        let out = plugvisor(&["validate", bad.path().to_str().unwrap()], run.path());
        assert!(!out.status.success());
        let report = text(&out.stdout);
        assert!(report.contains("b.toml:2: "), "{report}");
        assert!(report.contains("no-such-worker does not exist"), "{report}");
        assert!(report.contains("requires service \"db\""), "{report}");
        assert!(
            report.contains("c.toml:5: ui.dir = \"empty-ui\"")
                && report.contains("holds no index.html"),
            "{report}"
        );
        assert!(
            report.contains("d.toml:4: kind = \"ui\" needs its assets"),
            "{report}"
        );
    })
}

#[test]
fn list_shows_a_table_and_completions_are_generated() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let dir = bundled();
        let out = plugvisor(&["list", "--plugins", dir.to_str().unwrap()], run.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let table = text(&out.stdout);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("echo") && l.contains("tool")),
            "{table}"
        );
        // --kind filters; an unknown kind is an error naming the kinds.
        let dir_arg = dir.to_str().unwrap();
        let out = plugvisor(
            &["list", "--plugins", dir_arg, "--kind", "system"],
            run.path(),
        );
        let table = text(&out.stdout);
        assert!(out.status.success() && !table.contains("\necho"), "{table}");
        let out = plugvisor(
            &["list", "--plugins", dir_arg, "--kind", "gadget"],
            run.path(),
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("auth_provider"),
            "{}",
            text(&out.stderr)
        );
        let out = plugvisor(&["completions", "bash"], run.path());
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("plugvisor"));
    })
}

#[test]
fn inspect_shows_schema_and_config() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let dir = bundled();
        let out = plugvisor(
            &["inspect", "echo", "--plugins", dir.to_str().unwrap()],
            run.path(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["name"], json!("echo"));
        assert_eq!(shown["config"]["mode"], json!("identity"));
        assert_eq!(
            shown["config_schema"]["properties"]["mode"]["default"],
            json!("identity")
        );
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

#[test]
fn serve_manages_plugins_over_http_and_stops_them_on_sigterm() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let dir = bundled();
        let mut server = Command::new(bin("plugvisor"))
            .args([
                "serve",
                "--plugins",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(server.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect(&line)
            .to_owned();
        let order = line.split("order: ").nth(1).expect(&line).to_owned();
        let at = |name: &str| {
            order
                .find(name)
                .unwrap_or_else(|| panic!("{name} not in {order}"))
        };
        assert!(
            at("echo") < at("files"),
            "files requires echo's service: {order}"
        );
        let workers: Vec<u32> = proc_entries()
            .into_iter()
            .filter(|p| p.ppid == server.id())
            .map(|p| p.pid)
            .collect();
        assert!(workers.len() >= 3, "eager plugins run: {workers:?}");

        let call = plugvisor(
            &[
                "call",
                "echo",
                "\"hi\"",
                "--server",
                &url,
                "--config",
                "{\"mode\": \"upper\"}",
            ],
            run.path(),
        );
        assert!(call.status.success(), "{}", text(&call.stderr));
        assert_eq!(text(&call.stdout).trim(), "\"HI\"");
        let stream = plugvisor(
            &[
                "stream",
                "ticker",
                "{\"n\": 3, \"bytes\": 2}",
                "--server",
                &url,
            ],
            run.path(),
        );
        assert!(stream.status.success(), "{}", text(&stream.stderr));
        assert_eq!(text(&stream.stdout).lines().count(), 3);
        let routes = plugvisor(&["routes", "--server", &url], run.path());
        assert!(routes.status.success(), "{}", text(&routes.stderr));
        let table = text(&routes.stdout);
        let hello = table.lines().find(|l| l.contains("/plugins/echo/hello"));
        let hello = hello.unwrap_or_else(|| panic!("{table}"));
        assert!(
            hello.starts_with("GET") && hello.contains(" echo "),
            "{table}"
        );
        assert!(table.contains("/plugins/ticker/events"), "{table}");
        let list = plugvisor(&["list", "--server", &url], run.path());
        assert!(
            text(&list.stdout).contains("ready"),
            "{}",
            text(&list.stdout)
        );
        let bad = plugvisor(&["call", "nope", "{}", "--server", &url], run.path());
        assert!(!bad.status.success());
        assert!(text(&bad.stderr).contains("404"), "{}", text(&bad.stderr));

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = server.wait().unwrap();
        assert!(status.success(), "{status:?}");
        let gone = eventually(Duration::from_secs(3), || {
            workers.iter().all(|p| process_state(*p).is_none())
        })
        .await;
        assert!(gone, "workers outlived the server: {workers:?}");
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

#[test]
fn the_demo_runs_to_completion_and_leaves_nothing_behind() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let args = ["demo", "--file-mib", "4", "--chunks", "2000"];
        let out = plugvisor_within(&args, run.path(), Duration::from_secs(240));
        let report = text(&out.stdout);
        assert!(out.status.success(), "{report}{}", text(&out.stderr));
        for expected in [
            "echo (mode upper) answered",
            "ticker streamed 2000 chunks",
            "files hashed a 4 MiB file",
            "WorkerCrashed",
            "the supervisor restarted it",
            "status page: GET / 200",
            "UI panel echo-panel at sidebar",
            "services: checkout called the pricing service through the host for each of 2",
            "python: hello (Python SDK",
            "hooks: echo heard loaded ×",
            "unloaded ×1 (clock)",
            "done: all",
        ] {
            assert!(
                report.contains(expected),
                "missing {expected:?} in:\n{report}"
            );
        }
    })
}

/// DEFECTS #9: `validate` said OK for two manifests with one name.
#[test]
fn validate_fails_on_two_manifests_with_one_name() {
    serially(async {
        let run = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (file, worker) in [("a.toml", "echo-worker"), ("b.toml", "ticker-worker")] {
            let text = format!("name = \"dup\"\nversion = \"1.0.0\"\ncommand = \"{worker}\"\n");
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let out = plugvisor(&["validate", dir.path().to_str().unwrap()], run.path());
        let report = text(&out.stdout);
        assert!(!out.status.success(), "{report}");
        assert!(
            report.contains("b.toml:1: ") && report.contains("a.toml"),
            "{report}"
        );
    })
}
