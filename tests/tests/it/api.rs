//! The management REST API end to end: a `PluginManager` over real worker processes, served by
//! `serve_api` on 127.0.0.1, driven over real HTTP; every test ends with the manager shut down,
//! no worker left and the host directory empty.

use plugvisor_host::{EventKind, HostConfig};
use plugvisor_manager::api::{check_bind, serve_api, ApiOptions, CancellationToken};
use plugvisor_manager::{ManagerConfig, PluginManager};
use plugvisor_tests::http::{raw_exchange, Answer, Client, Stream};
use plugvisor_tests::{bin, eventually, files_under, process_state, serially};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One test's server: a manager over manifests written for the test, and the API serving it.
pub(crate) struct Api {
    pub(crate) client: Client,
    pub(crate) manager: PluginManager,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    pids: Arc<Mutex<Vec<u32>>>,
    base: tempfile::TempDir,
    _manifests: tempfile::TempDir,
}

/// A manifest for plugin `name` run by the bundled `<worker>-worker`, with `extra` TOML.
pub(crate) fn manifest(name: &str, worker: &str, extra: &str) -> (String, String) {
    let command = bin(&format!("{worker}-worker"));
    let text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"{name} for the API tests\"\n\
         command = \"{}\"\n{extra}\n",
        command.display()
    );
    (name.to_owned(), text)
}

/// Loads each plugin in `ids` through the API; each load must succeed.
pub(crate) async fn load_plugins(c: &Client, ids: &[&str]) {
    for id in ids {
        let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
        assert_eq!(loaded.status, 200, "{id}: {}", loaded.text());
    }
}

/// Polls `GET /api/plugins/{name}` until `pred` holds (10 s at most).
pub(crate) async fn info_until(c: &Client, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.get(&format!("/api/plugins/{name}")).await.json();
        if pred(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn echo() -> (String, String) {
    manifest(
        "echo",
        "echo",
        "provides = [\"text.transform\"]\n[config]\nmode = \"identity\"",
    )
}

pub(crate) fn files() -> (String, String) {
    manifest("files", "files", "requires = [\"text.transform\"]")
}

pub(crate) fn ticker() -> (String, String) {
    manifest("ticker", "ticker", "start = \"lazy\"")
}

fn chaos() -> (String, String) {
    manifest("chaos", "chaos", "[supervision]\nbackoff_initial_ms = 50")
}

/// An echo that waits a minute before restarting: after a crash it stays in `backoff`.
fn slow_echo() -> (String, String) {
    manifest(
        "echo",
        "echo",
        "[supervision]\nbackoff_initial_ms = 60000\nbackoff_max_ms = 60000",
    )
}

/// A chaos that is `failed` after its first crash. (Lifecycle events carry the name the
/// worker reports, so a manifest of a bundled worker keeps the worker's name.)
fn fragile_chaos() -> (String, String) {
    manifest("chaos", "chaos", "[supervision]\nmax_restarts = 0")
}

impl Api {
    pub(crate) async fn start(manifests: &[(String, String)], options: ApiOptions) -> Self {
        let dir = tempfile::tempdir().expect("manifest dir");
        for (name, text) in manifests {
            std::fs::write(dir.path().join(format!("{name}.toml")), text).expect("manifest");
        }
        let base = tempfile::tempdir().expect("base dir");
        let manager = PluginManager::new(ManagerConfig {
            manifest_dirs: vec![dir.path().to_path_buf()],
            host: HostConfig {
                base_dir: Some(base.path().to_path_buf()),
            },
            ..ManagerConfig::default()
        })
        .expect("manager");
        let pids = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&pids);
        manager.host().register_hook("started", move |event| {
            if let EventKind::Started { pid } = event.kind {
                seen.lock().unwrap().push(pid);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = Client::new(listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_api(
            listener,
            manager.clone(),
            options,
            shutdown.clone(),
        ));
        Self {
            client,
            manager,
            shutdown,
            server,
            pids,
            base,
            _manifests: dir,
        }
    }

    /// The directory the test's manifests were written to (to edit one mid-test).
    pub(crate) fn manifest_dir(&self) -> &std::path::Path {
        self._manifests.path()
    }

    /// Stops the server (it must return promptly), shuts the manager down, and audits.
    pub(crate) async fn finish(self) {
        self.shutdown.cancel();
        let served = tokio::time::timeout(Duration::from_secs(4), self.server)
            .await
            .expect("serve_api returns promptly after shutdown")
            .expect("the server task");
        served.expect("serve_api ends without an error");
        self.manager.shutdown().await;
        let pids = self.pids.lock().unwrap().clone();
        let gone = eventually(Duration::from_secs(5), || {
            pids.iter().all(|pid| process_state(*pid).is_none())
        })
        .await;
        assert!(gone, "worker processes left: {pids:?}");
        let base = self.base.path().to_path_buf();
        let clean = eventually(Duration::from_secs(5), || files_under(&base).is_empty()).await;
        assert!(clean, "files left: {:?}", files_under(&base));
    }
}

/// Polls the health route until its overall status is `want` (10 s at most).
async fn health_until(client: &Client, want: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.get("/api/plugins/health").await;
        if answer.json()["status"] == want {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {want}: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads events until `plugin` reports `name` (10 s at most); every line read is kept.
async fn wait_event(events: &mut Stream, seen: &mut Vec<String>, plugin: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = events
            .next_line_within(left)
            .await
            .unwrap_or_else(|| panic!("no {name:?} event of {plugin} in {seen:#?}"));
        seen.push(line.clone());
        let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
        if event["plugin"] == plugin && event["event"] == name {
            return;
        }
    }
}

pub(crate) fn assert_error(answer: &Answer, status: u16, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.error_kind(), kind, "{}", answer.text());
    assert!(
        answer.header("content-type") == Some("application/json"),
        "{:?}",
        answer.headers
    );
}

#[test]
fn plugins_are_listed_loaded_called_configured_reloaded_and_unloaded() {
    serially(async {
        let broken = ("broken".to_owned(), "name = 3\n".to_owned());
        let echo2 = manifest("echo2", "echo", "");
        let api = Api::start(
            &[echo(), files(), ticker(), echo2, broken],
            ApiOptions::default(),
        )
        .await;
        let c = &api.client;

        assert_eq!(c.get("/api/plugins").await.json(), json!({"plugins": []}));
        let available = c.get("/api/plugins/available").await.json();
        let names: Vec<&str> = available["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["echo", "echo2", "files", "ticker"]);
        let problems = available["manifest_errors"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{available}");
        assert!(problems[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("broken.toml"));

        load_errors(c).await;
        calls_and_config(c).await;
        reload_status_and_metrics(c).await;
        unload_rules(c).await;
        route_errors(c).await;
        assert_eq!(c.get("/api/plugins").await.json(), json!({"plugins": []}));
        api.finish().await;
    })
}

async fn load_errors(c: &Client) {
    let loaded = c
        .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
        .await;
    assert_eq!(loaded.status, 200, "{}", loaded.text());
    let info = loaded.json();
    assert_eq!(
        (info["name"].as_str(), info["loaded"].as_bool()),
        (Some("echo"), Some(true))
    );
    assert_eq!(info["state"], "ready");
    assert!(info["pid"].as_u64().is_some());

    let again = c
        .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
        .await;
    assert_error(&again, 409, "already_loaded");
    let unknown = c
        .post("/api/plugins/load", &json!({"plugin_id": "nope"}))
        .await;
    assert_error(&unknown, 404, "not_found");
    assert!(unknown.error_message().contains("nope"));
    let cut = c
        .send("POST", "/api/plugins/load", Some(b"{\"plugin_id\": "))
        .await;
    assert_error(&cut, 400, "bad_request");
    assert!(cut.error_message().contains("line 1"), "{}", cut.text());
    let typo = c
        .post("/api/plugins/load", &json!({"plugin": "echo"}))
        .await;
    assert_error(&typo, 400, "bad_request");
    assert!(typo.error_message().contains("`plugin`"), "{}", typo.text());
    let empty = c.send("POST", "/api/plugins/load", None).await;
    assert_error(&empty, 400, "bad_request");

    let bad = json!({"plugin_id": "echo2", "config": {"mode": "shout"}});
    let invalid = c.post("/api/plugins/load", &bad).await;
    assert_error(&invalid, 422, "invalid_config");
    assert!(
        invalid.error_message().contains("mode"),
        "{}",
        invalid.text()
    );
    assert!(invalid.json()["error"]["problems"][0]
        .as_str()
        .unwrap()
        .contains("enum"));
    let echo2 = c.get("/api/plugins/echo2").await.json();
    assert_eq!(echo2["loaded"], false, "nothing left loaded: {echo2}");

    let files = c
        .post("/api/plugins/load", &json!({"plugin_id": "files"}))
        .await;
    assert_eq!(files.status, 200, "{}", files.text());
    let ticker = c
        .post("/api/plugins/load", &json!({"plugin_id": "ticker"}))
        .await;
    assert_eq!(ticker.json()["state"], "idle", "lazy: {}", ticker.text());
    let health = c.get("/api/plugins/health").await.json();
    assert_eq!(health["status"], "pass", "idle counts as pass: {health}");
    assert_eq!(
        health["checks"]["ticker:worker"][0]["observedValue"],
        "idle"
    );
}

async fn calls_and_config(c: &Client) {
    let call = |input: Value| json!({"plugin_id": "echo", "input": input});
    let out = c
        .post("/api/plugins/execute", &call(json!({"text": "hi"})))
        .await;
    assert_eq!(
        out.json(),
        json!({"output": {"text": "hi"}}),
        "{}",
        out.text()
    );

    let set = c
        .put(
            "/api/plugins/echo/config",
            &json!({"config": {"mode": "upper"}}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["config"]["mode"], "upper");
    let out = c.post("/api/plugins/execute", &call(json!("hi"))).await;
    assert_eq!(out.json()["output"], "HI");

    let invalid = c
        .put(
            "/api/plugins/echo/config",
            &json!({"config": {"mode": "shout"}}),
        )
        .await;
    assert_error(&invalid, 422, "invalid_config");
    assert!(
        invalid.error_message().contains("mode"),
        "{}",
        invalid.text()
    );
    assert!(
        invalid.error_message().contains("rule: enum"),
        "{}",
        invalid.text()
    );
    let out = c.post("/api/plugins/execute", &call(json!("still"))).await;
    assert_eq!(out.json()["output"], "STILL", "the plugin was not touched");
    let shape = c
        .put("/api/plugins/echo/config", &json!({"config": 5}))
        .await;
    assert_error(&shape, 400, "bad_request");
    let idle = c
        .put("/api/plugins/echo2/config", &json!({"config": {}}))
        .await;
    assert_error(&idle, 409, "not_loaded");
    let unknown = c
        .put("/api/plugins/nope/config", &json!({"config": {}}))
        .await;
    assert_error(&unknown, 404, "not_found");

    let detail = c.get("/api/plugins/echo").await.json();
    assert_eq!(detail["config"]["mode"], "upper");
    assert_eq!(detail["config_schema"]["type"], "object");
    let not_loaded = c.get("/api/plugins/echo2").await.json();
    assert!(not_loaded.get("config").is_none(), "{not_loaded}");
    assert_error(&c.get("/api/plugins/nope").await, 404, "not_found");

    call_errors(c).await;
    let lazy = c
        .post(
            "/api/plugins/execute_stream",
            &json!({"plugin_id": "ticker", "input": {"n": 3, "bytes": 4}}),
        )
        .await;
    assert_eq!(lazy.status, 200, "{}", lazy.text());
    let lines: Vec<Value> = lazy
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", lazy.text());
    assert_eq!(lines[3], json!({"end": {"count": 3}}));
}

async fn call_errors(c: &Client) {
    let not_loaded = c
        .post(
            "/api/plugins/execute",
            &json!({"plugin_id": "echo2", "input": 1}),
        )
        .await;
    assert_error(&not_loaded, 409, "not_loaded");
    let unknown = c
        .post(
            "/api/plugins/execute",
            &json!({"plugin_id": "nope", "input": 1}),
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    let no_input = c
        .post("/api/plugins/execute", &json!({"plugin_id": "echo"}))
        .await;
    assert_error(&no_input, 400, "bad_request");
    assert!(
        no_input.error_message().contains("input"),
        "{}",
        no_input.text()
    );
    let zero = json!({"plugin_id": "echo", "input": 1, "timeout_ms": 0});
    assert_error(
        &c.post("/api/plugins/execute", &zero).await,
        400,
        "bad_request",
    );
    let stream_unknown = c
        .post(
            "/api/plugins/execute_stream",
            &json!({"plugin_id": "nope", "input": 1}),
        )
        .await;
    assert_error(&stream_unknown, 404, "not_found");
}

async fn reload_status_and_metrics(c: &Client) {
    let before = c.get("/api/plugins/echo").await.json()["pid"].as_u64();
    let reloaded = c.send("POST", "/api/plugins/echo/reload", None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let after = reloaded.json()["pid"].as_u64();
    assert!(
        after.is_some() && after != before,
        "{before:?} -> {after:?}"
    );
    let out = c
        .post(
            "/api/plugins/execute",
            &json!({"plugin_id": "echo", "input": "kept"}),
        )
        .await;
    assert_eq!(
        out.json()["output"],
        "KEPT",
        "the API config survives a reload"
    );
    let odd = c
        .post("/api/plugins/echo/reload", &json!({"now": true}))
        .await;
    assert_error(&odd, 400, "bad_request");
    let idle = c.send("POST", "/api/plugins/echo2/reload", None).await;
    assert_error(&idle, 409, "not_loaded");

    let status = c.get("/api/plugins/status").await.json();
    let order: Vec<&str> = status["initialization_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let at = |name| order.iter().position(|n| *n == name);
    assert_eq!(order.len(), 3, "{status}");
    assert!(
        at("echo") < at("files") && at("ticker").is_some(),
        "{status}"
    );
    assert_eq!(status["services"]["text.transform"], "echo");
    assert_eq!(status["plugins"].as_array().unwrap().len(), 3);
    assert_eq!(status["manifest_errors"].as_array().unwrap().len(), 1);

    let health = c.get("/api/plugins/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "pass");

    let metrics = c.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(
        metrics
            .text()
            .contains("plugvisor_calls_total{plugin=\"echo\"}"),
        "{}",
        metrics.text()
    );
}

async fn unload_rules(c: &Client) {
    let refused = c.send("POST", "/api/plugins/echo/unload", None).await;
    assert_error(&refused, 409, "required_by_others");
    assert!(
        refused.error_message().contains("files"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["dependents"], json!(["files"]));
    let typo = c
        .post("/api/plugins/echo/unload", &json!({"forc": true}))
        .await;
    assert_error(&typo, 400, "bad_request");
    let maybe = c
        .send("POST", "/api/plugins/echo/unload?force=maybe", None)
        .await;
    assert_error(&maybe, 400, "bad_request");

    let forced = c
        .post("/api/plugins/echo/unload", &json!({"force": true}))
        .await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert_eq!(forced.json()["loaded"], false);
    let relo = c
        .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
        .await;
    assert_eq!(relo.status, 200, "{}", relo.text());
    let forced = c
        .send("POST", "/api/plugins/echo/unload?force=true", None)
        .await;
    assert_eq!(forced.status, 200, "{}", forced.text());

    for id in ["files", "ticker"] {
        let gone = c
            .send("POST", &format!("/api/plugins/{id}/unload"), None)
            .await;
        assert_eq!(gone.status, 200, "{id}: {}", gone.text());
    }
    let twice = c.send("POST", "/api/plugins/files/unload", None).await;
    assert_error(&twice, 409, "not_loaded");
    let unknown = c.send("POST", "/api/plugins/nope/unload", None).await;
    assert_error(&unknown, 404, "not_found");
}

async fn route_errors(c: &Client) {
    let wrong = c.send("DELETE", "/api/plugins", None).await;
    assert_error(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("GET"));
    let wrong = c.get("/api/plugins/load").await;
    assert_error(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_error(&c.get("/nope").await, 404, "not_found");
    assert_error(&c.get("/api/plugins/echo/extra").await, 404, "not_found");

    let huge = vec![b' '; (1 << 20) + 1];
    let too_big = c.send("POST", "/api/plugins/execute", Some(&huge)).await;
    assert_error(&too_big, 413, "payload_too_large");
}

#[test]
fn streams_end_with_a_terminal_frame() {
    serially(async {
        let api = Api::start(&[echo(), chaos()], ApiOptions::default()).await;
        let c = &api.client;
        for id in ["echo", "chaos"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        let words = json!({"plugin_id": "echo", "input": "one two three"});
        let mut stream = c
            .open(
                "POST",
                "/api/plugins/execute_stream",
                Some(words.to_string().as_bytes()),
            )
            .await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
        let mut frames = Vec::new();
        while let Some(line) = stream.next_line().await {
            frames.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        assert_eq!(
            frames,
            [
                json!({"item": "one"}),
                json!({"item": "two"}),
                json!({"item": "three"}),
                json!({"end": {"count": 3}})
            ]
        );

        let crash = json!({"plugin_id": "chaos", "input": {"fault": "stream_crash", "chunks": 2}});
        let cut = c.post("/api/plugins/execute_stream", &crash).await;
        assert_eq!(cut.status, 200, "{}", cut.text());
        let frames: Vec<Value> = cut
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Items sent before the abort may or may not have left the worker; the end is an error.
        let (last, items) = frames.split_last().unwrap();
        assert!(items.len() <= 2, "{}", cut.text());
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item, &json!({"item": {"chunk": i}}));
        }
        assert_eq!(last["error"]["kind"], "worker_crashed", "{}", cut.text());
        assert_eq!(last["error"]["crash"]["cause"], "abort");
        api.finish().await;
    })
}

#[test]
fn a_crash_shows_in_the_call_the_events_and_the_health() {
    serially(async {
        let api = Api::start(&[slow_echo(), fragile_chaos()], ApiOptions::default()).await;
        let c = &api.client;
        let mut events = c.open("GET", "/api/plugins/events", None).await;
        assert_eq!(events.status, 200);
        assert_eq!(events.header("content-type"), Some("application/x-ndjson"));
        let mut seen = Vec::new();

        let empty = health_until(c, "pass").await;
        assert_eq!(
            empty.header("content-type"),
            Some("application/health+json")
        );
        for id in ["echo", "chaos"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
            wait_event(&mut events, &mut seen, id, "loaded").await;
        }
        assert_eq!(health_until(c, "pass").await.status, 200);

        // echo's worker is killed from outside: it waits a minute in backoff, so health warns.
        let pid = c.get("/api/plugins/echo").await.json()["pid"]
            .as_u64()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_event(&mut events, &mut seen, "echo", "crashed").await;
        let warn = health_until(c, "warn").await;
        assert_eq!(warn.status, 200);
        let check = &warn.json()["checks"]["echo:worker"][0];
        assert_eq!(
            (check["status"].as_str(), check["observedValue"].as_str()),
            (Some("warn"), Some("backoff")),
            "{check}"
        );

        // chaos aborts mid-call: the call says so, and with no restart allowed health fails.
        let abort = json!({"plugin_id": "chaos", "input": {"fault": "abort"}});
        let crashed = c.post("/api/plugins/execute", &abort).await;
        assert_error(&crashed, 502, "worker_crashed");
        let report = &crashed.json()["error"]["crash"];
        assert_eq!(report["cause"], "abort", "{report}");
        assert_eq!(report["plugin"], "chaos");
        wait_event(&mut events, &mut seen, "chaos", "crashed").await;
        wait_event(&mut events, &mut seen, "chaos", "failed").await;
        let fail = health_until(c, "fail").await;
        assert_eq!(fail.status, 503, "{}", fail.text());
        assert_eq!(fail.header("content-type"), Some("application/health+json"));
        assert_eq!(
            fail.json()["checks"]["chaos:worker"][0]["observedValue"],
            "failed"
        );
        let refused = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "chaos", "input": {}}),
            )
            .await;
        assert_error(&refused, 503, "unavailable");

        let reloaded = c.send("POST", "/api/plugins/chaos/reload", None).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        wait_event(&mut events, &mut seen, "chaos", "reloaded").await;
        health_until(c, "warn").await;
        assert_eq!(
            c.send("POST", "/api/plugins/echo/unload", None)
                .await
                .status,
            200
        );
        wait_event(&mut events, &mut seen, "echo", "unloaded").await;
        health_until(c, "pass").await;

        // Shutting the server down ends the event stream.
        api.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(3), async {
            while events.next_line().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the event stream did not end at shutdown");
        api.finish().await;
    })
}

#[test]
fn secrets_never_leave_the_api() {
    serially(async {
        const SECRET: &str = "hunter2-do-not-show";
        let api = Api::start(&[chaos()], ApiOptions::default()).await;
        let c = &api.client;
        let mut events = c.open("GET", "/api/plugins/events", None).await;
        let mut answers: Vec<Answer> = Vec::new();
        let mut seen = Vec::new();

        let load = json!({"plugin_id": "chaos", "config": {"api_key": SECRET}});
        answers.push(c.post("/api/plugins/load", &load).await);
        assert_eq!(answers[0].status, 200, "{}", answers[0].text());
        let shown = c.get("/api/plugins/chaos").await;
        assert_eq!(shown.json()["config"]["api_key"], "***", "{}", shown.text());
        answers.push(shown);

        let set = json!({"config": {"api_key": format!("{SECRET}-2")}});
        let changed = c.put("/api/plugins/chaos/config", &set).await;
        assert_eq!(changed.status, 200, "{}", changed.text());
        assert_eq!(changed.json()["config"]["api_key"], "***");
        answers.push(changed);
        wait_event(&mut events, &mut seen, "chaos", "config_changed").await;

        let bad = json!({"config": {"api_key": SECRET, "crash_on_initialize": "yes", "extra": 1}});
        let refused = c.put("/api/plugins/chaos/config", &bad).await;
        assert_error(&refused, 422, "invalid_config");
        let message = refused.error_message();
        assert!(
            message.contains("crash_on_initialize") && message.contains("extra"),
            "{message}"
        );
        answers.push(refused);

        let reloaded = c.send("POST", "/api/plugins/chaos/reload", None).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        answers.push(reloaded);
        let after = c.get("/api/plugins/chaos").await;
        assert_eq!(
            after.json()["config"]["api_key"],
            "***",
            "kept across reload, masked"
        );
        answers.push(after);
        let ok = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "chaos", "input": {"fault": "none"}}),
            )
            .await;
        assert_eq!(ok.json()["output"]["ok"], true, "{}", ok.text());
        answers.push(ok);
        for path in [
            "/api/plugins",
            "/api/plugins/available",
            "/api/plugins/status",
            "/api/plugins/health",
            "/metrics",
            "/api/openapi.json",
        ] {
            answers.push(c.get(path).await);
        }
        wait_event(&mut events, &mut seen, "chaos", "reloaded").await;

        for answer in &answers {
            assert!(
                !answer.text().contains(SECRET),
                "secret shown: {}",
                answer.text()
            );
        }
        for line in &seen {
            assert!(!line.contains(SECRET), "secret in an event: {line}");
        }
        let masked = seen.iter().find(|l| l.contains("config_changed")).unwrap();
        assert!(masked.contains("\"api_key\":\"***\""), "{masked}");
        api.finish().await;
    })
}

#[test]
fn a_token_guards_every_route() {
    serially(async {
        let token = "t0ken-for-the-api";
        let options = ApiOptions {
            token: Some(token.to_owned()),
            ..ApiOptions::default()
        };
        let api = Api::start(&[echo()], options).await;
        let anonymous = &api.client;
        let wrong = anonymous.with_token("not-it");
        let right = anonymous.with_token(token);

        let doc = right.get("/api/openapi.json").await;
        assert_eq!(doc.status, 200);
        let mut routes = documented_routes(&doc.json());
        routes.push(("GET".to_owned(), "/not/a/route".to_owned()));
        for (method, path) in &routes {
            for client in [anonymous, &wrong] {
                let answer = client.send(method, path, Some(b"{}")).await;
                assert_error(&answer, 401, "unauthorized");
                assert_eq!(
                    answer.header("www-authenticate"),
                    Some("Bearer"),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(right.get("/api/plugins").await.status, 200);
        let loaded = right
            .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());

        let any = "0.0.0.0:8620".parse().unwrap();
        assert!(check_bind(&any, None).is_err());
        assert!(check_bind(&any, Some(token)).is_ok());
        assert!(check_bind(&"127.0.0.1:8620".parse().unwrap(), None).is_ok());
        api.finish().await;
    })
}

/// Every (method, path) of an OpenAPI document, `{id}` as `echo`.
/// The management API's documented routes (plugin routes, tagged per plugin, are checked in
/// `api_routes.rs`).
fn documented_routes(doc: &Value) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths.iter().filter(|(p, _)| !p.starts_with("/plugins/")) {
        for method in item.as_object().expect("path item").keys() {
            let path = path.replace("{id}", "echo").replace("{task}", "greet");
            routes.push((method.to_uppercase(), path));
        }
    }
    routes
}

#[test]
fn every_documented_route_answers_as_documented() {
    serially(async {
        // echo with a task, for the task routes.
        let echo = manifest(
            "echo",
            "echo",
            "provides = [\"text.transform\"]\n[[tasks]]\nname = \"greet\"\nevery = \"1h\"",
        );
        let api = Api::start(&[echo, files()], ApiOptions::default()).await;
        let c = &api.client;
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "files"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        // A real download for GET /api/files/{download}.
        let up = c
            .send("POST", "/api/files", Some(b"some bytes"))
            .await
            .json();
        let input = json!({"op": "gzip", "file": up["ref"]});
        let zipped = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "files", "input": input}),
            )
            .await;
        let download = zipped.json()["output"]["file"]["$download"]["id"].clone();
        let download = download.as_str().expect("a download id").to_owned();
        let doc = c.get("/api/openapi.json").await.json();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );

        let mut hit = 0;
        // Unload last: the routes before it need the plugin loaded.
        let mut routes = documented_routes(&doc);
        routes.sort_by_key(|(_, path)| path.ends_with("/unload"));
        for (method, path) in routes {
            let template = path.replace("/echo", "/{id}").replace("/greet", "/{task}");
            let path = match path.strip_prefix("/api/files/") {
                Some(_) => format!("/api/files/{download}"),
                None => path,
            };
            let op = &doc["paths"][&template][method.to_lowercase()];
            let body = op["requestBody"]["content"]["application/json"]["example"].to_string();
            let body = op.get("requestBody").map(|_| body.as_bytes());
            let stream = c.open(&method, &path, body).await;
            let status = stream.status;
            if !path.ends_with("/events") {
                stream.finish().await;
            }
            let documented = op["responses"].get(status.to_string()).is_some();
            assert!(
                documented,
                "{method} {path} answered {status}, not documented"
            );
            assert!(
                status != 404 && status != 405,
                "{method} {path} answered {status}"
            );
            hit += 1;
        }
        assert_eq!(hit, 19, "every route of the API is documented");
        api.finish().await;
    })
}

#[test]
fn slow_clients_time_out_and_bodies_are_bounded() {
    serially(async {
        let options = ApiOptions {
            max_body: 1024,
            read_timeout: Duration::from_millis(300),
            ..ApiOptions::default()
        };
        let api = Api::start(&[], options).await;
        let addr = api.client.addr;
        let limit = Duration::from_secs(5);

        let half_head = raw_exchange(
            addr,
            b"GET /api/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            limit,
        )
        .await;
        assert!(half_head.is_some(), "a half-sent head is cut off");
        let silent = raw_exchange(addr, b"", limit).await;
        assert!(silent.is_some(), "a silent connection is closed");
        let half_body =
            b"POST /api/plugins/load HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"plu";
        let answer = raw_exchange(addr, half_body, limit)
            .await
            .expect("answered in time");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");

        let big = vec![b' '; 2048];
        let declared = api
            .client
            .send("POST", "/api/plugins/load", Some(&big))
            .await;
        assert_error(&declared, 413, "payload_too_large");
        let mut chunked =
        b"POST /api/plugins/load HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
            .to_vec();
        chunked.extend(vec![b' '; 2048]);
        chunked.extend(b"\r\n0\r\n\r\n");
        let answer = raw_exchange(addr, &chunked, limit).await.expect("answered");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        let fine = api.client.get("/api/plugins").await;
        assert_eq!(fine.status, 200, "the server still serves");
        api.finish().await;
    })
}

#[test]
fn unmet_requirements_are_a_failed_dependency() {
    serially(async {
        let needy = manifest("needy", "echo", "requires = [\"nothing.provides.this\"]");
        let api = Api::start(&[needy], ApiOptions::default()).await;
        let c = &api.client;
        let answer = c
            .post("/api/plugins/load", &json!({"plugin_id": "needy"}))
            .await;
        assert_error(&answer, 424, "dependency_unmet");
        assert!(
            answer.error_message().contains("nothing.provides.this"),
            "{}",
            answer.text()
        );
        assert_eq!(c.get("/api/plugins").await.json(), json!({"plugins": []}));
        api.finish().await;
    })
}
