"""The one write helper: exclusive no-follow temporary files, fixed modes, atomic replace."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rctlpolicy import safeio


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mode", [safeio.PUBLIC_MODE, safeio.STATE_MODE])
@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_write_atomic_sets_the_mode_whatever_the_umask(
    tmp_path: Path, mode: int, umask: int
) -> None:
    old = os.umask(umask)
    try:
        safeio.write_atomic(tmp_path / "f", "hello\n", mode=mode)
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_text() == "hello\n"
    assert _mode(tmp_path / "f") == mode


def test_write_atomic_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = tmp_path / "rctlpolicy.pid"
    link.symlink_to(victim)
    safeio.write_atomic(link, "123\n", mode=safeio.PUBLIC_MODE)
    assert victim.read_text() == "root's file\n"
    assert not link.is_symlink()
    assert link.read_text() == "123\n"


def test_write_atomic_leaves_no_temporary_file_and_uses_unpredictable_names(
    tmp_path: Path,
) -> None:
    for n in range(5):
        safeio.write_atomic(tmp_path / "state.json", f"{n}", mode=safeio.STATE_MODE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    names = {safeio._temporary_name("x") for _ in range(100)}
    assert len(names) == 100
    assert all(name != f".x.{os.getpid()}" for name in names)


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_text("old")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OSError):
        safeio.write_atomic(tmp_path / "sub", "x", mode=0o600)  # a directory is in the way
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t"]


def test_lock_and_append_refuse_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    link = tmp_path / "applied.json.lock"
    link.symlink_to(victim)
    with pytest.raises(safeio.UnsafeStateFileError, match="symbolic link"):
        safeio.open_lock_file(link)
    with pytest.raises(safeio.UnsafeStateFileError, match="symbolic link"):
        safeio.open_append(link)
    with pytest.raises(safeio.UnsafeStateFileError, match="symbolic link"):
        safeio.read_bytes(link)
    assert victim.read_text() == "x"


def test_lock_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "lock"
    os.mkfifo(fifo)
    with pytest.raises(safeio.UnsafeStateFileError, match="not a regular file"):
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so the open below does not block
        try:
            safeio.open_lock_file(fifo)
        finally:
            os.close(fd)


def test_read_bytes_limit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"x" * 10)
    assert safeio.read_bytes(path, limit=10) == b"x" * 10
    with pytest.raises(OSError, match="larger than 9"):
        safeio.read_bytes(path, limit=9)
    with pytest.raises(FileNotFoundError):
        safeio.read_bytes(tmp_path / "missing")


def test_make_directory_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        made = safeio.make_directory(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert made.is_dir()
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    safeio.make_directory(tmp_path / "open")  # an existing directory is left alone
    assert _mode(tmp_path / "open") == 0o755
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        safeio.make_directory(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(safeio.UnsafeStateFileError):
        safeio.make_directory(tmp_path / "dangling" / "x")
    assert not (tmp_path / "nowhere").exists()
