"""Typed plugin errors and their wire form: every error kind of the protocol and its HTTP status."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type

__all__ = [
    "STATUS_OF_KIND",
    "PluginError",
    "InvalidInput",
    "InvalidConfig",
    "NotInitialized",
    "PluginFailed",
    "FileAccessDenied",
    "Cancelled",
    "TimedOut",
    "Unavailable",
    "Forbidden",
    "CallCycle",
    "WorkerCrashed",
    "ProtocolError",
    "CrashReport",
    "status_of",
    "wire_error",
    "error_from_exception",
    "error_from_wire",
    "own",
]

_log = logging.getLogger("plugvisor")

#: Every error kind of `docs/PROTOCOL.md` §6 with its HTTP status (`ErrorKind::http_status`).
STATUS_OF_KIND: Dict[str, int] = {
    "bad_request": 400,
    "invalid_input": 400,
    "unauthorized": 401,
    "file_access_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_initialized": 409,
    "payload_too_large": 413,
    "invalid_config": 422,
    "cancelled": 499,
    "plugin_failed": 500,
    "unknown": 500,
    "worker_crashed": 502,
    "protocol": 502,
    "unavailable": 503,
    "timed_out": 504,
    # Kinds of host service calls (services between plugins): a worker never produces them for
    # its own calls, but a plugin may pass on one it got from the host.
    "forbidden": 403,
    "call_cycle": 508,
}


def status_of(kind: str) -> int:
    """The HTTP status of error `kind`; 500 for a kind this version does not know."""
    return STATUS_OF_KIND.get(kind, 500)


class PluginError(Exception):
    """An error a plugin raises on purpose; its `kind` survives the process boundary.

    Raise one of the subclasses (`InvalidInput`, `InvalidConfig`, …), or this class with an
    explicit kind: ``raise PluginError("disk full", kind="plugin_failed")``. Any other exception
    escaping plugin code is answered as ``plugin_failed`` with its type and message, and its
    traceback is logged on stderr.
    """

    #: The machine-readable kind on the wire (`docs/PROTOCOL.md` §6).
    kind: str = "plugin_failed"

    def __init__(self, message: str = "", *, kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    @property
    def status(self) -> int:
        """The HTTP status the worker answers with for this error."""
        return status_of(self.kind)

    def to_wire(self) -> Dict[str, Any]:
        """The error as it travels: ``{"kind": …, "message": …}``."""
        return {"kind": self.kind, "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, kind={self.kind!r})"


class InvalidInput(PluginError):
    """The input was malformed or not what the plugin accepts (400; the caller should not retry)."""

    kind = "invalid_input"


class InvalidConfig(PluginError):
    """The configuration was rejected (422); name the field and the rule in the message.

    The previous configuration stays in force.
    """

    kind = "invalid_config"


class NotInitialized(PluginError):
    """The plugin needs `initialize` before it can serve this call (409)."""

    kind = "not_initialized"


class PluginFailed(PluginError):
    """The plugin ran and failed (500)."""

    kind = "plugin_failed"


class FileAccessDenied(PluginError):
    """A file reference was refused (403): outside the transfer directory, a symlink, missing…"""

    kind = "file_access_denied"


class Cancelled(PluginError):
    """The call was cancelled (499): raised by `Call.raise_if_cancelled()` once the host left."""

    kind = "cancelled"


class TimedOut(PluginError):
    """A deadline of the plugin's own was exceeded (504)."""

    kind = "timed_out"


class Unavailable(PluginError):
    """The plugin cannot serve right now (503); the caller may retry later."""

    kind = "unavailable"


class Forbidden(PluginError):
    """A host service call the plugin may not make (403): the service is not in its
    manifest's ``requires`` or ``optional_requires``."""

    kind = "forbidden"


class CallCycle(PluginError):
    """A host service call that would come back to a plugin already waiting in its chain of
    calls (A → B → A), or a chain longer than the host allows (508)."""

    kind = "call_cycle"


class ProtocolError(PluginError):
    """The other side spoke something unexpected (502): a cut stream, a malformed answer, or an
    answer of a kind a plugin cannot act on (``unauthorized``, ``not_found``, …)."""

    kind = "protocol"


@dataclass(frozen=True)
class CrashReport:
    """What the host knows about a worker that died during a call (``crash`` of a
    ``worker_crashed`` error): the plugin, its pid, how it ended and its last stderr lines."""

    #: The plugin (worker) name.
    plugin: str
    #: The dead worker's process id.
    pid: int
    #: How it ended, as the host reports it: ``{"code": 3}``, ``{"signal": {"number": 9,
    #: "name": "SIGKILL", "core_dumped": false}}`` or ``"unknown"``.
    exit: Any
    #: Why, as far as the host can tell: ``exit``, ``segfault``, ``abort``, ``killed``, …
    cause: str = "unknown"
    #: The last lines it wrote to stderr, oldest first.
    stderr_tail: List[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, value: Any) -> "CrashReport":
        """Reads a ``crash`` object. Raises `ValueError` for one of the wrong shape."""
        if not isinstance(value, dict):
            raise ValueError("a crash report must be an object")
        plugin, pid = value.get("plugin"), value.get("pid")
        if not isinstance(plugin, str) or not isinstance(pid, int) or isinstance(pid, bool):
            raise ValueError("a crash report needs `plugin` and `pid`")
        if "exit" not in value:
            raise ValueError("a crash report needs `exit`")
        tail = value.get("stderr_tail", [])
        if not isinstance(tail, list) or not all(isinstance(line, str) for line in tail):
            raise ValueError("a crash report's `stderr_tail` must be a list of strings")
        cause = value.get("cause", "unknown")
        return cls(plugin, pid, value["exit"], cause if isinstance(cause, str) else "unknown", tail)

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form."""
        return {
            "plugin": self.plugin,
            "pid": self.pid,
            "exit": self.exit,
            "cause": self.cause,
            "stderr_tail": list(self.stderr_tail),
        }


class WorkerCrashed(PluginError):
    """The worker of a plugin this one called through the host died during the call (502).

    Only the host says this about a worker. `crash` is its report (pid, exit, cause, last
    stderr lines). Raised again from plugin code it is answered as ``plugin_failed`` (message
    ``worker crashed: …``): this worker is alive, and the host must not take it for dead.
    """

    kind = "worker_crashed"

    def __init__(self, message: str = "", *, crash: Optional[CrashReport] = None) -> None:
        super().__init__(message)
        #: The host's report on the dead worker.
        self.crash = crash

    def to_wire(self) -> Dict[str, Any]:
        wire = super().to_wire()
        if self.crash is not None:
            wire["crash"] = self.crash.to_wire()
        return wire


#: The exception class of each kind a host's answer may carry.
_CLASS_OF_KIND: Dict[str, Type[PluginError]] = {
    "invalid_input": InvalidInput,
    "invalid_config": InvalidConfig,
    "not_initialized": NotInitialized,
    "plugin_failed": PluginFailed,
    "file_access_denied": FileAccessDenied,
    "cancelled": Cancelled,
    "timed_out": TimedOut,
    "unavailable": Unavailable,
    "forbidden": Forbidden,
    "call_cycle": CallCycle,
}

#: Kinds a plugin cannot act on, read as `ProtocolError` with this prefix (as the Rust
#: runtime's ``From<WireError> for PluginError`` does).
_PROTOCOL_PREFIX = {
    "unauthorized": "unauthorized: ",
    "not_found": "not found: ",
    "method_not_allowed": "method not allowed: ",
    "protocol": "",
}


def error_from_wire(error: Any) -> PluginError:
    """The typed exception for a wire error ``{"kind", "message", "crash"?}`` from the host,
    exactly as the Rust runtime reads one (``From<WireError> for PluginError``):

    - each kind a plugin raises itself maps to its class (``invalid_input`` → `InvalidInput`,
      ``forbidden`` → `Forbidden`, ``call_cycle`` → `CallCycle`, ``timed_out`` →
      `TimedOut`, …);
    - ``bad_request`` and ``payload_too_large`` are `InvalidInput` (``bad request: …``);
    - ``worker_crashed`` is `WorkerCrashed` with its `CrashReport` (without a report it is a
      `ProtocolError`);
    - ``unauthorized``, ``not_found``, ``method_not_allowed``, ``protocol`` and kinds this
      version does not know are `ProtocolError`.

    Raises `ValueError` for something that is not a wire error at all.
    """
    if not isinstance(error, dict):
        raise ValueError("an error must be an object")
    kind, message = error.get("kind"), error.get("message")
    if not isinstance(kind, str) or not isinstance(message, str):
        raise ValueError("an error needs a string `kind` and `message`")
    cls = _CLASS_OF_KIND.get(kind)
    if cls is not None:
        return cls(message)
    if kind == "bad_request":
        return InvalidInput(f"bad request: {message}")
    if kind == "payload_too_large":
        return InvalidInput(f"payload too large: {message}")
    if kind == "worker_crashed":
        try:
            crash = CrashReport.from_wire(error.get("crash"))
        except ValueError:
            return ProtocolError(f"worker_crashed without a report: {message}")
        return WorkerCrashed(message, crash=crash)
    return ProtocolError(_PROTOCOL_PREFIX.get(kind, "") + message)


def own(err: PluginError) -> PluginError:
    """The error as this worker may answer it. ``worker_crashed`` is the host's to say about a
    worker, so a plugin passing on another worker's crash (a service call's) answers it as its
    own failure, ``plugin_failed`` with ``worker crashed: <message>`` (the Rust runtime's
    ``unwind::own``); every other error stays as it is."""
    if err.kind == "worker_crashed":
        return PluginFailed(f"worker crashed: {err.message}")
    return err


def wire_error(kind: str, message: str) -> Dict[str, Any]:
    """An error body's inner object: ``{"kind": kind, "message": message}``."""
    return {"kind": kind, "message": message}


def error_from_exception(exc: BaseException, what: str = "plugin") -> PluginError:
    """The `PluginError` an exception out of plugin code is answered with.

    A `PluginError` stays as it is (but another worker's ``worker_crashed`` becomes this
    plugin's ``plugin_failed``: `own`); `asyncio.CancelledError` is ``cancelled``; anything
    else is ``plugin_failed`` ("the plugin raised ValueError: …"), logged with its traceback,
    the way the Rust runtime contains a panic.
    """
    if isinstance(exc, PluginError):
        return own(exc)
    if isinstance(exc, asyncio.CancelledError):
        return Cancelled("the call was cancelled")
    kind: Type[BaseException] = type(exc)
    detail = str(exc)
    message = f"the {what} raised {kind.__name__}" + (f": {detail}" if detail else "")
    _log.error("%s", message, exc_info=(kind, exc, exc.__traceback__))
    return PluginFailed(message)
