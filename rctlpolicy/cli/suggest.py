"""`rctlpolicy suggest`: limits proposed from observed usage, as rctl.conf, YAML or JSON."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_OK, EXIT_USAGE
from rctlpolicy.cli.history import parse_jail_filter, rfc3339, window, window_options
from rctlpolicy.cli.replay import load_policy, source_options

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentile in (0, 100]")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a margin in percent (such as 25)")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of samples")
    return int(text)


def _header(found: Any) -> list[str]:
    every = f"every {found.interval:g}s" if found.interval else "at an unknown interval"
    lines = [
        f"rctlpolicy suggest: p{found.percentile:g} + {found.margin:g} % of the usage from "
        f"{rfc3339(found.start)} to {rfc3339(found.end)},",
        f"sampled {every} ({found.source}), rounded up; jails with fewer than "
        f"{found.min_samples} samples get none.",
    ]
    lines.extend(found.notes)
    return lines


def render_conf(found: Any, against: Any) -> str:
    lines = [f"# {line}" for line in _header(found)]
    current = None
    for suggestion in found.suggestions:
        if suggestion.jail != current:
            lines.append("")
            current = suggestion.jail
        lines.append(f"# {suggestion.evidence.text(suggestion.resource.info.unit)}")
        lines.append(suggestion.rule)
    if found.skipped:
        lines.append("")
    for jail, reason in found.skipped:
        lines.append(f"# jail {jail}: {reason}")
    lines.extend(_against_lines(against))
    return "\n".join(lines) + "\n"


def render_yaml(found: Any, against: Any) -> str:
    import json

    lines = [f"# {line}" for line in _header(found)]
    for jail, reason in found.skipped:
        lines.append(f"# jail {jail}: {reason}")
    lines.extend(_against_lines(against))
    if not found.suggestions:
        lines.append("rules: []")
        return "\n".join(lines) + "\n"
    lines.append("rules:")
    for suggestion in found.suggestions:
        evidence = suggestion.evidence.text(suggestion.resource.info.unit)
        lines.append(f"  - rule: {suggestion.rule}")
        # JSON strings are YAML strings: the comment is quoted whatever it holds.
        lines.append(f"    comment: {json.dumps(evidence)}")
    return "\n".join(lines) + "\n"


def _against_lines(against: Any) -> list[str]:
    if against is None:
        return []
    lines = ["", "# --against: existing rules far from the usage"]
    if not against:
        lines.append("# (none: every rule on a suggested resource is within reach of the usage)")
    for comparison in against:
        lines.append(f"# {comparison.rule}: {comparison.verdict}")
    return lines


def _cmd_suggest(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.cli.replay import load_timeline
    from rctlpolicy.history.suggest import SUGGESTED, compare, suggest

    parsed = parse_jail_filter(args.filter)
    if parsed is None:
        return EXIT_USAGE
    jail, resource = parsed
    span = window(args, 14 * 86400.0, "suggest")
    if span is None:
        return EXIT_USAGE
    start, end = span
    policy = None
    if args.against:
        policy, status = load_policy(args.against)
        if policy is None:
            return status
    stat = "p99" if args.percentile >= 99 else "p95" if args.percentile >= 95 else "p50"
    timeline = load_timeline(args, start, end, stat=stat, resources=SUGGESTED)
    if timeline is None:
        return EXIT_USAGE
    found = suggest(
        timeline,
        percentile_wanted=args.percentile,
        margin=args.margin,
        min_samples=args.min_samples,
        jails=[jail] if jail else None,
        resources=[resource] if resource else None,
    )
    against = compare(policy, found) if policy is not None else None
    if args.format == "json":
        print(json.dumps(found.as_json(against), indent=2))
    elif args.format == "yaml":
        sys.stdout.write(render_yaml(found, against))
    else:
        sys.stdout.write(render_conf(found, against))
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    sub = commands.add_parser(
        "suggest",
        help="limits proposed from observed usage (percentile + margin)",
        description="Propose a limit per jail and resource from the usage recorded: a "
        "percentile of the window (default p99) plus a margin (default 25 %%), rounded up to "
        "a readable amount, for memoryuse, vmemoryuse, swapuse, maxproc, openfiles, nthr and "
        "pcpu (deny) and the I/O rates (throttle), each with its evidence. Paste the result "
        "into a policy, then replay it.",
        epilog="FILTER: jail:NAME, jail:NAME:RESOURCE, jail::RESOURCE or a jail's name. "
        "Exit status: 0; 1 when the --against policy has errors; 2 for usage errors or a "
        "source that cannot be read.",
    )
    sub.add_argument("filter", nargs="?", metavar="FILTER", help="e.g. jail:db1")
    source_options(sub)
    window_options(sub, "14d")
    sub.add_argument("--percentile", type=_percent, default=99.0, metavar="P", help="default: 99")
    sub.add_argument(
        "--margin", type=_margin, default=25.0, metavar="PERCENT", help="added; default: 25"
    )
    sub.add_argument(
        "--min-samples",
        type=_count,
        metavar="N",
        help="fewer samples of a jail and it gets no suggestion (default: a day's worth)",
    )
    sub.add_argument(
        "--format", choices=("conf", "yaml", "json"), default="conf", help="default: conf"
    )
    sub.add_argument(
        "--against",
        action="append",
        metavar="POLICY",
        help="also show the rules of this policy file or directory (repeatable) that are far "
        "from the usage: below the observed p99 (will fire) or 10x above its max (do nothing)",
    )
    sub.set_defaults(handler=_cmd_suggest)
