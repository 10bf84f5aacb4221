"""Shared test helpers: start workers as the host does, a raw HTTP client, the `plugvisor` binary."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "plugins"
REPO = HERE.parent.parent.parent


def plugin_script(name: str) -> str:
    return str(PLUGINS / f"{name}.py")


def plugvisor_bin() -> Path:
    """The `plugvisor` binary: $PLUGVISOR_BIN, else a prebuilt one in the checkout's `.bin/`
    (untracked; its `*-worker` binaries beside it), else target/debug (or release)."""
    explicit = os.environ.get("PLUGVISOR_BIN")
    if explicit:
        return Path(explicit)
    prebuilt = REPO / ".bin" / "plugvisor"
    if prebuilt.is_file():
        return prebuilt
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "plugvisor"
        if candidate.is_file():
            return candidate
    pytest.fail(
        "no plugvisor binary: build it with `cargo build -p plugvisor-cli --bins` "
        "or set PLUGVISOR_BIN"
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, every: float = 0.02) -> Any:
    """Polls `predicate` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(every)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> List[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


# ----------------------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def frames(self) -> List[Any]:
        return [json.loads(line) for line in self.body.decode().splitlines()]


class Raw:
    """A minimal HTTP/1.1 client on one connection, for exact control over the bytes."""

    def __init__(self, address: str, token: Optional[str], tls: Any = None, server_name: str = "localhost") -> None:
        if address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(address)
        else:
            host, port = address.rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
            if tls is not None:  # an `ssl.SSLContext`: the connection speaks TLS
                self.sock = tls.wrap_socket(self.sock, server_hostname=server_name)
        self.sock.settimeout(10)
        self.token = token
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        auth: bool = True,
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", "host: w"]
        if auth and self.token is not None:
            lines.append(f"authorization: Bearer {self.token}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None and "transfer-encoding" not in {k.lower() for k in (headers or {})}:
            lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sock.sendall(head + (body or b""))

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send(method, path, body, **kw)
        return self.answer(head_only=method == "HEAD")

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def answer(self, head_only: bool = False) -> Answer:
        while True:
            status_line = self._line().decode()
            status = int(status_line.split(" ")[1])
            headers: Dict[str, str] = {}
            while True:
                line = self._line().decode("latin-1")
                if not line:
                    break
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            if status != 100:
                break
        if head_only or status in (204, 304):
            return Answer(status, headers, b"")
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed mid-chunk")
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
            return Answer(status, headers, body)
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._fill():
                    raise ConnectionError("closed mid-body")
            body, self.buf = self.buf[:n], self.buf[n:]
            return Answer(status, headers, body)
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return Answer(status, headers, body)

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True when the worker closes the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            return False


# ----------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """A worker process started the way the host starts one."""

    proc: subprocess.Popen
    address: str
    token: str
    transfer: Path
    markers: Path
    handshake: str
    stderr_lines: List[str] = field(default_factory=list)
    stdout_rest: List[bytes] = field(default_factory=list)

    def conn(self, token: Optional[str] = "") -> Raw:
        return Raw(self.address, self.token if token == "" else token)

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        c = self.conn()
        try:
            return c.request(method, path, body, **kw)
        finally:
            c.close()

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _drain(stream: Any, sink: List[Any], text: bool) -> None:
    for line in iter(stream.readline, b""):
        sink.append(line.decode("utf-8", "replace") if text else line)
    stream.close()


def start_worker(
    tmp_path: Path,
    script: str,
    *,
    env: Optional[Dict[str, str]] = None,
    tcp: bool = False,
    transfer: bool = True,
    watch_stdin: bool = True,
    extra_args: Tuple[str, ...] = (),
) -> Worker:
    """Spawns `script` with a socket (or TCP) address, a token in the environment and a
    transfer directory, and waits for its handshake line."""
    token = secrets.token_hex(16)
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    xfer = tmp_path / "xfer"
    xfer.mkdir(exist_ok=True)
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    sock = run / f"w-{secrets.token_hex(3)}.sock"
    address = "tcp://127.0.0.1:0" if tcp else f"unix:{sock}"
    full_env = dict(os.environ)
    full_env.update({"PLUGVISOR_TOKEN": token, "MARKER_DIR": str(markers)})
    if transfer:
        full_env["PLUGVISOR_TRANSFER_DIR"] = str(xfer)
    if watch_stdin:
        full_env["PLUGVISOR_WATCH_STDIN"] = "1"
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, script, "--listen", address, *extra_args],
        env=full_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    line = proc.stdout.readline().decode()
    worker = Worker(proc, "", token, xfer, markers, line)
    threading.Thread(target=_drain, args=(proc.stderr, worker.stderr_lines, True), daemon=True).start()
    if not line.startswith("plugvisor 1 "):
        proc.kill()
        proc.wait()
        time.sleep(0.1)
        raise AssertionError(f"bad handshake {line!r}: {worker.stderr()}")
    threading.Thread(target=_drain, args=(proc.stdout, worker.stdout_rest, False), daemon=True).start()
    parts = line.split()
    worker.address = parts[3]
    return worker


@pytest.fixture
def worker_factory(tmp_path: Path):
    started: List[Worker] = []

    def make(script: str = "kitchen", **kw: Any) -> Worker:
        w = start_worker(tmp_path, plugin_script(script), **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        try:
            os.killpg(w.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def kitchen(worker_factory) -> Worker:
    return worker_factory("kitchen")
