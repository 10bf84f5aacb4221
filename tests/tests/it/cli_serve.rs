//! `plugvisor serve` as an operator runs it when things go wrong: plugins that cannot start, a
//! port in use, manifests spread over directories and commands found on `PATH`; and `call` /
//! `stream` reading the same manifests and configuration layers.

use plugvisor_tests::http::Client;
use plugvisor_tests::{bin, eventually, files_under, proc_entries, process_state, serially};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `plugvisor serve`, its address and the rest of its stderr (also used by
/// `entry_points`).
pub(crate) struct Served {
    server: Child,
    addr: std::net::SocketAddr,
    /// The start-up line (the one naming the URL).
    pub(crate) banner: String,
    stderr: Arc<Mutex<String>>,
    workers: Vec<u32>,
}

impl Served {
    /// Starts `plugvisor serve` with `args` (listening on a free loopback port) and waits for
    /// its start-up line; everything it printed before that line is kept in `stderr` too.
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)], run: &Path) -> Self {
        let mut server = Command::new(bin("plugvisor"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("PLUGVISOR_RUNTIME_DIR", run)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(server.stderr.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let banner = loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                let _ = server.wait();
                panic!("serve ended early: {}", stderr.lock().unwrap());
            }
            if line.contains("http://") {
                break line;
            }
            stderr.lock().unwrap().push_str(&line);
        };
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        let url = banner.split_whitespace().find(|w| w.starts_with("http://"));
        let addr = url.unwrap().trim_start_matches("http://").parse().unwrap();
        let workers = children_of(server.id());
        Self {
            server,
            addr,
            banner,
            stderr,
            workers,
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// SIGTERM, a clean exit, and no worker left.
    pub(crate) async fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.server.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.server.wait().unwrap();
        assert!(status.success(), "{status:?}");
        let workers = self.workers.clone();
        let gone = eventually(Duration::from_secs(3), || {
            workers.iter().all(|p| process_state(*p).is_none())
        })
        .await;
        assert!(gone, "workers outlived the server: {workers:?}");
        let log = self.stderr.lock().unwrap().clone();
        log
    }
}

/// A test that fails before [`Served::stop`] must not leave its server (and so its workers,
/// which die with their host) running: it is SIGKILLed, by its handle, and reaped.
impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.server.try_wait() {
            let _ = self.server.kill();
            let _ = self.server.wait();
        }
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    proc_entries()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// A manifest for `name` run by the `worker` binary of this build, with `extra` lines.
fn manifest(name: &str, worker: &str, extra: &str) -> String {
    let command = bin(&format!("{worker}-worker"));
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{extra}\n",
        command.display()
    )
}

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    let found = list.as_array().unwrap().iter().find(|p| p["name"] == name);
    found.unwrap_or_else(|| panic!("{name} not in {list}"))
}

/// Issue 11: one plugin that could not start made `serve` exit, taking the healthy ones down.
#[test]
fn plugins_that_cannot_start_are_failed_and_the_others_serve() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        let d = dir.path();
        write(
            d,
            "good",
            &manifest("good", "echo", "provides = [\"text\"]"),
        );
        let ghost = "name = \"ghost\"\nversion = \"0.1.0\"\ncommand = \"no-such-worker\"\n\
                     provides = [\"spooky\"]\n";
        write(d, "ghost", ghost);
        write(
            d,
            "needy",
            &manifest("needy", "echo", "requires = [\"spooky\"]"),
        );
        let crashy = "[env]\nCHAOS_STARTUP = \"crash\"\n\
                      [supervision]\nmax_restarts = 1\nbackoff_initial_ms = 20";
        write(d, "crashy", &manifest("crashy", "chaos", crashy));
        write(
            d,
            "lonely",
            &manifest("lonely", "echo", "requires = [\"nobody\"]"),
        );
        let cyc =
            |me: &str, other: &str| format!("provides = [\"{me}\"]\nrequires = [\"{other}\"]");
        write(d, "cyc-a", &manifest("cyc-a", "echo", &cyc("sa", "sb")));
        write(d, "cyc-b", &manifest("cyc-b", "echo", &cyc("sb", "sa")));
        write(
            d,
            "uses-good",
            &manifest("uses-good", "echo", "requires = [\"text\"]"),
        );

        let served = Served::start(&["--plugins", d.to_str().unwrap()], &[], run.path());
        assert!(
            served.banner.contains("serving 2 plugins")
                && served
                    .banner
                    .contains("not started: crashy, cyc-a, cyc-b, ghost, lonely, needy"),
            "{}",
            served.banner
        );
        let c = served.client();
        let answer = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "uses-good", "input": "hi"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());

        let status = c.get("/api/plugins/status").await.json();
        let loaded: Vec<&str> = status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(loaded, ["good", "uses-good"], "{status}");
        let failed = &status["failed"];
        let reason = |name: &str| {
            let p = plugin(failed, name);
            assert_eq!(p["state"], "failed", "{p}");
            assert_eq!(p["loaded"], false, "{p}");
            p["last_error"].as_str().unwrap().to_owned()
        };
        assert!(reason("ghost").contains("no-such-worker does not exist"));
        assert!(reason("crashy").contains("chaos: crashing at start-up"));
        assert!(reason("lonely").contains("service \"nobody\", which no plugin provides"));
        assert!(reason("cyc-a").contains("dependency cycle"));
        assert!(reason("cyc-b").contains("dependency cycle"));
        let needy = reason("needy");
        assert!(
            needy.contains("not started") && needy.contains("from ghost"),
            "{needy}"
        );
        // The same on /available and on the plugin itself.
        let available = c.get("/api/plugins/available").await.json();
        assert_eq!(plugin(&available["plugins"], "ghost")["state"], "failed");
        assert_eq!(plugin(&available["plugins"], "good")["state"], "ready");
        let one = c.get("/api/plugins/needy").await.json();
        assert_eq!(one["state"], "failed", "{one}");

        let log = served.stop().await;
        for name in ["ghost", "crashy", "lonely", "cyc-a", "needy"] {
            let lines = log
                .lines()
                .filter(|l| {
                    l.contains("plugin not started") && l.contains(&format!("plugin=\"{name}\""))
                })
                .count();
            assert_eq!(lines, 1, "{name} logged once:\n{log}");
        }
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A manifest directory with plugin `marked`, whose worker (a script running echo) leaves
/// `marker` behind when it is started.
fn marked_plugin(dir: &Path, marker: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("marked.sh");
    let body = format!(
        "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
        marker.display(),
        bin("echo-worker").display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = "name = \"marked\"\nversion = \"0.1.0\"\ncommand = \"./marked.sh\"\n";
    write(dir, "marked", text);
}

/// Issue 11: the port was bound after every worker had started.
#[test]
fn a_port_in_use_fails_at_once_before_any_worker_starts() {
    serially(async {
        let (run, dir, marks) = (tempdir(), tempdir(), tempdir());
        let marker = marks.path().join("started");
        marked_plugin(dir.path(), &marker);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let out = Command::new(bin("plugvisor"))
            .args(["serve", "--plugins", dir.path().to_str().unwrap()])
            .args(["--listen", &addr])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}"))
                && stderr.contains("already in use")
                && stderr.contains("--listen"),
            "{stderr}"
        );
        assert!(!marker.exists(), "a worker was started: {stderr}");
        drop(taken);
        // The positive control: on a free port the same plugin's worker starts.
        let served = Served::start(
            &["--plugins", dir.path().to_str().unwrap()],
            &[],
            run.path(),
        );
        assert!(marker.exists(), "{}", served.banner);
        served.stop().await;
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

/// The arguments and environment of one `serve`.
type ServeRun<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

/// Issue 11: `--plugins` took one directory, `PLUGVISOR_PLUGINS` one path, a bare `command` was
/// looked up only beside `plugvisor`, and `args` were passed as written.
#[test]
fn manifests_from_several_dirs_find_commands_on_path_and_args_beside_them() {
    serially(async {
        use std::os::unix::fs::PermissionsExt;
        let (run, first, second, path_dir) = (tempdir(), tempdir(), tempdir(), tempdir());
        let echo = bin("echo-worker");
        // A worker named on PATH only.
        let on_path = path_dir.path().join("pv-path-worker");
        std::fs::write(
            &on_path,
            format!("#!/bin/sh\nexec '{}' \"$@\"\n", echo.display()),
        )
        .unwrap();
        std::fs::set_permissions(&on_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(
            first.path(),
            "onpath",
            "name = \"onpath\"\nversion = \"0.1.0\"\ncommand = \"pv-path-worker\"\n",
        );
        // `sh` from PATH running a script that is not executable, named relative to the manifest.
        std::fs::create_dir(second.path().join("scripts")).unwrap();
        std::fs::write(
            second.path().join("scripts/run.sh"),
            format!("exec '{}' \"$@\"\n", echo.display()),
        )
        .unwrap();
        write(
            second.path(),
            "shelled",
            "name = \"shelled\"\nversion = \"0.1.0\"\ncommand = \"sh\"\nargs = [\"./scripts/run.sh\"]\n",
        );
        let path = format!(
            "{}:{}",
            path_dir.path().display(),
            std::env::var("PATH").unwrap()
        );
        let (a, b) = (
            first.path().to_str().unwrap(),
            second.path().to_str().unwrap(),
        );
        let joined = format!("{a}:{b}");
        let runs: [ServeRun<'_>; 2] = [
            (
                vec!["--plugins", a, "--plugins", b],
                vec![("PATH", path.as_str())],
            ),
            (
                vec![],
                vec![
                    ("PATH", path.as_str()),
                    ("PLUGVISOR_PLUGINS", joined.as_str()),
                ],
            ),
        ];
        for (args, env) in runs {
            let served = Served::start(&args, &env, run.path());
            assert!(
                served.banner.contains("serving 2 plugins"),
                "{}",
                served.banner
            );
            let c = served.client();
            for name in ["onpath", "shelled"] {
                let answer = c
                    .post(
                        "/api/plugins/execute",
                        &json!({"plugin_id": name, "input": "hi"}),
                    )
                    .await;
                assert_eq!(answer.status, 200, "{name}: {}", answer.text());
                assert_eq!(answer.json()["output"], "hi");
            }
            served.stop().await;
        }
        // The negative control: without the PATH entry the bare name is not found.
        let served = Served::start(&["--plugins", a], &[], run.path());
        let status = served.client().get("/api/plugins/status").await.json();
        let why = plugin(&status["failed"], "onpath")["last_error"].clone();
        assert!(
            why.as_str().unwrap().contains("PATH has no executable"),
            "{why}"
        );
        served.stop().await;
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

fn plugvisor(args: &[&str], env: &[(&str, &str)], run: &Path) -> (String, String) {
    let out = Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", run)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

/// Issue 11: `PLUGVISOR__ECHO__MODE=upper plugvisor call echo '"hi"'` answered `"hi"`: `call`
/// ran the bare worker, so no manifest, host-file or environment layer applied.
#[test]
fn call_and_stream_apply_the_manifest_host_file_and_environment_layers() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        let upper = [("PLUGVISOR__ECHO__MODE", "upper")];
        let (out, _) = plugvisor(&["call", "echo", "\"hi\""], &upper, run.path());
        assert_eq!(out.trim(), "\"HI\"");
        let (out, _) = plugvisor(&["stream", "echo", "\"a b\""], &upper, run.path());
        assert_eq!(out.lines().collect::<Vec<_>>(), ["\"A\"", "\"B\""]);
        // The host file under the environment; --config (the API layer) over both.
        let host_file = dir.path().join("plugvisor.toml");
        std::fs::write(&host_file, "[plugins.echo.config]\nprefix = \"p-\"\n").unwrap();
        let file = host_file.to_str().unwrap();
        let args = ["call", "echo", "\"hi\"", "--host-config", file];
        let (out, _) = plugvisor(&args, &upper, run.path());
        assert_eq!(out.trim(), "\"P-HI\"");
        let args = [
            "call",
            "echo",
            "\"hi\"",
            "--host-config",
            file,
            "--config",
            "{\"mode\": \"lower\"}",
        ];
        let (out, _) = plugvisor(&args, &upper, run.path());
        assert_eq!(out.trim(), "\"p-hi\"");
        // A manifest of --plugins: its [config] applies.
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        write(
            &manifests,
            "echo",
            &manifest("echo", "echo", "[config]\nprefix = \"m-\""),
        );
        let args = [
            "call",
            "echo",
            "\"hi\"",
            "--plugins",
            manifests.to_str().unwrap(),
        ];
        let (out, _) = plugvisor(&args, &[], run.path());
        assert_eq!(out.trim(), "\"m-hi\"");
        // The positive control of the layers: without them, the input comes back unchanged.
        let (out, _) = plugvisor(&["call", "echo", "\"hi\""], &[], run.path());
        assert_eq!(out.trim(), "\"hi\"");
        assert!(files_under(run.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("/h-")));
    })
}

/// Issue 11: `validate` reported only duplicate names and the first dependency problem.
#[test]
fn validate_reports_every_problem_of_the_set_at_once() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        let d = dir.path();
        write(d, "one", &manifest("one", "echo", "provides = [\"text\"]"));
        write(d, "two", &manifest("two", "echo", "provides = [\"text\"]"));
        let loose = manifest("loose", "echo", "").replace("0.1.0", "1.0");
        write(d, "loose", &loose);
        write(d, "status", &manifest("status", "echo", ""));
        write(
            d,
            "needs-x",
            &manifest("needs-x", "echo", "requires = [\"x\", \"y\"]"),
        );
        let cyc =
            |me: &str, other: &str| format!("provides = [\"{me}\"]\nrequires = [\"{other}\"]");
        write(d, "cyc-a", &manifest("cyc-a", "echo", &cyc("sa", "sb")));
        write(d, "cyc-b", &manifest("cyc-b", "echo", &cyc("sb", "sa")));
        let out = Command::new(bin("plugvisor"))
            .args(["validate", d.to_str().unwrap()])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{report}");
        for expected in [
            "service \"text\" is provided by 2 plugins: one (",
            "loose.toml: version \"1.0\" is not a semantic version",
            "status.toml: name \"status\" is reserved",
            "plugin needs-x requires service \"x\"",
            "plugin needs-x requires service \"y\"",
            "dependency cycle: cyc-a -> cyc-b -> cyc-a",
        ] {
            assert!(
                report.contains(expected),
                "missing {expected:?} in:\n{report}"
            );
        }
        assert_eq!(report.lines().count(), 6, "{report}");
    })
}

/// Issue 11: a worker reporting another version than its manifest went unnoticed.
#[test]
fn a_version_other_than_the_manifests_is_a_warning_in_status_and_the_log() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        let other = manifest("other", "echo", "").replace("0.1.0", "9.9.9");
        write(dir.path(), "other", &other);
        write(dir.path(), "same", &manifest("same", "echo", ""));
        let served = Served::start(
            &["--plugins", dir.path().to_str().unwrap()],
            &[],
            run.path(),
        );
        let status = served.client().get("/api/plugins/status").await.json();
        let warnings = &plugin(&status["plugins"], "other")["warnings"];
        assert!(
            warnings[0]
                .as_str()
                .is_some_and(|w| w.contains("\"0.1.0\"") && w.contains("\"9.9.9\"")),
            "{status}"
        );
        assert_eq!(plugin(&status["plugins"], "same")["warnings"], json!([]));
        let log = served.stop().await;
        assert!(
            log.contains("the worker reports version \"0.1.0\""),
            "{log}"
        );
    })
}

/// Issue 11: the `--server` commands took the token only from the environment, and a 401 did
/// not say how to give one.
#[test]
fn server_commands_take_a_token_file_and_a_401_says_how_to_pass_one() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        write(dir.path(), "echo", &manifest("echo", "echo", ""));
        let token = ("PLUGVISOR_API_TOKEN", "s3cret-token");
        let served = Served::start(
            &["--plugins", dir.path().to_str().unwrap()],
            &[token],
            run.path(),
        );
        let url = format!("http://{}", served.addr);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "s3cret-token\n").unwrap();
        let cli = |extra: &[&str]| {
            Command::new(bin("plugvisor"))
                .args(extra)
                .env_remove("PLUGVISOR_API_TOKEN")
                .env("PLUGVISOR_RUNTIME_DIR", run.path())
                .output()
                .unwrap()
        };
        let denied = cli(&["list", "--server", &url]);
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(!denied.status.success());
        assert!(
            stderr.contains("401")
                && stderr.contains("PLUGVISOR_API_TOKEN")
                && stderr.contains("--api-token-file"),
            "{stderr}"
        );
        let file = token_file.to_str().unwrap();
        for args in [
            vec!["list", "--server", &url, "--api-token-file", file],
            vec![
                "call",
                "echo",
                "\"hi\"",
                "--server",
                &url,
                "--api-token-file",
                file,
            ],
            vec!["routes", "--server", &url, "--api-token-file", file],
        ] {
            let out = cli(&args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        served.stop().await;
    })
}

/// Issue 12: one request is followed across processes by its W3C trace: the API continues
/// the client's `traceparent` (and names a new trace in `traceresponse` when there was none),
/// and both workers of a service call log their lines under that trace id.
#[test]
fn one_order_is_followed_across_processes_by_its_trace_id() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        let pricing = manifest("pricing", "pricing", "provides = [\"pricing\"]");
        write(dir.path(), "pricing", &pricing);
        let checkout = manifest("checkout", "checkout", "requires = [\"pricing\"]");
        write(dir.path(), "checkout", &checkout);
        // `info` shows the workers' stderr lines (they inherit the filter).
        let dirs = ["--plugins", dir.path().to_str().unwrap()];
        let served = Served::start(&dirs, &[("PLUGVISOR_LOG", "info")], run.path());
        let order = json!({"plugin_id": "checkout",
                           "input": {"items": [{"sku": "tea"}, {"sku": "apple", "qty": 2}]}});
        let theirs = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traced = served
            .client()
            .with_header("traceparent", &format!("00-{theirs}-00f067aa0ba902b7-01"))
            .post("/api/plugins/execute", &order)
            .await;
        assert_eq!(traced.status, 200, "{}", traced.text());
        let answered = traced
            .header("traceresponse")
            .unwrap_or_default()
            .to_owned();
        assert!(answered.starts_with(&format!("00-{theirs}-")), "{answered}");
        assert!(answered.ends_with("-01"), "{answered}");
        // In a span of the server's own, not the client's.
        assert!(!answered.contains("-00f067aa0ba902b7-"), "{answered}");
        // Without a traceparent the request runs in a trace of its own, named in the answer.
        let fresh = served.client().post("/api/plugins/execute", &order).await;
        assert_eq!(fresh.status, 200, "{}", fresh.text());
        let fresh_id = fresh
            .header("traceresponse")
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default()
            .to_owned();
        assert_eq!(fresh_id.len(), 32, "{fresh_id}");
        assert_ne!(fresh_id, theirs);
        // Each trace's lines: one from checkout, one per line of the order from pricing.
        let counts = |log: &str, id: &str| {
            let tagged = format!("trace_id={id}");
            let of = |what: &str| {
                log.lines()
                    .filter(|l| l.contains(&tagged) && l.contains(what))
                    .count()
            };
            (of("checkout priced an order"), of("pricing quoted a line"))
        };
        // The log is whole once serve has stopped (its workers' lines are relayed as they come).
        let log = served.stop().await;
        let logged = counts(&log, theirs) == (1, 2) && counts(&log, &fresh_id) == (1, 2);
        assert!(
            logged,
            "{:?} {:?}\n{log}",
            counts(&log, theirs),
            counts(&log, &fresh_id)
        );
    })
}

/// A server whose stderr reader went away (the process that started it exited) still stops on
/// SIGTERM: the signal task wrote "stopping" with `eprintln!`, which panics on a closed pipe,
/// so the server ran on until SIGKILL.
#[test]
fn serve_stops_on_sigterm_after_its_stderr_is_closed() {
    serially(async {
        let (run, dir) = (tempdir(), tempdir());
        write(dir.path(), "echo", &manifest("echo", "echo", ""));
        let mut server = Command::new(bin("plugvisor"))
            .args(["serve", "--plugins", dir.path().to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(server.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("http://") {
            line.clear();
            assert_ne!(reader.read_line(&mut line).unwrap(), 0, "serve ended early");
        }
        let workers = children_of(server.id());
        assert!(!workers.is_empty(), "echo's worker runs");
        drop(reader);
        let pid = nix::unistd::Pid::from_raw(server.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let stopped = eventually(Duration::from_secs(10), || {
            server.try_wait().ok().flatten().is_some()
        })
        .await;
        if !stopped {
            let _ = server.kill();
            let _ = server.wait();
        }
        assert!(stopped, "serve ignored SIGTERM once its stderr was closed");
        let gone = eventually(Duration::from_secs(3), || {
            workers.iter().all(|p| process_state(*p).is_none())
        })
        .await;
        assert!(gone, "workers outlived the server: {workers:?}");
    })
}
