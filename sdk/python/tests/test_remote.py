"""A Python worker started for remote use (PROTOCOL.md §14): TLS and mutual TLS, its private
transfer directory, and files streamed to it and back (``/v1/files/<sha256>``, ``/v1/files``,
``/v1/file``).

Certificates come from ``plugvisor tls-certs`` (a private CA, a worker and a client
certificate), as an operator makes them. Every worker runs with ``TMPDIR`` in the test's own
directory, so its private directory is found (and checked gone) there.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from plugvisor import _uploads

from conftest import Answer, Raw, Worker, alive, plugin_script, plugvisor_bin, start_worker, wait_for

KITCHEN = plugin_script("kitchen")


# ----------------------------------------------------------------------------- helpers


def make_certs(directory: Path) -> Path:
    """A CA, a worker certificate for localhost and 127.0.0.1, a client certificate, a token."""
    out = subprocess.run(
        [str(plugvisor_bin()), "tls-certs", "--out", str(directory), "--name", "localhost", "--name", "127.0.0.1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA's files: what an attacker (or a misconfiguration) brings."""
    return make_certs(tmp_path_factory.mktemp("other-certs"))


def client_tls(certs: Path, client: Optional[Path] = None) -> ssl.SSLContext:
    """A client context trusting `certs`' CA; presenting `client`'s client certificate."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    # Python 3.13 verifies strictly (RFC 5280), which wants an Authority Key Identifier that
    # `plugvisor tls-certs` certificates lack; rustls and OpenSSL's defaults do not ask for it.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    context.set_alpn_protocols(["http/1.1"])
    if client is not None:
        context.load_cert_chain(str(client / "client.crt"), str(client / "client.key"))
    return context


def tls_args(certs: Path, client_ca: bool = False) -> Tuple[str, ...]:
    args: Tuple[str, ...] = ("--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"))
    if client_ca:
        args += ("--tls-client-ca", str(certs / "ca.crt"))
    return args


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """The workers' ``TMPDIR``: their private directories appear here."""
    d = tmp_path / "tmp"
    d.mkdir()
    return d


def remote_worker(factory: Any, tmp: Path, args: Tuple[str, ...] = ()) -> Worker:
    """The kitchen worker as an orchestrator starts it: TCP, no host pipe, no transfer dir."""
    return factory("kitchen", tcp=True, transfer=False, watch_stdin=False, env={"TMPDIR": str(tmp)}, extra_args=args)


def private_dirs(tmp: Path, pid: int) -> List[Path]:
    return sorted(tmp.glob(f"plugvisor-worker-{pid}-*"))


def request(w: Worker, context: Optional[ssl.SSLContext], method: str, path: str, body: Any = None, **kw: Any) -> Answer:
    c = Raw(w.address, w.token, tls=context)
    try:
        return c.request(method, path, body, **kw)
    finally:
        c.close()


def dead_pid() -> int:
    return next(p for p in range(4_000_000, 1_000_000, -1) if not os.path.exists(f"/proc/{p}"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- TLS


def test_tls_serves_the_protocol_and_only_tls(worker_factory, certs, tmp):
    w = remote_worker(worker_factory, tmp, tls_args(certs))
    assert w.handshake.startswith("plugvisor 1 tcp 127.0.0.1:")
    c = Raw(w.address, w.token, tls=client_tls(certs))
    try:
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        info = c.request("GET", "/v1/info").json()
        assert info["capabilities"][-2:] == ["file_transfer", "streamed_upload"]
        assert c.request("GET", "/v1/health").json()["status"] == "ok", "keep-alive over TLS"
        assert c.request("GET", "/v1/health", auth=False).status == 401, "the token is still required"
    finally:
        c.close()
    # TLS 1.2 is accepted too (the floor).
    old = client_tls(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    c = Raw(w.address, w.token, tls=old)
    assert c.sock.version() == "TLSv1.2"
    assert c.request("GET", "/v1/health").status == 200
    c.close()
    # Plain HTTP on the TLS port gets no HTTP answer.
    plain = Raw(w.address, w.token)
    plain.send("GET", "/v1/health")
    with pytest.raises((ConnectionError, OSError, ValueError, IndexError)):
        plain.answer()
    plain.close()
    # A client that does not trust the worker's CA refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        Raw(w.address, w.token, tls=ssl.create_default_context())


def refused_by(w: Worker, context: ssl.SSLContext) -> bool:
    """True when a request over a connection made with `context` gets no answer (the worker
    refuses the handshake; with TLS 1.3 the client learns it on its first read)."""
    try:
        c = Raw(w.address, w.token, tls=context)
    except (ssl.SSLError, OSError):
        return True
    try:
        c.request("GET", "/v1/health")
    except (ssl.SSLError, OSError, ConnectionError, IndexError, ValueError):
        return True
    finally:
        c.close()
    return False


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(worker_factory, certs, other_certs, tmp):
    w = remote_worker(worker_factory, tmp, tls_args(certs, client_ca=True))
    # The positive control: a client certificate the CA signed is served.
    assert request(w, client_tls(certs, client=certs), "GET", "/v1/health").status == 200
    assert refused_by(w, client_tls(certs)), "no client certificate"
    assert refused_by(w, client_tls(certs, client=other_certs)), "another CA's client certificate"
    # And the same client without a certificate is served by a worker without --tls-client-ca.
    plain = remote_worker(worker_factory, tmp, tls_args(certs))
    assert request(plain, client_tls(certs), "GET", "/v1/health").status == 200


def start_failure(args: List[str], tmp: Path, extra_env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    env = dict(os.environ, PLUGVISOR_TOKEN="t0ken", TMPDIR=str(tmp), **(extra_env or {}))
    env.pop("PLUGVISOR_WATCH_STDIN", None)
    out = subprocess.run([sys.executable, KITCHEN, *args], env=env, capture_output=True, text=True, timeout=20)
    return out.returncode, out.stdout, out.stderr


def test_unusable_tls_files_stop_the_start_before_the_handshake(certs, other_certs, tmp):
    listen = ["--listen", "tcp://127.0.0.1:0"]
    cert, key = str(certs / "tls.crt"), str(certs / "tls.key")
    code, out, err = start_failure([*listen, "--tls-cert", cert, "--tls-key", str(other_certs / "tls.key")], tmp)
    assert (code, out) == (1, ""), err
    assert f"TLS setup: {cert} and its key: key values mismatch" in err
    code, out, err = start_failure([*listen, "--tls-cert", cert, "--tls-key", cert], tmp)
    assert (code, out) == (1, "") and f"TLS setup: no private key in {cert}" in err
    code, out, err = start_failure([*listen, "--tls-cert", str(tmp / "missing.crt"), "--tls-key", key], tmp)
    assert (code, out) == (1, "") and "TLS setup: certificates in" in err and "missing.crt" in err
    code, out, err = start_failure([*listen, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", key], tmp)
    assert (code, out) == (1, "") and f"certificates in {key}: no CERTIFICATE block" in err
    code, out, err = start_failure(["--listen", f"unix:{tmp / 'w.sock'}", "--tls-cert", cert, "--tls-key", key], tmp)
    assert (code, out) == (1, "") and "--tls-cert needs --listen tcp://HOST:PORT" in err
    code, out, err = start_failure([*listen, "--tls-cert", cert], tmp)
    assert (code, out) == (2, "") and "--tls-cert needs --tls-key" in err
    assert list(tmp.iterdir()) == [], "a worker that did not start leaves no directory"


# ----------------------------------------------------------------------------- file transfer


def put(w: Worker, context: Optional[ssl.SSLContext], digest: str, data: bytes, **kw: Any) -> Answer:
    return request(w, context, "PUT", f"/v1/files/{digest}", data, **kw)


def cas_entries(directory: Path) -> List[str]:
    cas = directory / "cas"
    return sorted(os.listdir(cas)) if cas.is_dir() else []


def test_files_go_up_by_digest_and_come_back_by_path(worker_factory, certs, tmp):
    w = remote_worker(worker_factory, tmp, tls_args(certs))
    tls = client_tls(certs)
    [directory] = private_dirs(tmp, w.proc.pid)
    data = b"hello, remote worker\n" * 1000
    digest = sha(data)
    missing = request(w, tls, "GET", f"/v1/files/{digest}")
    assert missing.status == 404 and missing.json()["error"]["kind"] == "not_found"
    # A wrong digest is refused, and nothing of the body stays behind.
    wrong = put(w, tls, sha(b"something else"), data)
    assert wrong.status == 400
    error = wrong.json()["error"]
    assert error["kind"] == "bad_request" and error["message"].startswith("checksum mismatch: ")
    assert f"the {len(data)} bytes received hash to {digest}" in error["message"]
    assert cas_entries(directory) == []
    # The positive control: the right digest stores it under cas/<sha256>.
    stored = put(w, tls, digest, data)
    assert stored.status == 200, stored.body
    assert stored.json() == {"path": str(directory / "cas" / digest), "size": len(data), "sha256": digest}
    assert (directory / "cas" / digest).read_bytes() == data
    assert cas_entries(directory) == [digest], "no temporary file is left"
    assert request(w, tls, "GET", f"/v1/files/{digest}").json() == stored.json()
    # A chunked body is taken as well.
    chunked = b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"
    a = put(w, tls, sha(b"abcdefgh"), chunked, headers={"transfer-encoding": "chunked"})
    assert a.status == 200 and a.json()["size"] == 8
    # The stored path is a file reference the plugin reads.
    ref = {"$file": {"path": str(directory / "cas" / digest), "size": len(data)}}
    out = request(w, tls, "POST", "/v1/execute", {"input": {"op": "read", "file": ref}}).json()["output"]
    assert out["sha256"] == digest
    # An output file lands in the private directory; the host reads it back, then deletes it.
    made = request(w, tls, "POST", "/v1/execute", {"input": {"op": "write", "text": "result"}}).json()["output"]
    path = made["file"]["$file"]["path"]
    assert os.path.dirname(path) == str(directory)
    query = "/v1/file?path=" + path.replace("/", "%2F")
    got = request(w, tls, "GET", query)
    assert (got.status, got.body, got.headers["content-length"]) == (200, b"result", "6")
    assert request(w, tls, "DELETE", query).status == 204
    assert not os.path.exists(path)
    gone = request(w, tls, "GET", query)
    assert gone.status == 403 and gone.json()["error"]["message"] == f"{path}: no such file"


def test_transfer_routes_refuse_what_a_file_reference_may_not_name(worker_factory, certs, tmp):
    w = remote_worker(worker_factory, tmp, tls_args(certs))
    tls = client_tls(certs)
    [directory] = private_dirs(tmp, w.proc.pid)
    secret = tmp.parent / "secret.txt"
    secret.write_bytes(b"secret")
    os.symlink(secret, directory / "link")
    (directory / "inside.txt").write_bytes(b"inside")
    # The positive control: a regular file inside is served.
    assert request(w, tls, "GET", f"/v1/file?path={directory}/inside.txt").body == b"inside"
    for path, reason in [
        (str(secret), "outside the transfer directory"),
        (f"{directory}/link", "symbolic link"),
        (f"{directory}/../{directory.name}/inside.txt", "'.' or '..'"),
        (str(directory), "the transfer directory itself"),
    ]:
        for method in ("GET", "DELETE"):
            a = request(w, tls, method, f"/v1/file?path={path}")
            assert a.status == 403, (method, path, a.body)
            assert a.json()["error"] == {"kind": "file_access_denied", "message": a.json()["error"]["message"]}
            assert reason in a.json()["error"]["message"], a.body
    assert secret.read_bytes() == b"secret" and os.path.islink(directory / "link")
    assert request(w, tls, "GET", "/v1/file").json()["error"]["kind"] == "bad_request"
    bad = request(w, tls, "GET", "/v1/files/ABC")
    assert bad.status == 400 and bad.json()["error"]["message"] == '"ABC" is not a lower-case hex SHA-256'
    wrong = request(w, tls, "POST", "/v1/files/" + "0" * 64, b"")
    assert (wrong.status, wrong.headers["allow"]) == (405, "PUT")
    wrong = request(w, tls, "PUT", "/v1/file?path=x", b"")
    assert (wrong.status, wrong.headers["allow"]) == (405, "GET")


@pytest.mark.parametrize("target", [f"/v1/files/{'a' * 64}", "/v1/files"], ids=["named", "unnamed"])
def test_an_upload_cut_short_leaves_nothing(worker_factory, tmp, target):
    w = remote_worker(worker_factory, tmp)
    [directory] = private_dirs(tmp, w.proc.pid)
    c = w.conn()
    c.send_raw(
        f"PUT {target} HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {w.token}\r\n"
        "content-length: 1000000\r\n\r\n".encode()
        + b"x" * 1000
    )
    # The control: while the body comes, its temporary file exists.
    assert wait_for(lambda: any(n.endswith(".part") for n in cas_entries(directory)))
    c.close()
    assert wait_for(lambda: cas_entries(directory) == []), cas_entries(directory)
    assert w.request("GET", "/v1/health").status == 200


def test_an_unnamed_upload_is_stored_under_the_digest_the_worker_computes(worker_factory, certs, tmp):
    w = remote_worker(worker_factory, tmp, tls_args(certs))
    tls = client_tls(certs)
    [directory] = private_dirs(tmp, w.proc.pid)
    data = os.urandom(300 << 10)
    digest = sha(data)
    assert request(w, tls, "GET", f"/v1/files/{digest}").status == 404, "the control: not held yet"
    stored = request(w, tls, "PUT", "/v1/files", data)
    assert stored.status == 200, stored.body
    answer = stored.json()
    assert answer == {"path": str(directory / "cas" / digest), "size": len(data), "sha256": digest}
    assert answer["path"].endswith(f"/cas/{digest}")
    assert (directory / "cas" / digest).read_bytes() == data
    assert cas_entries(directory) == [digest], "no temporary file is left"
    # A lookup by that digest finds it, with the digest in the answer.
    found = request(w, tls, "GET", f"/v1/files/{digest}")
    assert (found.status, found.json()) == (200, answer)
    # The same content again keeps the copy held (the same inode); a named upload agrees.
    inode = (directory / "cas" / digest).stat().st_ino
    assert request(w, tls, "PUT", "/v1/files", data).json() == answer
    assert put(w, tls, digest, data).json() == answer
    assert cas_entries(directory) == [digest]
    assert (directory / "cas" / digest).stat().st_ino == inode
    # A chunked body, and an empty one, are taken as well.
    chunked = b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"
    a = request(w, tls, "PUT", "/v1/files", chunked, headers={"transfer-encoding": "chunked"})
    assert a.json() == {"path": str(directory / "cas" / sha(b"abcdefgh")), "size": 8, "sha256": sha(b"abcdefgh")}
    empty = request(w, tls, "PUT", "/v1/files", b"").json()
    assert (empty["size"], empty["sha256"]) == (0, sha(b""))
    assert cas_entries(directory) == sorted([digest, sha(b"abcdefgh"), sha(b"")])
    # The stored path is a file reference the plugin reads.
    ref = {"$file": {"path": answer["path"], "size": len(data)}}
    out = request(w, tls, "POST", "/v1/execute", {"input": {"op": "read", "file": ref}}).json()["output"]
    assert out["sha256"] == digest
    # Other methods on exactly /v1/files are 405 naming PUT; nothing is stored.
    for method in ("GET", "POST", "DELETE"):
        wrong = request(w, tls, method, "/v1/files", b"" if method == "POST" else None)
        assert (wrong.status, wrong.headers["allow"]) == (405, "PUT"), (method, wrong.body)
        assert wrong.json()["error"] == {"kind": "method_not_allowed", "message": f"/v1/files takes PUT, not {method}"}
    assert cas_entries(directory) == sorted([digest, sha(b"abcdefgh"), sha(b"")])


_LIMITED = """
import os, resource, runpy, sys
limit = int(os.environ["FSIZE_LIMIT"])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = os.environ["WRAPPED"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_failed_write_is_500_plugin_failed_and_leaves_nothing(tmp, tmp_path):
    # A full disk, as the worker sees it: writes past RLIMIT_FSIZE fail with EFBIG (Python
    # ignores SIGXFSZ).
    limited = tmp_path / "limited.py"
    limited.write_text(_LIMITED)
    env = {"TMPDIR": str(tmp), "FSIZE_LIMIT": str(1 << 20), "WRAPPED": KITCHEN}
    w = start_worker(tmp_path, str(limited), tcp=True, transfer=False, watch_stdin=False, env=env)
    try:
        [directory] = private_dirs(tmp, w.proc.pid)
        # The control: content under the limit is stored.
        small = os.urandom(512 << 10)
        assert w.request("PUT", f"/v1/files/{sha(small)}", small).status == 200
        big = os.urandom((1 << 20) + (128 << 10))
        a = w.request("PUT", f"/v1/files/{sha(big)}", big)
        assert a.status == 500, a.body
        error = a.json()["error"]
        assert error["kind"] == "plugin_failed" and error["message"].startswith("cannot store the upload: ")
        assert cas_entries(directory) == [sha(small)], "nothing of the failed upload is left"
        # The same for content streamed unnamed (``PUT /v1/files``).
        a = w.request("PUT", "/v1/files", big)
        assert a.status == 500 and a.json()["error"]["kind"] == "plugin_failed", a.body
        assert cas_entries(directory) == [sha(small)], "nothing of the failed unnamed upload is left"
        assert w.request("GET", "/v1/health").status == 200
    finally:
        assert w.stop() == 0
    assert private_dirs(tmp, w.proc.pid) == []


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1])


def test_a_large_upload_and_download_take_constant_memory(worker_factory, tmp):
    w = remote_worker(worker_factory, tmp)
    [directory] = private_dirs(tmp, w.proc.pid)
    size, block = 64 << 20, os.urandom(1 << 16)
    hasher = hashlib.sha256()
    for _ in range(size // len(block)):
        hasher.update(block)
    digest = hasher.hexdigest()
    assert w.request("GET", "/v1/health").status == 200
    before = vm_hwm_kib(w.proc.pid)
    c = w.conn()
    c.send_raw(
        f"PUT /v1/files/{digest} HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {w.token}\r\n"
        f"content-length: {size}\r\n\r\n".encode()
    )
    for _ in range(size // len(block)):
        c.send_raw(block)
    assert c.answer().json()["size"] == size
    path = str(directory / "cas" / digest)
    c.send("GET", f"/v1/file?path={path}")
    assert c._line().startswith(b"HTTP/1.1 200 ")
    while c._line():  # the head; the body is read (and hashed) as it comes
        pass
    received, back = len(c.buf), hashlib.sha256(c.buf)
    while received < size:
        data = c.sock.recv(1 << 16)
        assert data, "the download broke off"
        received += len(data)
        back.update(data)
    c.close()
    assert (received, back.hexdigest()) == (size, digest)
    grown = vm_hwm_kib(w.proc.pid) - before
    assert grown < 16 * 1024, f"the worker's peak memory grew by {grown} KiB for a 64 MiB file"


# ----------------------------------------------------------------------------- the store's bound

MIB = 1 << 20


def aged(path: Path, seconds: float, now: Optional[float] = None) -> Path:
    """Makes `path` last used `seconds` before `now` (its modification time)."""
    when = (time.time() if now is None else now) - seconds
    os.utime(path, (when, when))
    return path


def test_eviction_removes_the_least_recently_used_beyond_the_bound_and_spares_recent_use(tmp_path):
    # The Rust runtime's `store_tests`, on the SDK's `evict`.
    now = time.time()

    def put_entry(name: str, age: float, size: int = 1000) -> Path:
        path = tmp_path / name
        path.write_bytes(b"\0" * size)
        return aged(path, age, now)

    oldest = put_entry("a", 3600)
    older = put_entry("b", 1800)
    recent = put_entry("c", 5)  # within the grace: spared
    new = put_entry("d", 7200)  # the upload just stored: spared, oldest as it is
    part = put_entry(".x.part", 7200, 5000)  # an upload in progress: neither counted nor removed

    # Control: within the bound, nothing goes.
    assert _uploads.evict(str(tmp_path), 10_000, str(new), now) == 0
    assert oldest.exists() and older.exists()
    # One entry's worth over the bound: only the oldest that may go (not the older one).
    assert _uploads.evict(str(tmp_path), 3000, str(new), now) == 1000
    assert not oldest.exists() and older.exists()
    # 3000 bytes held, bound 1500: the next oldest goes; the recent one, the one just stored
    # and the part file stay, and the store stays over its bound.
    assert _uploads.evict(str(tmp_path), 1500, str(new), now) == 1000
    assert not older.exists()
    assert recent.exists() and new.exists() and part.exists()
    # Nothing else may go, even far over a tiny bound.
    assert _uploads.evict(str(tmp_path), 0, str(new), now) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.part", "c", "d"]
    # The grace is 60 s: just past it, the recent entry may go too (the control of the grace).
    assert _uploads.EVICT_GRACE == 60.0
    assert _uploads.evict(str(tmp_path), 0, str(new), now + 56) == 1000
    assert not recent.exists() and new.exists() and part.exists()
    # A store that does not exist (yet) is nothing to evict.
    assert _uploads.evict(str(tmp_path / "missing"), 0, str(new), now) == 0


@pytest.mark.parametrize(
    "value, reason",
    [
        ("x", "invalid digit found in string"),
        ("1.5", "invalid digit found in string"),
        ("-1", "invalid digit found in string"),
        ("", "cannot parse integer from empty string"),
        ("1" * 30, "number too large to fit in target type"),
    ],
)
def test_the_store_bound_must_be_a_whole_number_of_mib(monkeypatch, value, reason):
    monkeypatch.setenv("PLUGVISOR_STORE_MAX_MIB", value)
    with pytest.raises(ValueError) as e:
        _uploads.store_limit()
    assert str(e.value) == f"PLUGVISOR_STORE_MAX_MIB={json.dumps(value)}: expected a number of MiB ({reason})"


def test_the_store_bound_defaults_to_4096_mib_and_reads_whole_mib(monkeypatch):
    monkeypatch.delenv("PLUGVISOR_STORE_MAX_MIB", raising=False)
    assert _uploads.store_limit() == 4096 * MIB
    for value, mib in [("1", 1), (" 64\n", 64), ("+2", 2), ("0", 0)]:
        monkeypatch.setenv("PLUGVISOR_STORE_MAX_MIB", value)
        assert _uploads.store_limit() == mib * MIB, value


def test_a_worker_store_evicts_the_least_recently_used_and_a_lookup_marks_content_used(worker_factory, tmp):
    w = remote_worker_with(worker_factory, tmp, {"PLUGVISOR_STORE_MAX_MIB": "1"})
    [directory] = private_dirs(tmp, w.proc.pid)
    cas = directory / "cas"
    blobs = {name: os.urandom(300 << 10) for name in "abcdefg"}  # three fit in 1 MiB, four do not
    digest = {name: sha(data) for name, data in blobs.items()}

    def upload(name: str) -> None:
        a = w.request("PUT", f"/v1/files/{digest[name]}", blobs[name])
        assert a.status == 200, a.body

    def held() -> List[str]:
        names = {d: n for n, d in digest.items()}
        return sorted(names.get(entry, entry) for entry in cas_entries(directory))

    # Control: within the bound nothing goes, however old.
    for name in "abc":
        upload(name)
        aged(cas / digest[name], {"a": 7200, "b": 3600, "c": 0}[name])
    (cas / ".stale.part").write_bytes(b"\0" * (2 << 20))  # in progress: not counted, never removed
    aged(cas / ".stale.part", 9999)
    assert held() == [".stale.part", "a", "b", "c"]
    # Over the bound: the least recently used goes first, and only as much as needed.
    upload("d")
    assert held() == [".stale.part", "b", "c", "d"]
    upload("e")
    assert held() == [".stale.part", "c", "d", "e"]
    # Everything held was used within 60 s: nothing goes; the store exceeds its bound meanwhile.
    upload("f")
    assert held() == [".stale.part", "c", "d", "e", "f"]
    # A lookup hit marks its content used now: `c`, the oldest, is then spared.
    for name, age in (("c", 4 * 3600), ("d", 3 * 3600), ("e", 2 * 3600), ("f", 3600)):
        aged(cas / digest[name], age)
    before = (cas / digest["c"]).stat().st_mtime
    assert w.request("GET", f"/v1/files/{digest['c']}").status == 200
    after = (cas / digest["c"]).stat().st_mtime
    assert before < time.time() - 3600 and abs(after - time.time()) < 30, (before, after)
    assert w.request("GET", f"/v1/files/{'0' * 64}").status == 404
    upload("g")
    assert held() == [".stale.part", "c", "f", "g"], "d and e were the least recently used"
    assert w.request("GET", "/v1/health").status == 200


def remote_worker_with(factory: Any, tmp: Path, env: Dict[str, str]) -> Worker:
    """The kitchen worker started for remote use (plain TCP) with `env` added."""
    return factory("kitchen", tcp=True, transfer=False, watch_stdin=False, env={"TMPDIR": str(tmp), **env})


def test_a_bad_store_bound_stops_the_start_before_the_handshake(worker_factory, tmp):
    listen = ["--listen", "tcp://127.0.0.1:0"]
    for value, reason in [
        ("x", "invalid digit found in string"),
        ("1.5", "invalid digit found in string"),
        ("", "cannot parse integer from empty string"),
    ]:
        code, out, err = start_failure(listen, tmp, {"PLUGVISOR_STORE_MAX_MIB": value})
        assert (code, out) == (1, ""), (value, err)
        expected = f"bad setting: PLUGVISOR_STORE_MAX_MIB={json.dumps(value)}: expected a number of MiB ({reason})"
        assert f"kitchen.py: error: {expected}\n" in err, err
    assert list(tmp.iterdir()) == [], "a worker that did not start leaves no directory"
    # The control: a whole number of MiB (whitespace around it ignored) starts and serves.
    w = remote_worker_with(worker_factory, tmp, {"PLUGVISOR_STORE_MAX_MIB": " 64 "})
    assert w.handshake.startswith("plugvisor 1 tcp 127.0.0.1:")
    assert w.request("GET", "/v1/health").status == 200


def test_a_bad_store_bound_is_refused_as_the_rust_runtime_refuses_it(tmp):
    rust = plugvisor_bin().parent / "echo-worker"
    if not rust.is_file():
        pytest.skip(f"no Rust echo-worker beside {plugvisor_bin()}")
    env = dict(os.environ, PLUGVISOR_TOKEN="t0ken", TMPDIR=str(tmp), PLUGVISOR_STORE_MAX_MIB="12 MiB")
    env.pop("PLUGVISOR_WATCH_STDIN", None)
    theirs = subprocess.run(
        [str(rust), "--listen", "tcp://127.0.0.1:0"], env=env, capture_output=True, text=True, timeout=20
    )
    code, out, ours = start_failure(["--listen", "tcp://127.0.0.1:0"], tmp, {"PLUGVISOR_STORE_MAX_MIB": "12 MiB"})
    assert (theirs.returncode, theirs.stdout) == (code, out) == (1, ""), (theirs.stderr, ours)
    message = (
        'error: bad setting: PLUGVISOR_STORE_MAX_MIB="12 MiB": '
        "expected a number of MiB (invalid digit found in string)"
    )
    assert theirs.stderr.strip() == f"echo-worker: {message}"
    assert f"kitchen.py: {message}\n" in ours


# ----------------------------------------------------------------------------- the private directory


def test_the_private_directory_lives_as_long_as_the_worker(worker_factory, tmp):
    w = remote_worker(worker_factory, tmp)
    [directory] = private_dirs(tmp, w.proc.pid)
    assert directory.stat().st_mode & 0o777 == 0o700
    data = b"content"
    assert w.request("PUT", f"/v1/files/{sha(data)}", data).status == 200
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(5) == 0
    assert private_dirs(tmp, w.proc.pid) == [], "removed, uploads and all, on SIGTERM"
    w = remote_worker(worker_factory, tmp)
    assert len(private_dirs(tmp, w.proc.pid)) == 1
    assert w.request("POST", "/v1/shutdown").status == 202
    assert w.proc.wait(5) == 0
    assert private_dirs(tmp, w.proc.pid) == [], "removed after POST /v1/shutdown"
    assert list(tmp.iterdir()) == []


def test_only_a_remote_worker_makes_a_private_directory(worker_factory, tmp, tmp_path):
    # Started by a host (stdin watched), without a transfer directory: no file transfer.
    w = worker_factory("kitchen", tcp=True, transfer=False, watch_stdin=True, env={"TMPDIR": str(tmp)})
    capabilities = w.request("GET", "/v1/info").json()["capabilities"]
    assert "file_transfer" not in capabilities and "streamed_upload" not in capabilities
    for method, path in [("GET", f"/v1/files/{'0' * 64}"), ("PUT", "/v1/files")]:
        assert w.request(method, path, b"x" if method == "PUT" else None).json()["error"] == {
            "kind": "file_access_denied",
            "message": "this worker has no transfer directory",
        }, path
    # Given a transfer directory: that one is used (and announced), none is made.
    w2 = worker_factory("kitchen", tcp=True, transfer=True, watch_stdin=False, env={"TMPDIR": str(tmp)})
    assert w2.request("GET", "/v1/info").json()["capabilities"][-2:] == ["file_transfer", "streamed_upload"]
    data = b"x"
    assert w2.request("PUT", f"/v1/files/{sha(data)}", data).json()["path"] == str(w2.transfer / "cas" / sha(data))
    assert list(tmp.iterdir()) == []


def test_a_killed_workers_directory_is_removed_by_the_next_one_and_nothing_else(worker_factory, tmp):
    killed = remote_worker(worker_factory, tmp)
    [left] = private_dirs(tmp, killed.proc.pid)
    (left / "cas").mkdir()
    (left / "cas" / "data").write_bytes(b"x")
    killed.proc.kill()
    killed.proc.wait()
    assert left.is_dir(), "a SIGKILLed worker cannot remove its directory"
    dead = dead_pid()
    target = tmp / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"keep")
    controls = {
        "live": tmp / f"plugvisor-worker-{os.getpid()}-b",  # a running worker's
        "odd": tmp / "plugvisor-worker-notapid-c",  # no worker's name
        "file": tmp / f"plugvisor-worker-{dead}-file",  # not a directory
    }
    controls["live"].mkdir()
    controls["odd"].mkdir()
    controls["file"].write_bytes(b"")
    link = tmp / f"plugvisor-worker-{dead}-link"
    os.symlink(target, link)
    foreign = tmp / f"plugvisor-worker-{dead}-foreign"
    if os.geteuid() == 0:
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)  # another user's
    next_one = remote_worker(worker_factory, tmp)
    assert not left.exists(), "the dead worker's directory is removed"
    assert len(private_dirs(tmp, next_one.proc.pid)) == 1
    assert all(p.exists() for p in controls.values())
    assert os.path.islink(link) and (target / "keep").read_bytes() == b"keep", "links are not followed"
    if os.geteuid() == 0:
        assert foreign.is_dir(), "another user's directory is left alone"
    assert alive(next_one.proc.pid)


# ----------------------------------------------------------------------------- the conformance kit

#: A kitchen worker whose named upload keeps a body under the digest it was sent as, whatever
#: its content hashes to (the check the kit must catch); an unnamed upload (``PUT /v1/files``,
#: its temporary file ``.upload.<n>.part``) it stores as it should.
_TRUSTING = """
import runpy, sys
from plugvisor import _uploads

_receive = _uploads._receive


async def trusting(server, conn, part):
    digest, size = await _receive(server, conn, part)
    named = part.rsplit("/", 1)[1][1:65]
    return (digest if named.startswith("upload.") else named), size


_uploads._receive = trusting
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def kit_results(tmp_path: Path, *command: str) -> List[Tuple[str, str]]:
    """`plugvisor conformance --json -- COMMAND`'s §14 checks: (result, check) pairs."""
    out = subprocess.run(
        [str(plugvisor_bin()), "conformance", "--json", "--dir", str(tmp_path), "--", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    return [(c["result"], c["check"]) for c in report["checks"] if c["section"] == "§14 file transfer"]


def test_the_conformance_kit_checks_file_transfer_and_catches_a_trusting_upload(tmp_path):
    results = kit_results(tmp_path, sys.executable, KITCHEN)
    assert len(results) == 8 and all(r == "pass" for r, _ in results), results
    assert results[-1][1].startswith("PUT /v1/files stores a body under the digest"), results
    trusting = tmp_path / "trusting.py"
    trusting.write_text(_TRUSTING)
    flawed = kit_results(tmp_path, sys.executable, str(trusting), KITCHEN)
    failed = [check for result, check in flawed if result == "fail"]
    assert failed == ["PUT with a wrong digest is 400 bad_request (checksum mismatch) and leaves nothing"], flawed
