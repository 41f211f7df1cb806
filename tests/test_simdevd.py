"""The simulated host's devd: the kernel's RCTL lines on devd's sockets as usage changes.

`SimDevd.tick()` is called by hand (the thread's interval is an hour), so each evaluation is a
step of the test; the `sim devd` command is run as a real process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import PYTHON, LogLines, SimHost, short_tempdir

from rctlpolicy import simdevd as simdevd_module
from rctlpolicy.devd import format_rctl_event
from rctlpolicy.kernel import open_simulator
from rctlpolicy.model import Action, Resource, Rule, SubjectType
from rctlpolicy.simdevd import SimDevd

DB1_DEVCTL = Rule(
    SubjectType.JAIL, "db1", Resource.MEMORYUSE, Action.DEVCTL, 4 * 1024**3, SubjectType.JAIL
)
DB1_LOG = Rule(
    SubjectType.JAIL, "db1", Resource.MEMORYUSE, Action.LOG, 4 * 1024**3, SubjectType.JAIL
)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with short_tempdir() as directory:
        yield directory


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.settimeout(10)
    client.connect(str(path))
    return client


def test_a_devctl_rule_crossing_sends_the_kernel_line_once_per_episode(
    tmp_path: Path, socket_dir: Path
) -> None:
    host = SimHost(tmp_path / "host.yaml")
    setup = open_simulator(host.path)
    setup.kernel.add_rule(DB1_DEVCTL)
    setup.kernel.add_rule(DB1_LOG)
    sim = SimDevd(setup, socket_dir, interval=3600)
    sim.start()
    try:
        with connect(sim.server.seqpacket_path) as client:
            assert sim.server.wait_for_clients(1, 10)
            assert sim.tick() == 0  # 3.6 GiB: under the limit
            host.set_usage("jail:db1", "memoryuse", 5 * 1024**3)
            assert sim.tick() == 1  # the log rule fires too, but only to the log
            expected = format_rctl_event(DB1_DEVCTL.canonical, 4242, 770, "db1")
            assert client.recv(8192) == expected
            assert sim.tick() == 0  # the same episode
            host.set_usage("jail:db1", "memoryuse", 1024**3)
            assert sim.tick() == 0  # the episode ends
            host.set_usage("jail:db1", "memoryuse", 5 * 1024**3)
            assert sim.tick() == 1  # a new one
            assert client.recv(8192) == expected
            assert sim.sent == 2
    finally:
        sim.stop()
    assert not sim.server.seqpacket_path.exists()


def test_a_host_file_too_deep_for_a_socket_path_gets_a_temporary_directory(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    host = SimHost(deep / "host.yaml")
    sim = SimDevd(open_simulator(host.path), interval=3600)
    directory = sim.server.directory
    assert not str(directory).startswith(str(tmp_path))
    sim.start()
    try:
        with connect(sim.server.seqpacket_path):
            assert sim.server.wait_for_clients(1, 10)
    finally:
        sim.stop()
    assert not directory.exists()


def test_a_short_host_path_keeps_the_sockets_beside_it(socket_dir: Path) -> None:
    host = SimHost(socket_dir / "h.yaml")
    sim = SimDevd(open_simulator(host.path), interval=3600)
    assert sim.server.directory == socket_dir / "h.yaml.devd"


def receive_an_episode(client: socket.socket, host: SimHost, timeout: float = 10) -> bytes:
    """Push jail db1 over its limit until a line arrives. The server in another process may
    accept us a moment after connect() returns, and an episode is reported once: if it went
    out before, end it and start another."""
    deadline = time.monotonic() + timeout
    client.settimeout(0.5)
    while time.monotonic() < deadline:
        host.set_usage("jail:db1", "memoryuse", 5 * 1024**3)
        try:
            return client.recv(8192)
        except TimeoutError:
            host.set_usage("jail:db1", "memoryuse", 1024**3)
            time.sleep(0.2)  # a few of the server's 0.05 s evaluations see the episode end
    raise AssertionError("no RCTL line from the simulated devd")


def test_the_sim_devd_command_serves_until_sigterm(tmp_path: Path, socket_dir: Path) -> None:
    host = SimHost(tmp_path / "host.yaml")
    added = host.rctl("-a", DB1_DEVCTL.canonical)
    assert added.returncode == 0, added.stderr
    env = {k: v for k, v in os.environ.items() if k != "RCTLPOLICY_SIM_HOST"}
    proc = subprocess.Popen(
        [PYTHON, "-m", "rctlpolicy", "sim", "devd", "--sim-host", str(host.path),
         "--directory", str(socket_dir), "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    log = LogLines(proc.stdout)
    try:
        log.wait_for(r"simulated devd: \S+devd\.seqpacket\.pipe")
        with connect(socket_dir / "devd.seqpacket.pipe") as client:
            line = receive_an_episode(client, host)
        assert line == format_rctl_event(DB1_DEVCTL.canonical, 4242, 770, "db1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.join(5)
        proc.stdout.close()


def test_a_second_simulated_devd_on_the_same_directory_is_refused(
    tmp_path: Path, socket_dir: Path
) -> None:
    host = SimHost(tmp_path / "host.yaml")
    first = SimDevd(open_simulator(host.path), socket_dir, interval=3600)
    second = SimDevd(open_simulator(host.path), socket_dir, interval=3600)
    first.start()
    try:
        socket_inode = first.server.seqpacket_path.stat().st_ino
        with pytest.raises(OSError) as refused:
            second.start()
        assert refused.value.errno == errno.EADDRINUSE  # its socket answers
        second.stop()  # stopping the refused one touches nothing of the first's
        # The first one's sockets are still its own, and still served.
        assert first.server.seqpacket_path.stat().st_ino == socket_inode
        with connect(first.server.seqpacket_path):
            assert first.server.wait_for_clients(1, 10)
    finally:
        first.stop()
    second.start()  # free again once the first has stopped
    second.stop()


def test_a_socket_served_by_one_that_never_accepts_is_refused_not_waited_on(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A devd (or anything) listening on the socket with its listen queue full: a blocking
    # connect would wait for ever, and a timed-out one must not pass for "nobody is there".
    monkeypatch.setattr(simdevd_module, "PROBE_TIMEOUT", 0.1)
    path = socket_dir / "devd.seqpacket.pipe"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    queued: list[socket.socket] = []
    try:
        listener.bind(str(path))
        listener.listen(0)
        while True:  # fill the listen queue
            client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            client.setblocking(False)
            queued.append(client)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        inode = path.stat().st_ino
        sim = SimDevd(open_simulator(SimHost(tmp_path / "host.yaml").path), socket_dir)
        with pytest.raises(OSError) as refused:
            sim.start()
        assert refused.value.errno == errno.EADDRINUSE
        assert "not accepting" in str(refused.value)
        sim.stop()
        assert path.stat().st_ino == inode  # its socket left alone
    finally:
        for client in queued:
            client.close()
        listener.close()


def test_stop_removes_only_what_this_simulated_devd_made(tmp_path: Path, socket_dir: Path) -> None:
    host = SimHost(socket_dir / "h.yaml")
    # A directory it creates goes entirely.
    sim = SimDevd(open_simulator(host.path), interval=3600)
    made = sim.server.directory
    assert not made.exists()
    sim.start()
    assert sorted(p.name for p in made.iterdir()) == ["devd.pipe", "devd.seqpacket.pipe"]
    sim.stop()
    assert not made.exists()
    # In a directory that was there, other files stay, and so does a socket someone else
    # bound in place of one of ours meanwhile; the directory stays.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("not ours")
    sim = SimDevd(open_simulator(host.path), shared, interval=3600)
    sim.start()
    sim.server.stream_path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(sim.server.stream_path))
        sim.stop()
    finally:
        other.close()
    assert sorted(p.name for p in shared.iterdir()) == ["devd.pipe", "keep.txt"]


def test_the_lock_keeps_a_second_simulated_devd_out_before_the_sockets_answer(
    tmp_path: Path, socket_dir: Path
) -> None:
    host = SimHost(tmp_path / "host.yaml")
    sim = SimDevd(open_simulator(host.path), socket_dir, interval=3600)
    # Another simulated devd between its lock and its bind: nothing answers yet.
    held = os.open(socket_dir, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OSError) as refused:
            sim.start()
        assert refused.value.errno == errno.EBUSY
        assert "another simulated devd" in str(refused.value)
        assert list(socket_dir.iterdir()) == []
    finally:
        os.close(held)
    sim.start()
    sim.stop()
