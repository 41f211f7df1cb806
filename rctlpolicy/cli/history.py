"""`rctlpolicy history`: the usage history the daemon sampled, as text, JSON or CSV.

Also what `replay` and `suggest` share with it: where the history file is, time windows
(`--since 7d`, `--start`/`--end`) and RFC 3339 times.
"""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_OK, EXIT_USAGE, kernel_choice_option, sim_host_option

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def duration(text: str) -> float:
    """An argparse type: `7d`, `48h`, `30m` or seconds, positive (the config's rule)."""
    from rctlpolicy.config import ConfigError, parse_duration_setting

    try:
        return parse_duration_setting(text, "duration")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def timestamp(text: str) -> float:
    """An argparse type: RFC 3339 (`2026-12-01T00:00:00Z`) or Unix seconds."""
    from rctlpolicy.history.timeline import TimelineError, parse_time

    try:
        return parse_time(text)
    except TimelineError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def rfc3339(seconds: float) -> str:
    from rctlpolicy.history.timeline import format_time

    return format_time(seconds)


def history_file(args: argparse.Namespace) -> Path | None:
    """STATE_DIR/history.sqlite, with STATE_DIR settled as the daemon settles it (--state-dir,
    else the config file's, else the kernel's: /var/db/rctlpolicy on FreeBSD, beside the
    simulated host's file); None after saying why not."""
    from pathlib import Path

    from rctlpolicy.cli.settings import ledger_settings
    from rctlpolicy.config import ConfigError
    from rctlpolicy.history import HISTORY_FILE_NAME
    from rctlpolicy.kernel import KernelSetupError, open_kernel

    try:
        settings = ledger_settings(args)
    except ConfigError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    if settings.state_dir is not None:
        return settings.state_dir / HISTORY_FILE_NAME
    try:
        setup = open_kernel(args.kernel, args.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    return Path(setup.state_dir) / HISTORY_FILE_NAME


def history_options(sub: argparse.ArgumentParser) -> None:
    """--kernel, --sim-host, --config and --state-dir: where the daemon keeps its history,
    found as `plan` finds the daemon's ledger."""
    from rctlpolicy.cli.settings import ledger_options

    kernel_choice_option(sub)
    sim_host_option(sub)
    ledger_options(sub)


def window_options(sub: argparse.ArgumentParser, since: str) -> None:
    """--since, or --start and --end."""
    sub.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help=f"the window: this long before now, or before --end (default: {since})",
    )
    sub.add_argument("--start", type=timestamp, metavar="TIME", help="RFC 3339 or Unix time")
    sub.add_argument("--end", type=timestamp, metavar="TIME", help="RFC 3339 or Unix time")


def window(args: argparse.Namespace, since: float, command: str) -> tuple[float, float] | None:
    """[start, end) from --since/--start/--end; None after saying an empty window is wrong."""
    import time

    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - (args.since or since)
    if end <= start:
        print(
            f"rctlpolicy {command}: the window is empty (--start is not before --end)",
            file=sys.stderr,
        )
        return None
    return start, end


def parse_jail_filter(text: str | None) -> tuple[str | None, Any] | None:
    """FILTER: `jail:NAME`, `jail:NAME:RESOURCE`, `jail::RESOURCE` or a jail's name ->
    (jail or None, Resource or None); None after saying what is wrong."""
    from rctlpolicy.model import Resource

    if not text:
        return None, None
    parts = text.split(":")
    if parts[0] != "jail":
        if len(parts) == 1:
            return text, None
        print(
            f"rctlpolicy: invalid filter '{text}': the history is per jail: write jail:NAME, "
            "jail:NAME:RESOURCE or jail::RESOURCE",
            file=sys.stderr,
        )
        return None
    jail = parts[1] if len(parts) > 1 and parts[1] else None
    resource = None
    if len(parts) > 2 and parts[2]:
        try:
            resource = Resource(parts[2])
        except ValueError:
            print(f"rctlpolicy: invalid filter '{text}': unknown resource", file=sys.stderr)
            return None
    if len(parts) > 3:
        print(f"rctlpolicy: invalid filter '{text}': jail:NAME[:RESOURCE]", file=sys.stderr)
        return None
    return jail, resource


def _cmd_history(args: argparse.Namespace) -> int:
    import csv
    import json

    from rctlpolicy.amounts import humanize_number
    from rctlpolicy.history.store import STATS, HistoryError, HistoryStore
    from rctlpolicy.model import Unit

    parsed = parse_jail_filter(args.filter)
    if parsed is None:
        return EXIT_USAGE
    jail, only = parsed
    path = history_file(args)
    if path is None:
        return EXIT_USAGE
    found = window(args, 7 * 86400.0, "history")
    if found is None:
        return EXIT_USAGE
    start, end = found
    store = HistoryStore(path, readonly=True)
    try:
        jails = [jail] if jail is not None else None
        raw = list(store.raw(jails, start, end))
        hourly = list(store.hourly(jails, start, end))
    except HistoryError as error:
        print(f"rctlpolicy history: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    # Rollups only for the hours before a jail's first sample still kept.
    first_raw: dict[str, float] = {}
    for sample in raw:
        first_raw.setdefault(sample.jail, sample.time)
    hourly = [h for h in hourly if h.hour + 3600 <= first_raw.get(h.jail, 2**62)]
    # The resources worth showing: one named, or those used at some point of the window.
    used: dict[str, set[Any]] = {}
    for sample in raw:
        used.setdefault(sample.jail, set()).update(r for r, v in sample.values.items() if v)
    for rollup in hourly:
        used.setdefault(rollup.jail, set()).update(r for r, s in rollup.stats.items() if s[0])

    def shown(jail_name: str, resources: Any) -> list[Any]:
        if only is not None:
            return [only] if only in resources else []
        return [r for r in resources if r in used.get(jail_name, ())]

    def human(value: int, resource: Any) -> str:
        if resource.info.unit in (Unit.BYTES, Unit.BYTES_PER_SECOND):
            return humanize_number(value)
        return str(value)

    rows_raw = [(s.time, s.jail, r, s.values[r]) for s in raw for r in shown(s.jail, s.values)]
    rows_hourly = [
        (h.hour, h.jail, r, h.samples, h.stats[r]) for h in hourly for r in shown(h.jail, h.stats)
    ]
    if args.format == "json":
        document = {
            "start": rfc3339(start),
            "end": rfc3339(end),
            "samples": [
                {"time": rfc3339(t), "jail": j, "resource": str(r), "value": v}
                for t, j, r, v in rows_raw
            ],
            "hourly": [
                {"hour": rfc3339(t), "jail": j, "resource": str(r), "samples": n}
                | dict(zip(STATS, stats, strict=True))
                for t, j, r, n, stats in rows_hourly
            ],
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["time", "jail", "resource", "kind", "samples", "value", *STATS])
        for t, j, r, v in rows_raw:
            writer.writerow([rfc3339(t), j, r, "sample", 1, v, "", "", "", "", ""])
        for t, j, r, n, stats in rows_hourly:
            writer.writerow([rfc3339(t), j, r, "hourly", n, "", *stats])
        return EXIT_OK
    if not rows_raw and not rows_hourly:
        print(
            f"No usage history between {rfc3339(start)} and {rfc3339(end)} in {path}.",
            file=sys.stderr,
        )
        return EXIT_OK
    if rows_hourly:
        print(f"{'HOUR':<20}  {'JAIL':<16} {'RESOURCE':<14} {'N':>4} "
              f"{'MAX':>8} {'MEAN':>8} {'P50':>8} {'P95':>8} {'P99':>8}")  # fmt: skip
        for t, j, r, n, stats in rows_hourly:
            figures = " ".join(f"{human(v, r):>8}" for v in stats)
            print(f"{rfc3339(t):<20}  {j:<16} {r!s:<14} {n:>4} {figures}")
        if rows_raw:
            print()
    if rows_raw:
        print(f"{'TIME':<20}  {'JAIL':<16} {'RESOURCE':<14} {'VALUE':>10}")
        for t, j, r, v in rows_raw:
            print(f"{rfc3339(t):<20}  {j:<16} {r!s:<14} {human(v, r):>10}")
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    history = commands.add_parser(
        "history",
        help="the usage history the daemon sampled (text, JSON or CSV)",
        description="Print the usage the daemon sampled into STATE_DIR/history.sqlite "
        "(--history.interval): every sample of the last --history.raw-retention, hourly "
        "rollups (max, mean, p50, p95, p99) before that. Resources a jail never used in the "
        "window are left out unless the filter names one.",
        epilog="FILTER: jail:NAME, jail:NAME:RESOURCE, jail::RESOURCE or a jail's name. "
        "Exit status: 0, or 2 when there is no history file or the filter is wrong.",
    )
    history.add_argument("filter", nargs="?", metavar="FILTER", help="e.g. jail:db1:memoryuse")
    window_options(history, "7d")
    history.add_argument(
        "--format", choices=("text", "json", "csv"), default="text", help="default: text"
    )
    history_options(history)
    history.set_defaults(handler=_cmd_history)
