"""The NDJSON pump: frames of a plugin's stream, produced where plugin code runs, sent in batches.

A plain generator is iterated on a pool thread, an async one on the plugin loop; each item is
encoded there as one ``{"item": …}`` line and appended to a shared buffer. The server loop takes
everything buffered as one HTTP chunk each time it is ready to write, so a fast plugin's items
are batched (about 64 KiB and more per chunk) and a slow one's are sent one by one as they come.
The last line is always the terminal frame, ``{"end": {"count": N}}`` or ``{"error": {…}}``.

Back-pressure: past `HIGH_WATER` buffered bytes the producer stops (a plain producer returns
its thread to the pool) until the server has written the buffer out. Cancellation (the host
closed the connection) closes the generator: ``GeneratorExit`` at its current ``yield``, or
``CancelledError`` at its current ``await``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures  # noqa: F401 - the async producer's handle
import inspect
import logging
import threading
from typing import Any, AsyncIterator, Iterator, List, Optional, Tuple

from ._calls import Call, Runner, reset_current, set_current
from ._errors import PluginError, PluginFailed, error_from_exception
from ._wire import dumps

__all__ = ["Pump", "CHUNK_TARGET", "HIGH_WATER"]

_log = logging.getLogger("plugvisor")

#: A chunk is about this large when the plugin is fast.
CHUNK_TARGET = 64 * 1024
#: Buffered bytes past which the producer waits for the server to write.
HIGH_WATER = 4 * CHUNK_TARGET


class Pump:
    """One stream's frames, between the producer (plugin side) and the writer (server loop)."""

    def __init__(self, runner: Runner, call: Call, source: Any) -> None:
        self._runner = runner
        self._call = call
        self._lock = threading.Lock()
        self._parts: List[bytes] = []
        self._size = 0
        self._count = 0
        self._done = False
        #: The error that ended the stream before its first item (answered as a plain error).
        self.early_error: Optional[PluginError] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._woken = False
        self._paused = False
        self._is_async = hasattr(source, "__aiter__") and not hasattr(source, "__iter__")
        self._source = source
        self._iterator: Any = None
        self._task: Optional[concurrent.futures.Future[Any]] = None
        self._resume: Optional[asyncio.Future[None]] = None
        #: The sync generator was closed (by whoever stopped it first).
        self._closed = False

    # ------------------------------------------------------------------ server side

    def start(self) -> None:
        """Starts producing (on the pool or the plugin loop)."""
        if self._is_async:
            self._task = asyncio.run_coroutine_threadsafe(
                self._produce_async(), self._runner.plugin_loop
            )
        else:
            self._runner.submit(self._produce_sync)

    async def take(self) -> Tuple[bytes, bool]:
        """Everything buffered (waiting until there is something), and whether the stream has
        ended (its terminal frame is in these bytes)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._parts:
                    data = b"".join(self._parts)
                    self._parts.clear()
                    self._size = 0
                    done = self._done
                    resume = self._paused and not done
                    self._paused = False
                    break
                if self._done:
                    return b"", True
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter, self._woken = waiter, False
            try:
                await waiter
            finally:
                self._waiter = None
        if resume:
            self._restart()
        return data, done

    def cancel(self) -> None:
        """The host left: stop the producer and close the plugin's generator."""
        self._call._cancel()
        if self._is_async:
            if self._task is not None:
                self._task.cancel()
            return
        with self._lock:
            self._done = True
            paused, self._paused = self._paused, False
            # A paused producer holds no thread: close its generator here. A running one
            # sees the call cancelled (or the stream done) and closes it itself.
            close = paused and self._iterator is not None and not self._closed
            if close:
                self._closed = True
        if close:
            self._runner.submit(_close_quietly, self._iterator)

    def _restart(self) -> None:
        if self._is_async:
            resume = self._resume
            if resume is not None:
                self._runner.plugin_loop.call_soon_threadsafe(_set_result, resume)
        else:
            self._runner.submit(self._produce_sync)

    # ------------------------------------------------------------------ producer side

    def _wake(self) -> None:
        """Called with the lock held: wakes the server's `take` (once per wait)."""
        waiter = self._waiter
        if waiter is not None and not self._woken:
            self._woken = True
            self._runner.server_loop.call_soon_threadsafe(_set_result, waiter)

    def _push(self, item: Any) -> bool:
        """Appends one item frame; False when the producer should stop (buffer full: paused;
        or the stream is over)."""
        try:
            line = b'{"item":' + dumps(item) + b"}\n"
        except Exception as e:  # noqa: BLE001 - any encoder failure ends the stream
            self._finish(PluginFailed(f"an item could not be serialized: {e}"))
            return False
        with self._lock:
            if self._done:
                return False
            self._parts.append(line)
            self._size += len(line)
            self._count += 1
            self._wake()
            if self._size >= HIGH_WATER:
                self._paused = True
                return False
            return True

    def _finish(self, error: Optional[BaseException] = None) -> None:
        """Appends the terminal frame: end, or the error."""
        err: Optional[PluginError] = None
        if error is None:
            frame = b'{"end":{"count":%d}}\n' % self._count
        else:
            err = error_from_exception(error, "plugin")
            _log.warning("stream failed: %s: %s", err.kind, err.message)
            frame = b'{"error":' + dumps(err.to_wire()) + b"}\n"
        with self._lock:
            if self._done:
                return
            if err is not None and self._count == 0:
                self.early_error = err
            self._done = True
            self._parts.append(frame)
            self._size += len(frame)
            self._wake()

    def _produce_sync(self) -> None:
        token = set_current(self._call)
        try:
            if self._iterator is None:
                try:
                    self._iterator = iter(self._source)
                except Exception as e:  # noqa: BLE001
                    self._finish(e)
                    return
            iterator: Iterator[Any] = self._iterator
            while True:
                if self._call.cancelled:
                    self._stop(iterator)
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    self._finish()
                    return
                except Exception as e:  # noqa: BLE001 - the plugin's error ends the stream
                    self._finish(e)
                    return
                if not self._push(item):
                    self._stop(iterator)
                    return
        finally:
            reset_current(token)

    def _stop(self, iterator: Iterator[Any]) -> None:
        """The producer stops: paused (the server restarts it), or for good (then it closes the
        generator, unless `cancel` already did)."""
        with self._lock:
            if self._paused or self._closed:
                return
            self._closed = True
        _close_quietly(iterator)

    async def _produce_async(self) -> None:
        set_current(self._call)
        iterator: AsyncIterator[Any] = self._source.__aiter__()
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    self._finish()
                    return
                if not self._push(item):
                    with self._lock:
                        done = self._done
                        if not done and not self._paused:
                            continue  # the server took the buffer meanwhile
                        if not done:
                            resume = self._resume = loop.create_future()
                    if done:
                        await _aclose_quietly(iterator)
                        return
                    await resume
                    self._resume = None
        except asyncio.CancelledError:
            await _aclose_quietly(iterator)
            raise
        except Exception as e:  # noqa: BLE001 - the plugin's error ends the stream
            self._finish(e)
            await _aclose_quietly(iterator)


def _set_result(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _close_quietly(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001
        _log.exception("closing the plugin's stream failed")


async def _aclose_quietly(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # noqa: BLE001
        _log.exception("closing the plugin's stream failed")


def is_async_iterable(value: Any) -> bool:
    """True for async generators and other async iterables."""
    return hasattr(value, "__aiter__") or inspect.isasyncgen(value)
