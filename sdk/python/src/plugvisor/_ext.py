"""Types of the optional extensions: route requests and answers, hook bodies, health reports."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
)

from ._errors import InvalidInput, PluginFailed

__all__ = [
    "HealthReport",
    "HookRequest",
    "HookResponse",
    "Continue",
    "Respond",
    "RouteBody",
    "RouteRequest",
    "RouteResponse",
]

Headers = Dict[str, str]

# ----------------------------------------------------------------------------- health


@dataclass
class HealthReport:
    """The plugin's own verdict (`docs/PROTOCOL.md`, ``POST /v1/plugin_health``)."""

    #: ``pass``, ``warn`` or ``fail``.
    status: str
    #: Details per component, ``{"<component>:<measurement>": [{...}]}``.
    checks: Optional[Dict[str, Any]] = None
    #: Why, for people (mostly with ``warn`` and ``fail``).
    output: Optional[str] = None

    @classmethod
    def passed(cls) -> "HealthReport":
        """A ``pass`` with nothing more to say."""
        return cls("pass")

    @classmethod
    def warn(cls, output: str) -> "HealthReport":
        """A ``warn`` saying why."""
        return cls("warn", output=output)

    @classmethod
    def fail(cls, output: str) -> "HealthReport":
        """A ``fail`` saying why: the host marks the plugin ``degraded`` (or restarts it)."""
        return cls("fail", output=output)

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form (absent fields left out)."""
        wire: Dict[str, Any] = {"status": self.status}
        if self.checks is not None:
            wire["checks"] = self.checks
        if self.output is not None:
            wire["output"] = self.output
        return wire


def health_to_wire(value: Any) -> Dict[str, Any]:
    """The answer for what `health_check` returned.

    Raises:
        PluginFailed: a value that is not a health report.
    """
    if isinstance(value, HealthReport):
        report = value
    elif isinstance(value, bool):
        report = HealthReport("pass" if value else "fail")
    elif isinstance(value, str):
        report = HealthReport(value)
    elif isinstance(value, dict):
        unknown = set(value) - {"status", "checks", "output"}
        if unknown:
            raise PluginFailed(f"health_check returned an unknown field {sorted(unknown)[0]!r}")
        output = value.get("output")
        if output is not None and not isinstance(output, str):
            raise PluginFailed("health_check returned an `output` that is not a string")
        report = HealthReport(value.get("status"), value.get("checks"), output)  # type: ignore[arg-type]
    else:
        raise PluginFailed(f"health_check returned {type(value).__name__}, not a health report")
    if report.status not in ("pass", "warn", "fail"):
        raise PluginFailed(f"health_check returned status {report.status!r}, not pass, warn or fail")
    return report.to_wire()


# ----------------------------------------------------------------------------- hooks


def _headers_from(value: Any, what: str) -> Headers:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{what}: headers must be an object of strings")
    return dict(value)


def _header_of(headers: Headers, name: str) -> Optional[str]:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


@dataclass
class HookRequest:
    """A host request as a middleware sees it (``before_request``; ``after_response``'s
    request, there without body). Headers are lower-case names to values."""

    method: str
    #: The normalised host path, e.g. ``/plugins/echo/hello`` or ``/api/plugins/execute``.
    path: str
    #: The query without ``?``, when there is one.
    query: Optional[str] = None
    headers: Headers = field(default_factory=dict)
    #: The JSON body, when the request has a complete JSON body; else `None`.
    body: Any = None

    def header(self, name: str) -> Optional[str]:
        """The value of header `name` (any case)."""
        return _header_of(self.headers, name)

    @classmethod
    def from_wire(cls, value: Any) -> "HookRequest":
        """Reads the JSON form. Raises `ValueError` for a wrong shape."""
        if not isinstance(value, dict):
            raise ValueError("the request must be a JSON object")
        method, path, query = value.get("method"), value.get("path"), value.get("query")
        if not isinstance(method, str):
            raise ValueError("missing field `method` (a string)")
        if not isinstance(path, str):
            raise ValueError("missing field `path` (a string)")
        if query is not None and not isinstance(query, str):
            raise ValueError("`query` must be a string")
        return cls(method, path, query, _headers_from(value.get("headers"), "request"), value.get("body"))

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form."""
        wire: Dict[str, Any] = {"method": self.method, "path": self.path}
        if self.query is not None:
            wire["query"] = self.query
        wire["headers"] = dict(self.headers)
        if self.body is not None:
            wire["body"] = self.body
        return wire


@dataclass
class HookResponse:
    """An answer as a middleware sees it or gives it."""

    status: int
    headers: Headers = field(default_factory=dict)
    #: The JSON body, when the answer has a complete JSON body; else `None`.
    body: Any = None
    #: True when the answer streams: only its head is shown and a `body` given back is ignored.
    streamed: bool = False

    @classmethod
    def json(cls, status: int, body: Any) -> "HookResponse":
        """A JSON answer with `status`."""
        return cls(status, {"content-type": "application/json"}, body)

    def header(self, name: str) -> Optional[str]:
        """The value of header `name` (any case)."""
        return _header_of(self.headers, name)

    def set_header(self, name: str, value: str) -> None:
        """Sets header `name` (stored lower-case)."""
        self.headers[name.lower()] = value

    @classmethod
    def from_wire(cls, value: Any) -> "HookResponse":
        """Reads the JSON form. Raises `ValueError` for a wrong shape."""
        if not isinstance(value, dict):
            raise ValueError("the response must be a JSON object")
        status = value.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 65535:
            raise ValueError("missing field `status` (an integer 0-65535)")
        streamed = value.get("streamed", False)
        if not isinstance(streamed, bool):
            raise ValueError("`streamed` must be a boolean")
        return cls(status, _headers_from(value.get("headers"), "response"), value.get("body"), streamed)

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form."""
        wire: Dict[str, Any] = {"status": self.status, "headers": dict(self.headers)}
        if self.body is not None:
            wire["body"] = self.body
        wire["streamed"] = self.streamed
        return wire


@dataclass
class Continue:
    """``before_request``'s "go on": `headers` (when given) replace the request's headers,
    `body` (when given) its JSON body (only for a request that showed one)."""

    headers: Optional[Headers] = None
    body: Any = None

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form."""
        wire: Dict[str, Any] = {"action": "continue"}
        if self.headers is not None:
            wire["headers"] = dict(self.headers)
        if self.body is not None:
            wire["body"] = self.body
        return wire


@dataclass
class Respond:
    """``before_request``'s "answer now" (401, 429, …): the route is not called."""

    status: int
    body: Any = None
    headers: Optional[Headers] = None

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form (a JSON body gets ``content-type: application/json`` by default)."""
        headers = dict(self.headers) if self.headers is not None else {}
        if self.body is not None and _header_of(headers, "content-type") is None:
            headers["content-type"] = "application/json"
        response = HookResponse(self.status, headers, self.body).to_wire()
        return {"action": "respond", **response}


def before_action_to_wire(value: Any) -> Dict[str, Any]:
    """The answer for what `before_request` returned (`None`: go on unchanged)."""
    if value is None:
        return {"action": "continue"}
    if isinstance(value, (Continue, Respond)):
        return value.to_wire()
    if isinstance(value, HookRequest):
        return Continue(value.headers, value.body).to_wire()
    if isinstance(value, HookResponse):
        return {"action": "respond", **value.to_wire()}
    if isinstance(value, dict) and value.get("action") in ("continue", "respond"):
        if value["action"] == "respond":
            HookResponse.from_wire(value)
        return value
    raise PluginFailed(
        f"before_request returned {type(value).__name__}; return None, plugvisor.Continue or plugvisor.Respond"
    )


def after_response_to_wire(value: Any, given: HookResponse) -> Dict[str, Any]:
    """The answer for what `after_response` returned (`None`: the response unchanged)."""
    if value is None:
        return given.to_wire()
    if isinstance(value, HookResponse):
        return value.to_wire()
    if isinstance(value, dict):
        try:
            return HookResponse.from_wire(value).to_wire()
        except ValueError as e:
            raise PluginFailed(f"after_response returned a bad response: {e}") from None
    raise PluginFailed(f"after_response returned {type(value).__name__}, not a HookResponse")


# ----------------------------------------------------------------------------- routes


class RouteBody:
    """A route request's body, streamed from the client through the host as it arrives.

    Read it once, whole or in chunks; plain handlers use `read` / `json` / iteration, async
    handlers `aread` / `ajson` / ``async for``. It has no size limit of the worker's (the host
    enforces the route's ``max_body_mib``); pass `limit` to refuse more.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, next_chunk: Callable[[], Awaitable[bytes]]
    ) -> None:
        self._loop = loop
        self._next_chunk = next_chunk
        self._done = False

    async def _next(self) -> bytes:
        if self._done:
            return b""
        try:
            chunk = await self._next_chunk()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._done = True
            raise InvalidInput(f"request body: {e}") from None
        if not chunk:
            self._done = True
        return chunk

    def _fetch(self) -> bytes:
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("the body cannot be read synchronously on the server loop")
        return asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()

    async def _afetch(self) -> bytes:
        if asyncio.get_running_loop() is self._loop:
            return await self._next()
        future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
        return await asyncio.wrap_future(future)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._fetch()
            if not chunk:
                return
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._afetch()
            if not chunk:
                return
            yield chunk

    def read(self, limit: Optional[int] = None) -> bytes:
        """The whole body (plain handlers). Raises `InvalidInput` past `limit` bytes."""
        return _collect(iter(self), limit)

    async def aread(self, limit: Optional[int] = None) -> bytes:
        """The whole body (async handlers). Raises `InvalidInput` past `limit` bytes."""
        parts: List[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            _check_limit(size, limit)
            parts.append(chunk)
        return b"".join(parts)

    def json(self, limit: Optional[int] = None) -> Any:
        """The body parsed as JSON (plain handlers). Raises `InvalidInput`."""
        return _parse_json(self.read(limit))

    async def ajson(self, limit: Optional[int] = None) -> Any:
        """The body parsed as JSON (async handlers). Raises `InvalidInput`."""
        return _parse_json(await self.aread(limit))


def _check_limit(size: int, limit: Optional[int]) -> None:
    if limit is not None and size > limit:
        raise InvalidInput(f"request body: larger than the limit of {limit} bytes")


def _collect(chunks: Iterator[bytes], limit: Optional[int]) -> bytes:
    parts: List[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        _check_limit(size, limit)
        parts.append(chunk)
    return b"".join(parts)


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"request body is not JSON: {e}") from None


@dataclass
class RouteRequest:
    """One request to a plugin route, as the host forwarded it."""

    method: str
    #: The path below the plugin's mount point, e.g. ``/items/42``.
    path: str
    #: The query without ``?``, when there is one.
    query: Optional[str]
    #: The values of the pattern's ``{name}`` segments.
    params: Dict[str, str]
    #: Header fields in order, lower-case names (``Authorization`` removed).
    raw_headers: List[Tuple[str, str]]
    #: The body, streamed.
    body: RouteBody

    @property
    def headers(self) -> Headers:
        """Lower-case header names to values (repeated headers joined with ``", "``)."""
        joined: Headers = {}
        for key, value in self.raw_headers:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return joined

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (any case)."""
        lower = name.lower()
        for key, value in self.raw_headers:
            if key == lower:
                return value
        return None

    def query_param(self, name: str) -> Optional[str]:
        """The value of query parameter `name` (first occurrence, not percent-decoded)."""
        if self.query is None:
            return None
        for pair in self.query.split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return None


Chunks = Union[Iterable[Union[bytes, str]], AsyncIterable[Union[bytes, str]]]


class RouteResponse:
    """The answer of a route: status, headers, and a complete or streamed body."""

    def __init__(
        self,
        status: int = 200,
        headers: Optional[Union[Headers, List[Tuple[str, str]]]] = None,
        body: Union[bytes, str, Chunks] = b"",
    ) -> None:
        self.status = status
        self.headers: List[Tuple[str, str]] = (
            list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        )
        self.body = body

    @classmethod
    def json(cls, value: Any, status: int = 200) -> "RouteResponse":
        """A JSON answer (file-backed values become file references)."""
        from ._wire import dumps

        return cls.bytes(dumps(value), "application/json", status)

    @classmethod
    def text(cls, text: str, status: int = 200) -> "RouteResponse":
        """A plain-text answer."""
        return cls.bytes(text.encode("utf-8"), "text/plain; charset=utf-8", status)

    @classmethod
    def bytes(cls, data: bytes, content_type: str, status: int = 200) -> "RouteResponse":
        """An answer with a complete body."""
        return cls(status, [("content-type", content_type)], data)

    @classmethod
    def stream(
        cls, chunks: Chunks, content_type: str = "application/octet-stream", status: int = 200
    ) -> "RouteResponse":
        """A streamed answer: each chunk (bytes or str) is sent as soon as it is yielded. A
        plain generator runs on the plugin threads, an async one on the plugin loop."""
        return cls(status, [("content-type", content_type)], chunks)

    @classmethod
    def sse(cls, events: Union[Iterable[str], AsyncIterable[str]]) -> "RouteResponse":
        """A Server-Sent Events answer: each item of `events` is sent as one ``data:`` event."""
        answer = cls.stream(_sse_frames(events), "text/event-stream")
        answer.headers.append(("cache-control", "no-store"))
        return answer

    def header(self, name: str, value: str) -> "RouteResponse":
        """Sets header `name` (replacing earlier values); returns the answer."""
        lower = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lower]
        self.headers.append((lower, value))
        return self


def _sse_event(data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"{lines}\n".encode("utf-8")


def _sse_frames(events: Union[Iterable[str], AsyncIterable[str]]) -> Chunks:
    if hasattr(events, "__aiter__"):

        async def frames() -> AsyncIterator[bytes]:
            async for event in events:
                yield _sse_event(event)

        return frames()
    return (_sse_event(event) for event in events)


def route_answer(value: Any) -> RouteResponse:
    """A handler's return value as an answer: a `RouteResponse` as it is, else JSON 200."""
    if isinstance(value, RouteResponse):
        return value
    return RouteResponse.json(value)
