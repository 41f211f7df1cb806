"""The `rctlpolicy` command: argument parsing, output formats and exit codes.

The package is the only place that prints or decides an exit status: one module per command
group (lint, show/usage, plan/apply, daemon/handle, sim), each with its `add_parsers`. Each
command imports what it needs when it runs, and `rctlpolicy lint` (run by pre-commit on every
commit) builds only its own parser, so its start-up stays light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rctlpolicy import __version__
from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, modern_spellings

# Not typing.TYPE_CHECKING: importing typing alone is a tenth of what `rctlpolicy lint`, run by
# pre-commit on every commit, may spend starting up (mypy honours the name as it is).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "build_parser", "console_main", "main"]


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    parser = argparse.ArgumentParser(
        prog="rctlpolicy",
        description="Resource policies for FreeBSD jails: lint RCTL rules, keep the kernel in "
        "line with a policy, act on devd's RCTL events, export usage to Prometheus.",
        epilog="Exit status: 0 success, 1 findings or failures, 2 usage or I/O errors. "
        "See rctlpolicy(8).",
    )
    parser.add_argument("--version", action="version", version=f"rctlpolicy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, commands


def build_parser() -> argparse.ArgumentParser:
    from rctlpolicy.cli import history, lint, plan, replay, service, show, sim, suggest

    parser, commands = _top_parser()
    for group in (lint, show, plan, service, sim, history, replay, suggest):
        group.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        if arguments[:1] == ["lint"]:
            from rctlpolicy.cli.lint import lint_parser

            args = lint_parser().parse_args(arguments[1:])
        else:
            notes: list[str] = []
            arguments = modern_spellings(arguments, notes)
            for note in notes:
                print(f"rctlpolicy: {note}", file=sys.stderr)
            args = build_parser().parse_args(arguments)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def console_main() -> None:
    sys.exit(main())
