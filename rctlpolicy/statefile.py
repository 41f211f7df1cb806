"""Small JSON state files shared between processes: locked, written atomically, never fatal.

Used for the rules an apply added, the action engine's cooldowns across `handle` runs and the
simulated kernel's rules: each is read and changed under an exclusive flock(2) on a lock file
beside it, and replaced with rename(2) so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("rctlpolicy.state")


class JsonStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's lock; `load` and `save` are then safe to call."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.warning("cannot read state file %s (%s); starting from empty", self.path, error)
            return {}
        try:
            data = json.loads(text)
        except ValueError as error:
            log.warning("state file %s is corrupt (%s); starting from empty", self.path, error)
            return {}
        if not isinstance(data, dict):
            log.warning("state file %s does not hold an object; starting from empty", self.path)
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        fd, temp = tempfile.mkstemp(
            prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                # dumps, not dump: only the one-shot path uses the C encoder (states can be big).
                handle.write(json.dumps(data, separators=(",", ":")))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def read(self) -> dict[str, Any]:
        with self.locked():
            return self.load()

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change the dict, write it back: all under the lock."""
        with self.locked():
            data = self.load()
            yield data
            self.save(data)
