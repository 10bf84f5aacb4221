//! Test harness: a scriptable test plugin, an in-process server on a Unix socket in a
//! tempdir, and small HTTP clients (hyper and raw bytes).

// Test support: a failed unwrap here is a failed test, with a backtrace.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::HealthResponse;
use plugvisor_proto::{json, FileRef, Plugin, PluginError, PluginStream, Value};
use plugvisor_worker::{serve, ListenAddr, Listener, ServeOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";

/// A plugin whose behaviour the input selects.
#[derive(Default)]
pub struct Scripted {
    pub calls: AtomicU64,
    pub dropped: AtomicU64,
    pub cleanups: AtomicU64,
    pub gate: Notify,
}

/// Counts a drop of the call future or stream it lives in.
struct DropCounter<'a>(&'a AtomicU64);

impl Drop for DropCounter<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Plugin for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn version(&self) -> &str {
        "0.0.1"
    }
    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        match config {
            Some(c) if c.get("bad").is_some() => {
                Err(PluginError::invalid_config("bad: not allowed"))
            }
            _ => Ok(()),
        }
    }
    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _count_drop = DropCounter(&self.dropped);
        if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if input.get("wait").is_some() {
            self.gate.notified().await;
        }
        if let Some(msg) = input.get("panic").and_then(Value::as_str) {
            panic!("{msg}");
        }
        if let Some(msg) = input.get("fail").and_then(Value::as_str) {
            return Err(PluginError::failed(msg));
        }
        if let Some(msg) = input.get("invalid").and_then(Value::as_str) {
            return Err(PluginError::invalid_input(msg));
        }
        if let Some(file) = input.get("read") {
            return read_file(file);
        }
        Ok(json!({"echo": input}))
    }
    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if input.get("panic_early").is_some() {
            panic!("exploded before streaming");
        }
        let n = input.get("n").and_then(Value::as_u64).unwrap_or(3);
        let fail_at = input.get("fail_at").and_then(Value::as_u64);
        let panic_at = input.get("panic_at").and_then(Value::as_u64);
        let interval = input
            .get("interval_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let items = stream::iter(0..n).then(move |i| async move {
            if interval > 0 {
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
            assert!(Some(i) != panic_at, "stream exploded at {i}");
            if Some(i) == fail_at {
                return Err(PluginError::failed(format!("failed at {i}")));
            }
            Ok(json!(i))
        });
        Ok(Box::pin(items))
    }
    async fn cleanup(&self) -> Result<(), PluginError> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn read_file(value: &Value) -> Result<Value, PluginError> {
    use std::io::Read;
    let file = FileRef::from_value(value)
        .map_err(PluginError::invalid_input)?
        .ok_or_else(|| PluginError::invalid_input("read: expected a file reference"))?;
    let mut text = String::new();
    plugvisor_worker::files::open(&file)?
        .read_to_string(&mut text)
        .map_err(PluginError::failed)?;
    Ok(json!({"text": text}))
}

/// Set once a server with a transfer directory has started in this process.
static TRANSFER_DIR_TAKEN: AtomicBool = AtomicBool::new(false);

/// A server running in this test's runtime.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// A directory for file references; the server's transfer directory only when started
    /// by [`TestServer::start_with_transfer_dir`].
    pub transfer: PathBuf,
    pub plugin: Arc<Scripted>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), plugvisor_worker::WorkerError>>,
}

impl TestServer {
    /// A server without a transfer directory.
    pub async fn start() -> Self {
        Self::start_with(|o| o).await
    }

    /// A server without a transfer directory, with `tune`d options.
    pub async fn start_with(tune: impl FnOnce(ServeOptions) -> ServeOptions) -> Self {
        Self::start_inner(false, tune).await
    }

    /// A server whose transfer directory is `transfer`, which then also becomes the
    /// process-global `plugvisor_worker::files::transfer_dir` for good (the first one in a
    /// process wins). So at most one test per test binary may call this: tests run side by
    /// side in one process, and a second caller would find the first one's directory there,
    /// whatever the order; a lock could not undo that. Panics when called twice.
    pub async fn start_with_transfer_dir() -> Self {
        let taken = TRANSFER_DIR_TAKEN.swap(true, Ordering::SeqCst);
        assert!(
            !taken,
            "only one test per binary may serve with a transfer directory"
        );
        Self::start_inner(true, |o| o).await
    }

    async fn start_inner(
        with_transfer_dir: bool,
        tune: impl FnOnce(ServeOptions) -> ServeOptions,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("w.sock");
        let transfer = dir.path().join("transfer");
        std::fs::create_dir(&transfer).unwrap();
        let mut options = ServeOptions::new(TOKEN);
        if with_transfer_dir {
            options = options.with_transfer_dir(&transfer);
        }
        let options = tune(options);
        let listener = Listener::bind(&ListenAddr::Unix(socket.clone()))
            .await
            .unwrap();
        let plugin = Arc::new(Scripted::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&plugin),
            options,
            shutdown.clone(),
        ));
        Self {
            dir,
            socket,
            transfer,
            plugin,
            shutdown,
            task,
        }
    }

    /// Stops the server and checks it left no socket file behind.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        assert!(!self.socket.exists(), "socket file left behind");
    }

    pub async fn call(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let req = request(method, path, Some(TOKEN), body);
        let resp = send(&self.socket, req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    pub async fn health(&self) -> HealthResponse {
        let (status, value) = self.call("GET", "/v1/health", "").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_value(value).unwrap()
    }

    /// Polls health until `in_flight == n`, failing after a deadline.
    pub async fn wait_in_flight(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let health = self.health().await;
            if health.in_flight == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "in_flight stuck at {} (want {n})",
                health.in_flight
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "worker");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// Sends one request on a fresh connection.
pub async fn send(socket: &Path, req: Request<Full<Bytes>>) -> hyper::Response<Incoming> {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// Sends one request on a fresh connection, reporting connection errors.
pub async fn try_send(
    socket: &Path,
    req: Request<Full<Bytes>>,
) -> hyper::Result<hyper::Response<Incoming>> {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}

/// Writes `raw` on a fresh connection and reads until the server closes it.
pub async fn raw(socket: &Path, raw: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of an error answer, checked for the documented shape.
pub fn error_kind(value: &Value) -> &str {
    assert!(value["error"]["message"].is_string(), "{value}");
    value["error"]["kind"].as_str().unwrap()
}
