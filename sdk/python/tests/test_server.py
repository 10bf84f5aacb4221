"""The server in-process: states a worker process passes through too briefly to catch."""

from __future__ import annotations

import asyncio
import threading

import pytest

import plugvisor
from conftest import Raw
from plugvisor._calls import Runner
from plugvisor._server import ServeOptions, Server, StartError, route_params


class Echo(plugvisor.Plugin):
    name = "echo"
    version = "0.0.1"

    def execute(self, input):
        return input


@pytest.fixture
def served(tmp_path):
    loop = asyncio.new_event_loop()
    runner = Runner(loop, 2)
    server = Server(Echo(), ServeOptions("t"), runner)
    path = loop.run_until_complete(server.listen_unix(str(tmp_path / "s.sock")))
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    thread.start()
    yield server, path, loop
    loop.call_soon_threadsafe(server.begin_shutdown, "test over")
    loop.call_soon_threadsafe(server.wake)  # also when a test set `stopping` by hand
    thread.join(5)
    runner.close()


def test_once_stopping_calls_get_503_and_health_says_stopping(served):
    server, path, loop = served
    routes = ("/v1/execute", "/v1/execute_stream", "/v1/initialize", "/v1/methods/x", "/v1/plugin_health")
    # Connections already open when shutdown begins (new ones cannot come: the listener closes).
    conns = [Raw(path, "t") for _ in range(len(routes) + 2)]
    assert conns[0].request("POST", "/v1/execute", {"input": 1}).json() == {"output": 1}
    loop.call_soon_threadsafe(setattr, server, "stopping", True)
    for c, route in zip(conns[1:], routes):
        a = c.request("POST", route, {"input": 1} if "exec" in route or "meth" in route else {})
        assert (a.status, a.json()["error"]) == (
            503,
            {"kind": "unavailable", "message": "the worker is shutting down"},
        ), route
        assert a.headers["connection"] == "close"
    assert conns[-1].request("GET", "/v1/health").json()["status"] == "stopping"
    assert conns[0].request("POST", "/v1/cleanup").json() == {"status": "cleaned"}, "not refused"


def test_bad_method_declarations_stop_the_start():
    class Bad(Echo):
        @plugvisor.method("Upper")
        def upper(self, input):
            return input

    class Reserved(Echo):
        @plugvisor.method
        def execute(self, input):  # noqa: D102 - the seed call's name
            return input

    class Twice(Echo):
        @plugvisor.method("x")
        def a(self, input):
            return input

        @plugvisor.method("x")
        def b(self, input):
            return input

    loop = asyncio.new_event_loop()
    runner = Runner(loop, 1)
    for plugin, fragment in ((Bad(), "use 1-64"), (Reserved(), "reserved"), (Twice(), "declared twice")):
        with pytest.raises(StartError) as caught:
            Server(plugin, ServeOptions("t"), runner)
        assert fragment in str(caught.value)
    with pytest.raises(StartError):
        Server(Echo(), ServeOptions(""), runner)
    runner.close()


def test_route_patterns():
    assert route_params("/hello", "/hello") == {}
    assert route_params("/items/{id}", "/items/42") == {"id": "42"}
    assert route_params("/items/{id}", "/items/") is None
    assert route_params("/files/{*rest}", "/files/a/b.txt") == {"rest": "a/b.txt"}
    assert route_params("/files/{*rest}", "/files") == {"rest": ""}
    assert route_params("/hello", "/hello/x") is None
    assert route_params("/a/{x}/c", "/a/b/d") is None


def test_declarations_follow_definition_order_and_overrides():
    class Base(Echo):
        @plugvisor.route("GET", "/one")
        def one(self, request):
            return 1

        @plugvisor.method
        def first(self, input):
            return 1

    class Child(Base):
        @plugvisor.route("POST", "/two")
        @plugvisor.route("GET", "/two")
        def two(self, request):
            return 2

        def first(self, input):  # an override without the decorator is no method any more
            return 0

        @plugvisor.method(summary="Second")
        def second(self, input):
            return 2

    from plugvisor._plugin import declared_methods, declared_routes

    plugin = Child()
    assert [(s.method, s.path) for s, _ in declared_routes(plugin)] == [("GET", "/one"), ("POST", "/two"), ("GET", "/two")]
    assert [s.name for s, _ in declared_methods(plugin)] == ["second"]
    assert declared_methods(plugin)[0][0].summary == "Second"


def test_the_default_config_comes_from_the_schema():
    class Configured(Echo):
        config_schema = {
            "type": "object",
            "properties": {"mode": {"type": "string", "default": "a"}, "n": {"type": "integer"}},
        }

    p = Configured()
    assert p.get_current_config() == {"mode": "a"}
    p.initialize({"n": 2})
    assert p.get_current_config() == {"mode": "a", "n": 2}
    p.initialize(None)
    assert p.get_current_config() == {"mode": "a"}


def test_a_plugin_without_execute_cannot_be_made():
    class Nothing(plugvisor.Plugin):
        name = "n"
        version = "0"

    with pytest.raises(TypeError):
        Nothing()  # type: ignore[abstract]


def test_call_context_outside_a_call_is_never_cancelled():
    call = plugvisor.current_call()
    assert not call.cancelled and not plugvisor.cancelled()
    call.raise_if_cancelled()
    assert call.wait(0) is False
