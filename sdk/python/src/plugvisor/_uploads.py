"""File references without a shared filesystem (`docs/PROTOCOL.md` §14): a host streams each
input file to the worker (``PUT /v1/files/<sha256>``, content-addressed, checked on arrival,
skipped when the worker already has it: ``GET /v1/files/<sha256>``), and reads output files
back (``GET /v1/file?path=``, then ``DELETE`` once it has its copy). A host that has not
hashed the content yet streams it with ``PUT /v1/files`` (capability ``streamed_upload``): the
worker stores it under the SHA-256 it computes on arrival and answers with that digest. Every
answer describing stored content is ``{"path", "size", "sha256"}``.

The Rust runtime's `worker/src/uploads.rs`, with the same statuses and error kinds. Memory
stays O(1) in the file size: bodies go through in pieces of at most 64 KiB, an upload to a
temporary file in ``cas/`` while it is hashed, renamed to ``cas/<sha256>`` only when the digest
matches (an unnamed upload: always, under the digest computed); a mismatch, a body cut short
or a failed write leaves nothing behind.

The store is bounded (``PLUGVISOR_STORE_MAX_MIB``, default 4096): after each upload the least
recently used content goes until it fits again (`evict`), sparing the content just stored,
anything used in the last 60 s and uploads in progress; a lookup hit marks its content used
now (its modification time is the store's "last used").
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from . import _wire as wire
from ._errors import FileAccessDenied, PluginError
from ._files import TransferDir

if TYPE_CHECKING:
    from ._http import RequestHead
    from ._server import Connection, Reply, Server

__all__ = [
    "FILES_PREFIX",
    "FILES",
    "FILE",
    "CAS_DIR",
    "STORE_MAX_ENV",
    "EVICT_GRACE",
    "store_limit",
    "evict",
    "lookup",
    "upload",
    "upload_unnamed",
    "download",
    "remove",
]

_log = logging.getLogger("plugvisor")

#: ``GET`` (is it here?) or ``PUT`` (upload) of content by its SHA-256.
FILES_PREFIX = "/v1/files/"
#: ``PUT`` (upload) of content the host has not hashed: stored under the digest computed here.
FILES = "/v1/files"
#: ``GET`` (download) or ``DELETE`` of a file in the transfer directory.
FILE = "/v1/file"
#: Where uploaded content lives, inside the transfer directory.
CAS_DIR = "cas"
#: Bytes read at a time when streaming a file out.
CHUNK = 64 * 1024
_HEX = frozenset("0123456789abcdef")
#: The environment variable bounding the content store (``cas/``) of a worker, in MiB.
STORE_MAX_ENV = wire.STORE_MAX_ENV
#: The store's bound when `STORE_MAX_ENV` is not set: 4 GiB.
STORE_MAX_DEFAULT_MIB = 4096
#: Seconds: content used (uploaded or looked up) this recently is never evicted, so a call
#: that was just given a file finds it; the store may exceed its bound meanwhile.
EVICT_GRACE = 60.0
_U64_MAX = (1 << 64) - 1
#: What Rust's ``str::trim`` removes (Unicode White_Space; `str.strip` would also take
#: U+001C..U+001F).
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
#: How Rust's ``{:?}`` writes these characters of a string.
_DEBUG_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}


def _error(kind: str, message: str) -> PluginError:
    return PluginError(message, kind=kind)


def _transfer(server: "Server") -> TransferDir:
    transfer = server.options.transfer_dir
    if transfer is None:
        raise FileAccessDenied("this worker has no transfer directory")
    return transfer


def _digest_of(text: str) -> str:
    """The 64 lower-case hex digits of a SHA-256, or ``bad_request``."""
    if len(text) == 64 and set(text) <= _HEX:
        return text
    raise _error("bad_request", f"{json.dumps(text)} is not a lower-case hex SHA-256")


def _stored(path: str, sha: str) -> "Reply":
    """``200 {"path", "size", "sha256"}``: the content `sha` stored at `path`."""
    from ._server import json_reply

    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise FileAccessDenied(f"{path}: {e.strerror or e}") from None
    return json_reply(200, {"path": path, "size": size, "sha256": sha})


def _store_failed(e: OSError) -> PluginError:
    return _error("plugin_failed", f"cannot store the upload: {e.strerror or e}")


async def lookup(server: "Server", conn: "Connection", head: "RequestHead") -> "Reply":
    """``GET /v1/files/<sha256>``: ``{"path", "size", "sha256"}`` of content the worker
    already holds, else ``404 not_found``. A hit marks the content used now: the last to be
    evicted."""
    directory = _transfer(server).path
    sha = _digest_of(head.path[len(FILES_PREFIX) :])
    path = os.path.join(directory, CAS_DIR, sha)
    if not _held(path):
        raise _error("not_found", f"no content {sha}")
    touch(path)
    return _stored(path, sha)


def _held(path: str) -> bool:
    """True when `path` is a regular file (content the store holds)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def touch(path: str) -> None:
    """Marks `path` used now: sets its modification time (the store's "last used") to now,
    leaving its access time; a failure is ignored (the content is then merely older)."""
    try:
        atime_ns = os.lstat(path).st_atime_ns
        os.utime(path, ns=(atime_ns, time.time_ns()), follow_symlinks=False)
    except OSError:
        pass


def _debug_str(text: str) -> str:
    """`text` quoted as Rust's ``{:?}`` writes a string."""
    out = []
    for ch in text:
        escaped = _DEBUG_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def _parse_u64(text: str) -> int:
    """`text` as Rust's ``str::parse::<u64>`` reads it (ASCII digits, an optional leading
    ``+``), else `ValueError` with Rust's message."""
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text[0] == "+" else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise ValueError("invalid digit found in string")
    significant = digits.lstrip("0")
    if len(significant) > 20 or int(significant or "0") > _U64_MAX:
        raise ValueError("number too large to fit in target type")
    return int(significant or "0")


def store_limit() -> int:
    """The content store's bound in bytes, from ``PLUGVISOR_STORE_MAX_MIB`` (a whole number
    of MiB, surrounding whitespace ignored; 4096 when unset or not UTF-8, as the Rust
    runtime reads it).

    Raises `ValueError` when the variable is set to something else, with the message the
    Rust runtime gives: ``PLUGVISOR_STORE_MAX_MIB="x": expected a number of MiB (...)``.
    """
    text = os.environ.get(STORE_MAX_ENV)
    if text is None or not _is_utf8(text):
        return STORE_MAX_DEFAULT_MIB << 20
    try:
        mib = _parse_u64(text.strip(_WHITE_SPACE))
    except ValueError as e:
        raise ValueError(f"{STORE_MAX_ENV}={_debug_str(text)}: expected a number of MiB ({e})") from None
    return min(mib << 20, _U64_MAX)


def _is_utf8(text: str) -> bool:
    """False for an environment value that was not UTF-8 (decoded with surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def evict(directory: str, limit: int, keep: str, now: float) -> int:
    """Removes the least recently used content (oldest modification time first) of the store
    `directory` until it holds at most `limit` bytes, sparing `keep` (the content just
    stored), whatever was used within `EVICT_GRACE` seconds of `now` (a `time.time`) and
    names starting with ``.`` (uploads in progress, not counted either). Returns the bytes
    removed; an entry that cannot be removed is passed over."""
    held: List[Tuple[int, int, str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                held.append((st.st_mtime_ns, st.st_size, entry.path))
    except OSError:
        return 0
    total = sum(size for _, size, _ in held)
    held.sort()
    now_ns = int(now * 1e9)
    grace_ns = int(EVICT_GRACE * 1e9)
    removed = 0
    for used_ns, size, path in held:
        if total <= limit:
            break
        if now_ns - used_ns < grace_ns or path == keep:
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        removed += size
    return removed


async def upload(server: "Server", conn: "Connection", head: "RequestHead") -> "Reply":
    """``PUT /v1/files/<sha256>``: stores the body under its digest after checking it;
    answers ``{"path", "size", "sha256"}``. A body whose digest differs is discarded
    (``bad_request``); a body cut short or a full disk leaves nothing behind."""
    transfer = _transfer(server)
    sha = _digest_of(head.path[len(FILES_PREFIX) :])
    return await _store(server, conn, transfer, sha)


async def upload_unnamed(server: "Server", conn: "Connection", head: "RequestHead") -> "Reply":
    """``PUT /v1/files``: stores the body under the SHA-256 computed while it arrives (content
    the host has not hashed); answers ``{"path", "size", "sha256"}``. A body cut short or a
    full disk leaves nothing behind."""
    return await _store(server, conn, _transfer(server), None)


async def _store(
    server: "Server", conn: "Connection", transfer: TransferDir, sha: Optional[str]
) -> "Reply":
    """Receives the body into a temporary file in ``cas/`` and renames it to ``cas/<digest>``,
    checking the digest against `sha` when the host named one; then evicts beyond the store's
    bound. Content held already is kept (the temporary file goes) and marked used."""
    directory = os.path.join(transfer.path, CAS_DIR)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise _store_failed(e) from None
    part = os.path.join(directory, f".{sha or 'upload'}.{secrets.randbits(64)}.part")
    try:
        digest, size = await _receive(server, conn, part)
        if sha is not None and digest != sha:
            raise _error(
                "bad_request",
                f"checksum mismatch: the {size} bytes received hash to {digest}, not {sha}",
            )
        path = os.path.join(directory, digest)
        if _held(path):
            # Held already (sent by another host, or again before the host could remember
            # its digest): the copy a call may be using stays, marked used now.
            _remove_quietly(part)
            touch(path)
            return _stored(path, digest)
        try:
            os.rename(part, path)
        except OSError as e:
            raise _store_failed(e) from None
    except BaseException:
        _remove_quietly(part)
        raise
    _evict_after(directory, path)
    return _stored(path, digest)


def _evict_after(directory: str, path: str) -> None:
    """Evicts the least recently used content of the store `directory` beyond its bound,
    sparing `path` (the upload just stored)."""
    try:
        limit = store_limit()
    except ValueError:  # checked at start-up; changed since by the plugin
        limit = STORE_MAX_DEFAULT_MIB << 20
    freed = evict(directory, limit, path, time.time())
    if freed > 0:
        _log.info("evicted least recently used uploads freed=%d limit=%d", freed, limit)


async def _receive(server: "Server", conn: "Connection", part: str) -> Tuple[str, int]:
    """Writes the request body to a new file at `part` while hashing it: its hex SHA-256 and
    size. The last write is made durable (``fdatasync``) off the event loop."""
    import hashlib  # on first use: it loads OpenSSL's hashes

    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise _store_failed(e) from None
    hasher = hashlib.sha256()
    size = 0
    try:
        while True:
            data = await conn.body_chunk()
            if not data:
                break
            hasher.update(data)
            size += len(data)
            _write_all(fd, data)
        await server.loop.run_in_executor(None, _sync, fd)
    finally:
        os.close(fd)
    return hasher.hexdigest(), size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise _store_failed(e) from None


def _sync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as e:
        raise _store_failed(e) from None


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _path_param(head: "RequestHead") -> str:
    """The ``path`` query parameter, percent-decoded (``+`` is not a space, as in Rust)."""
    from urllib.parse import unquote

    raw: Optional[str] = None
    for pair in (head.query or "").split("&"):
        if pair.startswith("path="):
            raw = pair[len("path=") :]
            break
    if raw is None:
        raise _error("bad_request", "expected ?path=<a file in the transfer directory>")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as e:
        raise _error("bad_request", f"path: {e}") from None


async def download(server: "Server", conn: "Connection", head: "RequestHead") -> None:
    """``GET /v1/file?path=P``: the bytes of ``P`` (checked as a file reference is: inside the
    transfer directory, no links, a regular file), streamed with ``Content-Length``."""
    path = _path_param(head)
    fd = _transfer(server).open_ref(path)
    try:
        size = os.fstat(fd).st_size
        conn.start_sized_body(200, [("content-type", "application/octet-stream")], size)
        sent = 0
        while sent < size:
            data = os.read(fd, min(CHUNK, size - sent))
            if not data:
                break
            sent += len(data)
            conn.write(data)
            await conn.drain()
        if sent < size:
            # The file shrank while it was sent: the length promised cannot be kept.
            conn.abort()
    finally:
        os.close(fd)


async def remove(server: "Server", conn: "Connection", head: "RequestHead") -> "Reply":
    """``DELETE /v1/file?path=P``: removes ``P`` from the transfer directory (``204``)."""
    from ._server import Reply

    path = _path_param(head)
    # Opening it runs every check a file reference gets (inside, no links, a regular file).
    os.close(_transfer(server).open_ref(path))
    try:
        os.unlink(path)
    except OSError as e:
        raise FileAccessDenied(f"{path}: {e.strerror or e}") from None
    return Reply(204, b"", [])


def route(method: str, path: str) -> Optional[Any]:
    """The handler of a transfer route (``/v1/files``, ``/v1/files/<sha256>``, ``/v1/file``),
    `None` when `path` is not one; a wrong method is ``405`` naming the method the route
    takes, as the Rust runtime answers."""
    if path == FILES:
        if method == "PUT":
            return upload_unnamed
        allowed = "PUT"
    elif path.startswith(FILES_PREFIX):
        if method == "PUT":
            return upload
        if method == "GET":
            return lookup
        allowed = "PUT"
    elif path == FILE:
        if method == "DELETE":
            return remove
        if method == "GET":
            return download
        allowed = "GET"
    else:
        return None
    err = _error("method_not_allowed", f"{path} takes {allowed}, not {method}")
    err.headers = [("allow", allowed)]  # type: ignore[attr-defined]
    raise err
