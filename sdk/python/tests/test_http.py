"""Unit tests of the HTTP/1.1 parser: request heads, framing, chunked bodies, answers."""

from __future__ import annotations

import pytest

from plugvisor._http import (
    MAX_HEADERS,
    ChunkedDecoder,
    HttpError,
    answer_head,
    find_head_end,
    parse_head,
)


def head(text: str):
    data = text.encode("latin-1")
    end = find_head_end(data)
    assert end == len(data), (end, len(data))
    return parse_head(data)


def test_a_plain_request_head():
    h = head("POST /v1/execute?x=1#frag HTTP/1.1\r\nHost: w\r\nContent-Length: 12\r\nX-A:  b \r\n\r\n")
    assert (h.method, h.path, h.query, h.version) == ("POST", "/v1/execute", "x=1", "HTTP/1.1")
    assert h.content_length == 12 and not h.chunked and h.keep_alive and h.has_body
    assert h.header("x-a") == "b" and h.header("host") == "w"
    assert h.headers[0] == ("host", "w"), "names are lower-cased, order kept"


def test_bare_lf_lines_and_leading_blank_lines_are_accepted():
    h = head("\r\n\nGET /v1/health HTTP/1.1\nauthorization: Bearer t\n\n")
    assert h.path == "/v1/health" and h.header("authorization") == "Bearer t"


def test_find_head_end_waits_for_the_blank_line():
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: w\r\n") == -1
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\nrest") == 18
    assert find_head_end(b"\r\n\r\n") == -1, "blank lines alone are not a head"


def test_absolute_form_targets():
    assert head("GET http://w/v1/health HTTP/1.1\r\n\r\n").path == "/v1/health"
    h = head("GET http://w?a=b HTTP/1.1\r\n\r\n")
    assert (h.path, h.query) == ("/", "a=b")


def test_connection_options():
    assert not head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive
    assert not head("GET / HTTP/1.0\r\n\r\n").keep_alive
    assert head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert head("POST / HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n").expect_continue


def test_chunked_framing():
    h = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert h.chunked and h.content_length is None and h.has_body
    assert not head("GET / HTTP/1.1\r\n\r\n").has_body
    assert not head("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").has_body
    assert head("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n").content_length == 5


@pytest.mark.parametrize(
    "text, status",
    [
        ("GET\r\n\r\n", 400),
        ("GET /x\r\n\r\n", 400),
        ("GET /x HTTP/1.1 extra\r\n\r\n", 400),
        ("G(T /x HTTP/1.1\r\n\r\n", 400),
        ("GET /x HTTP/2\r\n\r\n", 400),
        ("GET /x HTTP/1.2\r\n\r\n", 400),
        ("GET x HTTP/1.1\r\n\r\n", 400),
        ("GET /\x01 HTTP/1.1\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nno-colon\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\n: empty-name\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nname : space\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
        ("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\n" + "a: b\r\n" * (MAX_HEADERS + 1) + "\r\n", 431),
        ("GET /" + "x" * 65534 + " HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_malformed_heads_are_refused(text, status):
    with pytest.raises(HttpError) as caught:
        parse_head(text.encode("latin-1"))
    assert caught.value.status == status


def test_header_values_may_carry_obs_text():
    assert head("GET / HTTP/1.1\r\nx-a: caf\xe9\r\n\r\n").header("x-a") == "caf\xe9"


def decode_all(data: bytes, step: int):
    decoder = ChunkedDecoder()
    buf = b""
    out = b""
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        pieces, used = decoder.feed(buf)
        buf = buf[used:]
        out += b"".join(pieces)
    return out, decoder.done, buf


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_chunked_bodies_decode_in_any_split(step):
    data = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: y\r\n\r\nNEXT"
    out, done, rest = decode_all(data, step)
    assert (out, done, rest) == (b"hello0123456789", True, b"NEXT")


def test_chunked_bodies_with_bare_lf_lines():
    out, done, _ = decode_all(b"3\nabc\n0\n\n", 4)
    assert (out, done) == (b"abc", True)


@pytest.mark.parametrize(
    "data",
    [b"zz\r\n", b"\r\n", b"3\r\nabcd\r\n", b"1" * 17 + b"\r\n", b"x" * 5000, b"-1\r\n"],
)
def test_malformed_chunks_are_refused(data):
    with pytest.raises(HttpError) as caught:
        ChunkedDecoder().feed(data)
    assert caught.value.status == 400


def test_answer_heads():
    data = answer_head(499, [("content-type", "application/json")], length=2, close=True)
    lines = data.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 499 " and data.endswith(b"\r\n\r\n")
    assert "content-length: 2" in lines and "connection: close" in lines
    assert any(line.startswith("date: ") for line in lines)
    chunked = answer_head(200, [], chunked=True).decode()
    assert chunked.startswith("HTTP/1.1 200 OK\r\n") and "transfer-encoding: chunked" in chunked
    assert "content-length" not in chunked


@pytest.mark.parametrize(
    "data",
    [
        b"POST /v1/execute HTTP/1.1\r\ncontent-type: application/json\r\nauthorization: Bearer x\r\ncontent-length: 42\r\n\r\n",
        b"\r\n\nGET /v1/health HTTP/1.1\nauthorization: Bearer t\n\n",
        b"GET http://w/v1/health?x=1#f HTTP/1.0\r\nConnection: keep-alive\r\nX-A:  b \t\r\n\r\n",
        b"GET / HTTP/1.1\r\nx-a: \tv\tw\t\r\nempty:\r\nh:a:b\r\n\r\n",
        b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nexpect: 100-Continue\r\nconnection: Close, x\r\nh: \xe9\r\n\r\n",
    ],
)
def test_the_one_pass_parser_reads_what_the_strict_one_reads(data):
    from plugvisor import _http

    assert _http._WELL_FORMED.match(data), "a usual head takes the one-pass parser"
    assert _http._parse_checked(data) == _http._parse_strict(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET /\xe9 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nx : y\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nx: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n",
    ],
)
def test_heads_the_one_pass_parser_refuses_go_to_the_strict_one(data):
    from plugvisor import _http

    assert not _http._WELL_FORMED.match(data)
    with pytest.raises(HttpError):
        parse_head(data)
