"""The RCTL vocabulary as FreeBSD defines it: subjects, resources, actions, rules and filters.

Pure data, no I/O: enums, and immutable records (NamedTuples: as frozen as dataclasses, and
far cheaper to define at start-up and to build, 20,000 times for a big policy). The tables
follow sys/kern/kern_rctl.c and sys/kern/kern_racct.c (docs/fidelity.md says where each fact
comes from; tests/data holds the conformance cases).
"""

from __future__ import annotations

from enum import Enum, Flag, StrEnum, auto

from rctlpolicy.amounts import INT64_MAX
from rctlpolicy.records import NamedTuple

# --- FreeBSD's fixed sizes and names (each defined here once) ---------------------------------

#: prison0's racct name: the host itself, parent of every jail, and the `jail=` of a host event.
HOST_JAIL = "0"
#: sys/sys/proc.h PID_MAX: FreeBSD never hands out a larger pid (kern.pid_max is at most this).
PID_MAX = 99999
#: uid_t is an unsigned 32-bit integer.
UID_MAX = 2**32 - 1
#: sys/sys/param.h MAXCOMLEN: p_comm keeps at most this many bytes of a command's name.
MAXCOMLEN = 19
#: MAXLOGNAME - 1: the longest login class name (the NUL takes the last byte).
LOGINCLASS_NAME_MAX = 32
#: MAXHOSTNAMELEN - 1: the longest jail name, in bytes (kern_jail.c checks only the length).
JAIL_NAME_MAX = 255
#: sys/sys/jail.h JAIL_MAX: kern_jail.c's kern_jail_set() hands out jids from 1 and wraps back
#: to 1 on reaching it, and prison0 allows this many children (pr_childmax).
JID_MAX = 999999


class SubjectType(StrEnum):
    """A rule's subject (and the values of its `per` field); kernel ids in `kernel_id`."""

    PROCESS = "process"
    USER = "user"
    LOGINCLASS = "loginclass"
    JAIL = "jail"

    @property
    def kernel_id(self) -> int:
        return _SUBJECT_IDS[self]


_SUBJECT_IDS = {
    SubjectType.PROCESS: 0,
    SubjectType.USER: 1,
    SubjectType.LOGINCLASS: 3,
    SubjectType.JAIL: 4,
}

#: rctl(8)'s subject aliases (usr.bin/rctl/rctl.c:expand_rule), matched case-insensitively on
#: the subject field only. `g` expands to `group`, which the kernel then refuses.
SUBJECT_ALIASES: dict[str, str] = {
    "u": "user",
    "p": "process",
    "l": "loginclass",
    "c": "loginclass",
    "class": "loginclass",
    "j": "jail",
    "g": "group",
}


class ResourceFlag(Flag):
    """Flags of kern_racct.c's racct_types[] table."""

    NONE = 0
    IN_MILLIONS = auto()  # stored x10^6 in the kernel, shown in seconds or percent
    RECLAIMABLE = auto()  # usage drops when freed
    INHERITABLE = auto()  # a child starts with its parent's usage
    DENIABLE = auto()  # a deny rule makes the allocation fail
    SLOPPY = auto()  # per-process accounting meaningless: no per=process rules
    DECAYING = auto()  # usage decays over time: the throttle-able kind


class Unit(StrEnum):
    """What a resource's amount counts, as a user sees it."""

    SECONDS = "seconds"
    BYTES = "bytes"
    COUNT = "count"
    PERCENT = "percent"
    BYTES_PER_SECOND = "bytes/s"
    OPS_PER_SECOND = "operations/s"


class ResourceInfo(NamedTuple):
    kernel_id: int
    unit: Unit
    flags: ResourceFlag
    description: str
    since: str


_R = ResourceFlag
_RESOURCE_TABLE: dict[str, ResourceInfo] = {
    "cputime": ResourceInfo(0, Unit.SECONDS, _R.IN_MILLIONS, "CPU time", "9.0"),
    "datasize": ResourceInfo(
        1, Unit.BYTES, _R.RECLAIMABLE | _R.INHERITABLE | _R.DENIABLE, "data size", "9.0"
    ),
    "stacksize": ResourceInfo(
        2, Unit.BYTES, _R.RECLAIMABLE | _R.INHERITABLE | _R.DENIABLE, "stack size", "9.0"
    ),
    "coredumpsize": ResourceInfo(3, Unit.BYTES, _R.DENIABLE, "core dump size", "9.0"),
    "memoryuse": ResourceInfo(4, Unit.BYTES, _R.RECLAIMABLE, "resident set size", "9.0"),
    "memorylocked": ResourceInfo(
        5, Unit.BYTES, _R.RECLAIMABLE | _R.DENIABLE, "locked memory", "9.0"
    ),
    "maxproc": ResourceInfo(
        6, Unit.COUNT, _R.RECLAIMABLE | _R.DENIABLE, "number of processes", "9.0"
    ),
    "openfiles": ResourceInfo(
        7,
        Unit.COUNT,
        _R.RECLAIMABLE | _R.INHERITABLE | _R.DENIABLE,
        "file descriptor table size",
        "9.0",
    ),
    "vmemoryuse": ResourceInfo(
        8, Unit.BYTES, _R.RECLAIMABLE | _R.INHERITABLE | _R.DENIABLE, "address space", "9.0"
    ),
    "pseudoterminals": ResourceInfo(
        9, Unit.COUNT, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "pseudo-terminals", "9.0"
    ),
    "swapuse": ResourceInfo(
        10, Unit.BYTES, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "swap space", "9.0"
    ),
    "nthr": ResourceInfo(11, Unit.COUNT, _R.RECLAIMABLE | _R.DENIABLE, "threads", "9.0"),
    "msgqqueued": ResourceInfo(
        12,
        Unit.COUNT,
        _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY,
        "queued SysV messages",
        "9.0",
    ),
    "msgqsize": ResourceInfo(
        13, Unit.BYTES, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "SysV message queue size", "9.0"
    ),
    "nmsgq": ResourceInfo(
        14, Unit.COUNT, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "SysV message queues", "9.0"
    ),
    "nsem": ResourceInfo(
        15, Unit.COUNT, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "SysV semaphores", "9.0"
    ),
    "nsemop": ResourceInfo(
        16,
        Unit.COUNT,
        _R.RECLAIMABLE | _R.INHERITABLE | _R.DENIABLE,
        "semaphores modified in one semop(2)",
        "9.0",
    ),
    "nshm": ResourceInfo(
        17,
        Unit.COUNT,
        _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY,
        "SysV shared memory segments",
        "9.0",
    ),
    "shmsize": ResourceInfo(
        18, Unit.BYTES, _R.RECLAIMABLE | _R.DENIABLE | _R.SLOPPY, "SysV shared memory size", "9.0"
    ),
    "wallclock": ResourceInfo(19, Unit.SECONDS, _R.IN_MILLIONS, "wall clock time", "9.0"),
    "pcpu": ResourceInfo(
        20, Unit.PERCENT, _R.DECAYING | _R.DENIABLE | _R.IN_MILLIONS, "%CPU of one core", "10.0"
    ),
    "readbps": ResourceInfo(21, Unit.BYTES_PER_SECOND, _R.DECAYING, "filesystem reads", "11.0"),
    "writebps": ResourceInfo(22, Unit.BYTES_PER_SECOND, _R.DECAYING, "filesystem writes", "11.0"),
    "readiops": ResourceInfo(
        23, Unit.OPS_PER_SECOND, _R.DECAYING, "filesystem read operations", "11.0"
    ),
    "writeiops": ResourceInfo(
        24, Unit.OPS_PER_SECOND, _R.DECAYING, "filesystem write operations", "11.0"
    ),
}


class Resource(StrEnum):
    """The 25 RACCT resources, in kernel id order."""

    CPUTIME = "cputime"
    DATASIZE = "datasize"
    STACKSIZE = "stacksize"
    COREDUMPSIZE = "coredumpsize"
    MEMORYUSE = "memoryuse"
    MEMORYLOCKED = "memorylocked"
    MAXPROC = "maxproc"
    OPENFILES = "openfiles"
    VMEMORYUSE = "vmemoryuse"
    PSEUDOTERMINALS = "pseudoterminals"
    SWAPUSE = "swapuse"
    NTHR = "nthr"
    MSGQQUEUED = "msgqqueued"
    MSGQSIZE = "msgqsize"
    NMSGQ = "nmsgq"
    NSEM = "nsem"
    NSEMOP = "nsemop"
    NSHM = "nshm"
    SHMSIZE = "shmsize"
    WALLCLOCK = "wallclock"
    PCPU = "pcpu"
    READBPS = "readbps"
    WRITEBPS = "writebps"
    READIOPS = "readiops"
    WRITEIOPS = "writeiops"

    # Properties read precomputed sets: enum `.value` goes through a descriptor, and these are
    # asked for every rule lint checks.
    @property
    def info(self) -> ResourceInfo:
        return _RESOURCE_TABLE[self]

    @property
    def in_millions(self) -> bool:
        return self in _IN_MILLIONS

    @property
    def sloppy(self) -> bool:
        return self in _SLOPPY

    @property
    def deny_allowed(self) -> bool:
        """kern_rctl.c:rctl_rule_add: DENIABLE, plus memoryuse and pcpu as special cases."""
        return self in _DENY_ALLOWED

    @property
    def throttle_allowed(self) -> bool:
        """Only the decaying resources, and not pcpu: the four I/O rates."""
        return self in _THROTTLE_ALLOWED


_IN_MILLIONS = frozenset(
    Resource(n) for n, i in _RESOURCE_TABLE.items() if ResourceFlag.IN_MILLIONS in i.flags
)
_SLOPPY = frozenset(
    Resource(n) for n, i in _RESOURCE_TABLE.items() if ResourceFlag.SLOPPY in i.flags
)
_DENY_ALLOWED = frozenset(
    Resource(n) for n, i in _RESOURCE_TABLE.items() if ResourceFlag.DENIABLE in i.flags
) | {Resource.MEMORYUSE}
_THROTTLE_ALLOWED = frozenset(
    Resource(n) for n, i in _RESOURCE_TABLE.items() if ResourceFlag.DECAYING in i.flags
) - {Resource.PCPU}

#: Amounts above this are refused (ERANGE) for in-millions resources: INT64_MAX / 10^6.
IN_MILLIONS_MAX = INT64_MAX // 1_000_000

#: Usage output of `rctl -u` for a process subject omits the sloppy resources.
PROCESS_USAGE_RESOURCES = tuple(r for r in Resource if not r.sloppy)


class Action(StrEnum):
    """Actions of kern_rctl.c's actionnames[]; a signal action's value is its signal number."""

    SIGHUP = "sighup"
    SIGINT = "sigint"
    SIGQUIT = "sigquit"
    SIGILL = "sigill"
    SIGTRAP = "sigtrap"
    SIGABRT = "sigabrt"
    SIGEMT = "sigemt"
    SIGFPE = "sigfpe"
    SIGKILL = "sigkill"
    SIGBUS = "sigbus"
    SIGSEGV = "sigsegv"
    SIGSYS = "sigsys"
    SIGPIPE = "sigpipe"
    SIGALRM = "sigalrm"
    SIGTERM = "sigterm"
    SIGURG = "sigurg"
    SIGSTOP = "sigstop"
    SIGTSTP = "sigtstp"
    SIGCHLD = "sigchld"
    SIGTTIN = "sigttin"
    SIGTTOU = "sigttou"
    SIGIO = "sigio"
    SIGXCPU = "sigxcpu"
    SIGXFSZ = "sigxfsz"
    SIGVTALRM = "sigvtalrm"
    SIGPROF = "sigprof"
    SIGWINCH = "sigwinch"
    SIGINFO = "siginfo"
    SIGUSR1 = "sigusr1"
    SIGUSR2 = "sigusr2"
    SIGTHR = "sigthr"
    DENY = "deny"
    LOG = "log"
    DEVCTL = "devctl"
    THROTTLE = "throttle"

    @property
    def kernel_id(self) -> int:
        return _ACTION_IDS[self]

    @property
    def is_signal(self) -> bool:
        return _ACTION_IDS[self] <= SIGNAL_MAX

    @property
    def signal_number(self) -> int | None:
        """FreeBSD's signal number for a signal action, None otherwise."""
        return _ACTION_IDS[self] if self.is_signal else None


#: FreeBSD signal numbers of the 31 signal actions (19, SIGCONT, is absent in the kernel table).
SIGNAL_NUMBERS: dict[str, int] = {
    "sighup": 1, "sigint": 2, "sigquit": 3, "sigill": 4, "sigtrap": 5, "sigabrt": 6,
    "sigemt": 7, "sigfpe": 8, "sigkill": 9, "sigbus": 10, "sigsegv": 11, "sigsys": 12,
    "sigpipe": 13, "sigalrm": 14, "sigterm": 15, "sigurg": 16, "sigstop": 17, "sigtstp": 18,
    "sigchld": 20, "sigttin": 21, "sigttou": 22, "sigio": 23, "sigxcpu": 24, "sigxfsz": 25,
    "sigvtalrm": 26, "sigprof": 27, "sigwinch": 28, "siginfo": 29, "sigusr1": 30,
    "sigusr2": 31, "sigthr": 32,
}  # fmt: skip
SIGNAL_MAX = 32
_ACTION_IDS: dict[Action, int] = {Action(name): number for name, number in SIGNAL_NUMBERS.items()}
_ACTION_IDS |= {Action.DENY: 33, Action.LOG: 34, Action.DEVCTL: 35, Action.THROTTLE: 36}


def format_subject_id(subject: SubjectType, subject_id: str) -> str:
    """The kernel's printing of an id: uids as signed 32-bit (`%d` of a uid_t)."""
    if subject is SubjectType.USER and subject_id.isdigit():
        uid = int(subject_id) & 0xFFFFFFFF
        return str(uid - 2**32 if uid >= 2**31 else uid)
    return subject_id


class Rule(NamedTuple):
    """A complete rule as the kernel holds it.

    `amount` is in user-visible units (seconds, percent, bytes, counts); `subject_id` is the
    kernel's printed id (a pid or uid in decimal, a loginclass or jail name), or a user name
    that was not resolved to a uid.
    """

    subject: SubjectType
    subject_id: str
    resource: Resource
    action: Action
    amount: int
    per: SubjectType

    @property
    def canonical(self) -> str:
        """The exact text FreeBSD reports when listing this rule with numeric ids."""
        text = f"{self.subject}:{self.subject_id}:{self.resource}:{self.action}={self.amount}"
        if self.per is not self.subject:
            text += f"/{self.per}"
        return text

    @property
    def internal_amount(self) -> int:
        """The amount as kern_rctl.c stores it (x10^6 for in-millions resources)."""
        return self.amount * 1_000_000 if self.resource.in_millions else self.amount

    def as_filter(self) -> Filter:
        return Filter(
            self.subject, self.subject_id, self.resource, self.action, self.amount, self.per
        )

    def __str__(self) -> str:
        return self.canonical


class Filter(NamedTuple):
    """A partial rule (rctl -r/-l/-u and listing): None is a wildcard.

    `amount` is in user-visible units when `resource` is set; without a resource the kernel
    compares the raw number (it cannot know the scale).
    """

    subject: SubjectType | None = None
    subject_id: str | None = None
    resource: Resource | None = None
    action: Action | None = None
    amount: int | None = None
    per: SubjectType | None = None

    def matches(self, rule: Rule) -> bool:
        """kern_rctl.c:rctl_rule_matches: every defined field must be equal."""
        if self.subject is not None and self.subject is not rule.subject:
            return False
        if self.subject_id is not None and self.subject_id != rule.subject_id:
            return False
        if self.resource is not None and self.resource is not rule.resource:
            return False
        if self.action is not None and self.action is not rule.action:
            return False
        if self.amount is not None:
            # With a resource the kernel scales the filter's amount like the rule's, so user
            # units compare equal; without one it compares the raw number with the stored one.
            got = rule.amount if self.resource is not None else rule.internal_amount
            if self.amount != got:
                return False
        return self.per is None or self.per is rule.per

    @property
    def text(self) -> str:
        """The filter as the kernel would be given it (empty fields are wildcards)."""
        parts = [
            str(self.subject or ""),
            self.subject_id or "",
            str(self.resource or ""),
        ]
        tail = str(self.action or "")
        if self.amount is not None or self.per is not None:
            tail += "=" + ("" if self.amount is None else str(self.amount))
        if self.per is not None:
            tail += f"/{self.per}"
        text = ":".join(parts)
        if tail:
            text += ":" + tail
        return text

    def __str__(self) -> str:
        return self.text


EVERYTHING = Filter()


class Severity(Enum):
    """Diagnostic severities, ordered from most to least serious."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    # Members are singletons compared by identity: hashing by identity is as correct as
    # Enum's hash of the name, and a C call instead of a Python one (a big policy's
    # diagnostics are put in a set and sorted by severity).
    __hash__ = object.__hash__

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
