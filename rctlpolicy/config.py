"""The daemon's configuration: command-line flags and the equivalent YAML file.

The file uses the flags' names without dashes (`rules-dir: /usr/local/etc/rctlpolicy/rules`,
`web.listen-address: "127.0.0.1:10217"`); a flag given on the command line wins over the file.
It is read with `rctlpolicy.yamlload`, so a setting given twice is an error, not the last one.
"""

from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rctlpolicy import yamlload
from rctlpolicy.amounts import AmountError, expand_number, parse_duration
from rctlpolicy.web.settings import ListenAddressError, parse_listen_address

DEFAULT_CONFIG_PATH = Path("/usr/local/etc/rctlpolicy.yaml")
DEFAULT_RULES_DIR = Path("/usr/local/etc/rctlpolicy/rules")
#: Our own port. Prometheus' default port allocation list for exporters has filled its whole
#: range 9100-9999 (9913, say, is nginx-vts-exporter's), so rctlpolicy takes one outside it
#: (jail_exporter uses 9452, node_exporter 9100).
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:10217"
DEFAULT_DEVD_SOCKET = Path("/var/run/devd.seqpacket.pipe")
DEFAULT_SYSLOG_SOCKET = "/var/run/log"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: text: a timestamped line for a terminal; logfmt: key=value pairs; json: an object per line.
LOG_FORMATS = ("text", "logfmt", "json")
#: The largest policy file read (`max-policy-file-size`): real policies are kilobytes.
DEFAULT_MAX_POLICY_FILE_SIZE = 16 * 1024 * 1024


class ConfigError(Exception):
    """The configuration file or a flag is wrong; the message says where and how."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything `rctlpolicy daemon` and `rctlpolicy handle` are told (defaults: FreeBSD's)."""

    rules_dir: Path = DEFAULT_RULES_DIR
    kernel: str = "auto"
    sim_host: Path | None = None
    devd_socket: Path | None = None
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    telemetry_path: str = "/metrics"
    web_config_file: Path | None = None
    pidfile: Path | None = None
    syslog: bool = False
    syslog_socket: str = DEFAULT_SYSLOG_SOCKET
    log_level: str = "info"
    log_format: str = "text"
    flush_on_exit: bool = False
    output_file: Path | None = None
    state_dir: Path | None = None
    #: How often the jail list is compared with the last one (jail patterns, episodes).
    jail_poll_interval: float = 5.0
    #: How long the rules directory must be quiet before it is looked at after a change.
    reload_debounce: float = 0.3
    #: How long every policy file must stay unchanged before a changed policy is applied.
    reload_settle: float = 2.0
    #: Policy files larger than this (bytes) are refused before they are read.
    max_policy_file_size: int = DEFAULT_MAX_POLICY_FILE_SIZE
    #: Bound on how long running actions may finish at shutdown.
    shutdown_timeout: float = 10.0
    #: How often every jail's usage is sampled into STATE_DIR/history.sqlite (0: never).
    history_interval: float = 60.0
    #: How long per-interval samples are kept (seconds).
    history_raw_retention: float = 48 * 3600.0
    #: How long hourly rollups are kept (seconds).
    history_retention: float = 35 * 86400.0


#: File key -> field name. The keys are the flags without their leading dashes.
FILE_KEYS: dict[str, str] = {
    "rules-dir": "rules_dir",
    "kernel": "kernel",
    "sim-host": "sim_host",
    "devd-socket": "devd_socket",
    "web.listen-address": "listen_address",
    "web.telemetry-path": "telemetry_path",
    "web.config.file": "web_config_file",
    "pidfile": "pidfile",
    "syslog": "syslog",
    "syslog-socket": "syslog_socket",
    "log.level": "log_level",
    "log.format": "log_format",
    "flush-on-exit": "flush_on_exit",
    "output-file": "output_file",
    "state-dir": "state_dir",
    "jail-poll-interval": "jail_poll_interval",
    "reload-debounce": "reload_debounce",
    "reload-settle": "reload_settle",
    "max-policy-file-size": "max_policy_file_size",
    "shutdown-timeout": "shutdown_timeout",
    "history.interval": "history_interval",
    "history.raw-retention": "history_raw_retention",
    "history.retention": "history_retention",
}
#: Spellings of the previous release, accepted for one more (flags too: see rctlpolicy.cli.common).
RENAMED_KEYS: dict[str, str] = {"log-level": "log.level", "output.file-path": "output-file"}
_PATH_FIELDS = {
    "rules_dir",
    "sim_host",
    "devd_socket",
    "web_config_file",
    "pidfile",
    "output_file",
    "state_dir",
}
_BOOL_FIELDS = {"syslog", "flush_on_exit"}
_FLOAT_FIELDS = {"jail_poll_interval", "reload_debounce", "reload_settle", "shutdown_timeout"}
_SIZE_FIELDS = {"max_policy_file_size"}
#: Durations (`60s`, `48h`, `35d` or seconds); the history interval may be 0 (off).
_DURATION_FIELDS = {"history_interval", "history_raw_retention", "history_retention"}


def _coerce(field_name: str, value: Any, where: str) -> Any:
    if field_name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if field_name in _SIZE_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{where}: must be a size in bytes (such as 16m or 65536)")
        return parse_size(str(value), where)
    if field_name in _DURATION_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: must be a duration (such as 60s, 48h or 35d)")
        return parse_duration_setting(value, where, zero=field_name == "history_interval")
    if field_name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where}: must be a positive number of seconds")
        return float(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    if field_name in _PATH_FIELDS:
        return Path(value)
    return value


def parse_size(text: str, where: str = "max-policy-file-size") -> int:
    """A size in bytes as FreeBSD's tools read one (`16m`, `512k`, `1048576`); positive."""
    try:
        size = expand_number(text.strip()).value
    except AmountError:
        size = 0
    if size <= 0:
        raise ConfigError(f"{where}: '{text}' is not a size in bytes (such as 16m or 65536)")
    return size


def parse_duration_setting(value: str | float, where: str, *, zero: bool = False) -> float:
    """A duration setting (`60s`, `48h`, `35d`, or seconds); positive, or 0 when `zero`."""
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        seconds = -1.0
    if not 0 <= seconds < float("inf") or (seconds == 0 and not zero):  # NaN is not in range
        allowed = "0 (off) or " if zero else ""
        raise ConfigError(
            f"{where}: '{value}' is not {allowed}a duration (such as 60s, 48h or 35d)"
        )
    return seconds


def validate(config: DaemonConfig) -> DaemonConfig:
    """Check the settings that are not checked by their type; raise ConfigError."""
    if config.kernel not in ("auto", "freebsd", "sim"):
        raise ConfigError(f"kernel: '{config.kernel}' is not one of auto, freebsd, sim")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log.level: '{config.log_level}' is not one of " + ", ".join(LOG_LEVELS))
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log.format: '{config.log_format}' is not one of " + ", ".join(LOG_FORMATS)
        )
    if not config.telemetry_path.startswith("/"):
        raise ConfigError("web.telemetry-path must start with '/'")
    split_address(config.listen_address)
    if config.history_interval and config.history_raw_retention < config.history_interval:
        raise ConfigError("history.raw-retention must be at least one history.interval")
    if config.history_retention < config.history_raw_retention:
        raise ConfigError("history.retention must be at least history.raw-retention")
    return config


def split_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses) -> (host, port); a URL or an
    IPv6 address without brackets is a ConfigError that says how to write it."""
    try:
        host, port = parse_listen_address(address)
    except ListenAddressError as error:
        raise ConfigError(f"web.listen-address: {error}") from None
    return host or "0.0.0.0", port  # noqa: S104 (":10217" means every address)


#: A configuration is a few lines; more is not one (and is not read whole into memory).
MAX_CONFIG_BYTES = 1024 * 1024


def load_config_file(path: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """Read a config file into field values (unknown keys are errors with a suggestion).

    A key spelt as in the previous release (`RENAMED_KEYS`) is read, and a note saying so is
    appended to `notes` for the caller to show."""
    from rctlpolicy.safeio import UnsafeStateFileError, read_bytes

    try:
        # A symlink to the file is the administrator's; a FIFO is refused, never waited on.
        text = read_bytes(path, limit=MAX_CONFIG_BYTES, follow_symlinks=True).decode("utf-8")
    except UnsafeStateFileError:
        raise ConfigError(f"{path}: not a regular file") from None
    except OSError as error:
        if error.errno == errno.EFBIG:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes") from None
        raise ConfigError(f"{path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from error
    try:
        data = yamlload.load(text)
    except yamlload.YamlError as error:
        raise ConfigError(f"{path}: YAML error: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration is a mapping of settings")
    values: dict[str, Any] = {}
    for given_key, value in data.items():
        key = RENAMED_KEYS.get(str(given_key), str(given_key))
        if key != given_key and notes is not None:
            notes.append(
                f"{path}: '{given_key}' is now spelt '{key}' "
                "(the old name goes in the next release)"
            )
        field_name = FILE_KEYS.get(str(key))
        if field_name is None:
            close = difflib.get_close_matches(str(key), list(FILE_KEYS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: unknown setting '{key}'{hint}")
        if field_name in values:  # both spellings of a renamed key
            raise ConfigError(f"{path}: '{key}' is given twice (once under its old name)")
        values[field_name] = _coerce(field_name, value, f"{path}: {key}")
    # A relative path in the file is relative to the file, wherever the daemon is started.
    for field_name in _PATH_FIELDS & values.keys():
        if not values[field_name].is_absolute():
            values[field_name] = (path.parent / values[field_name]).resolve()
    return values


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> DaemonConfig:
    """Defaults, then the file, then flags that were given (None means not given)."""
    config = replace(DaemonConfig(), **file_values)
    given = {k: v for k, v in flag_values.items() if v is not None}
    known = {f.name for f in fields(DaemonConfig)}
    unknown = set(given) - known
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return validate(replace(config, **given))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A configuration as the daemon builds it, and where its settings came from."""

    config: DaemonConfig
    #: The file read: the one given, else DEFAULT_CONFIG_PATH when it exists, else None.
    path: Path | None
    #: The settings (field names) the file gave.
    from_file: frozenset[str]


def config_file_to_read(given: Path | None) -> Path | None:
    """The daemon's rule: the file given with --config, else the default file if present."""
    if given is not None:
        return given
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_daemon_config(
    given: Path | None, flag_values: dict[str, Any], notes: list[str] | None = None
) -> LoadedConfig:
    """Defaults, then the config file (given, or the default one if present), then the flags
    that were given: the daemon's precedence, for every command that shares its settings.
    Notes on keys spelt the old way go to `notes` (see `load_config_file`)."""
    path = config_file_to_read(given)
    file_values = load_config_file(path, notes) if path is not None else {}
    return LoadedConfig(build_config(file_values, flag_values), path, frozenset(file_values))
