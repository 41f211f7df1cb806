"""`rctlpolicy daemon` and `rctlpolicy handle`: the service, and one event in devd's hook mode."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_USAGE, seconds, sim_host_option, size

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any


#: DaemonConfig's fields and the flags' dests that set them (a flag absent from a command's
#: parser is simply not given: `handle` takes only what it uses).
_FLAG_FIELDS = (
    "rules_dir", "kernel", "sim_host", "devd_socket", "listen_address", "telemetry_path",
    "web_config_file", "pidfile", "syslog", "syslog_socket", "log_level", "log_format",
    "flush_on_exit", "output_file", "state_dir", "jail_poll_interval", "reload_debounce",
    "reload_settle", "max_policy_file_size", "shutdown_timeout", "history_interval",
    "history_raw_retention", "history_retention",
)  # fmt: skip
_PATH_FLAGS = {
    "rules_dir", "sim_host", "devd_socket", "web_config_file", "pidfile", "output_file",
    "state_dir",
}  # fmt: skip


def _daemon_config(args: argparse.Namespace, command: str) -> Any:
    """The config file (--config, else the default one if present), then the flags given."""
    from pathlib import Path

    from rctlpolicy.config import load_daemon_config

    flags: dict[str, Any] = {}
    for name in _FLAG_FIELDS:
        value = getattr(args, name, None)
        if name in _PATH_FLAGS:
            value = Path(value) if value else None  # "" (an empty $RCTLPOLICY_SIM_HOST): unset
        flags[name] = value
    if getattr(args, "flush_on_exit", False) is False:
        flags["flush_on_exit"] = None  # store_true: absent means "as the file says"
    notes: list[str] = []
    loaded = load_daemon_config(Path(args.config) if args.config else None, flags, notes)
    for note in notes:
        print(f"rctlpolicy {command}: {note}", file=sys.stderr)
    return loaded.config


def _cmd_daemon(args: argparse.Namespace) -> int:
    from rctlpolicy.config import ConfigError

    try:
        config = _daemon_config(args, "daemon")
    except ConfigError as error:
        print(f"rctlpolicy daemon: {error}", file=sys.stderr)
        return EXIT_USAGE
    from rctlpolicy.service import run_daemon

    return run_daemon(config)


def _cmd_handle(args: argparse.Namespace) -> int:
    from rctlpolicy.config import ConfigError
    from rctlpolicy.service import handle_event

    try:
        config = _daemon_config(args, "handle")
    except ConfigError as error:
        print(f"rctlpolicy handle: {error}", file=sys.stderr)
        return EXIT_USAGE
    return handle_event(config, args.rule, args.pid, args.ruid, args.jail)


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    daemon_parser = commands.add_parser(
        "daemon",
        help="run the service: reconcile rules, act on devd events, serve metrics",
        description="Keep the kernel's rules in line with the rules directory (reloaded when "
        "a file changes and on SIGHUP), run the policy's actions when devd reports an RCTL "
        "event, and serve Prometheus metrics. Stays in the foreground; SIGTERM stops it.",
        epilog="Every flag can be set in the YAML config file under the flag's name without "
        "dashes (rules-dir, web.listen-address, log.level, ...); flags win. Exit status: 0 "
        "after SIGTERM/SIGINT; 1 when start-up fails on the policy (its errors are printed) or "
        "another daemon holds the state directory; 2 for usage errors, an invalid config "
        "file, a missing rules directory, and a kernel interface, socket or file that cannot "
        "be opened.",
    )
    _common_options(daemon_parser)
    _daemon_only_options(daemon_parser)
    daemon_parser.set_defaults(handler=_cmd_daemon)

    handle = commands.add_parser(
        "handle",
        help="run a rule's on_match once for one RCTL event (devd hook mode)",
        description="Run the action engine once for one RCTL event, as devd.conf(5)'s "
        "notify block passes it (--rule $rule --pid $pid --ruid $ruid --jail $jail): "
        "cooldown and max_runs hold across invocations (a locked state file in the state "
        "directory).",
        epilog="Exit status: 0 the action ran, was suppressed by its cooldown or max_runs, "
        "or the rule has none; 1 the action failed, or the rule or the event is not one the "
        "policy acts on; 2 for usage errors, an invalid config file, a missing rules "
        "directory, and a kernel interface or state file that cannot be opened.",
    )
    event = handle.add_argument_group("the event (devd's variables)")
    event.add_argument("--rule", required=True, help="the event's rule ($rule)")
    event.add_argument(
        "--pid",
        required=True,
        help="the event's process id ($pid; empty when devd's message was cut short)",
    )
    event.add_argument("--ruid", help="the event's real user id ($ruid)")
    event.add_argument("--jail", default="0", help="the event's jail ($jail; 0 is the host)")
    _common_options(handle)
    handle.set_defaults(handler=_cmd_handle)


def _common_options(sub: argparse.ArgumentParser) -> None:
    """What both `daemon` and `handle` use: the config, the policy, the kernel, the state
    directory, logging and the bound on running actions."""
    from rctlpolicy.config import LOG_FORMATS, LOG_LEVELS

    sub.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: /usr/local/etc/rctlpolicy.yaml if present)",
    )
    sub.add_argument(
        "--rules-dir",
        metavar="DIR",
        help="the policy directory (default: /usr/local/etc/rctlpolicy/rules)",
    )
    sub.add_argument(
        "--kernel",
        choices=("auto", "freebsd", "sim"),
        default=None,
        help="the RCTL interface: FreeBSD's system calls, or the simulated host (default "
        "auto: FreeBSD when running on it, the simulator elsewhere)",
    )
    sim_host_option(sub)
    sub.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where applied rules and action state are kept, and the daemon's lock "
        "(default: /var/db/rctlpolicy; beside the host file on the simulator)",
    )
    sub.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        help="the least severe messages logged (default: info)",
    )
    sub.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        help="log lines as text, logfmt key=value pairs or JSON objects (default: text)",
    )
    sub.add_argument(
        "--syslog",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to syslog (facility daemon) instead of stderr",
    )
    sub.add_argument(
        "--syslog-socket",
        metavar="PATH",
        help="syslogd's socket (default: /var/run/log)",
    )
    sub.add_argument(
        "--max-policy-file-size",
        type=size,
        metavar="BYTES",
        help="refuse policy files larger than this, before reading them (default: 16m)",
    )
    sub.add_argument(
        "--shutdown-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long running actions may finish at shutdown (default: 10)",
    )


def _daemon_only_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--devd-socket",
        metavar="PATH",
        help="devd's seqpacket socket (default: /var/run/devd.seqpacket.pipe; on "
        "the simulated host a simulated devd is started when not given)",
    )
    sub.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help="where to serve metrics (default: 127.0.0.1:10217)",
    )
    sub.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="metrics path (default: /metrics)",
    )
    sub.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config: TLS and basic auth",
    )
    sub.add_argument(
        "--pidfile",
        metavar="FILE",
        help="write the daemon's pid to FILE while it runs (rc.d and daemon(8) use it)",
    )
    sub.add_argument(
        "--flush-on-exit",
        action="store_true",
        help="remove the rules this daemon added when it stops",
    )
    sub.add_argument(
        "--output-file",
        dest="output_file",
        metavar="FILE",
        help="also write the metrics to FILE for node_exporter's textfile collector",
    )
    sub.add_argument(
        "--jail-poll-interval",
        type=seconds,
        metavar="SECONDS",
        help="how often the jail list is compared for jail patterns and "
        "ended episodes (default: 5)",
    )
    sub.add_argument(
        "--reload-debounce",
        type=seconds,
        metavar="SECONDS",
        help="how long the rules directory must be quiet before a reload (default: 0.3)",
    )
    sub.add_argument(
        "--reload-settle",
        type=seconds,
        metavar="SECONDS",
        help="how long every policy file must stay unchanged before a changed policy is "
        "applied (default: 2; SIGHUP applies at once)",
    )
    sub.add_argument(
        "--history.interval",
        dest="history_interval",
        type=_history_duration(zero=True),
        metavar="DURATION",
        help="how often every jail's usage is sampled into STATE_DIR/history.sqlite, for "
        "rctlpolicy history, replay and suggest (default: 60s; 0 turns sampling off)",
    )
    sub.add_argument(
        "--history.raw-retention",
        dest="history_raw_retention",
        type=_history_duration(),
        metavar="DURATION",
        help="how long every sample is kept (default: 48h)",
    )
    sub.add_argument(
        "--history.retention",
        dest="history_retention",
        type=_history_duration(),
        metavar="DURATION",
        help="how long hourly rollups (max, mean, p50, p95, p99) are kept (default: 35d)",
    )


def _history_duration(zero: bool = False) -> Any:
    def parse(text: str) -> float:
        from rctlpolicy.config import ConfigError, parse_duration_setting

        try:
            return parse_duration_setting(text, "duration", zero=zero)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse
