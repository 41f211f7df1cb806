"""Watching the rules directory: which paths matter."""

from __future__ import annotations

import pytest

from rctlpolicy.watcher import is_policy_path


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
