"""The vocabularies of a rule, and what to say when a word is not in them: "did you mean",
including the words people borrow from other systems (nproc, rss, prison...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rctlpolicy.codes import Code
from rctlpolicy.grammar import ACTION, PER, RESOURCE, SUBJECT
from rctlpolicy.model import SUBJECT_ALIASES, Action, Resource, SubjectType
from rctlpolicy.semantics.problems import Problem

SUBJECTS = {s.value: s for s in SubjectType}
RESOURCES = {r.value: r for r in Resource}
ACTIONS = {a.value: a for a in Action}

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
_BLANKS_HELP = "remove the blanks: the kernel does not trim fields"


def did_you_mean(word: str, choices: Sequence[str], borrowed: Mapping[str, str]) -> str | None:
    import difflib  # only a policy with errors needs it: lint starts without it

    lowered = word.lower()
    if lowered in borrowed:
        return f"did you mean '{borrowed[lowered]}'?"
    close = difflib.get_close_matches(lowered, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return None


def _list(words: Sequence[str]) -> str:
    return ", ".join(words)


def unknown_subject(text: str) -> Problem:
    lowered = text.lower()
    if lowered in ("group", "g", "gid"):
        message = f"unknown subject '{text}'"
        return Problem(SUBJECT, Code.UNKNOWN_SUBJECT, message, _GROUP_HELP, "EINVAL")
    if lowered in SUBJECTS or lowered in SUBJECT_ALIASES:
        suggestion: str | None = None
    else:
        suggestion = did_you_mean(text, [*SUBJECTS, *SUBJECT_ALIASES], _BORROWED_SUBJECTS)
    if text != text.strip():
        suggestion = _BLANKS_HELP
    return Problem(
        SUBJECT,
        Code.UNKNOWN_SUBJECT,
        f"unknown subject '{text}'",
        suggestion or f"subjects are {_list(list(SUBJECTS))}",
        "EINVAL",
    )


def unknown_resource(text: str) -> Problem:
    return _unknown_word(RESOURCE, text, RESOURCES, _BORROWED_RESOURCES)


def unknown_action(text: str) -> Problem:
    lowered = text.lower()
    message = f"unknown action '{text}'"
    if lowered in ("sigcont", "cont"):
        return Problem(ACTION, Code.UNKNOWN_ACTION, message, _SIGCONT_HELP, "EINVAL")
    number = lowered.removeprefix("sig")
    if number.isdigit():
        name = _SIGNALS_BY_NUMBER.get(int(number))
        hint = (
            f"signals are given by name: did you mean '{name}'?"
            if name
            else "signals are given by name, e.g. sigterm"
        )
        return Problem(ACTION, Code.UNKNOWN_ACTION, message, hint, "EINVAL")
    if "sig" + lowered in ACTIONS:
        hint = f"did you mean 'sig{lowered}'?"
        return Problem(ACTION, Code.UNKNOWN_ACTION, message, hint, "EINVAL")
    return _unknown_word(ACTION, text, ACTIONS, _BORROWED_ACTIONS)


def _unknown_word(
    field: int, text: str, table: Mapping[str, object], borrowed: Mapping[str, str]
) -> Problem:
    kind = "resource" if field == RESOURCE else "action"
    if text != text.strip() and text.strip().lower() in table:
        suggestion: str | None = _BLANKS_HELP
    elif ":" in text and field == ACTION:
        suggestion = "a rule has exactly four ':'-separated parts before '='"
    else:
        suggestion = did_you_mean(text, list(table), borrowed)
    return Problem(
        field,
        Code.UNKNOWN_RESOURCE if field == RESOURCE else Code.UNKNOWN_ACTION,
        f"unknown {kind} '{text}'",
        suggestion or f"{kind}s are: {_list(list(table))}",
        "EINVAL",
    )


def unknown_per(text: str, subject_id: str | None) -> Problem:
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
        suggestion = did_you_mean(text, list(SUBJECTS), _BORROWED_SUBJECTS)
    return Problem(
        PER,
        Code.UNKNOWN_PER,
        f"unknown per '{text}'",
        suggestion or "per is one of process, user, loginclass, jail",
        "EINVAL",
    )
