"""The metrics endpoint, through real sockets: HTTP, HTTPS, client certificates, basic auth.

Certificates come from the ``openssl`` command (a throwaway CA per test module); the TLS tests
skip when it is missing. bcrypt hashes use cost 4 to keep the module fast.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from rctlpolicy.web import (
    BasicAuth,
    ClientAuthType,
    MetricsServer,
    TLSVersion,
    WebConfig,
    WebConfigError,
    load_web_config,
)

OPENSSL = shutil.which("openssl")

#: Every wait in this module ends by this many seconds, so a hang fails instead of stalling.
DEADLINE = 5.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# --- fixtures -----------------------------------------------------------------------------------


class FakeRender:
    """A render() that numbers its scrapes, so a stale body would show."""

    def __init__(self) -> None:
        self.accepts: list[str | None] = []
        self.lock = threading.Lock()

    def __call__(self, accept: str | None) -> tuple[bytes, str]:
        with self.lock:
            self.accepts.append(accept)
            count = len(self.accepts)
        return f"# TYPE rctlpolicy_scrapes counter\nrctlpolicy_scrapes {count}\n".encode(), (
            METRICS_TYPE
        )


ServerFactory = Callable[..., MetricsServer]


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """Start MetricsServers on 127.0.0.1, port 0; all are stopped after the test."""
    servers: list[MetricsServer] = []

    def start(
        web_config: WebConfig | None = None,
        render: Callable[[str | None], tuple[bytes, str]] | None = None,
        host: str = "127.0.0.1",
        **kwargs: Any,
    ) -> MetricsServer:
        server = MetricsServer(host, 0, "/metrics", render or FakeRender(), web_config, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


def request(
    server: MetricsServer,
    path: str = "/metrics",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One request on a fresh connection, with a deadline on every socket operation."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE)
    else:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=DEADLINE, context=context
        )
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    """A CA with a server and client certificates, and a second CA nobody trusts."""

    dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / name


def _openssl(cwd: Path, *args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_leaf(cwd: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(
        f"{extensions}\nbasicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-out", f"{name}.pem",
        "-extfile", f"{name}.ext",
    )  # fmt: skip


SERVER_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth"
CLIENT_EXT = "subjectAltName=DNS:{san}\nextendedKeyUsage=clientAuth"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    cwd = tmp_path_factory.mktemp("pki")
    _make_ca(cwd, "ca")
    _make_ca(cwd, "otherca")
    _make_leaf(cwd, "server", "ca", SERVER_EXT)
    _make_leaf(cwd, "renewed", "otherca", SERVER_EXT)
    _make_leaf(cwd, "scraper", "ca", CLIENT_EXT.format(san="scraper.example"))
    _make_leaf(cwd, "stranger", "ca", CLIENT_EXT.format(san="stranger.example"))
    _make_leaf(cwd, "intruder", "otherca", CLIENT_EXT.format(san="scraper.example"))
    return PKI(cwd)


def write_config(directory: Path, text: str, pki: PKI | None = None) -> Path:
    """web.yml in ``directory``, with the PKI's files copied beside it (paths stay relative)."""
    if pki is not None:
        for name in ("ca.pem", "server.pem", "server.key"):
            shutil.copy(pki[name], directory / name)
    path = directory / "web.yml"
    path.write_text(text)
    return path


def client_context(pki: PKI, ca: str = "ca.pem", cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki[ca])
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}.key"])
    return context


TLS_CONFIG = """
tls_server_config:
  cert_file: server.pem
  key_file: server.key
"""
MTLS_CONFIG = """
tls_server_config:
  cert_file: server.pem
  key_file: server.key
  client_ca_file: ca.pem
  client_auth_type: {auth}
"""


# --- plain HTTP ---------------------------------------------------------------------------------


def test_plain_scrape_renders_fresh_each_time(serve: ServerFactory) -> None:
    render = FakeRender()
    server = serve(render=render)
    first = request(server, headers={"Accept": "text/plain"})
    second = request(server)
    assert first.status == 200
    assert first.headers["Content-Type"] == METRICS_TYPE
    assert first.body.endswith(b"rctlpolicy_scrapes 1\n")
    assert second.body.endswith(b"rctlpolicy_scrapes 2\n")
    assert render.accepts[0] == "text/plain"
    assert first.headers["Content-Length"] == str(len(first.body))


def test_keep_alive_serves_several_requests_on_one_connection(serve: ServerFactory) -> None:
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE)
    try:
        bodies = []
        for _ in range(3):
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200
            bodies.append(response.read())
            assert response.getheader("Connection") is None
    finally:
        conn.close()
    assert bodies[2].endswith(b"rctlpolicy_scrapes 3\n")


def test_head_sends_the_length_of_get_without_a_body(serve: ServerFactory) -> None:
    server = serve()
    head = request(server, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["Content-Length"]) == len(request(server).body)


def test_landing_page_links_to_the_metrics(serve: ServerFactory) -> None:
    default = request(serve(), "/")
    assert default.status == 200
    assert default.headers["Content-Type"].startswith("text/html")
    assert b'href="/metrics"' in default.body
    custom = request(serve(landing_page=b"<p>jails</p>"), "/")
    assert custom.body == b"<p>jails</p>"


def test_unknown_path_is_404(serve: ServerFactory) -> None:
    server = serve()
    for path in ("/metricsx", "/metrics/", "/favicon.ico"):
        assert request(server, path).status == 404
    # The query string is not part of the path.
    assert request(server, "/metrics?name[]=up").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_are_405(serve: ServerFactory, method: str) -> None:
    server = serve()
    response = request(server, method=method, body=b"x=1")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert request(server, "/", method=method).status == 405
    assert request(server, "/nowhere", method=method).status == 404


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*, gzip;q=0", False),
        ("identity", False),
        (None, False),
    ],
)
def test_gzip_when_the_client_accepts_it(
    serve: ServerFactory, accept_encoding: str | None, gzipped: bool
) -> None:
    server = serve()
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    response = request(server, headers=headers)
    assert response.status == 200
    assert response.headers["Vary"] == "Accept-Encoding"
    if gzipped:
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.body).endswith(b"rctlpolicy_scrapes 1\n")
    else:
        assert response.headers["Content-Encoding"] is None
        assert response.body.endswith(b"rctlpolicy_scrapes 1\n")


def test_a_failing_render_is_a_500_and_the_server_goes_on(serve: ServerFactory) -> None:
    calls: list[str | None] = []

    def render(accept: str | None) -> tuple[bytes, str]:
        calls.append(accept)
        if len(calls) == 1:
            raise RuntimeError("kernel went away")
        return b"ok\n", METRICS_TYPE

    server = serve(render=render)
    assert request(server).status == 500
    assert request(server).body == b"ok\n"


@pytest.mark.parametrize("result", [("text", METRICS_TYPE), (b"x 1\n", None), None])
def test_a_render_that_returns_the_wrong_types_is_a_500(
    serve: ServerFactory, result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(render=lambda accept: result)
    assert request(server).status == 500
    assert request(server).status == 500
    assert any(r.getMessage() == "rendering metrics failed" for r in caplog.records)


def test_garbage_from_a_client_is_a_400_and_the_server_goes_on(serve: ServerFactory) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    assert request(server).status == 200


@pytest.mark.parametrize(
    "target", [b"http://[::1", b"http://[x]/metrics", b"//[", b"/metrics?\xff", b"*"]
)
def test_a_target_that_is_no_url_is_a_400_not_a_traceback(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture, target: bytes
) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(1024).split(b"\r\n")[0] in (
            b"HTTP/1.1 400 Bad Request",
            b"HTTP/1.1 404 Not Found",
        )
    assert request(server).status == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_ipv6_literal_in_brackets(serve: ServerFactory) -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = serve(host="[::1]")
    conn = http.client.HTTPConnection("::1", server.port, timeout=DEADLINE)
    try:
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_telemetry_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        MetricsServer("127.0.0.1", 0, "metrics", FakeRender())


# --- idle and slow clients ----------------------------------------------------------------------


def scrape_concurrently(server: MetricsServer, count: int, **kwargs: Any) -> list[Response]:
    """``count`` scrapes at once, all of which must finish within the deadline."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(request, server, **kwargs) for _ in range(count)]
        done, not_done = wait(futures, timeout=DEADLINE)
        assert not not_done, "scrapes stalled"
        return [f.result() for f in done]


def test_idle_clients_do_not_stall_scrapes(serve: ServerFactory) -> None:
    server = serve()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as silent,
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as half,
    ):
        # One client says nothing, another stops in the middle of its request line.
        half.sendall(b"GET /metr")
        responses = scrape_concurrently(server, 5)
        assert [r.status for r in responses] == [200] * 5
        # Both were held open all along: the half-sent request still completes.
        half.sendall(b"ics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert half.recv(12) == b"HTTP/1.1 200"
        silent.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert silent.recv(12) == b"HTTP/1.1 200"


def test_a_slow_render_does_not_stall_other_connections(serve: ServerFactory) -> None:
    entered, release = threading.Event(), threading.Event()

    def render(accept: str | None) -> tuple[bytes, str]:
        if accept == "block":
            entered.set()
            release.wait(DEADLINE)
        return f"accept {accept}\n".encode(), METRICS_TYPE

    server = serve(render=render)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            blocked = pool.submit(request, server, headers={"Accept": "block"})
            assert entered.wait(DEADLINE)
            # The first scrape is still inside render(); another one is answered meanwhile.
            assert request(server).body == b"accept None\n"
            assert not blocked.done()
        finally:
            release.set()
        assert blocked.result(DEADLINE).body == b"accept block\n"


def test_idle_connections_are_closed_after_the_timeout(serve: ServerFactory) -> None:
    server = serve(idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as idle:
        # recv() returns b"" when the server closes; the socket timeout is the deadline.
        assert idle.recv(1) == b""


def test_a_trickling_client_is_cut_off_at_the_request_deadline(serve: ServerFactory) -> None:
    # Each byte comes well within the idle timeout; only the whole-request deadline ends it.
    server = serve(idle_timeout=5, request_deadline=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as slow:
        slow.settimeout(0.05)
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400:
            try:
                slow.sendall(bytes([byte]))
                data = slow.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data or data.startswith(b"HTTP/1.1 400"):
                closed = True
                break
        assert closed, "the trickling client was never cut off"
        assert time.monotonic() - started < DEADLINE
    # The server still answers everyone else.
    assert request(server).status == 200


def test_stop_closes_open_connections_at_once(serve: ServerFactory) -> None:
    server = serve(idle_timeout=60)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as idle:
        request(server)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < DEADLINE / 2
        assert idle.recv(1) == b""


def test_connections_beyond_the_limit_are_closed(serve: ServerFactory) -> None:
    server = serve(max_connections=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as first:
        first.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(12) == b"HTTP/1.1 200"
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as extra:
            extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert extra.recv(1) == b""
            except ConnectionResetError:
                pass


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_scrape_verifies_against_the_ca(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, TLS_CONFIG, pki))
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "server.pem"
    assert config.tls.min_version is TLSVersion.TLS12
    server = serve(config)
    response = request(server, context=client_context(pki))
    assert response.status == 200
    assert response.body.endswith(b"rctlpolicy_scrapes 1\n")
    # A client that trusts another CA refuses the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        request(server, context=client_context(pki, ca="otherca.pem"))
    # Plain HTTP to the TLS port gets no answer, and the server goes on.
    with pytest.raises(OSError):
        request(server)
    assert request(server, context=client_context(pki)).status == 200


def test_tls_min_version_is_enforced(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    path = write_config(tmp_path, TLS_CONFIG + "  min_version: TLS13\n", pki)
    server = serve(load_web_config(path))
    tls12 = client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        request(server, context=tls12)
    assert request(server, context=client_context(pki)).status == 200


def test_idle_clients_without_a_client_hello_do_not_stall_tls_scrapes(
    serve: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    server = serve(load_web_config(write_config(tmp_path, TLS_CONFIG, pki)))
    context = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE),
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as partial,
    ):
        # The start of a TLS record header, then nothing.
        partial.sendall(b"\x16\x03\x01")
        responses = scrape_concurrently(server, 5, context=context)
        assert [r.status for r in responses] == [200] * 5


def test_tls_handshake_times_out(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    web_config = load_web_config(write_config(tmp_path, TLS_CONFIG, pki))
    server = serve(web_config, idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as idle:
        assert idle.recv(1) == b""


def test_client_certificate_required(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    text = MTLS_CONFIG.format(auth="RequireAndVerifyClientCert")
    config = load_web_config(write_config(tmp_path, text, pki))
    assert config.tls is not None
    assert config.tls.client_auth_type is ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT
    server = serve(config)
    assert request(server, context=client_context(pki, cert="scraper")).status == 200
    # Without a certificate, or with one from a CA the server does not trust: no response.
    with pytest.raises(OSError):
        request(server, context=client_context(pki))
    with pytest.raises(OSError):
        request(server, context=client_context(pki, cert="intruder"))
    assert request(server, context=client_context(pki, cert="scraper")).status == 200


def test_client_certificate_verified_if_given(
    serve: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    text = MTLS_CONFIG.format(auth="VerifyClientCertIfGiven")
    server = serve(load_web_config(write_config(tmp_path, text, pki)))
    assert request(server, context=client_context(pki)).status == 200
    assert request(server, context=client_context(pki, cert="scraper")).status == 200
    with pytest.raises(OSError):
        request(server, context=client_context(pki, cert="intruder"))


def test_client_allowed_sans(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    text = MTLS_CONFIG.format(auth="RequireAndVerifyClientCert")
    text += "  client_allowed_sans: [scraper.example, '::1']\n"
    config = load_web_config(write_config(tmp_path, text, pki))
    assert config.tls is not None
    assert config.tls.client_allowed_sans == ("scraper.example", "::1")
    server = serve(config)
    assert request(server, context=client_context(pki, cert="scraper")).status == 200
    # Signed by the trusted CA, but not a SAN on the list.
    with pytest.raises(OSError):
        request(server, context=client_context(pki, cert="stranger"))


def test_a_renewed_certificate_is_served_without_a_restart(
    serve: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    server = serve(load_web_config(write_config(tmp_path, TLS_CONFIG, pki)))
    assert request(server, context=client_context(pki)).status == 200
    # Renew the way certificate tools do: write beside, then rename over.
    for source, target in (("renewed.key", "server.key"), ("renewed.pem", "server.pem")):
        shutil.copy(pki[source], tmp_path / f"{target}.new")
        os.replace(tmp_path / f"{target}.new", tmp_path / target)
    assert request(server, context=client_context(pki, ca="otherca.pem")).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        request(server, context=client_context(pki))


def test_a_fifo_planted_as_the_certificate_keeps_the_old_one(
    serve: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    # Whoever may renew the certificate may put a FIFO in its place: OpenSSL would wait on it
    # for ever, on the event loop, and no connection would be served again.
    server = serve(load_web_config(write_config(tmp_path, TLS_CONFIG, pki)))
    assert request(server, context=client_context(pki)).status == 200
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.replace(fifo, tmp_path / "server.pem")
    try:
        assert request(server, context=client_context(pki)).status == 200
        with pytest.raises(WebConfigError, match=r"server\.pem is not a regular file"):
            load_web_config(tmp_path / "web.yml")
    finally:  # a regression waits in open(): give it a writer, so the loop can end
        with contextlib.suppress(OSError):
            os.close(os.open(tmp_path / "server.pem", os.O_WRONLY | os.O_NONBLOCK))


def test_basic_auth_over_tls(serve: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    text = TLS_CONFIG + f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    config = load_web_config(write_config(tmp_path, text, pki))
    assert config.warnings == ()
    server = serve(config)
    context = client_context(pki)
    assert request(server, context=context, headers=basic("prometheus", "s3cret")).status == 200
    assert request(server, context=context).status == 401


def test_a_reload_of_an_unchanged_config_says_its_warnings_once(
    serve: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon reads the web config with every reload of the policy (the rules files
    # change often): its warnings are said when it is loaded or changed, not every time.
    path = write_config(tmp_path, "http_server_config:\n  http2: true\n")
    server = serve(load_web_config(path))

    def said() -> int:
        return sum("http2 is ignored" in r.getMessage() for r in caplog.records)

    assert said() == 1
    for _ in range(3):
        server.set_web_config(load_web_config(path))
    assert said() == 1
    path.write_text("http_server_config:\n  http2: true\n  headers: {X-Frame-Options: deny}\n")
    server.set_web_config(load_web_config(path))
    assert said() == 2
    assert request(server).headers["X-Frame-Options"] == "deny"


@pytest.mark.parametrize("written", ["", "tls_server_config:\n", TLS_CONFIG])
def test_a_reload_that_drops_tls_or_auth_keeps_the_old_config(
    serve: ServerFactory, pki: PKI, tmp_path: Path, written: str
) -> None:
    # An editor that truncates before writing, or a reload that reads the file half-written,
    # must not turn the endpoint into plain HTTP without a password.
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    path = write_config(
        tmp_path, TLS_CONFIG + f"basic_auth_users:\n  prometheus: '{hashed}'\n", pki
    )
    server = serve(load_web_config(path))
    path.write_text(written)
    with pytest.raises(WebConfigError, match="restart the daemon") as error:
        server.set_web_config(load_web_config(path))
    assert error.value.path == str(path)
    assert server.tls_enabled
    context = client_context(pki)
    assert request(server, context=context).status == 401
    assert request(server, context=context, headers=basic("prometheus", "s3cret")).status == 200
    # Adding them on a reload is fine.
    plain = serve()
    plain.set_web_config(
        load_web_config(write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"))
    )
    assert request(plain).status == 401


# --- basic auth ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {
        "prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode(),
        "grafana": bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(rounds=4)).decode(),
    }


def test_basic_auth(serve: ServerFactory, users: dict[str, str], tmp_path: Path) -> None:
    lines = "".join(f"  {user}: '{hashed}'\n" for user, hashed in users.items())
    config = load_web_config(write_config(tmp_path, "basic_auth_users:\n" + lines))
    assert any("clear" in w for w in config.warnings)
    server = serve(config)

    assert request(server, headers=basic("prometheus", "s3cret")).status == 200
    assert request(server, headers=basic("grafana", "pässwörd")).status == 200
    refused = [
        {},
        basic("prometheus", "wrong"),
        basic("prometheus", ""),
        basic("nobody", "s3cret"),
        basic("grafana", "s3cret"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic \u00e9t\u00e9"},
    ]
    for headers in refused:
        response = request(server, headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == "Basic"
    # Unauthenticated clients learn nothing about paths either.
    assert request(server, "/nowhere").status == 401
    assert request(server, "/nowhere", headers=basic("prometheus", "s3cret")).status == 404


class CountingCheck:
    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.hashes.append(hashed)
        return bcrypt.checkpw(password, hashed)


def test_basic_auth_caches_only_successes(users: dict[str, str]) -> None:
    check = CountingCheck()
    auth = BasicAuth(users, check_password=check)
    right = basic("prometheus", "s3cret")["Authorization"]
    wrong = basic("prometheus", "guess")["Authorization"]

    assert all(auth.authenticate(right) for _ in range(5))
    assert len(check.hashes) == 1
    assert not any(auth.authenticate(wrong) for _ in range(3))
    assert len(check.hashes) == 4
    # The good password is still answered from the cache after the wrong guesses.
    assert auth.authenticate(right)
    assert len(check.hashes) == 4


def test_basic_auth_unknown_user_still_pays_bcrypt(users: dict[str, str]) -> None:
    check = CountingCheck()
    auth = BasicAuth(users, check_password=check)
    assert not auth.authenticate(basic("nobody", "s3cret")["Authorization"])
    assert not auth.authenticate(basic("nobody", "s3cret")["Authorization"])
    assert len(check.hashes) == 2
    assert check.hashes[0] not in {h.encode() for h in users.values()}
    assert check.hashes[0][4:6] == b"04"  # the same cost as the real hashes
    assert not auth.authenticate(None)
    assert len(check.hashes) == 2


def test_basic_auth_long_passwords_compare_on_72_bytes() -> None:
    long = "x" * 80
    auth = BasicAuth({"u": bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(rounds=4)).decode()})
    assert auth.authenticate(basic("u", long)["Authorization"])


# --- the config file ----------------------------------------------------------------------------


def test_empty_config_is_plain_http(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, ""))
    assert config.tls is None
    assert dict(config.basic_auth_users) == {}
    assert config.path == tmp_path / "web.yml"


def test_headers_are_added_to_every_response(serve: ServerFactory, tmp_path: Path) -> None:
    text = """
http_server_config:
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
"""
    server = serve(load_web_config(write_config(tmp_path, text)))
    for path in ("/metrics", "/", "/nowhere"):
        response = request(server, path)
        assert response.headers["X-Frame-Options"] == "deny"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_valid_but_unsupported_settings_are_warnings(pki: PKI, tmp_path: Path) -> None:
    text = (
        TLS_CONFIG
        + """  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
  curve_preferences: [X25519]
  min_version: TLS10
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
rate_limit:
  burst: 10
  interval: 1s
"""
    )
    config = load_web_config(write_config(tmp_path, text, pki))
    assert config.tls is not None
    assert config.tls.min_version is TLSVersion.TLS12
    assert config.tls.prefer_server_cipher_suites is False
    joined = "\n".join(config.warnings)
    for name in ("cipher_suites", "curve_preferences", "min_version", "http2", "rate_limit"):
        assert name in joined


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("tls_server_confg: {}\n", "tls_server_confg", "unknown setting"),
        ("listen: ':9100'\n", "listen", "unknown setting"),
        ("tls_server_config:\n  cert_flie: x\n", "tls_server_config.cert_flie", "unknown"),
        ("http_server_config:\n  compression: true\n", "http_server_config.compression", ""),
        ("- a list\n", None, "must be a mapping"),
        ("tls_server_config:\n  cert_file: server.pem\n", "tls_server_config.key_file",
         "key_file is missing"),
        ("tls_server_config:\n  cert_file: gone.pem\n  key_file: server.key\n",
         "tls_server_config.cert_file", "gone.pem"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: gone.key\n",
         "tls_server_config.key_file", "gone.key"),
        ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
         "tls_server_config.cert_file", "cannot load certificate"),
        (TLS_CONFIG + "  client_auth_type: RequireAndVerifyClientCert\n",
         "tls_server_config.client_ca_file", "needs client_ca_file"),
        (TLS_CONFIG + "  client_ca_file: ca.pem\n", "tls_server_config.client_ca_file",
         "NoClientCert"),
        (TLS_CONFIG + "  client_ca_file: nope.pem\n  client_auth_type: VerifyClientCertIfGiven\n",
         "tls_server_config.client_ca_file", "nope.pem"),
        (TLS_CONFIG + "  client_auth_type: RequireAnyClientCert\n",
         "tls_server_config.client_auth_type", "not supported"),
        (TLS_CONFIG + "  client_auth_type: Sometimes\n", "tls_server_config.client_auth_type",
         "unknown value"),
        (TLS_CONFIG + "  client_allowed_sans: [a.example]\n",
         "tls_server_config.client_allowed_sans", "RequireAndVerifyClientCert"),
        (TLS_CONFIG + "  min_version: TLS14\n", "tls_server_config.min_version", "TLS14"),
        (TLS_CONFIG + "  min_version: TLS13\n  max_version: TLS12\n",
         "tls_server_config.max_version", "below"),
        (TLS_CONFIG + "  cert: '-----BEGIN CERTIFICATE-----'\n", "tls_server_config.cert",
         "cert_file"),
        ("basic_auth_users:\n  bob: plaintext\n", "basic_auth_users.bob", "bcrypt"),
        ("basic_auth_users:\n  123: x\n", "basic_auth_users.123", "quote"),
        ("basic_auth_users:\n  bob: $2b$04$x\n  bob: $2b$04$y\n", None, "duplicate key"),
        ("http_server_config:\n  headers:\n    Server: nginx\n",
         "http_server_config.headers.Server", "cannot be set"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
         "http_server_config.headers.X-Frame-Options", "deny"),
        ("http_server_config:\n  headers:\n    Content-Security-Policy: \"a\\r\\nSet-Cookie: x\"\n",
         "http_server_config.headers.Content-Security-Policy", "control characters"),
        ("tls_server_config: [\n", None, "invalid YAML"),
    ],
)  # fmt: skip
def test_bad_config_files(
    pki: PKI, tmp_path: Path, text: str, key: str | None, message: str
) -> None:
    path = write_config(tmp_path, text, pki)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    error = caught.value
    assert error.path == str(path)
    assert error.key == key
    assert str(path) in str(error)
    assert message in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read") as caught:
        load_web_config(tmp_path / "absent.yml")
    assert caught.value.path == str(tmp_path / "absent.yml")


def test_a_symlinked_config_is_read_through_the_link(tmp_path: Path) -> None:
    target = write_config(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    link = tmp_path / "link.yml"
    link.symlink_to(target)
    assert dict(load_web_config(link).headers) == {"X-Frame-Options": "deny"}


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "directory"])
def test_a_config_that_is_not_a_sane_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "web.yml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes it: a blocking open would wait for ever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless: reading it whole would exhaust memory
    elif kind == "huge":
        path.write_text("# padding\n" * 200_000)
    else:
        path.mkdir()
    # In a child with a deadline and a memory cap: a regression hangs or balloons only there.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from rctlpolicy.web import WebConfigError, load_web_config\n"
        "try:\n"
        "    load_web_config(sys.argv[1])\n"
        "except WebConfigError as error:\n"
        "    print(error.path); print(error.message)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=DEADLINE * 2,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {kind} as the web config hung")
    assert done.returncode == 0, done.stderr
    where, message = done.stdout.splitlines()
    assert where == str(path)
    assert message.startswith("cannot read the web config file"), message
