//! Fuzzes the worker's request handling end to end: the fuzz input is sent as raw bytes on a
//! fresh Unix-socket connection to a real in-process worker (`plugvisor_worker::serve`, with a
//! plugin runtime so connections are routed by lane, a transfer directory and a 4 KiB body
//! limit) serving a trivial echo plugin. That covers the lane decision on the first request
//! line, hyper's HTTP/1.1 parsing, bearer auth, routing, body limits, strict JSON bodies, file
//! reference checks, and the NDJSON stream body.
//!
//! After the input the client sends a terminator (it completes any body of up to the limit and
//! then is not a request, so the server answers 400 and closes instead of waiting), half-closes
//! and reads every answer. Checks: each answer is well-formed HTTP/1.1; no answer is a 5xx (the
//! echo plugin never fails, so the only allowed one is `503 unavailable` after this input asked
//! for `/v1/shutdown`); a 200 stream decodes to a clean end with the host's decoder; every answer
//! with a body carries JSON, errors as `{"error": {...}}` with the status of their kind; and a
//! fresh connection still gets `200` from `GET /v1/health` afterwards. A shut-down server is
//! started again before the next input.
//!
//! An early answer (401, 404, 405) to a request whose body was not read used to trip a debug
//! assertion in hyper 1.12 (`can_write_head`, `proto/h1/conn.rs:619`) once the rest of the
//! body and following bytes were parsed as a next request (with `Expect: 100-continue`, or a
//! body shorter than its `Content-Length` completed later); the worker now closes the
//! connection after such an answer (`fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_proto::file_ref::visit_file_refs;
use plugvisor_proto::wire::{ErrorBody, HealthResponse, NDJSON};
use plugvisor_proto::{Plugin, PluginError, PluginStream, Value};
use plugvisor_worker::{serve, CancellationToken, Listener, ServeOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The bearer token of the worker; the seed corpus uses it.
const TOKEN: &str = "fuzz-token";
/// The transfer directory; the seed corpus refers to files in it.
const TRANSFER_DIR: &str = "/tmp/plugvisor-fuzz/transfer";
/// The worker's body limit: small, so the terminator can complete any pending body.
const MAX_BODY: u64 = 4096;
/// How long one exchange may take before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// Echoes its input; opens every file reference in it; streams an array's elements.
#[derive(Default)]
struct Echo {
    config: Mutex<Value>,
}

impl Plugin for Echo {
    fn name(&self) -> &str {
        "fuzz-echo"
    }

    fn version(&self) -> &str {
        "0.0.0"
    }

    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let config = match config {
            None => Value::Object(Default::default()),
            Some(config @ Value::Object(_)) => config,
            Some(_) => return Err(PluginError::invalid_config("the config must be an object")),
        };
        *self.config.lock().expect("config lock") = config;
        Ok(())
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let mut refused = None;
        let walk = visit_file_refs::<String>(&input, &mut |file| {
            plugvisor_worker::files::open(&file).map(drop).map_err(|e| {
                refused = Some(e);
                String::new()
            })
        });
        if let Some(err) = refused {
            return Err(err);
        }
        walk.map_err(PluginError::invalid_input)?;
        Ok(input)
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        let items = match input {
            Value::Array(items) => items,
            other => vec![other],
        };
        Ok(Box::pin(futures_util::stream::iter(
            items.into_iter().map(Ok),
        )))
    }

    fn config_schema(&self) -> Value {
        serde_json::json!({"type": "object"})
    }

    fn current_config(&self) -> Value {
        self.config.lock().expect("config lock").clone()
    }
}

/// The runtimes and the server the inputs go to.
struct Harness {
    /// The server's runtime (accept, control connections).
    server: Runtime,
    /// The plugin runtime (call connections).
    plugins: Runtime,
    socket: PathBuf,
    shutdown: CancellationToken,
    serving: Option<JoinHandle<()>>,
}

impl Harness {
    fn new() -> Self {
        // libFuzzer's `main` is not Rust's: SIGPIPE is not ignored unless we say so.
        // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        make_transfer_dir();
        let dir = std::env::temp_dir().join(format!("plugvisor-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket dir");
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fuzz-server")
            .enable_all()
            .build()
            .expect("server runtime");
        let plugins = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fuzz-plugins")
            .enable_all()
            .build()
            .expect("plugin runtime");
        let mut harness = Self {
            server,
            plugins,
            socket: dir.join("w.sock"),
            shutdown: CancellationToken::new(),
            serving: None,
        };
        harness.start();
        harness
    }

    /// Starts a server on the socket.
    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let addr = plugvisor_worker::ListenAddr::Unix(self.socket.clone());
        let listener = self
            .server
            .block_on(Listener::bind(&addr))
            .expect("bind the worker socket");
        self.shutdown = CancellationToken::new();
        let options = ServeOptions::new(TOKEN)
            .with_plugin_runtime(self.plugins.handle().clone())
            .with_transfer_dir(TRANSFER_DIR)
            .with_max_body(MAX_BODY)
            .with_grace(Duration::from_millis(100));
        let serving = serve(
            listener,
            Arc::new(Echo::default()),
            options,
            self.shutdown.clone(),
        );
        self.serving = Some(self.server.spawn(async move {
            serving.await.expect("the worker serves");
        }));
    }

    /// Waits for a server that was asked to shut down, and starts a new one.
    fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(serving) = self.serving.take() {
            if let Err(e) = self.server.block_on(serving) {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.start();
    }
}

/// The transfer directory with one file of each kind a reference may name.
fn make_transfer_dir() {
    let dir = Path::new(TRANSFER_DIR);
    std::fs::create_dir_all(dir.join("sub")).expect("transfer dir");
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, data).expect("transfer file");
        }
    };
    write("in-1", b"hello");
    write("sub/in-2", b"world");
    let _ = std::os::unix::fs::symlink(dir.join("in-1"), dir.join("link"));
    let fifo = std::ffi::CString::new(format!("{TRANSFER_DIR}/fifo")).expect("no NUL");
    // SAFETY: `fifo` is a valid NUL-terminated path; an existing FIFO is fine.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| Mutex::new(Harness::new()))
}

/// Completes any body up to the limit, ends any head, and is then not a request (400, close).
fn terminator() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut bytes = b"\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + MAX_BODY as usize + 256, b'X');
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes
    })
}

/// Sends `input`, then the terminator, half-closes, and reads until the server closes.
fn exchange(socket: &Path, input: &[u8]) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).expect("connect to the worker");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    conn.set_write_timeout(Some(PATIENCE)).expect("timeout");
    // The server may close early (a bad head, 413): then the rest cannot be written.
    let sent = conn
        .write_all(input)
        .and_then(|()| conn.write_all(terminator()));
    if let Err(e) = sent {
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "the worker stopped reading"
        );
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut answers = Vec::new();
    if let Err(e) = conn.read_to_end(&mut answers) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no end of the answers within {PATIENCE:?}: {:?}",
            String::from_utf8_lossy(&answers)
        );
    }
    answers
}

/// One parsed answer.
struct Answer {
    status: u16,
    /// `Content-Type: application/x-ndjson`.
    stream: bool,
    chunked: bool,
    /// The answer to a `HEAD`: it declares a body it does not carry.
    headless: bool,
    body: Vec<u8>,
}

/// The decoded body of a chunked message at the start of `bytes`, and its length on the wire.
fn chunked(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from this server: the empty line ends the message.
            return (bytes.get(at..at + 2)? == b"\r\n").then_some((body, at + 2));
        }
        body.extend_from_slice(bytes.get(at..at + size)?);
        at += size;
        if bytes.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// Splits the bytes a connection received into answers (final ones; `100 Continue` skipped).
fn parse_answers(mut bytes: &[u8]) -> Vec<Answer> {
    let whole = String::from_utf8_lossy(bytes).into_owned();
    let mut answers = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not an HTTP answer ({other:?}) in {whole:?}"),
        };
        let status = response.code.expect("a complete head has a status");
        // HTTP/1.1, or HTTP/1.0 in answer to an HTTP/1.0 request.
        assert!(matches!(response.version, Some(0 | 1)), "{whole:?}");
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let is_chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: Option<usize> = header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("content-length {v:?}"))
        });
        let rest = &bytes[head_len..];
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let mut headless = false;
        let (body, used) = if is_chunked {
            chunked(rest).unwrap_or_else(|| panic!("a bad chunked body in {whole:?}"))
        } else if let Some(length) = length {
            // An answer to HEAD has the length of a body it does not carry. When the next
            // answer starts right here it is one of those: no body the worker sends starts
            // with `HTTP/1.` (its bodies are JSON). Checked first, since the next answer can
            // be exactly `length` bytes long and so also fit where a body would end (a 404 to
            // HEAD followed by a 400, 103 bytes each, was once read as answer and body).
            let next_at = |n: usize| rest.len() == n || rest[n..].starts_with(b"HTTP/1.");
            let n = if length > 0 && rest.starts_with(b"HTTP/1.") {
                0
            } else if rest.len() >= length && next_at(length) {
                length
            } else if next_at(0) {
                0
            } else {
                panic!("a body shorter than its content-length in {whole:?}")
            };
            headless = n < length;
            (rest[..n].to_vec(), n)
        } else {
            // Neither length nor chunks (a stream to an HTTP/1.0 client): it ends at the close.
            (rest.to_vec(), rest.len())
        };
        let stream = header("content-type").is_some_and(|v| v == NDJSON);
        answers.push(Answer {
            status,
            stream,
            chunked: is_chunked,
            headless,
            body,
        });
        bytes = &rest[used..];
    }
    answers
}

/// Checks one answer of the worker; returns true when it is the `202` of `/v1/shutdown`.
fn check_answer(answer: &Answer, stopping: bool, whole: &str) -> bool {
    let status = answer.status;
    assert!(
        status < 500 || (status == 503 && stopping),
        "a {status} answer to a request the echo plugin cannot fail: {whole:?}"
    );
    assert!(
        !answer.chunked || answer.stream,
        "only streams are chunked: {whole:?}"
    );
    if answer.stream {
        assert_eq!(status, 200, "{whole:?}");
        let decoded = plugvisor_host::fuzzing::decode_ndjson(&[&answer.body]);
        assert!(
            decoded.iter().all(Result::is_ok),
            "the stream does not decode to a clean end: {decoded:?} in {whole:?}"
        );
        return false;
    }
    if answer.headless {
        return false;
    }
    if answer.body.is_empty() {
        // Only hyper's own answers to bytes it cannot read are bare.
        assert!(
            matches!(status, 400 | 414 | 431),
            "a bare {status} answer: {whole:?}"
        );
        return false;
    }
    let json: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("a {status} answer that is not JSON ({e}): {whole:?}"));
    if status >= 400 {
        let error: ErrorBody = serde_json::from_value(json)
            .unwrap_or_else(|e| panic!("a {status} answer without an error body ({e}): {whole:?}"));
        assert_eq!(error.error.kind.http_status(), status, "{whole:?}");
    }
    status == 202
}

/// `GET /v1/health` on a fresh connection: its status.
fn health(socket: &Path) -> Option<String> {
    let request = format!(
        "GET /v1/health HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    );
    let mut conn = UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(PATIENCE)).ok()?;
    conn.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).ok()?;
    let answers = parse_answers(&bytes);
    let [answer] = answers.as_slice() else {
        return None;
    };
    if answer.status != 200 {
        return None;
    }
    let health: HealthResponse = serde_json::from_slice(&answer.body).ok()?;
    Some(health.status)
}

/// `PLUGVISOR_FUZZ_TRACE=1`: print each input's start and the statuses of its answers.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PLUGVISOR_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    let mut harness = harness().lock().unwrap_or_else(|e| e.into_inner());
    let bytes = exchange(&harness.socket, data);
    let whole = String::from_utf8_lossy(&bytes).into_owned();
    let mut stopping = false;
    let answers = parse_answers(&bytes);
    if trace() {
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        eprintln!(
            "{:?} -> {statuses:?}",
            String::from_utf8_lossy(&data[..data.len().min(60)])
        );
    }
    for answer in answers {
        stopping |= check_answer(&answer, stopping, &whole);
    }
    if stopping || harness.shutdown.is_cancelled() {
        harness.restart();
    }
    let status = health(&harness.socket);
    assert_eq!(
        status.as_deref(),
        Some("ok"),
        "the worker no longer answers /v1/health after {:?}",
        String::from_utf8_lossy(data)
    );
});
