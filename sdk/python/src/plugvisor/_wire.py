"""Protocol constants (routes, environment names, limits) and the strict JSON reader and writer."""

from __future__ import annotations

import json
from typing import Any, Dict

from ._files import file_backed_wire

__all__ = [
    "PROTOCOL_VERSION",
    "TOKEN_ENV",
    "TRANSFER_DIR_ENV",
    "OUTPUT_DIR_ENV",
    "WATCH_STDIN_ENV",
    "MAX_BODY_ENV",
    "LOG_ENV",
    "STORE_MAX_ENV",
    "DEFAULT_MAX_BODY",
    "NDJSON",
    "dumps",
    "loads",
    "BadJson",
]

#: The protocol version spoken; the first word after ``plugvisor`` in the handshake line.
PROTOCOL_VERSION = 1
#: The bearer token, from the host (removed from the environment once read).
TOKEN_ENV = "PLUGVISOR_TOKEN"
#: The only directory file references may point into.
TRANSFER_DIR_ENV = "PLUGVISOR_TRANSFER_DIR"
#: Where a (sandboxed) worker must create its output files.
OUTPUT_DIR_ENV = "PLUGVISOR_OUTPUT_DIR"
#: ``1``: exit when stdin reaches end-of-file (the host is gone).
WATCH_STDIN_ENV = "PLUGVISOR_WATCH_STDIN"
#: The largest request body, in bytes.
MAX_BODY_ENV = "PLUGVISOR_MAX_BODY"
#: The log filter (``info`` by default; ``debug``, ``warn``, ``plugvisor=debug,warn``, …).
LOG_ENV = "PLUGVISOR_LOG"
#: The bound of a worker's content store (``cas/``, uploaded files), in MiB (default 4096).
STORE_MAX_ENV = "PLUGVISOR_STORE_MAX_MIB"
#: Default largest request body: 64 MiB; pass larger data as a file reference.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Media type of ``execute_stream`` answers.
NDJSON = "application/x-ndjson"

PROBE = "/v1/probe"  # the one route answered without the token (orchestrators' probes)
HEALTH = "/v1/health"
INFO = "/v1/info"
CONFIG = "/v1/config"
CONFIG_SCHEMA = "/v1/config_schema"
INITIALIZE = "/v1/initialize"
EXECUTE = "/v1/execute"
EXECUTE_STREAM = "/v1/execute_stream"
CLEANUP = "/v1/cleanup"
SHUTDOWN = "/v1/shutdown"
PLUGIN_HEALTH = "/v1/plugin_health"
EVENTS = "/v1/events"
BEFORE_REQUEST = "/v1/hooks/before_request"
AFTER_RESPONSE = "/v1/hooks/after_response"
ROUTE_PREFIX = "/v1/route"
METHOD_PREFIX = "/v1/methods/"


class BadJson(ValueError):
    """A request body that is not the JSON the route takes (a ``400 bad_request``)."""


def _wire_default(value: Any) -> Any:
    """The JSON form of what `json` cannot write itself: file-backed values become references."""
    wire = file_backed_wire(value)
    if wire is not None:
        return wire
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_wire_default
)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; file-backed values become ``{"$file": …}``; NaN and infinities are
    refused (`ValueError`), as JSON has none."""
    return _encoder.encode(value).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_no_constant)


def loads(data: bytes) -> Any:
    """Parses strict JSON (UTF-8; no NaN or Infinity). Raises `BadJson`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJson(f"the body is not UTF-8: {e}") from None
    try:
        return _decoder.decode(text)
    except ValueError as e:
        raise BadJson(str(e)) from None


def read_object(data: bytes, fields: Dict[str, bool]) -> Dict[str, Any]:
    """A request body as a JSON object with only `fields` (name → required).

    An empty body reads as ``{}``. Anything but an object, an unknown field or a missing
    required one is a `BadJson` naming it, as the Rust runtime's ``deny_unknown_fields`` does.
    """
    stripped = data.strip()
    if not stripped:
        value: Any = {}
    elif stripped[:1] != b"{":
        raise BadJson("the request body must be a JSON object")
    else:
        value = loads(stripped)
    for key in value:
        if key not in fields:
            expected = ", ".join(f"`{f}`" for f in fields)
            raise BadJson(f"unknown field `{key}`, expected {expected}")
    for key, required in fields.items():
        if required and key not in value:
            raise BadJson(f"missing field `{key}`")
    result: Dict[str, Any] = value
    return result


def error_body(kind: str, message: str) -> bytes:
    """An error answer's body: ``{"error": {"kind", "message"}}``."""
    return dumps({"error": {"kind": kind, "message": message}})
