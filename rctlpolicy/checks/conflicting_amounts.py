"""conflicting-amounts (warning): deny or throttle rules for the same subject, resource and
per with different amounts.

For deny the kernel keeps only the last rule added (kern_rctl.c:rctl_rule_add removes the
earlier one), so one of the amounts silently wins; for throttle both are kept but only the
strictest can ever act. Other actions (log, devctl, signals) may coexist at several amounts:
each one acts at its own threshold. The finding is at the later rule and names the earlier.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rctlpolicy.checks.base import Context, Finding, where
from rctlpolicy.codes import Code
from rctlpolicy.model import Action
from rctlpolicy.policy_model import PolicyRule


def check(rules: Sequence[PolicyRule], context: Context) -> Iterator[Finding]:
    limit_by_key: dict[tuple[object, ...], PolicyRule] = {}
    for rule in rules:
        model = rule.rule
        if model.action is not Action.DENY and model.action is not Action.THROTTLE:
            continue
        key = (model.subject, model.subject_id, model.resource, model.action, model.per)
        other = limit_by_key.get(key)
        if other is None or other.rule.amount == model.amount:
            limit_by_key[key] = rule
            continue
        amounts = (
            f"{model.subject}:{model.subject_id} {model.resource} ({other.rule.amount} at "
            f"{where(other)} and {model.amount} here)"
        )
        if model.action is Action.DENY:
            message = f"two deny amounts for {amounts}: the kernel keeps only the last one added"
        else:
            message = f"two throttle amounts for {amounts}: only the strictest can ever act"
        yield Finding(rule, Code.CONFLICTING_AMOUNTS, message, "keep one amount")
