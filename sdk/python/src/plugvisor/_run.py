"""`run`: the whole `main` of a Python worker (arguments, logging, handshake, signals, exit)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from . import _wire as wire
from ._calls import Runner, current_call, default_threads
from ._files import install_transfer_dir
from ._plugin import Plugin
from ._server import ServeOptions, Server, StartError

if TYPE_CHECKING:
    import argparse

__all__ = ["run", "parse_listen"]

_log = logging.getLogger("plugvisor")

#: Exit status of a worker the watchdog (or a second signal) had to stop.
FORCED_EXIT = 1
#: Exit status of a bug in the SDK outside plugin calls (the Rust runtime's panic status).
BUG_EXIT = 101


class UsageError(Exception):
    """A bad argument, a missing listen address or token: exit status 2."""


class WorkerConfig:
    """Everything `run` needs, resolved from arguments and environment."""

    def __init__(
        self,
        listen: Tuple[str, str],
        token: str,
        transfer_dir: Optional[str],
        max_body: int,
        watch_stdin: bool,
        threads: int,
        tls: Optional[Tuple[str, str, Optional[str]]] = None,
    ) -> None:
        self.listen = listen
        self.token = token
        self.transfer_dir = transfer_dir
        self.max_body = max_body
        self.watch_stdin = watch_stdin
        self.threads = threads
        #: ``(cert, key, client_ca)`` PEM files when serving TLS.
        self.tls = tls

    @property
    def remote(self) -> bool:
        """Started for remote use: TCP, no host pipe, no transfer directory given. Files
        streamed to it (and its outputs) then need a private directory of its own."""
        return not self.watch_stdin and self.transfer_dir is None and self.listen[0] == "tcp"


def run(plugin: Plugin, argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Runs `plugin` as a worker process and exits: a worker script's whole ``main``.

    It parses the arguments the host passes (``--socket PATH`` or ``--listen ADDR``,
    ``--token-file``, ``--transfer-dir``, ``--max-body``; for a remote worker ``--tls-cert``,
    ``--tls-key`` and ``--tls-client-ca``, `docs/PROTOCOL.md` §14), logs to stderr (``PLUGVISOR_LOG``,
    default ``info``), binds, prints the one handshake line on stdout and points stdout at
    stderr (so nothing the plugin prints can reach the host's handshake pipe), serves until
    ``POST /v1/shutdown``, SIGTERM/SIGINT or (with ``PLUGVISOR_WATCH_STDIN=1``) end-of-file on
    stdin, runs the plugin's `cleanup`, and exits. Exit statuses: 0 after a clean shutdown,
    1 when it could not start or had to be stopped forcibly, 2 for usage errors.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "worker"
    _init_logging()
    try:
        config = _resolve(_quick_args(args) or _parser(program).parse_args(args))
    except UsageError as e:
        _exit_with(program, str(e), 2)
    except StartError as e:  # a bad setting in the environment
        _exit_with(program, str(e), 1)
    if config is None:
        name = getattr(plugin, "name", "plugin")
        print(
            f"{program}: a plugvisor worker; start it through plugvisor (plugvisor call {name} '{{}}') "
            f"or by hand: {program} --listen tcp://127.0.0.1:9000 --token-file TOKEN",
            file=sys.stderr,
        )
        _exit(2)
    guardian = _spawn_guardian() if config.watch_stdin else None
    handshake_fd = _divert_stdout()
    try:
        code = _serve(plugin, config, handshake_fd, program)
    except BaseException as e:  # noqa: BLE001 - an SDK bug: report it, exit like a Rust panic
        _log.critical("the worker failed outside plugin calls", exc_info=e)
        code = BUG_EXIT
    _dismiss(guardian)
    _exit(code)


def _parser(program: str) -> argparse.ArgumentParser:
    import argparse  # only when `_quick_args` cannot read the arguments

    class _Parser(argparse.ArgumentParser):
        """argparse that raises `UsageError` instead of exiting by itself."""

        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    parser = _Parser(
        prog=program,
        description="A plugvisor worker: serves one plugin over the plugvisor worker protocol.",
        epilog="The token comes from the PLUGVISOR_TOKEN environment variable or --token-file. "
        "Once listening, the worker prints one handshake line on stdout.",
    )
    listen = parser.add_mutually_exclusive_group()
    listen.add_argument("--socket", metavar="PATH", help="listen on a Unix socket at PATH")
    listen.add_argument("--listen", metavar="ADDR", help="listen on unix:PATH or tcp://HOST:PORT")
    parser.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    parser.add_argument(
        "--transfer-dir",
        metavar="DIR",
        default=os.environ.get(wire.TRANSFER_DIR_ENV),
        help="the only directory file references may point into",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this PEM certificate chain (needs --listen tcp://… and --tls-key)",
    )
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by the CA in this PEM file (mutual TLS)",
    )
    parser.add_argument(
        "--max-body",
        metavar="BYTES",
        default=os.environ.get(wire.MAX_BODY_ENV),
        help="largest request body in bytes (default 67108864)",
    )
    return parser


#: The options `_quick_args` reads (each takes one value).
_OPTIONS = (
    "--socket",
    "--listen",
    "--token-file",
    "--transfer-dir",
    "--max-body",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
)


def _quick_args(args: List[str]) -> Optional[SimpleNamespace]:
    """The arguments as `_parser` would read them, when they are only ``--option VALUE`` pairs
    of known options, each at most once, not both ``--socket`` and ``--listen``, no value
    starting with ``-`` (what the host passes); else `None`, and argparse reads them (and
    says what is wrong). Importing and building argparse is a few ms of every start."""
    if len(args) % 2:
        return None
    given: Dict[str, str] = {}
    for name, value in zip(args[::2], args[1::2]):
        if name not in _OPTIONS or name in given or value.startswith("-"):
            return None
        given[name] = value
    if "--socket" in given and "--listen" in given:
        return None
    return SimpleNamespace(
        socket=given.get("--socket"),
        listen=given.get("--listen"),
        token_file=given.get("--token-file"),
        transfer_dir=given.get("--transfer-dir", os.environ.get(wire.TRANSFER_DIR_ENV)),
        max_body=given.get("--max-body", os.environ.get(wire.MAX_BODY_ENV)),
        tls_cert=given.get("--tls-cert"),
        tls_key=given.get("--tls-key"),
        tls_client_ca=given.get("--tls-client-ca"),
    )


def parse_listen(address: str) -> Tuple[str, str]:
    """``unix:PATH`` → ``("unix", PATH)``; ``tcp://HOST:PORT`` → ``("tcp", "HOST:PORT")``."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise UsageError(f"bad listen address {address!r}: empty socket path")
        return "unix", path
    if address.startswith("tcp://"):
        hostport = address[len("tcp://") :].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise UsageError(f"bad listen address {address!r}: expected tcp://HOST:PORT")
        return "tcp", hostport
    raise UsageError(f"bad listen address {address!r}: expected unix:PATH or tcp://HOST:PORT")


def _resolve(ns: Any) -> Optional[WorkerConfig]:
    if ns.socket:
        listen = ("unix", ns.socket)
    elif ns.listen:
        listen = parse_listen(ns.listen)
    else:
        return None
    max_body = wire.DEFAULT_MAX_BODY
    if ns.max_body not in (None, ""):
        text = str(ns.max_body).strip()
        if not text.isdigit():
            raise UsageError(f"invalid value {ns.max_body!r} for --max-body: not a byte count")
        max_body = int(text)
    tls = _tls_files(ns)
    token = _read_token(ns.token_file)
    _check_settings()
    if any(name.startswith("PLUGVISOR_HOST_") for name in os.environ):
        from ._host import take_env  # only when the host gave an endpoint (start-up time)

        take_env()
    return WorkerConfig(
        listen=listen,
        token=token,
        transfer_dir=ns.transfer_dir or None,
        max_body=max_body,
        watch_stdin=os.environ.get(wire.WATCH_STDIN_ENV, "").strip() == "1",
        threads=default_threads(),
        tls=tls,
    )


def _check_settings() -> None:
    """Refuses settings in the environment the worker could not use once serving, before the
    handshake line (`StartError`, exit status 1: ``bad setting: …``), as the Rust runtime
    does: ``PLUGVISOR_STORE_MAX_MIB`` must be a whole number of MiB."""
    if wire.STORE_MAX_ENV not in os.environ:
        return
    from ._uploads import store_limit  # only when the variable is set (start-up time)

    try:
        store_limit()
    except ValueError as e:
        raise StartError(f"bad setting: {e}") from None


def _tls_files(ns: Any) -> Optional[Tuple[str, str, Optional[str]]]:
    """``(cert, key, client_ca)`` when TLS is asked for; a flag without its partner is a
    usage error, as clap's ``requires`` makes it in the Rust runtime."""
    cert, key, client_ca = ns.tls_cert, ns.tls_key, ns.tls_client_ca
    if cert and not key:
        raise UsageError("--tls-cert needs --tls-key FILE")
    if key and not cert:
        raise UsageError("--tls-key needs --tls-cert FILE")
    if client_ca and not cert:
        raise UsageError("--tls-client-ca needs --tls-cert FILE")
    return (cert, key, client_ca or None) if cert else None


def _read_token(token_file: Optional[str]) -> str:
    """The token from `token_file`, else from ``PLUGVISOR_TOKEN`` (removed from the
    environment, so processes the plugin starts do not inherit it)."""
    env_token = os.environ.pop(wire.TOKEN_ENV, None)
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token, source = f.read(), f"token file {token_file}"
        except OSError as e:
            raise UsageError(f"no token: cannot read {token_file}: {e}") from None
    elif env_token is not None:
        token, source = env_token, wire.TOKEN_ENV
    else:
        raise UsageError(f"no token: set {wire.TOKEN_ENV} or pass --token-file FILE")
    token = token.strip()
    if not token:
        raise UsageError(f"no token: {source} is empty")
    return token


# ----------------------------------------------------------------------------- logging


class _Formatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z  INFO logger: message``, as the Rust runtime's lines look."""

    _NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        record.level = self._NAMES.get(record.levelname, record.levelname)
        trace_id = getattr(record, "trace_id", None)
        record.span = f"call{{trace_id={trace_id}}}: " if trace_id else ""
        return super().format(record)


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


def _init_logging() -> None:
    """Logs to stderr, one event per line, no colours; ``PLUGVISOR_LOG`` sets the level
    (``info`` by default; a bare level, and ``plugvisor=LEVEL`` for the SDK's own logger)."""
    root_level, sdk_level = logging.INFO, None
    for part in os.environ.get(wire.LOG_ENV, "info").split(","):
        target, _, level = part.strip().rpartition("=")
        value = _LEVELS.get(level.strip().lower())
        if value is None:
            continue
        if not target:
            root_level = value
        elif target.strip() in ("plugvisor", "plugvisor_worker"):
            sdk_level = value
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(level)5s %(span)s%(name)s: %(message)s"))
    _tag_records_with_the_trace()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(root_level)
    logging.getLogger("plugvisor").setLevel(sdk_level if sdk_level is not None else root_level)
    logging.getLogger("asyncio").setLevel(max(root_level, logging.WARNING))


def _tag_records_with_the_trace() -> None:
    """Every log record gets ``trace_id``: the trace of the call the logging code serves (None
    outside a call or without one), so the SDK's format shows ``call{trace_id=…}`` as the Rust
    runtime does, and a plugin's own format can use ``%(trace_id)s``."""
    make = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.trace_id = current_call().trace_id
        return record

    logging.setLogRecordFactory(tagged)


# ----------------------------------------------------------------------------- process


def _divert_stdout() -> int:
    """Keeps the real stdout for the handshake line alone and makes fd 1 a copy of stderr, so
    everything the plugin prints (even buffered before `run`) goes to stderr."""
    saved = os.dup(1)
    os.set_inheritable(saved, False)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os.dup2(2, 1)
    return saved


def _announce(fd: int, line: str) -> None:
    """Prints the handshake line on the real stdout and closes it for good."""
    data = (line + "\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


#: A remote worker's private transfer directory, removed when the worker exits.
_private_dir: Optional[str] = None


def _serve(plugin: Plugin, config: WorkerConfig, handshake_fd: int, program: str) -> int:
    """Loads TLS and (for a remote worker) makes the private transfer directory, serves, and
    removes that directory again however serving ends; the exit status."""
    global _private_dir
    try:
        tls = _tls_context(config)
    except StartError as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 1
    if config.remote:
        from ._remote import make_private_dir

        try:
            _private_dir = config.transfer_dir = make_private_dir()
        except OSError as e:
            print(f"{program}: error: creating the transfer directory: {e}", file=sys.stderr)
            return 1
    try:
        return _serve_in(plugin, config, handshake_fd, program, tls)
    finally:
        _remove_private_dir()


def _tls_context(config: WorkerConfig) -> Any:
    """The TLS server context `config` asks for (`None` without TLS), loaded before the
    handshake line so that a bad certificate or key stops the start."""
    if config.tls is None:
        return None
    from ._tls import TlsError, server_context

    try:
        if config.listen[0] != "tcp":
            raise TlsError("--tls-cert needs --listen tcp://HOST:PORT")
        return server_context(*config.tls)
    except TlsError as e:
        raise StartError(str(e)) from None


def _remove_private_dir() -> None:
    """Removes the private transfer directory, if this worker made one (once)."""
    global _private_dir
    path, _private_dir = _private_dir, None
    if path is not None:
        from ._remote import remove_private_dir

        remove_private_dir(path)


def _serve_in(
    plugin: Plugin, config: WorkerConfig, handshake_fd: int, program: str, tls: Any
) -> int:
    """Binds, announces the handshake line and serves until shutdown; the exit status."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    transfer = None
    if config.transfer_dir is not None:
        try:
            transfer = install_transfer_dir(config.transfer_dir)
        except OSError as e:
            print(f"{program}: error: cannot open transfer directory {config.transfer_dir}: {e}", file=sys.stderr)
            return 1
    runner = Runner(loop, config.threads)
    options = ServeOptions(config.token, transfer, config.max_body, tls=tls)
    try:
        server = Server(plugin, options, runner)
        line = loop.run_until_complete(_bind(server, config.listen))
    except StartError as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 1
    deadline = options.grace + options.cleanup_timeout + 0.5
    _install_signals(loop, server, deadline)
    _announce(handshake_fd, line)
    _log.info("listening handshake=%r pid=%d", line, os.getpid())
    if config.watch_stdin:
        _watch_stdin(loop, server, deadline)
    loop.run_until_complete(server.serve())
    runner.close()
    return 0


async def _bind(server: Server, listen: Tuple[str, str]) -> str:
    kind, address = listen
    if kind == "unix":
        path = await server.listen_unix(address)
        return f"plugvisor {wire.PROTOCOL_VERSION} unix {path}"
    host, _, port = address.rpartition(":")
    bound = await server.listen_tcp(host, int(port))
    return f"plugvisor {wire.PROTOCOL_VERSION} tcp {bound}"


def _install_signals(loop: asyncio.AbstractEventLoop, server: Server, deadline: float) -> None:
    """SIGTERM or SIGINT starts the graceful shutdown; a second one exits at once (status 1)."""
    seen: List[str] = []

    def on_signal(name: str) -> None:
        if seen:
            _force_exit(server, f"second {name}")
        seen.append(name)
        server.begin_shutdown(name)
        _arm_watchdog(server, deadline)

    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        loop.add_signal_handler(sig, on_signal, name)
    original = server.begin_shutdown

    def begin_shutdown(why: str) -> None:
        original(why)
        _arm_watchdog(server, deadline)

    server.begin_shutdown = begin_shutdown  # type: ignore[method-assign]


def _watch_stdin(loop: asyncio.AbstractEventLoop, server: Server, deadline: float) -> None:
    """Shuts down when stdin reaches end-of-file or fails (the host, its only writer, is gone)."""

    def watch() -> None:
        try:
            while os.read(0, 512):
                pass
        except OSError:
            pass
        _log.info("stdin closed (host gone); shutting down")
        _arm_watchdog(server, deadline)
        try:
            loop.call_soon_threadsafe(server.begin_shutdown, "stdin closed")
        except RuntimeError:
            pass

    threading.Thread(target=watch, name="plugvisor-stdin", daemon=True).start()


_watchdog_armed = threading.Lock()


def _arm_watchdog(server: Server, deadline: float) -> None:
    """Exits the process `deadline` seconds from now unless it has exited by then (once)."""
    if not _watchdog_armed.acquire(blocking=False):
        return

    def watchdog() -> None:
        time.sleep(deadline)
        _force_exit(server, "graceful shutdown stalled")

    threading.Thread(target=watchdog, name="plugvisor-watchdog", daemon=True).start()


def _force_exit(server: Server, why: str) -> NoReturn:
    _log.error("exiting without finishing shutdown reason=%s", why)
    server.remove_socket_file()
    _remove_private_dir()
    _dismiss(_guardian_pid)
    _exit(FORCED_EXIT)


def _exit(code: int) -> NoReturn:
    """Flushes logs and stdio, then ends the process at once (threads still stuck in plugin
    code cannot hold the exit up; put teardown in `cleanup`, not in ``atexit``)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _exit_with(program: str, message: str, code: int) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    _exit(code)


# ----------------------------------------------------------------------------- guardian

_guardian_pid: Optional[int] = None


def _spawn_guardian() -> Optional[int]:
    """Forks the group guardian (before any thread exists): when the worker dies, however it
    dies, it SIGKILLs the worker's process group, grandchildren included (`PROTOCOL.md` §11)."""
    global _guardian_pid
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError) as e:
        _log.warning("no group guardian (%s); grandchildren may outlive a dead host", e)
        return None
    worker = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        _log.warning("no group guardian (%s); grandchildren may outlive a dead host", e)
        return None
    if pid == 0:
        _guard(worker, prctl)
    _guardian_pid = pid
    return pid


def _guard(worker: int, prctl: object) -> NoReturn:
    """The guardian's life: wait for the worker's death (SIGUSR1 as parent-death signal),
    then kill the process group and itself."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        armed = prctl(1, int(signal.SIGUSR1), 0, 0, 0) == 0  # type: ignore[operator]  # PR_SET_PDEATHSIG
        os.closerange(0, 1 << 16)
        # The signal comes when the thread that forked this ends; while another thread of
        # the worker lives and adopted us, getppid() still names the worker: wait again.
        while armed and os.getppid() == worker:
            signal.sigwait({signal.SIGUSR1})
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(0)


def _dismiss(pid: Optional[int]) -> None:
    """Ends and reaps the guardian before a clean exit."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass
