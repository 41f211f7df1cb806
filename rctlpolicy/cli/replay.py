"""`rctlpolicy replay`: what a policy would have done to the usage recorded so far.

Also the `--from SOURCE` options that `suggest` shares: the daemon's history, a JSON-lines file
or a Prometheus server.
"""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, use_colour
from rctlpolicy.cli.history import (
    duration,
    history_file,
    history_options,
    rfc3339,
    window,
    window_options,
)

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any

#: --detailed-exitcode: some rule would have acted.
EXIT_WOULD_ACT = 3


def source_options(sub: argparse.ArgumentParser) -> None:
    """--from and what the sources take."""
    sub.add_argument(
        "--from",
        dest="source",
        default="history",
        metavar="SOURCE",
        help="history (the daemon's history.sqlite, default), file=PATH (JSON lines of "
        '{"time", "jail", "resource", "value"}) or prometheus=URL (query_range over the '
        "jail_* usage series)",
    )
    sub.add_argument(
        "--step",
        type=duration,
        metavar="DURATION",
        help="with prometheus=: the resolution asked for (default: 60s)",
    )
    sub.add_argument(
        "--basic-auth-user", metavar="USER", help="with prometheus=: HTTP basic auth user"
    )
    sub.add_argument(
        "--basic-auth-password-file",
        metavar="FILE",
        help="with prometheus=: the file holding the basic auth password",
    )
    sub.add_argument(
        "--bearer-token-file",
        metavar="FILE",
        help="with prometheus=: the file holding a bearer token",
    )
    sub.add_argument(
        "--ca-file",
        metavar="FILE",
        help="with prometheus=: the CA certificates to trust for https",
    )
    history_options(sub)


def load_timeline(
    args: argparse.Namespace, start: float, end: float, stat: str = "max", resources: Any = None
) -> Any:
    """The timeline of --from between start and end, of `resources` only (None: all); None
    after saying why not."""
    from pathlib import Path

    from rctlpolicy.history.timeline import TimelineError, from_file, from_history

    kind, _, where = args.source.partition("=")
    try:
        if kind == "history" and not where:
            path = history_file(args)
            if path is None:
                return None
            return from_history(path, start, end, stat=stat, resources=resources)
        if kind == "file" and where:
            return from_file(Path(where), start, end, resources)
        if kind == "prometheus" and where:
            from rctlpolicy.history.prometheus import DEFAULT_STEP, PrometheusAuth, from_prometheus

            auth = PrometheusAuth(
                args.basic_auth_user,
                Path(args.basic_auth_password_file) if args.basic_auth_password_file else None,
                Path(args.bearer_token_file) if args.bearer_token_file else None,
                Path(args.ca_file) if args.ca_file else None,
            )
            return from_prometheus(
                where, start, end, step=args.step or DEFAULT_STEP, auth=auth, resources=resources
            )
    except TimelineError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    print(
        f"rctlpolicy: --from {args.source}: write history, file=PATH or prometheus=URL",
        file=sys.stderr,
    )
    return None


def limits_text(report: Any) -> str:
    """What a replay cannot see, said with the interval it used."""
    every = f"every {report.interval:g}s" if report.interval else "at an unknown interval"
    return (
        f"Usage sampled {every} ({report.source}), {rfc3339(report.start)} to "
        f"{rfc3339(report.end)}. The kernel checks every allocation; a replay sees only the "
        "samples, so a spike shorter than the interval between two of them is invisible."
    )


def load_policy(paths: list[str]) -> tuple[Any, int]:
    """The policy, or None and the exit status after saying why: 2 when a PATH cannot be read
    (an I/O error, as for every command), 1 when the policy has errors."""
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import format_text
    from rctlpolicy.lint import lint_files

    try:
        files = read_policy_files(paths)
    except PolicyReadError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None, EXIT_USAGE
    result = lint_files(files)
    problems = [d for d in result.diagnostics if d.severity.value == "error"]
    if problems:
        sys.stderr.write(format_text(problems, use_colour(sys.stderr)))
        print("rctlpolicy: the policy has errors", file=sys.stderr)
        return None, EXIT_FINDINGS
    return result.policy, EXIT_OK


def _span(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def report_text(report: Any) -> str:
    lines = [
        f"{'RULE':<44} {'JAIL':<12} {'OVER':>8} {'CROSS':>5} {'RUN':>4} {'SUPPR':>5}  "
        f"{'FIRST':<20}  LAST"
    ]
    for entry in report.rules:
        acts = entry.policy_rule.on_match is not None
        lines.append(
            f"{entry.policy_rule.canonical:<44} {entry.jail:<12} {_span(entry.deny_seconds):>8} "
            f"{entry.crossings:>5} {entry.actions_run if acts else '-':>4} "
            f"{entry.actions_suppressed if acts else '-':>5}  "
            f"{rfc3339(entry.first) if entry.first is not None else '-':<20}  "
            f"{rfc3339(entry.last) if entry.last is not None else '-'}"
        )
    lines.append("")
    lines.append(
        "OVER: time spent above the amount (deny: allocations refused, memoryuse paged out; "
        "throttle: slowed). CROSS: crossings from below to above, one event each for log, "
        "devctl and signals. RUN/SUPPR: on_match actions run, and suppressed by cooldown or "
        "max_runs."
    )
    lines.append(limits_text(report))
    for entry in report.rules:
        if entry.delayed:
            lines.append(
                f"{entry.policy_rule.canonical}: {entry.delayed} event(s) held back to a later "
                "sample by the kernel's rate limit of 10 a second"
            )
        for problem in entry.problems:
            lines.append(f"{entry.policy_rule.canonical}: an action could not be built: {problem}")
    for policy_rule, reason in report.skipped:
        lines.append(f"not replayed: {policy_rule.canonical}: {reason}")
    lines.extend(report.notes)
    return "\n".join(lines) + "\n"


def _cmd_replay(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.history.replay import replay

    found = window(args, 7 * 86400.0, "replay")
    if found is None:
        return EXIT_USAGE
    start, end = found
    policy, status = load_policy(args.paths)
    if policy is None:
        return status
    resources = {policy_rule.rule.resource for policy_rule in policy.rules}
    timeline = load_timeline(args, start, end, resources=resources)
    if timeline is None:
        return EXIT_USAGE
    report = replay(policy, timeline)
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
        for policy_rule, reason in report.skipped:
            print(f"rctlpolicy replay: not replayed: {policy_rule.canonical}: {reason}",
                  file=sys.stderr)  # fmt: skip
    elif args.format == "html":
        from rctlpolicy.history.charts import report_html

        sys.stdout.write(report_html(report, timeline, report_text(report)))
    else:
        sys.stdout.write(report_text(report))
    if args.detailed_exitcode and report.acted:
        return EXIT_WOULD_ACT
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    replay = commands.add_parser(
        "replay",
        help="what a policy would have done to the usage recorded so far",
        description="Run the jail rules of a policy against a usage timeline, with the "
        "kernel's semantics: time over a deny or throttle amount, one event per crossing for "
        "log, devctl and signals (devctl and log at most 10 a second, as the kernel), and "
        "for devctl rules with on_match, which actions the action engine's cooldown and "
        "max_runs would have run or suppressed. Nothing is run.",
        epilog="Exit status: 0; 3 with --detailed-exitcode when a rule would have acted; "
        "1 when the policy has errors; 2 for usage errors or a source that cannot be read.",
    )
    replay.add_argument(
        "paths", nargs="+", metavar="POLICY", help="policy files or directories to replay"
    )
    source_options(replay)
    window_options(replay, "7d")
    replay.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default="text",
        help="text (default), json, or html with one chart per rule (charts need rctlpolicy[plot])",
    )
    replay.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 3 when any rule would have acted (for CI gates on a policy change)",
    )
    replay.set_defaults(handler=_cmd_replay)
