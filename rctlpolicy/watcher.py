"""Noticing changes to the rules directory: watchdog's observer, turned into `changed()` calls.

The directory itself can go away and come back (`rm -rf rules; mkdir rules`, a configuration
tool that replaces it, a restore): watchdog's watch dies with the directory it watched, so the
parent directory is watched too, and the watch is made again on the new directory as soon as
it appears (and, should that event be missed, at the next `check()`). Every change, the
re-creation included, calls `changed()`; the reload pipeline decides what it means.

watchdog is imported when a watcher is made: lint and the one-shot commands never load it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rctlpolicy.files import POLICY_SUFFIXES, is_editor_droppings
from rctlpolicy.policyload import BACKUP_SUFFIXES

if TYPE_CHECKING:
    from watchdog.observers.api import ObservedWatch

log = logging.getLogger("rctlpolicy")


def is_policy_path(path: str) -> bool:
    """Whether a change to `path` may change the policy (a policy file, or an editor's backup
    of one: its appearing or going away is a step of a save)."""
    name = os.path.basename(path)
    if name.endswith(BACKUP_SUFFIXES):
        name = name.removesuffix("~").removesuffix(".bak")
    return name.endswith(POLICY_SUFFIXES) and not is_editor_droppings(name)


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


class RulesWatcher:
    """Watches the rules directory (and its parent, for the directory itself) with watchdog."""

    def __init__(self, directory: Path, changed: Callable[[], None]) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.directory = directory
        self._changed = changed
        self._lock = threading.Lock()
        self._watch: ObservedWatch | None = None
        self._watched: tuple[int, int] | None = None
        outer = self
        own_path = os.path.normpath(directory)

        class Contents(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if event.is_directory or any(p and is_policy_path(p) for p in paths):
                    changed()

        class Parent(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
                if own_path in (os.path.normpath(p) for p in paths if p):
                    # Made again even if the new directory has the old one's inode number.
                    outer.check(force=event.event_type in ("created", "moved", "deleted"))

        self._contents = Contents()
        self.observer = Observer()
        self.observer.name = "rctlpolicy-rules-watcher"
        self.observer.daemon = True
        self.observer.schedule(Parent(), str(directory.parent), recursive=False)
        self._arm()

    def _arm(self, force: bool = False) -> bool:
        """Watch the directory that is there now; True when it is another than before."""
        with self._lock:
            now = _identity(self.directory)
            if not force and now == self._watched and (now is None or self._watch is not None):
                return False
            if self._watch is not None:
                try:
                    self.observer.unschedule(self._watch)
                except (KeyError, OSError):  # its emitter already ended with the directory
                    pass
                self._watch = None
            self._watched = now
            if now is not None:
                try:
                    self._watch = self.observer.schedule(
                        self._contents, str(self.directory), recursive=False
                    )
                except OSError as error:
                    log.error("cannot watch %s (%s); reload with SIGHUP", self.directory, error)
                    self._watched = None
            return True

    def check(self, force: bool = False) -> None:
        """Watch the directory again if it was replaced (and say that it changed)."""
        if self._arm(force):
            if self._watched is not None:
                log.info("watching %s again (it was replaced)", self.directory)
            self._changed()

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5.0)
