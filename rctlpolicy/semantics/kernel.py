"""The kernel's reading of a rule: kern_rctl.c:rctl_string_to_rule's parse of each field, the
fields rctl_rule_add needs (EINVAL), and its EOPNOTSUPP checks, in the kernel's order."""

from __future__ import annotations

from collections.abc import Sequence

from rctlpolicy.amounts import as_int64, kernel_strtoul
from rctlpolicy.codes import Code
from rctlpolicy.grammar import ACTION, AMOUNT, PER, RESOURCE, SUBJECT, SUBJECT_ID, RuleSyntax
from rctlpolicy.model import (
    IN_MILLIONS_MAX,
    JAIL_NAME_MAX,
    LOGINCLASS_NAME_MAX,
    Action,
    Resource,
    SubjectType,
    format_subject_id,
)
from rctlpolicy.semantics.problems import Problem, byte_length_over
from rctlpolicy.semantics.resolver import Resolver
from rctlpolicy.semantics.suggest import (
    ACTIONS,
    RESOURCES,
    SUBJECTS,
    unknown_action,
    unknown_per,
    unknown_resource,
    unknown_subject,
)


class KernelFields:
    """The fields as the kernel parsed them (None: absent or refused)."""

    __slots__ = ("action", "amount", "per", "resource", "subject", "subject_id")

    def __init__(
        self,
        subject: SubjectType | None = None,
        subject_id: str | None = None,
        resource: Resource | None = None,
        action: Action | None = None,
        amount: int | None = None,
        per: SubjectType | None = None,
    ) -> None:
        self.subject = subject
        self.subject_id = subject_id
        self.resource = resource
        self.action = action
        self.amount = amount
        self.per = per


def kernel_parse(
    values: Sequence[str | None],
    syntax: RuleSyntax,
    resolver: Resolver,
    problems: list[Problem],
    bad_fields: set[int],
    user_name: bool,
) -> KernelFields:
    """Parse the fields as the kernel does, adding one problem per field it refuses."""
    parsed = KernelFields()

    subject_text = values[SUBJECT]
    if subject_text:
        subject = SUBJECTS.get(subject_text.lower())
        if subject is None:
            problems.append(unknown_subject(subject_text))
            bad_fields.add(SUBJECT)
        parsed.subject = subject

    id_text = values[SUBJECT_ID]
    if id_text and SUBJECT_ID not in bad_fields:
        if not subject_text:
            problems.append(
                Problem(
                    SUBJECT,
                    Code.MISSING_FIELD,
                    "a subject-id is given without a subject",
                    "name the subject first, e.g. jail:" + id_text,
                    "EINVAL",
                )
            )
        elif parsed.subject is not None:
            parsed.subject_id = _subject_id(
                parsed.subject, id_text, resolver, problems, bad_fields, user_name
            )

    resource_text = values[RESOURCE]
    if resource_text:
        resource = RESOURCES.get(resource_text.lower())
        if resource is None:
            problems.append(unknown_resource(resource_text))
            bad_fields.add(RESOURCE)
        parsed.resource = resource

    action_text = values[ACTION]
    if action_text:
        action = ACTIONS.get(action_text.lower())
        if action is None:
            problems.append(unknown_action(action_text))
            bad_fields.add(ACTION)
        parsed.action = action

    amount_text = values[AMOUNT]
    if amount_text and AMOUNT not in bad_fields:
        parsed.amount = _amount(amount_text, parsed.resource, problems, bad_fields)

    per_text = values[PER]
    if per_text:
        per = SUBJECTS.get(per_text.lower())
        if per is None:
            problems.append(unknown_per(per_text, values[SUBJECT_ID]))
            bad_fields.add(PER)
        parsed.per = per
    return parsed


def _subject_id(
    subject: SubjectType,
    text: str,
    resolver: Resolver,
    problems: list[Problem],
    bad_fields: set[int],
    user_name: bool,
) -> str | None:
    if subject is SubjectType.PROCESS:
        value = kernel_strtoul(text)
        if value is None:
            problems.append(
                Problem(
                    SUBJECT_ID,
                    Code.INVALID_ID,
                    f"process id '{text}' is not a number",
                    "process rules take a pid",
                    "EINVAL",
                )
            )
            bad_fields.add(SUBJECT_ID)
            return None
        pid = value & 0xFFFFFFFF
        pid = pid - 2**32 if pid >= 2**31 else pid
        if resolver.process_exists(pid) is False:
            problems.append(
                Problem(
                    SUBJECT_ID,
                    Code.NO_SUCH_PROCESS,
                    f"no process with pid {pid}",
                    "process rules need a running process",
                    "ESRCH",
                )
            )
            bad_fields.add(SUBJECT_ID)
            return None
        return str(pid)
    if subject is SubjectType.USER:
        if user_name:
            return text
        value = kernel_strtoul(text)
        if value is None:
            problems.append(
                Problem(
                    SUBJECT_ID,
                    Code.INVALID_ID,
                    f"user id '{text}' is not a number",
                    "the kernel takes numeric uids; rctl(8) resolves names",
                    "EINVAL",
                )
            )
            bad_fields.add(SUBJECT_ID)
            return None
        return format_subject_id(subject, str(value))
    limit = LOGINCLASS_NAME_MAX if subject is SubjectType.LOGINCLASS else JAIL_NAME_MAX
    if byte_length_over(text, limit):
        problems.append(
            Problem(
                SUBJECT_ID,
                Code.NAME_TOO_LONG,
                f"{subject} name is {len(text.encode())} bytes long",
                f"{subject} names are at most {limit} bytes",
                "ENAMETOOLONG",
                offset=len(text[:limit]),
                width=max(1, len(text) - limit),
            )
        )
        bad_fields.add(SUBJECT_ID)
        return None
    return text


def _amount(
    text: str, resource: Resource | None, problems: list[Problem], bad_fields: set[int]
) -> int | None:
    value = kernel_strtoul(text)
    if value is None:
        problems.append(
            Problem(
                AMOUNT,
                Code.INVALID_AMOUNT,
                f"invalid amount '{text}'",
                "the kernel takes plain decimal numbers (suffixes such as 1g "
                "are an rctl(8) feature)",
                "EINVAL",
            )
        )
        bad_fields.add(AMOUNT)
        return None
    signed = as_int64(value)
    if signed < 0:
        problems.append(
            Problem(
                AMOUNT,
                Code.AMOUNT_OUT_OF_RANGE,
                f"amount '{text}' is out of range",
                "amounts are 0 to 9223372036854775807",
                "ERANGE",
            )
        )
        bad_fields.add(AMOUNT)
        return None
    if resource is not None and resource.in_millions and signed > IN_MILLIONS_MAX:
        problems.append(
            Problem(
                AMOUNT,
                Code.AMOUNT_OUT_OF_RANGE,
                f"amount '{text}' is out of range for {resource}",
                f"{resource} amounts are at most {IN_MILLIONS_MAX} (the kernel stores them x10^6)",
                "ERANGE",
            )
        )
        bad_fields.add(AMOUNT)
        return None
    return signed


def first_missing(parsed: KernelFields) -> int | None:
    """The first field rctl_add_rule needs that is undefined (the kernel's EINVAL)."""
    if parsed.subject is None:
        return SUBJECT
    if parsed.subject_id is None:
        return SUBJECT_ID
    if parsed.resource is None:
        return RESOURCE
    if parsed.action is None:
        return ACTION
    if parsed.amount is None:
        return AMOUNT
    return None


_MISSING_HELP = {
    SUBJECT: "start with process, user, loginclass or jail",
    SUBJECT_ID: "give the pid, user, login class or jail name after the subject",
    RESOURCE: "name a resource, e.g. memoryuse, maxproc, pcpu",
    ACTION: "name an action: deny, log, devctl, throttle or a signal (sigterm...)",
    AMOUNT: "give an amount after '=', e.g. deny=512m",
}


def missing(field_index: int, what: str) -> Problem:
    return Problem(
        field_index, Code.MISSING_FIELD, f"missing {what}", _MISSING_HELP[field_index], "EINVAL"
    )


_DENY_INSTEAD = {
    Resource.CPUTIME: "cputime cannot be denied: use log, devctl or a signal "
    "(sigxcpu, sigterm) to act when it is exceeded",
    Resource.WALLCLOCK: "wallclock cannot be denied: use log, devctl or a signal "
    "(sigterm, sigkill) to act when it is exceeded",
}


def add_checks(parsed: KernelFields, problems: list[Problem], per_written: bool) -> None:
    """kern_rctl.c:rctl_rule_add's EOPNOTSUPP checks, in the kernel's order (`per_written`:
    the rule names its per, where a per-process refusal then points)."""
    resource, action = parsed.resource, parsed.action
    assert resource is not None and action is not None
    if action is Action.DENY and not resource.deny_allowed:
        help_text = _DENY_INSTEAD.get(
            resource,
            f"{resource} is a rate: use throttle to slow it down "
            f"(e.g. {resource}:throttle=...), or log/devctl to be told",
        )
        problems.append(
            Problem(
                ACTION,
                Code.DENY_NOT_SUPPORTED,
                f"{resource} cannot be denied",
                help_text,
                "EOPNOTSUPP",
            )
        )
        return
    if action is Action.THROTTLE and not resource.throttle_allowed:
        if resource is Resource.PCPU:
            help_text = "use pcpu:deny, which throttles the processes over the limit"
        else:
            help_text = (
                "throttle works only for readbps, writebps, readiops and writeiops; "
                f"use deny to cap {resource}"
            )
        problems.append(
            Problem(
                ACTION,
                Code.THROTTLE_NOT_SUPPORTED,
                f"{resource} cannot be throttled",
                help_text,
                "EOPNOTSUPP",
            )
        )
        return
    if parsed.per is SubjectType.PROCESS and resource.sloppy:
        field_index = PER if per_written else SUBJECT
        problems.append(
            Problem(
                field_index,
                Code.PER_PROCESS_NOT_SUPPORTED,
                f"{resource} cannot be accounted per process",
                f"{resource} belongs to users and jails, not to processes: use "
                "/user or /jail, or a user or jail subject",
                "EOPNOTSUPP",
            )
        )
