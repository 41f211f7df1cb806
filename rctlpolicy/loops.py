"""The daemon's loops as small thread classes that stop on a sentinel, never by polling.

watchdog's observers are the model: a thread blocks on what it serves (a queue, a pipe, a
timer) and `stop()` hands it something that ends the loop at once, so stopping never waits for
a poll interval and an idle daemon never wakes up for nothing.

- `QueueLoop`: takes items from a queue and handles each; `stop()` puts a sentinel behind them.
- `PeriodicLoop`: calls a function every interval; `stop()` wakes it at once.
- `Wakeup`: requests as bytes on a pipe (a signal handler may write one: it takes no lock), for
  a thread that also waits on other descriptors with select(2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, cast

log = logging.getLogger("rctlpolicy")

T = TypeVar("T")

_STOP = object()


class QueueLoop(threading.Thread, Generic[T]):
    """A thread that hands each item of `items` to `handle`, in order, until `stop()`.

    An exception from `handle` is logged and the loop goes on: one bad item never stops it.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[T], None],
        items: queue.Queue[T] | queue.SimpleQueue[T] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.items: queue.Queue[T] | queue.SimpleQueue[T] = (
            items if items is not None else queue.Queue()
        )
        self._handle = handle

    def run(self) -> None:
        while True:
            item = self.items.get()
            if item is _STOP:
                return
            try:
                self._handle(item)
            except Exception:
                log.exception("error in %s", self.name)

    def stop(self) -> None:
        """End the loop once the items queued before now are handled."""
        self.items.put(cast(T, _STOP))


class PeriodicLoop(threading.Thread):
    """A thread that calls `tick` every `interval` seconds until `stop()`."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._tick = tick
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._tick()
            except Exception:
                log.exception("error in %s", self.name)

    def stop(self) -> None:
        """End the loop now (a tick under way finishes first)."""
        self._stopped.set()


class Wakeup:
    """Requests (one byte each) on a non-blocking pipe, read by one thread.

    `post` may be called from any thread and from a signal handler. Requests read while the
    reader waited for something else (`stop_requested`) stay pending for the next `wait`.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._pending: set[bytes] = set()
        self._closed = False

    def fileno(self) -> int:
        """The descriptor that is readable while requests are waiting (for select)."""
        return self._read_fd

    def write_fileno(self) -> int:
        """The pipe's write end, for `signal.set_wakeup_fd`: a signal's number written there
        wakes `wait`, and reads as a request the caller does not know (so ignores)."""
        return self._write_fd

    def post(self, request: bytes) -> None:
        """Add a request (a single byte); never blocks, never raises."""
        # A full pipe already holds requests to wake the reader; a closed one is past caring.
        with contextlib.suppress(OSError):
            if not self._closed:
                os.write(self._write_fd, request)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._read_fd, 512):
                self._pending.update(chunk[i : i + 1] for i in range(len(chunk)))

    def wait(self, timeout: float | None = None, also: Iterable[int] = ()) -> set[bytes]:
        """The requests pending, waiting up to `timeout` seconds (None: until one comes) for
        one; returns early with what is pending when a descriptor of `also` is readable."""
        if not self._pending:
            select.select([self._read_fd, *also], [], [], timeout)
            self._drain()
        pending, self._pending = self._pending, set()
        return pending

    def peek(self, request: bytes) -> bool:
        """Whether `request` is pending, without taking it (or any other) out."""
        self._drain()
        return request in self._pending

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)
