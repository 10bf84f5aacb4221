"""The host service client (`plugvisor.host()`) against a scripted endpoint on a Unix socket:
the requests it sends (path encoding, body, token, call context from threads and tasks), how it
reads answers and errors (the Rust runtime's wire mapping), streams (items, error frames, cut
streams), keep-alive reuse, cancellation, and the environment it comes from."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import pytest

import plugvisor
from plugvisor import _host
from plugvisor._calls import Call, reset_current, set_current
from plugvisor._errors import error_from_wire, own
from plugvisor._host import HostClient, service_path

from conftest import wait_for

TOKEN = "s3cret-token"
CRASH = {
    "plugin": "victim",
    "pid": 4242,
    "exit": {"signal": {"number": 6, "name": "SIGABRT", "core_dumped": False}},
    "cause": "abort",
    "stderr_tail": ["a", "b"],
}


# ----------------------------------------------------------------------------- a scripted endpoint


@dataclass
class Req:
    conn: int
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Action = Union[bytes, Callable[[socket.socket], Optional[str]], None]


class FakeHost:
    """Serves each request with `handler(req)`: bytes to send, a function of the socket (which
    may answer ``"close"``), or None to never answer."""

    def __init__(self, path: Path, handler: Callable[[Req], Action]) -> None:
        self.path = str(path)
        self.handler = handler
        self.requests: List[Req] = []
        self.connections = 0
        self.closed_by_client = 0
        self.stop = threading.Event()
        self.socks: List[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        self.closed_by_client += 1
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                req = Req(n, method, path, headers, body)
                self.requests.append(req)
                action = self.handler(req)
                if action is None:
                    while not self.stop.is_set():
                        conn.settimeout(0.05)
                        try:
                            if conn.recv(1) == b"":
                                self.closed_by_client += 1
                                return
                        except socket.timeout:
                            continue
                    return
                if isinstance(action, bytes):
                    conn.sendall(action)
                elif action(conn) == "close":
                    conn.close()
                    return
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def answer(status: int, value: Any, *, close: bool = False, reason: str = "X") -> bytes:
    body = json.dumps(value).encode() if not isinstance(value, bytes) else value
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode() + body


def chunked(status: int, lines: List[Any], *, end: bool = True) -> bytes:
    out = f"HTTP/1.1 {status} OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    for line in lines:
        data = (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
        out += b"%x\r\n" % len(data) + data + b"\r\n"
    if end:
        out += b"0\r\n\r\n"
    return out


def error(kind: str, message: str, **extra: Any) -> Dict[str, Any]:
    return {"error": dict({"kind": kind, "message": message}, **extra)}


@pytest.fixture
def fake(tmp_path):
    made: List[FakeHost] = []
    clients: List[HostClient] = []

    def make(handler: Callable[[Req], Action]):
        host = FakeHost(tmp_path / f"host-{len(made)}.sock", handler)
        made.append(host)
        client = HostClient(host.path, TOKEN)
        clients.append(client)
        return host, client

    yield make
    for c in clients:
        c.close()
    for h in made:
        h.close()


def ok_output(req: Req) -> bytes:
    return answer(200, {"output": {"echo": req.json()["input"] if req.body else None, "path": req.path}})


# ----------------------------------------------------------------------------- wire mapping


def test_service_names_are_percent_encoded_in_paths():
    assert service_path("pricing") == "/v1/services/pricing"
    assert service_path("a b/c", "/stream") == "/v1/services/a%20b%2Fc/stream"
    assert service_path("text.transform-2_x") == "/v1/services/text.transform-2_x"
    assert service_path("é?") == "/v1/services/%C3%A9%3F"


@pytest.mark.parametrize(
    "kind, cls, message",
    [
        ("invalid_input", plugvisor.InvalidInput, "m"),
        ("invalid_config", plugvisor.InvalidConfig, "m"),
        ("not_initialized", plugvisor.NotInitialized, "m"),
        ("plugin_failed", plugvisor.PluginFailed, "m"),
        ("file_access_denied", plugvisor.FileAccessDenied, "m"),
        ("cancelled", plugvisor.Cancelled, "m"),
        ("timed_out", plugvisor.TimedOut, "m"),
        ("unavailable", plugvisor.Unavailable, "m"),
        ("forbidden", plugvisor.Forbidden, "m"),
        ("call_cycle", plugvisor.CallCycle, "m"),
        ("bad_request", plugvisor.InvalidInput, "bad request: m"),
        ("payload_too_large", plugvisor.InvalidInput, "payload too large: m"),
        ("unauthorized", plugvisor.ProtocolError, "unauthorized: m"),
        ("not_found", plugvisor.ProtocolError, "not found: m"),
        ("method_not_allowed", plugvisor.ProtocolError, "method not allowed: m"),
        ("protocol", plugvisor.ProtocolError, "m"),
        ("a_kind_from_the_future", plugvisor.ProtocolError, "m"),
        ("worker_crashed", plugvisor.ProtocolError, "worker_crashed without a report: m"),
    ],
)
def test_wire_errors_map_to_typed_exceptions_as_the_rust_runtime_reads_them(kind, cls, message):
    err = error_from_wire({"kind": kind, "message": "m"})
    assert type(err) is cls and err.message == message
    assert err.status == {
        plugvisor.Forbidden: 403,
        plugvisor.CallCycle: 508,
        plugvisor.ProtocolError: 502,
        plugvisor.Unavailable: 503,
        plugvisor.TimedOut: 504,
    }.get(cls, err.status)


def test_worker_crashed_carries_its_report_and_is_never_a_workers_own_answer():
    err = error_from_wire({"kind": "worker_crashed", "message": "worker victim died", "crash": CRASH})
    assert isinstance(err, plugvisor.WorkerCrashed) and err.status == 502
    assert err.crash == plugvisor.CrashReport("victim", 4242, CRASH["exit"], "abort", ["a", "b"])
    assert err.to_wire()["crash"] == CRASH
    mine = own(err)
    assert (type(mine), mine.kind, mine.message) == (plugvisor.PluginFailed, "plugin_failed", "worker crashed: worker victim died")
    forbidden = plugvisor.Forbidden("no")
    assert own(forbidden) is forbidden
    with pytest.raises(ValueError):
        error_from_wire({"kind": 1})


# ----------------------------------------------------------------------------- requests


def test_a_call_sends_the_token_the_body_and_no_context_outside_a_call(fake):
    host, client = fake(ok_output)
    out = client.call("pricing", {"sku": "tea"}, method="quote", timeout_ms=250)
    assert out == {"echo": {"sku": "tea"}, "path": "/v1/services/pricing"}
    req = host.requests[0]
    assert (req.method, req.path) == ("POST", "/v1/services/pricing")
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {"input": {"sku": "tea"}, "method": "quote", "timeout_ms": 250}
    assert "x-plugvisor-call" not in req.headers
    client.call("pricing", [1])
    assert host.requests[1].json() == {"input": [1]}
    assert TOKEN not in repr(client)


def test_the_lookup_is_a_get_without_a_body(fake):
    host, client = fake(lambda req: answer(200, {"service": "pricing", "provider": "shop", "required": False}))
    assert client.service("pricing") == plugvisor.ServiceInfo("pricing", "shop", False)
    req = host.requests[0]
    assert (req.method, req.path, req.body, "content-length" in req.headers) == ("GET", "/v1/services/pricing", b"", False)


def test_bad_arguments_are_refused_before_sending(fake):
    host, client = fake(ok_output)
    with pytest.raises(ValueError):
        client.call("s", 1, timeout_ms=-1)
    with pytest.raises(plugvisor.InvalidInput, match="service input: "):
        client.call("s", float("nan"))
    assert host.requests == []
    with pytest.raises(ValueError):
        HostClient(host.path, "bad\r\ntoken")


def any_route(req: Req) -> bytes:
    if req.method == "GET":
        return answer(200, {"service": "s", "provider": "p", "required": True})
    if req.path.endswith("/stream"):
        return chunked(200, [{"item": 1}, {"end": {"count": 1}}])
    return ok_output(req)


def test_the_call_context_follows_plugin_threads_copied_contexts_and_asyncio_tasks(fake):
    host, client = fake(any_route)
    token = set_current(Call("00000000000000ab"))
    try:
        client.call("s", 1)
        t = threading.Thread(target=contextvars.copy_context().run, args=(client.call, "s", 2))
        t.start()
        t.join()

        async def main() -> None:
            await client.acall("s", 3)
            await asyncio.gather(asyncio.create_task(client.acall("s", 4)), client.aservice("s"))
            async for _ in client.astream("s", 5):
                pass

        asyncio.run(main())
    finally:
        reset_current(token)
    client.call("s", 6)  # outside the call again
    contexts = [(r.body and r.json()["input"], r.headers.get("x-plugvisor-call")) for r in host.requests]
    with_context = [c for c in contexts if c[1] == "00000000000000ab"]
    assert len(with_context) == 6, contexts
    assert contexts[-1] == (6, None)


# ----------------------------------------------------------------------------- answers


def test_error_answers_raise_typed_errors(fake):
    answers = {
        "/v1/services/forbidden": answer(403, error("forbidden", "plugin x may not call service")),
        "/v1/services/cycle": answer(508, error("call_cycle", "a -> b -> a: a is already waiting")),
        "/v1/services/crash": answer(502, error("worker_crashed", "worker victim died", crash=CRASH)),
        "/v1/services/slow": answer(504, error("timed_out", "too slow")),
        "/v1/services/nobody": answer(503, error("unavailable", "not provided")),
        "/v1/services/bare": answer(500, b"oops", reason="Internal Server Error"),
        "/v1/services/nooutput": answer(200, {"result": 1}),
        "/v1/services/notjson": answer(200, b"{"),
    }
    host, client = fake(lambda req: answers[req.path])
    cases = [
        ("forbidden", plugvisor.Forbidden, "plugin x may not call service"),
        ("cycle", plugvisor.CallCycle, "a -> b -> a: a is already waiting"),
        ("crash", plugvisor.WorkerCrashed, "worker victim died"),
        ("slow", plugvisor.TimedOut, "too slow"),
        ("nobody", plugvisor.Unavailable, "not provided"),
        ("bare", plugvisor.ProtocolError, "the host answered 500 Internal Server Error without an error body"),
        ("nooutput", plugvisor.ProtocolError, "the host's answer: missing field `output`"),
    ]
    for service, cls, message in cases:
        with pytest.raises(cls) as caught:
            client.call(service, None)
        assert caught.value.message == message
        if cls is plugvisor.WorkerCrashed:
            assert caught.value.crash is not None and caught.value.crash.pid == 4242
    with pytest.raises(plugvisor.ProtocolError, match="the host's answer: "):
        client.call("notjson", None)
    assert host.connections == 1, "error answers keep the connection too"


def test_an_endpoint_that_is_not_there_is_unavailable(tmp_path):
    client = HostClient(str(tmp_path / "nobody.sock"), TOKEN)
    with pytest.raises(plugvisor.Unavailable, match="cannot be reached"):
        client.call("s", 1)
    with pytest.raises(plugvisor.Unavailable, match="cannot be reached"):
        asyncio.run(client.acall("s", 1))


# ----------------------------------------------------------------------------- connections


def test_connections_are_kept_alive_and_reused_up_to_a_bound(fake):
    def slow(req: Req) -> bytes:
        if req.json()["input"] == "slow":
            time.sleep(0.3)
        return ok_output(req)

    host, client = fake(slow)
    for i in range(3):
        client.call("s", i)
    assert host.connections == 1
    threads = [threading.Thread(target=client.call, args=("s", "slow")) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert host.connections == 10
    assert len(client._idle) == _host.MAX_IDLE
    for i in range(5):
        client.call("s", i)
    assert host.connections == 10, "idle connections are reused"

    async def many() -> None:
        await asyncio.gather(*(client.acall("s", "slow") for _ in range(3)))
        for i in range(3):
            await client.acall("s", i)

    asyncio.run(many())
    assert host.connections == 13, "the async methods keep a pool of their own"


def test_a_connection_the_host_closed_is_replaced(fake, monkeypatch):
    host, client = fake(lambda req: answer(200, {"output": 1}) if req.conn % 2 else None)

    def answer_then_close(req: Req) -> Action:
        def send(sock: socket.socket) -> str:
            sock.sendall(answer(200, {"output": req.conn}))
            return "close"

        return send

    host.handler = answer_then_close
    assert client.call("s", 1) == 1
    assert wait_for(lambda: client._idle and not client._idle[0].usable(), 2)
    assert client.call("s", 2) == 2, "the closed idle connection was dropped"
    # A connection that looks open but was closed: the request is sent again on a new one.
    monkeypatch.setattr(_host._Conn, "usable", lambda self: True)
    assert client.call("s", 3) == 3
    assert host.connections == 3 and len(host.requests) == 3


def test_connection_close_answers_are_not_reused(fake):
    host, client = fake(lambda req: answer(200, {"output": 1}, close=True))
    client.call("s", 1)
    client.call("s", 2)
    assert host.connections == 2 and client._idle == []


# ----------------------------------------------------------------------------- streams


def test_a_stream_yields_items_and_ends_and_its_connection_is_reused(fake):
    def handler(req: Req) -> bytes:
        if req.path.endswith("/stream"):
            assert req.json() == {"input": {"n": 2}}
            return chunked(200, [{"item": 1}, {"item": {"b": [2]}}, {"end": {"count": 2}}])
        return ok_output(req)

    host, client = fake(handler)
    with client.stream("ticks", {"n": 2}) as stream:
        assert list(stream) == [1, {"b": [2]}]
    assert host.requests[0].path == "/v1/services/ticks/stream"
    client.call("s", 1)
    assert host.connections == 1

    async def collect() -> List[Any]:
        items = [item async for item in client.astream("ticks", {"n": 2})]
        stream = await client.astream("ticks", {"n": 2})
        items += [item async for item in stream]
        return items

    assert asyncio.run(collect()) == [1, {"b": [2]}] * 2


def test_an_error_frame_raises_its_typed_error_after_the_items(fake):
    frames = [{"item": 1}, {"error": {"kind": "worker_crashed", "message": "died", "crash": CRASH}}]
    host, client = fake(lambda req: chunked(200, frames))
    got = []
    with pytest.raises(plugvisor.WorkerCrashed) as caught:
        for item in client.stream("s", None):
            got.append(item)
    assert got == [1] and caught.value.crash is not None and caught.value.crash.cause == "abort"

    async def collect() -> List[Any]:
        items = []
        async for item in client.astream("s", None):
            items.append(item)
        return items

    with pytest.raises(plugvisor.WorkerCrashed):
        asyncio.run(collect())


def test_an_error_before_the_first_item_is_raised_when_the_stream_opens(fake):
    host, client = fake(lambda req: answer(403, error("forbidden", "not yours")))
    with pytest.raises(plugvisor.Forbidden, match="not yours"):
        client.stream("s", None)

    async def opened() -> None:
        await client.astream("s", None)

    with pytest.raises(plugvisor.Forbidden, match="not yours"):
        asyncio.run(opened())


@pytest.mark.parametrize(
    "body, message",
    [
        (chunked(200, [{"item": 1}], end=True), "the service stream ended early"),
        (chunked(200, [{"item": 1}], end=False), "the service stream was cut"),
        (chunked(200, [{"item": 1}, b"nope"]), "a bad stream frame"),
        (chunked(200, [{"item": 1}, {"item": 2, "end": {"count": 1}}]), "a bad stream frame"),
    ],
)
def test_a_cut_or_garbled_stream_raises_a_protocol_error(fake, body, message):
    def send(req: Req) -> Action:
        def out(sock: socket.socket) -> str:
            sock.sendall(body)
            return "close"

        return out

    host, client = fake(send)
    stream = client.stream("s", None)
    assert next(stream) == 1
    with pytest.raises(plugvisor.ProtocolError, match=message):
        next(stream)
    with pytest.raises(StopIteration):
        next(stream)

    async def collect() -> List[Any]:
        return [item async for item in client.astream("s", None)]

    with pytest.raises(plugvisor.ProtocolError, match=message):
        asyncio.run(collect())


def test_closing_a_stream_early_closes_its_connection(fake):
    host, client = fake(lambda req: chunked(200, [{"item": 1}, {"item": 2}], end=False))
    stream = client.stream("s", None)
    assert next(stream) == 1
    stream.close()
    assert wait_for(lambda: host.closed_by_client == 1, 2)
    assert client._idle == []


# ----------------------------------------------------------------------------- cancellation


def test_a_cancelled_call_unblocks_plain_code_and_drops_the_service_call(fake):
    host, client = fake(lambda req: None)  # never answers
    call = Call("00000000000000cd")
    result: Dict[str, Any] = {}

    def work() -> None:
        token = set_current(call)
        try:
            client.call("s", 1)
        except plugvisor.PluginError as e:
            result["error"] = e
        finally:
            reset_current(token)

    t = threading.Thread(target=work)
    t.start()
    assert wait_for(lambda: host.requests, 2)
    call._cancel()
    t.join(2)
    assert not t.is_alive() and isinstance(result["error"], plugvisor.Cancelled)
    assert wait_for(lambda: host.closed_by_client == 1, 2), "the host sees the call dropped"
    # Already cancelled: a new service call fails at once.
    token = set_current(call)
    try:
        with pytest.raises(plugvisor.Cancelled):
            client.call("s", 2)
    finally:
        reset_current(token)


def test_a_cancelled_task_drops_its_service_call(fake):
    host, client = fake(lambda req: None)

    async def main() -> None:
        task = asyncio.ensure_future(client.acall("s", 1))
        while not host.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_for(lambda: host.closed_by_client == 1, 2)


# ----------------------------------------------------------------------------- environment


def test_host_comes_from_the_environment_and_the_token_leaves_it(monkeypatch, tmp_path):
    monkeypatch.setattr(_host, "_resolved", False)
    monkeypatch.setattr(_host, "_client", None)
    monkeypatch.setenv("PLUGVISOR_HOST_ADDR", str(tmp_path / "host.sock"))
    monkeypatch.setenv("PLUGVISOR_HOST_TOKEN", "abc")
    _host.take_env()
    assert "PLUGVISOR_HOST_TOKEN" not in os.environ
    assert os.environ["PLUGVISOR_HOST_ADDR"] == str(tmp_path / "host.sock")
    client = plugvisor.host()
    assert client.socket_path == str(tmp_path / "host.sock") and plugvisor.host() is client


def test_host_without_the_environment_says_to_list_the_service(monkeypatch):
    monkeypatch.setattr(_host, "_resolved", False)
    monkeypatch.setattr(_host, "_client", None)
    monkeypatch.delenv("PLUGVISOR_HOST_ADDR", raising=False)
    with pytest.raises(plugvisor.Unavailable) as caught:
        plugvisor.host()
    assert "PLUGVISOR_HOST_ADDR is not set" in caught.value.message
    assert "requires or optional_requires" in caught.value.message


def test_a_garbled_stream_is_not_kept_but_an_ended_one_is(fake):
    def handler(req: Req) -> bytes:
        if req.path.endswith("/bad/stream"):
            return chunked(200, [{"item": 1}, b"{]", {"end": {"count": 1}}])
        if req.path.endswith("/stream"):
            return chunked(200, [{"error": {"kind": "plugin_failed", "message": "no"}}])
        return ok_output(req)

    host, client = fake(handler)
    with pytest.raises(plugvisor.ProtocolError, match="a bad stream frame"):
        list(client.stream("bad", None))
    assert client._idle == []
    with pytest.raises(plugvisor.PluginFailed, match="no"):
        list(client.stream("good", None))
    assert len(client._idle) == 1, "an error frame is a clean end: the connection is kept"
    client.call("s", 1)
    assert host.connections == 2


def test_idle_connections_of_a_closed_event_loop_are_dropped(fake):
    host, client = fake(ok_output)
    asyncio.run(client.acall("s", 1))
    asyncio.run(client.acall("s", 2))
    assert len(client._aidle) == 1 and host.connections == 2
