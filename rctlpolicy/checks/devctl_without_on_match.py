"""devctl-without-on-match (warning): a devctl rule whose events nothing in the policy handles.

A devctl rule only sends an event to devd(8); rctlpolicy acts on it when the rule has an
`on_match` (YAML policies). Without one the event goes nowhere: use `log` if a line in the
system log is all that is wanted. (The opposite, on_match on a rule that sends no event, is
on-match-not-devctl, found while the YAML is read.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rctlpolicy.checks.base import Context, Finding
from rctlpolicy.codes import Code
from rctlpolicy.model import Action
from rctlpolicy.policy_model import PolicyRule


def check(rules: Sequence[PolicyRule], context: Context) -> Iterator[Finding]:
    for rule in rules:
        if rule.rule.action is Action.DEVCTL and rule.on_match is None:
            yield Finding(
                rule,
                Code.DEVCTL_WITHOUT_ON_MATCH,
                "nothing handles this devctl rule's events",
                "add an on_match in a YAML policy, or use log if a log line is all you want",
            )
