"""Checks across a whole policy, beyond what one rule can tell: one module per check.

Each module documents its check in its docstring and has one function, `check(rules,
context)`, that walks the policy's rules in order (files in the order given, rules in file
order: the order they reach the kernel) and yields a `Finding` per rule it has something to
say about. A check keeps only what it needs to remember about earlier rules, so lint can
stream its findings. Its code, severity and examples are in the registry (`rctlpolicy.codes`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence

from rctlpolicy.codes import DiagnosticCode
from rctlpolicy.policy_model import PolicyRule
from rctlpolicy.records import NamedTuple


class Finding(NamedTuple):
    """What a check says about one rule (lint places it at the rule)."""

    rule: PolicyRule
    code: DiagnosticCode
    message: str
    suggestion: str | None = None


class Context(NamedTuple):
    """What a check may know beyond the rules."""

    #: The names of the jails running now; None when not known (lint without --resolve).
    running_jails: Collection[str] | None = None


Check = Callable[[Sequence[PolicyRule], Context], Iterator[Finding]]


def where(rule: PolicyRule) -> str:
    """`path:line` of a rule, for messages that point at another rule."""
    return f"{rule.source.path}:{rule.source.line}"


def all_checks() -> tuple[Check, ...]:
    """Every check, in the order lint runs them."""
    from rctlpolicy.checks import (
        conflicting_amounts,
        devctl_without_on_match,
        duplicate_rule,
        jail_pattern_unmatched,
    )

    return (
        duplicate_rule.check,
        conflicting_amounts.check,
        devctl_without_on_match.check,
        jail_pattern_unmatched.check,
    )
