"""What the commands that talk to the kernel share: opening it, reading a filter operand as
rctl(8) does, and wording a refusal as rctl(8) would."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_FINDINGS, EXIT_USAGE

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from rctlpolicy.kernel import KernelSetup
    from rctlpolicy.model import Filter


def open_kernel_or_say(args: argparse.Namespace) -> KernelSetup | None:
    from rctlpolicy.kernel import KernelSetupError, open_kernel

    try:
        return open_kernel(args.kernel, args.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None


def parse_filter(text: str | None, setup: KernelSetup) -> Filter | None:
    """A filter operand as rctl(8) reads it; prints a diagnostic and returns None if bad."""
    from rctlpolicy.grammar import parse_rule_syntax
    from rctlpolicy.kernel.base import STRERROR
    from rctlpolicy.model import Filter
    from rctlpolicy.semantics.check import Layer, check_filter

    if text is None:
        return Filter()
    syntax = parse_rule_syntax(text)
    check = check_filter(syntax, Layer.RCTL8, setup.resolver)
    if check.filter is None:
        problem = check.error
        assert problem is not None
        column = 0 if problem.field is None else syntax.starts[problem.field] + problem.offset
        # Where FreeBSD's kernel would refuse it, its errno too: what rctl(8) would print.
        refusal = STRERROR.get(problem.errno or "")
        kernel = f" ({problem.errno}: {refusal})" if refusal else ""
        print(f"rctlpolicy: invalid filter '{text}': {problem.message}{kernel}", file=sys.stderr)
        print(f"    {text}\n    {' ' * column}^", file=sys.stderr)
        if problem.suggestion:
            print(f"  help: {problem.suggestion}", file=sys.stderr)
        return None
    return check.filter


def kernel_failure(error: Exception, doing: str, operand: str | None = None, hint: str = "") -> int:
    """A refused kernel call, worded like rctl(8): what failed, for what, and why. A host or
    state file that cannot be used is an I/O error (exit 2), not a refusal."""
    from rctlpolicy.kernel.base import KernelError

    if not isinstance(error, KernelError):
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"rctlpolicy: failed to {doing} '{operand or error.text}': {error.reason}{hint}",
        file=sys.stderr,
    )
    return EXIT_FINDINGS
