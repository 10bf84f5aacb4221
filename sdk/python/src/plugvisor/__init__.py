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
- `_plugin.py`: `Plugin`, and the `route` / `method` decorators.
- `_run.py`: `run` (arguments, logging, handshake, signals, stdin watch, watchdog, guardian).
- `_server.py`: the `/v1` routes over `_http.py` (a strict HTTP/1.1 parser); `_stream.py`: the
  NDJSON stream pump; `_calls.py`: where plugin code runs, and `Call` (cancellation).
- `_files.py`: `FileRef`, output files, and confinement to the transfer directory.
- `_errors.py`: typed errors; `_ext.py`: route, hook and health types; `_wire.py`: constants
  and the strict JSON reader and writer.
"""

from ._calls import Call, cancelled, current_call
from ._errors import (
    Cancelled,
    FileAccessDenied,
    InvalidConfig,
    InvalidInput,
    NotInitialized,
    PluginError,
    PluginFailed,
    TimedOut,
    Unavailable,
)
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
from ._files import FileRef, OutputFile, output_file, transfer_dir
from ._plugin import MethodSpec, Plugin, RouteSpec, method, route
from ._run import run
from ._wire import PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Call",
    "Cancelled",
    "Continue",
    "FileAccessDenied",
    "FileRef",
    "HealthReport",
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
    "Respond",
    "RouteBody",
    "RouteRequest",
    "RouteResponse",
    "RouteSpec",
    "TimedOut",
    "Unavailable",
    "cancelled",
    "current_call",
    "method",
    "output_file",
    "route",
    "run",
    "transfer_dir",
    "__version__",
]
