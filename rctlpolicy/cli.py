"""The `rctlpolicy` command: argument parsing, output formats and exit codes.

This is the only module that prints or decides an exit status. Each subcommand imports what it
needs when it runs, so `rctlpolicy lint` (run by pre-commit on every commit) stays light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from rctlpolicy import __version__

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def _use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


# --- lint ----------------------------------------------------------------------------------


def _cmd_lint(args: argparse.Namespace) -> int:
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import format_github, format_json, format_parsable, format_text
    from rctlpolicy.lint import lint_files
    from rctlpolicy.semantics import OFFLINE, Resolver

    try:
        files = read_policy_files(args.paths)
    except PolicyReadError as error:
        print(f"rctlpolicy lint: {error}", file=sys.stderr)
        return EXIT_USAGE
    resolver: Resolver = OFFLINE
    if args.resolve:
        from rctlpolicy.hostinfo import SystemResolver

        resolver = SystemResolver()
    result = lint_files(files, resolver)
    shown = [d for d in result.diagnostics if not args.quiet or d.severity.value != "info"]
    if args.format == "json":
        sys.stdout.write(format_json(result.diagnostics, result.policy))
    elif args.format == "parsable":
        sys.stdout.write(format_parsable(shown))
    elif args.format == "github":
        sys.stdout.write(format_github(shown))
    else:
        sys.stdout.write(format_text(shown, _use_colour(sys.stdout)))
    return EXIT_FINDINGS if result.failed(args.strict) else EXIT_OK


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rctlpolicy",
        description="Resource policies for FreeBSD jails: lint RCTL rules, keep the kernel in "
        "line with a policy, act on devd's RCTL events, export usage to Prometheus.",
        epilog="Exit status: 0 success, 1 findings or failures, 2 usage or I/O errors. "
        "See rctlpolicy(8).",
    )
    parser.add_argument("--version", action="version", version=f"rctlpolicy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    lint = commands.add_parser(
        "lint",
        help="check policy files (rctl.conf or YAML) as FreeBSD would",
        description="Check policy files exactly as rctl(8) and the kernel would: every rule "
        "that passes loads, every rule FreeBSD loads passes. Directories are searched for "
        "*.conf, *.rules, *.yaml and *.yml; '-' reads rctl.conf text from stdin.",
        epilog="Exit status: 0 clean (or only warnings without --strict), 1 findings, "
        "2 usage or I/O errors.",
    )
    lint.add_argument("paths", nargs="+", metavar="PATH", help="policy file, directory or -")
    lint.add_argument(
        "--format",
        choices=("text", "parsable", "json", "github"),
        default="text",
        help="output format (default: text)",
    )
    lint.add_argument("--strict", action="store_true", help="fail on warnings too")
    lint.add_argument(
        "--resolve",
        action="store_true",
        help="check user names and pids against this machine, as rctl(8) would",
    )
    lint.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="hide informational notes (JSON always includes them)",
    )
    lint.set_defaults(handler=_cmd_lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
