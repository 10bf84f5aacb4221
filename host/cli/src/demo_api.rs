//! The demo's REST step: `plugvisor serve`'s API in-process, a file uploaded, gzipped by a
//! plugin and downloaded, the requests the API refuses (a host path, a foreign web page),
//! plugin routes, a middleware (guard) in front of one, the status page with the bundled
//! UI plugin's panel, a scheduled task, the host events echo subscribed to (hooks), a
//! service call between plugins (checkout → pricing) followed by its W3C trace, and a pool of
//! three replicas (its rolling reload and an autoscaling pool: `demo_pools.rs`).

use crate::client::ApiClient;
use anyhow::{ensure, Context};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use plugvisor_manager::api::{serve_api, ApiOptions, CancellationToken};
use plugvisor_manager::{ManagerConfig, PluginManager};
use plugvisor_proto::{json, Value};
use std::path::Path;
use std::time::Instant;

/// Serves the API over a `files` plugin, uses it as a client would, and stops it.
pub(crate) async fn rest_files(
    scratch: &Path,
    worker_dir: &Path,
    say: impl Fn(&str),
) -> anyhow::Result<()> {
    let manifests = scratch.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    for name in [
        "files", "echo", "ticker", "pricing", "checkout", "pool", "elastic",
    ] {
        let worker = if matches!(name, "pool" | "elastic") {
            "chaos"
        } else {
            name
        };
        let command = worker_dir.join(format!("{worker}-worker"));
        let hooks = match name {
            "echo" => ECHO_HOOKS,
            "pricing" => "provides = [\"pricing\"]\n",
            "checkout" => "requires = [\"pricing\"]\n",
            "pool" => "replicas = 3\n",
            "elastic" => crate::demo_pools::ELASTIC,
            _ => "",
        };
        let manifest = format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{hooks}",
            command.display()
        );
        std::fs::write(manifests.join(format!("{name}.toml")), manifest)?;
    }
    let guard = format!(
        "name = \"guard\"\nversion = \"0.1.0\"\nkind = \"middleware\"\ncommand = \"{}\"\n\
         [config]\napi_key = \"{GUARD_KEY}\"\n[middleware]\npaths = [\"/plugins/guard/**\"]\n",
        worker_dir.join("guard-worker").display()
    );
    std::fs::write(manifests.join("guard.toml"), guard)?;
    write_panel_manifest(&manifests, worker_dir)?;
    let clock = format!(
        "name = \"clock\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n\
         [[tasks]]\nname = \"tick\"\nevery = \"{TICK_MS}ms\"\ninput = \"tick\"\n",
        worker_dir.join("echo-worker").display()
    );
    std::fs::write(manifests.join("clock.toml"), clock)?;
    let broken = "name = \"broken\"\nversion = \"0.1.0\"\ncommand = \"no-such-worker\"\n";
    std::fs::write(manifests.join("broken.toml"), broken)?;
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: vec![manifests],
        host: plugvisor_host::HostConfig {
            base_dir: Some(scratch.join("api-run")),
        },
        ..ManagerConfig::default()
    })?;
    let host_dir = manager.host().dir().to_path_buf();
    let mut events = manager.host().events();
    let result = serve_and_use(&manager, scratch, say).await;
    manager.shutdown().await;
    result?;
    ensure!(
        !host_dir.exists(),
        "the API server left {} behind",
        host_dir.display()
    );
    let pids = crate::demo::started_pids(&mut events);
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|p| crate::demo::is_alive(*p))
        .collect();
    ensure!(alive.is_empty(), "API workers {alive:?} are still running");
    Ok(())
}

async fn serve_and_use(
    manager: &PluginManager,
    scratch: &Path,
    say: impl Fn(&str),
) -> anyhow::Result<()> {
    degrades(manager, &say).await?;
    let panel = manager.info(PANEL).is_ok_and(|p| p.loaded);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let client = ApiClient::new(&format!("http://{}", listener.local_addr()?), None)?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_api(
        listener,
        manager.clone(),
        ApiOptions::default(),
        shutdown.clone(),
    ));
    let used = use_files(&client, scratch, &say).await;
    let refused = refusals(&client, &say).await;
    let routed = plugin_routes(&client, &say).await;
    let methods = named_methods(&client, &say).await;
    let served = services(&client, &say).await;
    let traced = traced(&client, &say).await;
    let pooled = pool(&client, &say).await;
    let rolled = crate::demo_pools::rolling_reload(&client, &say).await;
    let scaled = crate::demo_pools::autoscaling(&client, &say).await;
    let guarded = middleware(&client, &say).await;
    let page = status_page(&client, panel, &say).await;
    let ticked = scheduled(manager, &say).await;
    let heard = hooks(&client, manager, &say).await;
    shutdown.cancel();
    server.await.context("the API server task")??;
    used.and(refused)
        .and(routed)
        .and(methods)
        .and(served)
        .and(traced)
        .and(pooled)
        .and(rolled)
        .and(scaled)
        .and(guarded)
        .and(page)
        .and(ticked)
        .and(heard)
}

/// The events the demo's echo subscribes to.
const ECHO_HOOKS: &str = "hooks = [\"plugin_loaded\", \"plugin_unloaded\", \"task_failed\"]\n";

/// What echo heard of the others (loads, and clock's unload by `scheduled`), through its
/// `events` method, and how its deliveries were counted.
async fn hooks(
    client: &ApiClient,
    manager: &PluginManager,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    let call = json!({"plugin_id": "echo", "method": "events", "input": null});
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    // Events arrive in order: once clock's unload is there, the loads before it are too.
    let heard = loop {
        let heard = client
            .json(Method::POST, "/api/plugins/execute", Some(&call))
            .await?["output"]
            .take();
        if heard["counts"]["unloaded"].as_u64() >= Some(1) || Instant::now() > deadline {
            break heard;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let counts = manager
        .info("echo")?
        .hooks
        .context("echo subscribes to no events")?;
    ensure!(
        heard["counts"]["unloaded"] == json!(1) && counts.failed == 0,
        "echo did not hear clock's unload: {heard}, {counts:?}"
    );
    say(&format!(
        "hooks: echo heard {} and {} through POST /v1/events in its own worker ({} delivered, \
         {} dropped, {} failed)",
        heard_line(&heard, "loaded"),
        heard_line(&heard, "unloaded"),
        counts.delivered,
        counts.dropped,
        counts.failed
    ));
    Ok(())
}

/// `loaded ×N (a, b, …)`: how often echo heard `event`, and of whom (oldest first).
fn heard_line(heard: &Value, event: &str) -> String {
    let events = heard["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let about: Vec<&str> = events
        .iter()
        .rev()
        .filter(|e| e["event"] == event)
        .filter_map(|e| e["plugin"].as_str())
        .collect();
    format!("{event} ×{} ({})", heard["counts"][event], about.join(", "))
}

/// Starts every plugin as `serve` does: the one whose binary is missing is failed, with its
/// reason, and the others serve.
async fn degrades(manager: &PluginManager, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let report = manager.start_all().await;
    let reason = report.failed.get("broken").cloned().unwrap_or_default();
    ensure!(
        report.failed.len() == 1 && !reason.is_empty(),
        "expected only `broken` to fail, got {:?}",
        report.failed
    );
    let state = manager.info("broken")?.state;
    say(&format!(
        "serve degrades: {} plugins started; `broken` is {state}: {reason}",
        report.loaded.len()
    ));
    Ok(())
}

/// A named method through the seeds' request bodies.
async fn named_methods(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let chat = json!({"plugin_id": "echo", "method": "shout", "args": ["hi"], "kwargs": {}});
    let shouted = client
        .json(Method::POST, "/api/plugins/execute", Some(&chat))
        .await?;
    let codex = json!({"plugin": "echo", "data": "hi"});
    let echoed = client
        .json(Method::POST, "/api/plugins/execute", Some(&codex))
        .await?;
    say(&format!(
        "named methods: {{plugin_id, method: \"shout\", args, kwargs}} → {}; \
         CodexContinue's {{plugin, data}} → {}",
        shouted["output"], echoed["output"]
    ));
    Ok(())
}

/// checkout prices an order by calling the pricing service through the host, once per line.
async fn services(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let order = json!({"plugin_id": "checkout", "input": {"items": [
        {"sku": "tea", "qty": 2}, {"sku": "apple", "qty": 3}
    ]}});
    let started = Instant::now();
    let priced = client
        .json(Method::POST, "/api/plugins/execute", Some(&order))
        .await?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let lines = priced["output"]["lines"].as_array().map_or(0, Vec::len);
    ensure!(lines == 2, "checkout priced {lines} lines: {priced}");
    say(&format!(
        "services: checkout called the pricing service through the host for each of \
         {lines} lines → {} cents in {took:.1} ms",
        priced["output"]["total_cents"]
    ));
    Ok(())
}

/// The W3C trace an API request runs in: the client's `traceparent` is continued (the answer
/// names it in `traceresponse`) down to checkout and the pricing service it calls.
async fn traced(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    const THEIRS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let order = json!({"plugin_id": "checkout", "input": {"items": [{"sku": "tea"}]}});
    let body = Bytes::from(serde_json::to_vec(&order)?);
    let headers = [
        ("content-type", "application/json"),
        ("traceparent", THEIRS),
    ];
    let answer = client
        .send_raw(Method::POST, "/api/plugins/execute", body, &headers)
        .await?;
    let status = answer.status();
    let back = answer
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(status.is_success(), "the traced order answered {status}");
    ensure!(
        back.starts_with(&THEIRS[..36]) && back != THEIRS,
        "traceresponse {back:?}"
    );
    say(&format!(
        "trace: an order sent with traceparent {}… ran in that trace, in a span of the \
         host's (traceresponse {back}); checkout's and pricing's log lines carry \
         trace_id=4bf92f35… (PLUGVISOR_LOG=info)",
        &THEIRS[..20]
    ));
    Ok(())
}

/// A pool of three chaos workers: three calls at once land on three processes, and a crash
/// on one replica fails only the call on it.
async fn pool(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let call = |input: Value| async move {
        let body = json!({"plugin_id": "pool", "input": input});
        client
            .json(Method::POST, "/api/plugins/execute", Some(&body))
            .await
    };
    let sleep = || call(json!({"fault": "sleep", "ms": 300}));
    let started = Instant::now();
    let answers = futures_util::future::join_all([sleep(), sleep(), sleep()]).await;
    let took = started.elapsed().as_secs_f64() * 1e3;
    let mut pids = Vec::new();
    for answer in answers {
        pids.push(answer?["output"]["pid"].as_u64().unwrap_or_default());
    }
    pids.sort_unstable();
    pids.dedup();
    ensure!(pids.len() == 3, "the pool's calls ran on {pids:?}");
    let crash = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        call(json!({"fault": "abort"})).await
    };
    let (beside, crashed) = tokio::join!(futures_util::future::join_all([sleep(), sleep()]), crash);
    let crashed = crashed.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        crashed.contains("worker_crashed") || crashed.contains("crashed"),
        "{crashed}"
    );
    let survived = beside.into_iter().filter(Result::is_ok).count();
    ensure!(
        survived == 2,
        "{survived} of the 2 calls beside the crash were answered"
    );
    say(&format!(
        "pool: chaos with replicas = 3 took 3 calls of 300 ms at once on 3 processes \
         ({pids:?}) in {took:.0} ms; an abort on one replica failed only its own call, \
         the 2 calls beside it were answered"
    ));
    Ok(())
}

/// The demo clock's period.
const TICK_MS: u64 = 100;

/// The clock plugin (a task every 100 ms, started with the others), watched for a second: its
/// runs and how late they started.
async fn scheduled(manager: &PluginManager, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let mut events = manager.host().events();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut late = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout_at(until, events.recv()).await {
        if let plugvisor_host::EventKind::TaskStarted { late_ms, .. } = event.kind {
            if event.plugin == "clock" {
                late.push(late_ms);
            }
        }
    }
    let task = manager
        .tasks("clock")?
        .into_iter()
        .next()
        .context("clock has no task")?;
    manager.unload("clock", false).await?;
    ensure!(
        task.runs >= 5 && task.failures == 0,
        "the clock task ran badly: {task:?}"
    );
    late.sort_by(f64::total_cmp);
    let p50 = late.get(late.len() / 2).copied().unwrap_or_default();
    let max = late.last().copied().unwrap_or_default();
    say(&format!(
        "scheduled task: clock's `every = \"{TICK_MS}ms\"` ran {} times through its supervisor \
         ({} in the last second); they started late by {p50:.2} ms (p50), {max:.2} ms at most",
        task.runs,
        late.len()
    ));
    Ok(())
}

/// The demo guard's key (configured in its manifest).
const GUARD_KEY: &str = "demo-key";

/// The guard middleware in front of its own route: refused without the key, stamped with it.
async fn middleware(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let path = "/plugins/guard/secret";
    let refused = client
        .send_raw(Method::GET, path, Bytes::new(), &[])
        .await?;
    ensure!(
        refused.status() == 401,
        "the guard let a request without the key through: {}",
        refused.status()
    );
    let key = [("x-api-key", GUARD_KEY)];
    let started = Instant::now();
    let passed = client
        .send_raw(Method::GET, path, Bytes::new(), &key)
        .await?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    let stamp = passed
        .headers()
        .get("x-guarded-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    ensure!(
        passed.status() == 200,
        "the key was refused: {}",
        passed.status()
    );
    say(&format!(
        "middleware: guard answered GET {path} 401 without X-Api-Key; with it, 200 in \
         {took:.1} ms, stamped x-guarded-by: {stamp} (guard ran in its own worker)"
    ));
    Ok(())
}

/// The bundled UI plugin.
const PANEL: &str = "echo-panel";

/// A manifest for the bundled `echo-panel` whose `ui.dir` is the bundled assets, when this
/// build can find them (the bundled manifests directory); otherwise none.
fn write_panel_manifest(manifests: &Path, worker_dir: &Path) -> anyhow::Result<()> {
    let Some(bundled) = crate::resolve::manifest_dirs(&[])
        .ok()
        .and_then(|dirs| dirs.into_iter().next())
    else {
        return Ok(());
    };
    let assets = bundled.join(PANEL);
    if !assets.join("index.html").is_file() {
        return Ok(());
    }
    let command = worker_dir.join(format!("{PANEL}-worker"));
    let manifest = format!(
        "name = \"{PANEL}\"\nversion = \"0.1.0\"\nkind = \"ui\"\ncommand = {:?}\n\
         start = \"lazy\"\nui = {{ dir = {:?}, mount_point = \"sidebar\" }}\n",
        command.display().to_string(),
        std::fs::canonicalize(&assets)?.display().to_string(),
    );
    std::fs::write(manifests.join(format!("{PANEL}.toml")), manifest)?;
    Ok(())
}

/// `GET /` (the status page) and, when loaded, the UI plugin's panel, fetched for real.
async fn status_page(client: &ApiClient, panel: bool, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let page = client.send_raw(Method::GET, "/", Bytes::new(), &[]).await?;
    let status = page.status().as_u16();
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let html = page.into_body().collect().await?.to_bytes();
    let mut size = html.len();
    for asset in ["/ui/status.js", "/ui/status.css"] {
        let answer = client
            .send_raw(Method::GET, asset, Bytes::new(), &[])
            .await?;
        ensure!(answer.status().is_success(), "{asset}: {}", answer.status());
        size += answer.into_body().collect().await?.to_bytes().len();
    }
    ensure!(
        status == 200 && csp.contains("default-src 'none'"),
        "GET / answered {status}"
    );
    let mut line = format!(
        "status page: GET / {status} ({:.1} KiB with its script and style, embedded, CSP \
         default-src 'none')",
        size as f64 / 1024.0
    );
    if panel {
        line.push_str(&panel_line(client).await?);
    } else {
        line.push_str("; the bundled UI plugin was not found, no panel shown");
    }
    say(&line);
    Ok(())
}

/// `, UI panel echo-panel at sidebar (…)`: its mount point from the API, its page served.
async fn panel_line(client: &ApiClient) -> anyhow::Result<String> {
    let info = client
        .json(Method::GET, &format!("/api/plugins/{PANEL}"), None)
        .await?;
    let url = info["ui"]["url"].as_str().context("no ui.url")?.to_owned();
    let answer = client
        .send_raw(Method::GET, &url, Bytes::new(), &[])
        .await?;
    let sandboxed = answer
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|csp| csp.contains("sandbox allow-scripts"));
    ensure!(
        answer.status().is_success() && sandboxed,
        "{url}: {}",
        answer.status()
    );
    Ok(format!(
        ", UI panel {PANEL} at {} ({url} served sandboxed)",
        info["ui"]["mount_point"].as_str().unwrap_or("?")
    ))
}

/// A plugin's own route, and a streamed one (Server-Sent Events), through the server.
async fn plugin_routes(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let started = Instant::now();
    let hello = client
        .json(Method::GET, "/plugins/echo/hello", None)
        .await?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    let events = client
        .send(
            Method::GET,
            "/plugins/ticker/events?n=3&interval_ms=10",
            None,
        )
        .await?;
    let text = events.into_body().collect().await?.to_bytes();
    let count = String::from_utf8_lossy(&text).matches("data: tick").count();
    ensure!(count == 3, "the SSE route sent {count} events, not 3");
    say(&format!(
        "plugin routes: GET /plugins/echo/hello → {hello} in {took:.1} ms (served by echo's \
         worker); GET /plugins/ticker/events streamed {count} Server-Sent Events"
    ));
    Ok(())
}

/// Upload → gzip by reference → download.
async fn use_files(client: &ApiClient, scratch: &Path, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 199) as u8).collect();
    let started = Instant::now();
    let octets = [("content-type", "application/octet-stream")];
    let uploaded = client
        .send_raw(Method::POST, "/api/files", Bytes::from(data), &octets)
        .await?;
    let uploaded: Value =
        serde_json::from_slice(&uploaded.into_body().collect().await?.to_bytes())?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    let input = json!({"op": "gzip", "file": uploaded["ref"]});
    let body = json!({"plugin_id": "files", "input": input});
    let output = client
        .json(Method::POST, "/api/plugins/execute", Some(&body))
        .await?;
    let download = &output["output"]["file"]["$download"];
    let url = download["url"]
        .as_str()
        .context("no $download in the answer")?;
    let fetched = client.send_raw(Method::GET, url, Bytes::new(), &[]).await?;
    let zipped = fetched.into_body().collect().await?.to_bytes();
    std::fs::write(scratch.join("out.gz"), &zipped)?;
    ensure!(zipped.len() as u64 == download["size"].as_u64().unwrap_or(0));
    say(&format!(
        "REST: uploaded 8 MiB in {took:.1} ms (sha256 {}…), gzipped it by handle, downloaded \
         {} bytes once",
        &uploaded["sha256"].as_str().unwrap_or("?")[..12],
        zipped.len()
    ));
    Ok(())
}

/// What an API client or a web page may not do.
async fn refusals(client: &ApiClient, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let shadow = json!({"plugin_id": "files", "input": {"op": "sha256",
        "file": {"$file": {"path": "/etc/shadow", "size": 0}}}});
    let path = kind_of(client, &shadow, &[]).await?;
    let page = [
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ];
    let echo = json!({"plugin_id": "files", "input": {"op": "stat"}});
    let origin = kind_of(client, &echo, &page).await?;
    ensure!(path == "403 file_path_refused" && origin == "403 forbidden_origin");
    say(&format!(
        "REST refuses what a client may not do: /etc/shadow by path → {path}; a POST from a \
         foreign web page → {origin}"
    ));
    Ok(())
}

/// `"<status> <kind>"` of an execute request with `headers`.
async fn kind_of(
    client: &ApiClient,
    body: &Value,
    headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    let bytes = Bytes::from(serde_json::to_vec(body)?);
    let answer = client
        .send_raw(Method::POST, "/api/plugins/execute", bytes, headers)
        .await?;
    let status = answer.status().as_u16();
    let value: Value = serde_json::from_slice(&answer.into_body().collect().await?.to_bytes())?;
    Ok(format!(
        "{status} {}",
        value["error"]["kind"].as_str().unwrap_or("-")
    ))
}
