"""The kernel boundary: what rctlpolicy needs from FreeBSD's RCTL, as one Protocol.

Two implementations: `freebsd.FreeBSDKernel` (the rctl_*(2) system calls through an injected
libc, rctl(8) as fallback) and the same class over the simulated host's system calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from rctlpolicy.model import Filter, Resource, Rule

#: FreeBSD's errno numbers (sys/sys/errno.h) for the errors the rctl calls return.
FREEBSD_ERRNO: dict[str, int] = {
    "EPERM": 1,
    "ESRCH": 3,
    "E2BIG": 7,
    "EFAULT": 14,
    "EINVAL": 22,
    "ERANGE": 34,
    "EOPNOTSUPP": 45,
    "ENAMETOOLONG": 63,
    "ENOSYS": 78,
}
FREEBSD_ERRNO_NAMES = {number: name for name, number in FREEBSD_ERRNO.items()}

#: strerror(3) texts as FreeBSD prints them.
STRERROR: dict[str, str] = {
    "EPERM": "Operation not permitted",
    "ESRCH": "No such process",
    "E2BIG": "Argument list too long",
    "EFAULT": "Bad address",
    "EINVAL": "Invalid argument",
    "ERANGE": "Result too large",
    "EOPNOTSUPP": "Operation not supported",
    "ENAMETOOLONG": "File name too long",
    "ENOSYS": "Function not implemented",
}


class RctlCall(StrEnum):
    """The five system calls (numbers 525..529)."""

    GET_RACCT = "rctl_get_racct"
    GET_RULES = "rctl_get_rules"
    GET_LIMITS = "rctl_get_limits"
    ADD_RULE = "rctl_add_rule"
    REMOVE_RULE = "rctl_remove_rule"


class SyscallError(Exception):
    """A failed rctl_*(2) call: the errno's name (EINVAL, ERANGE, ...)."""

    def __init__(self, errno_name: str) -> None:
        super().__init__(f"{errno_name}: {STRERROR.get(errno_name, errno_name)}")
        self.errno_name = errno_name


class RctlSyscalls(Protocol):
    """The system-call layer: `inbuf` is the bytes passed with `len(inbuf)` as inbuflen
    (rctl(8) passes strlen + 1, i.e. the NUL included); returns the output buffer's
    contents up to and excluding its NUL; raises SyscallError."""

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes: ...


class KernelError(Exception):
    """The kernel refused an operation. Carries the errno name and the rule or filter text."""

    def __init__(self, errno_name: str, text: str, message: str | None = None) -> None:
        self.errno_name = errno_name
        self.text = text
        self.reason = message or STRERROR.get(errno_name, errno_name)
        super().__init__(f"{text}: {self.reason}")


class RacctDisabledError(KernelError):
    """RACCT/RCTL is missing or switched off; the message says how to enable it."""


@dataclass(frozen=True, slots=True)
class Jail:
    jid: int
    name: str


@dataclass(frozen=True, slots=True)
class RacctStatus:
    enabled: bool
    #: Why not, in words an administrator can act on (None when enabled).
    reason: str | None = None


class JailLister(Protocol):
    """Lists the running jails (not the host)."""

    def __call__(self) -> Sequence[Jail]: ...


class RacctProbe(Protocol):
    """kern.racct.enable: True/False, or None when the oid is missing (no RACCT in the kernel)."""

    def __call__(self) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class RuleStoreStatus:
    """Whether the kernel still holds what was put into it.

    A real kernel keeps its rules until it reboots (and the daemon starts again with it). The
    simulated kernel keeps them in a state file, which can be removed or damaged while a
    daemon runs: `generation` changes whenever the rules were lost that way (None while there
    is no state at all), and `damage` says what was wrong with the file the current generation
    was rebuilt from (None after a plain removal, or when nothing was ever lost).
    """

    generation: str | None
    damage: str | None = None


class RuleStoreWatch(Protocol):
    """Where a daemon asks whether the kernel lost its rules since it last applied them."""

    def rule_store_status(self) -> RuleStoreStatus: ...


class Kernel(Protocol):
    """Everything rctlpolicy does to FreeBSD's resource limits goes through this."""

    def add_rule(self, rule: Rule) -> None:
        """rctl -a. Raises KernelError."""
        ...

    def remove_rules(self, rule_filter: Filter) -> None:
        """rctl -r. Raises KernelError (ESRCH when nothing matched)."""
        ...

    def rules(self, rule_filter: Filter = ...) -> list[Rule]:
        """rctl -n [filter]: the rules in force, parsed from the kernel's canonical text."""
        ...

    def usage(self, rule_filter: Filter) -> dict[Resource, int]:
        """rctl -u: subject and subject id must be set. Values in user units."""
        ...

    def limits(self, pid: int) -> list[Rule]:
        """rctl -l process:<pid>."""
        ...

    def jails(self) -> Sequence[Jail]:
        """The running jails (not the host)."""
        ...

    def racct_status(self) -> RacctStatus: ...


def batched(kernel: object) -> contextlib.AbstractContextManager[None]:
    """Calls that belong together (one scrape's, one sampling round's) as one batch, where the
    kernel offers one (`FreeBSDKernel.batch`: the simulator then reads its host file once for
    all of them); a kernel without `batch` answers each call on its own."""
    batch = getattr(kernel, "batch", None)
    if batch is None:
        return contextlib.nullcontext()
    context: contextlib.AbstractContextManager[None] = batch()
    return context
