"""cjm-plugin-system plugins run unchanged (`python -m plugvisor.cjm MODULE:CLASS`).

The first part checks the adapter's mappings in this process with stand-ins (no cjm needed).
The second installs cjm-plugin-system 0.0.46 (it needs Python >= 3.12; on 3.11 pip quietly
installs the old 0.0.28) and this SDK into a virtual environment of a Python >= 3.12 found on
the machine (pyenv's first), runs tests/plugins/cjm_studio.py — written against cjm's real
`PluginInterface` — under the real Rust host, and checks that nothing is left behind.

The environment is kept in sdk/python/.venv-cjm (gitignored; `PLUGVISOR_CJM_VENV` moves it) and
reused while cjm's version matches; the SDK is reinstalled into it when its sources change.
`PLUGVISOR_CJM_PYTHON` names the interpreter. Without a Python >= 3.12, or when pip cannot
install (no network), these tests skip saying why; `PLUGVISOR_CJM_TEST=require` makes that a
failure instead (for CI on machines that have both).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple

import pytest

from conftest import REPO, alive, plugin_script, wait_for
from test_host import Serve, cli

from plugvisor import FileRef, InvalidConfig, InvalidInput, PluginError
from plugvisor.cjm import CjmPlugin, LoadError, call_arguments, load_plugin, to_jsonable

CJM_VERSION = "0.0.46"
SDK = REPO / "sdk" / "python"


# ============================================================================ the adapter, in process


def test_inputs_map_to_positional_and_keyword_arguments():
    assert call_arguments({"args": [1, "a"], "kwargs": {"k": True}}) == ([1, "a"], {"k": True})
    assert call_arguments({"args": ["only"]}) == (["only"], {})
    assert call_arguments({"kwargs": {"k": 1}}) == ([], {"k": 1})
    assert call_arguments({"text": "hi", "n": 2}) == ([], {"text": "hi", "n": 2})
    assert call_arguments({}) == ([], {})
    assert call_arguments({"args": "not a list"}) == ([], {"args": "not a list"})
    assert call_arguments({"args": [], "kwargs": {}, "extra": 1}) == ([], {"args": [], "kwargs": {}, "extra": 1})
    assert call_arguments("hi") == (["hi"], {})
    assert call_arguments([1, 2]) == ([[1, 2]], {})
    assert call_arguments(None) == ([None], {})
    ref = FileRef("/x/in.wav", 3, "audio/wav")
    assert call_arguments({"args": [ref], "kwargs": {"more": [{"f": ref}]}}) == (
        ["/x/in.wav"],
        {"more": [{"f": "/x/in.wav"}]},
    )


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Blob:
    data: bytes

    def to_temp_file(self) -> str:
        raise AssertionError("left for the SDK")


@dataclasses.dataclass
class Inner:
    when: datetime.date
    color: Color


@dataclasses.dataclass
class Outer:
    inner: Inner
    items: Tuple[int, ...]
    path: PurePosixPath
    blob: Blob


def test_results_are_made_json_able_as_cjm_writes_them():
    blob = Blob(b"x")
    out = to_jsonable(
        {"o": Outer(Inner(datetime.date(2025, 1, 2), Color.RED), (1, 2), PurePosixPath("/a/b"), blob)}
    )
    assert out == {
        "o": {"inner": {"when": "2025-01-02", "color": "red"}, "items": [1, 2], "path": "/a/b", "blob": blob}
    }
    assert out["o"]["blob"] is blob, "a file-backed value (even a dataclass) is left for the SDK"

    class WithDict:
        def to_dict(self) -> Dict[str, Any]:
            return {"t": (1,)}

    assert to_jsonable([WithDict(), {1, 1}]) == [{"t": [1]}, [1]]


def fake_cjm_errors() -> Dict[str, type]:
    """Stand-ins for cjm_plugin_system.core.errors: the same names, bases and module."""

    class PluginError(Exception):
        category = "fatal"

    class PluginInputError(PluginError, ValueError):
        category = "user_input"

        def __init__(self, message: str, fields_invalid: Optional[List[str]] = None) -> None:
            super().__init__(message)
            self.fields_invalid = list(fields_invalid or [])

    class PluginConfigError(PluginInputError):
        pass

    class PluginTransientError(PluginError):
        category = "transient"

        def __init__(self, message: str, retry_after_seconds: Optional[float] = None) -> None:
            super().__init__(message)
            self.retry_after_seconds = retry_after_seconds

    class PluginCancelledError(PluginTransientError):
        pass

    class PluginTimeoutError(PluginTransientError):
        pass

    classes = dict(locals())
    for klass in classes.values():
        klass.__module__ = "cjm_plugin_system.core.errors"
    return classes


class Duck:
    """A cjm-shaped plugin without cjm: what the adapter calls, recorded."""

    name = "duck"
    version = "1.0.0"
    error: Optional[BaseException] = None

    def __init__(self) -> None:
        self.calls: List[Any] = []
        self._cancel_requested = True

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.calls.append(("initialize", config))
        if self.error is not None:
            raise self.error

    def reconfigure(self, old: Dict[str, Any], new: Dict[str, Any]) -> None:
        self.calls.append(("reconfigure", old, new))
        if self.error is not None:
            raise self.error

    def execute(self, text: str, *, times: int = 1) -> Any:
        assert self._cancel_requested is False, "the cancel flag is reset before each call"
        if self.error is not None:
            raise self.error
        return text * times

    def get_config_schema(self) -> Dict[str, Any]:
        return {"type": "object"}

    def get_current_config(self) -> Dict[str, Any]:
        raise AttributeError("no config before initialize")


def test_typed_cjm_errors_keep_their_kind_and_fields():
    errors = fake_cjm_errors()
    duck = Duck()
    plugin = CjmPlugin(duck)
    cases = [
        (errors["PluginInputError"]("bad", fields_invalid=["text"]), "invalid_input", "text: bad"),
        (errors["PluginConfigError"]("no such key: k", fields_invalid=["k"]), "invalid_config", "no such key: k"),
        (errors["PluginCancelledError"]("stop"), "cancelled", "stop"),
        (errors["PluginTimeoutError"]("slow"), "timed_out", "slow"),
        (errors["PluginTransientError"]("busy", retry_after_seconds=2), "unavailable", "busy (retry after 2 s)"),
        (errors["PluginError"]("odd"), "plugin_failed", "odd"),
    ]
    for exc, kind, message in cases:
        duck.error = exc
        with pytest.raises(PluginError) as got:
            plugin.execute("x")
        assert (got.value.kind, got.value.message) == (kind, message)
    duck.error = ValueError("a bug")
    with pytest.raises(ValueError):
        plugin.execute("x")  # a bare exception is the SDK's plugin_failed, traceback logged


def test_first_initialize_then_reconfigure_and_refusals_are_invalid_config():
    duck = Duck()
    plugin = CjmPlugin(duck)
    assert plugin.get_current_config() == {}, "asked before initialize"
    plugin.initialize({"a": 1})
    plugin.initialize({"a": 2})
    assert duck.calls == [("initialize", {"a": 1}), ("reconfigure", {"a": 1}, {"a": 2})]
    duck.error = ValueError("a: must be positive")
    with pytest.raises(InvalidConfig, match="a: must be positive"):
        plugin.initialize({"a": -1})
    duck.error = fake_cjm_errors()["PluginInputError"]("bad", fields_invalid=["b"])
    with pytest.raises(InvalidConfig, match="b: bad"):
        plugin.initialize({"b": 0})
    duck.error = None
    plugin.initialize({"a": 3})
    assert duck.calls[-1] == ("reconfigure", {"a": 2}, {"a": 3}), "old is the last one applied"


def test_arguments_that_do_not_fit_are_invalid_input_before_the_plugin_runs():
    plugin = CjmPlugin(Duck())
    assert plugin.execute({"args": ["ab"], "kwargs": {"times": 2}}) == "abab"
    assert plugin.execute({"text": "c"}) == "c"
    with pytest.raises(InvalidInput, match=r"does not fit execute\(text, \*, times=1\): too many positional"):
        plugin.execute({"args": ["a", "b"]})
    with pytest.raises(InvalidInput, match="unexpected keyword argument 'nope'"):
        plugin.execute({"text": "a", "nope": 1})


def test_loading_names_what_is_wrong(tmp_path):
    for spec, message in [
        ("no_colon", "expected MODULE:CLASS"),
        ("json:Nothing", "json has no Nothing"),
        ("json:dumps", "not a class"),
        ("no_such_module_xyz:C", "No module named 'no_such_module_xyz'"),
        (str(tmp_path / "missing.py") + ":C", "no such file"),
    ]:
        with pytest.raises(LoadError, match=message):
            load_plugin(spec)
    (tmp_path / "needs_cjm_xyz.py").write_text("import cjm_plugin_system.core.interface\nclass P: pass\n")
    if importlib.util.find_spec("cjm_plugin_system") is None:
        with pytest.raises(LoadError, match="needs cjm-plugin-system, which is not installed for"):
            load_plugin(str(tmp_path / "needs_cjm_xyz.py") + ":P")
    (tmp_path / "fine_xyz.py").write_text("class P:\n    name = 'p'\n")
    assert load_plugin(str(tmp_path / "fine_xyz.py") + ":P").name == "p"


def test_the_module_says_how_to_run_it_and_fails_to_start_without_cjm(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SDK / "src"))
    r = subprocess.run([sys.executable, "-m", "plugvisor.cjm"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage: python -m plugvisor.cjm MODULE:CLASS" in r.stderr
    example = str(REPO / "plugins" / "python" / "cjm" / "cjm_example.py") + ":Greeter"
    r = subprocess.run([sys.executable, "-m", "plugvisor.cjm", example], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, "no listen address"
    if importlib.util.find_spec("cjm_plugin_system") is not None:
        pytest.skip("this interpreter has cjm-plugin-system")
    sock = tmp_path / "w.sock"
    r = subprocess.run(
        [sys.executable, "-m", "plugvisor.cjm", example, "--listen", f"unix:{sock}"],
        env=dict(env, PLUGVISOR_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (1, ""), "no handshake, status 1"
    assert "needs cjm-plugin-system, which is not installed for" in r.stderr
    assert not sock.exists()


# ============================================================================ a real cjm, the real host


def _version_of(python: str) -> Optional[Tuple[int, int]]:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python312() -> Tuple[Optional[str], str]:
    """A Python >= 3.12 (3.12 first), and where it looked."""
    explicit = os.environ.get("PLUGVISOR_CJM_PYTHON")
    if explicit:
        return (explicit if (_version_of(explicit) or (0, 0)) >= (3, 12) else None), f"PLUGVISOR_CJM_PYTHON={explicit}"
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    pattern = os.path.join(root, "versions", "3.1[2-9]*", "bin", "python3.1[2-9]")
    found = sorted(glob.glob(pattern), key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parts[-3])])
    found += [w for w in (shutil.which(f"python3.{m}") for m in range(12, 20)) if w]
    for python in found:
        if (_version_of(python) or (0, 0)) >= (3, 12):
            return python, pattern
    return None, f"{pattern} and python3.12..python3.19 on PATH"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("PLUGVISOR_CJM_TEST") == "require":
        pytest.fail(reason)
    pytest.skip(reason)


def _pip(venv: Path, *args: str) -> None:
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if r.returncode != 0:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        _skip_or_fail(f"pip install {' '.join(args)} failed in {venv}: {tail}")


def _installed_cjm(venv: Path) -> Optional[str]:
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('cjm-plugin-system'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def _sdk_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((SDK / "src").rglob("*")) + [SDK / "pyproject.toml"]:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(SDK)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def cjm_python() -> Path:
    """The Python of a virtual environment with cjm-plugin-system 0.0.46 and this SDK."""
    python, looked = find_python312()
    if python is None:
        _skip_or_fail(f"no Python >= 3.12 (cjm-plugin-system {CJM_VERSION} needs it); looked at {looked}")
    venv = Path(os.environ.get("PLUGVISOR_CJM_VENV", SDK / ".venv-cjm"))
    ready = (venv / "bin" / "python").exists() and _installed_cjm(venv) == CJM_VERSION
    if not ready:
        r = subprocess.run([python, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            _skip_or_fail(f"{python} -m venv {venv} failed: {r.stderr.strip()[-300:]}")
        _pip(venv, f"cjm-plugin-system=={CJM_VERSION}")
        got = _installed_cjm(venv)
        if got != CJM_VERSION:
            pytest.fail(f"pip installed cjm-plugin-system {got}, not {CJM_VERSION}, with {python}")
    stamp = venv / ".plugvisor-sdk"
    digest = _sdk_digest()
    if not stamp.exists() or stamp.read_text() != digest:
        _pip(venv, "--no-deps", "--force-reinstall", str(SDK))
        stamp.write_text(digest)
    return venv / "bin" / "python"


def studio_manifest(directory: Path, python: Path, markers: Path, tmp: Path, extra: str = "") -> None:
    env = {"MARKER_DIR": str(markers), "TMPDIR": str(tmp)}
    env_line = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    (directory / "studio.toml").write_text(
        'name = "studio"\nversion = "0.3.0"\n'
        f"command = {json.dumps(str(python))}\n"
        f'args = ["-m", "plugvisor.cjm", {json.dumps(plugin_script("cjm_studio") + ":Studio")}]\n'
        f"env = {{ {env_line} }}\n"
        "[supervision]\nbackoff_initial_ms = 10\n"
        f"{extra}\n"
    )


@pytest.fixture(scope="module")
def studio(cjm_python, tmp_path_factory):
    """`plugvisor serve` with the cjm plugin; at the end: stopped cleanly, nothing left."""
    tmp = tmp_path_factory.mktemp("cjm")
    d, markers, scratch = tmp / "manifests", tmp / "markers", tmp / "tmp"
    for p in (d, markers, scratch):
        p.mkdir()
    studio_manifest(d, cjm_python, markers, scratch)
    server = Serve([d], tmp)
    server.markers = markers  # type: ignore[attr-defined]
    server.pids = set()  # type: ignore[attr-defined]
    yield server
    pid = server.plugin("studio")["pid"]
    server.pids.add(pid)
    server.stop()
    assert wait_for(lambda: not any(alive(p) for p in server.pids), 5), "every worker is gone"
    assert wait_for(lambda: not running(plugin_script("cjm_studio")), 5), "no worker or guardian is left"
    assert (markers / "cleanup").read_text() == str(pid), "the plugin's cleanup ran in the worker"
    leftovers = [p for p in server.run_dir.rglob("*") if p.is_file() or p.is_socket()]
    assert not leftovers, f"serve left files behind: {leftovers[:5]}"
    assert not list(scratch.iterdir()), "the plugin's FileBackedDTO temp files were moved, not copied"


def running(needle: str) -> List[int]:
    """Processes whose command line holds `needle` (a worker, or the guardian it forked)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle.encode() in cmdline and alive(int(entry)):
                found.append(int(entry))
    return found


def execute(server: Serve, body: Dict[str, Any], **kw: Any) -> Tuple[int, Any]:
    return server.json("POST", "/api/plugins/execute", {"plugin_id": "studio", **body}, **kw)


def test_a_cjm_plugin_is_served_with_its_identity_and_schema(studio):
    info = studio.plugin("studio")
    assert (info["version"], info["state"]) == ("0.3.0", "ready")
    schema = info["config_schema"]
    assert schema["title"] == "StudioConfig" and schema["properties"]["repeat"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 3,
        "default": 1,
    }
    assert info["config"] == {"prefix": ">", "style": "plain", "repeat": 1}


def test_call_with_args_kwargs_a_plain_object_and_a_single_value(studio):
    status, body = execute(studio, {"method": "execute", "args": ["hi", 2], "kwargs": {"k": [1]}})
    assert (status, body) == (200, {"output": {"text": ">hi 2", "args": ["hi", 2], "kwargs": {"k": [1]}}})
    assert execute(studio, {"input": {"k": "v"}}) == (200, {"output": {"text": ">", "args": [], "kwargs": {"k": "v"}}})
    assert execute(studio, {"input": "one"}) == (200, {"output": {"text": ">one", "args": ["one"], "kwargs": {}}})
    status, body = execute(studio, {"method": "execute", "args": ["a b"], "kwargs": {"action": "summary"}})
    assert body["output"] == {"__wire__": "studio.summary", "data": {"words": 2, "when": "2025-01-02"}}
    status, body = execute(studio, {"input": {"action": "bad"}})
    assert (status, body["error"]["kind"], body["error"]["message"]) == (400, "invalid_input", "text must not be empty")


def test_stream_items_and_a_typed_error_frame(studio):
    status, _, raw = studio.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": "studio", "input": {"args": ["a b c"], "kwargs": {}}}
    )
    frames = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200
    assert frames == [
        {"item": {"index": 0, "word": ">a"}},
        {"item": {"index": 1, "word": ">b"}},
        {"item": {"index": 2, "word": ">c"}},
        {"end": {"count": 3}},
    ]
    _, _, raw = studio.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": "studio", "input": {"text": "a b c", "fail_at": 1}}
    )
    frames = [json.loads(line) for line in raw.decode().splitlines()]
    assert frames[0] == {"item": {"index": 0, "word": ">a"}}
    assert frames[-1]["error"] == {"kind": "invalid_input", "message": "fail_at: no word 1"}


def test_reconfigure_is_validated_by_the_host_then_by_the_plugin(studio):
    status, body = studio.json("PUT", "/api/plugins/studio/config", {"config": {"repeat": 9}})
    assert (status, body["error"]["kind"]) == (422, "invalid_config")
    assert body["error"]["message"].startswith("invalid config for studio: repeat: 9 is greater than the maximum of 3")
    status, body = studio.json("PUT", "/api/plugins/studio/config", {"config": {"style": "loud"}})
    assert status == 422 and "style" in body["error"]["message"] and "(rule: enum)" in body["error"]["message"]
    # Past the schema (it allows other keys), cjm's dict_to_config refuses an unknown key.
    status, body = studio.json("PUT", "/api/plugins/studio/config", {"config": {"bogus": 1}})
    assert (status, body["error"]["kind"]) == (422, "invalid_config")
    assert "bogus" in body["error"]["message"]
    status, body = studio.json("PUT", "/api/plugins/studio/config", {"config": {"repeat": 2, "style": "upper"}})
    assert (status, body["config"]) == (200, {"prefix": ">", "style": "upper", "repeat": 2})
    assert execute(studio, {"input": "ok"})[1]["output"]["text"] == ">OK OK"
    status, body = execute(studio, {"input": {"action": "lifecycle"}})
    assert body["output"]["initialized"] >= 2, "reconfigure re-applied the config (cjm's default)"
    assert body["output"]["reconfigured"][-1] == {
        "old": {"prefix": ">", "style": "plain", "repeat": 1},
        "new": {"prefix": ">", "style": "upper", "repeat": 2},
    }, "`old` is the configuration last applied, never a refused one"
    assert studio.json("PUT", "/api/plugins/studio/config", {"config": {}})[0] == 200


def test_a_file_backed_argument_and_result(studio):
    data = os.urandom(200_000)
    status, upload = studio.json("POST", "/api/files", data, headers={"content-type": "application/octet-stream"})
    assert status == 201, upload
    status, body = execute(studio, {"method": "execute", "kwargs": {"action": "audio", "audio": upload["ref"]}})
    assert status == 200, body
    out = body["output"]
    assert out["path_is_str"] is True, "the plugin got a path, as cjm's proxy passes a FileBackedDTO"
    assert (out["sha256"], out["size"], out["is_file_backed"]) == (hashlib.sha256(data).hexdigest(), len(data), True)
    download = out["reversed"]["$download"]
    assert download["media_type"] == "audio/x-test"
    status, _, fetched = studio.request("GET", download["url"])
    assert (status, fetched) == (200, data[::-1])


def test_a_dropped_call_runs_the_plugins_cancel(studio):
    status, body = execute(studio, {"input": {"action": "slow"}, "timeout_ms": 400})
    assert (status, body["error"]["kind"]) == (504, "timed_out")
    assert wait_for(lambda: (studio.markers / "cancelled").exists(), 5), "check_cancel() raised in the plugin"
    assert execute(studio, {"input": "after"})[0] == 200, "the next call starts with the flag cleared"


def test_a_crash_is_worker_crashed_and_the_next_call_is_served_after_the_restart(studio):
    assert studio.json("PUT", "/api/plugins/studio/config", {"config": {"prefix": "#"}})[0] == 200
    before = execute(studio, {"input": {"action": "pid"}})[1]["output"]
    studio.pids.add(before)
    status, body = execute(studio, {"input": {"action": "crash"}})
    assert (status, body["error"]["kind"]) == (502, "worker_crashed"), body
    assert body["error"]["crash"]["pid"] == before and body["error"]["crash"]["exit"] == {"code": 7}
    assert wait_for(lambda: not alive(before), 5)
    status, body = execute(studio, {"input": {"action": "pid"}}, timeout=30)
    assert status == 200 and body["output"] != before, "a new worker serves the next call"
    studio.pids.add(body["output"])
    assert execute(studio, {"input": "x"})[1]["output"]["text"] == "#x", "the new worker got the config"
    assert studio.plugin("studio")["restarts"] >= 1
    assert studio.json("PUT", "/api/plugins/studio/config", {"config": {}})[0] == 200


def test_the_cli_passes_a_file_in_and_keeps_the_file_out(cjm_python, tmp_path):
    d, markers, scratch, keep = tmp_path / "m", tmp_path / "markers", tmp_path / "tmp", tmp_path / "keep"
    for p in (d, markers, scratch, keep):
        p.mkdir()
    studio_manifest(d, cjm_python, markers, scratch)
    before = set(running(plugin_script("cjm_studio")))  # the served module fixture's worker
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc123")
    r = cli(
        "call", "--plugins", str(d), "studio", '{"action": "audio"}', "--file", f"audio={src}", "--out-dir", str(keep),
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sha256"] == hashlib.sha256(b"abc123").hexdigest() and out["path_is_str"] is True
    kept = Path(out["reversed"]["$file"]["path"])
    assert kept.parent == keep and kept.read_bytes() == b"321cba"
    r = cli("stream", "--plugins", str(d), "studio", '{"args": ["x y"]}', "--config", '{"style": "upper"}', tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"index": 0, "word": ">X"},
        {"index": 1, "word": ">Y"},
    ]
    r = cli("call", "--plugins", str(d), "studio", '"x"', "--config", '{"repeat": 0}', tmp=tmp_path)
    assert r.returncode != 0 and "repeat: 0 is less than the minimum of 1" in r.stderr
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() or p.is_socket()]
    assert not list(scratch.iterdir())
    left = lambda: set(running(plugin_script("cjm_studio"))) - before  # noqa: E731
    assert wait_for(lambda: not left(), 5), f"no worker or guardian is left: {left()}"


def test_the_bundled_cjm_example_runs_as_its_manifest_says(cjm_python, tmp_path):
    example = REPO / "plugins" / "python" / "cjm"
    text = (example / "cjm_example.toml").read_text()
    assert 'command = "python3"' in text and '"./cjm_example.py:Greeter"' in text
    text = text.replace('command = "python3"', f"command = {json.dumps(str(cjm_python))}")
    text = text.replace('"./cjm_example.py:Greeter"', json.dumps(str(example / "cjm_example.py") + ":Greeter"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "cjm_example.toml").write_text(text)
    r = cli("call", "--plugins", str(d), "cjm-greeter", '"world"', "--config", '{"style": "upper"}', tmp=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, '{"text":"HELLO, WORLD","words":2}'), r.stderr
    r = cli("stream", "--plugins", str(d), "cjm-greeter", '{"name": "you"}', tmp=tmp_path)
    assert (r.returncode, r.stdout.split()) == (0, ['"hello,"', '"you"']), r.stderr
    assert wait_for(lambda: not running(str(example / "cjm_example.py")), 5), "no worker or guardian is left"
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() or p.is_socket()]
