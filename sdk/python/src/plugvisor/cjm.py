"""Runs a plugin written for cjm-plugin-system's `PluginInterface` as a plugvisor worker, unchanged.

    python -m plugvisor.cjm my_package.plugin:MyPlugin        # an importable module
    python -m plugvisor.cjm ./path/to/plugin.py:MyPlugin      # or a file (its directory goes on sys.path)

The class is imported and instantiated without arguments, as cjm's own worker does
(``cjm_plugin_system.core.worker``), wrapped in `CjmPlugin` (a `plugvisor.Plugin`) and served
with `plugvisor.run`. How cjm's interface maps onto the plugvisor protocol, decided from cjm's
worker and proxy (``core/worker.py``, ``core/proxy.py``, ``core/manager.py``, 0.0.46):

- **Input → arguments** (`call_arguments`): an object whose only keys are ``args`` (an array)
  and/or ``kwargs`` (an object) is cjm's own request body and the REST API's
  ``{plugin_id, method, args, kwargs}`` shape: ``execute(*args, **kwargs)``. Any other object is
  the keyword arguments: ``execute(**input)``. Anything else (a string, number, array, ``null``)
  is the one positional argument: ``execute(input)``. Arguments that do not fit the signature
  are ``invalid_input`` (400) before the plugin runs. `execute_stream` takes the same.
- **Files in**: a file reference (``{"$file": …}``, checked by the SDK) reaches the plugin as its
  path, a `str`, at any depth: cjm's proxy sends a ``FileBackedDTO`` argument as the path its
  ``to_temp_file()`` returned, so that is what a cjm plugin reads. The file is the host's:
  read it during the call, don't change or delete it (it is deleted when the call ends).
- **Output** (`to_jsonable`): as cjm's worker writes it (``wire_encode`` for registered wire
  DTOs, dataclasses as objects, datetimes as ISO strings), also nested, plus: tuples and sets
  as arrays, paths as strings, enums by value, objects with ``to_dict()`` by it. A
  ``FileBackedDTO`` (anything with ``to_temp_file()``) anywhere in a result or stream item
  becomes a file reference (the SDK moves the file it wrote into the output area; the host
  adopts it). It is checked before the dataclass rule, so a file-backed dataclass travels as a
  file, not as its fields.
- **Configuration**: ``get_config_schema()`` is the worker's schema (the host validates every
  configuration against it and answers ``422`` naming the field; cjm's schema extras such as
  its top-level ``name`` are ignored by the validator). The first ``/v1/initialize`` calls
  ``initialize(config)``; later ones call ``reconfigure(old, new)`` when the plugin has it (cjm
  ≥ CR-4: the manager's ``update_plugin_config`` path, whose default releases
  ``RELOAD_TRIGGER`` fields and re-applies the configuration), else ``initialize(new)``.
  ``old`` is the configuration last applied. A ``PluginConfigError``, ``ValueError``,
  ``TypeError`` or ``KeyError`` out of either is ``invalid_config`` (422; the previous
  configuration stays in force). ``get_current_config()`` is answered as it returns it
  (a dataclass becomes an object).
- **Cancellation**: before each call the plugin's ``_cancel_requested`` flag and
  ``_last_api_usage`` are reset (as cjm's worker does); when the host drops the call (a
  timeout, a dropped stream, a client gone) the plugin's ``cancel()`` runs, so
  ``check_cancel()`` raises and ``register_cancel_callback`` callbacks fire. As in cjm the
  flag is the plugin's, not the call's: with concurrent calls, cancelling one cancels all.
- **Errors**: cjm's typed errors keep their meaning: ``PluginCancelledError`` → ``cancelled``
  (499), ``PluginTimeoutError`` → ``timed_out`` (504), ``PluginConfigError`` →
  ``invalid_config`` (422), other ``PluginInputError`` → ``invalid_input`` (400),
  ``PluginNotLoadedError`` → ``not_initialized`` (409), ``PluginTransientError`` and
  ``PluginResourceError`` → ``unavailable`` (503), ``PluginFatalError`` → ``plugin_failed``
  (500); ``fields_invalid`` is named in the message. Other exceptions are
  ``plugin_failed`` as in any plugvisor plugin (cjm files bare ``ValueError`` etc. under
  "user_input"; plugvisor does not guess that a bug is the caller's fault).
- ``cleanup()`` runs once before the worker exits (``/v1/cleanup`` and shutdown); ``name``
  and ``version`` are the plugin's.

Not mapped: cjm's task adapters (``/task``), ``prefetch``, ``on_disable``/``on_enable``,
``get_config_options``, ``/progress`` and ``/stats``, and the call envelope; nothing of cjm
is needed at run time beyond what the plugin itself imports.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib
import inspect
import os
import re
import sys
import threading
from pathlib import PurePath
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

from ._calls import current_call
from ._errors import (
    Cancelled,
    InvalidConfig,
    InvalidInput,
    NotInitialized,
    PluginError,
    PluginFailed,
    TimedOut,
    Unavailable,
)
from ._files import FileRef, OutputFile
from ._plugin import Plugin

__all__ = ["CjmPlugin", "LoadError", "call_arguments", "load_plugin", "main", "to_jsonable"]

#: The one installable distribution this adapter serves plugins of.
CJM_DISTRIBUTION = "cjm-plugin-system"
_CALL_KEYS = frozenset(("args", "kwargs"))


# ----------------------------------------------------------------------------- the adapter


class CjmPlugin(Plugin):
    """A cjm-plugin-system plugin instance served as a plugvisor `Plugin`.

    ``CjmPlugin(MyCjmPlugin())`` is what ``python -m plugvisor.cjm module:MyCjmPlugin`` runs;
    use it directly to serve a cjm plugin from a script of your own::

        plugvisor.run(CjmPlugin(MyCjmPlugin()))
    """

    def __init__(self, plugin: Any) -> None:
        #: The wrapped cjm plugin.
        self.plugin = plugin
        self._config_lock = threading.Lock()
        self._applied: Optional[Dict[str, Any]] = None
        self._signatures: Dict[str, Optional[inspect.Signature]] = {}

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        return str(self.plugin.name)

    @property
    def version(self) -> str:
        return str(self.plugin.version)

    # ------------------------------------------------------------------ configuration

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        """The first call: ``initialize(config)``; later ones ``reconfigure(old, new)`` when the
        plugin has it, else ``initialize(new)``. Refusals are `InvalidConfig` (422)."""
        new = dict(config) if isinstance(config, dict) else {}
        with self._config_lock:
            old = self._applied
            reconfigure = getattr(self.plugin, "reconfigure", None)
            try:
                if old is not None and callable(reconfigure):
                    reconfigure(dict(old), dict(new))
                else:
                    self.plugin.initialize(dict(new))
            except Exception as e:  # noqa: BLE001 - translated, or passed on as it is
                raise _config_error(e) from e
            self._applied = new

    def get_config_schema(self) -> Dict[str, Any]:
        """The plugin's ``get_config_schema()`` (``{}`` when it has none)."""
        fn = getattr(self.plugin, "get_config_schema", None)
        schema = fn() if callable(fn) else None
        return to_jsonable(schema) if schema is not None else {}

    def get_current_config(self) -> Dict[str, Any]:
        """The plugin's ``get_current_config()`` (``{}`` before its first `initialize` when it
        cannot answer yet, or when it has none)."""
        fn = getattr(self.plugin, "get_current_config", None)
        if not callable(fn):
            return {}
        try:
            config = fn()
        except Exception:  # noqa: BLE001 - a plugin that holds no config before initialize
            if self._applied is None:
                return {}
            raise
        return to_jsonable(config) if config is not None else {}

    def cleanup(self) -> None:
        """The plugin's ``cleanup()``."""
        fn = getattr(self.plugin, "cleanup", None)
        if callable(fn):
            fn()

    # ------------------------------------------------------------------ calls

    def execute(self, input: Any) -> Any:
        """``execute(*args, **kwargs)`` from the input (see `call_arguments`); its result made
        JSON-able (`to_jsonable`)."""
        fn = getattr(self.plugin, "execute", None)
        if not callable(fn):
            raise PluginFailed(f"the cjm plugin {type(self.plugin).__name__} has no execute")
        args, kwargs = self._arguments("execute", fn, input)
        self._begin_call()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _call_error(e) from e
        if inspect.isawaitable(result):
            return _awaited(result)
        return to_jsonable(result)

    def execute_stream(self, input: Any) -> Any:
        """``execute_stream(*args, **kwargs)`` (a sync or async generator), each item made
        JSON-able; a plugin without one streams its ``execute`` result as one item."""
        fn = getattr(self.plugin, "execute_stream", None)
        if not callable(fn):
            return iter((self.execute(input),))
        args, kwargs = self._arguments("execute_stream", fn, input)
        self._begin_call()
        try:
            source = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _call_error(e) from e
        if hasattr(source, "__aiter__"):
            return _items_async(source)
        if isinstance(source, (str, bytes, dict)) or not hasattr(source, "__iter__"):
            raise PluginFailed(
                f"execute_stream returned {type(source).__name__}; cjm plugins yield their items"
            )
        return _items(source)

    def _arguments(self, what: str, fn: Callable[..., Any], input: Any) -> Tuple[List[Any], Dict[str, Any]]:
        args, kwargs = call_arguments(input)
        signature = self._signature(what, fn)
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as e:
                raise InvalidInput(f"the input does not fit {what}{_bare(signature)}: {e}") from None
        return args, kwargs

    def _signature(self, what: str, fn: Callable[..., Any]) -> Optional[inspect.Signature]:
        if what not in self._signatures:
            try:
                self._signatures[what] = inspect.signature(fn)
            except (TypeError, ValueError):
                self._signatures[what] = None
        return self._signatures[what]

    def _begin_call(self) -> None:
        """What cjm's worker does before each call (clear the cancel flag and the measured
        usage), and the plugin's ``cancel()`` hooked to the host dropping this call."""
        plugin = self.plugin
        if hasattr(plugin, "_cancel_requested"):
            try:
                plugin._cancel_requested = False
            except AttributeError:
                pass
        try:
            plugin._last_api_usage = None
        except AttributeError:
            pass
        current_call().on_cancel(self._cancel)

    def _cancel(self) -> None:
        cancel = getattr(self.plugin, "cancel", None)
        if callable(cancel):
            cancel()
        elif hasattr(self.plugin, "_cancel_requested"):
            self.plugin._cancel_requested = True


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """`signature` without annotations: what a caller of the REST API needs to see."""
    params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return signature.replace(parameters=params, return_annotation=signature.empty)


async def _awaited(result: Any) -> Any:
    try:
        value = await result
    except Exception as e:  # noqa: BLE001
        raise _call_error(e) from e
    return to_jsonable(value)


def _items(source: Any) -> Iterator[Any]:
    """The plugin's items, JSON-able; closing this generator closes the plugin's."""
    iterator = iter(source)
    try:
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001
                raise _call_error(e) from e
            yield to_jsonable(item)
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()


async def _items_async(source: Any) -> AsyncIterator[Any]:
    iterator = source.__aiter__()
    try:
        while True:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except Exception as e:  # noqa: BLE001
                raise _call_error(e) from e
            yield to_jsonable(item)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if callable(aclose):
            await aclose()


# ----------------------------------------------------------------------------- arguments


def call_arguments(input: Any) -> Tuple[List[Any], Dict[str, Any]]:
    """The positional and keyword arguments a protocol input stands for.

    - ``{"args": [...], "kwargs": {...}}`` (either key alone too): those arguments;
    - any other object: keyword arguments;
    - anything else: one positional argument (an array is *one* argument, not several).

    File references (`plugvisor.FileRef`) become their paths, at any depth.
    """
    value = _paths(input)
    if isinstance(value, dict):
        if value and set(value) <= _CALL_KEYS:
            args, kwargs = value.get("args", []), value.get("kwargs", {})
            if isinstance(args, list) and isinstance(kwargs, dict):
                return list(args), dict(kwargs)
        return [], dict(value)
    return [value], {}


def _paths(value: Any) -> Any:
    if isinstance(value, FileRef):
        return value.path
    if isinstance(value, dict):
        return {k: _paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_paths(v) for v in value]
    return value


# ----------------------------------------------------------------------------- results


def to_jsonable(value: Any) -> Any:
    """`value` as the plugvisor SDK can write it, the way cjm's worker writes results.

    A registered cjm wire DTO (``@wire_type``) at the top becomes its ``{"__wire__", "data"}``
    envelope (cjm's ``wire_encode``, when cjm is importable). Then, at any depth: file-backed
    objects (``to_temp_file()``), `FileRef` and `OutputFile` are left for the SDK (they become
    file references); dataclass instances become objects of their fields; ``datetime``,
    ``date`` and ``time`` ISO strings; tuples, sets and frozensets arrays; paths strings; enums
    their value; objects with ``to_dict()`` what it returns. Anything else is left as it is
    (the SDK refuses what JSON cannot hold: a ``500 plugin_failed`` saying why).
    """
    return _jsonable(_wire_encode(value))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, type):
        return value
    if isinstance(value, (FileRef, OutputFile)) or callable(getattr(value, "to_temp_file", None)):
        return value
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict())
    return value


def _wire_encode(value: Any) -> Any:
    """cjm's ``wire_encode`` for a registered wire DTO; `value` itself otherwise (also when the
    plugin's cjm-plugin-system has no wire registry, or is not imported at all)."""
    wire = sys.modules.get("cjm_plugin_system.core.wire")
    encode = getattr(wire, "wire_encode", None)
    if encode is None or isinstance(value, (str, int, float, bool, dict, list)) or value is None:
        return value
    try:
        return encode(value)
    except Exception:  # noqa: BLE001 - a DTO cjm cannot encode is written as any other value
        return value


# ----------------------------------------------------------------------------- errors


#: cjm error classes (by name, most specific first in the MRO) → plugvisor error types.
_BY_CLASS: Dict[str, Callable[[str], PluginError]] = {
    "PluginCancelledError": Cancelled,
    "PluginTimeoutError": TimedOut,
    "PluginConfigError": InvalidConfig,
    "PluginNotLoadedError": NotInitialized,
    "PluginDisabledError": InvalidInput,
    "PluginInputError": InvalidInput,
    "WorkerOOMError": Unavailable,
    "PluginTransientError": Unavailable,
    "PluginResourceError": Unavailable,
    "PluginFatalError": PluginFailed,
}
#: cjm error categories (``PluginError.category``) → plugvisor error types.
_BY_CATEGORY: Dict[str, Callable[[str], PluginError]] = {
    "user_input": InvalidInput,
    "transient": Unavailable,
    "resource": Unavailable,
    "fatal": PluginFailed,
}


def _translated(exc: BaseException) -> Optional[PluginError]:
    """The plugvisor error for a cjm-plugin-system error; `None` for any other exception."""
    if isinstance(exc, PluginError):
        return exc
    for klass in type(exc).__mro__:
        if not klass.__module__.startswith("cjm_plugin_system"):
            continue
        make = _BY_CLASS.get(klass.__name__)
        if make is None and klass.__name__ == "PluginError":
            make = _BY_CATEGORY.get(str(getattr(exc, "category", "fatal")), PluginFailed)
        if make is not None:
            return make(_message(exc))
    return None


def _message(exc: BaseException) -> str:
    """`exc`'s message, naming its ``fields_invalid`` when the message does not already."""
    text = str(exc) or type(exc).__name__
    fields = [str(f) for f in (getattr(exc, "fields_invalid", None) or [])]
    if fields and not all(re.search(rf"\b{re.escape(f)}\b", text) for f in fields):
        text = f"{', '.join(fields)}: {text}"
    retry = getattr(exc, "retry_after_seconds", None)
    if isinstance(retry, (int, float)) and not isinstance(retry, bool):
        text += f" (retry after {retry:g} s)"
    return text


def _call_error(exc: BaseException) -> BaseException:
    """What a call raises for `exc`: its plugvisor error, or `exc` itself (then the SDK
    answers ``plugin_failed`` and logs the traceback)."""
    return _translated(exc) or exc


def _config_error(exc: BaseException) -> BaseException:
    """What `initialize` raises for `exc`: a refused configuration is ``invalid_config``."""
    translated = _translated(exc)
    if translated is not None:
        if translated.kind == "invalid_input":
            return InvalidConfig(translated.message)
        return translated
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        detail = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return InvalidConfig(f"{detail} ({type(exc).__name__} from the plugin's initialize)")
    return exc


# ----------------------------------------------------------------------------- loading


class LoadError(Exception):
    """The plugin class named cannot be imported or instantiated."""


def load_plugin(spec: str) -> Any:
    """Imports ``MODULE:CLASS`` (or ``PATH.py:CLASS``) and returns an instance of the class,
    made without arguments as cjm's worker makes it.

    A path (it ends in ``.py`` or holds a ``/``) is imported as the module named after the
    file, with the file's directory first on `sys.path` (so its sibling modules import too).
    `CLASS` may be dotted (``Outer.Inner``).

    Raises:
        LoadError: saying what is wrong (a missing ``cjm-plugin-system`` is named as such).
    """
    module_part, sep, class_part = spec.rpartition(":")
    if not sep or not module_part or not class_part:
        raise LoadError(f"{spec!r}: expected MODULE:CLASS or PATH.py:CLASS")
    module = _import(module_part)
    target: Any = module
    for attr in class_part.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise LoadError(f"{module_part} has no {class_part}") from None
    if not inspect.isclass(target):
        raise LoadError(f"{spec}: {class_part} is a {type(target).__name__}, not a class")
    try:
        return target()
    except Exception as e:  # noqa: BLE001 - reported, the worker does not start
        raise LoadError(f"{spec}: {class_part}() failed: {type(e).__name__}: {e}") from e


def _import(module_part: str) -> Any:
    name = module_part
    if module_part.endswith(".py") or os.sep in module_part:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise LoadError(f"{module_part}: no such file")
        directory, name = os.path.split(path)
        name = name[:-3] if name.endswith(".py") else name
        loaded = sys.modules.get(name)
        if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") != path:
            raise LoadError(f"{module_part}: the module name {name!r} is taken by {loaded!r}; rename the file")
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "cjm_plugin_system":
            raise LoadError(
                f"{module_part} needs {CJM_DISTRIBUTION}, which is not installed for "
                f"{sys.executable} (pip install {CJM_DISTRIBUTION}; its current release needs "
                f"Python >= 3.12)"
            ) from None
        raise LoadError(f"cannot import {module_part}: {e}") from None
    except Exception as e:  # noqa: BLE001 - an import-time failure of the plugin's module
        raise LoadError(f"cannot import {module_part}: {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- main

_USAGE = """\
usage: python -m plugvisor.cjm MODULE:CLASS [worker options]
       python -m plugvisor.cjm PATH.py:CLASS [worker options]

Serves a cjm-plugin-system plugin (a PluginInterface class) as a plugvisor worker.
Start it through plugvisor with a manifest:

    command = "/path/to/venv/bin/python"
    args = ["-m", "plugvisor.cjm", "my_package.plugin:MyPlugin"]

or by hand: python -m plugvisor.cjm MODULE:CLASS --listen tcp://127.0.0.1:9000 --token-file TOKEN
(worker options: --socket PATH | --listen ADDR, --token-file FILE, --transfer-dir DIR,
--max-body BYTES)."""


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """``python -m plugvisor.cjm SPEC [worker options]``: loads the plugin and runs it.

    Exit statuses as `plugvisor.run`'s, and 1 when the plugin cannot be loaded, 2 for usage
    errors (no SPEC, no listen address).
    """
    from ._run import run

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(_USAGE)
        sys.exit(0)
    if not args or args[0].startswith("-"):
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    spec, rest = args[0], args[1:]
    if not any(a.split("=", 1)[0] in ("--socket", "--listen") for a in rest) and "-h" not in rest:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    try:
        plugin = load_plugin(spec)
    except LoadError as e:
        print(f"plugvisor.cjm: error: {e}", file=sys.stderr)
        sys.exit(1)
    run(CjmPlugin(plugin), rest)


if __name__ == "__main__":
    main()
