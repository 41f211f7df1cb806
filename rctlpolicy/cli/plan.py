"""`rctlpolicy plan` and `rctlpolicy apply`: the kernel's rules against the policy."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, kernel_options, use_colour
from rctlpolicy.cli.kernel import kernel_failure, open_kernel_or_say

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any

    from rctlpolicy.kernel import KernelSetup
    from rctlpolicy.model import Rule
    from rctlpolicy.policy_model import Policy


def _load_policy_for_kernel(args: argparse.Namespace, setup: KernelSetup) -> Policy | None:
    """Lint the policy against the kernel's host (user names -> uids); None when invalid."""
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import format_text
    from rctlpolicy.lint import lint_files

    paths = args.paths or [str(setup.default_rules_dir)]
    try:
        files = read_policy_files(paths)
    except PolicyReadError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    # Whether a process still exists is the kernel's to say when the rule is added (one
    # refusal, reported), not a reason to change nothing.
    try:
        resolver = setup.policy_resolver()
    except OSError as error:  # the simulated host's file broke since the kernel was opened
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    result = lint_files(files, resolver)
    problems = [d for d in result.diagnostics if d.severity.value == "error"]
    if problems:
        sys.stderr.write(format_text(problems, use_colour(sys.stderr)))
        print("rctlpolicy: the policy has errors; nothing was changed", file=sys.stderr)
        return None
    return result.policy


def _desired_rules(policy: Policy, setup: KernelSetup) -> list[Rule]:
    from rctlpolicy.policy import expand_jail_patterns

    names = {jail.name for jail in setup.kernel.jails()}
    return [r.rule for r in expand_jail_patterns(policy, names)]


def _kernel_and_policy(args: argparse.Namespace, failed: int) -> tuple[KernelSetup, Policy] | int:
    """What plan and apply both start with: the kernel, then the policy checked against its
    host. Returns (setup, policy), or the exit status after saying why."""
    setup = open_kernel_or_say(args)
    if setup is None:
        return failed
    policy = _load_policy_for_kernel(args, setup)
    if policy is None:
        return EXIT_FINDINGS
    return setup, policy


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.apply import AppliedRules, plan_for
    from rctlpolicy.kernel.base import KernelError

    # With --detailed-exitcode 2 means "changes": every failure is then 1, as terraform does.
    failed = EXIT_FINDINGS if args.detailed_exitcode else EXIT_USAGE
    opened = _kernel_and_policy(args, failed)
    if isinstance(opened, int):
        return opened
    setup, policy = opened
    try:
        plan = plan_for(
            setup.kernel,
            _desired_rules(policy, setup),
            AppliedRules.in_dir(setup.state_dir),
            args.prune,
        )
    except (KernelError, OSError) as error:
        return min(kernel_failure(error, "show rules for"), failed)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "add": [r.canonical for r in plan.to_add],
                    "remove": [r.canonical for r in plan.to_remove],
                    "replace": [{"old": o.canonical, "new": n.canonical} for o, n in plan.replaced],
                },
                indent=2,
            )
        )
    else:
        for line in plan.lines():
            print(line)
        if not plan.empty:
            print(
                f"Plan: {len(plan.to_add)} to add, "
                f"{len(plan.to_remove) + len(plan.replaced)} to remove.",
                file=sys.stderr,
            )
    if args.detailed_exitcode and not plan.empty:
        return 2
    return EXIT_OK


def _cmd_apply(args: argparse.Namespace) -> int:
    from rctlpolicy.apply import AppliedRules, apply_rules
    from rctlpolicy.kernel.base import KernelError

    opened = _kernel_and_policy(args, EXIT_USAGE)
    if isinstance(opened, int):
        return opened
    setup, policy = opened
    try:
        report = apply_rules(
            setup.kernel,
            _desired_rules(policy, setup),
            AppliedRules.in_dir(setup.state_dir),
            args.prune,
        )
    except (KernelError, OSError) as error:
        return kernel_failure(error, "apply the policy, stopped at")
    for rule in report.removed:
        print(f"- {rule.canonical}")
    for old, new in report.plan.replaced:
        if new in report.added:
            print(f"- {old.canonical}  (replaced by {new.canonical})")
    for rule in report.added:
        print(f"+ {rule.canonical}")
    for rule, refusal in report.failures:
        print(f"rctlpolicy: failed to apply {rule.canonical}: {refusal.reason}", file=sys.stderr)
    if report.plan.empty:
        print("The kernel already matches the policy.", file=sys.stderr)
    else:
        print(
            f"Applied: {len(report.added)} added, {len(report.removed)} removed, "
            f"{len(report.failures)} failed.",
            file=sys.stderr,
        )
    return EXIT_OK if report.ok else EXIT_FINDINGS


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    for name, handler, text in (
        ("plan", _cmd_plan, "show what apply would add and remove"),
        ("apply", _cmd_apply, "make the kernel's rules match the policy"),
    ):
        sub = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Only rules an earlier apply added are "
            "removed (recorded in the state directory), never rules other tools put in the "
            "kernel, unless --prune. An invalid policy changes nothing.",
        )
        sub.add_argument(
            "paths",
            nargs="*",
            metavar="PATH",
            help="policy files or directories (default: the rules directory)",
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
                help="exit 2 when there are changes, 0 when in sync",
            )
        kernel_options(sub)
        sub.set_defaults(handler=handler)
