"""One firing of a devctl rule, as an action is given it: the rule, the pid, the uid, the jail.

An event's fields come from the kernel's devctl message (kern_rctl.c, rctl_enforce), cut at
127 bytes and passed through devd: `ActionContext` checks each of them on construction, so a
context that exists is one whose values can be put into an argv or a log line. A value that
cannot is an `ActionInputError`, and the action is not run.

Apart from `rctlpolicy.onmatch` (what a rule does) because it is about the event, not the
policy: the daemon and `rctlpolicy handle` build contexts (`rctlpolicy.eventmatch`), the
action engine runs them. Pure: no I/O, no clock, no process state.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from rctlpolicy.model import JAIL_NAME_MAX, PID_MAX, UID_MAX, Rule, SubjectType

_DECIMAL = re.compile(r"-?[0-9]{1,20}")  # ASCII only: str.isdigit() also accepts "١٢" and "²"


class ActionError(Exception):
    """Base of the errors of actions."""


class ActionInputError(ActionError):
    """A value from an event cannot be used: the action is not run."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {field} {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


def _control_character(text: str) -> str | None:
    """The first control character in `text` (C0, DEL, C1; NUL and newline included), if any."""
    for char in text:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def check_jail_name(name: str, field_name: str = "jail") -> str:
    """Return `name` if it can be a jail name, else raise ActionInputError.

    The kernel (kern_jail.c, kern_jail_set) only requires a NUL-terminated string of at most 255
    bytes. We are stricter, because the name ends up in argv and logs: no control characters
    (newlines would forge log lines) and no leading '-' (it could be read as an option by
    service(8), jexec(8) or any program given `{jail}`). "0" is the host.
    """
    if not isinstance(name, str):
        raise ActionInputError(field_name, name, "must be a string")
    if name == "":
        raise ActionInputError(field_name, name, "a jail name cannot be empty")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > JAIL_NAME_MAX:
        raise ActionInputError(
            field_name, name, f"{size} bytes; a jail name has at most {JAIL_NAME_MAX}"
        )
    bad = _control_character(name)
    if bad is not None:
        raise ActionInputError(
            field_name, name, f"contains the control character {bad!r}, which no jail name needs"
        )
    if name.startswith("-"):
        raise ActionInputError(field_name, name, "starts with '-' and could be taken for an option")
    return name


def _parse_number(field_name: str, value: str | int, *, signed_uid: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ActionInputError(field_name, value, "must be a decimal number")
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value) is None:
            raise ActionInputError(field_name, value, "must be a decimal number")
        number = int(value)
    else:
        number = value
    if signed_uid and -(2**31) <= number < 0:
        # The kernel prints cr_ruid with %d (kern_rctl.c, rctl_enforce), so a uid of 2^31 or
        # more arrives negative; map it back to the uid it is, which also keeps a '-' out of argv.
        number += 2**32
    return number


@dataclass(frozen=True, slots=True)
class ActionContext:
    """One firing of a rule: the rule, and who crossed it.

    `jail` is the jail the action is about (`{jail}`, `service -j`, the cooldown key): the
    rule's own jail for a jail rule, the event's jail for user, login class and process rules
    (see `rctlpolicy.eventmatch`). Valid by construction: pid and ruid are None or in range,
    and the jail is a name that `check_jail_name` accepts ("0" for the host).
    """

    rule: Rule
    pid: int | None
    ruid: int | None
    jail: str

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise ActionInputError("rule", self.rule, "must be a parsed Rule")
        bad = _control_character(self.rule.subject_id)
        if bad is not None:
            raise ActionInputError(
                "rule subject id", self.rule.subject_id, f"contains the control character {bad!r}"
            )
        if self.rule.subject is SubjectType.JAIL:
            check_jail_name(self.rule.subject_id, "rule jail")
        for name, value, maximum in (("pid", self.pid, PID_MAX), ("ruid", self.ruid, UID_MAX)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ActionInputError(name, value, "must be an integer")
            if not 0 <= value <= maximum:
                raise ActionInputError(name, value, f"out of range 0..{maximum}")
        check_jail_name(self.jail)

    @classmethod
    def from_event(
        cls, rule: Rule, pid: str | int | None, ruid: str | int | None, jail: str
    ) -> ActionContext:
        """Build a context from an event's raw fields; raise ActionInputError if one is unusable.

        pid and ruid are decimal text (or ints) or None when a truncated message lost them.
        A negative ruid is taken as the kernel's signed printing of a large uid.
        """
        pid_number = None if pid is None else _parse_number("pid", pid)
        ruid_number = None if ruid is None else _parse_number("ruid", ruid, signed_uid=True)
        return cls(rule, pid_number, ruid_number, jail)
