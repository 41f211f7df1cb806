"""Fixtures every test gets, and the markers the suite uses.

Keep this file small: a fixture belongs here only if many test modules want it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Env, short_tempdir

from rctlpolicy.kernel.hostfile import default_host_path

#: How long a thread started by a test may take to finish after the test returns.
THREAD_GRACE_SECONDS = 5.0


def pytest_configure(config: pytest.Config) -> None:
    # Registered so that `-W error` does not turn the marker into an unknown-mark error.
    config.addinivalue_line("markers", "slow: runs real external tools; takes seconds to minutes")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (it would disturb the tests after it)."""
    before = set(threading.enumerate())
    yield
    # A thread told to stop may need a moment to notice: join with one deadline, never sleep.
    deadline = time.monotonic() + THREAD_GRACE_SECONDS
    for thread in set(threading.enumerate()) - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A copy of the bundled simulated host: jails db1 (jid 3), web1, web2; postgres is pid
    4242; www is uid 80. Tests edit it freely."""
    path = tmp_path / "host.yaml"
    shutil.copyfile(default_host_path(), path)
    return path


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets: sun_path holds about 100 bytes, and pytest's
    tmp_path is too long for a socket path."""
    path = Path(tempfile.mkdtemp(prefix="rp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A daemon test's world (`daemon_helpers.Env`): a simulated host, a rules directory, a
    devd double on a short socket path; its daemons are killed at the end."""
    with short_tempdir() as socket_dir:
        world = Env(tmp_path, socket_dir)
        try:
            yield world
        finally:
            world.close()
