"""Calling the host back: `host()` is this worker's client of the services other plugins
provide (``POST /v1/services/<service>`` on the host's Unix socket, `docs/PROTOCOL.md` §13).

The host gives the endpoint and a token to plugins whose manifest lists ``requires`` or
``optional_requires`` (``PLUGVISOR_HOST_ADDR``, ``PLUGVISOR_HOST_TOKEN``). Every service call
made while the worker serves a call carries that call's context (``x-plugvisor-call``, kept in
`Call.context` and found through a context variable, so it follows the SDK's plugin threads
and asyncio tasks), which lets the host end a cycle (A → B → A) with ``call_cycle`` instead of
a deadlock. The plain methods block their thread; the ``a``-prefixed ones are awaitable.

Mirrors the Rust runtime's ``worker/src/host.rs``: the same requests, the same reading of
answers and errors, a small pool of keep-alive connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

from . import _wire as wire
from ._calls import CALL_CONTEXT_HEADER, TRACEPARENT_HEADER, Call, child_traceparent, current_call
from ._errors import (
    Cancelled,
    InvalidInput,
    PluginError,
    ProtocolError,
    Unavailable,
    error_from_wire,
)
from ._http import ChunkedDecoder, HttpError, find_head_end, reason

__all__ = [
    "HOST_ADDR_ENV",
    "HOST_TOKEN_ENV",
    "CALL_CONTEXT_HEADER",
    "HostClient",
    "ServiceInfo",
    "ServiceStream",
    "AsyncServiceStream",
    "host",
    "take_env",
    "service_path",
]

#: Path of the host's Unix socket for service calls (set only for plugins whose manifest
#: lists ``requires`` or ``optional_requires``).
HOST_ADDR_ENV = "PLUGVISOR_HOST_ADDR"
#: The bearer token naming this plugin to the host (removed from the environment once read).
HOST_TOKEN_ENV = "PLUGVISOR_HOST_TOKEN"
#: ``GET``/``POST <prefix><service>``, ``POST <prefix><service>/stream``.
SERVICES_PREFIX = "/v1/services/"
STREAM_SUFFIX = "/stream"
#: Idle connections kept for the next service call (per event loop for the async methods).
MAX_IDLE = 8
#: Bytes read from the socket at a time.
_READ = 65536
#: How long a finished stream's last bytes may take before its connection is dropped instead
#: of kept.
_DRAIN_TIMEOUT = 1.0

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def service_path(service: str, suffix: str = "") -> str:
    """The endpoint's path for `service` (percent-encoded: every byte but ``A-Za-z0-9-_.``)."""
    encoded = "".join(
        chr(b) if b in _SAFE else f"%{b:02X}" for b in service.encode("utf-8")
    )
    return f"{SERVICES_PREFIX}{encoded}{suffix}"


@dataclass(frozen=True)
class ServiceInfo:
    """What `HostClient.service` learns: the caller may call `service`, `provider` (a loaded
    plugin) provides it, and `required` says whether the manifest lists it in ``requires``
    (True) or ``optional_requires`` (False)."""

    service: str
    provider: str
    required: bool


# ============================================================================ answers


class _NoAnswer(Exception):
    """The connection closed (or failed) before any byte of an answer arrived."""


@dataclass
class _Head:
    """An answer's status line and headers, and how its body is framed."""

    status: int
    headers: List[Tuple[str, str]]
    #: The body's length (`None`: chunked, or until the connection closes).
    length: Optional[int]
    chunked: bool
    #: The connection cannot be used again after this answer.
    close: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _parse_head(data: bytes) -> _Head:
    """Parses an answer head (`find_head_end`'s bytes). Raises `ValueError`."""
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in data.split(b"\n")]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise ValueError("an empty answer head")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"a bad status line {lines[0][:80]!r}")
    if len(parts[1]) != 3 or not parts[1].isdigit():
        raise ValueError(f"a bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: List[Tuple[str, str]] = []
    for raw in lines[1:]:
        if not raw:
            break
        name, colon, value = raw.partition(b":")
        if not colon or not name.strip():
            raise ValueError("a malformed header field")
        headers.append((name.strip().decode("latin-1").lower(), value.strip().decode("latin-1")))
    tokens = {
        t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")
    }
    close = "close" in tokens or (parts[0] == b"HTTP/1.0" and "keep-alive" not in tokens)
    encodings = [v.strip().lower() for k, v in headers if k == "transfer-encoding"]
    lengths = {v.strip() for k, v in headers if k == "content-length"}
    chunked, length = False, None
    if status < 200 or status in (204, 304):
        length = 0
    elif encodings:
        if not encodings[-1].endswith("chunked"):
            raise ValueError("an unsupported transfer-encoding")
        chunked = True
    elif lengths:
        if len(lengths) != 1:
            raise ValueError("conflicting content-length values")
        declared = lengths.pop()
        if not declared.isdigit():
            raise ValueError("a malformed content-length")
        length = int(declared)
    else:
        close = True  # the body ends with the connection
    return _Head(status, headers, length, chunked, close)


class _Reader:
    """The bytes read from one connection and what they hold: answer heads and bodies."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._decoder: Optional[ChunkedDecoder] = None
        self._remaining: Optional[int] = None
        self.body_done = True

    def head(self) -> Optional[_Head]:
        """The next complete answer head in the buffer (1xx answers skipped), or `None`."""
        while True:
            end = find_head_end(self.buf)
            if end < 0:
                if len(self.buf) > 1 << 20:
                    raise ValueError("the answer head is too large")
                return None
            data = bytes(self.buf[:end])
            del self.buf[:end]
            head = _parse_head(data)
            if head.status >= 200:
                self._decoder = ChunkedDecoder() if head.chunked else None
                self._remaining = head.length
                self.body_done = head.length == 0
                return head

    def piece(self) -> Optional[bytes]:
        """The body bytes buffered now (``b""`` once the body has ended), or `None` when more
        must be read first."""
        if self.body_done:
            return b""
        if self._decoder is not None:
            try:
                pieces, used = self._decoder.feed(self.buf)
            except HttpError as e:
                raise ValueError(e.message) from None
            del self.buf[:used]
            if self._decoder.done:
                self.body_done = True
            data = b"".join(pieces)
        elif self._remaining is not None:
            take = min(self._remaining, len(self.buf))
            data = bytes(self.buf[:take])
            del self.buf[:take]
            self._remaining -= take
            if self._remaining == 0:
                self.body_done = True
        else:
            data = bytes(self.buf)
            self.buf.clear()
        if data or self.body_done:
            return data
        return None

    def eof(self) -> None:
        """The connection ended: fine for a body framed by the close, else a cut body."""
        if self.body_done:
            return
        if self._decoder is None and self._remaining is None:
            self.body_done = True
            return
        raise ValueError("the connection closed before the answer's body ended")


def _answer_value(status: int, body: bytes) -> Any:
    """The JSON of a successful answer, or the typed error of a failed one."""
    if not 200 <= status < 300:
        raise _error_of(status, body)
    try:
        return wire.loads(body)
    except wire.BadJson as e:
        raise ProtocolError(f"the host's answer: {e}") from None


def _error_of(status: int, body: bytes) -> PluginError:
    """The error an answer carries (``{"error": {...}}``), by its kind."""
    try:
        value = wire.loads(body)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        return error_from_wire(value.get("error"))
    except ValueError:
        return ProtocolError(f"the host answered {status} {reason(status)} without an error body")


def _output_of(value: Any) -> Any:
    if not isinstance(value, dict) or "output" not in value:
        raise ProtocolError("the host's answer: missing field `output`")
    return value["output"]


def _info_of(value: Any) -> ServiceInfo:
    if isinstance(value, dict):
        service, provider, required = value.get("service"), value.get("provider"), value.get("required")
        if isinstance(service, str) and isinstance(provider, str) and isinstance(required, bool):
            return ServiceInfo(service, provider, required)
    raise ProtocolError("the host's answer: expected {service, provider, required}")


def _frame(line: bytes) -> Tuple[str, Any]:
    """One line of a stream answer: ``("item", value)``, ``("end", None)``, ``("error",
    exception)`` for an ``error`` frame, or ``("bad", exception)`` for a line that is no frame."""
    try:
        value = wire.loads(line)
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError("a frame is an object with one of `item`, `end`, `error`")
        ((key, inner),) = value.items()
        if key == "item":
            return "item", inner
        if key == "end":
            if not isinstance(inner, dict) or not isinstance(inner.get("count"), int):
                raise ValueError("`end` needs a `count`")
            return "end", None
        if key == "error":
            return "error", error_from_wire(inner)
        raise ValueError(f"unknown variant `{key}`, expected `item`, `end` or `error`")
    except ValueError as e:
        return "bad", ProtocolError(f"a bad stream frame: {e}")


# ============================================================================ connections


class _Conn:
    """One blocking connection to the endpoint."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise
        self.reader = _Reader()
        self.reused = False

    def usable(self) -> bool:
        """True when an idle connection is still open (the host has not closed it)."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # end-of-file, or bytes nobody asked for

    def fill(self) -> bool:
        data = self.sock.recv(_READ)
        if not data:
            return False
        self.reader.buf += data
        return True

    def head(self) -> _Head:
        while True:
            head = self.reader.head()
            if head is not None:
                return head
            try:
                more = self.fill()
            except OSError as e:
                if not self.reader.buf:
                    raise _NoAnswer(str(e)) from None
                raise ValueError(f"the connection failed inside the answer head: {e}") from None
            if not more:
                if not self.reader.buf:
                    raise _NoAnswer("the connection was closed")
                raise ValueError("the connection closed inside the answer head")

    def piece(self) -> bytes:
        """The next piece of the body (``b""`` at its end)."""
        while True:
            data = self.reader.piece()
            if data is not None:
                return data
            if not self.fill():
                self.reader.eof()
                return b""

    def abort(self) -> None:
        """Ends the connection now, also from another thread (a blocked read returns)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.abort()
        self.sock.close()


class _AsyncConn:
    """One asyncio connection to the endpoint, bound to the loop that made it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream = reader
        self.writer = writer
        self.reader = _Reader()
        self.reused = False

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.stream.at_eof()

    async def fill(self) -> bool:
        data = await self.stream.read(_READ)
        if not data:
            return False
        self.reader.buf += data
        return True

    async def head(self) -> _Head:
        while True:
            head = self.reader.head()
            if head is not None:
                return head
            try:
                more = await self.fill()
            except OSError as e:
                if not self.reader.buf:
                    raise _NoAnswer(str(e)) from None
                raise ValueError(f"the connection failed inside the answer head: {e}") from None
            if not more:
                if not self.reader.buf:
                    raise _NoAnswer("the connection was closed")
                raise ValueError("the connection closed inside the answer head")

    async def piece(self) -> bytes:
        while True:
            data = self.reader.piece()
            if data is not None:
                return data
            if not await self.fill():
                self.reader.eof()
                return b""

    def close(self) -> None:
        self.writer.close()


class _Cancellable:
    """Aborts `conn` when the plain-code call it is used for is cancelled (the host left), so
    a thread blocked on the host returns, and the host sees the service call dropped too."""

    def __init__(self, call: Call, conn: _Conn) -> None:
        self._call = call
        self._conn = conn
        self._lock = threading.Lock()
        self._active = True
        call.on_cancel(self._fire)

    def _fire(self) -> None:
        with self._lock:
            if self._active:
                self._conn.abort()

    def end(self) -> None:
        with self._lock:
            self._active = False
        self._call._forget(self._fire)


# ============================================================================ the client


class HostClient:
    """A client of the host's service endpoint; get this worker's with `plugvisor.host()`.

    Plain methods (`call`, `stream`, `service`) block the calling thread: use them from plain
    plugin code. Awaitable ones (`acall`, `astream`, `aservice`) are for ``async def`` code.
    Both carry the context of the call being served and reuse idle connections.

    Errors are typed by the kind the host answers: the provider's own error (`InvalidInput`,
    `PluginFailed`, …), `Forbidden` for a service the manifest does not list, `Unavailable`
    when no loaded plugin provides it or the host cannot be reached, `WorkerCrashed` (with
    `.crash`) when the provider died during the call, `TimedOut`, `CallCycle` when the call
    would come back to a plugin already waiting in its chain.
    """

    def __init__(self, socket_path: str, token: str) -> None:
        """A client of the endpoint at `socket_path` presenting `token` (what `host()` makes
        from the environment; for tests and embedders).

        Raises:
            ValueError: a token that cannot travel in a header.
        """
        if not token or any(c in token for c in "\r\n\0") or not token.isprintable():
            raise ValueError("the host token cannot travel in a header")
        self._path = socket_path
        self._auth = f"Bearer {token}"
        self._lock = threading.Lock()
        self._idle: List[_Conn] = []
        # Idle connections of the awaitable methods, by the event loop they belong to.
        self._aidle: Dict[asyncio.AbstractEventLoop, List[_AsyncConn]] = {}

    def __repr__(self) -> str:
        return f"HostClient(socket={self._path!r})"

    @property
    def socket_path(self) -> str:
        """The endpoint's socket."""
        return self._path

    # ------------------------------------------------------------------ plain

    def call(
        self,
        service: str,
        input: Any = None,
        *,
        method: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Any:
        """Calls `service` with `input` through the host and returns its output: the
        provider's `execute`, or its named method `method`; `timeout_ms` is the call's
        deadline (never later than that of the call it is nested in). Blocks this thread.

        Raises:
            PluginError: typed by kind (see the class).
        """
        body = _call_body(input, method, timeout_ms)
        status, answer = self._round_trip("POST", service_path(service), body)
        return _output_of(_answer_value(status, answer))

    def stream(self, service: str, input: Any = None) -> "ServiceStream":
        """Streams from `service`'s `execute_stream` with `input`: an iterator of its items.

        An error before the first item is raised here; a later one (the stream's ``error``
        frame) is raised by the iteration, typed by its kind; a stream cut before its terminal
        frame raises `ProtocolError`. Closing it early (`close`, ``with``, or dropping it)
        closes its connection, which the host takes as the end of the stream.
        """
        body = _call_body(input, None, None)
        call = current_call()
        conn, head = self._open("POST", service_path(service, STREAM_SUFFIX), body, call)
        if not head.ok:
            status, data = head.status, self._rest(conn, head, call)
            raise _error_of(status, data)
        return ServiceStream(self, conn, head, call)

    def service(self, service: str) -> ServiceInfo:
        """Whether this plugin may call `service` and which loaded plugin provides it now.

        Raises:
            Forbidden: the manifest does not list it. Unavailable: no loaded plugin provides it.
        """
        status, answer = self._round_trip("GET", service_path(service), None)
        return _info_of(_answer_value(status, answer))

    # ------------------------------------------------------------------ awaitable

    async def acall(
        self,
        service: str,
        input: Any = None,
        *,
        method: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Any:
        """`call` for ``async def`` code. Cancelling the awaiting task closes the connection:
        the host drops the nested call."""
        body = _call_body(input, method, timeout_ms)
        status, answer = await self._around_trip("POST", service_path(service), body)
        return _output_of(_answer_value(status, answer))

    def astream(self, service: str, input: Any = None) -> "AsyncServiceStream":
        """`stream` for ``async def`` code: ``async for item in host.astream(...)`` (or
        ``stream = await host.astream(...)`` to have an error before the first item raised
        right there)."""
        body = _call_body(input, None, None)
        return AsyncServiceStream(self, service_path(service, STREAM_SUFFIX), body, current_call())

    async def aservice(self, service: str) -> ServiceInfo:
        """`service` for ``async def`` code."""
        status, answer = await self._around_trip("GET", service_path(service), None)
        return _info_of(_answer_value(status, answer))

    def close(self) -> None:
        """Closes the idle connections of the plain methods (a later call opens new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, body: Optional[bytes], call: Call) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1",
            "host: plugvisor-host",
            f"authorization: {self._auth}",
            "content-type: application/json",
        ]
        if body is not None:
            lines.append(f"content-length: {len(body)}")
        context = call.context
        if context is not None:
            lines.append(f"{CALL_CONTEXT_HEADER}: {context}")
        if call.trace is not None:
            lines.append(f"{TRACEPARENT_HEADER}: {child_traceparent(call.trace)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + (body or b"")

    def _unreachable(self, e: Any) -> Unavailable:
        return Unavailable(f"the host's service endpoint {self._path} cannot be reached: {e}")

    def _checkout(self) -> _Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        try:
            return _Conn(self._path)
        except OSError as e:
            raise self._unreachable(e) from None

    def _checkin(self, conn: _Conn, head: _Head) -> None:
        if head.close or not conn.reader.body_done or conn.reader.buf:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _open(self, method: str, path: str, body: Optional[bytes], call: Call) -> Tuple[_Conn, _Head]:
        """Sends a request and reads the answer's head (a connection the host closed while it
        was idle is replaced once)."""
        request = self._request(method, path, body, call)
        while True:
            conn = self._checkout()
            guard = _Cancellable(call, conn)
            try:
                conn.sock.sendall(request)
                return conn, conn.head()
            except _NoAnswer as e:
                conn.close()
                if call.cancelled:
                    raise Cancelled("the call was cancelled by the host") from None
                if conn.reused:
                    continue
                raise self._unreachable(e) from None
            except OSError as e:
                conn.close()
                if call.cancelled:
                    raise Cancelled("the call was cancelled by the host") from None
                if conn.reused and isinstance(e, (BrokenPipeError, ConnectionResetError)):
                    continue
                raise self._unreachable(e) from None
            except ValueError as e:
                conn.close()
                raise ProtocolError(f"the host's answer: {e}") from None
            except BaseException:
                conn.close()
                raise
            finally:
                guard.end()

    def _rest(self, conn: _Conn, head: _Head, call: Call) -> bytes:
        """The rest of an answer's body; the connection goes back to the pool after it."""
        guard = _Cancellable(call, conn)
        parts: List[bytes] = []
        try:
            while True:
                data = conn.piece()
                if not data:
                    break
                parts.append(data)
        except (OSError, ValueError) as e:
            conn.close()
            if call.cancelled:
                raise Cancelled("the call was cancelled by the host") from None
            raise ProtocolError(f"the host's answer was cut: {e}") from None
        except BaseException:
            conn.close()
            raise
        finally:
            guard.end()
        self._checkin(conn, head)
        return b"".join(parts)

    def _round_trip(self, method: str, path: str, body: Optional[bytes]) -> Tuple[int, bytes]:
        call = current_call()
        conn, head = self._open(method, path, body, call)
        return head.status, self._rest(conn, head, call)

    # async plumbing: connections per event loop

    def _aidle_of(self, loop: asyncio.AbstractEventLoop) -> List[_AsyncConn]:
        """`loop`'s idle connections. Those of loops closed since (an ``asyncio.run`` that
        ended) are dropped: their sockets close when they are collected."""
        with self._lock:
            for gone in [other for other in self._aidle if other.is_closed()]:
                del self._aidle[gone]
            idle = self._aidle.get(loop)
            if idle is None:
                idle = self._aidle[loop] = []
            return idle

    async def _acheckout(self) -> _AsyncConn:
        idle = self._aidle_of(asyncio.get_running_loop())
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.open_unix_connection(self._path, limit=_READ * 4)
        except OSError as e:
            raise self._unreachable(e) from None
        return _AsyncConn(reader, writer)

    def _acheckin(self, conn: _AsyncConn, head: _Head) -> None:
        idle = self._aidle_of(asyncio.get_running_loop())
        if head.close or not conn.reader.body_done or conn.reader.buf or len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)

    async def _aopen(
        self, method: str, path: str, body: Optional[bytes], call: Call
    ) -> Tuple[_AsyncConn, _Head]:
        request = self._request(method, path, body, call)
        while True:
            conn = await self._acheckout()
            try:
                conn.writer.write(request)
                await conn.writer.drain()
                return conn, await conn.head()
            except _NoAnswer as e:
                conn.close()
                if conn.reused:
                    continue
                raise self._unreachable(e) from None
            except OSError as e:
                conn.close()
                if conn.reused and isinstance(e, (BrokenPipeError, ConnectionResetError)):
                    continue
                raise self._unreachable(e) from None
            except ValueError as e:
                conn.close()
                raise ProtocolError(f"the host's answer: {e}") from None
            except BaseException:
                conn.close()  # cancelled: the host sees the connection close
                raise

    async def _arest(self, conn: _AsyncConn, head: _Head) -> bytes:
        parts: List[bytes] = []
        try:
            while True:
                data = await conn.piece()
                if not data:
                    break
                parts.append(data)
        except (OSError, ValueError) as e:
            conn.close()
            raise ProtocolError(f"the host's answer was cut: {e}") from None
        except BaseException:
            conn.close()
            raise
        self._acheckin(conn, head)
        return b"".join(parts)

    async def _around_trip(self, method: str, path: str, body: Optional[bytes]) -> Tuple[int, bytes]:
        conn, head = await self._aopen(method, path, body, current_call())
        return head.status, await self._arest(conn, head)


def _call_body(input: Any, method: Optional[str], timeout_ms: Optional[int]) -> bytes:
    """The body of a service call: ``{"input", "method"?, "timeout_ms"?}``."""
    call: Dict[str, Any] = {"input": input}
    if method is not None:
        if not isinstance(method, str):
            raise TypeError("method must be a string")
        call["method"] = method
    if timeout_ms is not None:
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ValueError("timeout_ms must be a non-negative integer (milliseconds)")
        call["timeout_ms"] = timeout_ms
    try:
        return wire.dumps(call)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"service input: {e}") from None


# ============================================================================ streams


class _Lines:
    """Splits a stream body into NDJSON lines and reads each as a frame."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def next_frame(self) -> Optional[Tuple[str, Any]]:
        """The next complete frame (see `_frame`), or `None` when more bytes are needed."""
        nl = self.buf.find(b"\n")
        if nl < 0:
            return None
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 1]
        return _frame(line)


class ServiceStream:
    """The items of a service's stream (`HostClient.stream`): iterate it; close it to stop
    early. An ``error`` frame raises its typed error; a stream cut before its terminal frame
    raises `ProtocolError`."""

    def __init__(self, client: HostClient, conn: _Conn, head: _Head, call: Call) -> None:
        self._client = client
        self._conn: Optional[_Conn] = conn
        self._head = head
        self._call = call
        self._lines = _Lines()

    def __iter__(self) -> "ServiceStream":
        return self

    def __next__(self) -> Any:
        conn = self._conn
        if conn is None:
            raise StopIteration
        while True:
            frame = self._lines.next_frame()
            if frame is not None:
                break
            guard = _Cancellable(self._call, conn)
            try:
                data = conn.piece()
            except (OSError, ValueError) as e:
                self._drop()
                if self._call.cancelled:
                    raise Cancelled("the call was cancelled by the host") from None
                raise ProtocolError(f"the service stream was cut: {e}") from None
            except BaseException:
                self._drop()
                raise
            finally:
                guard.end()
            if not data:
                self._drop()
                raise ProtocolError("the service stream ended early")
            self._lines.buf += data
        kind, value = frame
        if kind == "item":
            return value
        if kind == "bad":
            self._drop()
            raise value
        self._finish(conn)
        if kind == "end":
            raise StopIteration
        raise value

    def _finish(self, conn: _Conn) -> None:
        """The terminal frame arrived: read the body's end and keep the connection."""
        self._conn = None
        try:
            conn.sock.settimeout(_DRAIN_TIMEOUT)
            while conn.piece():
                pass
            conn.sock.settimeout(None)
        except (OSError, ValueError):
            conn.close()
            return
        self._client._checkin(conn, self._head)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Stops reading: the connection is closed, and the host ends the provider's stream."""
        self._drop()

    def __enter__(self) -> "ServiceStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


class AsyncServiceStream:
    """The items of a service's stream for ``async def`` code (`HostClient.astream`):
    ``async for item in stream``. Awaiting it opens the stream (raising an error the host
    answers before the first item) and returns it; iterating opens it too. `aclose` (or
    ``async with``) stops early."""

    def __init__(self, client: HostClient, path: str, body: bytes, call: Call) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._call = call
        self._conn: Optional[_AsyncConn] = None
        self._head: Optional[_Head] = None
        self._opened = False
        self._done = False
        self._lines = _Lines()

    async def _open(self) -> "AsyncServiceStream":
        if self._opened:
            return self
        self._opened = True
        client = self._client
        conn, head = await client._aopen("POST", self._path, self._body, self._call)
        if not head.ok:
            self._done = True
            raise _error_of(head.status, await client._arest(conn, head))
        self._conn, self._head = conn, head
        return self

    def __await__(self) -> Generator[Any, None, "AsyncServiceStream"]:
        return self._open().__await__()

    def __aiter__(self) -> "AsyncServiceStream":
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        await self._open()
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while True:
            frame = self._lines.next_frame()
            if frame is not None:
                break
            try:
                data = await conn.piece()
            except (OSError, ValueError) as e:
                self._drop()
                raise ProtocolError(f"the service stream was cut: {e}") from None
            except BaseException:
                self._drop()
                raise
            if not data:
                self._drop()
                raise ProtocolError("the service stream ended early")
            self._lines.buf += data
        kind, value = frame
        if kind == "item":
            return value
        if kind == "bad":
            self._drop()
            raise value
        await self._finish(conn)
        if kind == "end":
            raise StopAsyncIteration
        raise value

    async def _finish(self, conn: _AsyncConn) -> None:
        self._conn, self._done = None, True
        try:
            while await asyncio.wait_for(conn.piece(), _DRAIN_TIMEOUT):
                pass
        except (OSError, ValueError, asyncio.TimeoutError):
            conn.close()
            return
        assert self._head is not None
        self._client._acheckin(conn, self._head)

    def _drop(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Stops reading: the connection is closed, and the host ends the provider's stream."""
        self._drop()

    async def __aenter__(self) -> "AsyncServiceStream":
        return await self._open()

    async def __aexit__(self, *exc: Any) -> None:
        self._drop()


# ============================================================================ host()

_lock = threading.Lock()
_client: Optional[HostClient] = None
_resolved = False


def _from_env() -> Optional[HostClient]:
    path = os.environ.get(HOST_ADDR_ENV)
    token = os.environ.get(HOST_TOKEN_ENV)
    if not path or token is None:
        return None
    try:
        return HostClient(path, token)
    except ValueError:
        return None


def _resolve() -> Optional[HostClient]:
    global _client, _resolved
    with _lock:
        if not _resolved:
            _client, _resolved = _from_env(), True
        return _client


def take_env() -> None:
    """Reads the endpoint and token from the environment and removes the token from it, so
    processes the plugin starts do not inherit it (`run` calls it at start-up)."""
    _resolve()
    os.environ.pop(HOST_TOKEN_ENV, None)


def host() -> HostClient:
    """This worker's client of the host's service endpoint.

    ::

        price = plugvisor.host().call("pricing", {"sku": "tea"})          # plain code
        price = await plugvisor.host().acall("pricing", {"sku": "tea"})   # async code

    Raises:
        Unavailable: the host gave this worker no endpoint: its manifest lists no
            ``requires`` or ``optional_requires``, or it was not started by a plugvisor host.
    """
    client = _resolve()
    if client is None:
        raise Unavailable(
            f"this worker has no host endpoint ({HOST_ADDR_ENV} is not set): list the services "
            "it calls in its manifest's requires or optional_requires"
        )
    return client


def _install(client: Optional[HostClient]) -> Callable[[], None]:
    """Makes `client` what `host()` returns (tests); returns a function undoing it."""
    global _client, _resolved
    with _lock:
        before = (_client, _resolved)
        _client, _resolved = client, True

    def undo() -> None:
        global _client, _resolved
        with _lock:
            _client, _resolved = before

    return undo
