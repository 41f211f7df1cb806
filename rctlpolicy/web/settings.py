"""The metrics server's limits and its listen address: plain values, no I/O.

Every limit is chosen so that one client, or a thousand hostile ones, costs the daemon a file
descriptor and a few kilobytes each, and never delays a legitimate scrape for long:

- ``max_connections``: how many connections are open at once. When full, the oldest connection
  that has not yet completed an authorised request is closed to make room (a slowloris client
  or a stalled TLS handshake); a scraper that has been served keeps its keep-alive connection.
- ``header_budget``: the request line and every header together, enforced while reading.
- ``idle_timeout``: the longest wait for the next bytes of a request (or of a handshake).
- ``request_deadline``: the longest a request's line and headers may take in all, however
  slowly they trickle in.
- ``handshake_timeout``: the longest a TLS handshake may take in all.
- ``auth_workers`` and ``auth_queue``: bcrypt runs on this many threads; at most this many
  checks wait for one, beyond that a request is answered 503 at once.

The listen address is ``HOST:PORT`` as Prometheus exporters take it: ``127.0.0.1:10217``,
``[::1]:10217`` (an IPv6 address in brackets), ``:10217`` (every address).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_REQUEST_DEADLINE = 30.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: A scrape's request is a few hundred bytes; browsers send a few kilobytes of cookies at most.
DEFAULT_HEADER_BUDGET = 16 * 1024
#: An idle or incomplete connection costs a descriptor and a few kilobytes, so the cap can be
#: generous; it stays well under FreeBSD's and Linux' usual per-process descriptor limits.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_AUTH_WORKERS = 2
DEFAULT_AUTH_QUEUE = 64


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How much the metrics server gives any one client; see the module's docstring."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    request_deadline: float = DEFAULT_REQUEST_DEADLINE
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    header_budget: int = DEFAULT_HEADER_BUDGET
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    auth_workers: int = DEFAULT_AUTH_WORKERS
    auth_queue: int = DEFAULT_AUTH_QUEUE

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "request_deadline", "handshake_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("header_budget", "max_connections", "auth_workers", "auth_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class ListenAddressError(ValueError):
    """A listen address that is not ``HOST:PORT``; the message says what is wrong."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host, port); the host without brackets,
    empty for every address. Raises ListenAddressError."""
    text = address.strip()
    if "/" in text:
        raise ListenAddressError(
            f"'{address}' is HOST:PORT, not a URL (such as 127.0.0.1:10217 or [::1]:10217; "
            "the path is --web.telemetry-path)"
        )
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenAddressError(f"'{address}' is not HOST:PORT (such as 127.0.0.1:10217)")
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            raise ListenAddressError(
                f"'{address}' is not HOST:PORT: brackets hold an IPv6 address, as in [::1]:10217"
            )
        host = host[1:-1]
    elif ":" in host:
        raise ListenAddressError(
            f"'{address}' is not HOST:PORT: write an IPv6 address in brackets, as in "
            f"[{host}]:{port_text}"
        )
    elif "]" in host:
        raise ListenAddressError(f"'{address}' is not HOST:PORT (unbalanced brackets)")
    return host, int(port_text)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:10217``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metrics_url(scheme: str, host: str, port: int, path: str) -> str:
    """What to scrape: ``http://[::1]:10217/metrics``; every address is shown as 0.0.0.0."""
    shown = host if host not in ("", "*") else "0.0.0.0"  # noqa: S104 (only shown)
    return f"{scheme}://{host_port(shown, port)}{path}"


class WebConfigError(Exception):
    """The web configuration file cannot be used; ``path`` is the file, ``key`` the setting."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)
