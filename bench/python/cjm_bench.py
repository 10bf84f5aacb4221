"""P20's cjm side: bench_logic's echo and ticks as a cjm-plugin-system plugin (PluginInterface),
served by cjm's own worker (`python -m cjm_plugin_system.core.worker`) behind its own proxy."""

from typing import Any, Dict, Optional

import bench_logic
from cjm_plugin_system.core.interface import PluginInterface


class Bench(PluginInterface):
    @property
    def name(self) -> str:
        return "pybench"

    @property
    def version(self) -> str:
        return "0.1.0"

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        pass

    def get_config_schema(self) -> Dict[str, Any]:
        return {"type": "object", "properties": {}}

    def get_current_config(self) -> Dict[str, Any]:
        return {}

    def execute(self, text: str) -> Any:
        return bench_logic.echo(text)

    def execute_stream(self, n: int) -> Any:
        yield from bench_logic.ticks(n)
