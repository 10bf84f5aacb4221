"""Python workers driven by the real Rust host: `plugvisor call` / `stream` and `plugvisor serve`."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from conftest import REPO, alive, children, plugin_script, plugvisor_bin, wait_for


def manifest(
    directory: Path, name: str, script: str, markers: Path, extra: str = "", env: Optional[Dict[str, str]] = None
) -> None:
    """A manifest running `script` with this interpreter (absolute paths: no PATH lookup)."""
    env = dict(env or {}, MARKER_DIR=str(markers))
    env_line = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\nversion = "{ {"kitchen": "1.2.3", "asyncy": "0.2.0"}.get(name, "0.1.0") }"\n'
        f"command = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(plugin_script(script))}]\n"
        f"env = {{ {env_line} }}\n"
        f"{extra}\n"
    )


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Tuple[Path, Path]:
    d = tmp_path / "manifests"
    d.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    manifest(d, "kitchen", "kitchen", markers, "[config]\nsuffix = \"\"\n")
    manifest(d, "asyncy", "asyncy", markers)
    return d, markers


def cli(*args: str, tmp: Path, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = dict(os.environ, PLUGVISOR_RUNTIME_DIR=str(tmp / "run"))
    full.update(env or {})
    return subprocess.run(
        [str(plugvisor_bin()), *args], env=full, capture_output=True, text=True, timeout=timeout
    )


# ----------------------------------------------------------------------------- call / stream


def test_call_stream_method_and_config_through_the_cli(plugins_dir, tmp_path):
    d, _ = plugins_dir
    r = cli("call", "--plugins", str(d), "kitchen", '"hi"', "--config", '{"mode": "upper"}', tmp=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, '"HI"'), r.stderr
    r = cli("stream", "--plugins", str(d), "kitchen", '{"n": 4}', tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["i"] for line in r.stdout.splitlines()] == [0, 1, 2, 3]
    r = cli("call", "--plugins", str(d), "asyncy", '{"x": 1}', tmp=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, '{"async":{"x":1}}'), r.stderr


def test_typed_errors_reach_the_cli(plugins_dir, tmp_path):
    d, _ = plugins_dir
    r = cli("call", "--plugins", str(d), "kitchen", '{"op": "invalid"}', tmp=tmp_path)
    assert r.returncode != 0
    assert "invalid input: value: must be a number" in r.stderr
    r = cli("call", "--plugins", str(d), "kitchen", '"x"', "--config", '{"mode": "shout"}', tmp=tmp_path)
    assert r.returncode != 0 and "mode" in r.stderr and "shout" in r.stderr, r.stderr


def test_file_references_in_and_out_through_the_cli(plugins_dir, tmp_path):
    d, _ = plugins_dir
    data = os.urandom(300_000)
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    r = cli("call", "--plugins", str(d), "kitchen", '{"op": "read"}', "--file", f"file={src}", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["is_ref"] is True
    assert out["size"] == out["read"] == len(data)
    keep = tmp_path / "keep"
    keep.mkdir()
    r = cli("call", "--plugins", str(d), "kitchen", '{"op": "write", "text": "hello"}', "--out-dir", str(keep), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    path = Path(json.loads(r.stdout)["file"]["$file"]["path"])
    assert path.parent == keep and path.read_bytes() == b"hello"
    r = cli("call", "--plugins", str(d), "kitchen", '{"op": "blob", "text": "dto"}', "--out-dir", str(keep), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)["file"]["$file"]["path"]).read_bytes() == b"dto"
    assert not list((tmp_path / "run").rglob("out-*")), "no output file is left in the host's directories"


def test_the_bundled_python_example_runs_as_the_readme_says(tmp_path):
    r = cli("call", "--plugins", str(REPO / "plugins" / "python"), "hello", '"world"', tmp=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, '{"hello":"world"}'), r.stderr


def test_the_worker_exits_on_stdin_eof_and_leaves_nothing(plugins_dir, tmp_path):
    d, _ = plugins_dir
    r = cli("call", "--plugins", str(d), "kitchen", '{"op": "pid"}', tmp=tmp_path, env={"PLUGVISOR_LOG": "info"})
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    assert "stdin closed (host gone)" in r.stderr or "shutdown requested" in r.stderr
    assert wait_for(lambda: not alive(pid), 3), "the worker is gone"
    assert not list((tmp_path / "run").rglob("*.sock"))


# ----------------------------------------------------------------------------- serve


class Serve:
    """A running `plugvisor serve` on a free loopback port."""

    def __init__(self, dirs: List[Path], tmp: Path) -> None:
        self.run_dir = tmp / "run"
        args = [str(plugvisor_bin()), "serve", "--listen", "127.0.0.1:0"]
        for d in dirs:
            args += ["--plugins", str(d)]
        env = dict(os.environ, PLUGVISOR_RUNTIME_DIR=str(self.run_dir))
        self.proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.log: List[str] = []
        banner = ""
        while "http://" not in banner:
            banner = self.proc.stderr.readline().decode()
            if not banner:
                raise AssertionError("serve ended early: " + "".join(self.log))
            self.log.append(banner)
        threading.Thread(target=self._drain, daemon=True).start()
        url = re.search(r"http://([0-9.]+):(\d+)", banner)
        assert url, banner
        self.host, self.port = url.group(1), int(url.group(2))

    def _drain(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.log.append(line.decode("utf-8", "replace"))

    def request(
        self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None, timeout: float = 30
    ) -> Tuple[int, Dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        answer = conn.getresponse()
        payload = answer.read()
        conn.close()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, payload

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> Tuple[int, Any]:
        status, _, payload = self.request(method, path, body, **kw)
        return status, json.loads(payload)

    def plugin(self, name: str) -> Dict[str, Any]:
        return self.json("GET", f"/api/plugins/{name}")[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(15) == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    d = tmp / "manifests"
    d.mkdir()
    markers = tmp / "markers"
    markers.mkdir()
    manifest(d, "kitchen", "kitchen", markers, "[health]\ninterval_ms = 200\n", {"PLUGVISOR_LOG": "debug"})
    manifest(d, "asyncy", "asyncy", markers, "[supervision]\nbackoff_initial_ms = 10\n")
    manifest(
        d,
        "pyguard",
        "pyguard",
        markers,
        'kind = "middleware"\n[middleware]\npaths = ["/plugins/asyncy/**"]\n',
    )
    server = Serve([d], tmp)
    server.markers = markers  # type: ignore[attr-defined]
    yield server
    server.stop()
    leftovers = [p for p in server.run_dir.rglob("*") if p.is_file() or p.is_socket()]
    assert not leftovers, f"serve left files behind: {leftovers[:5]}"


def test_execute_and_stream_over_rest(served):
    assert served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": "hi"}) == (200, {"output": "hi"})
    status, _, body = served.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": "kitchen", "input": {"n": 5}}
    )
    frames = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200
    assert [f["item"]["i"] for f in frames[:-1]] == [0, 1, 2, 3, 4]
    assert frames[-1] == {"end": {"count": 5}}
    status, _, body = served.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": "kitchen", "input": {"n": 5, "fail_at": 3}}
    )
    assert json.loads(body.decode().splitlines()[-1])["error"]["message"] == "failed at item 3"


def test_typed_errors_map_to_statuses_over_rest(served):
    status, body = served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "invalid"}})
    assert (status, body["error"]["kind"]) == (400, "invalid_input")
    status, body = served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "boom"}})
    assert (status, body["error"]["kind"]) == (500, "plugin_failed")
    assert body["error"]["message"] == "the plugin raised ValueError: kaboom"


def test_a_blocking_sync_call_does_not_stall_the_worker(served):
    pid = served.plugin("kitchen")["pid"]
    result: Dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "v", served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "busy", "secs": 2}})
        )
    )
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    for i in range(5):
        assert served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": i}) == (200, {"output": i})
    assert time.monotonic() - started < 1.5, "other calls are served while one blocks"
    t.join(10)
    assert result["v"] == (200, {"output": "done"})
    info = served.plugin("kitchen")
    assert (info["pid"], info["state"]) == (pid, "ready"), "health probes were answered all along"


def test_a_call_past_its_timeout_is_timed_out_and_cancelled_in_the_plugin(served):
    status, body = served.json(
        "POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "block"}, "timeout_ms": 800}
    )
    assert (status, body["error"]["kind"]) == (504, "timed_out")
    assert wait_for(lambda: (served.markers / "cancelled").exists(), 3), "the plugin saw the cancellation"
    status, _, body = served.request(
        "POST",
        "/api/plugins/execute_stream",
        {"plugin_id": "kitchen", "input": {"n": 100, "slow": 0.1}, "timeout_ms": 400},
    )
    assert json.loads(body.decode().splitlines()[-1])["error"]["kind"] == "timed_out"
    assert wait_for(lambda: (served.markers / "stream-cancelled").exists(), 3), "".join(served.log[-30:])
    status, body = served.json(
        "POST", "/api/plugins/execute", {"plugin_id": "asyncy", "input": {"op": "sleep", "secs": 30}, "timeout_ms": 300},
        headers={"X-Key": "k1"},
    )
    assert (status, body["error"]["kind"]) == (504, "timed_out")
    assert wait_for(lambda: (served.markers / "async-cancelled").exists(), 3)


@pytest.mark.parametrize("op, cause", [("exit", "exit"), ("segfault", "segfault")])
def test_a_crash_is_reported_and_the_worker_restarted(served, op, cause):
    before = served.plugin("kitchen")["pid"]
    status, body = served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": op}})
    assert (status, body["error"]["kind"]) == (502, "worker_crashed"), body
    crash = body["error"]["crash"]
    assert crash["pid"] == before and crash["cause"] == cause
    if op == "exit":
        assert crash["exit"] == {"code": 3}
    assert wait_for(lambda: not alive(before), 3)
    status, body = served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "pid"}}, timeout=30)
    assert status == 200 and body["output"] != before, "a new worker serves the next call"
    assert served.plugin("kitchen")["restarts"] >= 1


def test_named_methods_over_rest(served):
    assert served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "method": "shout", "input": "hi"}) == (
        200,
        {"output": "HI!"},
    )
    methods = [m["name"] for m in served.plugin("kitchen")["methods"]]
    assert methods == ["shout", "re-verse"]
    status, body = served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "method": "whisper", "input": 1})
    assert status == 404
    # `plugvisor call NAME.METHOD` through a server (embedded, it looks for a NAME-worker binary).
    url = f"http://{served.host}:{served.port}"
    r = cli("call", "--server", url, "kitchen.shout", '"hi"', tmp=served.run_dir.parent)
    assert (r.returncode, r.stdout.strip()) == (0, '"HI!"'), r.stderr
    r = cli("call", "--server", url, "kitchen.re-verse", '"abc"', tmp=served.run_dir.parent)
    assert (r.returncode, r.stdout.strip()) == (0, '"cba"'), r.stderr


def test_plugin_routes_through_serve(served):
    status, body = served.json("GET", "/plugins/kitchen/hello?who=ann")
    assert (status, body) == (200, {"message": "hello from kitchen", "who": "ann"})
    status, headers, body = served.request("POST", "/plugins/kitchen/echo", b"some bytes", {"content-type": "text/x"})
    assert (status, body, headers["x-kitchen"]) == (201, b"some bytes", "10")
    assert served.json("GET", "/plugins/kitchen/items/7") == (200, {"id": "7", "forwarded": True})
    status, body = served.json("GET", "/plugins/kitchen/nope")
    assert (status, body["error"]["kind"]) == (404, "not_found")
    status, headers, _ = served.request("DELETE", "/plugins/kitchen/hello")
    assert status == 405
    status, headers, body = served.request("GET", "/plugins/kitchen/sse?n=3")
    assert headers["content-type"] == "text/event-stream"
    assert body == b"data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n"
    routes = [r["path"] for r in served.plugin("kitchen")["routes"]]
    assert "/plugins/kitchen/hello" in routes


def test_middleware_hooks_through_serve(served):
    status, body = served.json("POST", "/plugins/asyncy/count", {"x": 1})
    assert (status, body) == (401, {"error": "pyguard: no key"})
    status, headers, body = served.request("POST", "/plugins/asyncy/count", b"12345", {"X-Key": "k1"})
    assert (status, json.loads(body)) == (200, {"bytes": 5})
    assert headers["x-guarded-by"] == "pyguard"


def test_config_is_validated_by_the_host_against_the_python_schema(served):
    status, body = served.json("PUT", "/api/plugins/kitchen/config", {"config": {"mode": "shout"}})
    assert status == 422 and body["error"]["kind"] == "invalid_config"
    assert "mode" in body["error"]["message"]
    status, body = served.json("PUT", "/api/plugins/kitchen/config", {"config": {"mode": "upper"}})
    assert (status, body["config"]) == (200, {"mode": "upper", "suffix": ""})
    assert served.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": "hi"}) == (200, {"output": "HI"})
    assert wait_for(lambda: (served.plugin("kitchen")["plugin_health"] or {}).get("status") == "warn", 5)
    served.json("PUT", "/api/plugins/kitchen/config", {"config": {"mode": "plain"}})
    assert wait_for(lambda: (served.plugin("kitchen")["plugin_health"] or {}).get("status") == "pass", 5)


def test_async_plugin_over_rest(served):
    h = {"X-Key": "k1"}
    assert served.json("POST", "/api/plugins/execute", {"plugin_id": "asyncy", "input": 1}, headers=h) == (
        200,
        {"output": {"async": 1}},
    )
    status, _, body = served.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": "asyncy", "input": {"n": 3}}, h
    )
    assert [json.loads(line) for line in body.decode().splitlines()] == [
        {"item": 0},
        {"item": 1},
        {"item": 2},
        {"end": {"count": 3}},
    ]


def test_a_dead_host_takes_its_python_workers_and_their_children(plugins_dir, tmp_path):
    d, _ = plugins_dir
    server = Serve([d], tmp_path)
    try:
        pid = server.plugin("kitchen")["pid"]
        status, body = server.json("POST", "/api/plugins/execute", {"plugin_id": "kitchen", "input": {"op": "spawn"}})
        grandchild = body["output"]
        guardian = [p for p in children(pid) if p != grandchild]
        assert alive(pid) and alive(grandchild) and guardian
    finally:
        server.proc.kill()
        server.proc.wait()
    assert wait_for(lambda: not alive(pid) and not alive(grandchild) and not any(alive(g) for g in guardian), 3)


def test_serve_stops_python_workers_cleanly(plugins_dir, tmp_path):
    d, markers = plugins_dir
    server = Serve([d], tmp_path)
    pid = server.plugin("kitchen")["pid"]
    server.stop()
    assert wait_for(lambda: not alive(pid), 3)
    assert (markers / "cleanup").read_text() == str(pid), "cleanup ran in the worker"
    assert not [p for p in server.run_dir.rglob("*") if p.is_file() or p.is_socket()]
