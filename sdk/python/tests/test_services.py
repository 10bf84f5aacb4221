"""Host service calls and host events of Python plugins, with the real Rust host (`plugvisor
serve` and its REST API): a Python plugin calls the bundled Rust `pricing` service from sync and
async code; an unlisted service is `forbidden` while listed ones work; a Python provider serves
the Rust `chaos` worker and a Python consumer; a cycle between two Python plugins ends with
`call_cycle` while the same call outside the chain works; a provider's crash reaches the Python
caller as `WorkerCrashed` and the caller keeps its pid (re-raised, it is the caller's
`plugin_failed`); a Python subscriber hears plugins load and unload, and a raising one is
counted `failed` while it keeps serving."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import alive, plugin_script, plugvisor_bin, wait_for
from test_host import Serve

SVC = plugin_script("svc")


def py_manifest(directory: Path, name: str, extra: str = "", env: Optional[Dict[str, str]] = None) -> None:
    """A manifest running tests/plugins/svc.py as plugin `name`."""
    env = dict(env or {}, SVC_NAME=name)
    env_line = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\nversion = "0.1.0"\n'
        f"command = {json.dumps(sys.executable)}\nargs = [{json.dumps(SVC)}]\n"
        f"env = {{ {env_line} }}\n{extra}\n"
    )


def rust_manifest(directory: Path, name: str, worker: str, extra: str = "") -> None:
    """A manifest running a bundled Rust worker (a bare name: found beside plugvisor)."""
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\nversion = "0.1.0"\ncommand = "{worker}-worker"\n{extra}\n'
    )


NAMES = ["pricing", "consumer", "pyprov", "chaos", "a", "b", "victim", "listener", "failer", "extra"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    for worker in ("pricing-worker", "chaos-worker"):
        if not (plugvisor_bin().parent / worker).is_file():
            pytest.fail(f"no {worker} beside plugvisor: cargo build -p plugvisor-cli -p plugvisor-plugins --bins")
    tmp = tmp_path_factory.mktemp("services")
    d = tmp / "manifests"
    d.mkdir()
    rust_manifest(d, "pricing", "pricing", 'provides = ["pricing"]')
    py_manifest(d, "consumer", 'requires = ["pricing", "pyecho", "victim"]')
    py_manifest(d, "pyprov", 'provides = ["pyecho"]')
    rust_manifest(d, "chaos", "chaos", 'requires = ["pyecho"]')
    py_manifest(d, "a", 'provides = ["sa"]\noptional_requires = ["sb"]')
    py_manifest(d, "b", 'provides = ["sb"]\noptional_requires = ["sa"]')
    py_manifest(d, "victim", 'provides = ["victim"]\n[supervision]\nbackoff_initial_ms = 20')
    py_manifest(
        d,
        "listener",
        'hooks = ["plugin_loaded", "plugin_unloaded"]',
        {"SVC_EVENTS": "plugin_loaded,plugin_unloaded"},
    )
    py_manifest(
        d,
        "failer",
        'hooks = ["loaded"]',
        {"SVC_EVENTS": "loaded", "SVC_EVENT_MODE": "raise", "SVC_ASYNC_EVENTS": "1"},
    )
    py_manifest(d, "extra")
    server = Serve([d], tmp)
    seen: List[int] = []
    server.seen_pids = seen  # type: ignore[attr-defined]
    try:
        for name in NAMES:
            info = server.plugin(name)
            assert info["state"] == "ready", info
            seen.append(info["pid"])
        yield server
        for name in NAMES:
            pid = server.plugin(name).get("pid")
            if pid:
                seen.append(pid)
    finally:
        server.stop()
    assert wait_for(lambda: not any(alive(p) for p in seen), 5), "every worker is gone"
    leftovers = [p for p in server.run_dir.rglob("*") if p.is_file() or p.is_socket()]
    assert not leftovers, f"serve left files behind (the service endpoint's socket too): {leftovers[:5]}"


def execute(server: Serve, plugin: str, input: Any, method: Optional[str] = None) -> Any:
    """The plugin's output over REST (the call must succeed)."""
    body: Dict[str, Any] = {"plugin_id": plugin, "input": input}
    if method is not None:
        body["method"] = method
    status, answer = server.json("POST", "/api/plugins/execute", body)
    assert status == 200, (plugin, input, answer)
    return answer["output"]


def failure(server: Serve, plugin: str, input: Any, method: Optional[str] = None) -> Any:
    body: Dict[str, Any] = {"plugin_id": plugin, "input": input}
    if method is not None:
        body["method"] = method
    status, answer = server.json("POST", "/api/plugins/execute", body)
    assert status != 200, answer
    return status, answer["error"]


def frames(server: Serve, plugin: str, input: Any) -> List[Any]:
    status, _, body = server.request(
        "POST", "/api/plugins/execute_stream", {"plugin_id": plugin, "input": input}
    )
    assert status == 200, body
    return [json.loads(line) for line in body.decode().splitlines()]


def call(service: str, input: Any, **extra: Any) -> Dict[str, Any]:
    return dict({"op": "call", "service": service, "input": input}, **extra)


# ----------------------------------------------------------------------------- services


def test_a_python_plugin_calls_the_rust_pricing_service_from_sync_and_async_code(svc):
    bread = {"sku": "bread", "qty": 2, "unit_cents": 250, "total_cents": 500}
    # Plain execute, on a plugin thread: blocking host().call.
    assert execute(svc, "consumer", call("pricing", {"sku": "bread", "qty": 2})) == {"output": bread}
    # async def, in a task of its own: await host().acall.
    got = execute(svc, "consumer", {"service": "pricing", "input": {"sku": "bread", "qty": 2}}, "acall")
    assert got == {"output": bread}
    # A thread the plugin starts with the call's context.
    assert execute(svc, "consumer", dict(call("pricing", {"sku": "bread", "qty": 2}), op="thread_call")) == {
        "output": bread
    }
    # The provider's own error keeps its kind and class; so does an unknown method.
    got = execute(svc, "consumer", call("pricing", {"sku": "caviar"}))
    assert (got["inner_error"]["kind"], got["inner_error"]["type"]) == ("invalid_input", "InvalidInput")
    assert "unknown sku" in got["inner_error"]["message"]
    got = execute(svc, "consumer", call("pricing", {"sku": "tea"}, method="quote"))
    assert got["inner_error"]["kind"] == "invalid_input", got
    # Streams (the default stream of a Rust plugin: execute's result as the one item).
    tea = {"sku": "tea", "qty": 1, "unit_cents": 390, "total_cents": 390}
    got = execute(svc, "consumer", {"op": "stream", "service": "pricing", "input": {"sku": "tea"}})
    assert got == {"items": [tea]}
    assert execute(svc, "consumer", {"service": "pricing", "input": {"sku": "tea"}}, "astream") == {"items": [tea]}
    # The lookup, both ways.
    info = {"service": "pricing", "provider": "pricing", "required": True}
    assert execute(svc, "consumer", {"op": "service", "service": "pricing"}) == info
    assert execute(svc, "consumer", {"service": "pricing"}, "aservice") == info


def test_the_host_token_is_read_and_removed_and_plugins_without_requires_get_no_endpoint(svc):
    env = execute(svc, "consumer", {"op": "env"})
    assert env["addr"] and env["addr"].endswith(".sock"), env
    assert (env["token_in_environ"], env["child_sees_token"]) == (False, False), env
    got = execute(svc, "extra", {"op": "no_host"})["inner_error"]
    assert (got["kind"], got["type"]) == ("unavailable", "Unavailable")
    assert "requires or optional_requires" in got["message"], got


def test_a_service_the_manifest_does_not_list_is_forbidden(svc):
    # "sa" is provided (by a), but consumer does not list it.
    for got in (
        execute(svc, "consumer", call("sa", {"op": "echo"})),
        execute(svc, "consumer", {"service": "sa", "input": {"op": "echo"}}, "acall"),
        execute(svc, "consumer", {"op": "service", "service": "sa"}),
        execute(svc, "consumer", {"op": "stream", "service": "sa", "input": {}}),
    ):
        err = got["inner_error"]
        assert (err["kind"], err["type"]) == ("forbidden", "Forbidden"), got
        assert "may not call service \"sa\"" in err["message"]
    # Raised on, it is the consumer's answer (403 forbidden) and nothing worse.
    status, err = failure(svc, "consumer", dict(call("sa", {"op": "echo"}), op="raise_call"))
    assert (status, err["kind"]) == (403, "forbidden"), err
    # Positive controls: the listed service works for the same plugin, and b, which lists sa,
    # is served by a.
    assert execute(svc, "consumer", call("pricing", {"sku": "tea"}))["output"]["unit_cents"] == 390
    assert execute(svc, "b", call("sa", {"op": "echo", "value": 1}))["output"]["served_by"] == "a"


def test_a_python_provider_serves_the_rust_chaos_worker_and_a_python_consumer(svc):
    # The Rust runtime's client calling a Python worker through the host; the host's call
    # context reaches the provider's Call.context.
    got = execute(svc, "chaos", {"fault": "call_service", "service": "pyecho", "input": {"op": "echo", "value": "hi"}})
    out = got["output"]
    assert (out["served_by"], out["value"]) == ("pyprov", "hi"), got
    assert re.fullmatch(r"[0-9a-f]{16}", out["context"] or ""), out
    got = execute(svc, "chaos", {"fault": "call_service", "service": "pyecho", "input": "hi", "method": "shout"})
    assert got["output"] == "HI!", got
    got = execute(
        svc, "chaos", {"fault": "call_service", "service": "pyecho", "input": {"n": 3}, "stream": True}
    )
    assert got["output"] == [{"i": i, "from": "pyprov"} for i in range(3)], got
    got = execute(
        svc, "chaos", {"fault": "call_service", "service": "pyecho", "input": {"n": 3, "fail_at": 1}, "stream": True}
    )
    assert got["output"] == [{"i": 0, "from": "pyprov"}], got
    assert got["inner_error"] == {"kind": "invalid_input", "message": "failed at item 1"}, got

    # A Python consumer, sync and async, calls, a named method, streams.
    got = execute(svc, "consumer", call("pyecho", {"op": "echo", "value": [1, 2]}))
    assert (got["output"]["served_by"], got["output"]["value"]) == ("pyprov", [1, 2]), got
    assert execute(svc, "consumer", {"service": "pyecho", "input": "hey", "method": "shout"}, "acall") == {
        "output": "HEY!"
    }
    items = [{"i": i, "from": "pyprov"} for i in range(4)]
    assert execute(svc, "consumer", {"op": "stream", "service": "pyecho", "input": {"n": 4}}) == {"items": items}
    assert execute(svc, "consumer", {"service": "pyecho", "input": {"n": 4}}, "astream") == {"items": items}
    # An error frame is raised, typed, after the items before it.
    got = execute(svc, "consumer", {"op": "stream", "service": "pyecho", "input": {"n": 4, "fail_at": 2}})
    assert got["items"] == items[:2], got
    assert got["inner_error"] == {"kind": "invalid_input", "message": "failed at item 2", "type": "InvalidInput"}
    got = execute(svc, "consumer", {"service": "pyecho", "input": {"n": 4, "fail_at": 2}}, "astream")
    assert (got["items"], got["inner_error"]["type"]) == (items[:2], "InvalidInput"), got


def test_a_cycle_between_two_python_plugins_ends_with_call_cycle(svc):
    back = {"op": "echo", "value": "back"}

    def cycle_error(got: Any) -> Dict[str, Any]:
        err = got["output"]["inner_error"]
        assert (err["kind"], err["type"]) == ("call_cycle", "CallCycle"), got
        assert "a -> b -> a" in err["message"], err
        return err

    # a → b → a from plain execute, from a thread with the call's context, from async tasks.
    cycle_error(execute(svc, "a", call("sb", call("sa", back))))
    cycle_error(execute(svc, "a", call("sb", dict(call("sa", back), op="thread_call"), op="thread_call")))
    cycle_error(
        execute(svc, "a", {"service": "sb", "method": "acall", "input": {"service": "sa", "input": back}}, "acall")
    )
    # From plain generators (a stream relayed from a stream, each on a plugin thread): b's
    # stream fails before its first item, so a's does too, an ordinary 508 answer.
    status, _, body = svc.request(
        "POST",
        "/api/plugins/execute_stream",
        {"plugin_id": "a", "input": {"op": "relay", "service": "sb", "input": {"op": "relay", "service": "sa"}}},
    )
    err = json.loads(body)["error"]
    assert (status, err["kind"]) == (508, "call_cycle") and "a -> b -> a" in err["message"], body

    # The control: the same call of a from b, outside a's chain, is served (sync and async).
    assert execute(svc, "b", call("sa", back))["output"]["value"] == "back"
    assert execute(svc, "b", {"service": "sa", "input": back}, "acall")["output"]["value"] == "back"
    got = frames(svc, "b", {"op": "relay", "service": "sa", "input": {"n": 2}})
    assert got == [{"item": {"i": 0, "from": "a"}}, {"item": {"i": 1, "from": "a"}}, {"end": {"count": 2}}]


def test_a_provider_crash_reaches_the_python_caller_which_keeps_its_pid(svc):
    consumer = svc.plugin("consumer")
    victim_pid = svc.plugin("victim")["pid"]

    got = execute(svc, "consumer", call("victim", {"op": "crash"}))
    err = got["inner_error"]
    assert (err["kind"], err["type"]) == ("worker_crashed", "WorkerCrashed"), got
    crash = err["crash"]
    assert (crash["plugin"], crash["pid"], crash["exit"], crash["cause"]) == ("victim", victim_pid, {"code": 7}, "exit")
    assert wait_for(lambda: not alive(victim_pid), 3)
    after = svc.plugin("consumer")
    assert (after["pid"], after["restarts"], after["state"]) == (consumer["pid"], consumer["restarts"], "ready")

    # Raised on by plain or async code, it is the consumer's own failure: plugin_failed (the
    # host must not take the live consumer for dead), and the consumer keeps its pid.
    for input, method in (
        (dict(call("victim", {"op": "crash"}), op="raise_call"), None),
        ({"service": "victim", "input": {"op": "crash"}, "raise": True}, "acall"),
    ):
        status, err = failure(svc, "consumer", input, method)
        assert (status, err["kind"]) == (500, "plugin_failed"), err
        assert err["message"].startswith("worker crashed: worker victim (pid "), err
        assert "crash" not in err
    # The same for a stream's error frame passed on by the consumer's own stream.
    got = frames(svc, "consumer", {"op": "relay", "service": "victim", "input": {"n": 5, "crash_at": 2}})
    assert got[:2] == [{"item": {"i": i, "from": "victim"}} for i in range(2)], got
    last = got[-1]
    assert len(got) == 3 and last["error"]["kind"] == "plugin_failed", got
    assert last["error"]["message"].startswith("worker crashed: worker victim (pid "), last
    after = svc.plugin("consumer")
    assert (after["pid"], after["restarts"], after["state"]) == (consumer["pid"], consumer["restarts"], "ready")
    assert alive(consumer["pid"])

    # The victim restarts; the next call through the host is served by a new worker.
    got = execute(svc, "consumer", call("victim", {"op": "echo"}))
    assert got["output"]["served_by"] == "victim" and got["output"]["pid"] != victim_pid, got
    # A nested call's own deadline.
    got = execute(svc, "consumer", call("victim", {"op": "sleep", "secs": 3}, timeout_ms=200))
    assert (got["inner_error"]["kind"], got["inner_error"]["type"]) == ("timed_out", "TimedOut"), got


# ----------------------------------------------------------------------------- events


def heard(server: Serve, name: str) -> Dict[str, Any]:
    return execute(server, name, None, "heard")  # type: ignore[no-any-return]


def cycle_extra(server: Serve) -> None:
    """Unloads and loads `extra` again (two events: unloaded, loaded)."""
    status, body = server.json("POST", "/api/plugins/extra/unload", {})
    assert status == 200, body
    status, body = server.json("POST", "/api/plugins/load", {"plugin_id": "extra"})
    assert status == 200, body


def test_a_python_subscriber_hears_plugins_load_and_unload(svc):
    listener = svc.plugin("listener")
    assert listener["hooks"]["subscribed"] == ["loaded", "unloaded"], listener
    before = heard(svc, "listener")
    assert ("loaded", "listener") in [(e["event"], e["plugin"]) for e in before["events"]], before
    cycle_extra(svc)
    wanted = before["counts"].get("loaded", 0) + 1

    def got() -> Any:
        now = heard(svc, "listener")
        return now if now["counts"].get("loaded") == wanted else None

    now = wait_for(got, 10)
    assert now, heard(svc, "listener")
    newest = [(e["event"], e["plugin"]) for e in now["events"][:2]]
    assert newest == [("loaded", "extra"), ("unloaded", "extra")], now["events"][:3]
    loaded, unloaded = now["events"][0], now["events"][1]
    assert loaded["details"] == {"version": "0.1.0"} and unloaded["details"] == {}
    assert loaded["at_ms"] >= unloaded["at_ms"] > 1_700_000_000_000
    info = wait_for(lambda: (lambda i: i if i["hooks"]["delivered"] == len(now["events"]) else None)(svc.plugin("listener")), 5)
    assert info, svc.plugin("listener")
    assert (info["hooks"]["failed"], info["pid"], info["restarts"]) == (0, listener["pid"], 0), info


def test_a_raising_python_subscriber_is_counted_failed_and_keeps_serving(svc):
    failer = svc.plugin("failer")
    failed = failer["hooks"]["failed"]
    assert failer["hooks"]["delivered"] == 0, failer
    cycle_extra(svc)  # failer hears only `loaded`: one more failed delivery
    info = wait_for(lambda: (lambda i: i if i["hooks"]["failed"] == failed + 1 else None)(svc.plugin("failer")), 10)
    assert info, svc.plugin("failer")
    assert (info["hooks"]["delivered"], info["pid"], info["restarts"], info["state"]) == (
        0,
        failer["pid"],
        0,
        "ready",
    ), info
    # It did hear the event (on_event ran, then raised), and it keeps serving calls.
    assert heard(svc, "failer")["events"][0]["plugin"] == "extra"
    assert execute(svc, "failer", {"op": "pid"}) == failer["pid"]
    assert any("will not hear of loaded" in line for line in svc.log), "the failure is logged"
