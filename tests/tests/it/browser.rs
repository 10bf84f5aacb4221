//! The status page in a real browser: `plugvisor serve` on the bundled plugins, headless
//! Chromium driven over W3C WebDriver (chromedriver). The page lists every plugin, follows a
//! crash live, shows the UI plugin's panel (sandboxed, talking only through the bridge), shows
//! each replica of a pooled plugin in a row of its own, and leaves a screenshot at
//! `target/status-page.png`.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the test says so loudly and passes,
//! unless `PLUGVISOR_BROWSER_TEST=require` (as `.ci/run` sets): then it fails.

use plugvisor_tests::http::Client;
use plugvisor_tests::webdriver::{still_running, Driver, Session, CHROMEDRIVER, CHROMIUM};
use plugvisor_tests::{bin, bin_dir, files_under, proc_entries, serially};
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn the_status_page_shows_plugins_live_and_hosts_the_ui_panel() {
    if !browser_available() {
        return;
    }
    serially(async {
        let started = Instant::now();
        let shm_before = chromium_shm();
        let mut server = Server::start(&bundled_dir(), None);
        let mut driver = Driver::start().await;
        let session = driver.session().await;
        let url = format!("http://{}/", server.addr);
        session.goto(&url).await;
        every_bundled_plugin_is_listed(&session, &server).await;
        a_crash_shows_without_a_reload(&session, &server).await;
        server.track();
        the_panel_shows_echos_outputs(&session, &server).await;
        the_panel_cannot_reach_the_api(&session).await;
        a_button_reloads_a_plugin(&session, &server).await;
        save_screenshot(&session).await;
        let mut guarded = Server::start(&echo_only(&driver), Some(TOKEN));
        the_token_is_asked_for_and_used(&session, &guarded).await;
        each_replica_has_a_row(&session, &guarded).await;
        guarded.track();
        driver.track();
        session.quit().await;
        let browser_pids = driver.stop().await;
        let mut worker_pids = server.stop().await;
        worker_pids.extend(guarded.stop().await);
        nothing_left(&browser_pids, &worker_pids, &shm_before).await;
        eprintln!("browser test took {:?}", started.elapsed());
    })
}

/// True when Chromium and chromedriver are installed; a loud skip (or, when required, a
/// failure saying what to install) otherwise.
fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("PLUGVISOR_BROWSER_TEST").is_ok_and(|v| v == "require");
    assert!(
        !required,
        "PLUGVISOR_BROWSER_TEST=require but {} missing: install the Debian packages \
         `chromium chromium-driver` (apt-get install -y chromium chromium-driver)",
        missing.join(" and ")
    );
    eprintln!(
        "\n*** SKIPPED the browser test: {} missing (apt-get install -y chromium \
         chromium-driver; set PLUGVISOR_BROWSER_TEST=require to make this a failure) ***\n",
        missing.join(" and ")
    );
    false
}

/// Every bundled manifest's plugin is a row of the page, in the state the API reports.
async fn every_bundled_plugin_is_listed(session: &Session, server: &Server) {
    let names = bundled_names();
    assert!(names.contains(&"echo-panel".to_owned()), "{names:?}");
    let api: Value = server.client.get("/api/plugins").await.json();
    let (names, api) = (&names, &api);
    let rows = until("every bundled plugin on the page", || async move {
        let rows = page_rows(session).await;
        names
            .iter()
            .all(|n| rows.get(n).is_some_and(|r| r["state"] == state_in(api, n)))
            .then_some(rows)
    })
    .await;
    for name in names {
        let state = rows[name]["state"].as_str().unwrap();
        assert!(matches!(state, "ready" | "idle"), "{name} is {state}");
    }
}

/// `chaos` crashes through the API; its restart count on the page goes up, and the page was
/// not reloaded (a mark set on its window survives).
async fn a_crash_shows_without_a_reload(session: &Session, server: &Server) {
    let before = page_rows(session).await["chaos"]["restarts"].clone();
    assert_eq!(
        before,
        json!("0"),
        "chaos restarted before the test crashed it"
    );
    session
        .script(
            "window.plugvisorTestMark = 'same page'; return true;",
            json!([]),
        )
        .await;
    let crashed = server
        .client
        .post(
            "/api/plugins/execute",
            &json!({"plugin_id": "chaos", "input": {"fault": "abort"}}),
        )
        .await;
    assert_eq!(crashed.status, 502, "{}", crashed.text());
    assert_eq!(crashed.error_kind(), "worker_crashed");
    let before = &before;
    until(
        "chaos's restart count to change on the page",
        || async move {
            let rows = page_rows(session).await;
            (rows["chaos"]["restarts"] != *before && rows["chaos"]["state"] == json!("ready"))
                .then_some(())
        },
    )
    .await;
    let api: Value = server.client.get("/api/plugins/chaos").await.json();
    let shown = page_rows(session).await["chaos"]["restarts"].clone();
    assert_eq!(shown, json!(api["restarts"].to_string()));
    let mark = session
        .script("return window.plugvisorTestMark || null;", json!([]))
        .await;
    assert_eq!(mark, json!("same page"), "the page was reloaded");
}

/// The echo-panel frame sits at its mount point, sandboxed, and lists echo's outputs.
async fn the_panel_shows_echos_outputs(session: &Session, server: &Server) {
    let frame = "#mount-sidebar section.panel[data-panel='echo-panel'] iframe";
    until("the echo-panel frame in the sidebar", || async move {
        let found = session
            .script(
                "const f = document.querySelector(arguments[0]); \
                 return f ? f.getAttribute('sandbox') : null;",
                json!([frame]),
            )
            .await;
        (found == json!("allow-scripts")).then_some(())
    })
    .await;
    let nonce = format!("seen in the browser {}", std::process::id());
    let called = server
        .client
        .post(
            "/api/plugins/execute",
            &json!({"plugin_id": "echo", "input": {"text": nonce}}),
        )
        .await;
    assert_eq!(called.status, 200, "{}", called.text());
    let element = session.find(frame).await;
    session.enter_frame(&element).await;
    let nonce = &nonce;
    let text = until("echo's output in the panel", || async move {
        let text = session
            .script("return document.body.innerText;", json!([]))
            .await;
        text.as_str()
            .filter(|t| t.contains(nonce))
            .map(str::to_owned)
    })
    .await;
    assert!(text.contains(" in all"), "{text}");
    session.leave_frame().await;
}

/// From inside the panel: an opaque origin, no storage, a direct API call fails, and the
/// bridge refuses anything but plugin routes. (The frame is entered and left here.)
async fn the_panel_cannot_reach_the_api(session: &Session) {
    let element = session
        .find("section.panel[data-panel='echo-panel'] iframe")
        .await;
    session.enter_frame(&element).await;
    let origin = session
        .script(
            "let storage; try { storage = typeof sessionStorage.length; } \
             catch (e) { storage = 'refused'; } return self.origin + ' ' + storage;",
            json!([]),
        )
        .await;
    assert_eq!(origin, json!("null refused"));
    let direct = session
        .script_async(
            "const done = arguments[arguments.length - 1]; \
             fetch('/api/plugins').then(r => done('status ' + r.status), () => done('failed'));",
            json!([]),
        )
        .await;
    assert_eq!(
        direct,
        json!("failed"),
        "the sandboxed panel reached the API"
    );
    for path in [
        "/api/plugins",
        "/plugins/echo/../../api/plugins",
        "/plugins/echo/%2e%2e/%2e%2e/metrics",
        "/ui/status.js",
        "/metrics",
    ] {
        let answer = bridge(session, "GET", path).await;
        assert_eq!(answer["status"], json!(400), "{path}: {answer}");
    }
    let allowed = bridge(session, "GET", "/plugins/echo/hello").await;
    assert_eq!(allowed["status"], json!(200), "{allowed}");
    assert_eq!(allowed["body"]["message"], json!("Hello from echo"));
    session.leave_frame().await;
}

/// One request through the page's bridge, from inside the current (panel) frame.
async fn bridge(session: &Session, method: &str, path: &str) -> Value {
    let script = "const [method, path, done] = arguments; \
        const id = 'test-' + Math.random(); \
        window.addEventListener('message', function on(e) { \
          if (e.data && e.data.id === id) { \
            window.removeEventListener('message', on); done(e.data); } }); \
        parent.postMessage({type: 'plugvisor.fetch', id, method, path}, '*');";
    session.script_async(script, json!([method, path])).await
}

/// The page's own POST (same origin) passes the guard: its reload button swaps echo's worker.
async fn a_button_reloads_a_plugin(session: &Session, server: &Server) {
    let pid_of = |api: Value| api["pid"].clone();
    let before = pid_of(server.client.get("/api/plugins/echo").await.json());
    let button = session
        .find("#plugins tr[data-plugin='echo'] button[data-action='reload']")
        .await;
    session.click(&button).await;
    until("the page to report the reload", || async move {
        let text = session
            .script(
                "return document.getElementById('message').textContent;",
                json!([]),
            )
            .await;
        (text == json!("reload echo: done")).then_some(())
    })
    .await;
    let after = pid_of(server.client.get("/api/plugins/echo").await.json());
    assert_ne!(before, after, "echo was not reloaded");
    let after = &after;
    until("echo's new pid on the page", || async move {
        let shown = session
            .script(
                "return document.querySelector(\"#plugins tr[data-plugin='echo'] \
                 td[data-field='pid']\").textContent;",
                json!([]),
            )
            .await;
        (shown == json!(after.to_string())).then_some(())
    })
    .await;
}

/// The API token of the second server.
const TOKEN: &str = "browser-test-token";

/// A manifest directory with `echo` and `echo-pool` (echo with `replicas = 2`), for the server
/// with a token.
fn echo_only(driver: &Driver) -> PathBuf {
    let dir = driver.dir().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let command = bin("echo-worker");
    let text = format!(
        "name = \"echo\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n",
        command.display()
    );
    std::fs::write(dir.join("echo.toml"), text).unwrap();
    let pool = format!(
        "name = \"echo-pool\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n\
         start = \"eager\"\nreplicas = 2\n",
        command.display()
    );
    std::fs::write(dir.join("echo-pool.toml"), pool).unwrap();
    dir
}

/// A pooled plugin's row is followed by one row per replica, each with the index, state, pid,
/// restarts and calls in flight the API reports for it (and no such rows for a single worker).
async fn each_replica_has_a_row(session: &Session, server: &Server) {
    let info = server.client.get("/api/plugins/echo-pool").await.json();
    let workers = info["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(workers.len(), 2, "{info}");
    let expected: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "index": w["index"].to_string(),
                "state": w["state"],
                "pid": w["pid"].to_string(),
                "restarts": w["restarts"].to_string(),
                "in_flight": format!("{} in flight", w["in_flight"]),
            })
        })
        .collect();
    assert!(workers.iter().all(|w| w["state"] == "ready"), "{info}");
    let expected = &expected;
    until("a row for each replica of echo-pool", || async move {
        let shown = replica_rows(session, "echo-pool").await;
        (&shown == expected).then_some(())
    })
    .await;
    let pids: std::collections::BTreeSet<&str> =
        expected.iter().filter_map(|r| r["pid"].as_str()).collect();
    assert_eq!(pids.len(), 2, "two workers, two pids: {expected:?}");
    assert!(
        replica_rows(session, "echo").await.is_empty(),
        "a single worker has no replica rows"
    );
}

/// The replica rows under `plugin`'s row, as shown.
async fn replica_rows(session: &Session, plugin: &str) -> Vec<Value> {
    let rows = session
        .script(
            "const q = (r, f) => r.querySelector(`[data-field=${f}]`).textContent; \
             return Array.from(document.querySelectorAll( \
               `#plugins tbody tr.replica[data-replica-of='${arguments[0]}']`)).map(r => ({ \
               index: r.dataset.replica, state: r.dataset.state, pid: q(r, 'pid'), \
               restarts: q(r, 'restarts'), in_flight: q(r, 'in_flight') }));",
            json!([plugin]),
        )
        .await;
    rows.as_array().cloned().unwrap_or_default()
}

/// Against a server with a token the page asks for it, says when it is refused, and then
/// lists the plugins and follows the events with it.
async fn the_token_is_asked_for_and_used(session: &Session, server: &Server) {
    session.goto(&format!("http://{}/", server.addr)).await;
    let hint = "document.getElementById('token-form').hidden ? null : \
                document.getElementById('token-hint').textContent";
    until("the page to ask for the token", || async move {
        let shown = session.script(&format!("return {hint};"), json!([])).await;
        shown
            .as_str()
            .filter(|t| t.contains("needs its API token"))
            .map(drop)
    })
    .await;
    assert!(page_rows(session).await.is_empty(), "rows without a token");
    enter_token(session, "wrong").await;
    until("the page to refuse the wrong token", || async move {
        let shown = session.script(&format!("return {hint};"), json!([])).await;
        shown.as_str().filter(|t| t.contains("refused")).map(drop)
    })
    .await;
    enter_token(session, TOKEN).await;
    until(
        "echo listed and events live with the token",
        || async move {
            let live = session
                .script(
                    "return document.getElementById('live').textContent;",
                    json!([]),
                )
                .await;
            let rows = page_rows(session).await;
            (rows.contains_key("echo") && live == json!("live")).then_some(())
        },
    )
    .await;
    let kept = session
        .script(
            "return sessionStorage.getItem('plugvisor.token');",
            json!([]),
        )
        .await;
    assert_eq!(kept, json!(TOKEN));
}

async fn enter_token(session: &Session, token: &str) {
    let input = session.find("#token").await;
    session.type_into(&input, token).await;
    let submit = session.find("#token-form button[type='submit']").await;
    session.click(&submit).await;
}

async fn save_screenshot(session: &Session) {
    let png = session.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let target = bin_dir().parent().expect("the target dir").to_path_buf();
    let path = target.join("status-page.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} KiB)", path.display(), png.len() / 1024);
}

/// No browser process, worker or server file is left, nor shared memory of Chromium's.
async fn nothing_left(browser: &[u32], workers: &[u32], shm_before: &[PathBuf]) {
    let all: Vec<u32> = browser.iter().chain(workers).copied().collect();
    let gone =
        plugvisor_tests::eventually(Duration::from_secs(10), || still_running(&all).is_empty())
            .await;
    assert!(gone, "still running: {:?}", still_running(&all));
    let new_shm: Vec<PathBuf> = chromium_shm()
        .into_iter()
        .filter(|p| !shm_before.contains(p))
        .collect();
    assert!(new_shm.is_empty(), "Chromium left {new_shm:?}");
}

/// Chromium's shared-memory files (normally unlinked at once).
fn chromium_shm() -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("chromium"))
        .collect()
}

/// Polls `probe` until it gives a value (panics after [`PATIENCE`], naming `what`).
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page's plugin rows by name: `{state, restarts}` as shown.
async fn page_rows(session: &Session) -> serde_json::Map<String, Value> {
    let rows = session
        .script(
            "return Array.from(document.querySelectorAll('#plugins tbody tr[data-plugin]')).map(r => ({ \
               name: r.dataset.plugin, state: r.dataset.state, \
               restarts: r.querySelector('[data-field=restarts]').textContent }));",
            json!([]),
        )
        .await;
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["name"].as_str().unwrap_or("").to_owned(), r.clone()))
        .collect()
}

fn state_in(api: &Value, name: &str) -> Value {
    let plugins = api["plugins"].as_array().into_iter().flatten();
    plugins
        .into_iter()
        .find(|p| p["name"] == json!(name))
        .map(|p| p["state"].clone())
        .unwrap_or(Value::Null)
}

fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/manifests")
}

/// The names in the bundled manifests.
fn bundled_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(bundled_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let doc: toml::Table = toml::from_str(&text).unwrap();
            doc["name"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    names
}

/// `plugvisor serve` on the bundled manifests, its stderr drained, its workers tracked.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    client: Client,
    workers: Vec<u32>,
    run: tempfile::TempDir,
}

impl Server {
    /// Serves the manifests in `dir`, with `token` as the API token if given.
    fn start(dir: &Path, token: Option<&str>) -> Self {
        let run = tempfile::tempdir().unwrap();
        let mut command = Command::new(bin("plugvisor"));
        command
            .args(["serve", "--plugins", dir.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .env_remove("PLUGVISOR_API_TOKEN");
        if let Some(token) = token {
            command.env("PLUGVISOR_API_TOKEN", token);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        // Keep reading, so a chatty server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let url = line.split_whitespace().find(|w| w.starts_with("http://"));
        let url = url.unwrap_or_else(|| panic!("no URL in {line:?}"));
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let client = Client::new(addr);
        let mut server = Self {
            child: Some(child),
            addr,
            client: match token {
                Some(token) => client.with_token(token),
                None => client,
            },
            workers: Vec::new(),
            run,
        };
        server.track();
        server
    }

    /// Remembers the server's current workers.
    fn track(&mut self) {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let children = proc_entries().into_iter().filter(|p| p.ppid == pid);
        self.workers.extend(children.map(|p| p.pid));
    }

    /// SIGTERM, waits for a clean exit; returns every worker pid seen and the server's.
    async fn stop(mut self) -> Vec<u32> {
        self.track();
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "plugvisor serve ended with {status:?}");
        let left: Vec<PathBuf> = files_under(self.run.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/h-"))
            .collect();
        assert!(left.is_empty(), "the server left {left:?}");
        let mut pids = self.workers.clone();
        pids.push(pid.as_raw() as u32);
        pids
    }
}

impl Drop for Server {
    /// A failed test still ends the server, by its PID (its workers die with it).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
