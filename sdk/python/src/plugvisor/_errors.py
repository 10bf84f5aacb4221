"""Typed plugin errors and their wire form: every error kind of the protocol and its HTTP status."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional, Type

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
    "status_of",
    "wire_error",
    "error_from_exception",
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


def wire_error(kind: str, message: str) -> Dict[str, Any]:
    """An error body's inner object: ``{"kind": kind, "message": message}``."""
    return {"kind": kind, "message": message}


def error_from_exception(exc: BaseException, what: str = "plugin") -> PluginError:
    """The `PluginError` an exception out of plugin code is answered with.

    A `PluginError` stays as it is; `asyncio.CancelledError` is ``cancelled``; anything else is
    ``plugin_failed`` ("the plugin raised ValueError: …"), logged with its traceback, the way
    the Rust runtime contains a panic.
    """
    if isinstance(exc, PluginError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return Cancelled("the call was cancelled")
    kind: Type[BaseException] = type(exc)
    detail = str(exc)
    message = f"the {what} raised {kind.__name__}" + (f": {detail}" if detail else "")
    _log.error("%s", message, exc_info=(kind, exc, exc.__traceback__))
    return PluginFailed(message)
