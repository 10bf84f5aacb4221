"""plugvisor: write a plugvisor plugin in Python; `run(MyPlugin())` is the worker's whole main.

A plugin subclasses `Plugin` (the seed interface: `name`, `version`, `initialize`, `execute`,
`execute_stream`, `get_config_schema`, `get_current_config`, `cleanup`); `run` serves it over
the plugvisor worker protocol (``docs/PROTOCOL.md``) to the Rust host, which runs it in its own
process, supervises it and restarts it when it crashes::

    import plugvisor

    class Hello(plugvisor.Plugin):
        name = "hello"
        version = "0.1.0"

        def execute(self, input):
            return {"hello": input}

    if __name__ == "__main__":
        plugvisor.run(Hello())

Map of the package:
- `_plugin.py`: `Plugin` (with the optional `events` / `on_event`), and the `route` /
  `method` decorators.
- `_run.py`: `run` (arguments, logging, handshake, signals, stdin watch, watchdog, guardian).
- `_server.py`: the `/v1` routes over `_http.py` (a strict HTTP/1.1 parser); `_lane.py`: plain
  calls served on a thread per call connection; `_stream.py`: the
  NDJSON stream pump; `_calls.py`: where plugin code runs, and `Call` (cancellation).
- `_files.py`: `FileRef`, output files, and confinement to the transfer directory.
- `_host.py`: `host()`, the client of the host's service endpoint (services of other plugins).
- `_events.py`: `Event` and the rules for the host event names a plugin declares.
- `_errors.py`: typed errors; `_ext.py`: route, hook and health types; `_wire.py`: constants
  and the strict JSON reader and writer.
"""

import importlib
from typing import TYPE_CHECKING, Any, List

from ._calls import Call, cancelled, current_call
from ._errors import (
    CallCycle,
    Cancelled,
    CrashReport,
    FileAccessDenied,
    Forbidden,
    InvalidConfig,
    InvalidInput,
    NotInitialized,
    PluginError,
    PluginFailed,
    ProtocolError,
    TimedOut,
    Unavailable,
    WorkerCrashed,
)
from ._files import FileRef, OutputFile, output_file, transfer_dir
from ._plugin import MethodSpec, Plugin, RouteSpec, method, route
from ._run import run
from ._wire import PROTOCOL_VERSION

# Imported on first use (PEP 562), so a worker that needs none of them starts faster: the
# host's service client, the route / hook / health types, and events.
_LAZY = {
    "Event": "_events",
    "Continue": "_ext",
    "HealthReport": "_ext",
    "HookRequest": "_ext",
    "HookResponse": "_ext",
    "Respond": "_ext",
    "RouteBody": "_ext",
    "RouteRequest": "_ext",
    "RouteResponse": "_ext",
    "AsyncServiceStream": "_host",
    "HostClient": "_host",
    "ServiceInfo": "_host",
    "ServiceStream": "_host",
    "host": "_host",
}

if TYPE_CHECKING:
    from ._events import Event
    from ._ext import (
        Continue,
        HealthReport,
        HookRequest,
        HookResponse,
        Respond,
        RouteBody,
        RouteRequest,
        RouteResponse,
    )
    from ._host import AsyncServiceStream, HostClient, ServiceInfo, ServiceStream, host


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncServiceStream",
    "Call",
    "CallCycle",
    "Cancelled",
    "Continue",
    "CrashReport",
    "Event",
    "FileAccessDenied",
    "FileRef",
    "Forbidden",
    "HealthReport",
    "HostClient",
    "HookRequest",
    "HookResponse",
    "InvalidConfig",
    "InvalidInput",
    "MethodSpec",
    "NotInitialized",
    "OutputFile",
    "Plugin",
    "PluginError",
    "PluginFailed",
    "ProtocolError",
    "Respond",
    "RouteBody",
    "RouteRequest",
    "RouteResponse",
    "RouteSpec",
    "ServiceInfo",
    "ServiceStream",
    "TimedOut",
    "Unavailable",
    "WorkerCrashed",
    "cancelled",
    "current_call",
    "host",
    "method",
    "output_file",
    "route",
    "run",
    "transfer_dir",
    "__version__",
]
