"""The simulated FreeBSD host's description: a YAML file, its format and its loader.

A host file says what a FreeBSD machine would answer to rctl: its users and groups, its login
classes, its processes, its jails and what each subject uses::

    users: {root: 0, www: 80, pgsql: 770}
    groups: {wheel: 0}                      # optional
    loginclasses: [default, daemon]         # optional
    processes:                              # optional; absent: only pid 1 (init, root) exists
      1: {comm: init, uid: 0}
      4242: {comm: postgres, uid: 770, jail: db1}   # also: euid (default uid),
                                                    # loginclass (default "default"),
                                                    # attached: true (see below)
    jails:
      db1: {jid: 3}
      db1.replica: {jid: 4}                 # a child jail: its parent is the name before the
                                            # last '.', or say `parent: <jail name>`
    racct_enable: true                      # false: every rctl call fails with ENOSYS
    privileged: true                        # false: the caller is not root (EPERM)
    devctl_rate_limit: 10                   # kern.racct.rctl.devctl_rate_limit
    log_rate_limit: 10                      # kern.racct.rctl.log_rate_limit
    maxbufsize: 16777216                    # kern.racct.rctl.maxbufsize
    usage:                                  # in rctl -u units
      "jail:db1": {memoryuse: 1073741824, maxproc: 12}
      "user:www": {maxproc: 40}             # users by name or uid
      "process:4242": {memoryuse: 524288000}

Usage of users, login classes and processes is what `rctl -u` reports for them. Usage of a jail
is what its own processes use: as in the kernel (`racct_add_cred_locked` adds every charge to
the process's prison and to each of its ancestors), `rctl -u jail:NAME` reports the jail's own
usage plus that of all its child jails, and `jail:0` (the host, prison0) the host's own plus
every jail's.

A process with `attached: true` entered its jail (jexec, jail_attach) after the rules then in
force were added: see `rctlpolicy.kernel.simulator` for what that changes.

`HostFile` reads the file when it changed, so an edit takes effect on the next rctl call. Any
problem in the file is a `HostFileError` naming the file and the key.

One responsibility: the file's format, as records (`HostSpec` and its parts) and the one reader
that checks every key of it. Most of its length is that reader, a short method per key with the
message that key's mistakes get; editing the file in place is `rctlpolicy.kernel.hostedit`, the
simulated kernel's own state `rctlpolicy.kernel.simstate`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rctlpolicy import yamlload
from rctlpolicy.amounts import INT64_MAX
from rctlpolicy.model import (
    HOST_JAIL,
    IN_MILLIONS_MAX,
    JAIL_NAME_MAX,
    JID_MAX,
    LOGINCLASS_NAME_MAX,
    MAXCOMLEN,
    PID_MAX,
    UID_MAX,
    Resource,
    Rule,
    SubjectType,
    format_subject_id,
)

DEFAULT_LOGINCLASS = "default"

#: Sysctl defaults (spec section 9.3).
DEFAULT_RATE_LIMIT = 10
DEFAULT_MAXBUFSIZE = 16 * 1024 * 1024

TOP_LEVEL_KEYS = (
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
_PROCESS_KEYS = ("comm", "uid", "euid", "jail", "loginclass", "attached")
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
    #: It entered its jail by jail_attach(2) when it appeared, rather than being forked there.
    attached: bool = False


@dataclass(frozen=True, slots=True)
class HostJail:
    name: str
    jid: int
    #: The parent prison's name ("0": a jail of the host).
    parent: str = HOST_JAIL


def container_key(subject: SubjectType, subject_id: str) -> str:
    """ "jail:db1", "user:80", "process:4242": how usage and state name a container."""
    if subject is SubjectType.USER:
        subject_id = format_subject_id(subject, subject_id)
    return f"{subject}:{subject_id}"


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A simulated host; also the `semantics.Resolver` the simulated kernel parses rules with."""

    path: Path
    users: Mapping[str, int]
    groups: Mapping[str, int]
    loginclasses: tuple[str, ...]
    processes: Mapping[int, HostProcess]
    jails: tuple[HostJail, ...]
    #: Usage per container, keyed by `container_key`, in `rctl -u` units; a jail's includes
    #: its child jails' (see the module's documentation).
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
        return name in self.loginclasses or name == DEFAULT_LOGINCLASS

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
        """Whether `rctl_rule_add` links the rule to the process (spec section 11.2): a user
        rule reaches processes whose real or effective uid matches, a jail rule the processes
        of that jail and of all its child jails."""
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
        """The host's processes `rctl_rule_add` links a rule to, by pid."""
        return [
            self.processes[pid]
            for pid in sorted(self.processes)
            if self.applies_to(rule, self.processes[pid])
        ]

    def usage_of(self, subject: SubjectType, subject_id: str) -> Mapping[Resource, int]:
        """A container's usage as `rctl -u` reports it (resources it omits are 0)."""
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


# --- reading the host file ---------------------------------------------------------------------


def default_host_path() -> Path:
    """The bundled example host (package data): a few users and jails with usage."""
    return Path(__file__).resolve().parent.parent / "data" / "default-host.yaml"


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a HostFile read last: the file's identity, its bytes, what they say."""

    identity: tuple[int, int, int, int]
    data: bytes
    spec: HostSpec
    #: The file had not changed for a while when it was read: a later edit changes its
    #: identity, so an unchanged identity means unchanged bytes.
    settled: bool


class HostFile:
    """A host file, read again when it changed.

    While the file's identity (inode, size, mtime, ctime) is unchanged it is not read at all,
    so a scrape's hundreds of rctl calls stat it and read it at most once. File timestamps are
    coarse (a tick, or a whole second on some filesystems), so a file changed less than
    `SETTLE_SECONDS` before it was read may change again without its identity changing: until
    it has settled, every call reads it and compares the bytes, and every edit counts.

    Calls that belong together (a scrape's: the jail list, then each jail's usage) are made
    inside `pinned()`: they see the host as one look at the file found it, settled or not, so
    the file is read at most once for all of them, as if they were made at one instant.
    """

    SETTLE_SECONDS = 1.0

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._last: _Reading | None = None
        #: How many times the file was read (a scrape's rctl calls read it once at most).
        self.reads = 0
        #: Per thread: how deep in `pinned()` it is, and the host it pinned.
        self._pins = threading.local()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Inside, this thread's loads return the host the first of them found (a failed load
        pins nothing). Nests; other threads are not affected."""
        pins = self._pins
        depth: int = getattr(pins, "depth", 0)
        pins.depth = depth + 1
        try:
            yield
        finally:
            pins.depth = depth
            if depth == 0:
                pins.spec = None

    def load(self) -> HostSpec:
        """The host as its file says now (or as it said when this thread pinned it); raises
        HostFileError."""
        pins = self._pins
        if getattr(pins, "depth", 0):
            spec: HostSpec | None = getattr(pins, "spec", None)
            if spec is None:
                spec = pins.spec = self._load()
            return spec
        return self._load()

    def _load(self) -> HostSpec:
        last = self._last
        if last is not None and last.settled:
            try:
                info = os.stat(self.path)
            except OSError as error:
                raise self._unreadable(error) from None
            if _identity(info) == last.identity:
                return last.spec
        try:
            with open(self.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                data = handle.read()
        except OSError as error:
            raise self._unreadable(error) from None
        self.reads += 1
        spec = last.spec if last is not None and last.data == data else parse_host(data, self.path)
        # (A clock set back makes the age negative: not settled, which is the safe side. An
        # edit within the same tick as this read changes the mtime a `touch -d` set back.)
        age_ns = time.time_ns() - info.st_mtime_ns
        settled = age_ns > self.SETTLE_SECONDS * 1e9
        self._last = _Reading(_identity(info), data, spec, settled)
        return spec

    def _unreadable(self, error: OSError) -> HostFileError:
        return HostFileError(self.path, f"cannot read the host file: {error.strerror or error}")


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def load_host(path: Path | str) -> HostSpec:
    """The host a file describes, read once (a `HostFile` remembers it between calls)."""
    return HostFile(path).load()


def parse_host(data: bytes | str, path: Path | str = "<host>") -> HostSpec:
    """Parse host-file text; raises HostFileError naming the key that is wrong."""
    path = Path(path)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise HostFileError(path, f"not UTF-8 text (byte {error.start})") from None
    try:
        document = yamlload.load(data)
    except yamlload.YamlError as error:
        raise HostFileError(path, f"not valid YAML: {error}") from None
    if document is None:
        document = {}
    reader = _HostFileReader(path)
    top = reader.mapping(document, "the host file")
    reader.known_keys(top, TOP_LEVEL_KEYS, "")
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
    usage = _with_children(reader.usage(top.get("usage", {}), users, processes), jails)
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


def _with_children(
    own: dict[str, dict[Resource, int]], jails: tuple[HostJail, ...]
) -> dict[str, dict[Resource, int]]:
    """Each jail's own usage added to every ancestor's, up to prison0 ("jail:0"), as
    `racct_add_cred_locked` charges every prison on the `pr_parent` chain."""
    parents = {jail.name: jail.parent for jail in jails}
    if not parents:
        return own
    totals = {key: dict(values) for key, values in own.items()}
    for name, parent in parents.items():
        values = own.get(container_key(SubjectType.JAIL, name))
        if not values:
            continue
        ancestor = parent
        while True:
            total = totals.setdefault(container_key(SubjectType.JAIL, ancestor), {})
            for resource, amount in values.items():
                high = IN_MILLIONS_MAX if resource.in_millions else INT64_MAX
                total[resource] = min(total.get(resource, 0) + amount, high)
            if ancestor == HOST_JAIL:
                break
            ancestor = parents.get(ancestor, HOST_JAIL)
    return totals


def suggest(word: str, choices: Iterable[str]) -> str:
    """ " (did you mean 'X'?)" for the closest of `choices`, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True, slots=True)
class _HostFileReader:
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
                    f"unknown key '{key}'{suggest(str(key), known)}; "
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
        entries: list[tuple[str, int, str | None]] = []
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
            jid = self.integer(entry["jid"], f"{where}: jid", 1, JID_MAX)
            if jid in jids:
                raise self.fail(where, f"jid {jid} is already jail '{jids[jid]}'")
            jids[jid] = name
            parent = self.name(entry["parent"], f"{where}: parent") if "parent" in entry else None
            entries.append((name, jid, parent))
        names = {name for name, _, _ in entries}
        jails: list[HostJail] = []
        for name, jid, given in entries:
            # kern_jail.c names a child jail `parent.child` as the host sees it.
            prefix = name.rpartition(".")[0]
            implied = prefix if prefix in names else HOST_JAIL
            jails.append(HostJail(name, jid, given if given is not None else implied))
        parents = {jail.name: jail.parent for jail in jails}
        for jail in jails:
            seen = {jail.name}
            parent = jail.parent
            while parent != HOST_JAIL:
                if parent not in names:
                    raise self.fail(
                        f"jails: {jail.name}: parent",
                        f"no jail named '{parent}'{suggest(parent, names)}",
                    )
                if parent in seen:
                    raise self.fail(f"jails: {jail.name}: parent", "jails form a cycle")
                seen.add(parent)
                parent = parents[parent]
        return tuple(jails)

    def uid(self, value: object, where: str, users: Mapping[str, int]) -> int:
        if isinstance(value, str) and not value.isdigit():
            if value not in users:
                raise self.fail(where, f"unknown user '{value}'{suggest(value, users)}")
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
                    f"no jail named '{jail}'{suggest(jail, jail_names)} "
                    '(processes name their jail by name; "0" is the host)',
                )
            loginclass = self.name(
                entry.get("loginclass", DEFAULT_LOGINCLASS), f"{where}: loginclass"
            )
            if loginclasses and loginclass not in (*loginclasses, DEFAULT_LOGINCLASS):
                raise self.fail(
                    f"{where}: loginclass",
                    f"'{loginclass}' is not in loginclasses{suggest(loginclass, loginclasses)}",
                )
            attached = self.boolean(entry.get("attached", False), f"{where}: attached")
            processes[pid] = HostProcess(pid, comm, ruid, euid, jail, loginclass, attached)
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
                resource = self.resource(name, where)
                high = IN_MILLIONS_MAX if resource.in_millions else INT64_MAX
                values[resource] = self.integer(amount, f"{where}: {name}", 0, high)
            usage[key] = values
        return usage

    def resource(self, name: object, where: str) -> Resource:
        try:
            return Resource(str(name).lower())
        except ValueError:
            raise self.fail(
                where, f"unknown resource '{name}'{suggest(str(name), list(Resource))}"
            ) from None

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
                f"unknown subject '{subject_text}'{suggest(subject_text, list(SubjectType))}",
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
