"""One client connection of the metrics server: TLS, HTTP/1.1 framing (h11), timeouts.

Each connection is an asyncio protocol on the server's one event loop, so an idle, slow or
hostile client costs a file descriptor, this object and at most ``header_budget`` bytes of
buffered request (h11 refuses a request line plus headers past it, while reading). No thread
is tied to a connection: TLS runs through memory BIOs on the loop, bcrypt and rendering are
handed to small thread pools by the server and come back as callbacks.

A connection goes through these phases::

    HANDSHAKE (TLS only) -> WAITING -> SERVING -> WAITING -> ... -> CLOSED

WAITING has two clocks: ``idle_timeout`` since the last bytes received and ``request_deadline``
for the whole request line and headers; HANDSHAKE has ``idle_timeout`` and
``handshake_timeout``. While SERVING, reading is paused, so a pipelining client cannot make the
server buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from typing import Any, Protocol

import h11

from rctlpolicy.web.settings import ServerLimits, host_port
from rctlpolicy.web.tls import san_allowed

logger = logging.getLogger("rctlpolicy.web")

Headers = Sequence[tuple[str, str]]


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    WAITING = "waiting"
    SERVING = "serving"
    CLOSED = "closed"


class Request:
    """What a handler needs of one HTTP request (header names in lower case)."""

    __slots__ = ("has_body", "headers", "method", "path")

    def __init__(self, event: h11.Request) -> None:
        self.method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        try:
            self.path = urllib.parse.urlsplit(target).path
        except ValueError:  # "http://[::1": an unbalanced or bogus IPv6 host
            raise h11.RemoteProtocolError(
                "the request target is not a URL", error_status_hint=http.HTTPStatus.BAD_REQUEST
            ) from None
        headers: dict[str, str] = {}
        for name, value in event.headers:
            # The first of repeated headers; none the server reads may be repeated.
            headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
        self.headers = headers
        length = headers.get("content-length", "0").strip()
        self.has_body = length not in ("", "0") or "transfer-encoding" in headers


class ConnectionHost(Protocol):
    """What a connection needs from its server (rctlpolicy.web.server.MetricsServer)."""

    limits: ServerLimits
    #: Where connections read into; the event loop runs one read at a time.
    read_buffer: memoryview

    def tls_context(self) -> tuple[ssl.SSLContext, tuple[str, ...]] | None:
        """The SSLContext and allowed client SANs for a new connection, None for plain HTTP."""
        ...

    def admit(self, connection: Connection) -> bool:
        """Count the connection in (evicting another if full); False if it was refused."""
        ...

    def protect(self, connection: Connection) -> None:
        """The connection has sent an authorised request: it may no longer be evicted."""
        ...

    def forget(self, connection: Connection) -> None:
        """The connection is closed."""
        ...

    def handle(self, connection: Connection, request: Request) -> None:
        """Answer ``request``, now or later, with ``connection.respond``."""
        ...

    def handshake_timed_out(self) -> None: ...

    def warn(self, key: str, message: str, *args: object) -> None:
        """Log a warning about a client, at most once in a while per ``key``."""
        ...

    def request_too_large(self) -> None: ...


class Connection(asyncio.BufferedProtocol):
    """One client; see the module's docstring."""

    def __init__(self, host: ConnectionHost) -> None:
        self._host = host
        self._limits = host.limits
        self.phase = Phase.WAITING
        self.transport: asyncio.Transport | None = None
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.header_budget)
        self._ssl: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._allowed_sans: tuple[str, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_at = 0.0
        self._deadline_at = 0.0
        self._write_backlog = 0
        self._keep_alive = False
        self._body: memoryview | None = None
        self._writing_paused = False

    # --- asyncio.BufferedProtocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets whose proto field says TCP, which accepted
            # ones do not; without it a response's last segment waits for the client's
            # delayed ACK (40 ms and more).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._host.admit(self):
            self.phase = Phase.CLOSED
            transport.abort()
            return
        tls = self._host.tls_context()
        if tls is not None:
            context, self._allowed_sans = tls
            self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
            self.phase = Phase.HANDSHAKE
            self._start_clocks(self._limits.handshake_timeout)
        else:
            self._start_clocks(self._limits.request_deadline)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Every connection reads into the server's one buffer and copies out what came: a
        # plain Protocol would have asyncio allocate 256 KiB per read and shrink it, which
        # leaves the heap fragmented after a few hundred thousand short connections.
        return self._host.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._host.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.CLOSED:
            return
        assert self._loop is not None
        self._idle_at = self._loop.time() + self._limits.idle_timeout
        if self._ssl is None:
            self._receive_plain(data)
            return
        assert self._incoming is not None
        self._incoming.write(data)
        if self.phase is Phase.HANDSHAKE and not self._handshake():
            return
        self._receive_plain(self._decrypt())

    def eof_received(self) -> bool | None:
        if self.phase is Phase.SERVING and self._ssl is None:
            # A client may shut down its side after sending the request; answer it first.
            self._h11.receive_data(b"")
            return True
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._body = None
        # asyncio's socket transport keeps a bound method of its own (`_read_ready_cb`): a
        # reference cycle, which leaves every closed connection to the cyclic collector. That
        # collector is paused while the kernel's rules are listed for a scrape, and what it
        # has not collected by then is moved to the oldest generation, so under a connection
        # flood closed transports piled up by the megabyte. Without the cycle, reference
        # counting frees each one as it closes.
        if self.transport is not None and "_read_ready_cb" in vars(self.transport):
            vars(self.transport)["_read_ready_cb"] = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._host.forget(self)

    # --- what the server calls ------------------------------------------------------------

    def __str__(self) -> str:
        # Log calls pass the connection itself: the address is formatted only when logged.
        return self.peer

    @property
    def peer(self) -> str:
        address: Any = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(address, tuple) and len(address) >= 2:
            return host_port(str(address[0]), int(address[1]))
        return str(address)

    def respond(
        self,
        status: int,
        body: bytes,
        headers: Headers,
        *,
        head: bool = False,
        close: bool = False,
    ) -> None:
        """Send one whole response; then wait for the next request, or close."""
        if self.phase is not Phase.SERVING:
            return  # closed (evicted, timed out, server stopping) while the answer was made
        keep_alive = self._keep_alive and not close
        # h11 reads requests; the response, always whole and with a length, is formatted
        # here: h11's own checks of headers we wrote ourselves cost more than the scrape.
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
        lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        if body and not head and len(body) <= _BODY_CHUNK:
            lines.append(body)  # one write, one segment (one TLS record) for a small answer
            body = b""
        self._send(b"".join(lines))
        self._body = memoryview(body) if body and not head else None
        self._keep_alive = keep_alive
        self._write_body()

    def _write_body(self) -> None:
        # In chunks, while the transport takes them: a body is shared by every scrape that
        # waited for its render, so a slow reader must not make the server copy all of it.
        while self._body is not None and not self._writing_paused and self.phase is Phase.SERVING:
            chunk, rest = self._body[:_BODY_CHUNK], self._body[_BODY_CHUNK:]
            self._body = rest if rest else None
            self._send(chunk)
        if self._body is None and self.phase is Phase.SERVING:
            self._finish_response()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.phase is Phase.SERVING and self._loop is not None:
            # A client that stops reading its response would hold the connection (one that
            # may not be evicted) for ever: it has idle_timeout to take the next bytes.
            self._idle_at = self._loop.time() + self._limits.idle_timeout
            self._deadline_at = self._idle_at
            self._arm(self._idle_at)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.phase is Phase.SERVING:
            self._stop_clocks()
            if self._body is not None:
                self._write_body()

    def _finish_response(self) -> None:
        if not self._keep_alive:
            self.close()
            return
        # Whatever the client sent after this request (pipelining) is the next one's start.
        pending, closed = self._h11.trailing_data
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.header_budget)
        if pending:
            self._h11.receive_data(pending)
        if closed:  # receive_data(b"") is how h11 is told of the end of the stream
            self._h11.receive_data(b"")
        self.phase = Phase.WAITING
        self._start_clocks(self._limits.request_deadline)
        assert self.transport is not None
        self.transport.resume_reading()
        self._next_request()

    def close(self) -> None:
        """Flush what was written, then close."""
        if self.phase is Phase.CLOSED or self.transport is None:
            return
        self.phase = Phase.CLOSED
        if self._ssl is not None:
            try:
                self._ssl.unwrap()
            except ssl.SSLError:
                pass
            self._flush_tls()
        self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping anything not yet sent."""
        if self.transport is not None:
            self.phase = Phase.CLOSED
            self.transport.abort()

    # --- reading --------------------------------------------------------------------------

    def _handshake(self) -> bool:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return False
        except ssl.SSLError as exc:
            # A client with no, an expired or an untrusted certificate, or plain HTTP.
            self._flush_tls()
            self._host.warn("tls", "TLS with %s failed: %s", self, exc.reason or exc)
            self.close()
            return False
        self._flush_tls()
        if self._allowed_sans and not san_allowed(
            self._ssl.getpeercert() or {}, self._allowed_sans
        ):
            self._host.warn("sans", "TLS client %s: certificate has none of the allowed SANs", self)
            self.abort()
            return False
        self.phase = Phase.WAITING
        self._start_clocks(self._limits.request_deadline)
        return True

    def _decrypt(self) -> bytes:
        assert self._ssl is not None
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.close()
                break
            except ssl.SSLError as exc:
                logger.debug("TLS with %s failed: %s", self, exc)
                self.abort()
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush_tls()
        return b"".join(chunks)

    def _receive_plain(self, data: bytes) -> None:
        if not data or self.phase is Phase.CLOSED:
            return
        self._h11.receive_data(data)
        if self.phase is Phase.WAITING:
            self._next_request()

    def _next_request(self) -> None:
        try:
            event = self._h11.next_event()
            if isinstance(event, h11.Request):
                if _head_size(event) > self._limits.header_budget:
                    # h11 checks the budget only while a request is incomplete; one that
                    # arrived whole in a single read is measured here.
                    raise h11.RemoteProtocolError(
                        "request line and headers too long",
                        error_status_hint=http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    )
                request = Request(event)
                # Persistent unless the client says otherwise (HTTP/1.0 or "close"), or it
                # sends a body the server does not read: that would be taken for the next
                # request.
                self._keep_alive = (
                    event.http_version == b"1.1"
                    and "close" not in request.headers.get("connection", "").lower()
                    and not request.has_body
                )
            else:
                if isinstance(event, h11.ConnectionClosed):
                    self.close()
                return
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                self._host.request_too_large()
            logger.debug("metrics: bad request from %s: %s", self, exc)
            self.phase = Phase.SERVING
            self.respond(status, f"{http.HTTPStatus(status).phrase}\n".encode(), (), close=True)
            return
        self.phase = Phase.SERVING
        self._stop_clocks()
        assert self.transport is not None
        self.transport.pause_reading()
        self._host.handle(self, request)

    # --- writing --------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> None:
        if self._ssl is None:
            assert self.transport is not None
            self.transport.write(data)
            return
        view = memoryview(data)
        while view:
            written = self._ssl.write(view)
            view = view[written:]
        self._flush_tls()

    def _flush_tls(self) -> None:
        assert self._outgoing is not None
        pending = self._outgoing.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    # --- clocks -----------------------------------------------------------------------------

    def _start_clocks(self, deadline: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._idle_at = now + self._limits.idle_timeout
        self._deadline_at = now + deadline
        self._arm(min(self._idle_at, self._deadline_at))

    def _stop_clocks(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        self._stop_clocks()
        self._timer = self._loop.call_at(when, self._check_clocks)

    def _check_clocks(self) -> None:
        # data_received only moves _idle_at; the timer, armed for the earliest possible
        # expiry, looks again when it fires, which saves re-arming a timer per read.
        self._timer = None
        if self.phase is Phase.SERVING and not self._writing_paused:
            return
        if self.phase is Phase.CLOSED:
            return
        assert self._loop is not None and self.transport is not None
        now = self._loop.time()
        backlog = self.transport.get_write_buffer_size()
        if backlog and backlog != self._write_backlog:
            # The client is still reading the last response: that is not idleness.
            self._write_backlog = backlog
            self._idle_at = now + self._limits.idle_timeout
        due = min(self._idle_at, self._deadline_at)
        if now < due:
            self._arm(due)
            return
        if self.phase is Phase.HANDSHAKE:
            self._host.handshake_timed_out()
            logger.debug("TLS handshake with %s timed out", self)
        elif self.phase is Phase.SERVING:
            logger.debug("closing %s: it stopped reading its response", self)
        else:
            logger.debug("closing idle connection from %s", self)
        self.abort()


def _head_size(event: h11.Request) -> int:
    """The request line and headers as sent (give or take optional whitespace)."""
    line = len(event.method) + len(event.target) + len(b" HTTP/1.1\r\n ")
    return line + sum(len(name) + len(value) + 4 for name, value in event.headers) + 2


#: Bytes of a response body handed to the transport at a time.
_BODY_CHUNK = 16 * 1024

_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in http.HTTPStatus
}
