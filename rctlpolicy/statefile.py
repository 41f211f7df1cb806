"""Small JSON state files shared between processes: locked, written atomically, never fatal.

Used for the rules an apply added, the action engine's cooldowns across `handle` runs and the
simulated kernel's rules: each is read and changed under an exclusive flock(2) on a lock file
beside it, and replaced through `rctlpolicy.safeio` (an unpredictable no-follow temporary file,
fsync, rename, mode 0600), so a reader never sees half a file and nobody who can write the state
directory can redirect a write. The directory is created 0700.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rctlpolicy import safeio

log = logging.getLogger("rctlpolicy.state")


class JsonStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's lock; `load` and `save` are then safe to call."""
        safeio.make_directory(self.path.parent)
        with safeio.locked(self.lock_path):
            yield

    def load(self) -> dict[str, Any]:
        try:
            raw = safeio.read_bytes(self.path)
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.warning("cannot read state file %s (%s); starting from empty", self.path, error)
            return {}
        try:
            data = json.loads(raw)
        except ValueError as error:
            log.warning("state file %s is corrupt (%s); starting from empty", self.path, error)
            return {}
        if not isinstance(data, dict):
            log.warning("state file %s does not hold an object; starting from empty", self.path)
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        # dumps, not dump: only the one-shot path uses the C encoder (states can be big).
        text = json.dumps(data, separators=(",", ":"))
        safeio.write_atomic(self.path, text, mode=safeio.STATE_MODE)

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
