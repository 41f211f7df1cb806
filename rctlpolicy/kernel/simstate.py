"""The simulated kernel's state: its rules and what it remembers between calls, kept in a file
beside the host file so the daemon, `show` and `apply` running as separate processes all see
one kernel.

In memory the state is a `RuleTable` (`rctlpolicy.kernel.ruletable`, indexed by container).
Every change is a `Change` value: the table applies it, and the store appends it to the file as
one journal line, so a replayed file is exactly the table that wrote it.

The file (`<host file>.state.json`) is a snapshot line, then journal lines::

    {"version":2,"generation":"9f..","next_seq":4,"rules":["1 user:80:maxproc:deny=10/user"],..}
    {"add":"4 jail:db1:memoryuse:deny=4294967296/jail","crc":"0a1b2c3d"}
    {"del":[1],"crc":"5e6f7a8b"}

Each line ends with a `crc` field, the CRC-32 of the line without it, so a truncated, garbled
or overwritten file is noticed: the snapshot and the journal lines up to the first damaged one
are kept (nothing after it can be trusted), the damage is logged once as an error, and the file
is rewritten at once as a fresh snapshot of what was kept under a new `generation`, which tells
a daemon that the kernel lost rules and must be reconciled (`rctlpolicy.kernel.base.
RuleStoreStatus`). A journal longer than the rules it describes is folded into a new snapshot.
Files written by earlier versions (no `crc`) are read as before and rewritten on the next change.

Writes go through `rctlpolicy.safeio` (a snapshot atomically with mode 0600, journal lines
appended to a no-follow descriptor), under an exclusive flock(2) on `<state>.lock`. A reader
holding a table reads only what was appended since (the file grows, its inode stays); a renamed
file (a new snapshot) is read whole.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from rctlpolicy import safeio
from rctlpolicy.kernel.base import RuleStoreStatus
from rctlpolicy.kernel.ruletable import (
    Add,
    Change,
    Delete,
    Flags,
    RuleTable,
    Seen,
    StoredRule,
    decode_rule_entry,
    rule_entry,
    table_of,
    windows_json,
    windows_of,
)

log = logging.getLogger("rctlpolicy.kernel.simstate")

VERSION = 2
#: A journal is folded into a new snapshot once it has this many lines and at least as many
#: lines as the table has rules (so folding costs O(1) per change, amortized).
JOURNAL_MIN = 4096

_T = TypeVar("_T")


# --- the file's lines -----------------------------------------------------------------------------


def _change_json(change: Change) -> dict[str, Any]:
    if isinstance(change, Add):
        return {"add": rule_entry(change.stored)}
    if isinstance(change, Delete):
        return {"del": list(change.seqs)}
    if isinstance(change, Seen):
        return {"seen": dict(change.changes)}
    return {
        "flag": list(change.flagged),
        "clear": list(change.cleared),
        "rate_windows": windows_json(change.rate_windows),
    }


class _Damaged(ValueError):
    """A line that is not what this module wrote."""


def _change_of(data: dict[str, Any]) -> Change:
    if "add" in data:
        stored = decode_rule_entry(data["add"])
        if stored is None:
            raise _Damaged("an unreadable rule")
        return Add(stored)
    if "del" in data:
        seqs = data["del"]
        if not isinstance(seqs, list) or not all(_is_int(seq) for seq in seqs):
            raise _Damaged("an unreadable removal")
        return Delete(tuple(seqs))
    if "seen" in data:
        seen = data["seen"]
        if not isinstance(seen, dict) or not all(v is None or _is_int(v) for v in seen.values()):
            raise _Damaged("an unreadable list of jails")
        return Seen({str(key): value for key, value in seen.items()})
    flagged, cleared = data.get("flag"), data.get("clear")
    if not isinstance(flagged, list) or not isinstance(cleared, list):
        raise _Damaged("an unknown kind of line")
    return Flags(
        tuple(str(item) for item in flagged),
        tuple(str(item) for item in cleared),
        windows_of(data.get("rate_windows")),
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _sealed(data: Mapping[str, Any]) -> bytes:
    """One line: the JSON object with the CRC-32 of its text (before the crc field) added."""
    body = json.dumps(data, separators=(",", ":"))
    return f'{body[:-1]},"crc":"{zlib.crc32(body.encode()):08x}"}}\n'.encode()


_CRC_FIELD = ',"crc":"'
#: How every snapshot of this version starts (`_write_snapshot` puts the version first).
_SNAPSHOT_START = b'{"version":%d,' % VERSION


def _unsealed(line: bytes) -> dict[str, Any]:
    """The object of a `_sealed` line; raises _Damaged when its checksum does not match."""
    text = line.decode("utf-8", "replace")
    head, found, tail = text.rpartition(_CRC_FIELD)
    if not found or len(tail) != 10 or not tail.endswith('"}'):
        raise _Damaged("a line without its checksum")
    body = head + "}"
    try:
        recorded = int(tail[:8], 16)
    except ValueError:
        raise _Damaged("a line without its checksum") from None
    if recorded != zlib.crc32(body.encode()):
        raise _Damaged("a checksum that does not match")
    try:
        data = json.loads(body)
    except ValueError:
        raise _Damaged("a line that is not JSON") from None
    if not isinstance(data, dict):
        raise _Damaged("a line that is not an object")
    return data


@dataclass(slots=True)
class _Decoded:
    table: RuleTable
    generation: str | None
    #: What the snapshot says the generation before it lost (None: nothing was lost).
    recorded_damage: str | None
    #: What is wrong with the file now (None: it is whole).
    damage: str | None = None
    #: Bytes of the file that decoded cleanly (where the next append goes).
    good_bytes: int = 0
    journal_lines: int = 0
    legacy: bool = False


def _decode_file(raw: bytes, where: str) -> _Decoded:
    """The table a state file holds, and what is damaged in it."""
    if not raw.strip():
        return _Decoded(RuleTable(), None, None, damage="the file is empty")
    if not raw.startswith(_SNAPSHOT_START):
        return _decode_legacy(raw, where)
    first_end = raw.find(b"\n")
    if first_end < 0:
        return _Decoded(RuleTable(), None, None, damage="its snapshot is cut short")
    try:
        head = _unsealed(raw[:first_end])
        if head.get("version") != VERSION:
            raise _Damaged(f"an unknown version {head.get('version')!r}")
        table = _snapshot_table(head)
    except _Damaged as error:
        return _Decoded(RuleTable(), None, None, damage=f"its snapshot has {error}")
    decoded = _Decoded(
        table,
        head.get("generation") if isinstance(head.get("generation"), str) else None,
        head.get("damage") if isinstance(head.get("damage"), str) else None,
        good_bytes=first_end + 1,
    )
    _replay(decoded, raw, first_end + 1)
    return decoded


def _replay(decoded: _Decoded, raw: bytes, start: int) -> None:
    """Apply the journal lines from `start` on; stops at the first damaged line."""
    position = start
    while position < len(raw):
        end = raw.find(b"\n", position)
        if end < 0:
            decoded.damage = f"journal line {decoded.journal_lines + 1} is cut short"
            return
        try:
            change = _change_of(_unsealed(raw[position:end]))
        except _Damaged as error:
            decoded.damage = f"journal line {decoded.journal_lines + 1} has {error}"
            return
        decoded.table.apply(change)
        decoded.journal_lines += 1
        position = end + 1
        decoded.good_bytes = position


def _snapshot_table(head: Mapping[str, Any]) -> RuleTable:
    table = RuleTable()
    raw_rules = head.get("rules")
    if not isinstance(raw_rules, list):
        raise _Damaged("no list of rules")
    for raw in raw_rules:
        stored = decode_rule_entry(raw)
        if stored is None:
            raise _Damaged("an unreadable rule")
        table.apply(Add(stored))
    containers, seen = head.get("containers"), head.get("seen")
    if not isinstance(containers, dict) or not all(_is_int(v) for v in containers.values()):
        raise _Damaged("an unreadable container table")
    if not isinstance(seen, dict) or not all(_is_int(v) for v in seen.values()):
        raise _Damaged("an unreadable list of jails")
    next_seq, exceeded = head.get("next_seq"), head.get("exceeded")
    if not _is_int(next_seq) or not isinstance(exceeded, list):
        raise _Damaged("an unreadable counter")
    table.containers = {str(key): value for key, value in containers.items()}
    table.seen = {str(key): value for key, value in seen.items()}
    table.next_seq = max(next_seq, table.next_seq)
    table.exceeded = {item for item in exceeded if isinstance(item, str)}
    table.rate_windows = windows_of(head.get("rate_windows"))
    return table


def _decode_legacy(raw: bytes, where: str) -> _Decoded:
    """A file of version 1 (no checksums): read tolerantly, as that version did."""
    text = raw.decode("utf-8", errors="replace")
    first, _, rest = text.partition("\n")
    try:
        data = json.loads(first)
    except ValueError as error:
        return _Decoded(RuleTable(), None, None, damage=f"its snapshot is not JSON ({error})")
    if not isinstance(data, dict):
        return _Decoded(RuleTable(), None, None, damage="its snapshot is not an object")
    entries: list[tuple[StoredRule, list[Any] | None]] = []
    raw_rules = data.get("rules", [])
    for raw_rule in raw_rules if isinstance(raw_rules, list) else []:
        stored = decode_rule_entry(raw_rule)
        if stored is None:
            log.warning("%s: dropping a malformed rule entry: %r", where, raw_rule)
            continue
        entries.append((stored, None))
    entries.sort(key=lambda entry: entry[0].seq)
    damage = None
    for number, line in enumerate((line for line in rest.split("\n") if line.strip()), 1):
        try:
            entry = json.loads(line)
            stored = decode_rule_entry(entry["add"])
            container = entry.get("container")
        except (ValueError, KeyError, TypeError, AttributeError):
            stored = None
        if stored is None:
            damage = f"journal line {number} is malformed"
            break
        entries.append((stored, container if isinstance(container, list) else None))
    table = table_of(stored for stored, _ in entries)
    # That version named the containers' ages only in its container table.
    raw_containers = data.get("containers", {})
    table.containers = {
        str(key): seq
        for key, seq in (raw_containers.items() if isinstance(raw_containers, dict) else ())
        if _is_int(seq)
    }
    for _, container in entries:
        if container is not None and len(container) == 2 and _is_int(container[1]):
            table.containers[str(container[0])] = container[1]
    next_seq = data.get("next_seq")
    if _is_int(next_seq):
        table.next_seq = max(table.next_seq, next_seq)
    raw_exceeded = data.get("exceeded", [])
    if isinstance(raw_exceeded, list):
        table.exceeded = {item for item in raw_exceeded if isinstance(item, str)}
    table.rate_windows = windows_of(data.get("rate_windows", {}))
    table.seen_unknown_is_old = True
    return _Decoded(table, None, None, damage=damage, legacy=True, good_bytes=len(raw))


# --- the store ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    table: RuleTable
    generation: str | None
    recorded_damage: str | None
    #: (inode, size, mtime_ns) of the file as last read or written; None: no file.
    identity: tuple[int, int, int] | None
    #: Journal lines after the snapshot, and whether the file must be rewritten whole.
    journal_lines: int = 0
    needs_snapshot: bool = False


@dataclass(slots=True)
class StateStore:
    """The simulated kernel's state file, shared by every process that uses the host.

    `read` and `change` hold an exclusive flock(2) while they look at the file. Writes are not
    fsync(2)ed on every change: a real kernel's rules live in memory and are gone after a
    crash, and a journal line that a crash tears is noticed and dropped (with the lines after
    it) like any other damage. Snapshots are written atomically and durably.
    """

    path: Path
    #: A journal is folded into a new snapshot once it has `journal_min` lines and at least as
    #: many lines as the table has rules, or (when set) once it has `journal_max` lines.
    journal_min: int = JOURNAL_MIN
    journal_max: int | None = None
    _cached: _Cached | None = field(default=None, init=False)
    #: Damage this store found in the file (and repaired), for metrics and tests.
    damage_found: int = field(default=0, init=False)

    @staticmethod
    def path_beside(host_path: Path) -> Path:
        """`<host file>.state.json`, in the host file's directory."""
        return host_path.with_name(host_path.name + ".state.json")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def read(self) -> RuleTable:
        """The state as it is now. The table is shared: read it, never change it."""
        with safeio.locked(self.lock_path):
            return self._refresh().table

    def status(self) -> RuleStoreStatus:
        """The generation of the rules in the file, and what damage began it."""
        with safeio.locked(self.lock_path):
            cached = self._refresh()
        return RuleStoreStatus(cached.generation, cached.recorded_damage)

    def change(self, decide: Callable[[RuleTable], tuple[list[Change], _T]]) -> _T:
        """Let `decide` look at the current table and say what changes (it must not change the
        table itself); apply them and record them in the file, all under the lock.

        An exception from `decide` leaves the table and the file untouched.
        """
        with safeio.locked(self.lock_path):
            cached = self._refresh()
            changes, result = decide(cached.table)
            if changes:
                try:
                    for change in changes:
                        cached.table.apply(change)
                    self._record(cached, changes)
                except BaseException:
                    self._cached = None  # the file decides what the table is
                    raise
        return result

    # --- reading the file -------------------------------------------------------------------

    def _refresh(self) -> _Cached:
        """The table as the file holds it now (the lock held)."""
        cached = self._cached
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if cached is None or cached.identity is not None:
                cached = self._cached = _Cached(RuleTable(), None, None, None)
            return cached
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if cached is not None and cached.identity == identity:
            return cached
        if (
            cached is not None
            and cached.identity is not None
            and not cached.needs_snapshot
            and cached.identity[0] == identity[0]
            and identity[1] > cached.identity[1]
            and self._read_appended(cached, identity)
        ):
            return cached
        shrank = (
            cached is not None
            and cached.identity is not None
            and cached.identity[0] == identity[0]
            and identity[1] < cached.identity[1]
        )
        return self._read_whole(shrank=shrank)

    def _read_appended(self, cached: _Cached, identity: tuple[int, int, int]) -> bool:
        """Apply the lines other processes appended; False when the new bytes are not whole
        journal lines (the file is then read whole, and its damage found)."""
        assert cached.identity is not None
        start = cached.identity[1]
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                tail = handle.read(identity[1] - start)
        except OSError:
            return False
        changes: list[Change] = []
        for line in tail.split(b"\n")[:-1] if tail.endswith(b"\n") else [b"!"]:
            try:
                changes.append(_change_of(_unsealed(line)))
            except _Damaged:
                return False
        for change in changes:
            cached.table.apply(change)
        cached.journal_lines += len(changes)
        cached.identity = identity
        return True

    def _read_whole(self, *, shrank: bool) -> _Cached:
        try:
            raw = safeio.read_bytes(self.path)
            info = os.stat(self.path)
        except FileNotFoundError:
            self._cached = _Cached(RuleTable(), None, None, None)
            return self._cached
        decoded = _decode_file(raw, str(self.path))
        if decoded.damage is None and shrank:
            decoded.damage = "it was cut short (it shrank while in use)"
        cached = _Cached(
            decoded.table,
            decoded.generation,
            decoded.recorded_damage,
            (info.st_ino, info.st_size, info.st_mtime_ns),
            decoded.journal_lines,
            needs_snapshot=decoded.legacy or decoded.good_bytes != len(raw),
        )
        self._cached = cached
        if decoded.damage is not None:
            self._repair(cached, decoded.damage)
        return cached

    def _repair(self, cached: _Cached, damage: str) -> None:
        self.damage_found += 1
        kept = len(cached.table)
        log.error(
            "the simulated kernel's state file %s is corrupt (%s): %s; rewriting it now "
            "(a daemon re-applies its policy)",
            self.path,
            damage,
            f"the {kept} rule(s) recorded before the damage are kept, later changes are lost"
            if kept
            else "its rules are lost",
        )
        cached.generation = None
        cached.recorded_damage = damage
        try:
            self._write_snapshot(cached)
        except OSError as error:
            log.error("cannot rewrite the simulated kernel's state file %s: %s", self.path, error)

    # --- writing the file -------------------------------------------------------------------

    def _record(self, cached: _Cached, changes: list[Change]) -> None:
        lines = cached.journal_lines + len(changes)
        if self.journal_max is not None:
            fold = lines >= self.journal_max
        else:
            fold = lines >= self.journal_min and lines >= len(cached.table)
        if cached.identity is None or cached.needs_snapshot or fold:
            self._write_snapshot(cached)
            return
        data = b"".join(_sealed(_change_json(change)) for change in changes)
        fd = safeio.open_append(self.path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if cached.identity[0] != info.st_ino or info.st_size != cached.identity[1] + len(data):
            self._cached = None  # someone else wrote the file meanwhile: read it whole next time
            return
        cached.identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached.journal_lines += len(changes)

    def _write_snapshot(self, cached: _Cached) -> None:
        if cached.generation is None:
            # A new kernel (no state before) or one rebuilt after damage: a daemon that applied
            # its rules to another generation re-applies them.
            cached.generation = secrets.token_hex(8)
        head = {
            "version": VERSION,
            "generation": cached.generation,
            "damage": cached.recorded_damage,
            **cached.table.snapshot(),
        }
        data = _sealed(head)
        safeio.write_atomic(self.path, data, mode=safeio.STATE_MODE)
        info = os.stat(self.path)
        cached.identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached.journal_lines = 0
        cached.needs_snapshot = False
