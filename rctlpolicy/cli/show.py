"""`rctlpolicy show` and `rctlpolicy usage`: the rules in force and what subjects use."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_OK, EXIT_USAGE, kernel_options
from rctlpolicy.cli.kernel import kernel_failure, open_kernel_or_say, parse_filter

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any


def _cmd_show(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.kernel.base import KernelError

    setup = open_kernel_or_say(args)
    if setup is None:
        return EXIT_USAGE
    rule_filter = parse_filter(args.filter, setup)
    if rule_filter is None:
        return EXIT_USAGE
    try:
        rules = setup.kernel.rules(rule_filter)
    except (KernelError, OSError) as error:
        return kernel_failure(error, "show rules for", args.filter)
    if args.format == "json":
        print(json.dumps([{"rule": rule.canonical} for rule in rules], indent=2))
        return EXIT_OK
    for rule in rules:
        print(setup.display(rule, numeric=args.numeric))
    return EXIT_OK


def _cmd_usage(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.kernel.base import KernelError
    from rctlpolicy.usage import jail_usage_table, usage_lines

    setup = open_kernel_or_say(args)
    if setup is None:
        return EXIT_USAGE
    try:
        if args.filter is not None:
            rule_filter = parse_filter(args.filter, setup)
            if rule_filter is None:
                return EXIT_USAGE
            try:
                usage = setup.kernel.usage(rule_filter)
            except (KernelError, OSError) as error:
                # EINVAL without a subject id: say which operand the kernel wants.
                hint = (
                    " (name a subject and its id: jail:db1, user:www, process:4242)"
                    if rule_filter.subject_id is None
                    else ""
                )
                return kernel_failure(error, "show resource consumption for", args.filter, hint)
            if args.format == "json":
                print(json.dumps({str(r): v for r, v in usage.items()}, indent=2))
            else:
                sys.stdout.write(usage_lines(usage, human=not args.exact))
            return EXIT_OK
        table = jail_usage_table(setup.kernel)
    except (KernelError, OSError) as error:
        return kernel_failure(error, "show resource consumption for")
    if args.format == "json":
        print(json.dumps(table.as_json(), indent=2))
    else:
        sys.stdout.write(table.render(human=not args.exact))
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    show = commands.add_parser(
        "show",
        help="list the rules in force (like rctl)",
        description="List the rules in force, like rctl(8) with no "
        "flags: user ids shown as names unless -n.",
    )
    show.add_argument(
        "filter", nargs="?", metavar="FILTER", help="a filter such as jail:db1 or ::memoryuse"
    )
    show.add_argument("-n", "--numeric", action="store_true", help="show user ids, not names")
    kernel_options(show)
    show.set_defaults(handler=_cmd_show)

    usage = commands.add_parser(
        "usage",
        help="resource usage in human units (like rctl -hu), or every jail against its limits",
        description="With a filter (jail:db1, user:www), the usage of that subject like "
        "rctl -hu. Without one, a table of every jail: usage next to the limits in force, "
        "as a percentage of the strictest deny. Amounts are in human units (1.5G, 512M) "
        "unless --exact.",
    )
    usage.add_argument(
        "filter",
        nargs="?",
        metavar="FILTER",
        help="one subject: jail:db1, user:www, loginclass:daemon or process:4242 "
        "(default: the table of every jail)",
    )
    usage.add_argument(
        "--exact",
        action="store_true",
        help="exact numbers (bytes, counts) instead of human units such as 1.5G (the default)",
    )
    kernel_options(usage)
    usage.set_defaults(handler=_cmd_usage)
