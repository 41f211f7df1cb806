"""duplicate-rule (warning): the same rule twice, in one file or across files.

Rules are compared in the kernel's canonical form, so `j:web:maxproc:deny=100/jail` in a YAML
policy duplicates `jail:web:maxproc:deny=100` in an rctl.conf. The kernel holds a rule once,
so the second changes nothing; when the two are later edited apart, only one of them is
changed. The finding is at the second rule and names where the first is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rctlpolicy.checks.base import Context, Finding, where
from rctlpolicy.codes import Code
from rctlpolicy.policy_model import PolicyRule


def check(rules: Sequence[PolicyRule], context: Context) -> Iterator[Finding]:
    first_by_canonical: dict[str, PolicyRule] = {}
    for rule in rules:
        canonical = rule.canonical
        first = first_by_canonical.setdefault(canonical, rule)
        if first is not rule:
            yield Finding(
                rule,
                Code.DUPLICATE_RULE,
                f"duplicate rule: {canonical} is already defined at {where(first)}",
                "remove one of them",
            )
