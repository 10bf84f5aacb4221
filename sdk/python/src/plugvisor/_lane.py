"""Call connections on threads of their own: a plain `execute` read, run and answered by one thread.

The event loop parses every connection's requests, and plain plugin code used to run on a pool
thread, the answer going back to the loop: three thread wake-ups per call, each costly on a
small VM, and a contended GIL. Instead, when a connection's next request is an authorized
``POST /v1/execute`` (or ``/v1/methods/<name>``) of a *plain* function, the loop hands the
connection over to a thread of its own (the `CallLane`), as the Rust runtime moves call
connections to its plugin runtime. That thread reads the body, runs the plugin code inline and
writes the answer with blocking socket calls, and keeps serving the connection's calls. Any
other request on it (a stream, an async method, health, a bad or unauthorized request) is handed
back to the event loop with the bytes already read, which serves it as usual.

The guarantees stay: plugin code never runs on the event loop, so ``/v1/health`` (on its own
connection) answers while a call blocks; a call is cancelled when its connection is closed by
the host (an epoll watcher thread waits for the peer's hang-up, ``EPOLLRDHUP``, of every
handed-over connection; nothing is done per call); shutdown closes idle call connections at
once, lets busy ones answer (with ``connection: close``) and drops them after the grace period.
At most ``PLUGVISOR_WORKER_THREADS`` connections are on lane threads; more are served through
the pool as before.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from . import _wire as wire
from ._calls import Call, call_for, exit_for, is_async_callable, reset_current, set_current
from ._errors import PluginError, error_from_exception
from ._http import MAX_HEAD, HttpError, RequestHead, answer_head, find_head_end, parse_head

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["CallLane"]

_log = logging.getLogger("plugvisor")
_JSON = [("content-type", "application/json")]

#: Bytes asked of the socket per read.
_READ = 65536
#: A head that did not parse: handed back to the event loop, which answers the error.
_UNPARSED = RequestHead("", "", "", None, "HTTP/1.1")


class CallLane:
    """The threads serving handed-over call connections, and their cancellation watcher."""

    def __init__(self, server: "Server", limit: int) -> None:
        self.server = server
        self.limit = limit
        self._lock = threading.Lock()
        self._conns: Dict[int, "LaneConnection"] = {}
        self._epoll: Optional[Any] = None

    # ------------------------------------------------------------------ on the event loop

    def plain_call(self, head: RequestHead) -> Optional[Callable[..., Any]]:
        """The plain plugin function an authorized request calls, when the lane serves it."""
        if head.method != "POST" or head.chunked or head.expect_continue:
            return None
        if (head.content_length or 0) > self.server.options.max_body:
            return None
        server = self.server
        path = head.path
        if path == wire.EXECUTE:
            fn: Optional[Callable[..., Any]] = server.plugin.execute
        elif path.startswith(wire.METHOD_PREFIX):
            fn = server.methods.get(path[len(wire.METHOD_PREFIX) :])
        else:
            return None
        if fn is None or server.stopping or is_async_callable(fn) or not server.authorized(head):
            return None
        return fn

    def has_room(self) -> bool:
        """True while fewer than `limit` connections are on lane threads."""
        return len(self._conns) < self.limit

    def take(self, sock: socket.socket, head: RequestHead, raw_head: bytes, rest: bytes) -> None:
        """Serves `sock` on a thread of its own, starting with the request `head` already read
        (`raw_head` its bytes, `rest` what followed them)."""
        conn = LaneConnection(self, sock, rest)
        with self._lock:
            self._conns[sock.fileno()] = conn
        self._watch(sock.fileno())
        name = f"plugvisor-call-{sock.fileno()}"
        threading.Thread(target=conn.run, args=(head, raw_head), name=name, daemon=True).start()

    def busy(self) -> int:
        """Connections serving a request now."""
        return sum(1 for c in list(self._conns.values()) if c.busy)

    def stop_idle(self) -> None:
        """Shutdown began: idle connections are closed now, busy ones after their answer."""
        for conn in list(self._conns.values()):
            if not conn.busy:
                conn.hang_up()

    def abort(self) -> None:
        """The grace period is over: drops every connection and cancels its call."""
        for conn in list(self._conns.values()):
            conn.cancel()
            conn.hang_up()

    # ------------------------------------------------------------------ the watcher

    def _watch(self, fd: int) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
            threading.Thread(target=self._watcher, name="plugvisor-hangups", daemon=True).start()
        # One-shot: the peer hangs up once; the connection's thread sees the end itself.
        self._epoll.register(fd, select.EPOLLRDHUP | select.EPOLLONESHOT)

    def _watcher(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        while True:
            try:
                events = epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                conn = self._conns.get(fd)
                if conn is not None:
                    conn.cancel()

    def forget(self, conn: "LaneConnection") -> None:
        """`conn` leaves the lane (closed, or handed back to the event loop); once only, as its
        descriptor may be another connection's by the time it is asked again."""
        fd = conn.fd
        with self._lock:
            if conn.forgotten:
                return
            conn.forgotten = True
            if self._conns.get(fd) is conn:
                del self._conns[fd]
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass


class LaneConnection:
    """One handed-over connection and the thread serving it."""

    def __init__(self, lane: CallLane, sock: socket.socket, rest: bytes) -> None:
        self.lane = lane
        self.server = lane.server
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(rest)
        #: The call running now (`None` between calls).
        self.call: Optional[Call] = None
        #: A request is being served (from its head to its answer).
        self.busy = False
        self.gone = False
        #: It left the lane (`CallLane.forget`).
        self.forgotten = False

    def cancel(self) -> None:
        """The host hung up (or the grace period is over): the running call is cancelled on
        the event loop, where cancel callbacks run."""
        self.gone = True
        call = self.call
        if call is not None:
            try:
                self.server.loop.call_soon_threadsafe(call._cancel)
            except RuntimeError:  # the loop is closed: the worker is exiting
                call._cancel()

    def hang_up(self) -> None:
        """Wakes the thread out of its read (or write) by shutting the socket down."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ the thread

    def run(self, head: Optional[RequestHead], raw_head: bytes) -> None:
        handed_back = False
        try:
            while True:
                if head is None:
                    got = self._read_head()
                    if got is None:
                        return
                    head, raw_head = got
                self.busy = True
                fn = self.lane.plain_call(head) if head.path else None
                if fn is None:
                    self._hand_back(raw_head)
                    handed_back = True
                    return
                keep = self._serve(head, fn)
                self.busy = False
                if not keep:
                    return
                head = None
        except OSError:
            pass  # the connection broke
        except Exception:  # noqa: BLE001 - a bug here must not take the worker down
            _log.exception("call connection failed")
        finally:
            self.busy = False
            self.lane.forget(self)
            if not handed_back:
                try:
                    self.sock.close()
                except OSError:
                    pass

    def _read_head(self) -> Optional[Tuple[RequestHead, bytes]]:
        """The next request's head and its bytes; `None` at the end of the connection. Bytes
        that are not a good head come back with an empty path: the event loop answers them."""
        while True:
            end = find_head_end(self.buf)
            if end >= 0 or len(self.buf) > MAX_HEAD:
                raw = bytes(self.buf[: end if end >= 0 else len(self.buf)])
                del self.buf[: len(raw)]
                try:
                    return parse_head(raw), raw
                except HttpError:
                    return _UNPARSED, raw
            if self.server.stopping:
                return None
            data = self.sock.recv(_READ)
            if not data:
                return None
            self.buf += data

    def _read_body(self, length: int) -> bytes:
        while len(self.buf) < length:
            data = self.sock.recv(max(_READ, length - len(self.buf)))
            if not data:
                raise ConnectionResetError("the connection closed before the body ended")
            self.buf += data
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body

    def _hand_back(self, raw_head: bytes) -> None:
        """Returns the connection to the event loop, which reads `raw_head` again."""
        self.lane.forget(self)
        data = raw_head + bytes(self.buf)
        self.server.loop.call_soon_threadsafe(self.server.adopt, self.sock, data)

    def _serve(self, head: RequestHead, fn: Callable[..., Any]) -> bool:
        """Answers one call; True to keep the connection."""
        server = self.server
        body = self._read_body(head.content_length or 0)
        call = call_for(head)
        try:
            request = wire.read_object(body, {"input": True})
            value = server._input(body, request["input"])
            output = self._run(fn, value, call)
            status, data, headers, close = 200, wire.dumps({"output": output}), _JSON, False
        except (TypeError, ValueError, PluginError) as e:
            from ._server import error_reply

            reply = error_reply(_as_error(e))
            status, data, headers, close = reply.status, reply.body, reply.headers, reply.close
        close = close or not head.keep_alive or server.stopping or self.gone
        self.sock.sendall(answer_head(status, headers, length=len(data), close=close) + data)
        return not close

    def _run(self, fn: Callable[..., Any], value: Any, call: Call) -> Any:
        """Runs the plugin function here, counted as a call and cancellable."""
        end = self.server.counters.start()
        self.call = call
        if self.gone:
            call._cancel()
        token = set_current(call)
        try:
            output = fn(value)
            if hasattr(output, "__await__"):
                output = self.server.runner.wait_coroutine(output, call)
            return output
        except SystemExit as e:
            exit_for(e)
        except PluginError:
            raise
        except Exception as e:  # noqa: BLE001 - the plugin's error is the call's answer
            raise error_from_exception(e) from None
        finally:
            reset_current(token)
            self.call = None
            end()


def _as_error(e: BaseException) -> PluginError:
    """The error answer for a failed call on the lane."""
    if isinstance(e, PluginError):
        return e
    if isinstance(e, wire.BadJson):
        return PluginError(str(e), kind="bad_request")
    return PluginError(f"the answer could not be serialized: {e}")
