"""The metrics HTTP endpoint: a small threaded server that is safe to expose.

It reads the web configuration file of Prometheus' exporter-toolkit (``--web.config.file``: TLS,
client certificates, basic auth, extra headers), so an operator configures rctlpolicy like any
other exporter. It does not use prometheus_client's server: that one does the TLS handshake in
its accept loop, so one client that connects and sends nothing stalls every scrape. Here one
thread only accepts; each connection gets its own worker thread, which does the handshake and
the HTTP exchange under an idle timeout.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import selectors
import socket
import socketserver
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import bcrypt
import yaml

logger = logging.getLogger(__name__)

#: render(accept_header) -> (body, content_type), called fresh for every scrape.
Render = Callable[[str | None], tuple[bytes, str]]
#: check_password(password, bcrypt_hash) -> bool; bcrypt.checkpw unless a test counts calls.
PasswordCheck = Callable[[bytes, bytes], bool]

DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
#: Longest a TLS handshake, or a request's line and headers, may take in all. The idle
#: timeout bounds each read; this bounds a client that sends one byte every few seconds.
DEFAULT_REQUEST_DEADLINE = 30.0


class WebConfigError(Exception):
    """The web configuration file cannot be used; ``path`` is the file, ``key`` the setting."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


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
_VERSION_ORDER = list(TLSVersion)


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


def _frozen_mapping(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A loaded web configuration file. ``tls`` None means plain HTTP."""

    path: Path | None = None
    tls: TLSServerConfig | None = None
    #: user -> bcrypt hash; empty means no authentication.
    basic_auth_users: Mapping[str, str] = field(default_factory=_frozen_mapping)
    #: http_server_config.headers, added to every response.
    headers: Mapping[str, str] = field(default_factory=_frozen_mapping)
    #: Settings that were valid for exporter-toolkit but are ignored or adjusted here.
    warnings: tuple[str, ...] = ()


# --- loading the configuration file -----------------------------------------------------------

_TOP_LEVEL_KEYS = frozenset(
    {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
)
_TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "prefer_server_cipher_suites",
        "client_allowed_sans",
        # Valid in exporter-toolkit, ignored here with a warning (see _IGNORED_TLS_KEYS).
        "cipher_suites",
        "curve_preferences",
        # Valid in exporter-toolkit, refused here (see _INLINE_TLS_KEYS).
        "cert",
        "key",
        "client_ca",
    }
)
# Ignoring these leaves Python's defaults in place, which are safe, so a warning is enough.
_IGNORED_TLS_KEYS = {
    "cipher_suites": "uses OpenSSL's default TLS 1.2 cipher list (TLS 1.3 suites are fixed)",
    "curve_preferences": "uses OpenSSL's default key-exchange groups",
}
# Ignoring one of these would silently serve plain HTTP or skip client verification: refuse.
_INLINE_TLS_KEYS = {"cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file"}
_HTTP_KEYS = frozenset({"http2", "headers"})
_RATE_LIMIT_KEYS = frozenset({"burst", "interval"})
# exporter-toolkit allows only these response headers, some only with these values.
_ALLOWED_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_CLIENT_AUTH_ALIASES = {
    "": ClientAuthType.NO_CLIENT_CERT,
    # exporter-toolkit still accepts this older spelling.
    "RequireClientCert": ClientAuthType.REQUIRE_ANY_CLIENT_CERT,
}
# $2a$/$2b$/$2y$ (htpasswd writes $2y$), a two-digit cost, then 53 characters of salt and hash.
_BCRYPT_HASH = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")
# bcrypt reads only the first 72 bytes of a password; Go's bcrypt (exporter-toolkit) ignores the
# rest when comparing, while Python's bcrypt 5 refuses longer passwords. Truncate to behave
# like the exporter the file was written for.
_BCRYPT_MAX_PASSWORD = 72


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, as exporter-toolkit's strict YAML decoding does."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


class _Reader:
    """Checks one config file's values, naming the file and the dotted key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []

    def error(self, key: str | None, message: str) -> WebConfigError:
        return WebConfigError(self.path, message, key)

    def mapping(self, value: object, key: str, allowed: frozenset[str]) -> dict[str, object]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key or None, f"must be a mapping, not {type(value).__name__}")
        for name in value:
            if not isinstance(name, str) or name not in allowed:
                dotted = f"{key}.{name}" if key else str(name)
                raise self.error(
                    dotted,
                    f"unknown setting; expected one of: {', '.join(sorted(allowed))}",
                )
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def string_map(self, value: object, key: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, not {type(value).__name__}")
        result: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise self.error(f"{key}.{name}", "names must be strings; quote this one")
            result[name] = self.string(item, f"{key}.{name}")
        return result

    def file(self, value: object, key: str) -> Path | None:
        text = self.string(value, key) if value is not None else ""
        if not text:
            return None
        # exporter-toolkit joins relative paths with the config file's directory; absolute,
        # so that a later chdir (daemon(8) runs us from /) cannot change what they name.
        return self.path.absolute().parent / text


def load_web_config(path: Path | str) -> WebConfig:
    """Read an exporter-toolkit web config file; raise WebConfigError naming file and key.

    Certificate and key files are loaded once here, so a missing or broken one is reported at
    startup (and by ``rctlpolicy check``) rather than at the first scrape.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(path, f"cannot read the web config file: {exc}") from exc
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise WebConfigError(path, f"invalid YAML: {exc}") from exc

    reader = _Reader(path)
    top = reader.mapping(document, "", _TOP_LEVEL_KEYS)
    tls = _read_tls(reader, top.get("tls_server_config"))
    headers = _read_http(reader, top.get("http_server_config"))
    users = _read_users(reader, top.get("basic_auth_users"))
    if "rate_limit" in top:
        reader.mapping(top["rate_limit"], "rate_limit", _RATE_LIMIT_KEYS)
        reader.warnings.append("rate_limit is not supported and is ignored")
    if users and tls is None:
        reader.warnings.append(
            "basic_auth_users without tls_server_config: passwords cross the network in clear"
        )
    config = WebConfig(
        path=path,
        tls=tls,
        basic_auth_users=_frozen_mapping(users),
        headers=_frozen_mapping(headers),
        warnings=tuple(reader.warnings),
    )
    if tls is not None:
        build_ssl_context(tls, config_path=path)
    return config


def _read_tls(reader: _Reader, value: object) -> TLSServerConfig | None:
    section = reader.mapping(value, "tls_server_config", _TLS_KEYS)

    def key(name: str) -> str:
        return f"tls_server_config.{name}"

    for inline, file_key in _INLINE_TLS_KEYS.items():
        if section.get(inline):
            raise reader.error(
                key(inline),
                f"inline PEM is not supported by rctlpolicy; put it in a file and set {file_key}",
            )
    for ignored, consequence in _IGNORED_TLS_KEYS.items():
        if section.get(ignored):
            reader.warnings.append(f"{key(ignored)} is ignored: rctlpolicy {consequence}")

    cert_file = reader.file(section.get("cert_file"), key("cert_file"))
    key_file = reader.file(section.get("key_file"), key("key_file"))
    client_ca_file = reader.file(section.get("client_ca_file"), key("client_ca_file"))
    auth_text = section.get("client_auth_type")
    sans_value = section.get("client_allowed_sans")
    # Like exporter-toolkit: TLS is on as soon as any TLS setting is; it then needs cert and key.
    if cert_file is None and key_file is None and client_ca_file is None and not auth_text:
        return None
    if cert_file is None:
        raise reader.error(key("cert_file"), "TLS is configured but cert_file is missing")
    if key_file is None:
        raise reader.error(key("key_file"), "TLS is configured but key_file is missing")

    client_auth = _read_client_auth(reader, auth_text, key("client_auth_type"))
    if client_ca_file is not None and client_auth is ClientAuthType.NO_CLIENT_CERT:
        raise reader.error(
            key("client_ca_file"),
            "client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type "
            "to VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        )
    verifies = client_auth in (
        ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN,
        ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT,
    )
    if verifies and client_ca_file is None:
        # Go would fall back to the system roots; trusting every public CA to vouch for
        # scrapers is never what an operator meant, so require the CA explicitly.
        raise reader.error(
            key("client_ca_file"), f"client_auth_type {client_auth} needs client_ca_file"
        )

    sans: tuple[str, ...] = ()
    if sans_value is not None:
        if not isinstance(sans_value, list):
            raise reader.error(key("client_allowed_sans"), "must be a list of strings")
        sans = tuple(reader.string(s, key("client_allowed_sans")) for s in sans_value)
        if client_auth is not ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT:
            raise reader.error(
                key("client_allowed_sans"),
                "needs client_auth_type RequireAndVerifyClientCert",
            )

    min_version = _read_version(reader, section.get("min_version"), key("min_version"))
    max_version = _read_version(reader, section.get("max_version"), key("max_version"))
    min_version = min_version or TLSVersion.TLS12
    max_version = max_version or TLSVersion.TLS13
    if _VERSION_ORDER.index(min_version) < _VERSION_ORDER.index(TLSVersion.TLS12):
        # TLS 1.0/1.1 are deprecated (RFC 8996); OpenSSL 3 refuses them at its default security
        # level and Python warns when asked for them. Raising the floor only makes it stricter.
        reader.warnings.append(
            f"{key('min_version')} {min_version} raised to TLS12: TLS 1.0 and 1.1 are not offered"
        )
        min_version = TLSVersion.TLS12
    if _VERSION_ORDER.index(max_version) < _VERSION_ORDER.index(min_version):
        raise reader.error(key("max_version"), f"{max_version} is below min_version {min_version}")
    prefer = section.get("prefer_server_cipher_suites", True)

    return TLSServerConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=client_ca_file,
        client_auth_type=client_auth,
        min_version=min_version,
        max_version=max_version,
        prefer_server_cipher_suites=reader.boolean(prefer, key("prefer_server_cipher_suites")),
        client_allowed_sans=sans,
    )


def _read_client_auth(reader: _Reader, value: object, key: str) -> ClientAuthType:
    text = reader.string(value, key) if value is not None else ""
    try:
        client_auth = _CLIENT_AUTH_ALIASES.get(text) or ClientAuthType(text)
    except ValueError:
        raise reader.error(
            key, f"unknown value {text!r}; expected one of: {', '.join(ClientAuthType)}"
        ) from None
    if client_auth is ClientAuthType.REQUIRE_ANY_CLIENT_CERT:
        # Python's ssl module cannot ask for a certificate without verifying it.
        raise reader.error(
            key,
            "RequireAnyClientCert (accept any certificate without verifying it) is not "
            "supported; use RequireAndVerifyClientCert with client_ca_file",
        )
    if client_auth is ClientAuthType.REQUEST_CLIENT_CERT:
        reader.warnings.append(
            f"{key} RequestClientCert: no client certificate is requested, since one "
            "would not be verified or used anyway"
        )
    return client_auth


def _read_version(reader: _Reader, value: object, key: str) -> TLSVersion | None:
    if value is None:
        return None
    text = reader.string(value, key)
    try:
        return TLSVersion(text)
    except ValueError:
        raise reader.error(
            key, f"unknown TLS version {text!r}; expected one of: {', '.join(TLSVersion)}"
        ) from None


def _read_http(reader: _Reader, value: object) -> dict[str, str]:
    section = reader.mapping(value, "http_server_config", _HTTP_KEYS)
    if reader.boolean(section.get("http2", False), "http_server_config.http2"):
        reader.warnings.append("http_server_config.http2 is ignored: rctlpolicy serves HTTP/1.1")
    headers = reader.string_map(section.get("headers"), "http_server_config.headers")
    for name, header_value in headers.items():
        key = f"http_server_config.headers.{name}"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in header_value):
            raise reader.error(key, "control characters (such as line breaks) are not allowed")
        if name not in _ALLOWED_HEADERS:
            raise reader.error(
                key, f"this header cannot be set; allowed: {', '.join(_ALLOWED_HEADERS)}"
            )
        allowed = _ALLOWED_HEADERS[name]
        if allowed and header_value not in allowed:
            raise reader.error(
                key, f"invalid value {header_value!r}; expected one of: {', '.join(allowed)}"
            )
    return headers


def _read_users(reader: _Reader, value: object) -> dict[str, str]:
    users = reader.string_map(value, "basic_auth_users")
    for user, hashed in users.items():
        if ":" in user:
            raise reader.error(f"basic_auth_users.{user}", "a user name cannot contain ':'")
        if not _BCRYPT_HASH.fullmatch(hashed):
            raise reader.error(
                f"basic_auth_users.{user}",
                "not a bcrypt hash (expected $2b$<cost>$...); make one with "
                "`htpasswd -nBC 10 '' | tr -d ':'` or Python's bcrypt.hashpw",
            )
    return users


# --- TLS ----------------------------------------------------------------------------------------


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


_FileStamp = tuple[tuple[int, int, int], ...]


class _TLSContextSource:
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
        files = [self._tls.cert_file, self._tls.key_file]
        if self._tls.client_ca_file is not None:
            files.append(self._tls.client_ca_file)
        try:
            stats = [os.stat(f) for f in files]
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


def _san_allowed(certificate: Mapping[str, Any], allowed: tuple[str, ...]) -> bool:
    wanted = set()
    for entry in allowed:
        try:
            # ssl prints IPv6 SANs uncompressed and upper-case; compare canonical forms.
            wanted.add(str(ipaddress.ip_address(entry)))
        except ValueError:
            wanted.add(entry)
    return bool(_peer_sans(certificate) & wanted)


# --- basic auth ---------------------------------------------------------------------------------


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (tens to hundreds of milliseconds); a scrape every 15 s must not
    pay that each time, so a successful check is remembered per (user, hash) as a keyed digest of
    the password (never the password itself) and later compared in constant time. Failures are
    never cached: every wrong guess pays bcrypt's full cost. An unknown user is checked against a
    dummy hash of the same cost, so timing does not reveal which users exist.
    """

    def __init__(
        self, users: Mapping[str, str], check_password: PasswordCheck = bcrypt.checkpw
    ) -> None:
        self._users = {user: hashed.encode("utf-8") for user, hashed in users.items()}
        self._check_password = check_password
        self._digest_key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()
        # One bcrypt at a time, as exporter-toolkit does: a flood of wrong passwords then costs
        # one core, and good scrapes are answered from the cache meanwhile.
        self._bcrypt_lock = threading.Lock()
        self._dummy_hash: bytes | None = None

    def authenticate(self, authorization: str | None) -> bool:
        """True if the header names a configured user with the right password."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        password = password[:_BCRYPT_MAX_PASSWORD]
        digest = hmac.new(self._digest_key, password, hashlib.sha256).digest()
        hashed = self._users.get(user)
        if hashed is not None:
            with self._lock:
                remembered = self._verified.get((user, hashed))
            if remembered is not None and hmac.compare_digest(remembered, digest):
                return True
        with self._bcrypt_lock:
            ok = self._bcrypt(password, hashed if hashed is not None else self._dummy())
        if not ok or hashed is None:
            return False
        with self._lock:
            self._verified[(user, hashed)] = digest
        return True

    def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._check_password(password, hashed)
        except ValueError as exc:
            # A hash that matched the pattern but that bcrypt still refuses.
            logger.error("basic auth: cannot check a password against a configured hash: %s", exc)
            return False

    def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            costs = []
            for hashed in self._users.values():
                match = _BCRYPT_HASH.fullmatch(hashed.decode("utf-8", "replace"))
                if match:
                    costs.append(int(match.group(1)))
            # bcrypt accepts costs 4 to 31; 10 is the usual default when nothing else is known.
            rounds = min(max(max(costs, default=10), 4), 31)
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))
        return self._dummy_hash


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        raw_user, sep, password = decoded.partition(b":")
        user = raw_user.decode("utf-8")
    except ValueError:
        # binascii.Error, UnicodeDecodeError, and non-ASCII text given to b64decode.
        return None
    if not sep:
        return None
    return user, password


# --- HTTP ---------------------------------------------------------------------------------------


def _accepts_gzip(accept_encoding: str | None) -> bool:
    """True if an Accept-Encoding header allows gzip (an explicit q=0 refuses it)."""
    if not accept_encoding:
        return False
    wildcard: bool | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            wildcard = quality > 0
    return bool(wildcard)


_DEFAULT_LANDING_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>rctlpolicy</title></head>
<body><h1>rctlpolicy</h1><p><a href="{path}">Metrics</a></p></body></html>
"""
_MAX_REQUEST_LINE = 65536


@dataclass(frozen=True, slots=True)
class _ServeState:
    """What a connection needs from the current web config; swapped whole on reload."""

    tls: _TLSContextSource | None
    auth: BasicAuth | None
    headers: tuple[tuple[str, str], ...]


class _Connection:
    """One accepted connection, so stop() can wake its worker wherever it is blocked."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.lock = threading.Lock()
        self.aborted = False
        self.thread: threading.Thread | None = None

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            try:
                # The plain socket method even on an SSLSocket: SSLSocket.shutdown would drop
                # the SSL object under the worker's feet; this only wakes its blocked recv().
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass


@contextlib.contextmanager
def _deadline(seconds: float, connection: _Connection) -> Iterator[None]:
    """Abort the connection if the block has not finished within `seconds`."""
    timer = threading.Timer(seconds, connection.abort)
    timer.daemon = True
    timer.name = "rctlpolicy-web-deadline"
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive over one connection, answering from a MetricsServer."""

    protocol_version = "HTTP/1.1"
    # The stdlib answers malformed request lines as HTTP/0.9, without a status line; nobody
    # scrapes with HTTP/0.9, so give such clients a readable 400 instead.
    default_request_version = "HTTP/1.0"
    server_version = "rctlpolicy"
    sys_version = ""

    def __init__(
        self, sock: socket.socket, peer: str, app: MetricsServer, connection: _Connection
    ) -> None:
        # Set before super().__init__, which serves the whole connection before returning.
        self._app = app
        self._peer = peer
        self._connection = connection
        # BaseHTTPRequestHandler never reads .server; our state comes through _app.
        super().__init__(sock, (peer, 0), cast("socketserver.BaseServer", None))

    def handle_one_request(self) -> None:
        # Replaces the stdlib version so that every method reaches _respond (which answers 405)
        # instead of 501 for methods without a do_* function; timeouts and socket errors
        # propagate to the worker, which logs and closes.
        with _deadline(self._app.request_deadline, self._connection):
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
        self._respond()
        self.wfile.flush()

    def _respond(self) -> None:
        state = self._app._state
        head = self.command == "HEAD"
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or self.headers.get(
            "Transfer-Encoding"
        ):
            # The body is never read; closing afterwards keeps the next request from starting
            # in the middle of it.
            self.close_connection = True
        if state.auth is not None and not state.auth.authenticate(
            self.headers.get("Authorization")
        ):
            self._send(401, b"Unauthorized\n", head=head, extra=(("WWW-Authenticate", "Basic"),))
            return
        path = urllib.parse.urlsplit(self.path).path
        app = self._app
        if path == app.telemetry_path:
            if self._allow_get_head():
                self._send_metrics(head)
        elif path == "/":
            if self._allow_get_head():
                self._send(200, app.landing_page, "text/html; charset=utf-8", head=head)
        else:
            self._send(404, b"Not Found\n", head=head)

    def _allow_get_head(self) -> bool:
        if self.command in ("GET", "HEAD"):
            return True
        self.close_connection = True
        self._send(405, b"Method Not Allowed\n", extra=(("Allow", "GET, HEAD"),))
        return False

    def _send_metrics(self, head: bool) -> None:
        try:
            body, content_type = self._app.render(self.headers.get("Accept"))
        except Exception:
            logger.exception("rendering metrics failed")
            self._send(500, b"Internal Server Error\n", head=head)
            return
        extra = [("Vary", "Accept-Encoding")]
        if _accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=6, mtime=0)
            extra.append(("Content-Encoding", "gzip"))
        self._send(200, body, content_type, head=head, extra=tuple(extra))

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        head: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        for name, value in (*self._app._state.headers, *extra):
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %r %s", self._peer, self.requestline, code)

    def log_error(self, format: str, *args: Any) -> None:
        # Client mistakes (bad request lines, oversized headers) are not server errors.
        logger.debug("%s: " + format, self._peer, *args)


def _format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _split_host(host: str) -> str:
    # "[::1]" is how an IPv6 literal appears in a listen address like "[::1]:9100".
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


class MetricsServer:
    """Serves ``render()`` on ``telemetry_path`` over HTTP or HTTPS, optionally with basic auth.

    One thread accepts and does nothing else; each connection gets a worker thread that does the
    TLS handshake and the HTTP exchange with ``idle_timeout`` on every read, so idle or stalled
    clients only ever hold their own thread. At most ``max_connections`` are served at once;
    connections beyond that are closed at once rather than queued.
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
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    ) -> None:
        if not telemetry_path.startswith("/"):
            raise ValueError(f"telemetry path must start with '/': {telemetry_path!r}")
        self.host = _split_host(host)
        self.requested_port = port
        self.telemetry_path = telemetry_path
        self.render = render
        self.landing_page = (
            landing_page
            if landing_page is not None
            else _DEFAULT_LANDING_PAGE.format(path=html.escape(telemetry_path)).encode()
        )
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self._web_config = web_config
        self._state = self._build_state(web_config)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @staticmethod
    def _build_state(web_config: WebConfig | None) -> _ServeState:
        if web_config is None:
            return _ServeState(tls=None, auth=None, headers=())
        tls = None
        if web_config.tls is not None:
            tls = _TLSContextSource(web_config.tls, web_config.path or "<web config>")
        auth = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
        return _ServeState(tls=tls, auth=auth, headers=tuple(web_config.headers.items()))

    def set_web_config(self, web_config: WebConfig | None) -> None:
        """Use a new web config for new connections and requests (e.g. after SIGHUP).

        Raises WebConfigError, keeping the old config, if its TLS files cannot be loaded.
        """
        state = self._build_state(web_config)
        self._log_warnings(web_config)
        self._web_config = web_config
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

    def start(self) -> None:
        """Bind and start serving in background threads; OSError if the address is taken."""
        if self._listener is not None:
            raise RuntimeError("MetricsServer already started")
        self._log_warnings(self._web_config)
        listener = self._bind()
        listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"metrics-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        scheme = "https" if self.tls_enabled else "http"
        logger.info(
            "serving metrics on %s://%s:%d%s", scheme, self.host, self.port, self.telemetry_path
        )

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
        """Stop accepting, close every connection and wait for the threads to end."""
        if self._listener is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        # The accept thread has ended, so no new connection can appear from here on.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        for connection in connections:
            if connection.thread is not None:
                connection.thread.join(timeout)
        for closable in (self._selector, self._listener, self._wake_r, self._wake_w):
            if closable is not None:
                closable.close()
        self._listener = self._selector = self._wake_r = self._wake_w = None
        self._accept_thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._selector is not None and self._listener is not None
        listener, selector = self._listener, self._selector
        while not self._stopping.is_set():
            try:
                ready = selector.select()
            except OSError:
                logger.exception("metrics listener: select failed")
                return
            if self._stopping.is_set():
                return
            if not any(key.fileobj is listener for key, _ in ready):
                continue
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                # Typically EMFILE: the connection stays queued and select() would report it
                # again at once, so pause instead of spinning.
                logger.error("metrics listener: accept failed: %s", exc)
                self._stopping.wait(0.1)
                continue
            try:
                self._hand_off(sock, address)
            except Exception:
                # Whatever went wrong with one client, the loop must keep accepting the next.
                logger.exception("metrics listener: cannot hand off a connection")
                sock.close()

    def _hand_off(self, sock: socket.socket, address: Any) -> None:
        peer = _format_peer(address)
        connection = _Connection(sock, peer)
        with self._lock:
            if len(self._connections) >= self.max_connections:
                full = True
            else:
                full = False
                self._connections.add(connection)
        if full:
            logger.warning("metrics: %d connections open, refusing %s", self.max_connections, peer)
            sock.close()
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(connection,), name=f"metrics-{peer}", daemon=True
        )
        connection.thread = thread
        try:
            thread.start()
        except RuntimeError as exc:
            # Out of threads: drop this client, keep accepting.
            logger.error("metrics: cannot start a thread for %s: %s", peer, exc)
            with self._lock:
                self._connections.discard(connection)
            sock.close()

    def _serve_connection(self, connection: _Connection) -> None:
        peer = connection.peer
        try:
            sock = connection.sock
            sock.settimeout(self.idle_timeout)
            state = self._state
            if state.tls is not None:
                context = state.tls.context()
                with connection.lock:
                    if connection.aborted:
                        return
                    # Handshake here, in the worker, never in the accept loop: a client that
                    # never sends its ClientHello only holds this thread until idle_timeout.
                    sock = context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                    connection.sock = sock
                assert isinstance(sock, ssl.SSLSocket)
                with _deadline(self.request_deadline, connection):
                    sock.do_handshake()
                sans = state.tls.client_allowed_sans
                if sans and not _san_allowed(sock.getpeercert() or {}, sans):
                    logger.warning("TLS client %s: certificate has none of the allowed SANs", peer)
                    return
            _RequestHandler(sock, peer, self, connection)
        except TimeoutError:
            logger.debug("closing idle connection from %s", peer)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
            logger.debug("connection from %s closed by the client", peer)
        except ssl.SSLError as exc:
            # Mostly handshakes: a client with no, an expired or an untrusted certificate, or
            # one speaking plain HTTP to the TLS port.
            logger.warning("TLS with %s failed: %s", peer, exc.reason or exc)
        except OSError as exc:
            if not self._stopping.is_set():
                logger.debug("connection from %s failed: %s", peer, exc)
        except Exception:
            logger.exception("unexpected error serving %s", peer)
        finally:
            with connection.lock:
                connection.aborted = True
                connection.sock.close()
            with self._lock:
                self._connections.discard(connection)
