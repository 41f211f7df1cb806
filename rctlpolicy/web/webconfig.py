"""The web configuration file of Prometheus' exporter-toolkit (``--web.config.file``).

TLS, client certificates, basic auth and extra response headers, in the format every Prometheus
exporter reads, so an operator configures rctlpolicy like any other exporter. Read through
``rctlpolicy.yamlload`` (a key given twice is an error, a huge document is refused); every
error names the file and the dotted key. Settings exporter-toolkit accepts but rctlpolicy cannot
honour are warnings when ignoring them is safe, errors when it is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from rctlpolicy import safeio, yamlload
from rctlpolicy.codes import Code
from rctlpolicy.web.auth import BCRYPT_HASH
from rctlpolicy.web.settings import WebConfigError
from rctlpolicy.web.tls import (
    VERSION_ORDER,
    ClientAuthType,
    TLSServerConfig,
    TLSVersion,
    build_ssl_context,
)

__all__ = ["WebConfig", "WebConfigError", "load_web_config"]

#: The largest web config file read; real ones are a few hundred bytes.
MAX_FILE_SIZE = 1024 * 1024


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


# --- reading the file ------------------------------------------------------------------------

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
        # A regular file (through a symlink or not) of a sane size: a FIFO or /dev/zero
        # planted at the path must not hang or exhaust a reload.
        text = safeio.read_bytes(path, limit=MAX_FILE_SIZE, follow_symlinks=True).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(path, f"cannot read the web config file: {exc}") from exc
    try:
        document = yamlload.load(text)
    except yamlload.YamlError as exc:
        what = "duplicate key" if exc.code == Code.DUPLICATE_KEY else "invalid YAML"
        raise WebConfigError(path, f"{what}: {exc}") from exc

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
    if VERSION_ORDER.index(min_version) < VERSION_ORDER.index(TLSVersion.TLS12):
        # TLS 1.0/1.1 are deprecated (RFC 8996); OpenSSL 3 refuses them at its default security
        # level and Python warns when asked for them. Raising the floor only makes it stricter.
        reader.warnings.append(
            f"{key('min_version')} {min_version} raised to TLS12: TLS 1.0 and 1.1 are not offered"
        )
        min_version = TLSVersion.TLS12
    if VERSION_ORDER.index(max_version) < VERSION_ORDER.index(min_version):
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
        if not BCRYPT_HASH.fullmatch(hashed):
            raise reader.error(
                f"basic_auth_users.{user}",
                "not a bcrypt hash (expected $2b$<cost>$...); make one with "
                "`htpasswd -nBC 10 '' | tr -d ':'` or Python's bcrypt.hashpw",
            )
    return users
