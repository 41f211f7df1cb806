"""Watching the rules directory: which paths matter, and debouncing a burst of changes."""

from __future__ import annotations

import threading

import pytest

from rctlpolicy.watcher import ReloadDebouncer, is_policy_path


@pytest.mark.parametrize(
    ("path", "matters"),
    [
        ("/r/p.yaml", True),
        ("/r/rctl.conf", True),
        ("/r/p.yaml~", True),  # a backup appearing is a step of a save
        ("/r/base.conf.bak", True),
        ("/r/.p.yaml.swp", False),
        ("/r/4913", False),
        ("/r/notes.txt", False),
    ],
)
def test_which_paths_can_change_the_policy(path: str, matters: bool) -> None:
    assert is_policy_path(path) is matters


def test_the_debouncer_fires_once_after_a_burst_of_pokes() -> None:
    fired: list[int] = []
    done = threading.Event()

    def fire() -> None:
        fired.append(1)
        done.set()

    debouncer = ReloadDebouncer(0.05, fire)
    for _ in range(20):
        debouncer.poke()
    assert done.wait(5)
    debouncer.close()
    assert fired == [1]
