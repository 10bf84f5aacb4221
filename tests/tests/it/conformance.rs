//! `plugvisor conformance` as a user runs it: it passes the bundled echo worker, exercises
//! cancellation on the ticker, and fails — naming the right check — on deliberately broken
//! workers, whose unbroken twin passes that same check (so no check passes by construction).
//! Every run ends with an audit: the workers it started are gone, nothing is left on disk.

use plugvisor_tests::{bin, files_under, group_alive, process_state, serially};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A small worker in plain Python (no SDK) that follows the protocol closely enough for the
/// checks below, with one flaw chosen by its first argument.
const SCRIPT_WORKER: &str = r#"
import json, os, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler

flaw = sys.argv[1]
if "--socket" not in sys.argv:
    if flaw == "usage-waits":
        sys.stdin.read()
    print("usage: worker.py FLAW --socket PATH", file=sys.stderr)
    sys.exit(2)
sock = sys.argv[sys.argv.index("--socket") + 1]
token = os.environ.pop("PLUGVISOR_TOKEN")
transfer = os.environ["PLUGVISOR_TRANSFER_DIR"]
max_body = int(os.environ["PLUGVISOR_MAX_BODY"])

def refs(value):
    if isinstance(value, dict):
        if "$file" in value:
            yield value["$file"].get("path", "")
        else:
            for v in value.values():
                yield from refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from refs(v)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
    def error(self, status, kind, headers=()):
        self.answer(status, {"error": {"kind": kind, "message": self.path}}, headers)
    def stream(self, body):
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict) or set(request) != {"input"}:
            return self.error(400, "bad_request")
        frames = b'{"item": 1}\n' + (b"" if flaw == "no-terminal" else b'{"end": {"count": 1}}\n')
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(frames), frames))
    def execute(self, body):
        request = json.loads(body)
        for path in refs(request):
            if flaw != "no-confinement" and not path.startswith(transfer + "/"):
                return self.answer(403, {"error": {"kind": "file_access_denied",
                                                   "message": path + ": outside"}})
        self.answer(200, {"output": request.get("input")})
    def handle_any(self, method):
        length = int(self.headers.get("content-length") or 0)
        if length > max_body and flaw != "no-limit":
            self.close_connection = True
            return self.error(413, "payload_too_large", [("Connection", "close")])
        body = self.rfile.read(length) if length else b""
        if flaw != "any-token" and self.headers.get("authorization") != "Bearer " + token:
            return self.error(401, "unauthorized", [("WWW-Authenticate", "Bearer")])
        if self.path == "/v1/health" and method == "GET":
            health = {"status": "ok", "in_flight": 0, "calls_total": 0, "pid": os.getpid()}
            if flaw == "bad-shape":
                del health["calls_total"]
            return self.answer(200, health)
        if self.path == "/v1/info" and method == "GET":
            return self.answer(200, {"name": "script", "version": "0.1.0", "protocol": 1,
                "config_schema": {"type": "object"}, "capabilities": ["execute", "stream"],
                "pid": os.getpid()})
        if self.path == "/v1/execute" and method == "POST":
            return self.execute(body)
        if self.path == "/v1/execute_stream" and method == "POST":
            return self.stream(body)
        if self.path == "/v1/shutdown" and method == "POST":
            self.answer(202, {"status": "stopping"})
            os.unlink(sock)
            threading.Timer(0.1, os._exit, [0]).start()
            return
        if flaw == "wrong-status":
            return self.answer(200, {})
        self.error(404, "not_found")
    def do_GET(self):
        self.handle_any("GET")
    def do_POST(self):
        self.handle_any("POST")

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

server = Server(sock, Handler)
os.chmod(sock, 0o600)
print("plugvisor 1 unix " + sock, flush=True)
if flaw == "stdout":
    print("a line on stdout after the handshake", flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
if flaw == "ignores-eof":
    threading.Event().wait()
os.unlink(sock)
"#;

/// Runs `plugvisor conformance --json ARGS` with its directories under `base`.
fn conformance(args: &[&str], base: &Path) -> (Output, Value) {
    let out = Command::new(bin("plugvisor"))
        .arg("conformance")
        .arg("--json")
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", base)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// The checks of `report` whose name contains `needle`, as (result, why).
fn results(report: &Value, needle: &str) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"].as_str().unwrap().contains(needle))
        .map(|c| {
            let why = c["why"].as_str().unwrap_or_default().to_owned();
            (c["result"].as_str().unwrap().to_owned(), why)
        })
        .collect()
}

/// The workers the run started are gone (process and group) and `base` is empty.
fn audit(report: &Value, base: &Path) {
    let pids: Vec<u32> = report["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
        .collect();
    assert!(!pids.is_empty(), "the report lists no worker pids");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| process_state(p).is_some() || group_alive(p))
            .collect();
        let left = files_under(base);
        if alive.is_empty() && left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {alive:?}, files {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn script_worker(dir: &Path) -> String {
    let path = dir.join("worker.py");
    std::fs::write(&path, SCRIPT_WORKER).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn the_echo_worker_passes_and_nothing_is_left() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let echo = bin("echo-worker");
        let (out, report) = conformance(&["--", echo.to_str().unwrap()], base.path());
        assert!(
            out.status.success(),
            "{}",
            serde_json::to_string_pretty(&report).unwrap()
        );
        assert_eq!(report["failed"], 0);
        assert!(report["passed"].as_u64().unwrap() >= 40, "{report}");
        let cancel = results(&report, "closing the connection");
        assert_eq!(cancel[0].0, "skip", "{cancel:?}");
        assert!(cancel[0].1.contains("--slow-input"), "{cancel:?}");
        audit(&report, base.path());
    })
}

#[test]
fn cancellation_is_checked_on_a_slow_stream() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let ticker = bin("ticker-worker");
        let slow = r#"{"n": 100, "interval_ms": 50}"#;
        let args = [
            "--slow-input",
            slow,
            "--input",
            r#"{"n": 2}"#,
            "--",
            ticker.to_str().unwrap(),
        ];
        let (out, report) = conformance(&args, base.path());
        assert!(out.status.success(), "{report:#}");
        assert_eq!(results(&report, "closing the connection")[0].0, "pass");
        audit(&report, base.path());
    })
}

/// Each flaw fails the check named after it, and the same check passes without the flaw.
#[test]
fn broken_workers_fail_the_check_named_after_their_flaw() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let scripts = tempfile::tempdir().unwrap();
        let worker = script_worker(scripts.path());
        let cases = [
            ("any-token", "401 for a wrong token"),
            ("wrong-status", "GET on an unknown path is 404"),
            ("bad-shape", "GET /v1/health (HealthResponse"),
            ("stdout", "nothing else on stdout after the handshake"),
            ("ignores-eof", "end of stdin: exit 0"),
            (
                "usage-waits",
                "no listen address: a usage line on stderr, exit 2",
            ),
            ("no-terminal", "NDJSON frames and one terminal frame"),
            ("no-confinement", "outside the transfer directory is 403"),
            ("no-limit", "Content-Length over the limit is 413"),
        ];
        let run = |flaw: &str| {
            conformance(
                &["--timeout", "2", "--", "python3", &worker, flaw],
                base.path(),
            )
        };
        let (_, control) = run("none");
        audit(&control, base.path());
        for (flaw, check) in cases {
            let got = results(&control, check);
            assert_eq!(got.len(), 1, "{check}: {got:?}");
            assert_eq!(got[0].0, "pass", "without a flaw, {check}: {control:#}");
            let (out, report) = run(flaw);
            assert!(!out.status.success(), "{flaw}: the kit passed it");
            let got = results(&report, check);
            assert_eq!(got[0].0, "fail", "{flaw}: {check}: {report:#}");
            audit(&report, base.path());
        }
    })
}

#[test]
fn bad_commands_are_named() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let out = Command::new(bin("plugvisor"))
            .args(["conformance", "--", "/no/such/worker"])
            .env("PLUGVISOR_RUNTIME_DIR", base.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/no/such/worker") && err.contains("does not exist"),
            "{err}"
        );
        // A worker that never handshakes: the handshake check fails with its stderr tail.
        let args = [
            "--start-timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo stuck >&2; sleep 30",
        ];
        let (out, report) = conformance(&args, base.path());
        assert!(!out.status.success());
        let handshake = results(&report, "plugvisor 1 unix");
        assert_eq!(handshake[0].0, "fail");
        assert!(
            handshake[0].1.contains("within 1s") && handshake[0].1.contains("stuck"),
            "{handshake:?}"
        );
        assert!(files_under(base.path()).is_empty());
    })
}
