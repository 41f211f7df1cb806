"""The metrics HTTP endpoint: one asyncio event loop on a thread of its own.

It serves ``render()`` on the telemetry path over HTTP or HTTPS, with exporter-toolkit's basic
auth and headers, and stays available to Prometheus while other clients misbehave:

- every connection is an asyncio protocol (rctlpolicy.web.connection) that costs a descriptor
  and a few kilobytes, never a thread; TLS handshakes have a deadline;
- when ``max_connections`` are open, the oldest connection that has not yet sent an authorised
  request is closed to make room (evicted), so slowloris clients and stalled handshakes push
  each other out while a scraper, whose request arrives in one piece, gets through;
- bcrypt runs on ``auth_workers`` threads with at most ``auth_queue`` checks waiting, and never
  for credentials already verified (that cache survives a reload of an unchanged web config);
- scrapes that arrive while a render with the same ``Accept`` header is running share its
  result (rctlpolicy.web.render), so a thousand concurrent scrapes cost one render.

HTTP/1.1 framing is h11's (a well-kept, pure-Python library FreeBSD packages as www/py-h11)
rather than hand-written parsing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import html
import logging
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bcrypt

from rctlpolicy.web.auth import BasicAuth, PasswordCheck
from rctlpolicy.web.connection import Connection, Phase, Request
from rctlpolicy.web.render import Render, Rendered, RenderKey, SharedRenders, accepts_gzip
from rctlpolicy.web.settings import ServerLimits, WebConfigError, metrics_url
from rctlpolicy.web.tls import TLSContextSource
from rctlpolicy.web.webconfig import WebConfig

logger = logging.getLogger("rctlpolicy.web")

__all__ = ["MetricsServer", "Render", "ServerStats"]

_T = TypeVar("_T")

#: Threads that run render(); scrapes with the same Accept header share one render.
_RENDER_WORKERS = 4
#: Bytes read from a connection at a time (into one buffer all connections share).
_READ_BUFFER = 64 * 1024
#: Seconds between two warnings of one kind about clients.
_WARN_INTERVAL = 10.0
#: Connections asyncio accepts per wakeup of the listening socket.
_ACCEPT_BATCH = 64
#: The kernel's queue of connections not yet accepted (it caps this at its own maximum:
#: somaxconn on Linux, kern.ipc.soacceptqueue on FreeBSD). A full queue drops new SYNs, and
#: a client then waits a whole second to try again: longer than a scrape's timeout here.
_LISTEN_BACKLOG = 4096
#: Descriptors kept for the rest of the daemon when the connection cap is sized to the limit.
_RESERVED_FDS = 64

_DEFAULT_LANDING_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>rctlpolicy</title></head>
<body><h1>rctlpolicy</h1><p><a href="{path}">Metrics</a></p></body></html>
"""


@dataclass(slots=True)
class ServerStats:
    """The server's own counters; changed on the event loop, read by scrapes under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connections_open: int = 0
    connections_max: int = 0
    connections_evicted: int = 0
    connections_refused: int = 0
    handshake_timeouts: int = 0
    auth_failures: int = 0
    requests_too_large: int = 0

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        """Every counter and gauge, copied under the lock."""
        with self.lock:
            return {
                name: getattr(self, name)
                for name in (
                    "connections_open",
                    "connections_max",
                    "connections_evicted",
                    "connections_refused",
                    "handshake_timeouts",
                    "auth_failures",
                    "requests_too_large",
                )
            }


@dataclass(frozen=True, slots=True)
class _ServeState:
    """What requests need from the current web config; swapped whole on reload."""

    web_config: WebConfig | None
    tls: TLSContextSource | None
    auth: BasicAuth | None
    headers: tuple[tuple[str, str], ...]


class MetricsServer:
    """Serves ``render()`` on ``telemetry_path`` over HTTP or HTTPS, optionally with basic auth.

    ``start()`` binds (raising OSError if the address is taken) and runs the event loop on a
    thread; ``stop()`` closes every connection and ends the thread. ``set_web_config`` may be
    called from any thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        telemetry_path: str,
        render: Render,
        web_config: WebConfig | None = None,
        landing_page: bytes | None = None,
        *,
        limits: ServerLimits | None = None,
        password_check: PasswordCheck = bcrypt.checkpw,
        render_key: RenderKey | None = None,
        **limit_overrides: Any,
    ) -> None:
        if not telemetry_path.startswith("/"):
            raise ValueError(f"telemetry path must start with '/': {telemetry_path!r}")
        # "[::1]" is how an IPv6 literal appears in a listen address like "[::1]:10217".
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.requested_port = port
        self.telemetry_path = telemetry_path
        self.render = render
        self.landing_page = (
            landing_page
            if landing_page is not None
            else _DEFAULT_LANDING_PAGE.format(path=html.escape(telemetry_path)).encode()
        )
        # Keyword overrides (idle_timeout=0.2) are for tests and callers that set one limit.
        base = dataclasses.replace(limits or ServerLimits(), **limit_overrides)
        self.limits = base
        self.stats = ServerStats()
        self.read_buffer = memoryview(bytearray(_READ_BUFFER))
        self._password_check = password_check
        self._state = self._build_state(web_config, None)
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        #: Connections that may be evicted, oldest first (a dict keeps insertion order).
        self._evictable: dict[Connection, None] = {}
        self._max_connections = base.max_connections
        self._auth_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._render_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._auth_waiting = 0
        self._warned: dict[str, tuple[float, int]] = {}
        self._renders = SharedRenders(render, self._offload_render, render_key)
        self._pending: set[asyncio.Future[Any]] = set()

    # --- configuration ------------------------------------------------------------------

    def _build_state(
        self, web_config: WebConfig | None, previous: _ServeState | None
    ) -> _ServeState:
        if web_config is None:
            return _ServeState(web_config=None, tls=None, auth=None, headers=())
        old = previous.web_config if previous is not None else None
        tls = None
        if web_config.tls is not None:
            if previous is not None and old is not None and old.tls == web_config.tls:
                tls = previous.tls
            else:
                tls = TLSContextSource(web_config.tls, web_config.path or "<web config>")
        auth = None
        if web_config.basic_auth_users:
            unchanged = (
                previous is not None
                and previous.auth is not None
                and dict(previous.auth.users) == dict(web_config.basic_auth_users)
            )
            # Same users and hashes: keep the verified credentials, so a reload does not make
            # every scraper pay bcrypt again (behind guessers, if there are any).
            auth = (
                previous.auth
                if unchanged and previous is not None
                else BasicAuth(web_config.basic_auth_users, self._password_check)
            )
        return _ServeState(
            web_config=web_config, tls=tls, auth=auth, headers=tuple(web_config.headers.items())
        )

    def set_web_config(self, web_config: WebConfig | None) -> None:
        """Use a new web config for new connections and requests (e.g. after SIGHUP).

        Raises WebConfigError, keeping the old config, if its TLS files cannot be loaded, or
        if it would turn off TLS or basic auth: an editor that truncates the file before writing
        it, or a reload that reads it half-written, must not serve the metrics in clear to
        anyone. Turning either off takes a restart.
        """
        if web_config == self._state.web_config:
            # Read again with every reload of the policy: unchanged, it has nothing new to say.
            return
        _refuse_downgrade(self._state.web_config, web_config)
        state = self._build_state(web_config, self._state)
        self._log_warnings(web_config)
        self._state = state

    @staticmethod
    def _log_warnings(web_config: WebConfig | None) -> None:
        if web_config is not None:
            for warning in web_config.warnings:
                logger.warning("%s: %s", web_config.path, warning)

    @property
    def tls_enabled(self) -> bool:
        return self._state.tls is not None

    @property
    def port(self) -> int:
        """The bound port (useful after asking for port 0)."""
        if self._listener is None:
            raise RuntimeError("MetricsServer is not started")
        return int(self._listener.getsockname()[1])

    @property
    def scrapes_waiting(self) -> int:
        """Scrapes waiting for a render to finish (several may share one)."""
        return self._renders.waiting

    @property
    def url(self) -> str:
        """Where the metrics are served: ``http://[::1]:10217/metrics``."""
        scheme = "https" if self.tls_enabled else "http"
        return metrics_url(scheme, self.host, self.port, self.telemetry_path)

    # --- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving on a background thread; OSError if the address is taken."""
        if self._listener is not None:
            raise RuntimeError("MetricsServer already started")
        self._log_warnings(self._state.web_config)
        self._max_connections = _connection_cap(self.limits.max_connections)
        with self.stats.lock:
            self.stats.connections_max = self._max_connections
        listener = self._bind()
        self._listener = listener
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(
            self.limits.auth_workers, thread_name_prefix="rctlpolicy-web-auth"
        )
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            _RENDER_WORKERS, thread_name_prefix="rctlpolicy-web-render"
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: Connection(self), sock=listener, backlog=_ACCEPT_BATCH
                    )
                )
                # asyncio accepts up to `backlog` connections per wakeup, and listen()s with it;
                # keep the batch small (so reads of requests come between accepts, and a new
                # connection is not evicted by the rest of its own batch) but the kernel's
                # queue as long as the connection cap.
                listener.listen(max(_LISTEN_BACKLOG, self._max_connections))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"metrics-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._close_resources()
            raise failure[0]
        logger.info("serving metrics on %s", self.url)

    def _bind(self) -> socket.socket:
        if self.host in ("", "*"):
            if socket.has_dualstack_ipv6():
                return socket.create_server(
                    ("::", self.requested_port), family=socket.AF_INET6, dualstack_ipv6=True
                )
            return socket.create_server(("0.0.0.0", self.requested_port))  # noqa: S104
        family, _, _, _, address = socket.getaddrinfo(
            self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address[:2], family=family)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and wait for the thread to end."""
        if self._listener is None:
            return
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(self._shut_down)
            except RuntimeError:
                pass  # the loop has already ended
            thread.join(timeout)
        self._close_resources()

    def _close_resources(self) -> None:
        for pool in (self._auth_pool, self._render_pool):
            if pool is not None:
                # A render still running finishes on its own; nothing waits for it.
                pool.shutdown(wait=False, cancel_futures=True)
        if self._listener is not None:
            self._listener.close()
        self._listener = self._loop = self._thread = self._server = None
        self._auth_pool = self._render_pool = None

    def _shut_down(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        for future in list(self._pending):
            future.cancel()
        self._loop.call_soon(self._loop.stop)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what connections call (on the event loop) --------------------------------------

    def tls_context(self) -> tuple[ssl.SSLContext, tuple[str, ...]] | None:
        tls = self._state.tls
        if tls is None:
            return None
        return tls.context(), tls.client_allowed_sans

    def admit(self, connection: Connection) -> bool:
        if len(self._connections) >= self._max_connections:
            victim = next(iter(self._evictable), None)
            if victim is None:
                self.stats.add("connections_refused")
                self.warn(
                    "full",
                    "metrics: %d connections open, all serving; refusing %s",
                    self._max_connections,
                    connection,
                )
                return False
            self._drop(victim)
            victim.abort()
            self.stats.add("connections_evicted")
            logger.debug("metrics: evicted %s to make room", victim)
        self._connections.add(connection)
        self._evictable[connection] = None
        with self.stats.lock:
            self.stats.connections_open = len(self._connections)
        return True

    def protect(self, connection: Connection) -> None:
        self._evictable.pop(connection, None)

    def forget(self, connection: Connection) -> None:
        self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._evictable.pop(connection, None)
        with self.stats.lock:
            self.stats.connections_open = len(self._connections)

    def warn(self, key: str, message: str, *args: object) -> None:
        # A flood of bad clients must not become a flood of log lines: one line per kind
        # every _WARN_INTERVAL seconds, saying how many were not logged.
        assert self._loop is not None
        now = self._loop.time()
        last, suppressed = self._warned.get(key, (-_WARN_INTERVAL, 0))
        if now - last < _WARN_INTERVAL:
            self._warned[key] = (last, suppressed + 1)
            return
        self._warned[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more like it not logged)"
        logger.warning(message, *args)

    def handshake_timed_out(self) -> None:
        self.stats.add("handshake_timeouts")

    def request_too_large(self) -> None:
        self.stats.add("requests_too_large")

    def handle(self, connection: Connection, request: Request) -> None:
        state = self._state
        auth = state.auth
        if auth is None:
            self._authorised(connection, request, state)
            return
        authorization = request.headers.get("authorization")
        if auth.check_cached(authorization):
            self._authorised(connection, request, state)
            return
        if not auth.needs_bcrypt(authorization):
            self._unauthorised(connection, request, state)
            return
        if self._auth_waiting >= self.limits.auth_queue:
            # Guessers fill the queue; answering at once keeps their connections short.
            self._respond(connection, request, state, 503, b"Service Unavailable\n", close=True)
            return
        self._auth_waiting += 1
        check = self._offload(self._auth_pool, auth.check_slow, authorization)

        def checked(future: asyncio.Future[bool]) -> None:
            self._auth_waiting -= 1
            if future.cancelled() or connection.phase is not Phase.SERVING:
                return  # evicted or closed meanwhile
            if future.exception() is None and future.result():
                self._authorised(connection, request, state)
            else:
                self._unauthorised(connection, request, state)

        check.add_done_callback(checked)

    def _unauthorised(self, connection: Connection, request: Request, state: _ServeState) -> None:
        self.stats.add("auth_failures")
        self._respond(
            connection,
            request,
            state,
            401,
            b"Unauthorized\n",
            extra=(("WWW-Authenticate", "Basic"),),
        )

    def _authorised(self, connection: Connection, request: Request, state: _ServeState) -> None:
        self.protect(connection)
        if request.path == self.telemetry_path:
            if self._allow_get_head(connection, request, state):
                self._scrape(connection, request, state)
        elif request.path == "/":
            if self._allow_get_head(connection, request, state):
                self._respond(
                    connection, request, state, 200, self.landing_page, "text/html; charset=utf-8"
                )
        else:
            self._respond(connection, request, state, 404, b"Not Found\n")

    def _allow_get_head(self, connection: Connection, request: Request, state: _ServeState) -> bool:
        if request.method in ("GET", "HEAD"):
            return True
        self._respond(
            connection,
            request,
            state,
            405,
            b"Method Not Allowed\n",
            extra=(("Allow", "GET, HEAD"),),
            close=True,
        )
        return False

    def _scrape(self, connection: Connection, request: Request, state: _ServeState) -> None:
        wants_gzip = accepts_gzip(request.headers.get("accept-encoding"))

        def send(body: bytes | None, content_type: str) -> None:
            if body is None:
                self._respond(connection, request, state, 500, b"Internal Server Error\n")
                return
            extra = [("Vary", "Accept-Encoding")]
            if wants_gzip:
                extra.append(("Content-Encoding", "gzip"))
            self._respond(connection, request, state, 200, body, content_type, extra=tuple(extra))

        def rendered(result: Rendered | None) -> None:
            if result is None:
                send(None, "")
            elif wants_gzip:
                self._renders.gzipped(result, lambda body: send(body, result.content_type))
            else:
                send(result.body, result.content_type)

        self._renders.get(request.headers.get("accept"), rendered)

    def _offload_render(self, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        return self._offload(self._render_pool, function, *args)

    def _offload(
        self,
        pool: concurrent.futures.ThreadPoolExecutor | None,
        function: Callable[..., _T],
        *args: Any,
    ) -> asyncio.Future[_T]:
        assert self._loop is not None and pool is not None
        future = self._loop.run_in_executor(pool, function, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _respond(
        self,
        connection: Connection,
        request: Request,
        state: _ServeState,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        extra: tuple[tuple[str, str], ...] = (),
        close: bool = False,
    ) -> None:
        headers = (*state.headers, *extra, ("Content-Type", content_type))
        connection.respond(status, body, headers, head=request.method == "HEAD", close=close)


def _refuse_downgrade(old: WebConfig | None, new: WebConfig | None) -> None:
    """WebConfigError if ``new`` drops the TLS or the basic auth ``old`` has."""
    if old is None:
        return
    path = (new.path if new is not None else None) or old.path or "<web config>"
    dropped = []
    if old.tls is not None and (new is None or new.tls is None):
        dropped.append("TLS (tls_server_config)")
    if old.basic_auth_users and (new is None or not new.basic_auth_users):
        dropped.append("basic auth (basic_auth_users)")
    if dropped:
        raise WebConfigError(
            path,
            f"it no longer sets {' or '.join(dropped)}: a reload does not turn that off (is the "
            "file empty or half-written?); restart the daemon to serve the metrics without it",
        )


def _connection_cap(wanted: int) -> int:
    """``wanted``, or fewer if the descriptor limit would not allow that many."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - _RESERVED_FDS >= wanted:
        return wanted
    cap = max(1, soft - _RESERVED_FDS)
    logger.info(
        "metrics: at most %d connections (the descriptor limit is %d; raise it with ulimit -n "
        "or login.conf's openfiles)",
        cap,
        soft,
    )
    return cap
