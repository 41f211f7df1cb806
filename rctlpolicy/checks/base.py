"""What every cross-rule check is given and returns: its findings, the context, the signature.

Apart from the package so that the check modules import it without importing the package's
`all_checks` (which imports them): no import cycle between the package and its checks.
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
