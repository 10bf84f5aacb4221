"""Where plugin code runs (a thread pool, an event loop thread) and `Call`, its cancellation flag."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import queue
import threading
import weakref
from typing import Any, Callable, List, NoReturn, Optional

from ._errors import Cancelled, PluginFailed

__all__ = ["Call", "current_call", "cancelled", "Runner", "is_async_callable", "default_threads"]

_log = logging.getLogger("plugvisor")

#: Environment variable with the number of threads plain (sync) plugin code runs on.
WORKER_THREADS_ENV = "PLUGVISOR_WORKER_THREADS"


class Call:
    """The call plugin code is running for: it says when the host has left.

    The host cancels a call by closing its connection (a timeout, a dropped stream, a client
    gone). Async plugin code is then cancelled at its current ``await`` (`asyncio.CancelledError`);
    plain code keeps running on its thread and should look at `cancelled` now and then::

        def execute(self, input):
            call = plugvisor.current_call()
            for step in range(1000):
                call.raise_if_cancelled()
                work(step)
    """

    __slots__ = ("_cancelled", "_event", "_callbacks", "_lock", "context", "trace")

    def __init__(self, context: Optional[str] = None, trace: Optional[str] = None) -> None:
        self._cancelled = False
        self._event: Optional[threading.Event] = None  # made by the first `wait`
        self._callbacks: List[Callable[[], Any]] = []
        self._lock = threading.Lock()
        #: The host's call-context header (``x-plugvisor-call``) of the request this call
        #: serves, when it had one: the seam for host service calls, which pass it back so the
        #: host can follow (and bound) a chain of nested calls.
        self.context = context
        #: The W3C ``traceparent`` the host sent with this call (valid, else None): the SDK puts
        #: its trace id on the log lines plugin code writes and passes a child of it on host
        #: service calls, so one request can be followed across processes.
        self.trace = traceparent(trace)

    @property
    def trace_id(self) -> Optional[str]:
        """The 32-hex-digit trace id of this call's trace, when the host sent one."""
        return self.trace[3:35] if self.trace else None

    @property
    def cancelled(self) -> bool:
        """True once the host has dropped the call; its answer will not be read."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raises `plugvisor.Cancelled` when the call was cancelled."""
        if self._cancelled:
            raise Cancelled("the call was cancelled by the host")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleeps until the call is cancelled or `timeout` seconds pass; True when cancelled.

        A plain-code replacement for ``time.sleep`` that wakes up as soon as the host leaves.
        """
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
            event = self._event
        return event.wait(timeout)

    def on_cancel(self, callback: Callable[[], Any]) -> None:
        """Runs `callback()` (from the worker's server thread) when the call is cancelled, or
        now if it already was. Keep it short: stop a subprocess, close a socket."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        _safely(callback)

    def _forget(self, callback: Callable[[], Any]) -> None:
        """Drops a callback `on_cancel` registered and that is no longer wanted."""
        with self._lock:
            try:
                self._callbacks.remove(callback)
            except ValueError:
                pass

    def _cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._event is not None:
                self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _safely(callback)


#: The header the host sets on a call made on behalf of another plugin (host service calls).
CALL_CONTEXT_HEADER = "x-plugvisor-call"
#: The W3C trace context header.
TRACEPARENT_HEADER = "traceparent"


def call_for(head: Any) -> Call:
    """The `Call` a request head starts: the host's call context and trace it carries."""
    return Call(head.header(CALL_CONTEXT_HEADER), head.header(TRACEPARENT_HEADER))


def traceparent(value: Optional[str]) -> Optional[str]:
    """`value` when it is a ``traceparent`` by the W3C rules (lowercase hex, version ``00``
    exactly 55 characters, a later one longer with ``-`` after the flags, never ``ff``, no
    all-zero id), normalised to version ``00``; else None: an invalid one is ignored."""
    if not value or len(value) < 55 or not value.isascii():
        return None
    parts = value[:55].split("-")
    if len(parts) != 4 or [len(p) for p in parts] != [2, 32, 16, 2]:
        return None
    version, trace_id, parent_id, flags = parts
    if not all(_HEX.issuperset(p) for p in parts) or version == "ff":
        return None
    if (version == "00" and len(value) != 55) or (len(value) > 55 and value[55] != "-"):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


_HEX = frozenset("0123456789abcdef")


def child_traceparent(trace: str) -> str:
    """The ``traceparent`` of a request this call makes: the same trace and flags, a new
    random parent id."""
    span = os.urandom(8).hex()
    if span == "0" * 16:
        span = "0" * 15 + "1"
    return f"{trace[:35]}-{span}-{trace[53:55]}"


def _safely(callback: Callable[[], Any]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - a plugin's callback must not break the server
        _log.exception("a cancel callback failed")


_NEVER = Call()
_current: contextvars.ContextVar[Call] = contextvars.ContextVar("plugvisor_call", default=_NEVER)


def current_call() -> Call:
    """The `Call` the calling plugin code runs for (outside a call: one never cancelled)."""
    return _current.get()


def cancelled() -> bool:
    """Shorthand for ``current_call().cancelled``."""
    return _current.get().cancelled


_async_of: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions and objects whose ``__call__`` is one (remembered per
    function: a bound method is a new object on every access, its ``__func__`` is not)."""
    key = getattr(fn, "__func__", fn)
    try:
        return _async_of[key]
    except (KeyError, TypeError):
        pass
    found = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )
    try:
        _async_of[key] = found
    except TypeError:
        pass  # not weakly referable: asked again next time
    return found


def default_threads() -> int:
    """Threads for plain plugin code: ``PLUGVISOR_WORKER_THREADS``, else min(32, CPUs + 4)."""
    value = os.environ.get(WORKER_THREADS_ENV)
    fallback = min(32, (os.cpu_count() or 1) + 4)
    if value is None:
        return fallback
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n > 0:
        return n
    _log.warning("ignoring bad %s=%r; using %d", WORKER_THREADS_ENV, value, fallback)
    return fallback


class _Pool:
    """Threads for plain plugin code: made on demand up to `limit`, daemons, kept when idle.

    Leaner than `concurrent.futures` (a call's hop costs about half): a job is a plain
    callable on a `queue.SimpleQueue`, and a call's result goes back to the server loop in one
    ``call_soon_threadsafe``. The counts are kept in aggregate: `_idle` threads wait on the
    queue unreserved, `_backlog` jobs wait for a busy thread.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._jobs: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._backlog = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Runs `job()` on a pool thread (queued while all `limit` threads are busy)."""
        with self._lock:
            spawn = False
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self._limit:
                self._threads += 1
                spawn = True
            else:
                self._backlog += 1
        self._jobs.put(job)
        if spawn:
            name = f"plugvisor-plugin-{self._threads}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # noqa: BLE001 - jobs report their own errors
                _log.exception("a plugin thread's job failed")
            with self._lock:
                if self._backlog > 0:
                    self._backlog -= 1  # a queued job is this thread's next
                else:
                    self._idle += 1


class Runner:
    """Runs plugin code away from the server's event loop.

    Plain functions run on a pool of threads, ``async def`` ones on an event loop of their own
    in another thread, so neither a blocking call nor a busy coroutine can stall
    ``/v1/health``.
    """

    def __init__(self, server_loop: asyncio.AbstractEventLoop, threads: int) -> None:
        self.server_loop = server_loop
        #: Threads for plain plugin code (the pool's limit, and the call lane's).
        self.threads = threads
        self.pool = _Pool(threads)
        self._plugin_loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_lock = threading.Lock()

    @property
    def plugin_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop async plugin code runs on, in a thread of its own (started on first
        use: a plugin without async code never needs it)."""
        loop = self._plugin_loop
        if loop is None:
            with self._loop_lock:
                loop = self._plugin_loop
                if loop is None:
                    loop = asyncio.new_event_loop()
                    thread = threading.Thread(
                        target=self._loop_main, args=(loop,), name="plugvisor-async", daemon=True
                    )
                    thread.start()
                    self._plugin_loop = loop
        return loop

    @staticmethod
    def _loop_main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def run(self, fn: Callable[..., Any], *args: Any, call: Optional[Call] = None) -> Any:
        """Runs ``fn(*args)`` where plugin code runs and returns its result (awaited if it is
        awaitable). Called on the server loop; cancelling the caller cancels `call` (and the
        coroutine, for async code).
        """
        call = call if call is not None else Call()
        if is_async_callable(fn):
            return await self.run_coroutine(fn(*args), call)
        future: asyncio.Future[Any] = self.server_loop.create_future()
        loop = self.server_loop

        def job() -> None:
            if future.cancelled():
                return
            token = _current.set(call)
            try:
                result = fn(*args)
            except SystemExit as e:
                exit_for(e)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(_settle, future, None, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)
            finally:
                _current.reset(token)

        self.pool.submit(job)
        try:
            result = await future
        except asyncio.CancelledError:
            call._cancel()
            raise
        if inspect.isawaitable(result):
            result = await self.run_coroutine(result, call)
        return result

    async def run_coroutine(self, coro: Any, call: Call) -> Any:
        """Awaits `coro` on the plugin loop (as a task running for `call`)."""
        future: asyncio.Future[Any] = self.server_loop.create_future()
        server_loop, plugin_loop = self.server_loop, self.plugin_loop
        started: List["asyncio.Task[Any]"] = []

        def done(task: "asyncio.Task[Any]") -> None:
            if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()  # cancelled before it ran: no "never awaited" warning
            if task.cancelled():
                # Not by us (then `future` is already cancelled): the plugin gave up itself.
                gave_up = Cancelled("the plugin cancelled the call")
                server_loop.call_soon_threadsafe(_settle, future, None, gave_up)
            else:
                error = task.exception()
                value = None if error is not None else task.result()
                server_loop.call_soon_threadsafe(_settle, future, value, error)

        def start() -> None:
            task = plugin_loop.create_task(_awaited_in_call(call, coro))
            task.add_done_callback(done)
            started.append(task)

        plugin_loop.call_soon_threadsafe(start)
        try:
            return await future
        except asyncio.CancelledError:
            call._cancel()
            # Runs after `start` (the plugin loop keeps their order): the task exists.
            plugin_loop.call_soon_threadsafe(lambda: [t.cancel() for t in started])
            raise

    def wait_coroutine(self, coro: Any, call: Call) -> Any:
        """Runs `coro` on the plugin loop for `call` and waits for it here (a thread that is not
        the server loop's: the call lane's, when a plain method returned an awaitable)."""
        future = asyncio.run_coroutine_threadsafe(_awaited_in_call(call, coro), self.plugin_loop)
        return future.result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Starts plain ``fn(*args)`` on the pool without waiting (no call context)."""
        self.pool.submit(lambda: fn(*args))

    def close(self) -> None:
        """Stops the plugin loop; threads still busy in plugin code are left (they are
        daemons, and the worker exits with ``os._exit``)."""
        loop = self._plugin_loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


def _settle(future: "asyncio.Future[Any]", value: Any, error: Optional[BaseException]) -> None:
    """Hands a result to the server loop's `future` (unless its caller gave up)."""
    if future.done():
        return
    if error is None:
        future.set_result(value)
    elif isinstance(error, asyncio.CancelledError):
        # Plugin code raised it on its own: the plugin gave up on the call (499).
        future.set_exception(Cancelled("the plugin cancelled the call"))
    else:
        future.set_exception(error)


def exit_for(exc: SystemExit) -> NoReturn:
    """Plugin code called ``sys.exit``: the process ends, as the plugin asked (the host sees
    the exit status and restarts the worker)."""
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _log.error("the plugin called sys.exit(%r); the worker exits with status %d", exc.code, code)
    logging.shutdown()
    os._exit(code)


def _in_call(call: Call, fn: Callable[..., Any], args: Any) -> Any:
    token = _current.set(call)
    try:
        return fn(*args)
    finally:
        _current.reset(token)


async def _awaited_in_call(call: Call, coro: Any) -> Any:
    _current.set(call)
    try:
        return await coro
    except SystemExit as e:
        exit_for(e)
    except KeyboardInterrupt:
        # A BaseException would stop the plugin loop itself; the call fails instead.
        raise PluginFailed("the plugin raised KeyboardInterrupt") from None


def run_in_call(call: Call, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs plain ``fn(*args)`` on this thread with `call` current."""
    return _in_call(call, fn, args)


def set_current(call: Call) -> "contextvars.Token[Call]":
    """Makes `call` current in this thread or task; returns the token to reset it."""
    return _current.set(call)


def reset_current(token: "contextvars.Token[Call]") -> None:
    """Undoes `set_current`."""
    _current.reset(token)
