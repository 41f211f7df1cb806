"""The metrics HTTP endpoint, safe to expose (see rctlpolicy.web.server).

- ``settings``: the server's limits and the listen address (``HOST:PORT``, IPv6 in brackets);
- ``webconfig``: exporter-toolkit's web config file (``--web.config.file``), read through
  rctlpolicy.yamlload;
- ``tls``: its TLS settings as an SSLContext, reloaded when a certificate is renewed;
- ``auth``: basic auth against bcrypt hashes, with a cache of verified credentials;
- ``connection``: one client, as an asyncio protocol over h11;
- ``server``: the event loop, the connection cap and eviction, the bcrypt pool;
- ``render``: concurrent scrapes sharing one render (and one gzip of it);
- ``metrics``: the server's own counters as Prometheus metric families.

The names below are imported on first use, so that ``rctlpolicy.web.settings`` (which the
daemon's configuration reads) does not pull in asyncio, ssl, h11 or bcrypt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rctlpolicy.web.auth import BasicAuth
    from rctlpolicy.web.render import Render
    from rctlpolicy.web.server import MetricsServer, ServerStats
    from rctlpolicy.web.settings import ServerLimits, WebConfigError
    from rctlpolicy.web.tls import ClientAuthType, TLSServerConfig, TLSVersion, build_ssl_context
    from rctlpolicy.web.webconfig import WebConfig, load_web_config

_HOMES = {
    "BasicAuth": "auth",
    "MetricsServer": "server",
    "Render": "render",
    "ServerStats": "server",
    "ServerLimits": "settings",
    "WebConfigError": "settings",
    "ClientAuthType": "tls",
    "TLSServerConfig": "tls",
    "TLSVersion": "tls",
    "build_ssl_context": "tls",
    "WebConfig": "webconfig",
    "load_web_config": "webconfig",
}

__all__ = [
    "BasicAuth",
    "ClientAuthType",
    "MetricsServer",
    "Render",
    "ServerLimits",
    "ServerStats",
    "TLSServerConfig",
    "TLSVersion",
    "WebConfig",
    "WebConfigError",
    "build_ssl_context",
    "load_web_config",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rctlpolicy.web' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rctlpolicy.web.{home}"), name)
