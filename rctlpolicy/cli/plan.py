"""`rctlpolicy plan` and `rctlpolicy apply`: the kernel's rules against the policy.

Both read the daemon's settings (rctlpolicy.cli.settings), so that a plan made next to a running
daemon shows what that daemon would do; what they print is built in rctlpolicy.planreport.
"""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, kernel_options, use_colour
from rctlpolicy.cli.kernel import open_kernel_or_say

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any

    from rctlpolicy.cli.settings import LedgerSettings
    from rctlpolicy.diagnostics import Diagnostic
    from rctlpolicy.planreport import PlanDocument

#: plan --detailed-exitcode's status when there are changes (terraform's).
EXIT_CHANGES = 2


class _Stop(Exception):
    """The command cannot go on: its exit status, and what to tell (already said on stderr
    when `said`)."""

    def __init__(self, status: int, message: str | None, said: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.said = said


def _say(message: str) -> None:
    print(f"rctlpolicy: {message}", file=sys.stderr)


def _settings(args: argparse.Namespace, document: PlanDocument) -> LedgerSettings:
    from rctlpolicy.cli.settings import ledger_settings
    from rctlpolicy.config import ConfigError

    try:
        settings = ledger_settings(args)
    except ConfigError as error:
        raise _Stop(EXIT_USAGE, str(error)) from None
    loaded = settings.loaded
    document.config_file = None if loaded.path is None else str(loaded.path)
    if args.paths:
        document.paths = list(args.paths)
    else:
        document.paths = [str(settings.rules_dir)]
        document.rules_source = "config" if "rules_dir" in loaded.from_file else "default"
    return settings


def _policy(args: argparse.Namespace, setup: Any, jails: list[str], document: Any) -> Any:
    """Read and lint the policy against the kernel's host (user names -> uids, the running
    jails for patterns); raises _Stop when it cannot be read (2) or has errors (1)."""
    from rctlpolicy.codes import Code
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import format_text
    from rctlpolicy.lint import lint_files
    from rctlpolicy.policyload import unsafe_command_files

    try:
        files = read_policy_files(document.paths)
    except PolicyReadError as error:
        raise _Stop(EXIT_USAGE, str(error)) from None
    # Whether a process still exists is the kernel's to say when the rule is added (one
    # refusal, reported), not a reason to change nothing.
    try:
        resolver = setup.policy_resolver()
    except OSError as error:  # the simulated host's file broke since the kernel was opened
        raise _Stop(EXIT_USAGE, str(error)) from None
    result = lint_files(files, resolver, jails)
    # As the daemon loads it: a file that runs commands and that others can write is refused.
    found = [*result.diagnostics, *unsafe_command_files(files, result.policy)]
    problems: list[Diagnostic] = [d for d in found if d.severity.value == "error"]
    if problems:
        document.diagnostics = problems
        sys.stderr.write(format_text(problems, use_colour(sys.stderr)))
        raise _Stop(EXIT_FINDINGS, "the policy has errors; nothing was changed")
    document.warnings = [d for d in result.diagnostics if d.code == Code.JAIL_PATTERN_UNMATCHED]
    return result.policy


def _kernel_failure(error: Exception, doing: str) -> _Stop:
    """A refused kernel call, worded like rctl(8) (1); a host or state file that cannot be
    used is an I/O error (2)."""
    from rctlpolicy.kernel.base import KernelError

    if isinstance(error, KernelError):
        return _Stop(EXIT_FINDINGS, f"failed to {doing} '{error.text}': {error.reason}")
    return _Stop(EXIT_USAGE, str(error))


def _run(args: argparse.Namespace, document: PlanDocument, lines: list[str]) -> int:
    """Plan or apply; fills `document` and the stdout `lines`. Raises _Stop."""
    from rctlpolicy.apply import AppliedRules, apply_rules, plan_for
    from rctlpolicy.kernel.base import KernelError
    from rctlpolicy.planreport import (
        applied_changes,
        apply_text,
        changes_of,
        plan_text,
        warning_text,
    )
    from rctlpolicy.policy import expand_jail_patterns

    settings = _settings(args, document)
    setup = open_kernel_or_say(args)
    if setup is None:
        raise _Stop(EXIT_USAGE, None, said=True)
    if not args.paths:
        lines.append(settings.rules_dir_line())
    state_dir = settings.state_dir or setup.state_dir
    document.state_dir = str(state_dir)
    applied = AppliedRules.in_dir(state_dir)
    try:
        jails = sorted(jail.name for jail in setup.kernel.jails())
    except (KernelError, OSError) as error:
        raise _kernel_failure(error, "list the jails for") from None
    policy = _policy(args, setup, jails, document)
    for warning in document.warnings:
        print(warning_text(warning), file=sys.stderr)
    desired = [r.rule for r in expand_jail_patterns(policy, jails)]
    if args.command == "plan":
        try:
            plan = plan_for(setup.kernel, desired, applied, args.prune)
        except (KernelError, OSError) as error:
            raise _kernel_failure(error, "show rules for") from None
        changes = changes_of(plan)
        document.changes = changes
        document.in_force = _in_force(plan)
        lines.extend(plan_text(changes))
        if args.detailed_exitcode and not changes.empty:
            return EXIT_CHANGES
        return EXIT_OK
    try:
        report = apply_rules(setup.kernel, desired, applied, args.prune)
    except (KernelError, OSError) as error:
        raise _kernel_failure(error, "apply the policy, stopped at") from None
    changes = changes_of(report.plan)
    document.changes = changes
    document.in_force = _in_force(report.plan)
    done = applied_changes(changes, report.added, report.removed, report.plan)
    document.applied = done
    for rule, refusal in report.failures:
        _say(f"failed to apply {rule.canonical}: {refusal.reason}")
        document.failed.append(
            {"rule": rule.canonical, "errno": refusal.errno_name, "reason": refusal.reason}
        )
    lines.extend(apply_text(done, len(report.failures)))
    return EXIT_OK if report.ok else EXIT_FINDINGS


def _in_force(plan: Any) -> list[str]:
    """The rules in force when the plan was made (what Ansible's diff shows as before)."""
    return sorted(rule.canonical for rule in plan.in_force)


def _command(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.planreport import PlanDocument

    document = PlanDocument(args.command, prune=args.prune)
    lines: list[str] = []
    try:
        status = _run(args, document, lines)
    except _Stop as stop:
        # A failed command prints nothing on stdout but its JSON document: the first line
        # (which rules directory) then goes before the error.
        for line in lines:
            print(line, file=sys.stderr)
        lines = []
        if stop.message is not None and not stop.said:
            _say(stop.message)
        document.error = stop.message or "the kernel could not be opened"
        status = stop.status
        if getattr(args, "detailed_exitcode", False):
            status = EXIT_FINDINGS  # 2 means "changes" there: every error is 1
    if args.format == "json":
        print(json.dumps(document.as_dict(), indent=2))
    elif lines:
        print("\n".join(lines))
    return status


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    from rctlpolicy.cli.settings import ledger_options

    for name, text in (
        ("plan", "show what apply would add, change and remove"),
        ("apply", "make the kernel's rules match the policy"),
    ):
        sub = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Only rules an earlier apply or the "
            "daemon added are removed (recorded in the daemon's state directory), never rules "
            "other tools put in the kernel, unless --prune. An invalid policy changes nothing. "
            "With no PATH the daemon's rules directory is read (from --config, else the "
            "built-in default), and the first line says which.",
            epilog="Exit status: 0 success, 1 policy errors or refused changes, 2 usage or "
            "I/O errors (a missing PATH, an unreadable config file)"
            + (
                "; with --detailed-exitcode: 0 no changes, 1 any error, 2 changes."
                if name == "plan"
                else "."
            )
            + " --format json prints one document on stdout (rctlpolicy(8), PLAN AND APPLY "
            "DOCUMENTS).",
        )
        sub.add_argument(
            "paths",
            nargs="*",
            metavar="PATH",
            help="policy files or directories (default: the daemon's rules directory)",
        )
        sub.add_argument(
            "--prune",
            action="store_true",
            help="also remove rules the policy does not name, whoever added them",
        )
        if name == "plan":
            sub.add_argument(
                "--detailed-exitcode",
                action="store_true",
                help="exit 0 when in sync, 2 when there are changes, and 1 for every error "
                "(usage and I/O errors included), as terraform plan does",
            )
        kernel_options(sub)
        ledger_options(sub)
        sub.set_defaults(handler=_command)
