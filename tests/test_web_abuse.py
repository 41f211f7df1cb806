"""The metrics endpoint under abuse, through real sockets, real HTTP and real TLS.

Each test holds a small version of an attack open (slow headers, stalled handshakes, password
guessing, a header flood, a crowd of scrapes) and proves that a legitimate scrape is answered
meanwhile, and that the server's own counters say what happened. The figures at full size
(1,000 slowloris connections, RSS under a flood...) are bench/web_abuse.py's.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from test_web import _openssl, request
from test_web import basic as web_basic

from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.web import MetricsServer, WebConfig, load_web_config

OPENSSL = shutil.which("openssl")
DEADLINE = 5.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PARTIAL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "


def render(accept: str | None) -> tuple[bytes, str]:
    return b"# TYPE up gauge\nup 1\n", METRICS_TYPE


ServerFactory = Callable[..., MetricsServer]


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    servers: list[MetricsServer] = []

    def start(web_config: WebConfig | None = None, **kwargs: Any) -> MetricsServer:
        kwargs.setdefault("render", render)
        server = MetricsServer("127.0.0.1", 0, "/metrics", web_config=web_config, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sockets() -> Iterator[Callable[[MetricsServer], socket.socket]]:
    """Open raw connections to a server; all are closed after the test."""
    with ExitStack() as stack:

        def connect(server: MetricsServer) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
            return stack.enter_context(sock)

        yield connect


def scrape(
    server: MetricsServer,
    *,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """One scrape on a fresh connection; its status."""
    return request(server, context=context, headers=headers).status


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def is_closed(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF, or a reset), within the deadline."""
    sock.settimeout(DEADLINE)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- slow clients ---------------------------------------------------------------------------


def test_slowloris_clients_are_evicted_oldest_first_and_scrapes_get_through(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    server = serve(max_connections=20)
    slow = []
    for _ in range(60):
        sock = sockets(server)
        sock.sendall(PARTIAL_REQUEST)
        slow.append(sock)
    assert all(scrape(server) == 200 for _ in range(5))
    wait_for(lambda: server.stats.snapshot()["connections_evicted"] >= 40, "evictions")
    stats = server.stats.snapshot()
    assert stats["connections_open"] <= 20
    assert stats["connections_refused"] == 0
    # The oldest went first: the first slowloris connections are closed, the last are held.
    assert is_closed(slow[0])
    slow[-1].sendall(b"x\r\n\r\n")
    assert slow[-1].recv(12) == b"HTTP/1.1 200"


def test_a_served_keep_alive_connection_is_not_evicted_by_newcomers(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    server = serve(max_connections=4)
    scraper = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE)
    try:
        scraper.request("GET", "/metrics")
        assert scraper.getresponse().read().endswith(b"up 1\n")
        for _ in range(20):
            sockets(server).sendall(PARTIAL_REQUEST)
        wait_for(lambda: server.stats.snapshot()["connections_evicted"] >= 17, "evictions")
        # Same connection, second scrape: it was never evicted.
        scraper.request("GET", "/metrics")
        assert scraper.getresponse().status == 200
    finally:
        scraper.close()


def test_the_idle_clock_runs_between_bytes_and_the_deadline_over_the_whole_request(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    server = serve(idle_timeout=0.3, request_deadline=60)
    silent = sockets(server)
    silent.sendall(PARTIAL_REQUEST)
    assert silent.recv(1) == b""  # closed by the idle clock, long before the deadline


# --- the header budget ----------------------------------------------------------------------


def test_request_line_and_headers_share_a_16_kib_budget(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    server = serve()
    assert server.limits.header_budget == 16 * 1024
    within = {f"X-{n}": "a" * 1000 for n in range(14)}
    assert scrape(server, headers=within) == 200
    beyond = sockets(server)
    head = b"".join(b"X-%d: %s\r\n" % (n, b"a" * 1000) for n in range(17))
    beyond.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert read_until_closed(beyond).startswith(b"HTTP/1.1 431")
    assert server.stats.snapshot()["requests_too_large"] == 1


def test_the_budget_is_enforced_while_reading_not_at_the_end_of_the_headers(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    server = serve()
    flood = sockets(server)
    # 99 headers of 64 KB, as an attack sent them; the server stops reading long before.
    flood.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: " + b"a" * 20000)
    assert read_until_closed(flood).startswith(b"HTTP/1.1 431")
    assert server.stats.snapshot()["requests_too_large"] == 1
    assert scrape(server) == 200


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    cwd = tmp_path_factory.mktemp("tls")
    _openssl(
        cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    (cwd / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
    )
    return cwd


def test_stalled_tls_handshakes_time_out_and_make_room_for_scrapers(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket], tls_dir: Path
) -> None:
    server = serve(load_web_config(tls_dir / "web.yml"), max_connections=10, handshake_timeout=0.5)
    stalled = [sockets(server) for _ in range(30)]
    for sock in stalled[::2]:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    context = ssl.create_default_context(cafile=tls_dir / "server.pem")
    assert all(scrape(server, context=context) == 200 for _ in range(5))
    # The handshakes still open when their deadline passes are given up on and counted.
    wait_for(lambda: server.stats.snapshot()["handshake_timeouts"] >= 1, "handshake timeouts")
    wait_for(lambda: server.stats.snapshot()["connections_open"] == 0, "every handshake closed")
    stats = server.stats.snapshot()
    assert stats["connections_evicted"] >= 20
    assert stats["connections_evicted"] + stats["handshake_timeouts"] == 30
    for sock in stalled:
        assert is_closed(sock)


# --- password guessing ----------------------------------------------------------------------


class BlockingCheck:
    """bcrypt.checkpw, except that wrong passwords wait for `release` (a slow bcrypt)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.calls += 1
        ok = bcrypt.checkpw(password, hashed)
        if not ok:
            self.release.wait(DEADLINE)
        return ok


def basic(password: str) -> dict[str, str]:
    return web_basic("prometheus", password)


@pytest.fixture
def auth_config(tmp_path: Path) -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


def test_password_guessers_queue_behind_each_other_not_in_front_of_a_scraper(
    serve: ServerFactory, auth_config: Path
) -> None:
    check = BlockingCheck()
    server = serve(load_web_config(auth_config), password_check=check, auth_workers=2, auth_queue=8)
    assert scrape(server, headers=basic("s3cret")) == 200  # verified once, then cached
    assert check.calls == 1
    with ThreadPoolExecutor(max_workers=20) as pool:
        try:
            guesses = [pool.submit(scrape, server, headers=basic(f"guess{n}")) for n in range(20)]
            # Both bcrypt threads are held by guesses and the queue is full...
            wait_for(lambda: check.calls == 3, "two guesses in bcrypt")
            # ...and the scraper whose credentials are cached is answered all the same.
            assert all(scrape(server, headers=basic("s3cret")) == 200 for _ in range(5))
            assert check.calls == 3
            # Every guess is in: eight wait for bcrypt, twelve were turned away at once.
            wait_for(lambda: sum(g.done() for g in guesses) == 12, "twelve guesses answered")
            assert check.calls == 3
        finally:
            check.release.set()
        statuses = sorted(g.result(DEADLINE) for g in guesses)
    # Eight guesses were checked (and failed); the twelve beyond the queue were turned away.
    assert statuses == [401] * 8 + [503] * 12
    assert server.stats.snapshot()["auth_failures"] == 8


def test_verified_credentials_survive_a_reload_of_an_unchanged_web_config(
    serve: ServerFactory, auth_config: Path
) -> None:
    check = BlockingCheck()
    check.release.set()
    server = serve(load_web_config(auth_config), password_check=check)
    assert scrape(server, headers=basic("s3cret")) == 200
    server.set_web_config(load_web_config(auth_config))
    assert scrape(server, headers=basic("s3cret")) == 200
    assert check.calls == 1
    # A changed file (a new hash for the same password) is checked anew.
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    auth_config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    server.set_web_config(load_web_config(auth_config))
    assert scrape(server, headers=basic("s3cret")) == 200
    assert check.calls == 2


# --- many scrapes at once -------------------------------------------------------------------


def test_concurrent_scrapes_share_one_render(serve: ServerFactory) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str | None] = []

    def slow_render(accept: str | None) -> tuple[bytes, str]:
        calls.append(accept)
        entered.set()
        release.wait(DEADLINE)
        return f"# TYPE n gauge\nn {len(calls)}\n".encode(), METRICS_TYPE

    server = serve(render=slow_render)
    with ThreadPoolExecutor(max_workers=10) as pool:
        try:
            scrapes = [pool.submit(scrape, server) for _ in range(10)]
            assert entered.wait(DEADLINE)
            wait_for(lambda: server.scrapes_waiting == 10, "ten scrapes waiting")
        finally:
            release.set()
        assert [s.result(DEADLINE) for s in scrapes] == [200] * 10
    assert len(calls) == 1
    # The next scrape, after the shared render ended, renders afresh.
    assert scrape(server) == 200
    assert len(calls) == 2


def test_scrapes_that_vary_their_accept_header_still_share_one_render(
    serve: ServerFactory,
) -> None:
    # A client that sends a new Accept header each time must not queue a render per request
    # in front of Prometheus' scrape: renders are shared by what the render depends on.
    from rctlpolicy.exposition import wants_openmetrics

    entered, release = threading.Event(), threading.Event()
    calls: list[str | None] = []

    def slow_render(accept: str | None) -> tuple[bytes, str]:
        calls.append(accept)
        entered.set()
        release.wait(DEADLINE)
        return b"# TYPE n gauge\nn 1\n", METRICS_TYPE

    server = serve(render=slow_render, render_key=wants_openmetrics)
    with ThreadPoolExecutor(max_workers=10) as pool:
        try:
            scrapes = [
                pool.submit(scrape, server, headers={"Accept": f"text/plain;v={n}"})
                for n in range(10)
            ]
            assert entered.wait(DEADLINE)
            wait_for(lambda: server.scrapes_waiting == 10, "ten scrapes waiting")
        finally:
            release.set()
        assert [s.result(DEADLINE) for s in scrapes] == [200] * 10
    assert len(calls) == 1


def test_large_bodies_reach_a_pipelining_client_whole_while_others_are_served(
    serve: ServerFactory, sockets: Callable[[MetricsServer], socket.socket]
) -> None:
    body = b"".join(b'jail_memoryuse_bytes{name="j%d"} %d\n' % (n, n) for n in range(25000))
    server = serve(render=lambda accept: (body, METRICS_TYPE))
    slow = sockets(server)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    slow.sendall(request + request)  # two pipelined requests: the second waits for the first
    # Meanwhile, other scrapes are served whole.
    assert scrape(server) == 200
    received = bytearray()
    while (head_end := received.find(b"\r\n\r\n")) < 0:
        received += slow.recv(4096)
    expected = 2 * (head_end + 4 + len(body))
    while len(received) < expected:
        chunk = slow.recv(65536)
        assert chunk, "the server closed the connection"
        received += chunk
    first, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in first
    assert rest.startswith(body)
    assert rest[len(body) :].startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(body)
    assert len(rest) == len(body) + head_end + 4 + len(body)


def test_a_client_that_stops_reading_its_response_is_cut_off(serve: ServerFactory) -> None:
    body = b"#" * (16 * 1024 * 1024)  # more than the kernel buffers on both ends hold
    rendered = threading.Event()

    def render_big(accept: str | None) -> tuple[bytes, str]:
        rendered.set()
        return body, METRICS_TYPE

    server = serve(render=render_big, idle_timeout=0.3)
    with socket.socket() as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(DEADLINE)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert rendered.wait(DEADLINE)
        wait_for(lambda: server.scrapes_waiting == 0, "the response to start")
        assert server.stats.snapshot()["connections_open"] == 1
        # Never read: the connection has been served (it may not be evicted), but the idle
        # clock runs while the server waits to write.
        wait_for(lambda: server.stats.snapshot()["connections_open"] == 0, "the cut-off")


def test_closed_connections_are_freed_without_the_cyclic_collector(serve: ServerFactory) -> None:
    # A scrape of the kernel's rules pauses the cyclic collector (rctlpolicy.gcpause); what
    # closes meanwhile must still be freed, or a connection flood piles up memory.
    server = serve()
    gc.collect()
    with no_cyclic_gc():
        assert all(scrape(server) == 200 for _ in range(200))
        wait_for(lambda: server.stats.snapshot()["connections_open"] == 0, "every close")
        transports = sum(isinstance(o, asyncio.Transport) for o in gc.get_objects())
    assert transports <= 2
