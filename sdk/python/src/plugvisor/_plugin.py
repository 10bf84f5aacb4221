"""The `Plugin` ABC (the seed interface) and the decorators that declare routes and named methods."""

from __future__ import annotations

import abc
import copy
import inspect
import re
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterator,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

__all__ = ["Plugin", "route", "method", "RouteSpec", "MethodSpec", "declared_routes", "declared_methods"]

F = TypeVar("F", bound=Callable[..., Any])

#: A valid named-method name: 1–64 of ``a-z``, ``0-9``, ``_``, ``-``, starting with a letter.
_METHOD_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class Plugin(abc.ABC):
    """A plugin: an identity, a lifecycle, and calls that take and return JSON.

    Subclass it, give it a `name` and a `version` (class attributes or properties) and an
    `execute`; everything else has a default. Any method may be ``async def``; plain methods
    run on a thread pool, so a blocking `execute` never stalls the worker's health answers::

        class Hello(plugvisor.Plugin):
            name = "hello"
            version = "0.1.0"

            def execute(self, input):
                return {"hello": input}

        if __name__ == "__main__":
            plugvisor.run(Hello())

    Optional extensions beside the seed interface, served only when a plugin has them:
    `health_check` (override it), middleware hooks (override `before_request` and/or
    `after_response`), plugin routes (`@plugvisor.route`), named methods
    (`@plugvisor.method`) and host events (declare `events`, override `on_event`).
    """

    #: The JSON Schema of the configuration: the default `get_config_schema` answers it, and the
    #: default `initialize` fills keys left out from its properties' ``default`` values.
    config_schema: ClassVar[Dict[str, Any]] = {"type": "object"}

    #: The host events the plugin handles in `on_event` (``POST /v1/events``), listed once in
    #: ``/v1/info``: host event names (``loaded``, ``plugin_unloaded``, ``task_failed``, …; the
    #: ``plugin_`` prefix is optional) or ``"*"`` for every event its manifest's ``hooks``
    #: subscribe it to. Read only when the plugin overrides `on_event`; empty: it hears no
    #: events. May also be a property or a method.
    events: ClassVar[Sequence[str]] = ()

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration in force, as the default `initialize` stores it (before the first
        `initialize`: the schema's defaults)."""
        current = self.__dict__.get("_plugvisor_config")
        if current is None:
            current = self.__dict__["_plugvisor_config"] = schema_defaults(self.get_config_schema())
        return current

    @config.setter
    def config(self, value: Dict[str, Any]) -> None:
        self.__dict__["_plugvisor_config"] = value

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Unique identifier, e.g. ``"hello"``."""

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """Version (semver), e.g. ``"1.0.0"``."""

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> Any:
        """Initializes or re-configures the plugin; `None` means "the defaults".

        May be called again at any time, also while calls run. The default stores the schema's
        defaults updated with `config` in ``self.config``. Raise `plugvisor.InvalidConfig`
        (naming the field and the rule) to refuse a configuration: the previous one stays.
        """
        merged = schema_defaults(self.get_config_schema())
        if isinstance(config, dict):
            merged.update(config)
        self.config = merged

    @abc.abstractmethod
    def execute(self, input: Any) -> Any:
        """Runs the plugin on `input` (any JSON value) and returns its output (JSON-able).

        File references in `input` arrive as `plugvisor.FileRef`; a `FileRef`, an
        `OutputFile` or a file-backed object in the output travels as a file reference.
        Raise `plugvisor.InvalidInput` for input the plugin cannot take.
        """

    def execute_stream(self, input: Any) -> Union[Iterable[Any], AsyncIterator[Any]]:
        """Runs the plugin on `input` and yields its results (a generator, sync or async).

        The default yields one item, the result of `execute`. An exception before the first
        item is an ordinary error answer; one after it ends the stream with an error frame.
        """
        return _one(self.execute(input))

    def get_config_schema(self) -> Dict[str, Any]:
        """JSON Schema of the configuration; the host validates configurations against it."""
        return self.config_schema

    def get_current_config(self) -> Dict[str, Any]:
        """The configuration in force, with defaults filled in."""
        config = self.config
        return dict(config) if isinstance(config, dict) else config

    def cleanup(self) -> Any:
        """Releases what the plugin holds; run once before the worker exits (at most 0.5 s)."""

    def health_check(self) -> Any:
        """The plugin's own verdict on itself, served only when a subclass overrides this.

        Return a `plugvisor.HealthReport`, ``"pass"`` / ``"warn"`` / ``"fail"``, a bool, or
        a dict ``{"status", "checks"?, "output"?}``. The host asks every ``[health]
        interval_ms``; an exception or no answer in time counts as ``fail``.
        """
        return "pass"

    def before_request(self, request: Any) -> Any:
        """Middleware hook, served only when overridden: sees a host request first.

        Gets a `plugvisor.HookRequest`; return `None` or `plugvisor.Continue(...)` to go on
        (changed or not), or `plugvisor.Respond(status, body)` to answer it.
        """
        return None

    def after_response(self, request: Any, response: Any) -> Any:
        """Middleware hook, served only when overridden: sees (and may change) the answer.

        Gets the `plugvisor.HookRequest` (without body) and the `plugvisor.HookResponse`;
        return the response, changed or not (`None`: unchanged).
        """
        return response

    def on_event(self, event: Any) -> Any:
        """Handles one host event (a `plugvisor.Event`) of those declared in `events`; served
        only when overridden.

        Events of one plugin arrive one at a time, in order. The return value is ignored; an
        exception is answered as for `execute` (``500 plugin_failed``) and only logged and
        counted (``hooks.failed``) by the host, never raised to whoever caused the event. Keep
        it short: the host cancels a delivery after 5 s and drops events while one runs long.
        """
        return None


def schema_defaults(schema: Any) -> Dict[str, Any]:
    """The ``default`` of each top-level property of a JSON Schema (deep copies)."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return {}
    return {
        key: copy.deepcopy(spec["default"])
        for key, spec in props.items()
        if isinstance(spec, dict) and "default" in spec
    }


def _one(result: Any) -> Union[Iterator[Any], AsyncIterator[Any]]:
    """One item: `result`, or what it resolves to when it is awaitable."""
    if inspect.isawaitable(result):

        async def resolved() -> AsyncIterator[Any]:
            yield await result

        return resolved()
    return iter((result,))


def overrides(plugin: Plugin, attribute: str) -> bool:
    """True when `plugin`'s class replaces the `Plugin` default of `attribute`."""
    return getattr(type(plugin), attribute, None) is not getattr(Plugin, attribute)


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP route of a plugin, as ``/v1/info`` lists it."""

    method: str
    path: str
    summary: Optional[str] = None
    request_schema: Optional[Dict[str, Any]] = None
    response_schema: Optional[Dict[str, Any]] = None

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form (absent fields left out)."""
        wire: Dict[str, Any] = {"method": self.method, "path": self.path}
        for key in ("summary", "request_schema", "response_schema"):
            if getattr(self, key) is not None:
                wire[key] = getattr(self, key)
        return wire


@dataclass(frozen=True)
class MethodSpec:
    """One named method of a plugin, as ``/v1/info`` lists it."""

    name: str
    summary: Optional[str] = None
    input_schema: Optional[Dict[str, Any]] = None

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form (absent fields left out)."""
        wire: Dict[str, Any] = {"name": self.name}
        if self.summary is not None:
            wire["summary"] = self.summary
        if self.input_schema is not None:
            wire["input_schema"] = self.input_schema
        return wire


_ROUTES_ATTR = "__plugvisor_routes__"
_METHOD_ATTR = "__plugvisor_method__"


def route(
    method: str,
    path: str,
    *,
    summary: Optional[str] = None,
    request_schema: Optional[Dict[str, Any]] = None,
    response_schema: Optional[Dict[str, Any]] = None,
) -> Callable[[F], F]:
    """Declares a plugin method as the handler of HTTP route `method` `path`.

    The host mounts it under ``/plugins/<plugin>`` (``serve``). `path` starts with ``/``; a
    segment ``{name}`` matches one segment (in ``request.params``), a last ``{*name}`` the rest.
    The handler gets a `plugvisor.RouteRequest` and returns a `plugvisor.RouteResponse` or a
    JSON-able value (answered as JSON, status 200)::

        @plugvisor.route("GET", "/items/{id}", summary="One item")
        def item(self, request):
            return {"id": request.params["id"]}

    Stack the decorator to serve several routes with one handler.
    """
    if not path.startswith("/"):
        raise ValueError(f"route path {path!r} must start with '/'")
    spec = RouteSpec(method.upper(), path, summary, request_schema, response_schema)

    def mark(fn: F) -> F:
        specs: List[RouteSpec] = list(getattr(fn, _ROUTES_ATTR, ()))
        setattr(fn, _ROUTES_ATTR, [spec] + specs)
        return fn

    return mark


@overload
def method(name: F) -> F: ...


@overload
def method(
    name: Optional[str] = None,
    *,
    summary: Optional[str] = None,
    input_schema: Optional[Dict[str, Any]] = None,
) -> Callable[[F], F]: ...


def method(
    name: Any = None,
    *,
    summary: Optional[str] = None,
    input_schema: Optional[Dict[str, Any]] = None,
) -> Any:
    """Declares a plugin method as a named method beside `execute` (``/v1/methods/<name>``).

    The name defaults to the function's; it must be 1–64 of ``a-z``, ``0-9``, ``_``, ``-``,
    starting with a letter, and not ``execute``. The function takes the input and returns the
    output, exactly like `execute`::

        @plugvisor.method(summary="Upper-cases a string")
        def shout(self, input):
            return input.upper() + "!"
    """
    if callable(name):
        return method()(name)

    def mark(fn: F) -> F:
        spec = MethodSpec(name or fn.__name__, summary or _first_line(fn.__doc__), input_schema)
        setattr(fn, _METHOD_ATTR, spec)
        return fn

    return mark


def _first_line(doc: Optional[str]) -> Optional[str]:
    if not doc:
        return None
    line = doc.strip().splitlines()[0].strip()
    return line or None


def _marked(plugin: Plugin, attr: str) -> List[Tuple[str, Any]]:
    """(attribute name, marker) of every function of `plugin`'s class carrying `attr`, in
    definition order, base classes first; an override replaces its base's entry."""
    found: Dict[str, Any] = {}
    for klass in reversed(type(plugin).__mro__):
        for key, value in vars(klass).items():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            marker = getattr(fn, attr, None)
            if marker is not None:
                found[key] = marker
            elif key in found:
                del found[key]
    return list(found.items())


def declared_routes(plugin: Plugin) -> List[Tuple[RouteSpec, Callable[..., Any]]]:
    """The plugin's routes with their bound handlers."""
    out: List[Tuple[RouteSpec, Callable[..., Any]]] = []
    for key, specs in _marked(plugin, _ROUTES_ATTR):
        out.extend((spec, getattr(plugin, key)) for spec in specs)
    return out


def declared_methods(plugin: Plugin) -> List[Tuple[MethodSpec, Callable[..., Any]]]:
    """The plugin's named methods with their bound functions.

    Raises:
        ValueError: a bad, reserved or repeated name.
    """
    out: List[Tuple[MethodSpec, Callable[..., Any]]] = []
    seen = set()
    for key, spec in _marked(plugin, _METHOD_ATTR):
        if not _METHOD_NAME.fullmatch(spec.name):
            raise ValueError(
                f"method name {spec.name!r}: use 1-64 of a-z, 0-9, _ and -, starting with a letter"
            )
        if spec.name == "execute":
            raise ValueError(f"method name {spec.name!r} is reserved for the seed call")
        if spec.name in seen:
            raise ValueError(f"method {spec.name!r} is declared twice")
        seen.add(spec.name)
        out.append((spec, getattr(plugin, key)))
    return out
