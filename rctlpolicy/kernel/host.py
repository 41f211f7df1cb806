"""The simulated FreeBSD host: its description (a YAML file) and its kernel's rule state.

A host file says what a FreeBSD machine would answer to rctl: its users and groups, its login
classes, its processes, its jails and what each subject uses::

    users: {root: 0, www: 80, pgsql: 770}
    groups: {wheel: 0}                      # optional
    loginclasses: [default, daemon]         # optional
    processes:                              # optional; absent: only pid 1 (init, root) exists
      1: {comm: init, uid: 0}
      4242: {comm: postgres, uid: 770, jail: db1}   # also: euid (default uid),
                                                    # loginclass (default "default")
    jails:
      db1: {jid: 3}
      web1: {jid: 4}                        # also: parent: <jail name> for a child jail
    racct_enable: true                      # false: every rctl call fails with ENOSYS
    privileged: true                        # false: the caller is not root (EPERM)
    devctl_rate_limit: 10                   # kern.racct.rctl.devctl_rate_limit
    log_rate_limit: 10                      # kern.racct.rctl.log_rate_limit
    maxbufsize: 16777216                    # kern.racct.rctl.maxbufsize
    usage:                                  # what `rctl -u` reports, in rctl -u units
      "jail:db1": {memoryuse: 1073741824, maxproc: 12}
      "user:www": {maxproc: 40}             # users by name or uid
      "process:4242": {memoryuse: 524288000}

`load_host` reads the file on every call and parses it again when its bytes changed, so an edit
takes effect on the next rctl call. Any problem in the file is a `HostFileError` naming the file
and the key.

The kernel's rules live in a state file beside the host file (`<host file>.state.json`), changed
under an exclusive flock(2) and replaced atomically (`rctlpolicy.statefile`), so the daemon,
`show` and `apply` running as separate processes all see one kernel.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rctlpolicy.model import (
    HOST_JAIL,
    IN_MILLIONS_MAX,
    INT64_MAX,
    JAIL_NAME_MAX,
    LOGINCLASS_NAME_MAX,
    MAXCOMLEN,
    PID_MAX,
    UID_MAX,
    Action,
    Resource,
    Rule,
    SubjectType,
    format_subject_id,
)
from rctlpolicy.statefile import JsonStateFile

log = logging.getLogger("rctlpolicy.kernel.host")

DEFAULT_LOGINCLASS = "default"

#: Sysctl defaults (spec section 9.3).
DEFAULT_RATE_LIMIT = 10
DEFAULT_MAXBUFSIZE = 16 * 1024 * 1024

_TOP_LEVEL_KEYS = (
    "users",
    "groups",
    "loginclasses",
    "processes",
    "jails",
    "racct_enable",
    "privileged",
    "devctl_rate_limit",
    "log_rate_limit",
    "maxbufsize",
    "usage",
)
_PROCESS_KEYS = ("comm", "uid", "euid", "jail", "loginclass")
_JAIL_KEYS = ("jid", "parent")


class HostFileError(OSError):
    """The host file cannot be used: says which file and what is wrong in it.

    An OSError, so that every caller that already survives an unreadable file (the daemon's
    loops, the CLI) survives a broken host file the same way.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HostProcess:
    """A process of the simulated host, with the credentials RCTL looks at."""

    pid: int
    comm: str
    #: Real uid (`cr_ruid`: devctl reports it, `per=user` sums it) and effective uid
    #: (`cr_uid`: the log action reports it).
    ruid: int
    euid: int
    #: The racct name of the process's own prison ("0" on the host).
    jail: str
    loginclass: str


@dataclass(frozen=True, slots=True)
class HostJail:
    name: str
    jid: int
    #: The parent prison's name ("0": a jail of the host).
    parent: str = HOST_JAIL


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A simulated host; also the `semantics.Resolver` the simulated kernel parses rules with."""

    path: Path
    users: Mapping[str, int]
    groups: Mapping[str, int]
    loginclasses: tuple[str, ...]
    processes: Mapping[int, HostProcess]
    jails: tuple[HostJail, ...]
    #: Usage per container, keyed by `container_key`, in `rctl -u` units.
    usage: Mapping[str, Mapping[Resource, int]]
    racct_enable: bool = True
    privileged: bool = True
    devctl_rate_limit: int = DEFAULT_RATE_LIMIT
    log_rate_limit: int = DEFAULT_RATE_LIMIT
    maxbufsize: int = DEFAULT_MAXBUFSIZE

    # --- semantics.Resolver ------------------------------------------------------------------

    @property
    def checks_names(self) -> bool:
        return True

    def uid_of(self, name: str) -> int | None:
        return self.users.get(name)

    def gid_of(self, name: str) -> int | None:
        return self.groups.get(name)

    def process_exists(self, pid: int) -> bool | None:
        return pid in self.processes

    def jail_exists(self, name: str) -> bool | None:
        return any(jail.name == name for jail in self.jails)

    def loginclass_exists(self, name: str) -> bool | None:
        return name in self.loginclasses or name == "default"

    def name_of_uid(self, uid: int) -> str | None:
        """getpwuid(3) on this host: the first user name with that uid."""
        for name, number in self.users.items():
            if number == uid & UID_MAX:
                return name
        return None

    # --- what the kernel derives from the processes and jails ---------------------------------

    def jail_chain(self, name: str) -> tuple[str, ...]:
        """A prison's racct name and those of its ancestors, ending with the host's "0"."""
        parents = {jail.name: jail.parent for jail in self.jails}
        chain = [name]
        while chain[-1] != HOST_JAIL:
            chain.append(parents.get(chain[-1], HOST_JAIL))
        return tuple(chain)

    def applies_to(self, rule: Rule, process: HostProcess) -> bool:
        """Whether `rctl_rule_add` links the rule to the process (spec section 11.2).

        The simulated processes existed before any rule was added, so the add-time walk
        decides: a user rule reaches processes whose real or effective uid matches, a jail rule
        the processes of that jail and of all its child jails.
        """
        subject_id = rule.subject_id
        if rule.subject is SubjectType.PROCESS:
            return subject_id == str(process.pid)
        if rule.subject is SubjectType.USER:
            return subject_id in (
                format_subject_id(SubjectType.USER, str(process.ruid)),
                format_subject_id(SubjectType.USER, str(process.euid)),
            )
        if rule.subject is SubjectType.LOGINCLASS:
            return subject_id == process.loginclass
        return subject_id in self.jail_chain(process.jail)

    def linked_processes(self, rule: Rule) -> list[HostProcess]:
        """The host's processes a rule is linked to, by pid."""
        return [
            self.processes[pid]
            for pid in sorted(self.processes)
            if self.applies_to(rule, self.processes[pid])
        ]

    def usage_of(self, subject: SubjectType, subject_id: str) -> Mapping[Resource, int]:
        """A container's usage as the host file gives it (resources it omits are 0)."""
        return self.usage.get(container_key(subject, subject_id), {})

    def per_container(self, per: SubjectType, process: HostProcess) -> tuple[SubjectType, str]:
        """The container whose usage a rule with this `per` compares for the process
        (`rctl_proc_rule_to_racct`): the process, its real uid, its class, its own prison."""
        if per is SubjectType.PROCESS:
            return per, str(process.pid)
        if per is SubjectType.USER:
            return per, format_subject_id(per, str(process.ruid))
        if per is SubjectType.LOGINCLASS:
            return per, process.loginclass
        return per, process.jail


# Memoized: the listing order and every removal key all the kernel's rules by container.
@functools.lru_cache(maxsize=1 << 16)
def container_key(subject: SubjectType, subject_id: str) -> str:
    """ "jail:db1", "user:80", "process:4242": how usage and state name a container."""
    return f"{subject}:{format_subject_id(subject, subject_id)}"


# --- reading the host file ---------------------------------------------------------------------


_cache_lock = threading.Lock()
_cache: dict[Path, tuple[bytes, HostSpec]] = {}


def load_host(path: Path | str) -> HostSpec:
    """The host described by a file, re-read on every call: a changed file is parsed again.

    Reading a few hundred bytes costs microseconds, and comparing the bytes (not mtime and
    size, whose granularity can hide a quick same-size edit) makes every edit count.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HostFileError(path, f"cannot read the host file: {error.strerror or error}") from None
    key = path.absolute()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] == data:
        return cached[1]
    spec = parse_host(data, path)
    with _cache_lock:
        _cache[key] = (data, spec)
    return spec


def default_host_path() -> Path:
    """The bundled example host (package data): a few users and jails with usage."""
    return Path(__file__).resolve().parent.parent / "data" / "default-host.yaml"


def parse_host(data: bytes | str, path: Path | str = "<host>") -> HostSpec:
    """Parse host-file text; raises HostFileError naming the key that is wrong."""
    path = Path(path)
    try:
        document = yaml.load(data, Loader=_HostLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise HostFileError(path, "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise HostFileError(path, f"not valid YAML: {where}{problem}") from None
    if document is None:
        document = {}
    reader = _Reader(path)
    top = reader.mapping(document, "the host file")
    reader.known_keys(top, _TOP_LEVEL_KEYS, "")
    users = reader.name_table(top.get("users", {}), "users")
    groups = reader.name_table(top.get("groups", {}), "groups")
    loginclasses = reader.loginclasses(top.get("loginclasses", []))
    jails = reader.jails(top.get("jails", {}))
    jail_names = {jail.name for jail in jails}
    if "processes" in top:
        processes = reader.processes(top["processes"], users, jail_names, loginclasses)
    else:
        # No process table: the host runs only init, so `process:1` rules work and others ESRCH.
        processes = {1: HostProcess(1, "init", 0, 0, HOST_JAIL, DEFAULT_LOGINCLASS)}
    usage = reader.usage(top.get("usage", {}), users, processes)
    return HostSpec(
        path=path,
        users=users,
        groups=groups,
        loginclasses=loginclasses,
        processes=processes,
        jails=jails,
        usage=usage,
        racct_enable=reader.boolean(top.get("racct_enable", True), "racct_enable"),
        privileged=reader.boolean(top.get("privileged", True), "privileged"),
        devctl_rate_limit=reader.integer(
            top.get("devctl_rate_limit", DEFAULT_RATE_LIMIT),
            "devctl_rate_limit",
            -(2**31),
            2**31 - 1,
        ),
        log_rate_limit=reader.integer(
            top.get("log_rate_limit", DEFAULT_RATE_LIMIT), "log_rate_limit", -(2**31), 2**31 - 1
        ),
        maxbufsize=reader.integer(
            top.get("maxbufsize", DEFAULT_MAXBUFSIZE), "maxbufsize", 0, 2**32 - 1
        ),
    )


class _HostLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (PyYAML would keep the last one silently, so a
    second `usage:` block would hide the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True, slots=True)
class _Reader:
    """Checks of the decoded YAML; every failure names the key it is about."""

    path: Path

    def fail(self, where: str, what: str) -> HostFileError:
        return HostFileError(self.path, f"{where}: {what}" if where else what)

    def mapping(self, value: object, where: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, found {_kind(value)}")
        return value

    def known_keys(self, table: dict[Any, Any], known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(
                    where or str(key),
                    f"unknown key '{key}'{_suggest(str(key), known)}; "
                    f"known keys: {', '.join(known)}",
                )

    def boolean(self, value: object, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, found {_kind(value)}")
        return value

    def integer(self, value: object, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected a whole number, found {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is out of range ({low} to {high})")
        return value

    def name(self, value: object, where: str) -> str:
        # YAML reads unquoted `3` as a number; jail and class names are strings either way.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty name, found {_kind(value)}")
        if ":" in value or "," in value:
            raise self.fail(where, f"'{value}' contains ':' or ',', which break rule text")
        return value

    def name_table(self, value: object, where: str) -> dict[str, int]:
        table: dict[str, int] = {}
        for name, number in self.mapping(value, where).items():
            key = self.name(name, where)
            table[key] = self.integer(number, f"{where}: {key}", 0, UID_MAX)
        return table

    def loginclasses(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail("loginclasses", f"expected a list of names, found {_kind(value)}")
        names: list[str] = []
        for item in value:
            name = self.name(item, "loginclasses")
            if len(name.encode()) > LOGINCLASS_NAME_MAX:
                raise self.fail("loginclasses", f"'{name}' is longer than 32 bytes")
            names.append(name)
        return tuple(names)

    def jails(self, value: object) -> tuple[HostJail, ...]:
        jails: list[HostJail] = []
        jids: dict[int, str] = {}
        for raw_name, raw in self.mapping(value, "jails").items():
            name = self.name(raw_name, "jails")
            where = f"jails: {name}"
            if name == HOST_JAIL:
                raise self.fail(where, "'0' is the host itself (prison0), not a jail")
            if len(name.encode()) > JAIL_NAME_MAX:
                raise self.fail(where, "jail names are at most 255 bytes")
            entry = self.mapping(raw, where)
            self.known_keys(entry, _JAIL_KEYS, where)
            if "jid" not in entry:
                raise self.fail(where, "missing 'jid'")
            jid = self.integer(entry["jid"], f"{where}: jid", 1, 2**31 - 1)
            if jid in jids:
                raise self.fail(where, f"jid {jid} is already jail '{jids[jid]}'")
            jids[jid] = name
            parent = self.name(entry.get("parent", HOST_JAIL), f"{where}: parent")
            jails.append(HostJail(name, jid, parent))
        names = {jail.name for jail in jails}
        for jail in jails:
            seen = {jail.name}
            parent = jail.parent
            while parent != HOST_JAIL:
                if parent not in names:
                    raise self.fail(
                        f"jails: {jail.name}: parent",
                        f"no jail named '{parent}'{_suggest(parent, names)}",
                    )
                if parent in seen:
                    raise self.fail(f"jails: {jail.name}: parent", "jails form a cycle")
                seen.add(parent)
                parent = next(j.parent for j in jails if j.name == parent)
        return tuple(jails)

    def uid(self, value: object, where: str, users: Mapping[str, int]) -> int:
        if isinstance(value, str) and not value.isdigit():
            if value not in users:
                raise self.fail(where, f"unknown user '{value}'{_suggest(value, users)}")
            return users[value]
        if isinstance(value, str):
            value = int(value)
        return self.integer(value, where, 0, UID_MAX)

    def processes(
        self,
        value: object,
        users: Mapping[str, int],
        jail_names: set[str],
        loginclasses: tuple[str, ...],
    ) -> dict[int, HostProcess]:
        processes: dict[int, HostProcess] = {}
        for raw_pid, raw in self.mapping(value, "processes").items():
            number = int(raw_pid) if isinstance(raw_pid, str) and raw_pid.isdigit() else raw_pid
            pid = self.integer(number, "processes", 1, PID_MAX)
            where = f"processes: {pid}"
            entry = self.mapping(raw, where)
            self.known_keys(entry, _PROCESS_KEYS, where)
            for required in ("comm", "uid"):
                if required not in entry:
                    raise self.fail(where, f"missing '{required}'")
            comm = entry["comm"]
            if not isinstance(comm, str) or not comm:
                raise self.fail(f"{where}: comm", "expected the command name")
            # p_comm keeps MAXCOMLEN bytes of the name, as the kernel's log line shows it.
            comm = comm.encode()[:MAXCOMLEN].decode(errors="ignore")
            ruid = self.uid(entry["uid"], f"{where}: uid", users)
            euid = self.uid(entry.get("euid", ruid), f"{where}: euid", users)
            jail = self.name(entry.get("jail", HOST_JAIL), f"{where}: jail")
            if jail != HOST_JAIL and jail not in jail_names:
                raise self.fail(
                    f"{where}: jail",
                    f"no jail named '{jail}'{_suggest(jail, jail_names)} "
                    '(processes name their jail by name; "0" is the host)',
                )
            loginclass = self.name(
                entry.get("loginclass", DEFAULT_LOGINCLASS), f"{where}: loginclass"
            )
            if loginclasses and loginclass not in (*loginclasses, DEFAULT_LOGINCLASS):
                raise self.fail(
                    f"{where}: loginclass",
                    f"'{loginclass}' is not in loginclasses{_suggest(loginclass, loginclasses)}",
                )
            processes[pid] = HostProcess(pid, comm, ruid, euid, jail, loginclass)
        return processes

    def usage(
        self, value: object, users: Mapping[str, int], processes: Mapping[int, HostProcess]
    ) -> dict[str, dict[Resource, int]]:
        usage: dict[str, dict[Resource, int]] = {}
        for raw_key, raw in self.mapping(value, "usage").items():
            where = f"usage: {raw_key}"
            key = self.usage_key(raw_key, where, users, processes)
            if key in usage:
                raise self.fail(where, f"the same container as another key ({key})")
            values: dict[Resource, int] = {}
            for name, amount in self.mapping(raw, where).items():
                try:
                    resource = Resource(str(name).lower())
                except ValueError:
                    raise self.fail(
                        where,
                        f"unknown resource '{name}'{_suggest(str(name), list(Resource))}",
                    ) from None
                high = IN_MILLIONS_MAX if resource.in_millions else INT64_MAX
                values[resource] = self.integer(amount, f"{where}: {name}", 0, high)
            usage[key] = values
        return usage

    def usage_key(
        self,
        raw_key: object,
        where: str,
        users: Mapping[str, int],
        processes: Mapping[int, HostProcess],
    ) -> str:
        if not isinstance(raw_key, str) or raw_key.count(":") != 1:
            raise self.fail(where, 'keys are subject:id, e.g. "jail:db1" or "user:www"')
        subject_text, subject_id = raw_key.split(":")
        try:
            subject = SubjectType(subject_text)
        except ValueError:
            raise self.fail(
                where,
                f"unknown subject '{subject_text}'{_suggest(subject_text, list(SubjectType))}",
            ) from None
        if not subject_id:
            raise self.fail(where, "missing the id after ':'")
        if subject is SubjectType.USER:
            return container_key(subject, str(self.uid(subject_id, where, users)))
        if subject is SubjectType.PROCESS:
            if not subject_id.isdigit() or int(subject_id) not in processes:
                raise self.fail(where, f"no process {subject_id} in processes")
            return container_key(subject, str(int(subject_id)))
        limit = LOGINCLASS_NAME_MAX if subject is SubjectType.LOGINCLASS else JAIL_NAME_MAX
        if len(subject_id.encode()) > limit:
            raise self.fail(where, f"{subject} names are at most {limit} bytes")
        return container_key(subject, subject_id)


def _kind(value: object) -> str:
    """What was found instead, in words for the error message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --- the simulated kernel's state --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule in the simulated kernel; `seq` grows with every add (newest rule: largest)."""

    rule: Rule
    seq: int


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One ppsratecheck(9) counter: the start of the current 1-second window and its count."""

    start: float | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class KernelState:
    """Everything the simulated kernel remembers between calls."""

    #: The rules, oldest first.
    rules: tuple[StoredRule, ...] = ()
    #: When each rule-holding container was created (a seq), for the listing order.
    containers: Mapping[str, int] = field(default_factory=dict)
    next_seq: int = 1
    #: Canonical texts of the log/devctl rules whose current episode has been reported.
    exceeded: frozenset[str] = frozenset()
    #: The log and devctl rate limiters ("log", "devctl").
    rate_windows: Mapping[str, RateWindow] = field(default_factory=dict)

    def live(self, host: HostSpec) -> KernelState:
        """Without the process rules of processes that are gone (they die with the process)."""
        # Called on every system call: most kernels hold no process rule.
        if not _has_process_rules(self.rules):
            return self
        return self.removed(
            lambda rule: (
                rule.subject is SubjectType.PROCESS
                and not host.process_exists(int(rule.subject_id))
            )
        )[0]

    def added(self, rule: Rule) -> KernelState:
        """After `rctl_rule_add`: a deny replaces the deny of the same subject, resource and per
        whatever its amount; any other rule replaces only an identical one."""
        subject, subject_id, resource, per = rule.subject, rule.subject_id, rule.resource, rule.per

        def replaced(old: Rule) -> bool:
            if rule.action is Action.DENY:
                return (
                    old.action is Action.DENY
                    and old.resource is resource
                    and old.per is per
                    and old.subject is subject
                )
            return old == rule

        # Only rules of the same subject id can be replaced: picking those first, without a
        # call per rule, keeps an add to a kernel of 10,000 rules from walking them all.
        same_id = [stored for stored in self.rules if stored.rule.subject_id == subject_id]
        if any(replaced(stored.rule) for stored in same_id):
            kept, gone = self._partition(lambda old: old.subject_id == subject_id and replaced(old))
        else:
            kept, gone = self.rules, set()
        key = container_key(rule.subject, rule.subject_id)
        containers = self.containers
        if key not in containers:
            containers = {**containers, key: self.next_seq}
        had_process_rules = _has_process_rules(self.rules)
        state = KernelState(
            (*kept, StoredRule(rule, self.next_seq)),
            containers,
            self.next_seq + 1,
            self.exceeded,
            self.rate_windows,
        )
        if not gone:  # what the next live() asks, known without a scan
            _remember_process_rules(
                state.rules, had_process_rules or rule.subject is SubjectType.PROCESS
            )
        return state._forget_unused(gone)

    def removed(self, matches: Callable[[Rule], bool]) -> tuple[KernelState, int]:
        """Without the rules `matches` selects; also returns how many there were."""
        kept, gone = self._partition(matches)
        if not gone:
            return self, 0
        state = KernelState(kept, self.containers, self.next_seq, self.exceeded, self.rate_windows)
        return state._forget_unused(gone), len(self.rules) - len(kept)

    def _partition(
        self, matches: Callable[[Rule], bool]
    ) -> tuple[tuple[StoredRule, ...], set[Rule]]:
        """The stored rules `matches` does not select, and the rules it does."""
        gone = [stored for stored in self.rules if matches(stored.rule)]
        if not gone:
            return self.rules, set()
        dropped = {id(stored) for stored in gone}
        kept = tuple(stored for stored in self.rules if id(stored) not in dropped)
        return kept, {stored.rule for stored in gone}

    def _forget_unused(self, removed: set[Rule]) -> KernelState:
        # A removed rule's episode ends with it (a re-added rule is a new link, flag clear), and
        # a container without rules is freed; a later rule creates it anew.
        if not removed:
            return self
        used = {container_key(s.rule.subject, s.rule.subject_id) for s in self.rules}
        containers = {key: seq for key, seq in self.containers.items() if key in used}
        exceeded = self.exceeded - {rule.canonical for rule in removed}
        if containers == self.containers and exceeded == self.exceeded:
            return self
        return KernelState(self.rules, containers, self.next_seq, exceeded, self.rate_windows)

    def to_json(self, with_rules: bool = True) -> dict[str, Any]:
        return {
            "version": 1,
            "next_seq": self.next_seq,
            # One string per rule ("<seq> <rule with its per spelt out>"): the state is rewritten
            # on every add, and a string encodes many times faster than a mapping.
            "rules": [_rule_entry(stored) for stored in self.rules] if with_rules else [],
            "containers": dict(self.containers),
            "exceeded": sorted(self.exceeded),
            "rate_windows": {
                kind: {"start": window.start, "count": window.count}
                for kind, window in self.rate_windows.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "state") -> KernelState:
        """Decode a state file; malformed parts are dropped with a warning, never fatal."""
        if not data:
            return cls()
        try:
            raw_rules = data.get("rules", [])
            rules: list[StoredRule] = []
            for raw in raw_rules if isinstance(raw_rules, list) else []:
                stored = _stored_rule(raw)
                if stored is None:
                    log.warning("%s: dropping a malformed rule entry: %r", where, raw)
                    continue
                rules.append(stored)
            rules.sort(key=lambda stored: stored.seq)
            highest = max((stored.seq for stored in rules), default=0)
            next_seq = data.get("next_seq", highest + 1)
            if isinstance(next_seq, bool) or not isinstance(next_seq, int):
                next_seq = highest + 1
            raw_containers = data.get("containers", {})
            containers = {
                str(key): seq
                for key, seq in (raw_containers.items() if isinstance(raw_containers, dict) else ())
                if isinstance(seq, int) and not isinstance(seq, bool)
            }
            raw_exceeded = data.get("exceeded", [])
            exceeded = frozenset(
                item
                for item in (raw_exceeded if isinstance(raw_exceeded, list) else ())
                if isinstance(item, str)
            )
            windows: dict[str, RateWindow] = {}
            raw_windows = data.get("rate_windows", {})
            for kind, raw in raw_windows.items() if isinstance(raw_windows, dict) else ():
                if isinstance(raw, dict):
                    start, count = raw.get("start"), raw.get("count", 0)
                    if (start is None or isinstance(start, int | float)) and isinstance(count, int):
                        windows[str(kind)] = RateWindow(
                            None if start is None else float(start), count
                        )
        except (AttributeError, TypeError, ValueError) as error:
            log.warning("%s is malformed (%s); starting from an empty kernel", where, error)
            return cls()
        return cls(tuple(rules), containers, max(next_seq, highest + 1), exceeded, windows)


# Whether a rules tuple holds a process rule: live() asks on every system call, and an apply's
# adds each make a new tuple one rule longer, whose answer follows from the last one. One slot,
# read and written as a whole, so threads never pair one tuple with another's answer.
_process_scan: tuple[tuple[StoredRule, ...], bool] | None = None


def _has_process_rules(rules: tuple[StoredRule, ...]) -> bool:
    known = _process_scan
    if known is not None and known[0] is rules:
        return known[1]
    found = any(stored.rule.subject is SubjectType.PROCESS for stored in rules)
    _remember_process_rules(rules, found)
    return found


def _remember_process_rules(rules: tuple[StoredRule, ...], found: bool) -> None:
    global _process_scan
    _process_scan = (rules, found)


# Both directions are memoized: every call re-reads and rewrites the whole state, whose entries
# rarely change between calls. Encoding is keyed by seq and checked by the rule's identity:
# hashing a StoredRule hashes all six fields of its rule, which cost more than the f-string.
_ENTRIES: dict[int, tuple[Rule, str]] = {}
_ENTRIES_MAX = 1 << 17


def _rule_entry(stored: StoredRule) -> str:
    known = _ENTRIES.get(stored.seq)
    if known is not None and known[0] is stored.rule:
        return known[1]
    rule = stored.rule
    entry = (
        f"{stored.seq} {rule.subject}:{rule.subject_id}:{rule.resource}:{rule.action}="
        f"{rule.amount}/{rule.per}"
    )
    if len(_ENTRIES) >= _ENTRIES_MAX:
        _ENTRIES.clear()
    _ENTRIES[stored.seq] = (rule, entry)
    return entry


def _stored_rule(raw: object) -> StoredRule | None:
    """Decode `_rule_entry`; None when it is not one."""
    return _decode_rule_entry(raw) if isinstance(raw, str) else None


@functools.lru_cache(maxsize=1 << 16)
def _decode_rule_entry(raw: str) -> StoredRule | None:
    # The id is the only free-text field and cannot hold ':', so the cuts are unambiguous.
    seq_text, _, text = raw.partition(" ")
    parts = text.split(":", 2)
    if not seq_text.isdigit() or len(parts) != 3:
        return None
    subject_text, subject_id, rest = parts
    resource_text, _, rest = rest.partition(":")
    action_text, _, rest = rest.partition("=")
    amount_text, _, per_text = rest.partition("/")
    try:
        subject = SubjectType(subject_text)
        rule = Rule(
            subject,
            subject_id,
            Resource(resource_text),
            Action(action_text),
            int(amount_text),
            SubjectType(per_text),
        )
    except ValueError:
        return None
    if not subject_id or (subject is SubjectType.PROCESS and not subject_id.isdigit()):
        return None
    if not amount_text.isdigit():
        return None
    return StoredRule(rule, int(seq_text))


_T = TypeVar("_T")


def _decode_state_file(raw: bytes | None, where: str) -> tuple[KernelState, int]:
    """The state a file holds, and how many journal lines it has.

    The file is a JSON snapshot on its first line, then one JSON line per rule added since
    (`{"add": "<seq> <rule>", "container": [key, seq] or null}`). A torn last line (a process
    killed while appending) is dropped with a warning; a corrupt snapshot reads as empty.
    """
    if raw is None:
        return KernelState(), 0
    text = raw.decode("utf-8", errors="replace")
    first, _, rest = text.partition("\n")
    if not first.strip():
        return KernelState(), 0
    try:
        data = json.loads(first)
    except ValueError as error:
        log.warning("state file %s is corrupt (%s); starting from an empty kernel", where, error)
        return KernelState(), 0
    if not isinstance(data, dict):
        log.warning("state file %s does not hold an object; starting from empty", where)
        return KernelState(), 0
    state = KernelState.from_json(data, where)
    lines = [line for line in rest.split("\n") if line.strip()]
    if not lines:
        return state, 0
    rules = list(state.rules)
    containers = dict(state.containers)
    next_seq = state.next_seq
    for line in lines:
        try:
            entry = json.loads(line)
            stored = _stored_rule(entry["add"])
            container = entry.get("container")
        except (ValueError, KeyError, TypeError, AttributeError):
            stored = None
            container = None
        if stored is None:
            log.warning("%s: dropping a malformed journal line: %r", where, line[:200])
            continue
        rules.append(stored)
        if isinstance(container, list) and len(container) == 2:
            containers[str(container[0])] = int(container[1])
        next_seq = max(next_seq, stored.seq + 1)
    return (
        KernelState(tuple(rules), containers, next_seq, state.exceeded, state.rate_windows),
        len(lines),
    )


class StateStore:
    """The simulated kernel's state file: read and changed under an exclusive flock(2),
    replaced atomically (temp file, rename). A corrupt file reads as an empty kernel, with a
    warning.

    Every call reads the file again (another process may have changed it), but decodes it only
    when its bytes differ from the last ones this store read or wrote: a process making many
    calls (an apply of 10,000 rules) decodes its own writes never.

    Writes are not fsync(2)ed: the rules of a real kernel live in memory and are gone after a
    crash or reboot, and a simulated kernel that forgets its last change on a power cut is
    faithful to that; the rename alone keeps every reader's view whole. (An fsync per rule
    made a 10,000-rule apply take minutes.)
    """

    def __init__(self, path: Path, journal_max: int = 4096) -> None:
        self.file = JsonStateFile(path)
        #: Adds appended to the file before it is rewritten as one snapshot.
        self.journal_max = journal_max
        self._last: tuple[bytes, KernelState] | None = None
        #: (inode, size, mtime_ns) of the file as this store last wrote or read it. Every
        #: write is a rename to a new inode, so an unchanged identity means unchanged bytes
        #: and the file need not even be read again.
        self._identity: tuple[int, int, int] | None = None
        #: Journal lines after the snapshot in the file (see _decode_state_file).
        self._journal = 0
        self._unterminated = False
        #: The rules of the last state written and their JSON list items: an add appends one
        #: rule, so only the new ones are encoded (the whole list was: quadratic in an apply).
        self._encoded: tuple[tuple[StoredRule, ...], str] | None = None

    @staticmethod
    def path_beside(host_path: Path) -> Path:
        """`<host file>.state.json`, in the host file's directory."""
        return host_path.with_name(host_path.name + ".state.json")

    @property
    def path(self) -> Path:
        return self.file.path

    def read(self) -> KernelState:
        """The state as it is now (a consistent snapshot)."""
        with self.file.locked():
            return self._load()

    def modify(self, change: Callable[[KernelState], tuple[KernelState, _T]]) -> _T:
        """Run `change` on the current state under the lock and save what it returns.

        An exception from `change` leaves the file untouched. The file is written only when
        the state changed.
        """
        with self.file.locked():
            old = self._load()
            new, result = change(old)
            if new is not old and new != old and not self._append(old, new):
                self._save(new)
        return result

    def _file_identity(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def _load(self) -> KernelState:
        """The state in the file (the lock held)."""
        identity = self._file_identity()
        if identity is not None and identity == self._identity and self._last is not None:
            return self._last[1]
        self._identity = identity
        try:
            raw = self.path.read_bytes()
        except OSError:
            raw = None
        last = self._last
        if raw is not None and last is not None and last[0] == raw:
            return last[1]
        state, self._journal = _decode_state_file(raw, str(self.path))
        self._unterminated = raw is not None and raw != b"" and not raw.endswith(b"\n")
        self._last = (raw, state) if raw is not None else None
        return state

    def _append(self, old: KernelState, new: KernelState) -> bool:
        """Write an add that only appended one rule as a journal line instead of rewriting the
        whole file (which made an apply quadratic); False when the change is not such an add
        or the journal is long enough to be folded into a new snapshot."""
        if self._journal >= self.journal_max or self._identity is None:
            return False
        if (
            len(new.rules) != len(old.rules) + 1
            or new.rules[:-1] != old.rules
            or new.next_seq != old.next_seq + 1
            or new.exceeded != old.exceeded
            or new.rate_windows != old.rate_windows
        ):
            return False
        added = new.rules[-1]
        container: list[object] | None = None
        if new.containers is not old.containers:
            key = container_key(added.rule.subject, added.rule.subject_id)
            if (
                key in old.containers
                or len(new.containers) != len(old.containers) + 1
                or new.containers.get(key) != added.seq
            ):
                return False
            container = [key, added.seq]
        line = json.dumps({"add": _rule_entry(added), "container": container}) + "\n"
        if self._unterminated:  # a file written before journals existed ends without one
            line = "\n" + line
            self._unterminated = False
        with open(self.path, "ab") as handle:
            handle.write(line.encode())
        self._journal += 1
        self._encoded = None  # the snapshot's rule list no longer holds every rule
        self._last = (b"", new)
        self._identity = self._file_identity()
        return True

    def _rules_json(self, rules: tuple[StoredRule, ...]) -> str:
        """The JSON items of the rules list, reusing the last encoding when it is a prefix."""
        previous = self._encoded
        if previous is not None and rules[: len(previous[0])] == previous[0]:
            known, text = previous
            tail = rules[len(known) :]
            if tail:
                more = ",".join(json.dumps(_rule_entry(stored)) for stored in tail)
                text = f"{text},{more}" if text else more
        else:
            text = ",".join(json.dumps(_rule_entry(stored)) for stored in rules)
        self._encoded = (rules, text)
        return text

    def _save(self, state: KernelState) -> None:
        """Replace the file atomically (the lock held); json.dumps is the C encoder."""
        document = state.to_json(with_rules=False)
        rules_text = self._rules_json(state.rules)
        head = json.dumps(document, separators=(",", ":"))
        data = head.replace('"rules":[]', f'"rules":[{rules_text}]', 1).encode() + b"\n"
        fd, temp = tempfile.mkstemp(
            prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._last = (data, state)
        self._identity = self._file_identity()
        self._journal = 0
        self._unterminated = False
