"""P20's cjm driver: runs bench_logic under cjm-plugin-system's own proxy and worker and answers
the benchmark's commands, one JSON line in, one JSON line out (stdout carries nothing else).

Run by plugvisor-bench with the bench's Python >= 3.12 virtual environment (cjm-plugin-system
0.0.46 from PyPI), with `CJM_DATA_DIR` in its scratch directory and this directory on
`PYTHONPATH`. Commands (``{"op": …}``):

- ``spawn``: a new `RemotePluginProxy` (cjm spawns its worker and waits for ``/health``), then
  its first ``execute``; answers the milliseconds from construction to that answer. The proxy
  stays current (the previous one is cleaned up).
- ``port_worker``: also starts cjm's worker the other way cjm can (``--port``, its non-Unix
  path, polled every 10 ms until ``/health`` answers). The proxy's own worker gets its listening
  socket as ``--fd``, which uvicorn wraps as an AF_UNIX socket, so asyncio never sets
  ``TCP_NODELAY`` on its connections and small answers can wait for the client's delayed ACK;
  the ``--port`` worker has no such stall. ``via`` below picks ``"proxy"`` or ``"port"``.
- ``best`` (``n``, ``text``, ``via``): ``n`` calls of ``/execute`` through one reused
  ``httpx.Client``, the payload built and the answer decoded as the proxy does (cjm's best
  case); answers each call's microseconds.
- ``shipped`` (``n``, ``text``): ``n`` calls of ``proxy.execute`` as cjm ships it (a new
  ``httpx.Client`` per call); microseconds each.
- ``stream`` (``n``, ``via``): one ``proxy.execute_stream`` of ``n`` items, consumed to the end;
  answers the items and seconds.
- ``pid`` (``via``): the worker's pid (the benchmark reads its memory from ``/proc``).
- ``info``: Python and cjm-plugin-system versions.
- ``quit`` (or end of input): cleans up and exits.
"""

import asyncio
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time

REAL_STDOUT = os.fdopen(os.dup(1), "w", buffering=1)
# cjm's proxy prints progress lines on stdout: send them (and everything else) to stderr.
os.dup2(2, 1)
sys.stdout = sys.stderr

import httpx  # noqa: E402 - after the redirection above
from cjm_plugin_system.core.proxy import RemotePluginProxy  # noqa: E402
from cjm_plugin_system.core.wire import wire_decode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def manifest():
    """The manifest cjm's proxy needs: interpreter, module and class, and the worker's env."""
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
    return {
        "name": "pybench",
        "version": "0.1.0",
        "python_path": sys.executable,
        "module": "cjm_bench",
        "class": "Bench",
        "env_vars": {"PYTHONPATH": path},
    }


class Driver:
    """The current proxy and the commands run against it."""

    def __init__(self):
        self.proxy = None
        self.client = None
        self.port_process = None
        self.port_url = None

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proxy is not None:
            self.proxy.cleanup()
            self.proxy = None
        if self.port_process is not None:
            self.port_process.terminate()
            try:
                self.port_process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.port_process.kill()
                self.port_process.wait()
            self.port_process = None

    def url(self, cmd):
        return self.port_url if cmd.get("via") == "port" else self.proxy.base_url

    def port_worker(self, cmd):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, **manifest()["env_vars"])
        args = ["--module", "cjm_bench", "--class", "Bench", "--port", str(port), "--ppid", str(os.getpid())]
        start = time.perf_counter()
        self.port_process = subprocess.Popen(
            [sys.executable, "-m", "cjm_plugin_system.core.worker", *args], env=env, stdout=sys.stderr
        )
        self.port_url = f"http://127.0.0.1:{port}"
        with httpx.Client() as client:
            while True:
                try:
                    client.get(f"{self.port_url}/health")
                    break
                except httpx.ConnectError:
                    if self.port_process.poll() is not None:
                        raise RuntimeError("the --port worker exited") from None
                    time.sleep(0.01)
        return {"ms": (time.perf_counter() - start) * 1e3}

    def spawn(self, cmd):
        self.close()
        start = time.perf_counter()
        proxy = RemotePluginProxy(manifest())
        self.proxy = proxy
        out = proxy.execute("spawned")
        elapsed = time.perf_counter() - start
        check(out, "spawned")
        return {"ms": elapsed * 1e3}

    def best(self, cmd):
        proxy, text = self.proxy, cmd["text"]
        if self.client is None:
            self.client = httpx.Client(timeout=None)
        client, url = self.client, f"{self.url(cmd)}/execute"
        samples = []
        for _ in range(cmd["n"]):
            start = time.perf_counter()
            resp = client.post(url, json=proxy._prepare_payload((text,), {}))
            if resp.status_code != 200:
                raise RuntimeError(f"execute answered {resp.status_code}: {resp.text}")
            out = wire_decode(resp.json())
            samples.append((time.perf_counter() - start) * 1e6)
            check(out, text)
        return {"us": samples}

    def shipped(self, cmd):
        proxy, text = self.proxy, cmd["text"]
        samples = []
        for _ in range(cmd["n"]):
            start = time.perf_counter()
            out = proxy.execute(text)
            samples.append((time.perf_counter() - start) * 1e6)
            check(out, text)
        return {"us": samples}

    def stream(self, cmd):
        n = cmd["n"]

        async def consume():
            count = 0
            async for item in self.proxy.execute_stream(n):
                if item != count:
                    raise RuntimeError(f"item {count} was {item!r}")
                count += 1
            return count

        own = self.proxy.base_url
        self.proxy.base_url = self.url(cmd)
        try:
            start = time.perf_counter()
            count = asyncio.run(consume())
            secs = time.perf_counter() - start
        finally:
            self.proxy.base_url = own
        if count != n:
            raise RuntimeError(f"expected {n} items, got {count}")
        return {"items": count, "s": secs}

    def pid(self, cmd):
        process = self.port_process if cmd.get("via") == "port" else self.proxy.process
        return {"pid": process.pid}

    def info(self, cmd):
        return {
            "python": platform.python_version(),
            "cjm_plugin_system": importlib.metadata.version("cjm-plugin-system"),
        }


def check(out, text):
    if out != {"text": text}:
        raise RuntimeError(f"execute answered {out!r}")


def main():
    driver = Driver()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                answer = getattr(driver, cmd["op"])(cmd)
            except Exception as e:  # reported to the benchmark, which fails the scenario
                answer = {"error": f"{type(e).__name__}: {e}"}
            REAL_STDOUT.write(json.dumps(answer) + "\n")
    finally:
        driver.close()


if __name__ == "__main__":
    main()
