"""TLS for the metrics endpoint: exporter-toolkit's ``tls_server_config`` as an SSLContext.

The types here are the section's settings once read (``rctlpolicy.web.webconfig`` reads them);
``TLSContextSource`` gives each new connection the current context, rebuilt when a renewed
certificate appears on disk, and ``san_allowed`` checks a client certificate's names.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from rctlpolicy.web.settings import WebConfigError

logger = logging.getLogger("rctlpolicy.web")


class ClientAuthType(StrEnum):
    """exporter-toolkit's ``client_auth_type`` values (Go's tls.ClientAuthType names)."""

    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


class TLSVersion(StrEnum):
    """exporter-toolkit's ``min_version`` / ``max_version`` values."""

    TLS10 = "TLS10"
    TLS11 = "TLS11"
    TLS12 = "TLS12"
    TLS13 = "TLS13"

    @property
    def ssl_version(self) -> ssl.TLSVersion:
        return _SSL_VERSIONS[self]


_SSL_VERSIONS = {
    TLSVersion.TLS10: ssl.TLSVersion.TLSv1,
    TLSVersion.TLS11: ssl.TLSVersion.TLSv1_1,
    TLSVersion.TLS12: ssl.TLSVersion.TLSv1_2,
    TLSVersion.TLS13: ssl.TLSVersion.TLSv1_3,
}
VERSION_ORDER = list(TLSVersion)


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """``tls_server_config``, with file paths already resolved against the config's directory."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType = ClientAuthType.NO_CLIENT_CERT
    min_version: TLSVersion = TLSVersion.TLS12
    max_version: TLSVersion = TLSVersion.TLS13
    prefer_server_cipher_suites: bool = True
    #: A verified client certificate must carry one of these SANs (DNS, email, IP or URI).
    client_allowed_sans: tuple[str, ...] = ()


def _no_key_password() -> bytes:
    # Without a password callback, OpenSSL prompts on the terminal for an encrypted key.
    return b""


def build_ssl_context(
    tls: TLSServerConfig, config_path: Path | str = "<web config>"
) -> ssl.SSLContext:
    """A server-side SSLContext for ``tls``; WebConfigError names the file that failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version.ssl_version
    context.maximum_version = tls.max_version.ssl_version
    if not tls.prefer_server_cipher_suites:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # Scrapers never renegotiate; a client that does so repeatedly only burns server CPU.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    _refuse_special_files(tls, config_path)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_key_password)
    except (OSError, ssl.SSLError) as exc:
        missing = next((p for p in (tls.cert_file, tls.key_file) if not p.is_file()), None)
        if missing is not None:
            which = "cert_file" if missing == tls.cert_file else "key_file"
            raise WebConfigError(
                config_path, f"cannot read {missing}: no such file", f"tls_server_config.{which}"
            ) from exc
        raise WebConfigError(
            config_path,
            f"cannot load certificate {tls.cert_file} with key {tls.key_file} (both PEM, the "
            f"key unencrypted and matching the certificate?): {exc}",
            "tls_server_config.cert_file",
        ) from exc
    if tls.client_auth_type in (
        ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN,
        ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT,
    ):
        if tls.client_ca_file is None:
            raise WebConfigError(
                config_path,
                f"client_auth_type {tls.client_auth_type} needs client_ca_file",
                "tls_server_config.client_ca_file",
            )
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                config_path,
                f"cannot load client CA certificates from {tls.client_ca_file}: {exc}",
                "tls_server_config.client_ca_file",
            ) from exc
        context.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth_type is ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT
            else ssl.CERT_OPTIONAL
        )
    return context


def _files(tls: TLSServerConfig) -> list[tuple[str, Path]]:
    files = [("cert_file", tls.cert_file), ("key_file", tls.key_file)]
    if tls.client_ca_file is not None:
        files.append(("client_ca_file", tls.client_ca_file))
    return files


def _refuse_special_files(tls: TLSServerConfig, config_path: Path | str) -> None:
    """WebConfigError for a FIFO or a device where a PEM file should be: OpenSSL would wait on
    a FIFO for ever (on the event loop, when a certificate is renewed) or read a device
    without end. A missing file is left for OpenSSL to report."""
    for key, path in _files(tls):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise WebConfigError(
                config_path, f"{path} is not a regular file", f"tls_server_config.{key}"
            )


_FileStamp = tuple[tuple[int, int, int], ...]


class TLSContextSource:
    """The SSLContext for new connections, rebuilt when a certificate, key or CA file changes.

    exporter-toolkit re-reads the certificate on every handshake so a renewed certificate is
    served without a restart; comparing a few stat() results per connection gives the same
    effect without parsing PEM each time. A renewal that fails to load keeps the old context.
    """

    def __init__(self, tls: TLSServerConfig, config_path: Path | str) -> None:
        self._tls = tls
        self._config_path = config_path
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self._context = build_ssl_context(tls, config_path)

    def _current_stamp(self) -> _FileStamp | None:
        try:
            stats = [os.stat(f) for _, f in _files(self._tls)]
        except OSError:
            # Mid-rename, or deleted: keep serving the certificate already loaded.
            return None
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    @property
    def client_allowed_sans(self) -> tuple[str, ...]:
        return self._tls.client_allowed_sans

    def context(self) -> ssl.SSLContext:
        stamp = self._current_stamp()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                # Remember the new stamp even on failure, so a broken file is logged once.
                self._stamp = stamp
                try:
                    self._context = build_ssl_context(self._tls, self._config_path)
                    logger.info("reloaded TLS certificate %s", self._tls.cert_file)
                except WebConfigError as exc:
                    logger.error("keeping the previous TLS certificate: %s", exc)
            return self._context


def _peer_sans(certificate: Mapping[str, Any]) -> set[str]:
    """The subjectAltName values of a verified peer certificate, IPs in canonical form."""
    values: set[str] = set()
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                values.add(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                continue
        elif kind in ("DNS", "email", "URI"):
            values.add(value)
    return values


def san_allowed(certificate: Mapping[str, Any], allowed: tuple[str, ...]) -> bool:
    wanted = set()
    for entry in allowed:
        try:
            # ssl prints IPv6 SANs uncompressed and upper-case; compare canonical forms.
            wanted.add(str(ipaddress.ip_address(entry)))
        except ValueError:
            wanted.add(entry)
    return bool(_peer_sans(certificate) & wanted)
