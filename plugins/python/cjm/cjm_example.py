"""A plugin written for cjm-plugin-system (PyPI `cjm-plugin-system`), with nothing of plugvisor in
it: plugvisor runs it unchanged with `python -m plugvisor.cjm ./cjm_example.py:Greeter` (see
cjm_example.toml). Needs `pip install cjm-plugin-system ./sdk/python` in the interpreter that
runs it (cjm-plugin-system 0.0.46 needs Python >= 3.12).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from cjm_plugin_system.core.interface import PluginInterface
from cjm_plugin_system.utils.validation import (
    SCHEMA_DESC,
    SCHEMA_ENUM,
    SCHEMA_MAX,
    SCHEMA_MIN,
    config_to_dict,
    dataclass_to_jsonschema,
    dict_to_config,
)


@dataclass
class GreeterConfig:
    """Greeter settings."""

    greeting: str = field(default="hello", metadata={SCHEMA_DESC: "The word to greet with"})
    style: str = field(default="plain", metadata={SCHEMA_ENUM: ["plain", "upper"]})
    repeat: int = field(default=1, metadata={SCHEMA_MIN: 1, SCHEMA_MAX: 3})


@dataclass
class Greeting:
    text: str
    words: int


class Greeter(PluginInterface):
    """Greets a name: `execute("world")` or `execute(name="world")`; streams word by word."""

    config: GreeterConfig

    @property
    def name(self) -> str:
        return "cjm-greeter"

    @property
    def version(self) -> str:
        return "0.1.0"

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.config = dict_to_config(GreeterConfig, config or {}, validate=True)

    def get_config_schema(self) -> Dict[str, Any]:
        return dataclass_to_jsonschema(GreeterConfig)

    def get_current_config(self) -> Dict[str, Any]:
        return config_to_dict(self.config)

    def execute(self, name: str = "world", **kwargs: Any) -> Greeting:
        text = " ".join([f"{self.config.greeting}, {name}"] * self.config.repeat)
        if self.config.style == "upper":
            text = text.upper()
        return Greeting(text=text, words=len(text.split()))

    def execute_stream(self, name: str = "world", **kwargs: Any):
        for word in self.execute(name).text.split():
            self.check_cancel()
            yield word
