"""W3C trace context in the Python SDK: the rules for a ``traceparent`` (what is refused is
ignored, never an error), and, with the real Rust host, one request followed across a Python
consumer and the Rust `pricing` it calls by the trace id on both workers' log lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import alive, plugvisor_bin, wait_for
from plugvisor._calls import Call, child_traceparent, traceparent
from test_host import Serve
from test_services import py_manifest, rust_manifest

THEIRS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_valid_traceparents_are_kept_and_invalid_ones_ignored():
    assert traceparent(THEIRS) == THEIRS
    assert Call(None, THEIRS).trace_id == TRACE_ID
    # A later version is read by its first four fields.
    assert traceparent("01" + THEIRS[2:] + "-more") == THEIRS
    bad = [
        None,
        "",
        THEIRS.upper(),
        THEIRS + "x",
        "ff" + THEIRS[2:],
        "00-" + "0" * 32 + THEIRS[35:],
        THEIRS[:36] + "0" * 16 + THEIRS[52:],
        THEIRS.replace("-", "_", 1),
        "01" + THEIRS[2:] + "x",
        THEIRS[:40] + "é" + THEIRS[41:],
    ]
    for value in bad:
        assert traceparent(value) is None, value
        assert Call(None, value).trace_id is None


def test_a_child_keeps_the_trace_and_flags_with_a_new_parent():
    child = child_traceparent(THEIRS)
    assert traceparent(child) == child
    assert child[:36] == THEIRS[:36] and child.endswith("-01")
    assert child[36:52] != THEIRS[36:52]


def test_one_request_is_followed_across_a_python_and_a_rust_worker(tmp_path: Path, monkeypatch):
    if not (plugvisor_bin().parent / "pricing-worker").is_file():
        pytest.fail("no pricing-worker beside plugvisor: cargo build -p plugvisor-cli -p plugvisor-plugins --bins")
    d = tmp_path / "manifests"
    d.mkdir()
    rust_manifest(d, "pricing", "pricing", 'provides = ["pricing"]')
    py_manifest(d, "consumer", 'requires = ["pricing"]')
    # `info` shows the workers' stderr lines (they inherit the filter).
    monkeypatch.setenv("PLUGVISOR_LOG", "info")
    server = Serve([d], tmp_path)
    pids = []
    try:
        body = {"plugin_id": "consumer", "input": {"op": "call", "service": "pricing", "input": {"sku": "tea"}}}
        status, headers, _ = server.request("POST", "/api/plugins/execute", body, headers={"traceparent": THEIRS})
        assert status == 200
        assert headers["traceresponse"].startswith(f"00-{TRACE_ID}-"), headers
        # The Python plugin sees the trace; a request without one runs in a new trace.
        status, echoed = server.json("POST", "/api/plugins/execute", {"plugin_id": "consumer", "input": {"op": "echo"}},
                                     headers={"traceparent": THEIRS})
        assert (status, echoed["output"]["trace_id"]) == (200, TRACE_ID), echoed
        status, fresh = server.json("POST", "/api/plugins/execute", {"plugin_id": "consumer", "input": {"op": "echo"}})
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", fresh["output"]["trace_id"] or ""), fresh
        assert fresh["output"]["trace_id"] != TRACE_ID
        pids = [server.plugin(name)["pid"] for name in ("pricing", "consumer")]

        def lines(what: str) -> list:
            return [l for l in server.log if f"trace_id={TRACE_ID}" in l and what in l]

        # Both workers' lines of that request carry its trace id.
        assert wait_for(lambda: lines("svc calls pricing") and lines("pricing quoted a line"), 5), "".join(server.log)
        assert len(lines("svc calls pricing")) == 1 and len(lines("pricing quoted a line")) == 1
    finally:
        server.stop()
    assert wait_for(lambda: not any(alive(p) for p in pids), 5), "every worker is gone"
