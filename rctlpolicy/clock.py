"""Clocks: the seam through which time enters the action engine (and anything else that waits).

Two readings are kept apart on purpose. `monotonic()` measures durations and deadlines and never
jumps; `time()` is wall time, the only reading that means the same thing to two processes (the
one-shot `rctlpolicy handle` invocations share cooldowns through a file, so they need it).
"""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol


class Clock(Protocol):
    """Where the current time comes from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clocks of the host."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return _time.monotonic()

    def time(self) -> float:
        """time.time()."""
        return _time.time()


class ManualClock:
    """A clock that moves only when told to: both readings advance together.

    Thread-safe, because the engine reads it from worker threads while a test advances it.
    """

    def __init__(self, start_time: float = 1_700_000_000.0, start_monotonic: float = 1_000.0):
        self._lock = threading.Lock()
        self._time = start_time
        self._monotonic = start_monotonic

    def monotonic(self) -> float:
        """The manual monotonic reading."""
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        """The manual wall-clock reading."""
        with self._lock:
            return self._time

    def advance(self, seconds: float) -> None:
        """Move both readings forward by `seconds` (a monotonic clock cannot go back)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        with self._lock:
            self._time += seconds
            self._monotonic += seconds

    def set_time(self, wall: float) -> None:
        """Set the wall reading only, as an administrator or NTP step would (may go back)."""
        with self._lock:
            self._time = wall
