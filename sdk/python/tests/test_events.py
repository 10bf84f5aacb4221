"""`POST /v1/events` and the `own` rule, byte by byte against a worker started as the host
starts one (tests/plugins/svc.py): what `/v1/info` declares, 204 answers, 404 for events the
plugin does not handle (or a plugin that hears none), 400 for bad bodies, errors answered as
for `execute` without harming the worker, no event counted as a call, bad declarations stopping
the worker at start; and a worker never answering `worker_crashed` as its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import plugin_script, wait_for

LOADED = {"event": "loaded", "plugin": "files", "at_ms": 1735646400000, "details": {"version": "0.1.0"}}


@pytest.fixture
def svc(worker_factory):
    def make(**env: str):
        return worker_factory("svc", env=dict({"SVC_NAME": "svc"}, **env))

    return make


def heard(worker):
    answer = worker.request("POST", "/v1/methods/heard", {"input": None})
    assert answer.status == 200, answer.body
    return answer.json()["output"]


def test_declared_events_are_in_info_and_delivered_with_204(svc):
    w = svc(SVC_EVENTS="plugin_loaded,task_failed")
    info = w.request("GET", "/v1/info").json()
    assert info["events"] == ["plugin_loaded", "task_failed"]
    assert "events" in info["capabilities"]
    before = w.request("GET", "/v1/health").json()["calls_total"]
    answer = w.request("POST", "/v1/events", LOADED)
    assert (answer.status, answer.body) == (204, b"")
    assert "content-length" not in answer.headers and "transfer-encoding" not in answer.headers
    # Unknown fields are ignored; `details` defaults to {}; prefixed names match bare ones.
    extra = {"event": "task_failed", "plugin": "x", "at_ms": 1, "new_field": True}
    assert w.request("POST", "/v1/events", extra).status == 204
    assert w.request("POST", "/v1/events", dict(LOADED, event="plugin_loaded")).status == 204
    assert w.request("GET", "/v1/health").json()["calls_total"] == before, "an event is not a call"
    got = heard(w)
    assert got["events"][1] == {"event": "task_failed", "plugin": "x", "at_ms": 1, "details": {}}
    assert got["events"][2] == LOADED
    assert got["counts"] == {"loaded": 1, "task_failed": 1, "plugin_loaded": 1}
    # Keep-alive after a 204: the next request on the same connection is answered.
    c = w.conn()
    try:
        assert c.request("POST", "/v1/events", LOADED).status == 204
        assert c.request("GET", "/v1/health").status == 200
    finally:
        c.close()


def test_events_the_plugin_does_not_handle_are_404_and_bad_bodies_400(svc):
    w = svc(SVC_EVENTS="plugin_loaded,task_failed")
    answer = w.request("POST", "/v1/events", dict(LOADED, event="unloaded"))
    assert answer.status == 404
    assert answer.json()["error"] == {
        "kind": "not_found",
        "message": 'this plugin does not handle event "unloaded" (it handles: plugin_loaded, task_failed)',
    }
    for body, needle in (
        (b"not json", ""),
        (b"[1]", "must be a JSON object"),
        (b"", "missing field `event`"),
        (json.dumps({"event": "loaded", "at_ms": 1}).encode(), "missing field `plugin`"),
        (json.dumps(dict(LOADED, at_ms="soon")).encode(), "at_ms"),
        (json.dumps(dict(LOADED, at_ms=-1)).encode(), "at_ms"),
        (json.dumps(dict(LOADED, event=3)).encode(), "event"),
    ):
        answer = w.request("POST", "/v1/events", body)
        assert answer.status == 400, (body, answer.body)
        assert answer.json()["error"]["kind"] == "bad_request" and needle in answer.json()["error"]["message"]
    answer = w.request("GET", "/v1/events")
    assert (answer.status, answer.headers["allow"]) == (405, "POST")
    assert heard(w)["events"] == [], "none of these reached the plugin"


def test_a_plugin_without_events_hears_none(svc):
    w = svc()
    info = w.request("GET", "/v1/info").json()
    assert "events" not in info and "events" not in info["capabilities"]
    answer = w.request("POST", "/v1/events", LOADED)
    assert answer.status == 404
    assert answer.json()["error"]["message"] == "this plugin hears no events"


def test_a_star_handles_every_event(svc):
    w = svc(SVC_EVENTS="*")
    assert w.request("GET", "/v1/info").json()["events"] == ["*"]
    for name in ("loaded", "crashed", "task_finished"):
        assert w.request("POST", "/v1/events", dict(LOADED, event=name)).status == 204
    assert heard(w)["counts"] == {"loaded": 1, "crashed": 1, "task_finished": 1}


@pytest.mark.parametrize("asynchronous", ["0", "1"])
def test_a_raising_on_event_is_answered_as_execute_and_the_worker_serves_on(svc, asynchronous):
    w = svc(SVC_EVENTS="loaded", SVC_EVENT_MODE="raise", SVC_ASYNC_EVENTS=asynchronous)
    pid = w.request("GET", "/v1/health").json()["pid"]
    answer = w.request("POST", "/v1/events", LOADED)
    assert answer.status == 500
    assert answer.json()["error"] == {
        "kind": "plugin_failed",
        "message": "the plugin raised ValueError: svc will not hear of loaded",
    }
    assert wait_for(lambda: "Traceback" in w.stderr()), "logged with its traceback"
    health = w.request("GET", "/v1/health").json()
    assert (health["status"], health["pid"], health["calls_total"]) == ("ok", pid, 0)
    assert w.request("POST", "/v1/execute", {"input": {"op": "pid"}}).json() == {"output": pid}
    assert heard(w)["counts"] == {"loaded": 1}


@pytest.mark.parametrize(
    "events, message",
    [
        ("Loaded", "event name 'Loaded'"),
        ("task-failed", "event name 'task-failed'"),
        ("loaded,plugin_loaded", "event 'plugin_loaded' is declared twice"),
    ],
)
def test_bad_event_declarations_stop_the_worker_at_start(tmp_path, events, message):
    env = dict(os.environ, PLUGVISOR_TOKEN="t", SVC_EVENTS=events)
    r = subprocess.run(
        [sys.executable, plugin_script("svc"), "--listen", f"unix:{tmp_path / 'w.sock'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert "the plugin's events: " + message in r.stderr, r.stderr
    assert not (tmp_path / "w.sock").exists()


# ----------------------------------------------------------------------------- own


def test_a_worker_never_answers_worker_crashed_as_its_own(svc):
    w = svc()
    answer = w.request("POST", "/v1/execute", {"input": {"op": "raise_crashed"}})
    assert answer.status == 500
    assert answer.json() == {
        "error": {"kind": "plugin_failed", "message": "worker crashed: worker other (pid 4242) exited with code 3"}
    }
    # In a stream: before the first item an ordinary answer, after it the error frame.
    answer = w.request("POST", "/v1/execute_stream", {"input": {"n": 3, "crashed_at": 0}})
    assert (answer.status, answer.json()["error"]["kind"]) == (500, "plugin_failed")
    answer = w.request("POST", "/v1/execute_stream", {"input": {"n": 3, "crashed_at": 1}})
    assert answer.status == 200
    assert answer.frames() == [
        {"item": {"i": 0, "from": "svc"}},
        {"error": {"kind": "plugin_failed", "message": "worker crashed: worker other (pid 4242) exited with code 3"}},
    ]
    health = w.request("GET", "/v1/health").json()
    assert health["status"] == "ok"
