//! P15 (a plugin route through the API server against the same work through
//! `POST /api/plugins/execute`, and against the worker's route called directly) and P16
//! (streaming a large answer through a route: throughput and the host's memory).

use crate::baseline::client::HttpConn;
use crate::procs::{status_kib, worker_binary};
use crate::report::{Check, Outcome};
use crate::scenario::{us, Ctx};
use crate::stats::{median, quantile};
use anyhow::{Context, Result};
use bytes::Bytes;
use plugvisor_host::HostConfig;
use plugvisor_manager::api::{serve_api, ApiOptions};
use plugvisor_manager::{ManagerConfig, PluginManager};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A `plugvisor serve`-like server of bundled workers on a loopback port.
pub(crate) struct Server {
    pub(crate) manager: PluginManager,
    pub(crate) addr: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Echo and ticker, with uploads of up to 2 GiB through echo's /count route (P16).
    async fn start(ctx: &Ctx) -> Result<Self> {
        let manifests = [
            manifest("echo", "echo", "[http]\nmax_body_mib = 2048")?,
            manifest("ticker", "ticker", "[http]\nmax_body_mib = 2048")?,
        ];
        Self::serving(ctx, &manifests).await
    }

    /// Serves and loads `manifests` (name, text), in order.
    pub(crate) async fn serving(ctx: &Ctx, manifests: &[(String, String)]) -> Result<Self> {
        let dir = tempfile::tempdir_in(ctx.dir())?;
        for (name, text) in manifests {
            std::fs::write(dir.path().join(format!("{name}.toml")), text)?;
        }
        let manager = PluginManager::new(ManagerConfig {
            manifest_dirs: vec![dir.path().to_path_buf()],
            host: HostConfig {
                base_dir: Some(dir.path().join("host")),
            },
            ..ManagerConfig::default()
        })?;
        for (name, _) in manifests {
            manager.load(name, None).await?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shutdown = CancellationToken::new();
        // The bench's client names the server "bench".
        let mut options = ApiOptions::default();
        options.browser.allowed_hosts.push("bench".to_owned());
        let task = tokio::spawn(serve_api(
            listener,
            manager.clone(),
            options,
            shutdown.clone(),
        ));
        Ok(Self {
            manager,
            addr,
            shutdown,
            task,
            _dir: dir,
        })
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.manager.shutdown().await;
    }
}

/// The manifest of plugin `name` run by the bundled `<worker>-worker`, with `extra` TOML.
///
/// # Errors
/// When the binary is missing.
pub(crate) fn manifest(name: &str, worker: &str, extra: &str) -> Result<(String, String)> {
    let command = worker_binary(worker)?;
    let text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{extra}\n",
        command.display()
    );
    Ok((name.to_owned(), text))
}

/// µs since `start`.
pub(crate) fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

/// P15: `GET /plugins/echo/hello` vs `POST /api/plugins/execute` with the same greeting, on
/// one kept-alive connection each, batches alternating; and the route called directly on the
/// worker (`RemotePlugin::route`), no API server in between.
///
/// # Errors
/// When the server or a request fails.
pub async fn latency(ctx: &Ctx) -> Result<Outcome> {
    let server = Server::start(ctx).await?;
    let mut route_conn = HttpConn::tcp(&server.addr, None).await?;
    let mut api_conn = HttpConn::tcp(&server.addr, None).await?;
    let direct = ctx.host.spawn(ctx.spec("echo")?).await?;
    let body = Bytes::from_static(br#"{"plugin_id":"echo","input":{"message":"Hello from echo"}}"#);
    let (mut routed, mut executed, mut directly) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..=ctx.plan.trials {
        let n = if trial == 0 { 500 } else { ctx.plan.calls };
        let (mut r, mut e, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let start = Instant::now();
            route_conn.get("/plugins/echo/hello").await?;
            r.push(since(start));
        }
        for _ in 0..n {
            let start = Instant::now();
            api_conn.post("/api/plugins/execute", body.clone()).await?;
            e.push(since(start));
        }
        for _ in 0..n {
            let start = Instant::now();
            direct_hello(&direct).await?;
            d.push(since(start));
        }
        if trial > 0 {
            routed.extend(r);
            executed.extend(e);
            directly.extend(d);
        }
    }
    direct.shutdown().await;
    drop((route_conn, api_conn));
    server.stop().await;
    let (p50, base, floor) = (median(&routed), median(&executed), median(&directly));
    let ratio = p50 / base;
    let mut o = Outcome::new(
        "P15",
        "GET /plugins/echo/hello through the API server vs POST /api/plugins/execute (same \
         greeting), and vs the worker's route called directly",
        "p50 <= 1.2 x execute through the API",
    );
    o.measure("p50_us", p50);
    o.measure("p99_us", quantile(&routed, 0.99));
    o.measure("ratio_to_execute", ratio);
    o.measure("ratio_to_direct", p50 / floor);
    o.base("execute_p50_us", base);
    o.base("direct_route_p50_us", floor);
    o.checks
        .push(Check::at_most("p50 / execute-through-API p50", ratio, 1.2));
    o.measured_text = format!("p50 {} ({ratio:.2}x)", us(p50));
    o.baseline_text = format!("execute {}, direct {}", us(base), us(floor));
    Ok(o)
}

async fn direct_hello(plugin: &plugvisor_host::RemotePlugin) -> Result<()> {
    let request = http::Request::get("/hello").body(http_body_util::Empty::<Bytes>::new())?;
    let answer = plugin.route(request).await?;
    let body = http_body_util::BodyExt::collect(answer.into_body()).await?;
    anyhow::ensure!(!body.to_bytes().is_empty(), "empty greeting");
    Ok(())
}

/// P16: `GET /plugins/ticker/bytes?mib=N` through the API server, read as it arrives: the
/// throughput, and how much the host's peak RSS grew while it streamed.
///
/// # Errors
/// When the server or the request fails.
pub async fn streaming(ctx: &Ctx) -> Result<Outcome> {
    let server = Server::start(ctx).await?;
    let mut conn = HttpConn::tcp(&server.addr, None).await?;
    conn.get_counted("/plugins/ticker/bytes?mib=16").await?;
    let mib = (ctx.plan.big_bytes >> 20).max(64);
    // Earlier scenarios raised the peak; start counting from now.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let peak_before = peak_rss_kib()?;
    let start = Instant::now();
    let got = conn
        .get_counted(&format!("/plugins/ticker/bytes?mib={mib}"))
        .await?;
    let seconds = start.elapsed().as_secs_f64();
    let grew_mib = (peak_rss_kib()?.saturating_sub(peak_before)) as f64 / 1024.0;
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let up_before = peak_rss_kib()?;
    let up_start = Instant::now();
    let counted = upload(&server.addr, mib).await;
    let up_seconds = up_start.elapsed().as_secs_f64();
    let up_grew_mib = (peak_rss_kib()?.saturating_sub(up_before)) as f64 / 1024.0;
    drop(conn);
    server.stop().await;
    let counted = counted?;
    anyhow::ensure!(got == mib << 20, "streamed {got} bytes of {}", mib << 20);
    anyhow::ensure!(
        counted == mib << 20,
        "echo counted {counted} bytes of {}",
        mib << 20
    );
    let gbps = got as f64 / seconds / 1e9;
    let up_gbps = counted as f64 / up_seconds / 1e9;
    let mut o = Outcome::new(
        "P16",
        "a route streaming a large answer through the API server (ticker /bytes), read as it \
         arrives; and a large upload streamed to echo /count",
        ">= 1 GB/s; host peak RSS grows < 32 MiB",
    );
    o.measure("gb_per_s", gbps);
    o.measure("mib", mib);
    o.measure("host_peak_rss_growth_mib", grew_mib);
    o.measure("upload_gb_per_s", up_gbps);
    o.measure("upload_host_peak_rss_growth_mib", up_grew_mib);
    o.checks.push(Check::at_least("GB/s", gbps, 1.0));
    o.checks
        .push(Check::at_most("host peak RSS growth, MiB", grew_mib, 32.0));
    o.checks.push(Check::at_most(
        "host peak RSS growth during the upload, MiB",
        up_grew_mib,
        32.0,
    ));
    o.measured_text = format!(
        "down {gbps:.2} GB/s (RSS +{grew_mib:.1} MiB), up {up_gbps:.2} GB/s (RSS +{up_grew_mib:.1} MiB), {mib} MiB each"
    );
    o.baseline_text = "-".to_owned();
    Ok(o)
}

/// Uploads `mib` MiB (64 KiB chunks, generated as sent) to echo's `/count` route on a
/// connection of its own; the byte count echo answers.
async fn upload(addr: &str, mib: u64) -> Result<u64> {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let task = tokio::spawn(connection);
    let chunk = Bytes::from(vec![b'u'; 64 << 10]);
    let count = usize::try_from(mib * 16)?;
    let frames = futures_util::stream::repeat(chunk)
        .take(count)
        .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(c)));
    let request = http::Request::post("/plugins/echo/count")
        .header(http::header::HOST, "bench")
        .header(http::header::CONTENT_LENGTH, (mib << 20).to_string())
        .body(StreamBody::new(frames))?;
    let answer = sender.send_request(request).await?;
    let status = answer.status();
    let body = answer.into_body().collect().await?.to_bytes();
    task.abort();
    anyhow::ensure!(status.is_success(), "upload answered {status}: {body:?}");
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    value["bytes"].as_u64().context("no byte count")
}

/// This process's peak RSS (`VmHWM`), KiB.
fn peak_rss_kib() -> Result<u64> {
    status_kib("self", "VmHWM").context("no VmHWM in /proc/self/status")
}
