"""Reading back what the kernel printed (kern_rctl.c:rctl_rule_to_sbuf's exact form) without
the grammar: listing 10,000 rules is then cheap."""

from __future__ import annotations

import re

from rctlpolicy.amounts import INT64_MAX
from rctlpolicy.model import (
    IN_MILLIONS_MAX,
    JAIL_NAME_MAX,
    LOGINCLASS_NAME_MAX,
    Action,
    Rule,
    SubjectType,
)
from rctlpolicy.semantics.problems import byte_length_over
from rctlpolicy.semantics.suggest import ACTIONS, RESOURCES, SUBJECTS

_CANONICAL = re.compile(
    r"(process|user|loginclass|jail):([^:]+):([a-z]+):([a-z0-9]+)="
    r"(0|[1-9][0-9]{0,18})(?:/(process|user|loginclass|jail))?\Z"
)
_CANONICAL_NUMBER = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")


def parse_canonical(text: str) -> Rule | None:
    """A rule in the exact form the kernel prints it, read without the grammar. None for
    anything not in that form (the caller then parses it like any rule); never a Rule the
    kernel would not hold.
    """
    match = _CANONICAL.match(text)
    if match is None:
        return None
    subject_name, subject_id, resource_name, action_name, amount_text, per_name = match.groups()
    subject = SUBJECTS[subject_name]
    resource = RESOURCES.get(resource_name)
    action = ACTIONS.get(action_name)
    if resource is None or action is None:
        return None
    amount = int(amount_text)
    if amount > INT64_MAX or (resource.in_millions and amount > IN_MILLIONS_MAX):
        return None
    if subject is SubjectType.PROCESS or subject is SubjectType.USER:
        # Negative uids (>= 2^31) and anything not printed by %d take the long way.
        if not _CANONICAL_NUMBER.match(subject_id) or int(subject_id) >= 2**31:
            return None
    elif byte_length_over(
        subject_id, LOGINCLASS_NAME_MAX if subject is SubjectType.LOGINCLASS else JAIL_NAME_MAX
    ):
        return None
    per = SUBJECTS[per_name] if per_name else subject
    if per_name and per is subject:
        return None  # the kernel never prints /per equal to the subject
    if action is Action.DENY and not resource.deny_allowed:
        return None
    if action is Action.THROTTLE and not resource.throttle_allowed:
        return None
    if per is SubjectType.PROCESS and resource.sloppy:
        return None
    return Rule(subject, subject_id, resource, action, amount, per)
