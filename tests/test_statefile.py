"""JSON state files: locked, written through safeio (mode 0600, no symlink followed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rctlpolicy.apply import AppliedRules
from rctlpolicy.safeio import UnsafeStateFileError
from rctlpolicy.statefile import JsonStateFile


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_and_its_directory_are_private_whatever_the_umask(tmp_path: Path) -> None:
    state = JsonStateFile(tmp_path / "db" / "rctlpolicy" / "applied.json")
    old = os.umask(0)
    try:
        with state.update() as data:
            data["owned"] = ["jail:db1:maxproc:deny=100"]
    finally:
        os.umask(old)
    assert state.read() == {"owned": ["jail:db1:maxproc:deny=100"]}
    assert _mode(state.path) == 0o600
    assert _mode(state.lock_path) == 0o600
    assert _mode(state.path.parent) == 0o700
    assert _mode(state.path.parent.parent) == 0o700
    assert sorted(p.name for p in state.path.parent.iterdir()) == [
        "applied.json",
        "applied.json.lock",
    ]


def test_a_planted_symlink_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text('{"owned": ["planted"]}')
    applied = AppliedRules.in_dir(tmp_path)
    applied.path.symlink_to(victim)
    assert applied.owned() == set()  # not read through the link either
    with applied.file.update() as data:
        data["owned"] = []
    assert victim.read_text() == '{"owned": ["planted"]}'
    assert not applied.path.is_symlink()


def test_a_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    state = JsonStateFile(tmp_path / "applied.json")
    state.lock_path.symlink_to(victim)
    with pytest.raises(UnsafeStateFileError), state.update():
        pass
    assert victim.read_text() == "keep\n"


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_state_reads_as_empty(tmp_path: Path, content: bytes) -> None:
    state = JsonStateFile(tmp_path / "applied.json")
    state.path.write_bytes(content)
    assert state.read() == {}
