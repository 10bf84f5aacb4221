"""The worker server: connections, auth, the `/v1` routes and their handlers, graceful shutdown.

Everything here runs on one event loop (the *server loop*, the main thread): HTTP parsing,
health and info answers, stream framing. Plugin code never runs here; it runs on the `Runner`
(a thread pool for plain code, an event loop thread for async code), or, for a plain call, on
the call lane (`_lane.py`: the connection moves to a thread of its own), so a busy or blocked
plugin cannot stall ``GET /v1/health``. A call is cancelled when its connection closes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import stat
import threading
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

from . import _wire as wire
from ._calls import Call, Runner, call_for, is_async_callable
from ._errors import FileAccessDenied, PluginError, error_from_exception, own, status_of
from ._files import MalformedFileRef, TransferDir, check_and_convert_input
from ._http import MAX_HEAD, ChunkedDecoder, HttpError, RequestHead, answer_head, bare_answer, find_head_end, parse_head
from ._lane import CallLane
from ._plugin import Plugin, RouteSpec, declared_methods, declared_routes, overrides

if TYPE_CHECKING:
    import ssl

    from ._ext import RouteResponse
    from ._stream import Pump

# Imported when first needed (start-up time): `_ext` (routes, hooks, health reports), `_events`
# (host events), `_stream` (NDJSON streams).

__all__ = ["Server", "ServeOptions", "StartError", "route_params"]

_log = logging.getLogger("plugvisor")

#: Capabilities every worker announces in ``/v1/info``.
_CAPABILITIES = ["execute", "stream", "files"]
#: Bytes buffered from a client past which its socket is not read until they are consumed.
_READ_HIGH_WATER = 1 << 20
#: Headers a route answer may not set: the worker frames the answer itself.
_FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
_JSON = [("content-type", "application/json")]


class StartError(Exception):
    """The worker cannot start (bind failed, bad declarations): exit status 1."""


class ServeOptions:
    """How a server behaves (`docs/PROTOCOL.md` §2, §11, §12). (Plain classes here and in
    `_http`/`_run`, not dataclasses: making a dataclass compiles code, which start-up pays.)"""

    def __init__(
        self,
        token: str,
        transfer_dir: Optional[TransferDir] = None,
        max_body: int = wire.DEFAULT_MAX_BODY,
        grace: float = 2.0,
        cleanup_timeout: float = 0.5,
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.token = token
        #: The only directory file references may point into; with one, the worker also
        #: takes files streamed to it (``file_transfer`` and ``streamed_upload``,
        #: `docs/PROTOCOL.md` §14).
        self.transfer_dir = transfer_dir
        self.max_body = max_body
        self.grace = grace
        self.cleanup_timeout = cleanup_timeout
        #: Serve TLS on a TCP listener (remote workers, `_tls.server_context`); `None` serves
        #: plain HTTP.
        self.tls = tls


class Reply:
    """A complete answer."""

    __slots__ = ("status", "body", "headers", "close")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Optional[List[Tuple[str, str]]] = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = list(_JSON) if headers is None else headers
        self.close = close


def json_reply(status: int, value: Any) -> Reply:
    """A JSON answer; a value that cannot be written is ``500 plugin_failed``."""
    try:
        return Reply(status, wire.dumps(value))
    except (TypeError, ValueError) as e:
        return error_reply(PluginError(f"the answer could not be serialized: {e}"))


def error_reply(err: PluginError) -> Reply:
    """The error answer for `err`: its kind's status, ``{"error": {"kind", "message"}}``
    (never ``worker_crashed``, the host's word about a dead worker: `own`)."""
    err = own(err)
    reply = Reply(status_of(err.kind), wire.error_body(err.kind, err.message))
    if err.kind == "unauthorized":
        reply.headers.append(("www-authenticate", "Bearer"))
    elif err.kind == "payload_too_large":
        reply.close = True
    extra = getattr(err, "headers", None)
    if extra:
        reply.headers.extend(extra)
    return reply


def _error(kind: str, message: str, headers: Optional[List[Tuple[str, str]]] = None) -> PluginError:
    err = PluginError(message, kind=kind)
    if headers:
        err.headers = headers  # type: ignore[attr-defined]
    return err


class Counters:
    """Calls running now and calls started so far (the server loop's and the call lane's)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.calls_total = 0
        self._lock = threading.Lock()

    def start(self) -> Callable[[], None]:
        """Counts a call as started and running; the returned function ends it (once)."""
        with self._lock:
            self.calls_total += 1
            self.in_flight += 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                with self._lock:
                    self.in_flight -= 1

        return end


def route_params(pattern: str, path: str) -> Optional[Dict[str, str]]:
    """The values of `pattern`'s parameters when `path` matches it: literal segments match
    themselves, ``{name}`` one non-empty segment, a last ``{*name}`` the rest of the path."""
    got = path.lstrip("/").split("/")
    wanted = pattern.lstrip("/").split("/")
    params: Dict[str, str] = {}
    at = 0
    for i, want in enumerate(wanted):
        if want.startswith("{*") and want.endswith("}"):
            params[want[2:-1]] = "/".join(got[at:])
            return params if i == len(wanted) - 1 else None
        if at >= len(got):
            return None
        segment = got[at]
        at += 1
        if want.startswith("{") and want.endswith("}"):
            if not segment:
                return None
            params[want[1:-1]] = segment
        elif want != segment:
            return None
    return params if at == len(got) else None


class Server:
    """Serves one plugin: the state every connection shares, and the route handlers."""

    def __init__(self, plugin: Plugin, options: ServeOptions, runner: Runner) -> None:
        if not options.token:
            raise StartError("no token: the token is empty")
        self.plugin = plugin
        self.options = options
        self.runner = runner
        self.loop = runner.server_loop
        self.expected_auth = b"Bearer " + options.token.encode("utf-8")
        self.counters = Counters()
        self.stopping = False
        self.cleaned = False
        self.connections: Set[Connection] = set()
        # Made in `serve`, on the running loop (an Event made elsewhere binds to the wrong
        # loop on Python 3.9).
        self._stopped: Optional[asyncio.Event] = None
        self._listener: Optional[asyncio.AbstractServer] = None
        self.socket_path: Optional[str] = None
        #: Call connections served on threads of their own (`_lane.py`).
        self.lane = CallLane(self, runner.threads)
        self._declare()

    # ------------------------------------------------------------------ declarations

    def _declare(self) -> None:
        plugin = self.plugin
        try:
            self.routes: List[Tuple[RouteSpec, Callable[..., Any]]] = declared_routes(plugin)
            methods = declared_methods(plugin)
        except ValueError as e:
            raise StartError(f"the plugin's methods: {e}") from None
        self.method_specs = [spec for spec, _ in methods]
        self.methods: Dict[str, Callable[..., Any]] = {spec.name: fn for spec, fn in methods}
        self.hooks = [h for h in ("before_request", "after_response") if overrides(plugin, h)]
        self.health_check = overrides(plugin, "health_check")
        self.event_names = self._declared_events()

    def _declared_events(self) -> List[str]:
        """The plugin's `events`, checked, when it overrides `on_event` (else none: an
        ``events`` attribute of a plugin without `on_event` may be its own data). A bad
        declaration stops the worker at start."""
        plugin = self.plugin
        if not overrides(plugin, "on_event"):
            declared = getattr(type(plugin), "events", ())
            if isinstance(declared, (list, tuple)) and declared and all(isinstance(n, str) for n in declared):
                _log.warning("the plugin declares events but has no on_event: it hears none")
            return []
        from ._events import check_event_names

        try:
            declared = getattr(plugin, "events", ())
            if callable(declared):
                declared = declared()
            names = check_event_names(declared)
        except Exception as e:  # noqa: BLE001 - a bad or raising declaration
            raise StartError(f"the plugin's events: {e}") from None
        if not names:
            _log.warning("the plugin has an on_event but declares no events: it hears none")
        return names

    def capabilities(self) -> List[str]:
        """``execute``, ``stream``, ``files``, each extension the plugin serves, and
        ``file_transfer`` and ``streamed_upload`` (``PUT /v1/files``) when the worker has a
        transfer directory to receive files in."""
        transfer = self.options.transfer_dir is not None
        extensions = [
            ("routes", bool(self.routes)),
            ("middleware", bool(self.hooks)),
            ("methods", bool(self.methods)),
            ("health_check", self.health_check),
            ("events", bool(self.event_names)),
            ("file_transfer", transfer),
            ("streamed_upload", transfer),
        ]
        return _CAPABILITIES + [name for name, on in extensions if on]

    # ------------------------------------------------------------------ listening

    async def listen_unix(self, path: str) -> str:
        """Binds a Unix socket at `path` (mode 0600), replacing a stale socket file only."""
        path = os.path.abspath(path)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
        except OSError as e:
            sock.close()
            raise StartError(f"cannot listen on unix:{path}: {e}") from None
        finally:
            os.umask(old_umask)
        self._listener = await self.loop.create_unix_server(
            lambda: Connection(self), sock=sock, backlog=1024
        )
        self.socket_path = path
        return path

    async def listen_tcp(self, host: str, port: int) -> str:
        """Binds TCP `host`:`port` (0: any free port), serving TLS when the options carry a
        context; returns the ``host:port`` bound."""
        tls: Dict[str, Any] = {}
        if self.options.tls is not None:
            from ._tls import HANDSHAKE_TIMEOUT

            tls = {"ssl": self.options.tls, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
        try:
            self._listener = await self.loop.create_server(
                lambda: Connection(self),
                host.strip("[]"),
                port,
                backlog=1024,
                reuse_address=True,
                **tls,
            )
        except OSError as e:
            raise StartError(f"cannot listen on tcp://{host}:{port}: {e}") from None
        bound = self._listener.sockets[0].getsockname()
        addr, real_port = bound[0], bound[1]
        return f"[{addr}]:{real_port}" if ":" in addr else f"{addr}:{real_port}"

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self, why: str) -> None:
        """Starts the graceful shutdown (idempotent): no new connections or calls."""
        if self.stopping:
            return
        _log.info("shutting down (%s)", why)
        self.stopping = True
        self.wake()

    def wake(self) -> None:
        """Lets `serve` go on to the shutdown sequence when `stopping` is set."""
        if self._stopped is not None:
            self._stopped.set()

    async def serve(self) -> None:
        """Serves until shutdown, then drains, cleans up and returns (`docs/PROTOCOL.md` §11)."""
        _log.info("serving plugin=%s", _safe_str(lambda: self.plugin.name))
        self._stopped = asyncio.Event()
        if self.stopping:
            self._stopped.set()
        await self._stopped.wait()
        if self._listener is not None:
            self._listener.close()
        self.remove_socket_file()
        for conn in list(self.connections):
            conn.stop_if_idle()
        self.lane.stop_idle()
        await self._drain()
        await self._cleanup()
        _log.info("stopped")

    def remove_socket_file(self) -> None:
        """Removes the socket file; a missing one is fine."""
        if self.socket_path is None:
            return
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.warning("cannot remove the socket file %s: %s", self.socket_path, e)

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.options.grace
        tasks = [c.task for c in self.connections if c.task is not None]
        pending: Set[Any] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.options.grace)
        while self.lane.busy() and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if pending or self.lane.busy():
            _log.warning(
                "grace period over; dropping the calls still running remaining=%d",
                len(pending) + self.lane.busy(),
            )
            for conn in list(self.connections):
                conn.abort()
            self.lane.abort()
            if pending:
                await asyncio.wait(pending, timeout=0.5)

    def adopt(self, sock: socket.socket, data: bytes) -> None:
        """Serves on the event loop a connection the call lane hands back, `data` the bytes it
        had read and not answered."""
        sock.setblocking(False)
        factory = lambda: Connection(self, data)  # noqa: E731
        task = self.loop.create_task(self.loop.connect_accepted_socket(factory, sock))
        task.add_done_callback(_quiet)

    async def _cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        try:
            await asyncio.wait_for(
                self.runner.run(self.plugin.cleanup), timeout=self.options.cleanup_timeout
            )
            _log.debug("plugin cleaned up")
        except asyncio.TimeoutError:
            _log.warning("plugin cleanup timed out limit=%ss", self.options.cleanup_timeout)
        except Exception as e:  # noqa: BLE001 - a failed cleanup does not stop the exit
            err = error_from_exception(e)
            _log.warning("plugin cleanup failed: %s", err.message)

    # ------------------------------------------------------------------ routing

    def authorized(self, head: RequestHead) -> bool:
        """True when ``Authorization`` is exactly ``Bearer <token>`` (constant-time compare)."""
        got = head.header("authorization")
        if got is None:
            return False
        return _compare_digest(got.encode("latin-1"), self.expected_auth)

    def find(self, head: RequestHead) -> Callable[["Connection", RequestHead], Awaitable[Optional[Reply]]]:
        """The handler for the request, or a `PluginError` (404 / 405) raised."""
        path, method = head.path, head.method
        rest = path[len(wire.ROUTE_PREFIX) :] if path.startswith(wire.ROUTE_PREFIX) else None
        if rest is not None and (rest == "" or rest.startswith("/")):
            return self.h_route
        if path.startswith(wire.METHOD_PREFIX):
            if method != "POST":
                raise _wrong_method(path, "POST", method)
            return self.h_method
        if path.startswith("/v1/file"):
            from . import _uploads

            transfer = _uploads.route(method, path)
            if transfer is not None:
                return lambda conn, head: transfer(self, conn, head)  # type: ignore[no-any-return]
        entry = self._table.get(path)
        if entry is None:
            raise _error("not_found", f"no route {path}")
        allowed, handler = entry
        if method != allowed:
            raise _wrong_method(path, allowed, method)
        found: Callable[["Connection", RequestHead], Awaitable[Optional[Reply]]] = handler(self)
        return found

    _table: Dict[str, Tuple[str, Callable[["Server"], Any]]] = {
        wire.HEALTH: ("GET", lambda s: s.h_health),
        wire.INFO: ("GET", lambda s: s.h_info),
        wire.CONFIG: ("GET", lambda s: s.h_config),
        wire.CONFIG_SCHEMA: ("GET", lambda s: s.h_config_schema),
        wire.INITIALIZE: ("POST", lambda s: s.h_initialize),
        wire.EXECUTE: ("POST", lambda s: s.h_execute),
        wire.EXECUTE_STREAM: ("POST", lambda s: s.h_execute_stream),
        wire.CLEANUP: ("POST", lambda s: s.h_cleanup),
        wire.SHUTDOWN: ("POST", lambda s: s.h_shutdown),
        wire.BEFORE_REQUEST: ("POST", lambda s: s.h_before_request),
        wire.AFTER_RESPONSE: ("POST", lambda s: s.h_after_response),
        wire.PLUGIN_HEALTH: ("POST", lambda s: s.h_plugin_health),
        wire.EVENTS: ("POST", lambda s: s.h_events),
    }

    def refuse_when_stopping(self) -> None:
        """New calls get ``503 unavailable`` once shutdown has begun."""
        if self.stopping:
            raise _error("unavailable", "the worker is shutting down")

    # ------------------------------------------------------------------ plugin values

    async def _value(self, fn: Callable[[], Any]) -> Any:
        """A quick plugin value (schema, config): inline when plain, on the plugin loop when
        async. Exceptions become `PluginError`."""
        try:
            if is_async_callable(fn):
                return await self.runner.run(fn)
            value = fn()
            if inspect.isawaitable(value):
                value = await self.runner.run_coroutine(value, Call())
            return value
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            raise error_from_exception(e) from None

    async def _call(self, fn: Callable[..., Any], *args: Any, call: Optional[Call] = None) -> Any:
        """Runs plugin code on the runner; exceptions become `PluginError`."""
        try:
            return await self.runner.run(fn, *args, call=call)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            raise error_from_exception(e) from None

    def _input(self, body: bytes, value: Any) -> Any:
        """`value` with its file references checked and turned into `FileRef`s."""
        if b"$file" not in body and b"\\u" not in body:
            return value
        transfer = self.options.transfer_dir

        def check(path: str) -> None:
            if transfer is None:
                raise FileAccessDenied(f"{path}: this worker has no transfer directory")
            transfer.check(path)

        try:
            return check_and_convert_input(value, check)
        except MalformedFileRef as e:
            raise _error("bad_request", str(e)) from None
        except FileAccessDenied as e:
            _log.warning("file reference refused: %s", e.message)
            raise

    async def _request(self, conn: "Connection", fields: Dict[str, bool]) -> Tuple[bytes, Dict[str, Any]]:
        body = await conn.read_body(self.options.max_body)
        try:
            return body, wire.read_object(body, fields)
        except wire.BadJson as e:
            raise _error("bad_request", str(e)) from None

    async def _json_body(self, conn: "Connection") -> Any:
        body = await conn.read_body(self.options.max_body)
        stripped = body.strip()
        if stripped[:1] != b"{":
            raise _error("bad_request", "the request body must be a JSON object")
        try:
            return wire.loads(stripped)
        except wire.BadJson as e:
            raise _error("bad_request", str(e)) from None

    # ------------------------------------------------------------------ handlers

    async def h_health(self, conn: "Connection", head: RequestHead) -> Reply:
        """``GET /v1/health``: counters only, never plugin code."""
        return json_reply(
            200,
            {
                "status": "stopping" if self.stopping else "ok",
                "in_flight": self.counters.in_flight,
                "calls_total": self.counters.calls_total,
                "pid": os.getpid(),
            },
        )

    async def h_info(self, conn: "Connection", head: RequestHead) -> Reply:
        """``GET /v1/info``: identity, protocol, schema, capabilities, extensions."""
        plugin = self.plugin
        info: Dict[str, Any] = {
            "name": await self._value(lambda: plugin.name),
            "version": await self._value(lambda: plugin.version),
            "protocol": wire.PROTOCOL_VERSION,
            "config_schema": await self._value(plugin.get_config_schema),
            "capabilities": self.capabilities(),
            "pid": os.getpid(),
        }
        if self.routes:
            info["routes"] = [spec.to_wire() for spec, _ in self.routes]
        if self.hooks:
            info["hooks"] = list(self.hooks)
        if self.method_specs:
            info["methods"] = [spec.to_wire() for spec in self.method_specs]
        if self.event_names:
            info["events"] = list(self.event_names)
        return json_reply(200, info)

    async def h_config(self, conn: "Connection", head: RequestHead) -> Reply:
        """``GET /v1/config``: the configuration in force."""
        return json_reply(200, {"config": await self._value(self.plugin.get_current_config)})

    async def h_config_schema(self, conn: "Connection", head: RequestHead) -> Reply:
        """``GET /v1/config_schema``: the JSON Schema of the configuration."""
        return json_reply(200, {"schema": await self._value(self.plugin.get_config_schema)})

    async def h_initialize(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/initialize``: (re-)configure; answer the configuration now in force."""
        self.refuse_when_stopping()
        _, request = await self._request(conn, {"config": False})
        await self._call(self.plugin.initialize, request.get("config"))
        self.cleaned = False
        return await self.h_config(conn, head)

    async def h_execute(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/execute``: one call, one result."""
        self.refuse_when_stopping()
        body, request = await self._request(conn, {"input": True})
        value = self._input(body, request["input"])
        end = self.counters.start()
        try:
            output = await self._call(self.plugin.execute, value, call=call_for(head))
        finally:
            end()
        return json_reply(200, {"output": output})

    async def h_method(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/methods/<name>``: one call of a named method, answered like execute."""
        self.refuse_when_stopping()
        name = head.path[len(wire.METHOD_PREFIX) :]
        fn = self.methods.get(name)
        if fn is None:
            known = ", ".join(["execute"] + list(self.methods))
            raise _error("not_found", f"no method {_quoted(name)} (methods: {known})")
        body, request = await self._request(conn, {"input": True})
        value = self._input(body, request["input"])
        end = self.counters.start()
        try:
            output = await self._call(fn, value, call=call_for(head))
        finally:
            end()
        return json_reply(200, {"output": output})

    async def h_execute_stream(self, conn: "Connection", head: RequestHead) -> None:
        """``POST /v1/execute_stream``: one call, an NDJSON stream of frames."""
        self.refuse_when_stopping()
        body, request = await self._request(conn, {"input": True})
        value = self._input(body, request["input"])
        end = self.counters.start()
        call = call_for(head)
        from ._stream import Pump

        pump: Optional[Pump] = None
        finished = False
        try:
            source = await self._stream_source(value, call)
            pump = Pump(self.runner, call, source)
            pump.start()
            data, done = await pump.take()
            if done and pump.early_error is not None:
                finished = True
                raise pump.early_error
            writer = conn.start_body(200, [("content-type", wire.NDJSON), ("cache-control", "no-store")])
            while True:
                await writer.write(data)
                if done:
                    break
                data, done = await pump.take()
            finished = True
            end()
            await writer.finish()
        finally:
            end()
            if not finished:
                # The client left (cancelled, or a write failed): stop the plugin's generator.
                if pump is not None:
                    pump.cancel()
                else:
                    call._cancel()

    async def _stream_source(self, value: Any, call: Call) -> Any:
        """What the plugin streams: its `execute_stream`'s generator or iterable (the default:
        `execute`'s result as the one item)."""
        plugin = self.plugin
        if not overrides(plugin, "execute_stream"):
            return [await self._call(plugin.execute, value, call=call)]
        fn = plugin.execute_stream
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            source = fn(value)
        else:
            source = await self._call(fn, value, call=call)
        if isinstance(source, (str, bytes, dict)) or not (
            hasattr(source, "__iter__") or hasattr(source, "__aiter__")
        ):
            raise PluginError(
                f"execute_stream returned {type(source).__name__}; return a generator or an iterable"
            )
        return source

    async def h_plugin_health(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/plugin_health``: the plugin's own verdict (404 without a health check)."""
        self.refuse_when_stopping()
        if not self.health_check:
            raise _error("not_found", "this plugin has no health check")
        await conn.discard_body(self.options.max_body)
        report = await self._call(self.plugin.health_check)
        from ._ext import health_to_wire

        try:
            return json_reply(200, health_to_wire(report))
        except PluginError as e:
            return error_reply(e)

    async def h_events(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/events``: one host event for a subscribed plugin, answered ``204`` once
        the plugin handled it (404 when it hears no events or did not declare this one). Not
        counted as a call."""
        self.refuse_when_stopping()
        if not self.event_names:
            raise _error("not_found", "this plugin hears no events")
        from ._events import Event, handles_event

        body = await conn.read_body(self.options.max_body)
        stripped = body.strip()
        try:
            if not stripped:
                raise ValueError("missing field `event`")
            if stripped[:1] != b"{":
                raise ValueError("the request body must be a JSON object")
            event = Event.from_wire(wire.loads(stripped))
        except ValueError as e:  # BadJson included
            raise _error("bad_request", str(e)) from None
        if not handles_event(self.event_names, event.event):
            raise _error(
                "not_found",
                f"this plugin does not handle event {_quoted(event.event)} "
                f"(it handles: {', '.join(self.event_names)})",
            )
        await self._call(self.plugin.on_event, event, call=Call())
        return Reply(204, b"", [])

    async def h_cleanup(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/cleanup``: runs the plugin's cleanup now."""
        await conn.discard_body(self.options.max_body)
        await self._call(self.plugin.cleanup)
        self.cleaned = True
        return json_reply(200, {"status": "cleaned"})

    async def h_shutdown(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/shutdown``: answers 202, then shuts down."""
        _log.info("shutdown requested over HTTP")
        await conn.discard_body(self.options.max_body)
        conn.after_reply = lambda: self.begin_shutdown("POST /v1/shutdown")
        return json_reply(202, {"status": "stopping"})

    def _hook(self, hook: str) -> None:
        self.refuse_when_stopping()
        if hook not in self.hooks:
            raise _error("not_found", f"this plugin serves no {hook} hook")

    async def h_before_request(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/hooks/before_request``: the middleware sees a host request."""
        self._hook("before_request")
        from ._ext import HookRequest, before_action_to_wire

        try:
            request = HookRequest.from_wire(await self._json_body(conn))
        except ValueError as e:
            raise _error("bad_request", str(e)) from None
        end = self.counters.start()
        try:
            action = await self._call(self.plugin.before_request, request)
        finally:
            end()
        return json_reply(200, before_action_to_wire(action))

    async def h_after_response(self, conn: "Connection", head: RequestHead) -> Reply:
        """``POST /v1/hooks/after_response``: the middleware sees (and may change) an answer."""
        self._hook("after_response")
        from ._ext import HookRequest, HookResponse, after_response_to_wire

        exchange = await self._json_body(conn)
        try:  # unknown fields are ignored, as the Rust runtime does
            request = HookRequest.from_wire(exchange.get("request"))
            response = HookResponse.from_wire(exchange.get("response"))
        except ValueError as e:
            raise _error("bad_request", str(e)) from None
        end = self.counters.start()
        try:
            answer = await self._call(self.plugin.after_response, request, response)
        finally:
            end()
        return json_reply(200, after_response_to_wire(answer, response))

    async def h_route(self, conn: "Connection", head: RequestHead) -> Optional[Reply]:
        """``ANY /v1/route/…``: one request to a plugin route, body and answer streamed."""
        self.refuse_when_stopping()
        if not self.routes:
            raise _error("not_found", "this plugin has no routes")
        from ._ext import RouteBody, RouteRequest, route_answer

        path = head.path[len(wire.ROUTE_PREFIX) :]
        if not path.startswith("/"):
            path = "/"
        handler, params = self._match(head.method, path)
        request = RouteRequest(
            head.method,
            path,
            head.query,
            params,
            [(k, v) for k, v in head.headers if k != "authorization"],
            RouteBody(self.loop, conn.body_chunk),
        )
        end = self.counters.start()
        call = call_for(head)
        try:
            answer = route_answer(await self._call(handler, request, call=call))
            await conn.send_route_answer(answer, call, head.method == "HEAD")
        except asyncio.CancelledError:
            call._cancel()
            raise
        except (TypeError, ValueError) as e:
            raise PluginError(f"the answer could not be serialized: {e}") from None
        finally:
            end()
        return None

    def _match(self, method: str, path: str) -> Tuple[Callable[..., Any], Dict[str, str]]:
        allowed: List[str] = []
        for spec, handler in self.routes:
            params = route_params(spec.path, path)
            if params is None:
                continue
            if spec.method == method.upper():
                return handler, params
            if spec.method not in allowed:
                allowed.append(spec.method)
        if allowed:
            raise _error(
                "method_not_allowed",
                f"{path} does not take {method}",
                [("allow", ", ".join(allowed))],
            )
        raise _error("not_found", f"no route {path}")


try:  # hmac's constant-time compare, without importing hmac (and OpenSSL) at start-up
    from _operator import _compare_digest
except ImportError:  # not CPython
    from hmac import compare_digest as _compare_digest


def _quiet(task: "asyncio.Task[Any]") -> None:
    """Consumes the result of a task nobody awaits (a failed adoption closes the socket)."""
    if not task.cancelled() and task.exception() is not None:
        _log.debug("adopting a call connection failed: %s", task.exception())


def _wrong_method(path: str, allowed: str, method: str) -> PluginError:
    return _error(
        "method_not_allowed", f"{path} takes {allowed}, not {method}", [("allow", allowed)]
    )


def _quoted(name: str) -> str:
    import json

    return json.dumps(name, ensure_ascii=False)


def _safe_str(fn: Callable[[], Any]) -> str:
    try:
        return str(fn())
    except Exception:  # noqa: BLE001
        return "?"


def _remove_stale_socket(path: str) -> None:
    """Removes a socket file at `path` when nothing listens on it any more."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StartError(f"cannot listen on unix:{path}: {e}") from None
    if not stat.S_ISSOCK(mode):
        raise StartError(f"cannot listen on unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        pass
    else:
        raise StartError(f"another process is already listening on {path}")
    finally:
        probe.close()
    _log.info("removing stale socket file path=%s", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartError(f"cannot listen on unix:{path}: {e}") from None


# ============================================================================ connections


class BodyError(Exception):
    """The request body broke off or is malformed."""


class ChunkWriter:
    """Writes an answer body in pieces: chunked (HTTP/1.1) or until close (HTTP/1.0)."""

    def __init__(self, conn: "Connection", chunked: bool) -> None:
        self._conn = conn
        self._chunked = chunked

    async def write(self, data: bytes) -> None:
        """Sends `data` as one chunk (nothing for empty data) and waits while the client is slow."""
        if not data:
            return
        if self._chunked:
            self._conn.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self._conn.write(data)
        await self._conn.drain()

    async def finish(self) -> None:
        """Ends the body."""
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        await self._conn.drain()


class Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time.

    A call is cancelled when the client closes the connection while it runs (end-of-input or a
    lost connection on a busy connection, `docs/PROTOCOL.md` §9).
    """

    def __init__(self, server: Server, data: bytes = b"") -> None:
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.buf = bytearray(data)
        #: The connection moved to the call lane (the transport let go of a copy of its socket).
        self.handed_off = False
        self._raw_head = b""
        self.eof = False
        self.lost = False
        self.busy = False
        self.after_reply: Optional[Callable[[], None]] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self._head: Optional[RequestHead] = None
        self._remaining = 0
        self._decoder: Optional[ChunkedDecoder] = None
        self._body_done = True
        self._continue_due = False
        self._head_sent = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.task = self.server.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()
        if len(self.buf) > _READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        if self.busy:
            self._client_left()
        # Keep the write side open after the client's end of input; TLS transports cannot
        # (asyncio warns when asked to) and close instead.
        return self.server.options.tls is None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.eof = self.lost = True
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self.busy:
            self._client_left()
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ plumbing

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _client_left(self) -> None:
        """The client closed its side while a request runs: cancel it (`PROTOCOL.md` §9)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _more(self) -> None:
        """Waits for more bytes (or end-of-input)."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self.server.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def write(self, data: bytes) -> None:
        """Queues `data` for the client (dropped once the connection is lost)."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drain(self) -> None:
        """Waits while the client reads slower than the worker writes."""
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        if self._writing_paused:
            waiter = self.server.loop.create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None

    def stop_if_idle(self) -> None:
        """Shutdown began: an idle connection is closed now, a busy one after its answer."""
        if not self.busy:
            self.abort()

    def abort(self) -> None:
        """Drops the connection and whatever it runs."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ the request loop

    async def _serve(self) -> None:
        try:
            # A connection's first request is read even once stopping began (one the call lane
            # hands back was already read there); `_handle` refuses it and ends the connection.
            while True:
                try:
                    head = await self._read_head()
                except HttpError as e:
                    self.write(bare_answer(e.status))
                    break
                if head is None:
                    break
                if self._hand_off(head):
                    return
                if not await self._handle(head):
                    break
        except asyncio.CancelledError:
            pass
        except (ConnectionError, BodyError):
            pass
        except Exception:  # noqa: BLE001 - a bug here must not take the worker down
            _log.exception("connection failed")
        finally:
            self.busy = False
            if self.transport is not None and not self.handed_off:
                self.transport.close()
            self.server.connections.discard(self)

    def _hand_off(self, head: RequestHead) -> bool:
        """Moves the connection to the call lane when its request is a plain call the lane
        serves (and nothing is left to write here); True when it did."""
        lane = self.server.lane
        transport = self.transport
        if self.server.options.tls is not None:
            return False  # the TLS session lives in the loop's transport: it cannot move
        if transport is None or self.eof or not lane.has_room() or transport.get_write_buffer_size():
            return False
        if lane.plain_call(head) is None:
            return False
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            return False
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
        self.handed_off = True
        self.busy = False
        transport.abort()  # closes the loop's descriptor only: the copy keeps the connection
        lane.take(sock, head, self._raw_head, bytes(self.buf))
        return True

    async def _read_head(self) -> Optional[RequestHead]:
        while True:
            end = find_head_end(self.buf)
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[:end]
                self._raw_head = data
                return parse_head(data)
            if len(self.buf) > MAX_HEAD:
                raise HttpError(431, "the request head is too large")
            if self.eof:
                return None
            await self._more()

    async def _handle(self, head: RequestHead) -> bool:
        """Answers one request; True to keep the connection for the next one."""
        self.busy = True
        self._head = head
        self._head_sent = False
        self._start_body(head)
        server = self.server
        reply: Optional[Reply]
        try:
            if head.method == "GET" and head.path == wire.PROBE:
                # Orchestrators' probes carry no token; the answer says only pass or fail.
                stopping = server.stopping
                reply = json_reply(503 if stopping else 200, {"status": "fail" if stopping else "pass"})
            elif not server.authorized(head):
                _log.debug("unauthorized request path=%s", head.path)
                raise _error("unauthorized", "missing or wrong bearer token")
            else:
                handler = server.find(head)
                reply = await handler(self, head)
        except PluginError as e:
            reply = error_reply(e)
        except BodyError as e:
            if self.eof:
                raise
            reply = error_reply(_error("bad_request", f"cannot read the request body: {e}"))
        if self._head_sent:
            keep = reply is None and head.keep_alive and self._body_done and not self.lost
        elif reply is None:
            keep = False
        else:
            keep = self._send(reply, head)
        self.busy = False
        if self.after_reply is not None:
            after, self.after_reply = self.after_reply, None
            after()
        return keep and not server.stopping

    def _send(self, reply: Reply, head: RequestHead) -> bool:
        """Writes a complete answer; True when the connection stays open."""
        close = (
            reply.close
            or not head.keep_alive
            or not self._body_done
            or self.server.stopping
            or self.after_reply is not None
        )
        length = None if reply.status in (204, 304) or reply.status < 200 else len(reply.body)
        data = answer_head(reply.status, reply.headers, length=length, close=close)
        self.write(data if head.method == "HEAD" else data + reply.body)
        self._head_sent = True
        return not close

    def start_sized_body(self, status: int, headers: List[Tuple[str, str]], length: int) -> None:
        """Writes the head of an answer whose `length` body bytes the caller writes next
        (`write`, then `drain`), not chunked: a file streamed back (``GET /v1/file``)."""
        head = self._head
        assert head is not None
        close = not head.keep_alive or not self._body_done or self.server.stopping
        self.write(answer_head(status, headers, length=length, close=close))
        self._head_sent = True
        if close:
            head.keep_alive = False

    def start_body(self, status: int, headers: List[Tuple[str, str]]) -> ChunkWriter:
        """Writes the head of a streamed answer; returns the body's writer."""
        head = self._head
        assert head is not None
        chunked = head.version == "HTTP/1.1"
        close = not chunked or not head.keep_alive or not self._body_done or self.server.stopping
        self.write(answer_head(status, headers, chunked=chunked, close=close))
        self._head_sent = True
        if close:
            head.keep_alive = False
        return ChunkWriter(self, chunked)

    async def send_route_answer(self, answer: RouteResponse, call: Call, head_only: bool) -> None:
        """Writes a route's answer: complete, or streamed chunk by chunk as the plugin yields."""
        headers = [(k, v) for k, v in answer.headers if k.lower() not in _FRAMING]
        body = answer.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, (bytes, bytearray, memoryview)):
            self._send(Reply(answer.status, bytes(body), headers), self._head)  # type: ignore[arg-type]
            return
        writer = self.start_body(answer.status, headers)
        if head_only:
            return
        await self._stream_chunks(body, call, writer)
        await writer.finish()

    async def _stream_chunks(self, body: Any, call: Call, writer: ChunkWriter) -> None:
        runner = self.server.runner
        if hasattr(body, "__aiter__"):
            iterator = body.__aiter__()

            async def step() -> Any:
                try:
                    return await iterator.__anext__()
                except StopAsyncIteration:
                    return _END

            fetch: Callable[[], Awaitable[Any]] = lambda: runner.run_coroutine(step(), call)
        else:
            sync_iterator = iter(body)
            fetch = lambda: runner.run(next, sync_iterator, _END, call=call)
        try:
            while True:
                chunk = await fetch()
                if chunk is _END:
                    return
                if isinstance(chunk, str):
                    chunk = chunk.encode("utf-8")
                await writer.write(bytes(chunk))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the head is out: all we can do is cut the body
            error_from_exception(e)
            _log.warning("a route's streamed answer failed; closing the connection")
            self.abort()
            raise ConnectionError("route stream failed") from None

    # ------------------------------------------------------------------ request bodies

    def _start_body(self, head: RequestHead) -> None:
        self._decoder = ChunkedDecoder() if head.chunked else None
        self._remaining = head.content_length or 0
        self._body_done = not head.has_body
        self._continue_due = head.expect_continue and head.has_body

    async def body_chunk(self) -> bytes:
        """The next piece of the request body; ``b""`` once it has ended.

        Raises:
            BodyError: the connection closed before the body ended, or bad chunked framing.
        """
        if self._body_done:
            return b""
        if self._continue_due:
            self._continue_due = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._decoder is not None:
                try:
                    pieces, used = self._decoder.feed(self.buf)
                except HttpError as e:
                    raise BodyError(e.message) from None
                del self.buf[:used]
                if self._decoder.done:
                    self._body_done = True
                data = b"".join(pieces)
            else:
                take = min(self._remaining, len(self.buf))
                data = bytes(self.buf[:take])
                del self.buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._body_done = True
            if data or self._body_done:
                return data
            if self.eof:
                raise BodyError("the connection closed before the body ended")
            await self._more()

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, at most `limit` bytes (else ``413 payload_too_large``)."""
        head = self._head
        if head is not None and head.content_length is not None and head.content_length > limit:
            raise _too_large(limit)
        parts: List[bytes] = []
        size = 0
        while True:
            data = await self.body_chunk()
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                raise _too_large(limit)
            parts.append(data)

    async def discard_body(self, limit: int) -> None:
        """Reads and drops a body the route ignores (up to `limit`; more closes the connection)."""
        size = 0
        while size <= limit:
            data = await self.body_chunk()
            if not data:
                return
            size += len(data)


_END = object()


def _too_large(limit: int) -> PluginError:
    return _error(
        "payload_too_large",
        f"the request body exceeds the limit of {limit} bytes; pass large data as a file reference",
    )
