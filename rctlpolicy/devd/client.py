"""The devd(8) socket client: a reader thread that only receives.

:class:`DevdClient` holds a connection to devd's SOCK_SEQPACKET socket (falling back to the
deprecated SOCK_STREAM one), receives records (many per system call, :mod:`.batch`) and puts
each record's raw bytes on a bounded queue; parsing is the consumer's (:mod:`.message`). It
never writes to devd, never blocks on the consumer (a record that does not fit is dropped and
counted) and reconnects with backoff when devd goes away.

Wire facts (freebsd-integration.md sections 1 and 2, checked against ``sbin/devd/devd.cc``;
docs/fidelity.md): one event per seqpacket record, newline framing on the stream socket, devd
never reads from clients, drops a client on its first failed send and keeps no history, so a
reconnect must be followed by a resync. devd may also leave a new connection unaccepted in
its listen queue while at its client limit (``devd -l``): a connection counts as receiving only
once its first record arrives (:class:`Receiving`).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from rctlpolicy.devd.batch import BatchReceiver
from rctlpolicy.devd.message import DEVCTL_MAXBUF

log = logging.getLogger("rctlpolicy.devd")

#: devd's preferred socket: one event per record.
SEQPACKET_PATH = "/var/run/devd.seqpacket.pipe"
#: devd's "deprecated socket retained for use with old clients": newline framing.
STREAM_PATH = "/var/run/devd.pipe"
#: The receive buffer asked for; halved until the system accepts it. devd's own send buffer
#: (256 KiB) bounds what is in flight on FreeBSD up to 14; FreeBSD 15 queues a seqpacket
#: sender's records in the receiver's buffer (docs/fidelity.md), so this one counts there.
RECEIVE_BUFFER = 1 << 20
#: Records taken per recvmmsg(2) call.
BATCH = 64


class SocketKind(StrEnum):
    """Which of devd's two sockets a connection uses."""

    SEQPACKET = "seqpacket"
    STREAM = "stream"

    @property
    def socktype(self) -> int:
        return socket.SOCK_SEQPACKET if self is SocketKind.SEQPACKET else socket.SOCK_STREAM


@dataclass(frozen=True, slots=True)
class Connected:
    """The reader connected to devd; events before this moment were missed: resynchronise."""

    path: str
    kind: SocketKind


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The reader lost devd (``EOF``, a socket error or ``stopped``); it reconnects with backoff."""

    reason: str


@dataclass(frozen=True, slots=True)
class Receiving:
    """The first record of a connection arrived: devd has accepted us and sends to us.

    Until then a connection may sit unaccepted in devd's listen queue (devd at its client
    limit), hearing nothing; what happened meanwhile is unknown, so resynchronise again.
    """

    path: str
    kind: SocketKind


#: What the reader puts on its queue: a record's bytes (no trailing newline) or a transition.
DevdItem: TypeAlias = bytes | Connected | Receiving | Disconnected
#: The transitions among the items.
Transition: TypeAlias = Connected | Receiving | Disconnected


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``initial * factor**n``, at most ``cap``."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the given attempt."""
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)


class LineFramer:
    """Splits devd's stream socket into lines; holds an unterminated fragment until more arrives.

    A fragment longer than ``max_line`` cannot be a devd event (devd forwards at most 8191 bytes
    per event); it is dropped up to the next newline and counted in ``oversized``.
    """

    def __init__(self, max_line: int = DEVCTL_MAXBUF) -> None:
        self._max_line = max_line
        self._pending = bytearray()
        self._skipping = False
        self.oversized = 0

    @property
    def pending(self) -> int:
        """Bytes held of an unterminated line."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines, without their newline."""
        self._pending += data
        *lines, rest = bytes(self._pending).split(b"\n")
        if lines and self._skipping:
            lines.pop(0)  # the tail of an oversized line
            self._skipping = False
        self._pending = bytearray(rest)
        if len(self._pending) > self._max_line:
            self._pending.clear()
            if not self._skipping:
                self.oversized += 1
            self._skipping = True
        return lines

    def take_fragment(self) -> bytes:
        """Remove and return the unterminated fragment (at EOF it is discarded, never delivered)."""
        fragment = bytes(self._pending)
        self._pending.clear()
        self._skipping = False
        return fragment


class DevdClient:
    """A reader thread on devd's socket that feeds a queue and survives devd restarts.

    The thread only connects, receives and puts items on ``out``: each record's bytes (without
    its trailing newline; the consumer parses them) and the transitions :class:`Connected`,
    :class:`Receiving` (the connection's first record is next) and :class:`Disconnected`. It
    never blocks on the consumer for a record (``put_nowait``; records that do not fit a bounded
    queue, or a queue already holding ``limit`` items, are counted in ``dropped``), never
    writes to the socket, and never runs actions, so devd does not drop it as an unresponsive
    client. The socket's receive buffer is asked for
    at ``receive_buffer`` bytes (halved until accepted). Where the system marks the end of a
    seqpacket record (``require_eor``, FreeBSD by default), a record without MSG_EOR is a part
    of one (FreeBSD 15 queues what fits of a record for a reader that fell behind, then devd
    drops that client): it is discarded and counted in ``fragments_discarded``, as the
    stream socket's unterminated last line is. On EOF or an error it reconnects: first
    the SOCK_SEQPACKET path, then the SOCK_STREAM path, waiting ``backoff.delay(n)`` between
    attempts.

    ``wait`` replaces the backoff sleep (tests pass a recorder); by default the wait is on the
    client's stop event, so :meth:`stop` interrupts it. ``on_transition`` is called on the reader
    thread for each transition, in addition to the queue item; it must not block.
    """

    def __init__(
        self,
        out: queue.Queue[DevdItem] | queue.SimpleQueue[DevdItem],
        *,
        seqpacket_path: str | os.PathLike[str] | None = SEQPACKET_PATH,
        stream_path: str | os.PathLike[str] | None = STREAM_PATH,
        backoff: Backoff | None = None,
        wait: Callable[[float], object] | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        connect_timeout: float = 2.0,
        recv_size: int = DEVCTL_MAXBUF,
        receive_buffer: int = RECEIVE_BUFFER,
        batch: int = BATCH,
        require_eor: bool | None = None,
        limit: int | None = None,
        name: str = "devd-reader",
    ) -> None:
        if recv_size < DEVCTL_MAXBUF:
            raise ValueError(f"recv_size must be at least {DEVCTL_MAXBUF} (devd's event buffer)")
        candidates: list[tuple[str, SocketKind]] = []
        if seqpacket_path is not None:
            candidates.append((os.fspath(seqpacket_path), SocketKind.SEQPACKET))
        if stream_path is not None:
            candidates.append((os.fspath(stream_path), SocketKind.STREAM))
        if not candidates:
            raise ValueError("DevdClient needs a seqpacket_path or a stream_path")
        self._out = out
        self._limit = limit
        self._candidates = tuple(candidates)
        self._backoff = backoff if backoff is not None else Backoff()
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._on_transition = on_transition
        self._connect_timeout = connect_timeout
        self._recv_size = recv_size
        self._receive_buffer = receive_buffer
        self._batch = batch
        # FreeBSD marks the end of each seqpacket record (MSG_EOR); Linux never does.
        self._require_eor = (
            sys.platform.startswith("freebsd") if require_eor is None else require_eor
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._wake_r = -1
        self._wake_w = -1
        self._connected = False
        self._receiving = False
        self._connects = 0
        self.lines = 0
        self.dropped = 0
        self.fragments_discarded = 0
        self.oversized = 0
        self.records_truncated = 0
        #: The receive buffer the last connection got (what the system reports), 0 before one.
        self.receive_buffer = 0
        #: Whether the last seqpacket connection received with recvmmsg(2).
        self.batched = False

    # -- public surface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the reader currently holds a connection to devd."""
        return self._connected

    @property
    def receiving(self) -> bool:
        """Whether a record has arrived on the current connection (devd accepted us)."""
        return self._receiving

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self._connects - 1)

    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread.ident is not None:
            raise RuntimeError("DevdClient.start() called twice")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the reader and join it; True if the thread ended within ``timeout`` seconds."""
        self._stop.set()
        if self._thread.ident is None:
            return True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # a byte is already waiting, or the pipe is gone: the reader will see stop
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("devd reader did not stop within %.1f s", timeout)
            return False
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        return True

    def __enter__(self) -> DevdClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        failing_since_log = False
        while not self._stop.is_set():
            connection = self._connect()
            if isinstance(connection, str):
                # Log the first failure of a series loudly, the retries quietly.
                level = logging.DEBUG if failing_since_log else logging.WARNING
                delay = self._backoff.delay(attempt)
                log.log(level, "cannot connect to devd (%s); retrying in %.1f s", connection, delay)
                failing_since_log = True
                attempt += 1
                self._wait(delay)
                continue
            sock, path, kind = connection
            failing_since_log = False
            self._connects += 1
            self._connected = True
            log.info("connected to devd at %s (%s)", path, kind)
            self._transition(Connected(path, kind))
            try:
                reason = self._pump(sock, path, kind)
            finally:
                if self._receiving:
                    attempt = 0  # devd served us: a restart is waited for from the start
                self._connected = False
                self._receiving = False
                sock.close()
            log.log(
                logging.INFO if reason == "stopped" else logging.WARNING,
                "disconnected from devd: %s",
                reason,
            )
            self._transition(Disconnected(reason))
            if self._stop.is_set():
                break
            # A peer that accepts and hangs up before its first record is retried with the
            # backoff growing, not every `initial` seconds with a resync each time.
            self._wait(self._backoff.delay(attempt))
            attempt += 1

    def _connect(self) -> tuple[socket.socket, str, SocketKind] | str:
        """A connected non-blocking socket, or why no candidate path could be connected."""
        errors: list[str] = []
        for path, kind in self._candidates:
            sock = socket.socket(socket.AF_UNIX, kind.socktype)
            self.receive_buffer = _ask_receive_buffer(sock, self._receive_buffer)
            try:
                # A bounded connect: at its client limit devd stops accepting, and a connect
                # into a full backlog must not hang the reader.
                sock.settimeout(self._connect_timeout)
                sock.connect(path)
            except OSError as exc:
                sock.close()
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            sock.setblocking(False)
            return sock, path, kind
        return "; ".join(errors)

    def _pump(self, sock: socket.socket, path: str, kind: SocketKind) -> str:
        """Receive until EOF, an error or stop; return the reason."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        if kind is SocketKind.STREAM:
            return self._pump_stream(sock, path, kind, poller)
        receiver = BatchReceiver(sock, self._recv_size, self._batch)
        self.batched = receiver.batched
        while True:
            poller.poll()
            if self._stop.is_set():
                return "stopped"
            # Drain what is there: one call takes up to a batch of records.
            while True:
                try:
                    records = receiver.receive()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    return f"recv failed: {exc.strerror or exc}"
                if not records:
                    return "EOF"
                if not self._receiving:
                    self._first_record(path, kind)
                for data, cut, eor in records:
                    if cut:
                        self.records_truncated += 1
                        log.warning("devd record longer than %d bytes was cut", self._recv_size)
                    elif self._require_eor and not eor:
                        # FreeBSD 15 queues what fits of a record into a reader that fell
                        # behind, and devd then drops the client: the rest never comes.
                        self.fragments_discarded += 1
                        log.warning("discarding a %d-byte part of a devd record", len(data))
                        continue
                    self._deliver(data)
                if len(records) < self._batch:
                    break

    def _pump_stream(
        self, sock: socket.socket, path: str, kind: SocketKind, poller: select.poll
    ) -> str:
        framer = LineFramer()
        while True:
            poller.poll()
            if self._stop.is_set():
                return "stopped"
            try:
                data = sock.recv(max(self._recv_size, 65536))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return f"recv failed: {exc.strerror or exc}"
            if not data:
                if framer.pending:
                    fragment = framer.take_fragment()
                    self.fragments_discarded += 1
                    log.warning("discarding an unterminated %d-byte line at EOF", len(fragment))
                return "EOF"
            if not self._receiving:
                self._first_record(path, kind)
            for line in framer.feed(data):
                self._deliver(line)
            if framer.oversized != self.oversized:
                self.oversized = framer.oversized
                log.warning("dropped a devd stream line longer than %d bytes", DEVCTL_MAXBUF)

    def _first_record(self, path: str, kind: SocketKind) -> None:
        self._receiving = True
        self._transition(Receiving(path, kind))

    def _deliver(self, record: bytes) -> None:
        # devd strips trailing newlines itself before parsing; an empty record carries nothing.
        record = record.rstrip(b"\n")
        if not record:
            return
        self.lines += 1
        try:
            if self._limit is not None and self._out.qsize() >= self._limit:
                raise queue.Full
            self._out.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("devd event queue full; %d record(s) dropped so far", self.dropped)

    def _transition(self, item: Transition) -> None:
        # A transition is never dropped (a lost Connected would skip a resync): when the queue
        # is full, wait for room, as long as the reader is not being stopped.
        try:
            self._out.put_nowait(item)
        except queue.Full:
            while not self._stop.is_set():
                try:
                    self._out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
        if self._on_transition is not None:
            try:
                self._on_transition(item)
            except Exception:
                # A broken callback must not kill the reader: events would stop silently.
                log.exception("devd transition callback failed")


def _ask_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask for a ``wanted``-byte receive buffer, halving on refusal; the size the system reports.

    Linux caps the request at net.core.rmem_max silently; FreeBSD refuses a size over
    kern.ipc.maxsockbuf's share with ENOBUFS, hence the halving.
    """
    size = wanted
    while size >= 65536:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            break
        except OSError:
            size //= 2
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0
