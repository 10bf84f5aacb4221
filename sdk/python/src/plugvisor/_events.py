"""Host events (``POST /v1/events``): `Event`, the body the host delivers, and the rules for the
event names a plugin declares (`docs/PROTOCOL.md` §7, "POST /v1/events"; the Rust runtime's
``worker/src/events.rs`` and ``proto-types/src/wire/events.rs``).

Names are the host's lifecycle event names (``loaded``, ``unloaded``, ``crashed``,
``task_failed``, …); a ``plugin_`` prefix is optional (``plugin_loaded`` is ``loaded``) and a
delivery always carries the bare name. ``*`` handles every event the manifest subscribes to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List

__all__ = [
    "Event",
    "EVENT_PREFIX",
    "ANY_EVENT",
    "canonical_event",
    "valid_event_name",
    "handles_event",
    "check_event_names",
]

#: The optional prefix of an event name: ``plugin_loaded`` is ``loaded``.
EVENT_PREFIX = "plugin_"
#: In a plugin's declared events: it handles every event its manifest subscribes it to.
ANY_EVENT = "*"

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def canonical_event(name: str) -> str:
    """`name` without the optional ``plugin_`` prefix."""
    return name[len(EVENT_PREFIX) :] if name.startswith(EVENT_PREFIX) else name


def valid_event_name(name: str) -> bool:
    """True for ``*`` and for 1–64 of ``a-z``, ``0-9`` and ``_``, the first a letter."""
    return name == ANY_EVENT or _NAME.fullmatch(name) is not None


def handles_event(declared: Iterable[str], event: str) -> bool:
    """True when a plugin that declared `declared` handles `event` (names compared without
    their ``plugin_`` prefix; ``*`` handles all)."""
    wanted = canonical_event(event)
    return any(d == ANY_EVENT or canonical_event(d) == wanted for d in declared)


def check_event_names(names: Any) -> List[str]:
    """The declared names as a list, every one valid and none twice (``loaded`` and
    ``plugin_loaded`` are one name).

    Raises:
        ValueError: naming the bad or repeated name.
    """
    if isinstance(names, str) or not isinstance(names, (list, tuple, set, frozenset)):
        raise ValueError("`events` must be a list of event names")
    out: List[str] = []
    seen = set()
    for name in names:
        if not isinstance(name, str) or not valid_event_name(name):
            raise ValueError(
                f"event name {name!r}: use `*` or 1-64 of a-z, 0-9 and _, starting with a letter"
            )
        canonical = canonical_event(name)
        if canonical in seen:
            raise ValueError(f"event {name!r} is declared twice")
        seen.add(canonical)
        out.append(name)
    return out


@dataclass(frozen=True)
class Event:
    """One host event delivered to a subscribed plugin's `on_event`.

    ``event`` is the name without the ``plugin_`` prefix (``loaded``, ``unloaded``,
    ``task_failed``, …; also `name`), ``plugin`` the plugin it is about (not necessarily this
    one), ``at_ms`` when it happened (milliseconds since the Unix epoch), ``details`` its own
    fields (``{"version"}`` for ``loaded``, ``{"task", "duration_ms", "error"}`` for
    ``task_failed``, ``{}`` when it has none).
    """

    event: str
    plugin: str
    at_ms: int
    details: Any = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The event's name (``event``)."""
        return self.event

    @classmethod
    def from_wire(cls, value: Any) -> "Event":
        """Reads the body of ``POST /v1/events`` (fields it does not know are ignored).

        Raises:
            ValueError: a missing or mistyped field, named as serde names it.
        """
        if not isinstance(value, dict):
            raise ValueError("the request body must be a JSON object")
        for key in ("event", "plugin", "at_ms"):
            if key not in value:
                raise ValueError(f"missing field `{key}`")
        event, plugin, at_ms = value["event"], value["plugin"], value["at_ms"]
        if not isinstance(event, str):
            raise ValueError(f"invalid type for `event`: {_type(event)}, expected a string")
        if not isinstance(plugin, str):
            raise ValueError(f"invalid type for `plugin`: {_type(plugin)}, expected a string")
        if isinstance(at_ms, bool) or not isinstance(at_ms, int) or not 0 <= at_ms < 1 << 64:
            raise ValueError(f"invalid value for `at_ms`: {_type(at_ms)}, expected u64")
        return cls(event, plugin, at_ms, value.get("details", {}))

    def to_wire(self) -> Dict[str, Any]:
        """Its JSON form."""
        return {"event": self.event, "plugin": self.plugin, "at_ms": self.at_ms, "details": self.details}


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {value!r}"
    return "a sequence" if isinstance(value, list) else "a map"
