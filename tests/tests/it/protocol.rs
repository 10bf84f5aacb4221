//! The worker protocol spoken by hand over a Unix socket: auth, errors, file-reference refusals.
//!
//! These bypass the host's proxy on purpose: the worker must defend itself against any client.

use plugvisor_proto::{json, FileRef, Value};
use plugvisor_tests::{bin, eventually, process_state, serially};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TOKEN: &str = "test-token-0123456789";

/// A worker started by hand, with its socket and transfer dir in a tempdir.
struct HandWorker {
    child: Child,
    socket: PathBuf,
    transfer: PathBuf,
    dir: tempfile::TempDir,
}

impl HandWorker {
    fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("w.sock");
        let transfer = dir.path().join("xfer");
        std::fs::create_dir(&transfer).unwrap();
        let mut child = Command::new(bin(&format!("{name}-worker")))
            .arg("--socket")
            .arg(&socket)
            .env("PLUGVISOR_TOKEN", TOKEN)
            .env("PLUGVISOR_TRANSFER_DIR", &transfer)
            .env("PLUGVISOR_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // The plugin's info may follow after a tab (docs/PROTOCOL.md §2).
        let announced = line.trim_end().split('\t').next().unwrap_or_default();
        assert_eq!(announced, format!("plugvisor 1 unix {}", socket.display()));
        Self {
            child,
            socket,
            transfer,
            dir,
        }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut stream = UnixStream::connect(&self.socket).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) and close before reading it all.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse_response(&raw)
    }

    async fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let headers = [
            ("authorization", format!("Bearer {TOKEN}")),
            ("content-length", body.len().to_string()),
        ];
        self.request("POST", path, &headers, body).await
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let pid = self.child.id();
        self.child.wait().unwrap();
        assert!(eventually(Duration::from_secs(2), || process_state(pid).is_none()).await);
        assert!(
            !self.socket.exists(),
            "the worker removes its socket on exit"
        );
        drop(self.dir);
    }
}

fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn kind(body: &Value) -> &str {
    body["error"]["kind"].as_str().unwrap_or("<none>")
}

#[test]
fn auth_is_required_and_checked() {
    serially(async {
        let w = HandWorker::start("echo");
        let (status, body) = w.request("GET", "/v1/health", &[], b"").await;
        assert_eq!((status, kind(&body)), (401, "unauthorized"));
        let wrong = [("authorization", "Bearer nope".to_owned())];
        let (status, body) = w.request("GET", "/v1/health", &wrong, b"").await;
        assert_eq!((status, kind(&body)), (401, "unauthorized"));
        let right = [("authorization", format!("Bearer {TOKEN}"))];
        let (status, body) = w.request("GET", "/v1/health", &right, b"").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        w.stop().await;
    })
}

/// Sends `first` on a fresh keep-alive connection, waits for its answer, then sends `then`;
/// returns everything the connection got before it closed (or went quiet for a second).
async fn one_connection(w: &HandWorker, first: &[u8], then: &[u8]) -> String {
    let mut stream = UnixStream::connect(&w.socket).await.unwrap();
    stream.write_all(first).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&raw).contains("}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            raw.extend_from_slice(&buf[..n]);
        }
    });
    assert!(
        answered.await.is_ok(),
        "no answer to the first request: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let _ = stream.write_all(then).await;
    // Until the server closes, or is quiet for a second (a kept connection).
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The status lines in `raw` (bodies have no trailing newline, so one may follow directly).
fn statuses(raw: &str) -> Vec<&str> {
    raw.match_indices("HTTP/1.1 ")
        .map(|(at, _)| &raw[at..at + 12])
        .collect()
}

#[test]
fn an_answer_before_the_body_was_read_closes_the_connection() {
    serially(async {
        let w = HandWorker::start("echo");
        let health =
            format!("GET /v1/health HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        // Positive control: a complete request keeps the connection for the next one.
        let whole = format!(
            "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: 12\r\n\r\n{{\"input\": 1}}"
        );
        let kept = one_connection(&w, whole.as_bytes(), health.as_bytes()).await;
        assert_eq!(statuses(&kept), ["HTTP/1.1 200", "HTTP/1.1 200"], "{kept}");
        // A wrong token with most of the body unsent (and Expect: 100-continue): the 401 comes
        // at once and says the connection closes, so the rest of the body and what follows
        // (here a request, then garbage, which made hyper trip over its own state when it
        // answered a parse error after an early answer) are never read as requests.
        let early = "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer nope\r\n\
                     expect: 100-continue\r\ncontent-length: 40\r\n\r\n{\"in";
        let rest = format!("put\": 1}}{}{health}NOT HTTP\r\n\r\n", " ".repeat(24));
        let closed = one_connection(&w, early.as_bytes(), rest.as_bytes()).await;
        assert_eq!(statuses(&closed), ["HTTP/1.1 401"], "{closed}");
        assert!(closed.contains("connection: close"), "{closed}");
        // The worker still serves.
        let right = [("authorization", format!("Bearer {TOKEN}"))];
        let (status, _) = w.request("GET", "/v1/health", &right, b"").await;
        assert_eq!(status, 200);
        w.stop().await;
    })
}

#[test]
fn client_mistakes_get_typed_4xx_answers() {
    serially(async {
        let w = HandWorker::start("echo");
        let (status, body) = w.post("/v1/execute", b"{not json").await;
        assert_eq!((status, kind(&body)), (400, "bad_request"));
        let (status, body) = w.post("/v1/execute", br#"{"inptu": 1}"#).await;
        assert_eq!((status, kind(&body)), (400, "bad_request"));
        let (status, body) = w.post("/v1/nope", b"{}").await;
        assert_eq!((status, kind(&body)), (404, "not_found"));
        let (status, body) = w
            .post("/v1/initialize", br#"{"config": {"mode": "shout"}}"#)
            .await;
        assert_eq!((status, kind(&body)), (422, "invalid_config"));
        let (status, body) = w.post("/v1/execute", br#"{"input": "still alive"}"#).await;
        assert_eq!((status, &body["output"]), (200, &json!("still alive")));
        w.stop().await;
    })
}

#[test]
fn oversized_bodies_get_413() {
    serially(async {
        let w = HandWorker::start("echo");
        let huge = vec![b' '; 65 * 1024 * 1024];
        let (status, body) = w.post("/v1/execute", &huge).await;
        assert_eq!((status, kind(&body)), (413, "payload_too_large"));
        w.stop().await;
    })
}

/// `body` in HTTP/1.1 chunked encoding, `size` bytes per chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A call body without a `Content-Length`, in small chunks: the worker reads a plain string
/// piece by piece into its `String`, a string with escapes through the JSON parser, and a
/// body past the limit is refused while it is read.
#[test]
fn chunked_call_bodies_are_read_piece_by_piece_and_limited() {
    serially(async {
        let w = HandWorker::start("echo");
        let headers = [
            ("authorization", format!("Bearer {TOKEN}")),
            ("transfer-encoding", "chunked".to_owned()),
        ];
        let long = "z".repeat(100_000);
        for input in [json!(long), json!("a\"b\\c\n"), json!({"k": ["v", 1]})] {
            let body = json!({ "input": input }).to_string();
            for size in [3, 7, 4096] {
                let (status, answer) = w
                    .request(
                        "POST",
                        "/v1/execute",
                        &headers,
                        &chunked(body.as_bytes(), size),
                    )
                    .await;
                assert_eq!(
                    (status, &answer["output"]),
                    (200, &input),
                    "chunks of {size}"
                );
            }
        }
        let mut huge = b"{\"input\":\"".to_vec();
        huge.resize(65 * 1024 * 1024, b'y');
        let (status, body) = w
            .request("POST", "/v1/execute", &headers, &chunked(&huge, 1 << 20))
            .await;
        assert_eq!((status, kind(&body)), (413, "payload_too_large"));
        w.stop().await;
    })
}

async fn refused(w: &HandWorker, file: FileRef) -> (u16, String) {
    let body = json!({"input": {"op": "sha256", "file": file}});
    let (status, answer) = w.post("/v1/execute", body.to_string().as_bytes()).await;
    (
        status,
        format!("{} {}", kind(&answer), answer["error"]["message"]),
    )
}

#[test]
fn file_refs_outside_the_transfer_dir_are_refused() {
    serially(async {
        let w = HandWorker::start("files");
        let outside = w.dir.path().join("outside.txt");
        std::fs::write(&outside, b"secret").unwrap();
        let inside = w.transfer.join("ok.txt");
        std::fs::write(&inside, b"fine").unwrap();
        let link = w.transfer.join("link.txt");
        std::os::unix::fs::symlink(&outside, &link).unwrap();

        for (what, path) in [
            ("absolute path elsewhere", outside.clone()),
            ("dot-dot", w.transfer.join("../outside.txt")),
            ("symlink", link.clone()),
            ("directory", w.transfer.clone()),
            ("missing", w.transfer.join("missing.txt")),
        ] {
            let (status, msg) = refused(&w, FileRef::new(&path, 1)).await;
            assert_eq!(status, 403, "{what}: {msg}");
            assert!(msg.starts_with("file_access_denied"), "{what}: {msg}");
        }
        let (status, body) = w
            .post(
                "/v1/execute",
                json!({"input": {"op": "sha256", "file": FileRef::new(&inside, 4)}})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"]["size"], json!(4));
        w.stop().await;
    })
}

#[test]
fn a_worker_run_by_hand_without_arguments_explains_itself() {
    serially(async {
        let out = Command::new(bin("echo-worker"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--listen"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
    })
}
