"""devd(8)'s client side, emulated: the simulated host's devd and the tests' devd double.

Behaviour follows ``sbin/devd/devd.cc`` (freebsd-integration.md sections 1 and 9):

* two listeners in one directory, ``devd.seqpacket.pipe`` (SOCK_SEQPACKET) and ``devd.pipe``
  (SOCK_STREAM), each created after removing whatever file was there, mode 0666;
* every accepted client is made non-blocking (Linux, unlike FreeBSD, does not inherit
  O_NONBLOCK from the listener), gets SO_SNDBUF 262144 and ``shutdown(SHUT_RD)``: devd never
  reads from a client;
* a total client limit over both sockets; at the limit devd stops accepting, shrinks the
  listen backlog to 0 and checks for hung-up clients every 2 s instead of every 60 s;
* one non-blocking ``send()`` per client per event (``MSG_EOR`` on seqpacket); a failed or short
  send closes that client and logs ``notify_clients: send() failed; dropping unresponsive client``;
* stopping closes clients and listeners but leaves the socket files, so a connect in between
  gets ECONNREFUSED, as it does while devd restarts.

Not emulated: chown to root:wheel (tests do not run as root), the pid file, /dev/devctl.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rctlpolicy.devd.client import SocketKind

log = logging.getLogger(__name__)

SEQPACKET_NAME = "devd.seqpacket.pipe"
STREAM_NAME = "devd.pipe"
#: devd's CLIENT_BUFSIZE: FreeBSD unix sockets have no receive buffer to speak of, so devd
#: enlarges the sending side instead.
CLIENT_SNDBUF = 262144
_INITIAL_BACKLOG = 4

DROP_MESSAGE = "notify_clients: send() failed; dropping unresponsive client"
REAP_MESSAGE = "check_clients:  dropping disconnected client"


@dataclass(slots=True)
class _Client:
    sock: socket.socket
    kind: SocketKind


class DevdServer:
    """devd's two client sockets in ``directory``, fed by :meth:`send` instead of /dev/devctl.

    ``check_interval`` / ``full_check_interval`` are devd's 60 s / 2 s hang-up checks (tests
    shorten them). Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        directory: Path,
        client_limit: int = 10,
        *,
        check_interval: float = 60.0,
        full_check_interval: float = 2.0,
    ) -> None:
        if client_limit < 1:
            raise ValueError("client_limit must be at least 1 (devd -l enforces a minimum of 1)")
        self.directory = Path(directory)
        self.client_limit = client_limit
        self._check_interval = check_interval
        self._full_check_interval = full_check_interval
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._clients: list[_Client] = []
        self._listeners: dict[SocketKind, socket.socket] = {}
        #: The socket files this server bound, by (device, inode): only those are its to remove.
        self._bound: dict[Path, tuple[int, int]] = {}
        self._thread: threading.Thread | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._short_write: int | None = None
        self.accepted_total = 0
        self.dropped_total = 0
        self.reaped_total = 0
        self.events_sent = 0

    # -- paths and state ------------------------------------------------------------------

    @property
    def seqpacket_path(self) -> Path:
        """Where the SOCK_SEQPACKET socket lives (devd: /var/run/devd.seqpacket.pipe)."""
        return self.directory / SEQPACKET_NAME

    @property
    def stream_path(self) -> Path:
        """Where the SOCK_STREAM socket lives (devd: /var/run/devd.pipe)."""
        return self.directory / STREAM_NAME

    @property
    def running(self) -> bool:
        """Whether the listeners are bound and the accept thread runs."""
        return self._thread is not None

    @property
    def client_count(self) -> int:
        """Clients currently accepted, over both sockets."""
        with self._lock:
            return len(self._clients)

    def wait_for_clients(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` clients are accepted; False if ``timeout`` passed first."""
        return self.wait_for(lambda server: len(server._clients) >= n, timeout)

    def wait_for(self, predicate: Callable[[DevdServer], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds; it is re-checked whenever a client comes or goes.

        The predicate runs under the server's lock: read attributes, do not call methods.
        """
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind both sockets (removing existing files first) and start accepting."""
        if self._thread is not None:
            raise RuntimeError("DevdServer is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for kind, path in (
                (SocketKind.STREAM, self.stream_path),
                (SocketKind.SEQPACKET, self.seqpacket_path),
            ):
                self._listeners[kind] = _listen(path, kind)
                info = os.stat(path, follow_symlinks=False)
                self._bound[path] = (info.st_dev, info.st_ino)
        except OSError:
            self._close_listeners()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._accept_loop, name="devd-accept", daemon=True)
        self._thread.start()
        log.info("devd double listening in %s", self.directory)

    def stop(self, *, remove_files: bool = False) -> None:
        """Close every client (they see EOF) and both listeners, like devd exiting.

        The socket files stay, so connects fail with ECONNREFUSED until :meth:`start`; with
        ``remove_files`` they go too (connects then fail with ENOENT, as after /var/run is
        cleaned).
        """
        thread = self._thread
        if thread is None:
            return
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up byte is already pending
        thread.join()
        self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1
        self._close_listeners()
        with self._changed:
            for client in self._clients:
                client.sock.close()
            self._clients.clear()
            self._short_write = None
            self._changed.notify_all()
        if remove_files:
            for path, identity in self._bound.items():
                # Only the file we bound: another server may have replaced it since.
                try:
                    info = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (info.st_dev, info.st_ino) == identity:
                    path.unlink(missing_ok=True)
            self._bound.clear()

    def restart(self) -> None:
        """``service devd restart``: drop all clients and listeners, then bind fresh sockets."""
        self.stop()
        self.start()

    def __enter__(self) -> DevdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- events ---------------------------------------------------------------------------

    def send(self, line: bytes) -> int:
        """Deliver one event (exact kernel bytes, ``\\n`` included) to every client.

        One non-blocking send per client; a client whose send fails or is short is closed and
        dropped with devd's warning. Returns how many clients received the whole line.
        """
        delivered = 0
        with self._changed:
            short = self._short_write
            keep: list[_Client] = []
            for client in self._clients:
                if self._send_one(client, line, short):
                    keep.append(client)
                    delivered += 1
                else:
                    client.sock.close()
                    self.dropped_total += 1
                    log.warning(DROP_MESSAGE)
            if short is not None and any(c.kind is SocketKind.STREAM for c in self._clients):
                self._short_write = None
            if len(keep) != len(self._clients):
                self._clients[:] = keep
                self._changed.notify_all()
            self.events_sent += 1
        return delivered

    def simulate_short_write(self, fragment_len: int) -> None:
        """Make the next :meth:`send` write only ``fragment_len`` bytes to each stream client.

        That is what a nearly full stream socket does; devd then treats the client as
        unresponsive and closes it, so the client reads a fragment and then EOF. Seqpacket
        clients are not affected (a record is sent whole or not at all).
        """
        if fragment_len < 0:
            raise ValueError("fragment_len must not be negative")
        with self._lock:
            self._short_write = fragment_len

    @staticmethod
    def _send_one(client: _Client, line: bytes, short: int | None) -> bool:
        try:
            if client.kind is SocketKind.SEQPACKET:
                return client.sock.send(line, socket.MSG_EOR) == len(line)
            if short is not None:
                client.sock.send(line[:short])
                return False
            return client.sock.send(line) == len(line)
        except OSError:
            return False

    # -- the accept thread ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        accepting = True
        while True:
            with self._lock:
                full = len(self._clients) >= self.client_limit
            if full and accepting:
                # As devd: stop polling the listeners and refuse (or park) new connections.
                for listener in self._listeners.values():
                    listener.listen(0)
                accepting = False
            elif not full and not accepting:
                for listener in self._listeners.values():
                    listener.listen(self.client_limit)
                accepting = True
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            by_fd: dict[int, tuple[socket.socket, SocketKind]] = {}
            if not full:
                for kind, listener in self._listeners.items():
                    poller.register(listener, select.POLLIN)
                    by_fd[listener.fileno()] = (listener, kind)
            interval = self._full_check_interval if full else self._check_interval
            ready = poller.poll(interval * 1000)
            if not ready:
                self._check_clients()
                continue
            fds = {fd for fd, _ in ready}
            if self._wake_r in fds:
                return
            for fd in sorted(fds):
                if fd in by_fd:
                    self._check_clients()
                    self._accept(*by_fd[fd])

    def _accept(self, listener: socket.socket, kind: SocketKind) -> None:
        with self._lock:
            # devd can overshoot by one when both listeners are ready in one pass; do not.
            if len(self._clients) >= self.client_limit:
                return
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # the connecting client went away before we got to it
        except OSError:
            log.exception("devd double: accept() failed")
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            log.exception("devd double: cannot set up an accepted client")
            sock.close()
            return
        with self._changed:
            self._clients.append(_Client(sock, kind))
            self.accepted_total += 1
            self._changed.notify_all()

    def _check_clients(self) -> None:
        """devd's check_clients(): drop clients that hung up (POLLHUP), freeing their slots."""
        with self._changed:
            keep: list[_Client] = []
            for client in self._clients:
                poller = select.poll()
                poller.register(client.sock, 0)
                hung_up = any(ev & select.POLLHUP for _, ev in poller.poll(0))
                if hung_up:
                    client.sock.close()
                    self.reaped_total += 1
                    log.info(REAP_MESSAGE)
                else:
                    keep.append(client)
            if len(keep) != len(self._clients):
                self._clients[:] = keep
                self._changed.notify_all()

    def _close_listeners(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()


def _listen(path: Path, kind: SocketKind) -> socket.socket:
    """devd's create_socket(): unlink, bind, non-blocking, listen(4), chmod 0666."""
    sock = socket.socket(socket.AF_UNIX, kind.socktype)
    try:
        path.unlink(missing_ok=True)
        sock.setblocking(False)
        sock.bind(os.fspath(path))
        sock.listen(_INITIAL_BACKLOG)
        # Any local user may read device events: devd makes its sockets world-accessible.
        os.chmod(path, 0o666)  # noqa: S103 - devd does exactly this
    except OSError:
        sock.close()
        raise
    return sock
