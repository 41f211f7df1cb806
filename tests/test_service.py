"""The daemon's process: its pidfile (written like every other file, through safeio)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rctlpolicy.service import remove_pidfile, write_pidfile


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_the_pidfile_holds_our_pid_with_mode_0644_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    pidfile = tmp_path / "rctlpolicy.pid"
    old = os.umask(umask)
    try:
        write_pidfile(pidfile)
    finally:
        os.umask(old)
    assert pidfile.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["rctlpolicy.pid"]  # no temporary file left


def test_a_user_who_can_write_the_pidfile_directory_cannot_redirect_the_write(
    tmp_path: Path,
) -> None:
    """The old temporary name, `.NAME.PID`, was predictable: a symlink planted under it made
    the daemon (root) overwrite any file. Neither that nor a symlink at the pidfile's own name
    is followed now."""
    victim = tmp_path / "master.passwd"
    victim.write_text("root's file\n")
    pidfile = tmp_path / "rctlpolicy.pid"
    (tmp_path / f".rctlpolicy.pid.{os.getpid()}").symlink_to(victim)
    write_pidfile(pidfile)
    assert victim.read_text() == "root's file\n"
    assert pidfile.read_text() == f"{os.getpid()}\n"

    pidfile.unlink()
    pidfile.symlink_to(victim)
    write_pidfile(pidfile)
    assert victim.read_text() == "root's file\n"
    assert not pidfile.is_symlink()
    assert pidfile.read_text() == f"{os.getpid()}\n"


def test_the_pidfile_is_removed_only_while_it_is_ours(tmp_path: Path) -> None:
    pidfile = tmp_path / "rctlpolicy.pid"
    write_pidfile(pidfile)
    remove_pidfile(pidfile)
    assert not pidfile.exists()
    pidfile.write_text("1\n")  # another daemon's, started since
    remove_pidfile(pidfile)
    assert pidfile.read_text() == "1\n"
    remove_pidfile(tmp_path / "absent.pid")  # nothing to remove: no error
