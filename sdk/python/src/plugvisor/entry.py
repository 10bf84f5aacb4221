"""Plugins installed as packages: entry points of the group ``plugvisor.plugins``, listed for the host and run as workers.

A package declares its plugin in its ``pyproject.toml``::

    [project.entry-points."plugvisor.plugins"]
    tiny = "tiny_plugin:Tiny"          # a Plugin class, a factory function or a Plugin instance

and the host finds it with ``plugvisor serve --python /path/to/venv/bin/python``. Two commands,
both run by the host with that interpreter:

    python -m plugvisor.entry list                           # one JSON document on stdout
    python -m plugvisor.entry run NAME [--from DIST] [worker options]

``list`` imports every entry point of the group (one distribution per name, the one ``import``
would use, as `importlib.metadata.entry_points` chooses) and prints, for each: its ``name``,
``value``, distribution ``dist`` and ``dist_version``, the ``path`` of the distribution's
metadata directory, the plugin's own ``version`` (a plain string attribute ``version``), the
manifest fields it declares (``manifest``: a dict attribute ``manifest`` on the object the entry
point names, e.g. ``{"description": …, "provides": [...], "start": "lazy", "config": {...}}``;
the keys are those of a manifest file but ``name``, ``command`` and ``args``), and ``error``
when it cannot be loaded. Anything a plugin's module prints while imported goes to stderr.

``run`` loads entry point NAME (of distribution DIST when given), makes the plugin (a class is
instantiated without arguments, a factory is called, a `Plugin` instance is used as it is) and
serves it with `plugvisor.run`; the host appends the worker options (``--socket PATH``).
Exit statuses: those of `plugvisor.run`; 1 when the entry point cannot be loaded; 2 for usage
errors.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
from importlib import metadata
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

from ._plugin import Plugin

__all__ = ["GROUP", "FORMAT", "EntryError", "entry_points", "listing", "load", "make_plugin", "main"]

#: The entry point group plugins are declared in.
GROUP = "plugvisor.plugins"
#: The version of the listing's JSON document (``"format"``); the host refuses others.
FORMAT = 1


class EntryError(Exception):
    """An entry point that cannot be found, loaded or made into a plugin; says which and why."""


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them (``My_Pkg`` is ``my-pkg``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entry_points() -> Iterator[Tuple[Any, Any]]:
    """Every ``(entry point, distribution)`` of `GROUP`, one distribution per normalized name
    (the first on ``sys.path``, the one ``import`` uses). Works on 3.9+: it walks the
    distributions rather than ``entry_points()``, whose API (and ``EntryPoint.dist``) differ."""
    seen = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        key = _normalized(name)
        if key in seen:
            continue
        seen.add(key)
        for ep in dist.entry_points:
            if ep.group == GROUP:
                yield ep, dist


def _dist_path(dist: Any) -> Optional[str]:
    """The distribution's metadata directory (``…/x-1.0.dist-info``), when it is on disk."""
    path = getattr(dist, "_path", None)
    return os.path.abspath(str(path)) if path is not None else None


def _described(obj: Any) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The manifest fields and the version `obj` (what an entry point names) declares."""
    declared = getattr(obj, "manifest", None)
    if declared is not None and not isinstance(declared, dict):
        raise EntryError(f"its manifest attribute is a {type(declared).__name__}, not a dict")
    version = inspect.getattr_static(obj, "version", None)
    if isinstance(obj, Plugin):
        version = getattr(obj, "version", None)
    return declared, version if isinstance(version, str) else None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, EntryError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _listed(ep: Any, dist: Any) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "name": ep.name,
        "value": ep.value,
        "dist": dist.metadata["Name"],
        "dist_version": dist.version,
        "path": _dist_path(dist),
        "version": None,
        "manifest": None,
        "error": None,
    }
    try:
        entry["manifest"], entry["version"] = _described(ep.load())
        json.dumps(entry["manifest"], allow_nan=False)
    except BaseException as e:  # noqa: BLE001 - a plugin's import may fail in any way, even exit
        if isinstance(e, KeyboardInterrupt):
            raise
        entry["manifest"] = None
        entry["error"] = f"cannot load {ep.value}: {_error_text(e)}"
    return entry


def listing() -> Dict[str, Any]:
    """The document ``list`` prints: ``{"format", "python", "python_version", "entry_points"}``."""
    return {
        "format": FORMAT,
        "python": sys.executable,
        "python_version": ".".join(str(n) for n in sys.version_info[:3]),
        "entry_points": [_listed(ep, dist) for ep, dist in entry_points()],
    }


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Points file descriptor 1 (and ``sys.stdout``) at stderr while plugin modules import,
    so nothing they print can spoil the document on stdout."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 1)
        os.close(real)


def load(name: str, dist: Optional[str] = None) -> Any:
    """What entry point `name` of `GROUP` names (of distribution `dist` when given).

    Raises:
        EntryError: no such entry point (the installed ones are named), or it fails to load.
    """
    found: List[Tuple[Any, Any]] = [
        (ep, d)
        for ep, d in entry_points()
        if ep.name == name and (dist is None or _normalized(d.metadata["Name"] or "") == _normalized(dist))
    ]
    if not found:
        names = sorted({ep.name for ep, _ in entry_points()})
        where = f" of distribution {dist}" if dist else ""
        raise EntryError(
            f"no entry point {name!r}{where} in group {GROUP!r} for {sys.executable} "
            f"(installed: {', '.join(names) or 'none'})"
        )
    ep, d = found[0]
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - reported, the worker does not start
        raise EntryError(f"entry point {name} = {ep.value} ({d.metadata['Name']}): cannot load: {_error_text(e)}") from e


def make_plugin(obj: Any, label: str = "the entry point") -> Plugin:
    """The plugin `obj` stands for: a `Plugin` instance as it is, a class instantiated without
    arguments, any other callable called without arguments (its result must be a `Plugin`).

    Raises:
        EntryError: it does not make a `plugvisor.Plugin`, or making it failed.
    """
    if isinstance(obj, Plugin):
        return obj
    if not callable(obj):
        raise EntryError(f"{label} names a {type(obj).__name__}, not a plugvisor.Plugin class, factory or instance")
    try:
        made = obj()
    except Exception as e:  # noqa: BLE001 - reported, the worker does not start
        raise EntryError(f"{label}: making the plugin failed: {_error_text(e)}") from e
    if not isinstance(made, Plugin):
        hint = " (a cjm-plugin-system plugin? run it with python -m plugvisor.cjm)" if hasattr(made, "execute") else ""
        raise EntryError(f"{label} made a {type(made).__name__}, not a plugvisor.Plugin{hint}")
    return made


_USAGE = """\
usage: python -m plugvisor.entry list
       python -m plugvisor.entry run NAME [--from DIST] [worker options]

Plugins installed as packages, declared as entry points of the group "plugvisor.plugins".
`list` prints them as JSON (plugvisor serve --python runs it); `run` serves one as a plugvisor
worker (worker options: --socket PATH | --listen ADDR, --token-file FILE, --transfer-dir DIR,
--max-body BYTES)."""


def _usage(code: int) -> NoReturn:
    print(_USAGE, file=sys.stdout if code == 0 else sys.stderr)
    sys.exit(code)


def _list() -> NoReturn:
    with _stdout_to_stderr():
        document = listing()
    sys.stdout.write(json.dumps(document, allow_nan=False) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def _run(args: List[str]) -> NoReturn:
    from ._run import run

    if not args or args[0].startswith("-"):
        _usage(2)
    name, rest = args[0], args[1:]
    dist = None
    if rest[:1] == ["--from"]:
        if len(rest) < 2:
            _usage(2)
        dist, rest = rest[1], rest[2:]
    label = f"entry point {name}"
    try:
        # Whatever the plugin's module prints while imported must not precede the handshake.
        with _stdout_to_stderr():
            plugin = make_plugin(load(name, dist), label)
    except EntryError as e:
        print(f"plugvisor.entry: error: {e}", file=sys.stderr)
        sys.exit(1)
    run(plugin, rest)


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """``python -m plugvisor.entry list | run NAME [--from DIST] [worker options]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        _usage(0 if args else 2)
    if args[0] == "list" and len(args) == 1:
        _list()
    if args[0] == "run":
        _run(args[1:])
    _usage(2)


if __name__ == "__main__":
    main()
