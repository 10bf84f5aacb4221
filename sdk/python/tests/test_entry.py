"""`plugvisor.entry`: listing the entry points of `plugvisor.plugins` and making plugins of them.

The listing runs in a subprocess over a directory laid out as installed distributions are
(``*.dist-info`` with ``entry_points.txt``) on ``PYTHONPATH``; the Rust integration test
(``tests/tests/it/entry_points.rs``) installs a real package with pip and serves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plugvisor
from plugvisor.entry import EntryError, make_plugin

SDK_SRC = Path(__file__).resolve().parent.parent / "src"

MODULE = '''
import plugvisor
print("imported")  # must not reach the listing on stdout


class Tiny(plugvisor.Plugin):
    name = "tiny"
    version = "2.0.0"
    manifest = {"description": "tiny", "provides": ["t"]}

    def execute(self, input):
        return input


def make():
    return Tiny()


not_a_dict = Tiny
'''


class Hello(plugvisor.Plugin):
    name = "hello"
    version = "1.0.0"

    def execute(self, input):
        return input


def test_a_class_a_factory_and_an_instance_make_plugins_and_others_are_named() -> None:
    assert isinstance(make_plugin(Hello), Hello)
    made = Hello()
    assert make_plugin(lambda: made) is made
    assert make_plugin(made) is made
    with pytest.raises(EntryError, match="made a dict, not a plugvisor.Plugin"):
        make_plugin(dict)

    class CjmLike:
        def execute(self) -> None: ...

    with pytest.raises(EntryError, match="python -m plugvisor.cjm"):
        make_plugin(CjmLike)
    with pytest.raises(EntryError, match="names a int"):
        make_plugin(3)

    def failing() -> None:
        raise RuntimeError("no model")

    with pytest.raises(EntryError, match="making the plugin failed: RuntimeError: no model"):
        make_plugin(failing)


def _installed(root: Path, entry_points: str) -> dict:
    """A distribution `tiny-dist` 1.0 with `entry_points` under `root`; its environment."""
    (root / "tinymod").mkdir()
    (root / "tinymod" / "__init__.py").write_text(MODULE)
    info = root / "tiny_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SDK_SRC), str(root)]))


def _entry(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plugvisor.entry", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_listing_reports_each_entry_point_and_keeps_stdout_clean(tmp_path: Path) -> None:
    env = _installed(
        tmp_path,
        "[plugvisor.plugins]\ntiny = tinymod:Tiny\nmade = tinymod:make\nbroken = tinymod.nope:X\n"
        "[other.group]\nignored = tinymod:Tiny\n",
    )
    r = _entry("list", env=env)
    assert r.returncode == 0, r.stderr
    assert "imported" in r.stderr
    listing = json.loads(r.stdout)
    assert listing["format"] == 1 and listing["python"] == sys.executable
    by_name = {e["name"]: e for e in listing["entry_points"]}
    assert set(by_name) == {"tiny", "made", "broken"}
    tiny = by_name["tiny"]
    assert (tiny["dist"], tiny["dist_version"], tiny["value"]) == ("tiny-dist", "1.0", "tinymod:Tiny")
    assert tiny["version"] == "2.0.0" and tiny["manifest"] == {"description": "tiny", "provides": ["t"]}
    assert tiny["path"].endswith("tiny_dist-1.0.dist-info") and tiny["error"] is None
    assert by_name["made"]["version"] is None and by_name["made"]["error"] is None
    assert "No module named 'tinymod.nope'" in by_name["broken"]["error"]


def test_run_names_what_is_missing_and_usage_errors_exit_2(tmp_path: Path) -> None:
    env = _installed(tmp_path, "[plugvisor.plugins]\ntiny = tinymod:Tiny\n")
    r = _entry("run", "nope", "--socket", str(tmp_path / "s"), env=env)
    assert r.returncode == 1
    assert "no entry point 'nope'" in r.stderr and "installed: tiny" in r.stderr
    r = _entry("run", "tiny", "--from", "other-dist", "--socket", str(tmp_path / "s"), env=env)
    assert r.returncode == 1 and "of distribution other-dist" in r.stderr
    assert _entry("bogus", env=env).returncode == 2
    assert _entry("run", env=env).returncode == 2
    assert _entry("--help", env=env).returncode == 0
