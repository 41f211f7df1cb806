"""A simulated FreeBSD kernel: the five rctl_*(2) system calls, byte for byte.

`SimulatedSyscalls.call` takes what a program would pass to the system calls (the input bytes,
whose length is `inbuflen`, and `outbuflen`) and answers what FreeBSD answers: the output text,
or `SyscallError` with the errno FreeBSD returns, in the order FreeBSD checks (spec rctl.md
section 8, `sys/kern/kern_rctl.c`). It is the `RctlSyscalls` layer `FreeBSDKernel` runs over
off FreeBSD, as it runs over libc's on FreeBSD. Rule text is parsed by `rctlpolicy.grammar` and
checked by `rctlpolicy.semantics` at the kernel layer, which gives the kernel's errno for every
refusal.

The host (users, processes, jails, usage) comes from a host file (`rctlpolicy.kernel.hostfile`),
read again when it changes; the rules live in a state file beside it
(`rctlpolicy.kernel.simstate`), so several processes share one simulated kernel.

Which processes a rule is linked to follows kern_rctl.c:
* `rctl_rule_add` links a new rule to every process it applies to at that moment: a user rule
  to processes whose real or effective uid matches, a jail rule to the processes of that jail
  and of all its child jails (it walks each process's `pr_parent` chain);
* `rctl_proc_ucred_changed` relinks a process whose credentials change (jail_attach, setuid,
  setloginclass) to its own process rules and the rules of its real uid, its login class and
  its own prison only: not its parent jails', not its effective uid's.
The simulator knows when each jail and each `attached: true` process first appeared (the state
file records it): a rule added before a jail appeared reaches that jail's processes only if it
would on attach (the jail's first process was attached to it, the rest forked from it), and the
same for a process attached to its jail later. Processes that were there first are linked the
add-time way.

The simulation also plays the kernel's log/devctl side: `events_due` decides, from the host's
usage, which `log` and `devctl` rules fire now (once per exceeded episode, rate-limited like
ppsratecheck(9)), and `SimulatedSyscalls.evaluate_events` does that against the shared state.
A rule compares the usage of each linked process's own container for its `per`
(`rctl_proc_rule_to_racct`): for `per=jail` the process's own jail, whose usage includes its
child jails', and the event names that jail.

Where the simulation is simpler than FreeBSD:
* a process's parent is unknown: one that appears in a jail was forked there (it inherits
  what the jail's processes were linked to) unless it says `attached: true`; process rules do
  not propagate to children, and those of a pid that left the host file are gone (the process
  exited);
* a jail or process that leaves the host file and comes back before the next change to the
  rules is taken for the same one;
* newer processes are those with larger pids (the listing walks newest first);
* input bytes must be UTF-8 (anything else is EINVAL; FreeBSD would take any bytes);
* EFAULT cannot happen (no user addresses), and `privileged: false` in the host file stands for
  both non-root callers and root inside a jail (EPERM);
* an event is one per rule and episode (FreeBSD flags each process's link, so with several
  processes over the limit it may report once per process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rctlpolicy.grammar import parse_rule_syntax
from rctlpolicy.kernel.base import Jail, RctlCall, RuleStoreStatus, SyscallError
from rctlpolicy.kernel.hostfile import HostFile, HostProcess, HostSpec, container_key
from rctlpolicy.kernel.ruletable import (
    Add,
    Change,
    Delete,
    Flags,
    RateWindow,
    RuleTable,
    Seen,
    StoredRule,
)
from rctlpolicy.kernel.simstate import StateStore
from rctlpolicy.model import (
    HOST_JAIL,
    PROCESS_USAGE_RESOURCES,
    Action,
    Filter,
    Resource,
    Rule,
    SubjectType,
    format_subject_id,
)
from rctlpolicy.semantics.check import FilterCheck, Layer, RuleCheck, check_filter, check_rule

#: RCTL_MAX_INBUFSIZE: the rule text and its NUL must fit.
MAX_INBUFSIZE = 4096
#: RCTL_LOG_BUFSIZE - 1: how much of a rule the log line keeps.
LOG_RULE_MAX = 127
#: The uid hash mask (`hashinit(maxproc / 16)`); 255 for the default maxproc of a small host.
#: Only the order in which user rules are listed depends on it.
UIHASH_MASK = 255
#: p_comm of pid 0, the kernel's own process: the "offender" when no host process is in a rule's
#: subject.
KERNEL_COMM = "kernel"
#: Parsed filters remembered while the host is unchanged (a scrape asks for every jail's usage).
FILTER_MEMO_SIZE = 4096

EventKind = Literal["devctl", "log"]


class SimulatedSyscalls:
    """The `RctlSyscalls` of a simulated host described by `host_path`.

    The rules persist in `state_path` (default: beside the host file, `<host>.state.json`).
    """

    def __init__(self, host_path: Path | str, state_path: Path | str | None = None) -> None:
        self.host_path = Path(host_path)
        self.host_file = HostFile(self.host_path)
        self.store = StateStore(
            Path(state_path) if state_path is not None else StateStore.path_beside(self.host_path)
        )
        self._listing: tuple[RuleTable, int, HostSpec, str, bytes] | None = None
        self._filters: tuple[HostSpec, dict[str, Filter]] | None = None
        self._observed: tuple[HostSpec, RuleTable] | None = None

    @property
    def state_path(self) -> Path:
        return self.store.path

    def host(self) -> HostSpec:
        """The host as its file says now (raises HostFileError)."""
        return self.host_file.load()

    def batch(self) -> AbstractContextManager[None]:
        """Calls of this thread inside are answered from one look at the host file (a
        scrape's hundreds of calls read it at most once): `HostFile.pinned`."""
        return self.host_file.pinned()

    def racct_enabled(self) -> bool:
        """kern.racct.enable."""
        return self.host().racct_enable

    def jails(self) -> list[Jail]:
        """The host's jails, by jid (as jls(8) lists them)."""
        return [
            Jail(jail.jid, jail.name) for jail in sorted(self.host().jails, key=lambda j: j.jid)
        ]

    def rule_store_status(self) -> RuleStoreStatus:
        """Whether the rules were lost (state file removed or damaged) since a generation."""
        return self.store.status()

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        """One rctl_*(2) call: `len(inbuf)` is inbuflen. Returns the output up to its NUL.

        Raises SyscallError with FreeBSD's errno, HostFileError for a broken host file.
        """
        if outbuflen < 0:
            raise ValueError(f"outbuflen is a size_t: {outbuflen}")
        host = self.host()
        if not host.racct_enable:
            raise SyscallError("ENOSYS")
        if not host.privileged:
            raise SyscallError("EPERM")
        text = read_inbuf(inbuf)
        handlers: dict[RctlCall, Callable[[HostSpec, str, int], bytes]] = {
            RctlCall.ADD_RULE: self._add_rule,
            RctlCall.REMOVE_RULE: self._remove_rule,
            RctlCall.GET_RULES: self._get_rules,
            RctlCall.GET_LIMITS: self._get_limits,
            RctlCall.GET_RACCT: self._get_racct,
        }
        return handlers[RctlCall(call)](host, text, outbuflen)

    # --- the five calls --------------------------------------------------------------------

    def _add_rule(self, host: HostSpec, text: str, outbuflen: int) -> bytes:
        check = check_rule(parse_rule_syntax(text), Layer.KERNEL, host, notes=False)
        if check.rule is None:
            raise SyscallError(_errno(check))
        rule = check.rule

        def add(table: RuleTable) -> tuple[list[Change], None]:
            changes = self._housekeeping(host, table)
            changes.append(Add(StoredRule(rule, table.next_seq)))
            return changes, None

        self.store.change(add)
        return b""

    def _remove_rule(self, host: HostSpec, text: str, outbuflen: int) -> bytes:
        rule_filter = self._parse_filter(host, text)

        def remove(table: RuleTable) -> tuple[list[Change], None]:
            gone = set(exited_process_rules(host, table))
            # A process filter searches only that process's rules: the same rules a match on
            # subject and pid selects, so one matching pass serves both kernel paths.
            matched = [seq for seq in table.matching(rule_filter) if seq not in gone]
            if not matched:
                raise SyscallError("ESRCH")
            changes = self._housekeeping(host, table)
            changes.append(Delete(tuple(matched)))
            return changes, None

        self.store.change(remove)
        return b""

    def _get_rules(self, host: HostSpec, text: str, outbuflen: int) -> bytes:
        rule_filter = self._parse_filter(host, text)
        if outbuflen > host.maxbufsize:
            raise SyscallError("E2BIG")
        table = self.store.read()
        # rctl(8) asks again with a bigger buffer after ERANGE: the same host, state and filter
        # give the same text, built once.
        last = self._listing
        if (
            last is not None
            and last[0] is table
            and last[1] == table.version
            and last[2] is host
            and last[3] == text
        ):
            output = last[4]
        else:
            rules = kernel_order(host, table)
            output = _joined([rule for rule in rules if rule_filter.matches(rule)])
            self._listing = (table, table.version, host, text, output)
        return _fitted(output, outbuflen)

    def _get_limits(self, host: HostSpec, text: str, outbuflen: int) -> bytes:
        rule_filter = self._parse_filter(host, text)
        if rule_filter.subject is None:
            raise SyscallError("EINVAL")
        if rule_filter.subject is not SubjectType.PROCESS:
            raise SyscallError("EOPNOTSUPP")
        if rule_filter.subject_id is None:
            raise SyscallError("EINVAL")
        if outbuflen > host.maxbufsize:
            raise SyscallError("E2BIG")
        process = host.processes[int(rule_filter.subject_id)]
        return _rule_list(process_links(host, self.store.read(), process), outbuflen)

    def _get_racct(self, host: HostSpec, text: str, outbuflen: int) -> bytes:
        rule_filter = self._parse_filter(host, text)
        if rule_filter.subject is None or rule_filter.subject_id is None:
            raise SyscallError("EINVAL")
        output = usage_text(host, rule_filter.subject, rule_filter.subject_id).encode()
        if len(output) + 1 > outbuflen:
            raise SyscallError("ERANGE")
        return output

    # --- events ----------------------------------------------------------------------------

    def evaluate_events(self, now: float) -> list[SimEvent]:
        """The log/devctl messages the kernel sends now, remembered in the shared state so
        that two evaluators never report one episode twice.

        `now` is wall-clock seconds (`Clock.time()`): the rate limiter's window is shared with
        other processes through the state file.
        """
        host = self.host()
        if not host.racct_enable:
            return []

        def evaluate(table: RuleTable) -> tuple[list[Change], list[SimEvent]]:
            outcome = events_due(
                host,
                kernel_order(host, table),
                frozenset(table.exceeded),
                table.rate_windows,
                now,
                links=lambda rule: linked_processes(host, table, rule),
            )
            flagged = tuple(sorted(outcome.exceeded - table.exceeded))
            cleared = tuple(sorted(table.exceeded - outcome.exceeded))
            if not flagged and not cleared and outcome.rate_windows == table.rate_windows:
                return [], outcome.events
            changes = self._housekeeping(host, table)
            changes.append(Flags(flagged, cleared, outcome.rate_windows))
            return changes, outcome.events

        return self.store.change(evaluate)

    # --- helpers -----------------------------------------------------------------------------

    def _housekeeping(self, host: HostSpec, table: RuleTable) -> list[Change]:
        """What a change to the rules records first: the rules of processes that exited are
        gone, and jails and attached processes that appeared or left are noted."""
        changes: list[Change] = []
        gone = exited_process_rules(host, table)
        if gone:
            changes.append(Delete(tuple(gone)))
        observed = self._observed
        if observed is None or observed[0] is not host or observed[1] is not table:
            seen = seen_changes(host, table)
            if seen is not None:
                changes.append(seen)
            self._observed = (host, table)
        return changes

    def _parse_filter(self, host: HostSpec, text: str) -> Filter:
        # A scrape asks for the usage of every jail: remember each filter for as long as the host
        # it was checked against is the one in force (a pid filter depends on the process table).
        memo = self._filters
        if memo is None or memo[0] is not host or len(memo[1]) >= FILTER_MEMO_SIZE:
            memo = self._filters = (host, {})
        known = memo[1].get(text)
        if known is not None:
            return known
        check = check_filter(parse_rule_syntax(text), Layer.KERNEL, host)
        if check.filter is None:
            raise SyscallError(_errno(check))
        memo[1][text] = check.filter
        return check.filter


def read_inbuf(inbuf: bytes) -> str:
    """`rctl_read_inbuf` + copyinstr(9): the text before the first NUL within inbuflen."""
    if len(inbuf) == 0:
        raise SyscallError("EINVAL")
    if len(inbuf) > MAX_INBUFSIZE:
        raise SyscallError("E2BIG")
    end = inbuf.find(b"\0")
    if end < 0:
        raise SyscallError("ENAMETOOLONG")
    try:
        return inbuf[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SyscallError("EINVAL") from None


def _errno(check: RuleCheck | FilterCheck) -> str:
    error = check.error
    return error.errno if error is not None and error.errno else "EINVAL"


def _rule_list(rules: Sequence[Rule], outbuflen: int) -> bytes:
    """Rules comma-joined into a fixed sbuf of `outbuflen` bytes, as get_rules/get_limits do."""
    return _fitted(_joined(rules), outbuflen)


def _joined(rules: Sequence[Rule]) -> bytes:
    return ",".join(rule.canonical for rule in rules).encode()


def _fitted(output: bytes, outbuflen: int) -> bytes:
    """Each rule goes in with a trailing comma and the sbuf keeps a byte for the NUL, so the
    joined text needs len + 2 bytes; an empty answer still needs its NUL. ERANGE, never a
    partial answer, when it does not fit."""
    needed = len(output) + 2 if output else 1
    if needed > outbuflen:
        raise SyscallError("ERANGE")
    return output


#: Each resource with its `name=` (a constant table: a scrape asks for every jail's usage).
_ALL_USAGE = tuple((resource, f"{resource.value}=") for resource in Resource)
_PROCESS_USAGE = tuple((resource, f"{resource.value}=") for resource in PROCESS_USAGE_RESOURCES)


def usage_text(host: HostSpec, subject: SubjectType, subject_id: str) -> str:
    """`rctl_racct_to_sbuf`: name=value for each resource in id order; the sloppy resources are
    left out for a process."""
    usage = host.usage_of(subject, subject_id)
    resources = _PROCESS_USAGE if subject is SubjectType.PROCESS else _ALL_USAGE
    get = usage.get
    return ",".join([f"{name}{get(resource, 0)}" for resource, name in resources])


# --- which processes a rule is linked to ---------------------------------------------------------


def exited_process_rules(host: HostSpec, table: RuleTable) -> list[int]:
    """The seqs of the process rules whose process is gone (they died with it)."""
    prefix = len(f"{SubjectType.PROCESS}:")
    return [
        seq
        for key in table.process_containers()
        if int(key[prefix:]) not in host.processes
        for seq in table.rules_of(key).values()
    ]


def seen_changes(host: HostSpec, table: RuleTable) -> Seen | None:
    """The jails and attached processes that appeared since the table last looked (noted with
    the seq now current) or left the host file."""
    present = {container_key(SubjectType.JAIL, jail.name) for jail in host.jails}
    present.update(
        container_key(SubjectType.PROCESS, str(pid))
        for pid, process in host.processes.items()
        if process.attached
    )
    changes: dict[str, int | None] = {
        key: table.since(key) for key in present if key not in table.seen
    }
    changes.update((key, None) for key in table.seen if key not in present)
    return Seen(changes) if changes else None


def credentials_since(table: RuleTable, process: HostProcess) -> int:
    """The seq current when the process's credentials were last set by attaching: when its
    jail started (its first process was attached to it), or when it was attached itself."""
    since = 0
    if process.jail != HOST_JAIL:
        since = table.since(container_key(SubjectType.JAIL, process.jail))
    if process.attached:
        since = max(since, table.since(container_key(SubjectType.PROCESS, str(process.pid))))
    return since


def linked_on_attach(rule: Rule, process: HostProcess) -> bool:
    """`rctl_proc_ucred_changed`: the process's own process rules, its real uid's, its login
    class's and its own prison's rules; not its parent jails', not its effective uid's."""
    if rule.subject is SubjectType.PROCESS:
        return rule.subject_id == str(process.pid)
    if rule.subject is SubjectType.USER:
        return rule.subject_id == format_subject_id(SubjectType.USER, str(process.ruid))
    if rule.subject is SubjectType.LOGINCLASS:
        return rule.subject_id == process.loginclass
    return rule.subject_id == process.jail


def is_linked(host: HostSpec, rule: Rule, seq: int, since: int, process: HostProcess) -> bool:
    """Whether the rule added as `seq` is linked to a process whose credentials date from
    `since`: the add-time walk for a rule added after them, the attach-time links before."""
    if not host.applies_to(rule, process):
        return False
    return seq >= since or linked_on_attach(rule, process)


def linked_processes(host: HostSpec, table: RuleTable, rule: Rule) -> list[HostProcess]:
    """The host's processes a rule in force is linked to, by pid."""
    seq = table.rules_of(container_key(rule.subject, rule.subject_id)).get(rule, table.next_seq)
    return [
        process
        for process in host.linked_processes(rule)
        if is_linked(host, rule, seq, credentials_since(table, process), process)
    ]


def process_links(host: HostSpec, table: RuleTable, process: HostProcess) -> list[Rule]:
    """Every rule linked to a process (rctl -l), newest first."""
    since = credentials_since(table, process)
    linked = [
        StoredRule(rule, seq)
        for bucket in table.buckets().values()
        for rule, seq in bucket.items()
        if is_linked(host, rule, seq, since, process)
    ]
    linked.sort(key=lambda stored: stored.seq, reverse=True)
    return [stored.rule for stored in linked]


# --- the listing order ---------------------------------------------------------------------------


def kernel_order(host: HostSpec, table: RuleTable) -> list[Rule]:
    """All rules in the order `rctl_get_rules` walks them (spec section 6, "Listing order").

    Process rules first (newest process first), then the loginclass, user and jail containers
    (users by descending uid-hash bucket), newest container first; within a container the
    newest rule first. Containers the host already had (its jails, login classes, the users
    of its processes) are older than those rules created. Rules of exited processes are gone.
    """
    buckets = table.buckets()
    age = _container_ages(host, table)

    def key_age(key: str) -> int:
        return age.get(key, table.containers.get(key, 0))

    ordered: list[Rule] = []
    for pid in sorted(host.processes, reverse=True):
        bucket = buckets.get(container_key(SubjectType.PROCESS, str(pid)))
        if bucket:
            ordered.extend(reversed(bucket))
    for subject in (SubjectType.LOGINCLASS, SubjectType.USER, SubjectType.JAIL):
        prefix = f"{subject}:"
        keys = [key for key in buckets if key.startswith(prefix)]
        if subject is SubjectType.USER:
            keys.sort(key=lambda key: (_uid_bucket(key[len(prefix) :]), key_age(key)), reverse=True)
        else:
            keys.sort(key=key_age, reverse=True)
        for key in keys:
            ordered.extend(reversed(buckets[key]))
    return ordered


def _uid_bucket(uid_text: str) -> int:
    return (int(uid_text) & 0xFFFFFFFF) & UIHASH_MASK


def _container_ages(host: HostSpec, table: RuleTable) -> dict[str, int]:
    """Creation ranks of the containers the host had before any rule: below every rule seq,
    later entries of the host file newer."""
    base = -(10**9)
    ages: dict[str, int] = {
        container_key(SubjectType.JAIL, HOST_JAIL): base,
        container_key(SubjectType.LOGINCLASS, "default"): base,
    }
    for index, jail in enumerate(host.jails, start=1):
        ages.setdefault(container_key(SubjectType.JAIL, jail.name), base + index)
    for index, name in enumerate(host.loginclasses, start=1):
        ages.setdefault(container_key(SubjectType.LOGINCLASS, name), base + index)
    for pid in sorted(host.processes):
        process = host.processes[pid]
        offset = len(host.loginclasses) + pid
        ages.setdefault(container_key(SubjectType.LOGINCLASS, process.loginclass), base + offset)
        for uid in (process.ruid, process.euid):
            ages.setdefault(container_key(SubjectType.USER, str(uid)), base + pid)
    return ages


# --- log and devctl ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimEvent:
    """A log or devctl message of the simulated kernel: the rule and the offending process."""

    kind: EventKind
    rule: Rule
    pid: int
    #: Real uid (the devctl message's `ruid`), unsigned.
    ruid: int
    #: The racct name of the process's own prison ("0": the host).
    jail: str
    #: Effective uid (the log line's `uid`), unsigned.
    euid: int
    comm: str


@dataclass(frozen=True, slots=True)
class EventOutcome:
    events: list[SimEvent]
    exceeded: frozenset[str]
    rate_windows: Mapping[str, RateWindow]


_ACTION_KINDS: dict[Action, EventKind] = {Action.DEVCTL: "devctl", Action.LOG: "log"}


def ratecheck(window: RateWindow, limit: int, now: float) -> tuple[bool, RateWindow]:
    """ppsratecheck(9) with a 1-second window: at most `limit` per window, 0 = never,
    negative = no limit. A clock that went back starts a new window."""
    if window.start is None or not 0 <= now - window.start < 1.0:
        return limit != 0, RateWindow(now, 1)
    count = window.count + 1
    return limit < 0 or count <= limit, RateWindow(window.start, count)


def _offender(
    host: HostSpec, rule: Rule, links: Callable[[Rule], Sequence[HostProcess]]
) -> HostProcess | None:
    """The process through which the rule fires now, or None when none is over the limit."""
    for process in links(rule):
        per_subject, per_id = host.per_container(rule.per, process)
        used = host.usage_of(per_subject, per_id).get(rule.resource, 0)
        if used > rule.amount:
            return process
    if rule.per is not rule.subject or host.linked_processes(rule):
        return None
    # No process of the host file is in the subject: the subject's own usage decides, and the
    # message names pid 0 (the kernel), uid 0 and the rule's jail (the host for other subjects).
    used = host.usage_of(rule.subject, rule.subject_id).get(rule.resource, 0)
    if used <= rule.amount:
        return None
    jail = rule.subject_id if rule.subject is SubjectType.JAIL else HOST_JAIL
    return HostProcess(0, KERNEL_COMM, 0, 0, jail, "default")


def events_due(
    host: HostSpec,
    rules: Sequence[Rule],
    exceeded: frozenset[str],
    rate_windows: Mapping[str, RateWindow],
    now: float,
    links: Callable[[Rule], Sequence[HostProcess]] | None = None,
) -> EventOutcome:
    """Which log/devctl rules fire at `now`, from the host's usage (pure).

    A rule fires when a linked process's usage (summed over the rule's `per`) exceeds the
    amount, once per episode: the rule is flagged when its message goes out and unflagged
    once no process is over the limit. A message the rate limiter drops leaves the flag clear,
    so it is tried again next time. `links` gives the processes a rule is linked to (default:
    those the add-time walk reaches).
    """
    link_of = links if links is not None else host.linked_processes
    events: list[SimEvent] = []
    flags = set(exceeded)
    windows = dict(rate_windows)
    limits = {"devctl": host.devctl_rate_limit, "log": host.log_rate_limit}
    current: set[str] = set()
    for rule in rules:
        kind = _ACTION_KINDS.get(rule.action)
        if kind is None:
            continue
        key = rule.canonical
        current.add(key)
        process = _offender(host, rule, link_of)
        if process is None:
            flags.discard(key)
            continue
        if key in flags:
            continue
        allowed, windows[kind] = ratecheck(windows.get(kind, RateWindow()), limits[kind], now)
        if not allowed:
            continue
        flags.add(key)
        events.append(
            SimEvent(
                kind, rule, process.pid, process.ruid, process.jail, process.euid, process.comm
            )
        )
    return EventOutcome(events, frozenset(flags & current), windows)


def format_log_line(event: SimEvent) -> str:
    """The kernel's console line for a fired `log` rule (the rule cut to 127 bytes)."""
    rule_text = event.rule.canonical.encode()[:LOG_RULE_MAX].decode(errors="ignore")
    uid = format_subject_id(SubjectType.USER, str(event.euid))
    return (
        f'rctl: rule "{rule_text}" matched by pid {event.pid} ({event.comm}), '
        f"uid {uid}, jail {event.jail}"
    )
