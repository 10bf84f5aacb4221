"""A small, strict HTTP/1.1 parser and answer writer: request heads, chunked bodies, status lines."""

from __future__ import annotations

import re
import time
from typing import List, Optional, Tuple, Union

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "HttpError",
    "RequestHead",
    "ChunkedDecoder",
    "find_head_end",
    "parse_head",
    "answer_head",
    "reason",
]

#: Largest request head (request line and headers), as hyper's default buffer: 8 KiB + 100 × 4 KiB.
MAX_HEAD = 8192 + 4096 * 100
#: Most header fields in a request head (hyper's default).
MAX_HEADERS = 100
#: Longest request target (hyper's limit; longer is a 414).
MAX_TARGET = 65534
#: Longest chunk-size line of a chunked body (size and extensions).
MAX_CHUNK_LINE = 4096

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}\Z")


class HttpError(Exception):
    """Bytes that are not acceptable HTTP/1.1: answered with a bare `status`, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    """A parsed request line and header section. (A plain class, not a dataclass: making a
    dataclass compiles code at import, which start-up pays.)"""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "content_length",
        "chunked",
        "keep_alive",
        "expect_continue",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: Optional[str],
        version: str,
        headers: Optional[List[Tuple[str, str]]] = None,
    ) -> None:
        self.method = method
        #: The request target as sent (origin form, or absolute form).
        self.target = target
        #: The path, not percent-decoded, without query or fragment.
        self.path = path
        #: The query without ``?``, when there is one.
        self.query = query
        #: ``HTTP/1.1`` or ``HTTP/1.0``.
        self.version = version
        #: Header fields in order, names lower-case, values without surrounding whitespace.
        self.headers: List[Tuple[str, str]] = [] if headers is None else headers
        #: The declared body length (`None`: chunked or no body).
        self.content_length: Optional[int] = None
        #: The body is chunked.
        self.chunked = False
        #: The client wants the connection kept open after the answer.
        self.keep_alive = True
        #: The client sent ``Expect: 100-continue``.
        self.expect_continue = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"RequestHead({fields})"

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (lower-case), or `None`."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def has_body(self) -> bool:
        """True when a body follows the head."""
        return self.chunked or bool(self.content_length)


def find_head_end(buf: Union[bytes, bytearray], start: int = 0) -> int:
    """The index just past the blank line ending the head that starts at `start`, or -1.

    Lines may end in CRLF or a bare LF. Empty lines before the request line are skipped (and
    part of the head).
    """
    pos = start
    seen_line = False
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        line_empty = nl == pos or (nl == pos + 1 and buf[pos] == 0x0D)
        if line_empty and seen_line:
            return nl + 1
        if not line_empty:
            seen_line = True
        pos = nl + 1


#: A well-formed head of a usual size, checked in one pass: a token method, an ASCII target,
#: HTTP/1.0 or 1.1, token header names and values without control characters (what the
#: line-by-line checks of `_parse_strict` accept). Anything else takes the strict parser,
#: which says what is wrong.
_WELL_FORMED = re.compile(
    rb"(?:\r?\n)*[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]\r?\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n)*\r?\n\Z"
)
#: Heads up to this size may take the one-pass parser (their target cannot be too long).
_FAST_HEAD = 16384


def parse_head(data: bytes) -> RequestHead:
    """Parses a complete head (`find_head_end`'s bytes).

    Raises:
        HttpError: 400 for anything malformed (bad request line, version, header syntax,
            conflicting or invalid framing), 431 for more than `MAX_HEADERS` fields.
    """
    if len(data) <= _FAST_HEAD and data.count(b"\n") <= MAX_HEADERS + 2 and _WELL_FORMED.match(data):
        return _parse_checked(data)
    return _parse_strict(data)


def _parse_checked(data: bytes) -> RequestHead:
    """Parses a head `_WELL_FORMED` matched: no syntax left to check, only framing."""
    lines = data.decode("latin-1").split("\n")
    at = 0
    while lines[at] in ("", "\r"):
        at += 1
    method, target, version = lines[at].rstrip("\r").split(" ")
    headers: List[Tuple[str, str]] = []
    for line in lines[at + 1 :]:
        name, colon, value = line.partition(":")
        if not colon:
            break  # the blank line
        headers.append((name.lower(), value.strip(" \t\r")))
    path, query = _split_target(target)
    head = RequestHead(method, target, path, query, version, headers)
    _framing(head)
    return head


def _parse_strict(data: bytes) -> RequestHead:
    """Parses a head line by line, raising `HttpError` at the first thing wrong."""
    lines = data.split(b"\n")
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise HttpError(400, "empty request head")
    method, target, version = _request_line(lines[0])
    headers: List[Tuple[str, str]] = []
    for raw in lines[1:]:
        if not raw:
            break
        headers.append(_header_field(raw))
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, "too many header fields")
    path, query = _split_target(target)
    head = RequestHead(method, target, path, query, version, headers)
    _framing(head)
    return head


def _request_line(line: bytes) -> Tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, "unsupported HTTP version")
    if _BAD_TARGET.search(target):
        raise HttpError(400, "malformed request target")
    if len(target) > MAX_TARGET:
        raise HttpError(414, "the request target is too long")
    try:
        return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "the request target is not ASCII") from None


def _header_field(raw: bytes) -> Tuple[str, str]:
    colon = raw.find(b":")
    if colon <= 0:
        raise HttpError(400, "malformed header field")
    name = raw[:colon]
    if not _TOKEN.match(name):
        # Also refuses obsolete line folding and whitespace before the colon (RFC 9112 §5).
        raise HttpError(400, "malformed header name")
    value = raw[colon + 1 :].strip(b" \t")
    if _BAD_VALUE.search(value):
        raise HttpError(400, "malformed header value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _split_target(target: str) -> Tuple[str, Optional[str]]:
    """Path and query of an origin-form or absolute-form target."""
    if target.startswith("/"):
        rest = target
    elif target.startswith(("http://", "https://")):
        after = target.split("://", 1)[1]
        cuts = [i for i in (after.find(c) for c in "/?#") if i >= 0]
        rest = after[min(cuts) :] if cuts else "/"
        if not rest.startswith("/"):
            rest = "/" + rest
    else:
        raise HttpError(400, "the request target must be a path")
    rest = rest.split("#", 1)[0]
    if "?" in rest:
        path, query = rest.split("?", 1)
        return path, query
    return rest, None


def _framing(head: RequestHead) -> None:
    """Reads the body framing and connection options from the headers (RFC 9112 §6)."""
    lengths = [v for k, v in head.headers if k == "content-length"]
    encodings = [v for k, v in head.headers if k == "transfer-encoding"]
    if encodings:
        if lengths:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for v in encodings for c in v.split(",") if c.strip()]
        if not codings or codings[-1] != "chunked" or head.version == "HTTP/1.0":
            raise HttpError(400, "unsupported Transfer-Encoding")
        if any(c != "chunked" for c in codings) or len(codings) > 1:
            raise HttpError(400, "unsupported Transfer-Encoding")
        head.chunked = True
    elif lengths:
        values = {v.strip() for raw in lengths for v in raw.split(",")}
        if len(values) != 1:
            raise HttpError(400, "conflicting Content-Length values")
        value = values.pop()
        if not value.isdigit() or len(value) > 19:
            raise HttpError(400, "malformed Content-Length")
        head.content_length = int(value)
    tokens = {
        t.strip().lower() for k, v in head.headers if k == "connection" for t in v.split(",")
    }
    if head.version == "HTTP/1.0":
        head.keep_alive = "keep-alive" in tokens
    else:
        head.keep_alive = "close" not in tokens
    expect = head.header("expect")
    head.expect_continue = expect is not None and expect.lower() == "100-continue"


class ChunkedDecoder:
    """Decodes a chunked body incrementally (RFC 9112 §7.1); extensions and trailers ignored."""

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section were read."""
        return self._state == self._DONE

    def feed(self, buf: Union[bytes, bytearray], start: int = 0) -> Tuple[List[bytes], int]:
        """Decodes what it can of `buf[start:]`: the data pieces and the index it stopped at.

        Raises:
            HttpError: 400 for a malformed chunk.
        """
        out: List[bytes] = []
        pos = start
        end = len(buf)
        while pos < end and self._state != self._DONE:
            if self._state == self._DATA:
                take = min(self._remaining, end - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if end - pos > MAX_CHUNK_LINE:
                    raise HttpError(400, "chunk line too long")
                break
            line = bytes(buf[pos:nl])
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line)
        return out, pos

    def _line(self, line: bytes) -> None:
        if self._state == self._SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.match(size):
                raise HttpError(400, "malformed chunk size")
            self._remaining = int(size, 16)
            self._state = self._DATA if self._remaining else self._TRAILER
        elif self._state == self._DATA_END:
            if line:
                raise HttpError(400, "chunk data longer than its size")
            self._state = self._SIZE
        elif self._state == self._TRAILER:
            if not line:
                self._state = self._DONE
            elif len(line) > MAX_CHUNK_LINE:
                raise HttpError(400, "trailer field too long")


#: Reason phrases of the statuses a worker answers with (others come from `http.HTTPStatus`,
#: imported when first needed: it is slow to import, and start-up time counts).
_REASONS = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason(status: int) -> str:
    """The reason phrase of `status` (empty for a status without one, like 499)."""
    phrase = _REASONS.get(status)
    if phrase is None:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        _REASONS[status] = phrase
    return phrase


_date_cache: Tuple[int, str] = (0, "")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date() -> str:
    """The ``date`` header value (RFC 9110 IMF-fixdate), computed once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        t = time.gmtime(now)
        text = (
            f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
        )
        _date_cache = (now, text)
    return _date_cache[1]


def answer_head(
    status: int,
    headers: List[Tuple[str, str]],
    *,
    length: Optional[int] = None,
    chunked: bool = False,
    close: bool = False,
) -> bytes:
    """An answer's status line and headers: `headers`, then framing, ``date`` and ``connection``."""
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if chunked:
        lines.append("transfer-encoding: chunked")
    elif length is not None:
        lines.append(f"content-length: {length}")
    if close:
        lines.append("connection: close")
    lines.append(f"date: {_date()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def bare_answer(status: int) -> bytes:
    """The answer to bytes that are not HTTP: a status with an empty body, then close."""
    return answer_head(status, [], length=0, close=True)
