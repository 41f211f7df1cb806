"""Noticing changes to the rules directory: watchdog's observer, debounced into reload requests.

watchdog is imported when a watcher is made: lint and the one-shot commands never load it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from rctlpolicy.files import POLICY_SUFFIXES, is_editor_droppings
from rctlpolicy.policyload import BACKUP_SUFFIXES


class ReloadDebouncer:
    """watchdog events -> one reload request once the directory has been quiet for a while,
    so an editor's save (temp file, rename, backup dance, truncate-and-write) is one reload."""

    def __init__(self, delay: float, fire: Callable[[], None]) -> None:
        self.delay = delay
        self.fire = fire
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def poke(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.delay, self.fire)
            self._timer.daemon = True
            self._timer.name = "rctlpolicy-reload-debounce"
            self._timer.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer.is_alive() and timer is not threading.current_thread():
                timer.join(1.0)


def is_policy_path(path: str) -> bool:
    """Whether a change to `path` may change the policy (a policy file, or an editor's backup
    of one: its appearing or going away is a step of a save)."""
    name = os.path.basename(path)
    if name.endswith(BACKUP_SUFFIXES):
        name = name.removesuffix("~").removesuffix(".bak")
    return name.endswith(POLICY_SUFFIXES) and not is_editor_droppings(name)


class RulesWatcher:
    """Watches the rules directory with watchdog and pokes `changed` on every relevant event."""

    def __init__(self, directory: Path, changed: Callable[[], None]) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if event.is_directory or any(p and is_policy_path(p) for p in paths):
                    changed()

        self.observer = Observer()
        self.observer.name = "rctlpolicy-rules-watcher"
        self.observer.daemon = True
        self.observer.schedule(Handler(), str(directory), recursive=False)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5.0)
