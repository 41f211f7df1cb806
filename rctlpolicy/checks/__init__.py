"""Checks across a whole policy, beyond what one rule can tell: one module per check.

Each module documents its check in its docstring and has one function, `check(rules,
context)`, that walks the policy's rules in order (files in the order given, rules in file
order: the order they reach the kernel) and yields a `Finding` per rule it has something to
say about. A check keeps only what it needs to remember about earlier rules, so lint can
stream its findings. Its code, severity and examples are in the registry (`rctlpolicy.codes`).
"""

from __future__ import annotations

from rctlpolicy.checks.base import Check


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
