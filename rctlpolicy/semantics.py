"""What FreeBSD accepts: rctl(8)'s rewriting of an operand, then the kernel's checks.

`check_rule` and `check_filter` take the fields cut by `rctlpolicy.grammar` and return the rule
(or filter) FreeBSD would hold, or problems that say which field is wrong, why, and what was
probably meant. The first error in a result is the one FreeBSD itself reports (same order, same
errno); further problems are extra help for people (other fields, warnings and notes).

Layers (spec section 1): `Layer.RCTL8` is what an administrator types (subject aliases, user
names, expand_number(3) suffixes) and `Layer.KERNEL` is the raw system-call string.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from rctlpolicy.amounts import (
    AmountError,
    AmountProblem,
    ExpandedNumber,
    as_int64,
    expand_number,
    kernel_strtoul,
    strtod_uid,
)
from rctlpolicy.grammar import (
    ACTION,
    AMOUNT,
    FIELD_NAMES,
    PER,
    RESOURCE,
    SUBJECT,
    SUBJECT_ID,
    RuleSyntax,
)
from rctlpolicy.model import (
    IN_MILLIONS_MAX,
    INT64_MAX,
    JAIL_NAME_MAX,
    LOGINCLASS_NAME_MAX,
    SUBJECT_ALIASES,
    Action,
    Filter,
    Resource,
    Rule,
    Severity,
    SubjectType,
    Unit,
    format_subject_id,
)

RULE_TEXT_MAX = 4095  # RCTL_MAX_INBUFSIZE - 1 (the NUL)


class Layer(StrEnum):
    RCTL8 = "rctl8"
    KERNEL = "kernel"


class Resolver(Protocol):
    """Host look-ups rctl(8) and the kernel make; tests and the simulator pass their own."""

    @property
    def checks_names(self) -> bool:
        """False: accept any well-formed user name as it is (lint without --resolve)."""
        ...

    def uid_of(self, name: str) -> int | None: ...

    def gid_of(self, name: str) -> int | None: ...

    def process_exists(self, pid: int) -> bool | None:
        """True/False when known, None when this resolver cannot tell."""
        ...

    def jail_exists(self, name: str) -> bool | None:
        """Whether a jail of that name runs now (None: cannot tell). Advice only: the kernel
        accepts rules for any jail name and applies them when such a jail starts."""
        ...

    def loginclass_exists(self, name: str) -> bool | None:
        """Whether login.conf(5) defines the class (None: cannot tell). Advice only."""
        ...


@dataclass(frozen=True, slots=True)
class OfflineResolver:
    """Resolves nothing and accepts every well-formed name: lint's default."""

    checks_names: bool = False

    def uid_of(self, name: str) -> int | None:
        return None

    def gid_of(self, name: str) -> int | None:
        return None

    def process_exists(self, pid: int) -> bool | None:
        return None

    def jail_exists(self, name: str) -> bool | None:
        return None

    def loginclass_exists(self, name: str) -> bool | None:
        return None


OFFLINE = OfflineResolver()


class Problem(NamedTuple):
    """One finding about one field (`field` is a grammar field index, None for the whole rule)."""

    field: int | None
    severity: Severity
    code: str
    message: str
    suggestion: str | None = None
    #: The errno FreeBSD's kernel returns, or "RCTL8" when rctl(8) refuses before sending.
    errno: str | None = None
    #: Offset of the caret inside the field, and how much to underline (None: the field).
    offset: int = 0
    width: int | None = None


class RuleCheck(NamedTuple):
    syntax: RuleSyntax
    rule: Rule | None
    problems: tuple[Problem, ...]
    #: The fields as rctl(8) sends them to the kernel (aliases expanded, uid, amount).
    sent_fields: tuple[str | None, ...] = ()

    @property
    def error(self) -> Problem | None:
        """The problem FreeBSD reports (the first error in its processing order)."""
        return first_error(self.problems)

    @property
    def ok(self) -> bool:
        return self.rule is not None


class FilterCheck(NamedTuple):
    syntax: RuleSyntax
    filter: Filter | None
    problems: tuple[Problem, ...]
    sent_fields: tuple[str | None, ...] = ()

    @property
    def error(self) -> Problem | None:
        return first_error(self.problems)


def first_error(problems: Sequence[Problem]) -> Problem | None:
    """The first error, which is the one FreeBSD reports (problems are in its order)."""
    for problem in problems:
        if problem.severity is Severity.ERROR:
            return problem
    return None


# --- vocabulary and the words people borrow from elsewhere --------------------------------

_SUBJECTS = {s.value: s for s in SubjectType}
_RESOURCES = {r.value: r for r in Resource}
_ACTIONS = {a.value: a for a in Action}

_BORROWED_SUBJECTS = {
    "pid": "process",
    "proc": "process",
    "uid": "user",
    "username": "user",
    "login": "loginclass",
    "logincls": "loginclass",
    "prison": "jail",
    "jid": "jail",
    "container": "jail",
}
_GROUP_HELP = (
    "RCTL has no group subject (rctl(8) expands 'g' to 'group' but the kernel refuses it): "
    "limit a user, a login class or a jail instead"
)
_BORROWED_RESOURCES = {
    "nproc": "maxproc",
    "maxprocs": "maxproc",
    "procs": "maxproc",
    "processes": "maxproc",
    "vmem": "vmemoryuse",
    "vmemory": "vmemoryuse",
    "vsize": "vmemoryuse",
    "as": "vmemoryuse",
    "memory": "memoryuse",
    "mem": "memoryuse",
    "rss": "memoryuse",
    "nofile": "openfiles",
    "nofiles": "openfiles",
    "fds": "openfiles",
    "files": "openfiles",
    "swap": "swapuse",
    "cpu": "pcpu",
    "cpupct": "pcpu",
    "core": "coredumpsize",
    "coredump": "coredumpsize",
    "stack": "stacksize",
    "data": "datasize",
    "memlock": "memorylocked",
    "threads": "nthr",
    "nthreads": "nthr",
    "pty": "pseudoterminals",
    "ptys": "pseudoterminals",
    "pts": "pseudoterminals",
    "readbytes": "readbps",
    "writebytes": "writebps",
    "iops": "readiops",
}
_BORROWED_ACTIONS = {
    "warn": "log",
    "syslog": "log",
    "notify": "devctl",
    "event": "devctl",
    "devd": "devctl",
    "limit": "deny",
    "block": "deny",
    "refuse": "deny",
    "reject": "deny",
    "throttled": "throttle",
    "slow": "throttle",
}
_SIGNALS_BY_NUMBER = {a.signal_number: a.value for a in Action if a.is_signal}
_SIGCONT_HELP = (
    "sigcont (19) is not in the kernel's action table; pick another signal, "
    "e.g. sigstop to pause or sigterm to stop"
)


def _did_you_mean(word: str, choices: Sequence[str], borrowed: dict[str, str]) -> str | None:
    lowered = word.lower()
    if lowered in borrowed:
        return f"did you mean '{borrowed[lowered]}'?"
    close = difflib.get_close_matches(lowered, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return None


def _list(words: Sequence[str]) -> str:
    return ", ".join(words)


# --- rctl(8)'s rewriting of an operand (usr.bin/rctl/rctl.c:expand_rule) -------------------

_USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?\Z")


@dataclass(slots=True)
class _Rewrite:
    """rctl(8)'s output fields, plus what was learnt on the way (for lint's notes)."""

    fields: list[str | None]
    problems: list[Problem]
    bad_fields: set[int]
    amount: ExpandedNumber | None = None
    uid_note: str | None = None
    user_name: bool = False  # the id is a user name left unresolved


def _rctl8_rewrite(syntax: RuleSyntax, resolver: Resolver, resolve_users: bool) -> _Rewrite:
    fields: list[str | None] = list(syntax.fields)
    out = _Rewrite(fields, [], set())
    if not syntax.has_colon:
        out.problems.append(
            Problem(
                SUBJECT_ID,
                Severity.ERROR,
                "missing-field",
                "incomplete rule: no ':' after the subject",
                "a rule is subject:subject-id:resource:action=amount[/per]",
                "RCTL8",
            )
        )
        out.bad_fields.add(SUBJECT_ID)
        return out
    subject = fields[SUBJECT] or ""
    alias = SUBJECT_ALIASES.get(subject.lower())
    if alias is not None:
        fields[SUBJECT] = alias
    subject_word = (fields[SUBJECT] or "").lower()
    subject_id = fields[SUBJECT_ID] or ""
    if subject_word in ("user", "group") and subject_id and resolve_users:
        _resolve_id(subject_word, subject_id, resolver, out)
    amount = fields[AMOUNT]
    if amount:
        try:
            out.amount = expand_number(amount)
        except AmountError as error:
            out.problems.append(_amount_problem(amount, error, syntax))
            out.bad_fields.add(AMOUNT)
        else:
            fields[AMOUNT] = str(out.amount.value)
    return out


def _resolve_id(subject: str, name: str, resolver: Resolver, out: _Rewrite) -> None:
    lookup = resolver.uid_of if subject == "user" else resolver.gid_of
    number = lookup(name)
    if number is not None:
        out.fields[SUBJECT_ID] = str(_as_c_int(number))
        return
    if not name[0].isdigit():
        if resolver.checks_names:
            out.problems.append(
                Problem(
                    SUBJECT_ID,
                    Severity.ERROR,
                    f"unknown-{subject}",
                    f"unknown {subject} '{name}'",
                    f"no such {subject} on this host; give a numeric "
                    f"{'uid' if subject == 'user' else 'gid'} or create the {subject} first",
                    "RCTL8",
                )
            )
            out.bad_fields.add(SUBJECT_ID)
        elif not _USER_NAME.match(name):
            out.problems.append(
                Problem(
                    SUBJECT_ID,
                    Severity.ERROR,
                    f"invalid-{subject}",
                    f"'{name}' is not a valid {subject} name",
                    "user names are letters, digits, '.', '_' and '-', at most 32 characters",
                    "RCTL8",
                )
            )
            out.bad_fields.add(SUBJECT_ID)
        else:
            out.user_name = subject == "user"
        return
    number = strtod_uid(name)
    if number is None:
        out.problems.append(
            Problem(
                SUBJECT_ID,
                Severity.ERROR,
                "invalid-id",
                f"trailing characters after numerical id '{name}'",
                f"give the {subject} as a plain decimal number or a name",
                "RCTL8",
            )
        )
        out.bad_fields.add(SUBJECT_ID)
        return
    out.fields[SUBJECT_ID] = str(number)
    if not name.isdigit():
        out.uid_note = f"rctl(8) reads ids with strtod(3): '{name}' means {subject} {number}"


def _as_c_int(number: int) -> int:
    number &= 0xFFFFFFFF
    return number - 2**32 if number >= 2**31 else number


_TIME_WORD = re.compile(
    r"\s*[0-9]+\s*(s|sec|secs|seconds?|min|mins|minutes?|h|hr|hours?|d|days?)\Z"
)


def _amount_problem(amount: str, error: AmountError, syntax: RuleSyntax) -> Problem:
    """rctl(8): "invalid numeric value", said so that the fix is obvious."""
    resource = (syntax.fields[RESOURCE] or "").lower()
    info = _RESOURCES.get(resource)
    base = f"invalid amount '{amount}'"
    suggestion: str | None
    if error.problem is AmountProblem.NEGATIVE:
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "invalid-amount",
            f"{base}: amounts cannot be negative",
            "use 0 to allow nothing",
            "RCTL8",
        )
    if error.problem is AmountProblem.OVERFLOW:
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "amount-out-of-range",
            f"{base}: too large",
            "the largest amount is 7e (8070450532247928832)",
            "RCTL8",
        )
    stripped = amount.strip()
    if "%" in stripped and re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*%", stripped):
        number = stripped.rstrip("%").strip()
        suggestion = (
            f"pcpu amounts are percent of one core, written without '%': {number}"
            if info is Resource.PCPU
            else f"write the number without '%': {number}"
        )
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "invalid-amount",
            f"{base}: '%' is not part of an amount",
            suggestion,
            "RCTL8",
        )
    fraction = re.fullmatch(r"([0-9]+)\.([0-9]+)([kmgtpeKMGTPE]?)[bB]?", stripped)
    if fraction:
        suggestion = "amounts are whole numbers"
        unit = fraction.group(3).lower()
        if unit:
            units = "kmgtpe"
            value = float(f"{fraction.group(1)}.{fraction.group(2)}")
            smaller = units.index(unit)
            exact = value * 1024
            if smaller > 0 and exact.is_integer():
                suggestion = f"amounts are whole numbers: write {int(exact)}{units[smaller - 1]}"
            elif exact.is_integer():
                suggestion = f"amounts are whole numbers: write {int(exact)}"
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "invalid-amount",
            f"{base}: fractions are not accepted",
            suggestion,
            "RCTL8",
        )
    time_word = _TIME_WORD.match(stripped)
    if time_word:
        seconds = _seconds_of(stripped)
        if info is not None and info.info.unit is Unit.SECONDS:
            suggestion = f"{resource} amounts are plain seconds: write {seconds}"
        else:
            suggestion = "amounts take no time units; suffixes k, m, g, t, p, e are powers of 1024"
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "invalid-amount",
            f"{base}: time units are not accepted",
            suggestion,
            "RCTL8",
        )
    if stripped != amount and amount.rstrip() != amount:
        return Problem(
            AMOUNT,
            Severity.ERROR,
            "invalid-amount",
            f"{base}: trailing blank",
            "remove the blank after the number",
            "RCTL8",
            offset=len(amount.rstrip()),
        )
    return Problem(
        AMOUNT,
        Severity.ERROR,
        "invalid-amount",
        base,
        "an amount is a number with an optional suffix k, m, g, t, p or e "
        "(powers of 1024) and an optional b: 512m, 8g, 100",
        "RCTL8",
        offset=error.offset,
    )


def _seconds_of(text: str) -> int:
    match = re.match(r"\s*([0-9]+)\s*([a-z]*)", text)
    assert match is not None
    number = int(match.group(1))
    unit = match.group(2)
    factor = 1
    if unit.startswith("min") or unit == "m":
        factor = 60
    elif unit.startswith("h"):
        factor = 3600
    elif unit.startswith("d"):
        factor = 86400
    return number * factor


# --- the kernel's parse (kern_rctl.c:rctl_string_to_rule) and add checks ------------------


@dataclass(slots=True)
class _KernelFields:
    subject: SubjectType | None = None
    subject_id: str | None = None
    resource: Resource | None = None
    action: Action | None = None
    amount: int | None = None
    per: SubjectType | None = None


def _kernel_parse(
    values: Sequence[str | None],
    syntax: RuleSyntax,
    resolver: Resolver,
    problems: list[Problem],
    bad_fields: set[int],
    user_name: bool,
) -> _KernelFields:
    """Parse the fields as the kernel does, adding one problem per field it refuses."""
    parsed = _KernelFields()

    subject_text = values[SUBJECT]
    if subject_text:
        subject = _SUBJECTS.get(subject_text.lower())
        if subject is None:
            problems.append(_unknown_subject(subject_text))
            bad_fields.add(SUBJECT)
        parsed.subject = subject

    id_text = values[SUBJECT_ID]
    if id_text and SUBJECT_ID not in bad_fields:
        if not subject_text:
            problems.append(
                Problem(
                    SUBJECT,
                    Severity.ERROR,
                    "missing-field",
                    "a subject-id is given without a subject",
                    "name the subject first, e.g. jail:" + id_text,
                    "EINVAL",
                )
            )
        elif parsed.subject is not None:
            parsed.subject_id = _kernel_subject_id(
                parsed.subject, id_text, syntax, resolver, problems, bad_fields, user_name
            )

    resource_text = values[RESOURCE]
    if resource_text:
        resource = _RESOURCES.get(resource_text.lower())
        if resource is None:
            problems.append(
                _unknown_word("resource", resource_text, _RESOURCES, _BORROWED_RESOURCES)
            )
            bad_fields.add(RESOURCE)
        parsed.resource = resource

    action_text = values[ACTION]
    if action_text:
        action = _ACTIONS.get(action_text.lower())
        if action is None:
            problems.append(_unknown_action(action_text))
            bad_fields.add(ACTION)
        parsed.action = action

    amount_text = values[AMOUNT]
    if amount_text and AMOUNT not in bad_fields:
        parsed.amount = _kernel_amount(amount_text, parsed.resource, problems, bad_fields)

    per_text = values[PER]
    if per_text:
        per = _SUBJECTS.get(per_text.lower())
        if per is None:
            problems.append(_unknown_per(per_text, values[SUBJECT_ID]))
            bad_fields.add(PER)
        parsed.per = per
    return parsed


def _unknown_subject(text: str) -> Problem:
    lowered = text.lower()
    if lowered in ("group", "g", "gid"):
        return Problem(
            SUBJECT,
            Severity.ERROR,
            "unknown-subject",
            f"unknown subject '{text}'",
            _GROUP_HELP,
            "EINVAL",
        )
    if lowered in _SUBJECTS or lowered in SUBJECT_ALIASES:
        suggestion: str | None = None
    else:
        suggestion = _did_you_mean(text, [*_SUBJECTS, *SUBJECT_ALIASES], _BORROWED_SUBJECTS)
    if text != text.strip():
        suggestion = "remove the blanks: the kernel does not trim fields"
    return Problem(
        SUBJECT,
        Severity.ERROR,
        "unknown-subject",
        f"unknown subject '{text}'",
        suggestion or f"subjects are {_list(list(_SUBJECTS))}",
        "EINVAL",
    )


def _unknown_word(
    kind: str, text: str, table: Mapping[str, object], borrowed: dict[str, str]
) -> Problem:
    index = {"resource": RESOURCE, "action": ACTION}[kind]
    if text != text.strip() and text.strip().lower() in table:
        suggestion: str | None = "remove the blanks: the kernel does not trim fields"
    elif ":" in text and kind == "action":
        suggestion = "a rule has exactly four ':'-separated parts before '='"
    else:
        suggestion = _did_you_mean(text, list(table), borrowed)
    return Problem(
        index,
        Severity.ERROR,
        f"unknown-{kind}",
        f"unknown {kind} '{text}'",
        suggestion or f"{kind}s are: {_list(list(table))}",
        "EINVAL",
    )


def _unknown_action(text: str) -> Problem:
    lowered = text.lower()
    if lowered in ("sigcont", "cont"):
        return Problem(
            ACTION,
            Severity.ERROR,
            "unknown-action",
            f"unknown action '{text}'",
            _SIGCONT_HELP,
            "EINVAL",
        )
    number = lowered.removeprefix("sig")
    if number.isdigit():
        name = _SIGNALS_BY_NUMBER.get(int(number))
        hint = (
            f"signals are given by name: did you mean '{name}'?"
            if name
            else "signals are given by name, e.g. sigterm"
        )
        return Problem(
            ACTION, Severity.ERROR, "unknown-action", f"unknown action '{text}'", hint, "EINVAL"
        )
    if "sig" + lowered in _ACTIONS:
        return Problem(
            ACTION,
            Severity.ERROR,
            "unknown-action",
            f"unknown action '{text}'",
            f"did you mean 'sig{lowered}'?",
            "EINVAL",
        )
    return _unknown_word("action", text, _ACTIONS, _BORROWED_ACTIONS)


def _unknown_per(text: str, subject_id: str | None) -> Problem:
    if subject_id and text == subject_id:
        suggestion: str | None = (
            "per names whose usage is summed (process, user, loginclass or jail), not an id; "
            "drop it to sum over the subject itself"
        )
    elif "/" in text or ":" in text:
        suggestion = "per is the last field; nothing may follow it"
    elif text.lower() in SUBJECT_ALIASES:
        suggestion = (
            f"per takes no aliases: write '{SUBJECT_ALIASES[text.lower()]}'"
            if text.lower() != "g"
            else _GROUP_HELP
        )
    else:
        suggestion = _did_you_mean(text, list(_SUBJECTS), _BORROWED_SUBJECTS)
    return Problem(
        PER,
        Severity.ERROR,
        "unknown-per",
        f"unknown per '{text}'",
        suggestion or "per is one of process, user, loginclass, jail",
        "EINVAL",
    )


def _kernel_subject_id(
    subject: SubjectType,
    text: str,
    syntax: RuleSyntax,
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
                    Severity.ERROR,
                    "invalid-id",
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
                    Severity.ERROR,
                    "no-such-process",
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
                    Severity.ERROR,
                    "invalid-id",
                    f"user id '{text}' is not a number",
                    "the kernel takes numeric uids; rctl(8) resolves names",
                    "EINVAL",
                )
            )
            bad_fields.add(SUBJECT_ID)
            return None
        return format_subject_id(subject, str(value))
    limit = LOGINCLASS_NAME_MAX if subject is SubjectType.LOGINCLASS else JAIL_NAME_MAX
    if _byte_length_over(text, limit):
        problems.append(
            Problem(
                SUBJECT_ID,
                Severity.ERROR,
                "name-too-long",
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


def _kernel_amount(
    text: str, resource: Resource | None, problems: list[Problem], bad_fields: set[int]
) -> int | None:
    value = kernel_strtoul(text)
    if value is None:
        problems.append(
            Problem(
                AMOUNT,
                Severity.ERROR,
                "invalid-amount",
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
                Severity.ERROR,
                "amount-out-of-range",
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
                Severity.ERROR,
                "amount-out-of-range",
                f"amount '{text}' is out of range for {resource}",
                f"{resource} amounts are at most {IN_MILLIONS_MAX} (the kernel stores them x10^6)",
                "ERANGE",
            )
        )
        bad_fields.add(AMOUNT)
        return None
    return signed


_DENY_INSTEAD = {
    Resource.CPUTIME: "cputime cannot be denied: use log, devctl or a signal "
    "(sigxcpu, sigterm) to act when it is exceeded",
    Resource.WALLCLOCK: "wallclock cannot be denied: use log, devctl or a signal "
    "(sigterm, sigkill) to act when it is exceeded",
}


def _add_checks(parsed: _KernelFields, problems: list[Problem], syntax: RuleSyntax) -> None:
    """kern_rctl.c:rctl_rule_add's EOPNOTSUPP checks, in the kernel's order."""
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
                Severity.ERROR,
                "deny-not-supported",
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
                Severity.ERROR,
                "throttle-not-supported",
                f"{resource} cannot be throttled",
                help_text,
                "EOPNOTSUPP",
            )
        )
        return
    if parsed.per is SubjectType.PROCESS and resource.sloppy:
        field_index = PER if syntax.fields[PER] else SUBJECT
        problems.append(
            Problem(
                field_index,
                Severity.ERROR,
                "per-process-not-supported",
                f"{resource} cannot be accounted per process",
                f"{resource} belongs to users and jails, not to processes: use "
                "/user or /jail, or a user or jail subject",
                "EOPNOTSUPP",
            )
        )


def _first_missing(parsed: _KernelFields) -> int | None:
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


def _missing(field_index: int, what: str) -> Problem:
    examples = {
        SUBJECT: "start with process, user, loginclass or jail",
        SUBJECT_ID: "give the pid, user, login class or jail name after the subject",
        RESOURCE: "name a resource, e.g. memoryuse, maxproc, pcpu",
        ACTION: "name an action: deny, log, devctl, throttle or a signal (sigterm...)",
        AMOUNT: "give an amount after '=', e.g. deny=512m",
    }
    return Problem(
        field_index,
        Severity.ERROR,
        "missing-field",
        f"missing {what}",
        examples[field_index],
        "EINVAL",
    )


_ERROR = Severity.ERROR


def _byte_length_over(text: str, limit: int) -> bool:
    """len(text.encode()) > limit, without encoding the common short text (UTF-8 needs at
    most 4 bytes a character)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def _has_error(problems: list[Problem]) -> bool:
    for problem in problems:  # noqa: SIM110 (a plain loop: this runs for every rule)
        if problem.severity is _ERROR:
            return True
    return False


# --- public entry points --------------------------------------------------------------------


def check_rule(
    syntax: RuleSyntax,
    layer: Layer = Layer.RCTL8,
    resolver: Resolver = OFFLINE,
    *,
    resolve_users: bool = True,
    notes: bool = True,
) -> RuleCheck:
    """Validate a rule for adding (rctl -a / rctl_add_rule).

    `resolve_users=False` is `rctl -n -a` (names sent as typed). `notes=False` skips the
    advisory warnings and notes (the simulator wants only FreeBSD's verdict).
    """
    if layer is Layer.RCTL8:
        rewrite = _rctl8_rewrite(syntax, resolver, resolve_users)
    else:
        rewrite = _Rewrite(list(syntax.fields), [], set())
    problems = rewrite.problems
    bad = rewrite.bad_fields
    if SUBJECT_ID in bad and not syntax.has_colon:
        return RuleCheck(syntax, None, tuple(problems), tuple(rewrite.fields))
    values = rewrite.fields
    if _byte_length_over(syntax.text, RULE_TEXT_MAX):
        problems.append(
            Problem(
                None,
                Severity.ERROR,
                "rule-too-long",
                f"rule is {len(syntax.text.encode())} bytes long",
                f"the kernel takes at most {RULE_TEXT_MAX} bytes",
                "E2BIG",
            )
        )
        return RuleCheck(syntax, None, tuple(problems), tuple(values))
    parsed = _kernel_parse(values, syntax, resolver, problems, bad, rewrite.user_name)
    if parsed.per is None and parsed.subject is not None:
        parsed.per = parsed.subject
    if not problems or not _has_error(problems):
        missing = _first_missing(parsed)
        if missing is not None:
            problems.append(_missing(missing, FIELD_NAMES[missing]))
    rule = None
    if not problems or not _has_error(problems):
        _add_checks(parsed, problems, syntax)
    if not problems or not _has_error(problems):
        assert parsed.subject and parsed.subject_id is not None and parsed.resource
        assert parsed.action and parsed.amount is not None and parsed.per
        rule = Rule(
            parsed.subject,
            parsed.subject_id,
            parsed.resource,
            parsed.action,
            parsed.amount,
            parsed.per,
        )
        if notes:
            problems.extend(_advice(syntax, rule, rewrite, layer, resolver))
    return RuleCheck(syntax, rule, tuple(problems), tuple(values))


def check_filter(
    syntax: RuleSyntax,
    layer: Layer = Layer.RCTL8,
    resolver: Resolver = OFFLINE,
) -> FilterCheck:
    """Validate a filter (rctl, rctl -r/-u/-l operands; rctl_get_rules & co. input)."""
    if layer is Layer.RCTL8:
        rewrite = _rctl8_rewrite(syntax, resolver, True)
    else:
        rewrite = _Rewrite(list(syntax.fields), [], set())
    problems = rewrite.problems
    if SUBJECT_ID in rewrite.bad_fields and not syntax.has_colon:
        return FilterCheck(syntax, None, tuple(problems), tuple(rewrite.fields))
    if _byte_length_over(syntax.text, RULE_TEXT_MAX):
        problems.append(
            Problem(
                None,
                Severity.ERROR,
                "rule-too-long",
                f"filter is {len(syntax.text.encode())} bytes long",
                f"the kernel takes at most {RULE_TEXT_MAX} bytes",
                "E2BIG",
            )
        )
        return FilterCheck(syntax, None, tuple(problems), tuple(rewrite.fields))
    parsed = _kernel_parse(
        rewrite.fields, syntax, resolver, problems, rewrite.bad_fields, rewrite.user_name
    )
    if _has_error(problems):
        return FilterCheck(syntax, None, tuple(problems), tuple(rewrite.fields))
    amount = parsed.amount
    if amount is not None and parsed.resource is not None and parsed.resource.in_millions:
        pass  # Filter keeps user units; Filter.matches scales like the kernel does
    result = Filter(
        parsed.subject, parsed.subject_id, parsed.resource, parsed.action, amount, parsed.per
    )
    return FilterCheck(syntax, result, tuple(problems), tuple(rewrite.fields))


def sent_text(syntax: RuleSyntax, check: RuleCheck | FilterCheck) -> str | None:
    """The exact string rctl(8) passes to the kernel for this operand (None: rctl(8) refused)."""
    if any(p.errno == "RCTL8" for p in check.problems):
        return None
    fields = check.sent_fields or syntax.fields
    text = syntax.text
    second_colon = text.find(":", text.find(":") + 1)
    rest = text[second_colon + 1 :] if second_colon >= 0 else ""
    head = f"{fields[SUBJECT] or ''}:{fields[SUBJECT_ID] or ''}:"
    if not syntax.fields[AMOUNT]:
        return head + rest
    sent = f"{head}{syntax.fields[RESOURCE] or ''}:{syntax.fields[ACTION] or ''}={fields[AMOUNT]}"
    if syntax.per_present:
        sent += "/" + (syntax.fields[PER] or "")
    return sent


# --- advice: valid rules that surprise, and things FreeBSD versions disagree on ------------


def _advice(
    syntax: RuleSyntax, rule: Rule, rewrite: _Rewrite, layer: Layer, resolver: Resolver
) -> list[Problem]:
    notes: list[Problem] = []
    amount = rewrite.amount
    if amount is not None:
        if amount.base == 8 and amount.value != 0:
            octal = syntax.fields[AMOUNT] or ""
            notes.append(
                Problem(
                    AMOUNT,
                    Severity.WARNING,
                    "octal-amount",
                    f"'{octal.strip()}' is octal: rctl(8) reads a leading 0 as "
                    f"base 8, so this is {rule.amount}",
                    f"drop the leading zero if you meant {octal.strip().lstrip('+-0') or '0'}",
                )
            )
        elif amount.base == 16:
            notes.append(
                Problem(
                    AMOUNT,
                    Severity.WARNING,
                    "hex-amount",
                    f"hexadecimal amount: this is {rule.amount}",
                    f"write {rule.amount} so readers and other tools agree",
                )
            )
        if amount.suffix and rule.resource.info.unit not in (Unit.BYTES, Unit.BYTES_PER_SECOND):
            notes.append(
                Problem(
                    AMOUNT,
                    Severity.INFO,
                    "binary-suffix",
                    f"suffixes are powers of 1024 for every resource: "
                    f"{syntax.fields[AMOUNT]} is {rule.amount} "
                    f"{rule.resource.info.unit}",
                    None,
                )
            )
    if rewrite.uid_note:
        notes.append(
            Problem(
                SUBJECT_ID,
                Severity.WARNING,
                "numeric-id-format",
                rewrite.uid_note,
                f"write {rule.subject_id}",
            )
        )
    if rule.subject is SubjectType.JAIL and rule.subject_id.isdigit():
        notes.append(
            Problem(
                SUBJECT_ID,
                Severity.WARNING,
                "jail-id-not-jid",
                f"jail subjects are names: jail:{rule.subject_id} means the jail "
                f"named '{rule.subject_id}', not the jail with jid "
                f"{rule.subject_id}",
                "use the jail's name (jls name); only unnamed jails are named "
                "after their jid"
                + ("; jail:0 is the host and every jail in it" if rule.subject_id == "0" else ""),
            )
        )
    if rule.action is Action.DENY and rule.resource is Resource.MEMORYUSE:
        notes.append(
            Problem(
                ACTION,
                Severity.INFO,
                "memoryuse-deny-pages-out",
                "memoryuse:deny does not refuse memory: the VM pages the "
                "processes' memory out once they are over the limit",
                "use vmemoryuse:deny to make allocations fail, or swapuse to "
                "bound what is paged out",
            )
        )
    if rule.action is Action.DENY and rule.resource is Resource.PCPU:
        notes.append(
            Problem(
                ACTION,
                Severity.INFO,
                "pcpu-deny-throttles",
                "pcpu:deny throttles: processes over the limit are put to sleep, "
                "nothing is refused",
                None,
            )
        )
    if rule.subject is SubjectType.PROCESS:
        notes.append(
            Problem(
                SUBJECT,
                Severity.INFO,
                "process-rule-transient",
                f"process rules die with process {rule.subject_id} (and are "
                "copied to its children); they cannot be kept in a policy across "
                "reboots",
                "limit the user, login class or jail instead",
            )
        )
    if rule.subject is SubjectType.JAIL and resolver.jail_exists(rule.subject_id) is False:
        notes.append(
            Problem(
                SUBJECT_ID,
                Severity.WARNING,
                "unknown-jail",
                f"no jail named '{rule.subject_id}' is running on this host",
                "the kernel keeps the rule and applies it when a jail of that name starts; "
                "check the name with jls name",
            )
        )
    if rule.subject is SubjectType.LOGINCLASS and (
        resolver.loginclass_exists(rule.subject_id) is False
    ):
        notes.append(
            Problem(
                SUBJECT_ID,
                Severity.WARNING,
                "unknown-loginclass",
                f"login.conf has no class '{rule.subject_id}'",
                "the kernel accepts any class name; no login gets this one until "
                "login.conf(5) defines it (and cap_mkdb is run)",
            )
        )
    return notes


# --- reading back what the kernel printed -----------------------------------------------------

_CANONICAL = re.compile(
    r"(process|user|loginclass|jail):([^:]+):([a-z]+):([a-z0-9]+)="
    r"(0|[1-9][0-9]{0,18})(?:/(process|user|loginclass|jail))?\Z"
)
_CANONICAL_NUMBER = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")


def parse_canonical(text: str) -> Rule | None:
    """A rule in the exact form the kernel prints it (rctl_rule_to_sbuf), read without the
    grammar: listing 10,000 rules is then cheap. None for anything not in that form (the
    caller then parses it like any rule); never a Rule the kernel would not hold.
    """
    match = _CANONICAL.match(text)
    if match is None:
        return None
    subject_name, subject_id, resource_name, action_name, amount_text, per_name = match.groups()
    subject = _SUBJECTS[subject_name]
    resource = _RESOURCES.get(resource_name)
    action = _ACTIONS.get(action_name)
    if resource is None or action is None:
        return None
    amount = int(amount_text)
    if amount > INT64_MAX or (resource.in_millions and amount > IN_MILLIONS_MAX):
        return None
    if subject is SubjectType.PROCESS or subject is SubjectType.USER:
        # Negative uids (>= 2^31) and anything not printed by %d take the long way.
        if not _CANONICAL_NUMBER.match(subject_id) or int(subject_id) >= 2**31:
            return None
    elif _byte_length_over(
        subject_id, LOGINCLASS_NAME_MAX if subject is SubjectType.LOGINCLASS else JAIL_NAME_MAX
    ):
        return None
    per = _SUBJECTS[per_name] if per_name else subject
    if per_name and per is subject:
        return None  # the kernel never prints /per equal to the subject
    if action is Action.DENY and not resource.deny_allowed:
        return None
    if action is Action.THROTTLE and not resource.throttle_allowed:
        return None
    if per is SubjectType.PROCESS and resource.sloppy:
        return None
    return Rule(subject, subject_id, resource, action, amount, per)
