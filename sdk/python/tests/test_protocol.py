"""The worker protocol spoken by a Python worker, byte by byte, without the host (PROTOCOL.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Raw, alive, children, plugin_script, wait_for


# ----------------------------------------------------------------------------- §3 handshake


def test_handshake_is_the_only_stdout_line_and_prints_go_to_stderr(kitchen):
    assert kitchen.handshake.startswith("plugvisor 1 unix /")
    assert kitchen.handshake.split()[3] == kitchen.address
    assert kitchen.request("POST", "/v1/execute", {"input": {"op": "print"}}).json() == {"output": "printed"}
    assert kitchen.request("POST", "/v1/shutdown").status == 202
    assert kitchen.proc.wait(5) == 0
    wait_for(lambda: "this goes to stderr" in kitchen.stderr())
    assert "this goes to stderr, not stdout" in kitchen.stderr()
    assert kitchen.stdout_rest == [], "nothing but the handshake line on stdout"
    assert not os.path.exists(kitchen.address), "the socket file is removed"


def test_tcp_handshake_names_the_real_port(worker_factory):
    w = worker_factory("kitchen", tcp=True)
    host, port = w.handshake.split()[3].rsplit(":", 1)
    assert w.handshake.startswith("plugvisor 1 tcp 127.0.0.1:") and port != "0"
    assert w.request("GET", "/v1/health").json()["status"] == "ok"


def test_socket_file_is_private(kitchen):
    assert os.stat(kitchen.address).st_mode & 0o777 == 0o600


# ----------------------------------------------------------------------------- §4 auth


def test_every_route_needs_the_exact_bearer_token(kitchen):
    for token in (None, "wrong", kitchen.token + "x"):
        c = kitchen.conn(token=token)
        a = c.request("GET", "/v1/health", auth=token is not None)
        assert a.status == 401
        assert a.headers["www-authenticate"] == "Bearer"
        assert a.json()["error"]["kind"] == "unauthorized"
        c.close()
    c = kitchen.conn()
    c.send("GET", "/v1/nope", headers={"authorization": f"bearer {kitchen.token}"}, auth=False)
    assert c.answer().status == 401, "auth comes before routing; the scheme is compared exactly"


# ----------------------------------------------------------------------------- §5, §7 routes


def test_health_info_config_and_schema(kitchen):
    health = kitchen.request("GET", "/v1/health").json()
    assert health == {"status": "ok", "in_flight": 0, "calls_total": 0, "pid": kitchen.proc.pid}
    info = kitchen.request("GET", "/v1/info").json()
    assert info["name"] == "kitchen" and info["version"] == "1.2.3" and info["protocol"] == 1
    assert info["capabilities"] == [
        "execute", "stream", "files", "routes", "methods", "health_check", "file_transfer", "streamed_upload"
    ]
    assert info["config_schema"]["properties"]["mode"]["enum"] == ["plain", "upper"]
    assert info["methods"] == [
        {"name": "shout", "summary": "Upper-cases a string with a bang", "input_schema": {"type": "string"}},
        {"name": "re-verse", "summary": "Reverses a string."},
    ]
    assert {"method": "GET", "path": "/hello", "summary": "A greeting"} in info["routes"]
    assert "hooks" not in info
    assert kitchen.request("GET", "/v1/config").json() == {"config": {"mode": "plain", "suffix": ""}}
    schema = kitchen.request("GET", "/v1/config_schema").json()["schema"]
    assert schema["additionalProperties"] is False


def test_initialize_keeps_defaults_for_missing_keys_and_empty_bodies(kitchen):
    a = kitchen.request("POST", "/v1/initialize", {"config": {"mode": "upper"}})
    assert a.json() == {"config": {"mode": "upper", "suffix": ""}}
    assert kitchen.request("POST", "/v1/execute", {"input": "hi"}).json() == {"output": "HI"}
    assert kitchen.request("POST", "/v1/initialize", b"").json() == {"config": {"mode": "plain", "suffix": ""}}
    assert kitchen.request("POST", "/v1/initialize", {"config": None}).json()["config"]["mode"] == "plain"


def test_unknown_paths_and_wrong_methods(kitchen):
    a = kitchen.request("GET", "/v1/nope")
    assert (a.status, a.json()["error"]["kind"]) == (404, "not_found")
    assert a.json()["error"]["message"] == "no route /v1/nope"
    a = kitchen.request("GET", "/v1/execute")
    assert (a.status, a.headers["allow"]) == (405, "POST")
    assert a.json()["error"]["kind"] == "method_not_allowed"
    a = kitchen.request("POST", "/v1/health")
    assert (a.status, a.headers["allow"]) == (405, "GET")
    a = kitchen.request("HEAD", "/v1/health")
    assert a.status == 405


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b'{"input": 1, "inptu": 2}', "unknown field `inptu`"),
        (b"{}", "missing field `input`"),
        (b"[1]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"input": NaN}', "NaN"),
        (b'{"input": ', "Expecting value"),
        (b'{"input": "\xff"}', "UTF-8"),
        (b'{"input": {"$file": {"path": "/x"}}}', "malformed file reference"),
        (b'{"input": {"$file": {"path": "/x", "size": 1}, "y": 2}}', "no other keys"),
    ],
)
def test_malformed_bodies_are_400_never_500(kitchen, body, fragment):
    a = kitchen.request("POST", "/v1/execute", body)
    assert a.status == 400, a.body
    assert a.json()["error"]["kind"] == "bad_request"
    assert fragment in a.json()["error"]["message"]


def test_keep_alive_serves_many_requests_on_one_connection(kitchen):
    c = kitchen.conn()
    for i in range(20):
        assert c.request("POST", "/v1/execute", {"input": i}).json() == {"output": i}
        assert c.request("GET", "/v1/health").status == 200
    assert kitchen.request("GET", "/v1/health").json()["calls_total"] == 20


def test_chunked_request_bodies_are_read(kitchen):
    c = kitchen.conn()
    body = json.dumps({"input": "x" * 10000}).encode()
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:5000], body[5000:]))
    c.send("POST", "/v1/execute", chunks + b"0\r\nx-trailer: 1\r\n\r\n", headers={"transfer-encoding": "chunked"})
    assert c.answer().json() == {"output": "x" * 10000}
    assert c.request("GET", "/v1/health").status == 200, "the connection is still usable"


def test_expect_100_continue(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute", None, headers={"expect": "100-continue", "content-length": "12"})
    assert c._line() == b"HTTP/1.1 100 Continue"
    assert c._line() == b""
    c.send_raw(b'{"input": 7}')
    assert c.answer().json() == {"output": 7}


def test_413_by_content_length_and_while_reading_chunks(worker_factory):
    w = worker_factory("kitchen", env={"PLUGVISOR_MAX_BODY": "1000"})
    c = w.conn()
    c.send("POST", "/v1/execute", None, headers={"content-length": "1001"})
    a = c.answer()
    assert (a.status, a.json()["error"]["kind"]) == (413, "payload_too_large")
    assert a.headers["connection"] == "close"
    assert c.closed_by_peer()
    c = w.conn()
    c.send("POST", "/v1/execute", b"400\r\n" + b" " * 1024 + b"\r\n", headers={"transfer-encoding": "chunked"})
    a = c.answer()
    assert a.status == 413 and a.headers["connection"] == "close"
    assert w.request("POST", "/v1/execute", {"input": "x" * 900}).status == 200


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"hello\r\n\r\n", 400),
        (b"GET /v1/health HTTP/2.0\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nx : y\r\n\r\n", 400),
        (b"POST /v1/execute HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"POST /v1/execute HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n", 400),
        (b"POST /v1/execute HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\n" + b"x-a: b\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_bytes_that_are_not_http_get_a_bare_status_and_close(kitchen, raw, status):
    c = kitchen.conn()
    c.send_raw(raw)
    a = c.answer()
    assert a.status == status and a.body == b""
    assert c.closed_by_peer()
    assert kitchen.request("GET", "/v1/health").status == 200


def test_bad_chunk_framing_is_a_400_and_close(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute", b"zz\r\n", headers={"transfer-encoding": "chunked"})
    a = c.answer()
    assert a.status == 400 and a.json()["error"]["kind"] == "bad_request"
    assert c.closed_by_peer()


def test_an_early_answer_with_an_unread_body_closes_the_connection(kitchen):
    c = kitchen.conn(token="wrong")
    c.send("POST", "/v1/execute", b'{"input": 1}')
    a = c.answer()
    assert a.status == 401 and a.headers["connection"] == "close"
    assert c.closed_by_peer()


# ----------------------------------------------------------------------------- §6 errors


def test_typed_errors_keep_their_kind_and_status(kitchen):
    a = kitchen.request("POST", "/v1/execute", {"input": {"op": "invalid"}})
    assert (a.status, a.json()) == (400, {"error": {"kind": "invalid_input", "message": "value: must be a number"}})
    a = kitchen.request("POST", "/v1/execute", {"input": {"op": "boom"}})
    assert (a.status, a.json()["error"]) == (500, {"kind": "plugin_failed", "message": "the plugin raised ValueError: kaboom"})
    assert "Traceback" in kitchen.stderr() or wait_for(lambda: "Traceback" in kitchen.stderr())
    a = kitchen.request("POST", "/v1/execute", {"input": {"op": "unencodable"}})
    assert a.status == 500 and "could not be serialized" in a.json()["error"]["message"]
    assert kitchen.request("POST", "/v1/execute", {"input": 1}).status == 200, "still serving"


def test_sys_exit_in_plugin_code_ends_the_process_with_its_status(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute", json.dumps({"input": {"op": "sysexit", "code": 7}}).encode())
    assert kitchen.proc.wait(5) == 7
    assert c.closed_by_peer()


# ----------------------------------------------------------------------------- §8 streams


def test_streams_end_with_exactly_one_terminal_frame(kitchen):
    a = kitchen.request("POST", "/v1/execute_stream", {"input": {"n": 3}})
    assert a.status == 200 and a.headers["content-type"] == "application/x-ndjson"
    assert a.headers["transfer-encoding"] == "chunked"
    assert a.frames() == [{"item": {"i": i, "pad": ""}} for i in range(3)] + [{"end": {"count": 3}}]
    a = kitchen.request("POST", "/v1/execute_stream", {"input": {"n": 0}})
    assert a.frames() == [{"end": {"count": 0}}]


def test_many_items_are_batched_and_all_arrive(kitchen):
    a = kitchen.request("POST", "/v1/execute_stream", {"input": {"n": 50000, "pad": "y" * 20}})
    frames = a.frames()
    assert len(frames) == 50001 and frames[-1] == {"end": {"count": 50000}}
    assert frames[49999]["item"]["i"] == 49999


def test_stream_errors_before_and_after_the_first_item(kitchen):
    a = kitchen.request("POST", "/v1/execute_stream", {"input": {"n": -1}})
    assert (a.status, a.json()["error"]["kind"]) == (400, "invalid_input")
    a = kitchen.request("POST", "/v1/execute_stream", {"input": {"n": 5, "fail_at": 2}})
    assert a.status == 200
    assert a.frames()[-1] == {"error": {"kind": "plugin_failed", "message": "failed at item 2"}}
    assert len(a.frames()) == 3


def test_default_stream_is_one_item_from_execute(worker_factory):
    w = worker_factory("pyguard")
    assert w.request("POST", "/v1/execute_stream", {"input": [1]}).frames() == [
        {"item": [1]},
        {"end": {"count": 1}},
    ]


def test_async_plugins_call_stream_and_methods(worker_factory):
    w = worker_factory("asyncy")
    assert w.request("POST", "/v1/initialize", {"config": {"a": 1}}).json() == {"config": {"a": 1}}
    assert w.request("POST", "/v1/execute", {"input": 5}).json() == {"output": {"async": 5}}
    a = w.request("POST", "/v1/execute", {"input": {"op": "invalid"}})
    assert a.status == 400
    assert w.request("POST", "/v1/execute_stream", {"input": {"n": 4}}).frames()[-1] == {"end": {"count": 4}}
    assert w.request("POST", "/v1/methods/double", {"input": 21}).json() == {"output": 42}
    assert w.request("POST", "/v1/plugin_health").json() == {
        "status": "pass",
        "checks": {"loop:ok": [{"status": "pass"}]},
    }


# ----------------------------------------------------------------------------- lanes, §9


def _in_background(fn):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", fn()), daemon=True)
    t.start()
    return t, result


@pytest.mark.parametrize("script, op", [("kitchen", "busy"), ("asyncy", "hog")])
def test_health_answers_while_plugin_code_blocks(worker_factory, script, op):
    w = worker_factory(script)
    t, result = _in_background(lambda: w.request("POST", "/v1/execute", {"input": {"op": op, "secs": 1.5}}))
    assert wait_for(lambda: w.request("GET", "/v1/health").json()["in_flight"] == 1)
    started = time.monotonic()
    for _ in range(5):
        assert w.request("GET", "/v1/health").status == 200
        assert w.request("GET", "/v1/info").status == 200
    assert time.monotonic() - started < 0.5, "health and info never wait for plugin code"
    t.join(5)
    assert result["v"].status == 200


def test_closing_the_connection_cancels_a_sync_call(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute", json.dumps({"input": {"op": "block"}}).encode())
    assert wait_for(lambda: (kitchen.markers / "blocking").exists()), "the plugin runs"
    assert kitchen.request("GET", "/v1/health").json()["in_flight"] == 1
    c.close()
    assert wait_for(lambda: (kitchen.markers / "cancelled").exists()), "the plugin saw the cancellation"
    assert kitchen.request("GET", "/v1/health").json()["in_flight"] == 0


def test_closing_the_connection_cancels_async_calls_and_streams(worker_factory):
    w = worker_factory("asyncy")
    c = w.conn()
    c.send("POST", "/v1/execute", json.dumps({"input": {"op": "sleep", "secs": 30}}).encode())
    assert wait_for(lambda: (w.markers / "sleeping").exists()), "the plugin runs"
    c.close()
    assert wait_for(lambda: (w.markers / "async-cancelled").exists())
    c = w.conn()
    c.send("POST", "/v1/execute_stream", json.dumps({"input": {"n": 1000, "gap": 0.05}}).encode())
    c._line()  # the head has started: the stream runs
    c.close()
    assert wait_for(lambda: (w.markers / "async-stream-cancelled").exists())
    assert (w.markers / "async-stream-closed").exists()
    assert wait_for(lambda: w.request("GET", "/v1/health").json()["in_flight"] == 0)


def test_dropping_a_sync_stream_closes_the_generator(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute_stream", json.dumps({"input": {"n": 1000, "slow": 0.05}}).encode())
    c._line()
    c.close()
    assert wait_for(lambda: (kitchen.markers / "stream-cancelled").exists())
    assert wait_for(lambda: kitchen.request("GET", "/v1/health").json()["in_flight"] == 0)


def test_a_slow_reader_pauses_a_fast_stream_without_losing_items(kitchen):
    c = kitchen.conn()
    c.send("POST", "/v1/execute_stream", json.dumps({"input": {"n": 20000, "pad": "z" * 200}}).encode())
    time.sleep(0.5)  # let the worker fill the socket and pause the producer
    a = c.answer()
    frames = a.frames()
    assert len(frames) == 20001 and frames[-1] == {"end": {"count": 20000}}


# ----------------------------------------------------------------------------- §10 files


def test_file_references_inside_the_transfer_directory_are_read(kitchen):
    (kitchen.transfer / "sub").mkdir()
    data = os.urandom(100_000)
    (kitchen.transfer / "sub" / "in-1").write_bytes(data)
    ref = {"$file": {"path": str(kitchen.transfer / "sub" / "in-1"), "size": len(data)}}
    out = kitchen.request("POST", "/v1/execute", {"input": {"op": "read", "file": ref}}).json()["output"]
    import hashlib

    assert out == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": 100_000,
        "read": 100_000,
        "is_ref": True,
        "media_type": "application/octet-stream",
    }


def test_file_references_outside_through_links_or_odd_are_refused(kitchen, tmp_path):
    t = kitchen.transfer
    (t / "real").write_bytes(b"x")
    (t / "dir").mkdir()
    (t / "dir" / "f").write_bytes(b"x")
    os.symlink(t / "real", t / "link")
    os.symlink(t / "dir", t / "dlink")
    os.symlink("/etc/passwd", t / "escape")
    os.mkfifo(t / "fifo")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    cases = {
        "/etc/passwd": "outside the transfer directory",
        str(outside): "outside the transfer directory",
        str(t) + "x/real": "outside the transfer directory",
        f"{t}/../outside": "'.' or '..'",
        f"{t}/./real": "'.' or '..'",
        "relative/real": "not absolute",
        str(t): "the transfer directory itself",
        str(t / "link"): "symbolic link",
        str(t / "dlink" / "f"): "symbolic link",
        str(t / "escape"): "symbolic link",
        str(t / "missing"): "no such file",
        str(t / "dir"): "a directory",
        str(t / "fifo"): "a FIFO",
    }
    for path, reason in cases.items():
        body = {"input": {"deep": [{"f": {"$file": {"path": path, "size": 1}}}]}}
        a = kitchen.request("POST", "/v1/execute", body)
        assert a.status == 403, (path, a.body)
        err = a.json()["error"]
        assert err["kind"] == "file_access_denied"
        assert err["message"].startswith(f"{path}: ") and reason in err["message"], err
    ok = {"input": {"op": "read", "file": {"$file": {"path": str(t / "dir" / "f"), "size": 1}}}}
    assert kitchen.request("POST", "/v1/execute", ok).status == 200, "positive control"


def test_without_a_transfer_directory_every_reference_is_refused(worker_factory, tmp_path):
    w = worker_factory("kitchen", transfer=False)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    a = w.request("POST", "/v1/execute", {"input": {"$file": {"path": str(f), "size": 1}}})
    assert a.status == 403 and "no transfer directory" in a.json()["error"]["message"]


def test_outputs_are_created_in_the_transfer_directory(kitchen):
    out = kitchen.request("POST", "/v1/execute", {"input": {"op": "write", "text": "hello"}}).json()["output"]
    ref = out["file"]["$file"]
    assert out["nested"][0]["again"] == out["file"]
    assert ref["media_type"] == "text/plain" and ref["size"] == 5
    path = Path(ref["path"])
    assert path.parent == kitchen.transfer and path.name.startswith(f"out-{kitchen.proc.pid}-")
    assert path.name.endswith("-out.txt")
    assert path.read_bytes() == b"hello" and path.stat().st_mode & 0o777 == 0o600
    out = kitchen.request("POST", "/v1/execute", {"input": {"op": "blob", "text": "dto"}}).json()["output"]
    ref = out["file"]["$file"]
    assert Path(ref["path"]).parent == kitchen.transfer, "a FileBackedDTO's temp file is moved in"
    assert Path(ref["path"]).read_bytes() == b"dto" and ref["media_type"] == "text/plain"


def test_outputs_go_to_the_output_dir_when_the_host_names_one(worker_factory, tmp_path):
    out_dir = tmp_path / "xfer" / "out"
    out_dir.mkdir(parents=True)
    w = worker_factory("kitchen", env={"PLUGVISOR_OUTPUT_DIR": str(out_dir)})
    out = w.request("POST", "/v1/execute", {"input": {"op": "write", "text": "o"}}).json()["output"]
    assert Path(out["file"]["$file"]["path"]).parent == out_dir


# ----------------------------------------------------------------------------- extensions


def test_named_methods(kitchen):
    assert kitchen.request("POST", "/v1/methods/shout", {"input": "hi"}).json() == {"output": "HI!"}
    assert kitchen.request("POST", "/v1/methods/re-verse", {"input": "abc"}).json() == {"output": "cba"}
    a = kitchen.request("POST", "/v1/methods/whisper", {"input": "hi"})
    assert a.status == 404
    assert a.json()["error"]["message"] == 'no method "whisper" (methods: execute, shout, re-verse)'
    a = kitchen.request("GET", "/v1/methods/shout")
    assert (a.status, a.headers["allow"]) == (405, "POST")
    assert kitchen.request("POST", "/v1/methods/shout", {"input": 1}).status == 400
    assert kitchen.request("GET", "/v1/health").json()["calls_total"] == 3


def test_plugin_health_and_its_absence(kitchen, worker_factory):
    assert kitchen.request("POST", "/v1/plugin_health").json() == {"status": "pass"}
    kitchen.request("POST", "/v1/initialize", {"config": {"mode": "upper"}})
    assert kitchen.request("POST", "/v1/plugin_health").json() == {"status": "warn", "output": "shouting"}
    assert kitchen.request("GET", "/v1/health").json()["calls_total"] == 0, "not counted as a call"
    w = worker_factory("pyguard")
    a = w.request("POST", "/v1/plugin_health")
    assert (a.status, a.json()["error"]["kind"]) == (404, "not_found")


def test_plugin_routes(kitchen):
    a = kitchen.request("GET", "/v1/route/hello?who=ann")
    assert a.json() == {"message": "hello from kitchen", "who": "ann"}
    a = kitchen.request("POST", "/v1/route/echo", b"raw bytes", headers={"content-type": "text/x"})
    assert (a.status, a.body, a.headers["content-type"], a.headers["x-kitchen"]) == (201, b"raw bytes", "text/x", "9")
    assert kitchen.request("GET", "/v1/route/items/42").json() == {"id": "42", "forwarded": False}
    assert kitchen.request("GET", "/v1/route/files/a/b.txt").body == b"a/b.txt"
    a = kitchen.request("GET", "/v1/route/sse?n=2")
    assert a.headers["content-type"] == "text/event-stream"
    assert a.body == b"data: tick 1\n\ndata: tick 2\n\n"
    a = kitchen.request("GET", "/v1/route/nope")
    assert (a.status, a.json()["error"]) == (404, {"kind": "not_found", "message": "no route /nope"})
    a = kitchen.request("DELETE", "/v1/route/hello")
    assert (a.status, a.headers["allow"]) == (405, "GET")
    a = kitchen.request("GET", "/v1/route/fail")
    assert (a.status, a.json()["error"]["kind"]) == (409, "not_initialized")
    assert kitchen.request("GET", "/v1/health").json()["calls_total"] == 6


def test_route_bodies_stream_in_and_answers_stream_out(worker_factory):
    w = worker_factory("asyncy")
    c = w.conn()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [b"a" * 70000] * 30)
    c.send("POST", "/v1/route/count", chunks + b"0\r\n\r\n", headers={"transfer-encoding": "chunked"})
    assert c.answer().json() == {"bytes": 70000 * 30}
    a = c.request("GET", "/v1/route/ticks")
    assert a.body == b"tick 0\ntick 1\ntick 2\n"
    w2 = worker_factory("pyguard")
    assert w2.request("GET", "/v1/route/x").json()["error"]["message"] == "this plugin has no routes"


def test_middleware_hooks(worker_factory, kitchen):
    w = worker_factory("pyguard")
    info = w.request("GET", "/v1/info").json()
    assert info["hooks"] == ["before_request", "after_response"] and "middleware" in info["capabilities"]
    req = {"method": "GET", "path": "/plugins/x/y", "headers": {"x-key": "k1"}}
    assert w.request("POST", "/v1/hooks/before_request", req).json() == {
        "action": "continue",
        "headers": {"x-key": "k1", "x-chain": "pyguard"},
    }
    req["headers"] = {}
    assert w.request("POST", "/v1/hooks/before_request", req).json() == {
        "action": "respond",
        "status": 401,
        "headers": {"content-type": "application/json"},
        "body": {"error": "pyguard: no key"},
        "streamed": False,
    }
    exchange = {"request": req, "response": {"status": 200, "headers": {"a": "b"}, "body": {"k": 1}}}
    assert w.request("POST", "/v1/hooks/after_response", exchange).json() == {
        "status": 200,
        "headers": {"a": "b", "x-guarded-by": "pyguard"},
        "body": {"k": 1},
        "streamed": False,
    }
    assert w.request("POST", "/v1/hooks/before_request", {"path": "/x"}).status == 400
    a = kitchen.request("POST", "/v1/hooks/before_request", req)
    assert (a.status, a.json()["error"]["message"]) == (404, "this plugin serves no before_request hook")


# ----------------------------------------------------------------------------- §11 shutdown


def test_shutdown_refuses_new_calls_drains_then_cleans_up(kitchen):
    busy = kitchen.conn()
    busy.send("POST", "/v1/execute", json.dumps({"input": {"op": "busy", "secs": 0.6}}).encode())
    assert wait_for(lambda: kitchen.request("GET", "/v1/health").json()["in_flight"] == 1)
    other = kitchen.conn()
    assert other.request("GET", "/v1/health").status == 200
    assert kitchen.request("POST", "/v1/shutdown").json() == {"status": "stopping"}
    assert wait_for(lambda: not os.path.exists(kitchen.address), 1), "no new connections"
    assert busy.answer().json() == {"output": "done"}, "the call in flight finishes"
    assert kitchen.proc.wait(5) == 0
    assert (kitchen.markers / "cleanup").exists()


def test_calls_past_the_grace_period_are_dropped(kitchen):
    busy = kitchen.conn()
    busy.send("POST", "/v1/execute", json.dumps({"input": {"op": "block", "secs": 30}}).encode())
    assert wait_for(lambda: (kitchen.markers / "blocking").exists())
    control = kitchen.conn()
    assert control.request("GET", "/v1/health").status == 200
    started = time.monotonic()
    kitchen.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(kitchen.address), 1)
    assert kitchen.proc.wait(5) == 0
    assert 1.5 < time.monotonic() - started < 3.5
    assert busy.closed_by_peer(), "the dropped call's connection is closed without an answer"
    assert wait_for(lambda: (kitchen.markers / "cancelled").exists())
    assert (kitchen.markers / "cleanup").exists()


def test_idle_connections_close_when_shutdown_begins(kitchen):
    busy = kitchen.conn()
    busy.send("POST", "/v1/execute", json.dumps({"input": {"op": "busy", "secs": 1}}).encode())
    assert wait_for(lambda: kitchen.request("GET", "/v1/health").json()["in_flight"] == 1)
    probe = kitchen.conn()
    probe.request("GET", "/v1/health")
    kitchen.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(kitchen.address), 1)
    assert probe.closed_by_peer(), "an idle connection is closed at once"
    a = busy.answer()
    assert a.json() == {"output": "done"} and a.headers["connection"] == "close"
    assert kitchen.proc.wait(5) == 0


def test_stdin_eof_stops_the_worker_and_its_process_group(kitchen):
    grandchild = kitchen.request("POST", "/v1/execute", {"input": {"op": "spawn"}}).json()["output"]
    guardian = [p for p in children(kitchen.proc.pid) if p != grandchild]
    assert alive(grandchild) and len(guardian) == 1
    kitchen.proc.stdin.close()
    assert kitchen.proc.wait(5) == 0
    assert (kitchen.markers / "cleanup").exists()
    assert not alive(guardian[0]), "the guardian is dismissed on a clean exit"


def test_a_dead_worker_takes_its_grandchildren_with_it(kitchen):
    grandchild = kitchen.request("POST", "/v1/execute", {"input": {"op": "spawn"}}).json()["output"]
    kitchen.proc.kill()
    kitchen.proc.wait()
    assert wait_for(lambda: not alive(grandchild)), "the guardian killed the process group"


def test_a_second_signal_exits_at_once(kitchen):
    busy = kitchen.conn()
    busy.send("POST", "/v1/execute", json.dumps({"input": {"op": "busy", "secs": 5}}).encode())
    assert wait_for(lambda: kitchen.request("GET", "/v1/health").json()["in_flight"] == 1)
    kitchen.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    kitchen.proc.send_signal(signal.SIGINT)
    assert kitchen.proc.wait(2) == 1
    assert not os.path.exists(kitchen.address)


def test_a_thread_stuck_in_plugin_code_cannot_hold_up_the_exit(kitchen):
    busy = kitchen.conn()
    busy.send("POST", "/v1/execute", json.dumps({"input": {"op": "busy", "secs": 8}}).encode())
    assert wait_for(lambda: kitchen.request("GET", "/v1/health").json()["in_flight"] == 1)
    started = time.monotonic()
    kitchen.proc.send_signal(signal.SIGTERM)
    # Dropped after the grace period, cleanup runs, and the worker ends with os._exit.
    assert kitchen.proc.wait(6) == 0 and time.monotonic() - started < 3.2


def test_the_watchdog_ends_a_stuck_server(kitchen):
    kitchen.request("POST", "/v1/execute", {"input": {"op": "stall_config", "secs": 30}})
    stalled = kitchen.conn()
    stalled.send("GET", "/v1/config")  # now the server loop itself is stuck in plugin code
    time.sleep(0.2)
    started = time.monotonic()
    kitchen.proc.stdin.close()
    assert kitchen.proc.wait(6) == 1
    assert 2.5 < time.monotonic() - started < 4.5, "grace + cleanup time + 0.5 s"
    assert not os.path.exists(kitchen.address)


# ----------------------------------------------------------------------------- §2 start-up


def _run_script(args, env=None, timeout=10):
    full = dict(os.environ)
    full.pop("PLUGVISOR_TOKEN", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, plugin_script("kitchen"), *args],
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def test_without_a_listen_address_it_prints_how_to_run_it_and_exits_2():
    r = _run_script([])
    assert r.returncode == 2 and r.stdout == b""
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--listen tcp://127.0.0.1:9000 --token-file TOKEN" in lines[0]


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--listen", "unix:/tmp/x.sock"], {}, "set PLUGVISOR_TOKEN"),
        (["--listen", "unix:/tmp/x.sock"], {"PLUGVISOR_TOKEN": "  "}, "is empty"),
        (["--listen", "http://x:1"], {"PLUGVISOR_TOKEN": "t"}, "bad listen address"),
        (["--listen", "tcp://localhost"], {"PLUGVISOR_TOKEN": "t"}, "bad listen address"),
        (["--socket", "/a", "--listen", "unix:/b"], {"PLUGVISOR_TOKEN": "t"}, "not allowed with"),
        (["--bogus"], {"PLUGVISOR_TOKEN": "t"}, "unrecognized arguments"),
        (["--listen", "unix:/tmp/x.sock", "--max-body", "lots"], {"PLUGVISOR_TOKEN": "t"}, "--max-body"),
    ],
)
def test_usage_errors_exit_2(args, env, fragment):
    r = _run_script(args, env)
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr.decode() and r.stdout == b""


def test_token_file_wins_and_is_trimmed(tmp_path):
    token_file = tmp_path / "TOKEN"
    token_file.write_text("  file-token\n")
    sock = tmp_path / "w.sock"
    env = dict(os.environ, PLUGVISOR_TOKEN="env-token")
    proc = subprocess.Popen(
        [sys.executable, plugin_script("kitchen"), "--socket", str(sock), "--token-file", str(token_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout.readline().decode().strip() == f"plugvisor 1 unix {sock}"
        assert Raw(str(sock), "file-token").request("GET", "/v1/health").status == 200
        assert Raw(str(sock), "env-token").request("GET", "/v1/health").status == 401
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_a_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path, worker_factory):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    env = {"PLUGVISOR_TOKEN": "t"}
    proc = subprocess.Popen(
        [sys.executable, plugin_script("kitchen"), "--socket", str(stale)],
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout.readline().startswith(b"plugvisor 1 unix")
    r = _run_script(["--socket", str(stale)], env)
    assert r.returncode == 1 and b"already listening" in r.stderr
    proc.terminate()
    assert proc.wait(5) == 0
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    r = _run_script(["--socket", str(regular)], env)
    assert r.returncode == 1 and b"not a socket" in r.stderr
    assert regular.read_text() == "keep me"


def test_an_unusable_transfer_directory_fails_the_start(tmp_path):
    r = _run_script(
        ["--socket", str(tmp_path / "w.sock"), "--transfer-dir", str(tmp_path / "missing")],
        {"PLUGVISOR_TOKEN": "t"},
    )
    assert r.returncode == 1 and b"cannot open transfer directory" in r.stderr
    assert r.stdout == b"", "no handshake for a worker that cannot work"


def test_the_token_is_not_inherited_by_processes_the_plugin_starts(kitchen):
    pid = kitchen.request("POST", "/v1/execute", {"input": {"op": "spawn"}}).json()["output"]
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert not any(e.startswith(b"PLUGVISOR_TOKEN=") for e in environ)
    os.kill(pid, signal.SIGKILL)
