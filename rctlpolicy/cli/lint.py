"""`rctlpolicy lint`: check policy files as rctl(8) and the kernel would."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence

from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, use_colour

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any

    from rctlpolicy.semantics.resolver import Resolver


def _cmd_lint(args: argparse.Namespace) -> int:
    from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import LINT_PER_FILE, Style, render, render_json
    from rctlpolicy.lint import lint_into
    from rctlpolicy.model import Severity

    if args.list_codes:
        from rctlpolicy.codedocs import json_document, text_table

        sys.stdout.write(json_document() if args.format == "json" else text_table())
        return EXIT_OK
    if not args.paths:
        args.lint_parser.print_usage(sys.stderr)
        print("rctlpolicy lint: error: give a PATH (or --list-codes)", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = read_policy_files(args.paths)
    except PolicyReadError as error:
        print(f"rctlpolicy lint: {error}", file=sys.stderr)
        return EXIT_USAGE
    empty = _directories_without_policy(args.paths)
    resolved = _lint_resolver(args)
    if resolved is None:
        return EXIT_USAGE
    resolver, running_jails = resolved

    def not_a_note(diagnostic: Diagnostic) -> bool:
        return diagnostic.severity is not Severity.INFO

    # Only what is printed is kept (JSON prints everything): a file of random text has
    # hundreds of thousands of findings, and memory must not grow with them.
    if args.format == "json":
        collected = DiagnosticCollector()
    else:
        collected = DiagnosticCollector(LINT_PER_FILE, not_a_note if args.quiet else None)
    policy = lint_into(files, collected.add, resolver, running_jails)
    chunks = (
        render_json(collected.diagnostics(), policy)
        if args.format == "json"
        else render(
            collected.diagnostics(),
            Style(args.format),
            per_file=LINT_PER_FILE,
            colour=args.format == "text" and use_colour(sys.stdout),
            omitted=collected.omitted,
        )
    )
    for chunk in chunks:
        sys.stdout.write(chunk)
    failed = collected.failed(args.strict) or (args.strict and bool(empty))
    return EXIT_FINDINGS if failed else EXIT_OK


def _directories_without_policy(paths: Sequence[str]) -> list[str]:
    """Warn (stderr) about each directory PATH that holds no policy file; returns them."""
    from pathlib import Path

    from rctlpolicy.files import POLICY_SUFFIXES, PolicyReadError, policy_paths

    empty = []
    for raw in paths:
        path = Path(raw)
        if raw == "-" or not path.is_dir():
            continue
        try:
            if policy_paths(path):
                continue
        except PolicyReadError:
            continue  # reading it said why
        empty.append(raw)
        patterns = ", ".join(f"*{suffix}" for suffix in POLICY_SUFFIXES)
        print(
            f"rctlpolicy lint: warning: {raw}: no policy file in this directory "
            f"(looked for {patterns})",
            file=sys.stderr,
        )
    return empty


def _lint_resolver(args: argparse.Namespace) -> tuple[Resolver, Collection[str] | None] | None:
    """What `lint` looks names up with, and the running jails (None: not known). With
    --resolve: this machine, or the simulated host of --sim-host. None after saying why."""
    from rctlpolicy.semantics.resolver import OFFLINE

    if not args.resolve:
        return OFFLINE, None
    if args.sim_host:
        from rctlpolicy.kernel import KernelSetupError, open_simulator

        try:
            setup = open_simulator(args.sim_host)
            return setup.resolver, [jail.name for jail in setup.kernel.jails()]
        except (KernelSetupError, OSError) as error:
            print(f"rctlpolicy lint: {error}", file=sys.stderr)
            return None
    from rctlpolicy.hostinfo import SystemResolver
    from rctlpolicy.kernel.jails import list_system_jails

    resolver = SystemResolver(list_system_jails)
    return resolver, resolver.running_jails()


_LINT_DESCRIPTION = (
    "Check policy files exactly as rctl(8) and the kernel would: every rule that passes "
    "loads, every rule FreeBSD loads passes. Directories are searched for *.conf, *.rules, "
    "*.yaml and *.yml; '-' reads rctl.conf text from stdin."
)
_LINT_EPILOG = (
    "Exit status: 0 clean (or only warnings without --strict), 1 findings, 2 usage or I/O errors."
)


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    lint = commands.add_parser(
        "lint",
        help="check policy files (rctl.conf or YAML) as FreeBSD would",
        description=_LINT_DESCRIPTION,
        epilog=_LINT_EPILOG,
    )
    _lint_arguments(lint)


def _lint_arguments(lint: argparse.ArgumentParser) -> None:
    lint.add_argument("paths", nargs="*", metavar="PATH", help="policy file, directory or -")
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
        help="check user names and pids against this machine, as rctl(8) would, and warn "
        "about jails and login classes it does not have and jail patterns no running jail "
        "matches",
    )
    lint.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="hide informational notes (JSON always includes them)",
    )
    lint.add_argument(
        "--sim-host",
        metavar="FILE",
        help="with --resolve: look names, processes and jails up on this simulated host "
        "instead of this machine",
    )
    lint.add_argument(
        "--list-codes",
        action="store_true",
        help="list every diagnostic code with its severity and meaning, and exit",
    )
    lint.set_defaults(handler=_cmd_lint, lint_parser=lint)


def lint_parser() -> argparse.ArgumentParser:
    """`rctlpolicy lint`'s own parser, for the arguments after `lint`: the same as its
    subcommand parser in `build_parser()`, without building every other command's parser
    (a good part of the start-up pre-commit pays on every commit)."""
    lint = argparse.ArgumentParser(
        prog="rctlpolicy lint", description=_LINT_DESCRIPTION, epilog=_LINT_EPILOG
    )
    _lint_arguments(lint)
    return lint
