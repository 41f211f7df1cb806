"""The devd double, through real unix sockets and raw client sockets."""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rctlpolicy.devd import SocketKind, format_rctl_event
from rctlpolicy.devdserver import DROP_MESSAGE, REAP_MESSAGE, DevdServer

LINE = format_rctl_event("jail:pgjail:swapuse:devctl=536870912", 4242, 770, "pgjail")
Connect = Callable[..., socket.socket]


@pytest.fixture
def server(sockdir: Path) -> Iterator[DevdServer]:
    with DevdServer(sockdir, check_interval=0.05, full_check_interval=0.05) as devd:
        yield devd


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Raw client sockets, closed at the end of the test."""
    opened: list[socket.socket] = []

    def _connect(path: Path, kind: SocketKind, timeout: float = 2.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind.socktype)
        opened.append(sock)
        sock.settimeout(timeout)
        sock.connect(str(path))
        return sock

    yield _connect
    for sock in opened:
        sock.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_binds_both_sockets_world_accessible(sockdir: Path) -> None:
    # devd removes whatever is at the path first, even a regular file.
    (sockdir / "devd.pipe").write_text("stale")
    with DevdServer(sockdir) as devd:
        assert devd.seqpacket_path == sockdir / "devd.seqpacket.pipe"
        assert devd.stream_path == sockdir / "devd.pipe"
        for path in (devd.seqpacket_path, devd.stream_path):
            mode = path.stat().st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o666


def test_seqpacket_one_recv_is_one_event(server: DevdServer, connect: Connect) -> None:
    client = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(1, timeout=5)
    lines = [LINE, b"!system=DEVFS subsystem=CDEV type=CREATE cdev=md0\n", b"!x=1\n"]
    for line in lines:
        assert server.send(line) == 1
    assert [client.recv(8192) for _ in lines] == lines


def test_stream_events_are_concatenated(server: DevdServer, connect: Connect) -> None:
    client = connect(server.stream_path, SocketKind.STREAM)
    assert server.wait_for_clients(1, timeout=5)
    lines = [LINE, b"!system=IFNET subsystem=em0 type=LINK_UP\n"]
    for line in lines:
        server.send(line)
    assert recv_exactly(client, sum(map(len, lines))) == b"".join(lines)


@pytest.mark.parametrize("kind", list(SocketKind))
def test_devd_never_reads_from_clients(
    server: DevdServer, connect: Connect, kind: SocketKind
) -> None:
    client = connect(
        server.seqpacket_path if kind is SocketKind.SEQPACKET else server.stream_path, kind
    )
    assert server.wait_for_clients(1, timeout=5)
    # shutdown(SHUT_RD) on devd's end: what a client writes fails with EPIPE on Linux.
    with pytest.raises(BrokenPipeError):
        client.send(b"subscribe me\n")
    assert server.send(LINE) == 1


def test_client_that_does_not_read_is_dropped(
    server: DevdServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    lazy = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(1, timeout=5)
    caplog.set_level(logging.WARNING, logger="rctlpolicy.devdserver")
    sent = 0
    while server.client_count and sent < 100_000:
        delivered = server.send(LINE)
        sent += delivered
    assert server.client_count == 0
    assert server.dropped_total == 1
    assert sent > 100  # the enlarged send buffer held a good number first
    assert caplog.messages == [DROP_MESSAGE]
    # What was queued before the drop is still readable, whole, then EOF.
    received = [lazy.recv(8192) for _ in range(sent)]
    assert set(received) == {LINE}
    assert lazy.recv(8192) == b""


def test_short_write_gives_stream_client_a_fragment_then_eof(
    server: DevdServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    stream = connect(server.stream_path, SocketKind.STREAM)
    seqpacket = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(2, timeout=5)
    caplog.set_level(logging.WARNING, logger="rctlpolicy.devdserver")
    server.simulate_short_write(20)
    assert server.send(LINE) == 1
    assert recv_exactly(stream, 20) == LINE[:20]
    assert stream.recv(8192) == b""
    assert seqpacket.recv(8192) == LINE
    assert server.client_count == 1
    assert caplog.messages == [DROP_MESSAGE]
    # The simulation is one-shot: the next event reaches the survivor whole.
    assert server.send(LINE) == 1
    assert seqpacket.recv(8192) == LINE


def test_client_limit_counts_both_sockets_and_frees_slots(
    server: DevdServer, connect: Connect
) -> None:
    assert server.client_limit == 10
    clients = [
        connect(
            server.seqpacket_path if i % 2 else server.stream_path,
            SocketKind.SEQPACKET if i % 2 else SocketKind.STREAM,
        )
        for i in range(10)
    ]
    assert server.wait_for_clients(10, timeout=5)
    # Over the limit the connect may be parked in the backlog (Linux) or refused: never served.
    extra = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.send(LINE) == 10
    assert server.client_count == 10
    extra.setblocking(False)
    with pytest.raises(BlockingIOError):
        extra.recv(8192)

    clients[0].close()  # a hang-up frees a slot once devd notices it
    assert server.wait_for(lambda s: s.accepted_total == 11, timeout=5)
    assert server.reaped_total == 1
    assert server.client_count == 10
    assert server.send(LINE) == 10
    extra.setblocking(True)
    assert extra.recv(8192) == LINE


def test_hung_up_clients_are_reaped(
    server: DevdServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.devdserver")
    gone = connect(server.stream_path, SocketKind.STREAM)
    connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(2, timeout=5)
    gone.close()
    assert server.wait_for(lambda s: s.reaped_total == 1, timeout=5)
    assert server.client_count == 1
    assert REAP_MESSAGE in caplog.messages


def test_stop_leaves_stale_files_and_start_rebinds(server: DevdServer, connect: Connect) -> None:
    stream = connect(server.stream_path, SocketKind.STREAM)
    seqpacket = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(2, timeout=5)

    server.stop()
    assert stream.recv(8192) == b""
    assert seqpacket.recv(8192) == b""
    assert server.seqpacket_path.exists() and server.stream_path.exists()
    with pytest.raises(ConnectionRefusedError):
        connect(server.seqpacket_path, SocketKind.SEQPACKET)
    with pytest.raises(ConnectionRefusedError):
        connect(server.stream_path, SocketKind.STREAM)
    assert server.client_count == 0

    server.start()
    again = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(1, timeout=5)
    assert server.send(LINE) == 1
    assert again.recv(8192) == LINE


def test_restart_drops_clients_and_accepts_new_ones(server: DevdServer, connect: Connect) -> None:
    old = connect(server.seqpacket_path, SocketKind.SEQPACKET)
    assert server.wait_for_clients(1, timeout=5)
    server.restart()
    assert old.recv(8192) == b""
    assert server.running
    new = connect(server.stream_path, SocketKind.STREAM)
    assert server.wait_for_clients(1, timeout=5)
    server.send(LINE)
    assert recv_exactly(new, len(LINE)) == LINE


def test_stop_with_remove_files_gives_enoent(sockdir: Path, connect: Connect) -> None:
    devd = DevdServer(sockdir)
    devd.start()
    devd.stop(remove_files=True)
    assert not devd.running
    with pytest.raises(FileNotFoundError):
        connect(devd.seqpacket_path, SocketKind.SEQPACKET)
    devd.stop()  # a second stop is harmless


def test_send_without_clients_delivers_nothing(server: DevdServer) -> None:
    assert server.send(LINE) == 0
    assert server.events_sent == 1


def test_rejects_a_client_limit_below_one(sockdir: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DevdServer(sockdir, client_limit=0)
