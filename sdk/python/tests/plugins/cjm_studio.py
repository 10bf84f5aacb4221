"""A plugin written against cjm-plugin-system's own interface (PluginInterface, FileBackedDTO, its
config dataclass helpers and typed errors), with nothing of plugvisor in it. test_cjm.py runs it
with `python -m plugvisor.cjm` in a virtual environment that has cjm-plugin-system 0.0.46.

Markers (files in $MARKER_DIR) let the tests see what happened inside the worker.
"""

import datetime
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from cjm_plugin_system.core.errors import PluginInputError
from cjm_plugin_system.core.interface import FileBackedDTO, PluginInterface
from cjm_plugin_system.core.wire import wire_type
from cjm_plugin_system.utils.validation import (
    SCHEMA_ENUM,
    SCHEMA_MAX,
    SCHEMA_MIN,
    config_to_dict,
    dataclass_to_jsonschema,
    dict_to_config,
)


def _marker(name: str, text: str) -> None:
    directory = os.environ.get("MARKER_DIR")
    if directory:
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)


@dataclass
class StudioConfig:
    """Studio settings."""

    prefix: str = field(default=">", metadata={"description": "Put before every reply"})
    style: str = field(default="plain", metadata={SCHEMA_ENUM: ["plain", "upper"]})
    repeat: int = field(default=1, metadata={SCHEMA_MIN: 1, SCHEMA_MAX: 3})


@dataclass
class Clip:
    """Audio-like data that crosses the boundary as a file (cjm's zero-copy FileBackedDTO)."""

    data: bytes
    media_type: str = "audio/x-test"

    def to_temp_file(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".clip")
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return path


@dataclass
class Reply:
    text: str
    args: List[Any]
    kwargs: Dict[str, Any]


@wire_type("studio.summary")
@dataclass
class Summary:
    """A registered wire DTO: cjm's worker sends it in its tagged envelope."""

    words: int
    when: datetime.date


@dataclass
class Word:
    index: int
    word: str


class Studio(PluginInterface):
    """Echo-like calls with the shapes a cjm plugin sees: positional and keyword arguments, a
    file path, dataclass and FileBackedDTO results, typed errors, cooperative cancellation."""

    def __init__(self) -> None:
        self.config = StudioConfig()
        self.initialized = 0
        self.reconfigured: List[Dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "studio"

    @property
    def version(self) -> str:
        return "0.3.0"

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.config = dict_to_config(StudioConfig, config or {}, validate=True)
        self.initialized += 1

    def reconfigure(self, old_config: Optional[Dict[str, Any]], new_config: Optional[Dict[str, Any]]) -> None:
        self.reconfigured.append({"old": dict(old_config or {}), "new": dict(new_config or {})})
        super().reconfigure(old_config, new_config)

    def get_config_schema(self) -> Dict[str, Any]:
        return dataclass_to_jsonschema(StudioConfig)

    def get_current_config(self) -> Dict[str, Any]:
        return config_to_dict(self.config)

    def _say(self, text: str) -> str:
        said = " ".join([text] * self.config.repeat)
        if self.config.style == "upper":
            said = said.upper()
        return f"{self.config.prefix}{said}"

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        action = kwargs.pop("action", None)
        if action == "pid":
            return os.getpid()
        if action == "crash":
            os._exit(7)
        if action == "lifecycle":
            return {"initialized": self.initialized, "reconfigured": self.reconfigured}
        if action == "summary":
            return Summary(len(" ".join(map(str, args)).split()), datetime.date(2025, 1, 2))
        if action == "bad":
            raise PluginInputError("text must not be empty", fields_invalid=["text"])
        if action == "slow":
            for _ in range(400):
                try:
                    self.check_cancel()
                except Exception:
                    _marker("cancelled", str(os.getpid()))
                    raise
                time.sleep(0.025)
            return "not cancelled"
        if action == "audio":
            path = kwargs["audio"]
            with open(path, "rb") as f:
                data = f.read()
            return {
                "path_is_str": isinstance(path, str),
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "reversed": Clip(data[::-1]),
                "is_file_backed": isinstance(Clip(b""), FileBackedDTO),
            }
        text = " ".join(str(a) for a in args)
        return Reply(self._say(text), list(args), kwargs)

    def execute_stream(self, text: str = "", fail_at: Optional[int] = None, **kwargs: Any):
        for i, word in enumerate(text.split()):
            self.check_cancel()
            if fail_at is not None and i == fail_at:
                raise PluginInputError(f"no word {i}", fields_invalid=["fail_at"])
            yield Word(i, self._say(word))

    def cleanup(self) -> None:
        _marker("cleanup", str(os.getpid()))
