//! The example worker binaries end to end: spawned as the host would (token by environment,
//! stdin pipe watched), called over their Unix socket, stopped by closing stdin.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::{Handshake, Transport};
use plugvisor_proto::{json, FileRef, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) const TOKEN: &str = "plugins-test-token";

/// A running worker binary in its own tempdir.
pub(crate) struct Worker {
    child: Child,
    socket: PathBuf,
    transfer: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    pub(crate) async fn start(exe: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let transfer = dir.path().join("transfer");
        std::fs::create_dir(&transfer).unwrap();
        let mut child = Command::new(exe)
            .arg("--socket")
            .arg(dir.path().join("w.sock"))
            .env("PLUGVISOR_TOKEN", TOKEN)
            .env("PLUGVISOR_TRANSFER_DIR", &transfer)
            .env("PLUGVISOR_WATCH_STDIN", "1")
            .env("PLUGVISOR_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
            .await
            .expect("no handshake")
            .unwrap();
        let Transport::Unix(socket) = Handshake::parse(&line).unwrap().transport else {
            panic!("{line}")
        };
        Self {
            child,
            socket,
            transfer,
            _dir: dir,
        }
    }

    /// POSTs `body` to `path`; returns the status and the raw body.
    async fn post(&self, path: &str, body: Value) -> (u16, Bytes) {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let io = TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header("host", "worker")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    pub(crate) async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, bytes) = self.post(path, body).await;
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// Closes stdin, as a dying host does, and expects a clean exit without leftovers.
    pub(crate) async fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the worker did not exit")
            .unwrap();
        assert!(status.success(), "{status}");
        assert!(!self.socket.exists(), "socket left behind");
        let left: Vec<_> = std::fs::read_dir(&self.transfer).unwrap().collect();
        assert!(left.is_empty(), "transfer dir not empty: {left:?}");
    }
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn echo_worker_configures_executes_and_streams() {
    let w = Worker::start(env!("CARGO_BIN_EXE_echo-worker")).await;
    let (status, info) = w
        .post_json("/v1/initialize", json!({"config": {"mode": "upper"}}))
        .await;
    assert_eq!(
        (status, info),
        (200, json!({"config": {"mode": "upper", "prefix": ""}}))
    );
    let (status, bad) = w
        .post_json("/v1/initialize", json!({"config": {"mode": "shout"}}))
        .await;
    assert_eq!(
        (status, &bad["error"]["kind"]),
        (422, &json!("invalid_config"))
    );
    let (status, out) = w
        .post_json("/v1/execute", json!({"input": {"a": ["x", 1]}}))
        .await;
    assert_eq!((status, out), (200, json!({"output": {"a": ["X", 1]}})));
    let (status, body) = w
        .post("/v1/execute_stream", json!({"input": "to be"}))
        .await;
    assert_eq!(status, 200);
    let want = vec![
        json!({"item": "TO"}),
        json!({"item": "BE"}),
        json!({"end": {"count": 2}}),
    ];
    assert_eq!(lines(&body), want);
    w.stop().await;
}

#[tokio::test]
async fn ticker_worker_streams_many_items() {
    let w = Worker::start(env!("CARGO_BIN_EXE_ticker-worker")).await;
    let (status, body) = w
        .post(
            "/v1/execute_stream",
            json!({"input": {"n": 100_000, "bytes": 8}}),
        )
        .await;
    assert_eq!(status, 200);
    let frames = lines(&body);
    assert_eq!(frames.len(), 100_001);
    assert_eq!(frames[0], json!({"item": "xxxxxxxx"}));
    assert_eq!(frames[100_000], json!({"end": {"count": 100_000}}));
    let (status, err) = w
        .post_json("/v1/execute_stream", json!({"input": {}}))
        .await;
    assert_eq!(
        (status, &err["error"]["message"]),
        (400, &json!("n: required"))
    );
    w.stop().await;
}

#[tokio::test]
async fn files_worker_reads_in_place_and_hands_back_outputs() {
    let w = Worker::start(env!("CARGO_BIN_EXE_files-worker")).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
    let input = w.transfer.join("in-1");
    std::fs::write(&input, &data).unwrap();
    let file = FileRef::new(&input, data.len() as u64).to_value();
    let (status, out) = w
        .post_json(
            "/v1/execute",
            json!({"input": {"op": "stat", "file": file}}),
        )
        .await;
    assert_eq!((status, out), (200, json!({"output": {"size": 200_000}})));
    let (status, out) = w
        .post_json(
            "/v1/execute",
            json!({"input": {"op": "gzip", "file": file}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let gz = FileRef::from_value(&out["output"]["file"])
        .unwrap()
        .unwrap();
    assert_eq!(gz.path.parent().unwrap(), w.transfer);
    let mut back = Vec::new();
    let compressed = std::fs::File::open(&gz.path).unwrap();
    flate2::read::GzDecoder::new(compressed)
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
    // The host adopts outputs and inputs alike: it deletes both when the call is done.
    std::fs::remove_file(&gz.path).unwrap();
    std::fs::remove_file(&input).unwrap();
    let outside = FileRef::new(Path::new("/etc/hostname"), 1).to_value();
    let (status, err) = w
        .post_json(
            "/v1/execute",
            json!({"input": {"op": "sha256", "file": outside}}),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["kind"]),
        (403, &json!("file_access_denied"))
    );
    w.stop().await;
}
