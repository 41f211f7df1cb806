"""What the action engine remembers between events: cooldowns, run times, running actions.

`MemoryState` is the daemon's (one process, many threads). `FileState` is shared by the
one-shot `rctlpolicy handle` invocations devd starts, one per event: its entries are a
`rctlpolicy.statefile.JsonStateFile` (read and written under a lock, through safeio), and its
per-key claims are byte-range locks that the kernel drops if an invocation dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

from rctlpolicy.safeio import open_lock_file
from rctlpolicy.statefile import JsonStateFile

logger = logging.getLogger("rctlpolicy.actions")

#: (canonical rule, jail)
StateKey: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class StateEntry:
    """What is remembered per rule and jail (all wall-clock times)."""

    cooldown_until: float = 0.0
    run_times: tuple[float, ...] = ()
    #: end of the max_runs window whose exhaustion was already logged
    exhausted_until: float = 0.0

    def is_idle(self, now: float) -> bool:
        return not self.run_times and self.cooldown_until <= now and self.exhausted_until <= now


class Claim:
    """The right to run the one action allowed at a time for a rule and jail; release once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class CooldownState(Protocol):
    """Where cooldowns, run times and running actions are kept."""

    def transaction(self) -> contextlib.AbstractContextManager[dict[StateKey, StateEntry]]:
        """Exclusive access to all entries; changes to the dict are kept if the block succeeds."""
        ...

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim the right to run for `key`, or None when a run for it is in progress."""
        ...


class MemoryState:
    """State for the daemon: in memory, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[StateKey, StateEntry] = {}
        self._running: set[StateKey] = set()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[StateKey, StateEntry]]:
        """Exclusive access to the entries (kept only if the block does not raise)."""
        with self._lock:
            entries = dict(self._entries)
            yield entries
            self._entries = entries

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim `key` within this process."""
        with self._lock:
            if key in self._running:
                return None
            self._running.add(key)
        return Claim(lambda: self._unclaim(key))

    def _unclaim(self, key: StateKey) -> None:
        with self._lock:
            self._running.discard(key)


_STATE_VERSION = 1


class FileState:
    """State shared by `rctlpolicy handle` invocations: a JSON state file and a claims file.

    The entries are a `JsonStateFile` (`<path>`, locked through `<path>.lock` around every
    read-modify-write, replaced atomically with mode 0600, written only when they changed). A
    file that cannot be read or parsed is logged and treated as empty: a lost cooldown is
    better than no action ever again; one that cannot be locked or written stops the action
    (the engine then reports the state unavailable). A run in progress holds a one-byte fcntl(2)
    lock in `<path>.running` at an offset derived from its key; the kernel drops it if the
    process dies, so a crash never leaves a stale claim. Those locks are per process: within
    one process the claims are also kept in memory. No file is followed through a symlink.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = JsonStateFile(self.path)
        self.lock_path = self._file.lock_path
        self.running_path = self.path.with_name(self.path.name + ".running")
        self._mutex = threading.Lock()
        self._running: set[StateKey] = set()
        self._running_fd: int | None = None

    def __enter__(self) -> FileState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the claims file (dropping any claim still held)."""
        with self._mutex:
            if self._running_fd is not None:
                os.close(self._running_fd)
                self._running_fd = None
                self._running.clear()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[StateKey, StateEntry]]:
        """Lock, load, hand out the entries, and write them back if they changed."""
        with self._file.locked():
            entries = self._load()
            before = dict(entries)
            yield entries
            if entries != before:
                self._file.save(_encode_state(entries))

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim `key` across processes (fcntl byte lock) and within this one."""
        offset = int.from_bytes(hashlib.sha256("\0".join(key).encode()).digest()[:8]) >> 2
        with self._mutex:
            if key in self._running:
                return None
            if self._running_fd is None:
                self._running_fd = open_lock_file(self.running_path)
            try:
                fcntl.lockf(self._running_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return None
                # No byte locks here (an NFS mount, say): fall back to this process's claims.
                logger.warning("cannot lock %s: %s", self.running_path, exc)
            self._running.add(key)
        return Claim(lambda: self._unclaim(key, offset))

    def _unclaim(self, key: StateKey, offset: int) -> None:
        with self._mutex:
            if key in self._running and self._running_fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.lockf(self._running_fd, fcntl.LOCK_UN, 1, offset)
            self._running.discard(key)

    def _load(self) -> dict[StateKey, StateEntry]:
        document = self._file.load()  # {} when missing or unreadable (it logs why)
        if not document:
            return {}
        try:
            return _decode_state(document)
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("action state %s is corrupt, starting empty: %s", self.path, exc)
            return {}


def _encode_state(entries: dict[StateKey, StateEntry]) -> dict[str, object]:
    return {
        "version": _STATE_VERSION,
        "entries": [
            {
                "rule": rule,
                "jail": jail,
                "cooldown_until": entry.cooldown_until,
                "run_times": list(entry.run_times),
                "exhausted_until": entry.exhausted_until,
            }
            for (rule, jail), entry in sorted(entries.items())
        ],
    }


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _decode_state(document: object) -> dict[StateKey, StateEntry]:
    if not isinstance(document, dict) or document.get("version") != _STATE_VERSION:
        raise ValueError("not a version 1 state document")
    raw_entries = document["entries"]
    if not isinstance(raw_entries, list):
        raise ValueError("entries is not a list")
    entries: dict[StateKey, StateEntry] = {}
    for raw in raw_entries:
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        rule, jail, run_times = raw["rule"], raw["jail"], raw["run_times"]
        if (
            not isinstance(rule, str)
            or not isinstance(jail, str)
            or not isinstance(run_times, list)
        ):
            raise ValueError(f"malformed entry {raw!r}")
        entries[(rule, jail)] = StateEntry(
            _number(raw["cooldown_until"]),
            tuple(_number(t) for t in run_times),
            _number(raw["exhausted_until"]),
        )
    return entries
