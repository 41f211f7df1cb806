"""The simulated kernel's rules and what it remembers between calls, in memory: a `RuleTable`.

The table is indexed by container (the racct a rule hangs on), so an add, a replacement and a
removal by a complete filter cost the same with 40,000 rules as with 40. It changes only by
`Change` values (`Add`, `Delete`, `Seen`, `Flags`), which `rctlpolicy.kernel.simstate` also
appends to the state file as journal lines: a replayed file is exactly the table that wrote it.
The table's fields as JSON values (`rule_entry`, `windows_json` and their readers) are here too,
so the snapshot line and the journal spell a rule the same way.

Pure: no file, no clock; `rctlpolicy.kernel.simstate` keeps it in a file, the simulator reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rctlpolicy.kernel.hostfile import container_key
from rctlpolicy.model import Action, Filter, Resource, Rule, SubjectType


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


# --- changes: what the table applies and the journal records ------------------------------------


@dataclass(frozen=True, slots=True)
class Add:
    """`rctl_rule_add`: a deny replaces the deny of the same subject, resource and per whatever
    its amount; any other rule replaces only an identical one."""

    stored: StoredRule


@dataclass(frozen=True, slots=True)
class Delete:
    """Rules removed by seq (a filter's matches, or the process rules of exited processes)."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Seen:
    """Jails and attached processes that appeared (the seq then current) or left (None)."""

    changes: Mapping[str, int | None]


@dataclass(frozen=True, slots=True)
class Flags:
    """log/devctl episodes that began (flagged) or ended, and the rate limiters after them."""

    flagged: tuple[str, ...]
    cleared: tuple[str, ...]
    rate_windows: Mapping[str, RateWindow]


Change = Add | Delete | Seen | Flags


# --- the table --------------------------------------------------------------------------------


class RuleTable:
    """Everything the simulated kernel remembers between calls, indexed by container.

    Changed only through `apply`; the simulator reads it through the properties and `rules_of`.
    """

    def __init__(self) -> None:
        #: Container key -> {rule: seq}, oldest first (a re-added rule moves to the end).
        self._buckets: dict[str, dict[Rule, int]] = {}
        #: seq -> (container key, rule).
        self._by_seq: dict[int, tuple[str, Rule]] = {}
        #: (container key, resource, per) -> the deny rule in force there.
        self._denies: dict[tuple[str, Resource, SubjectType], Rule] = {}
        #: When each rule-holding container was created (a seq), for the listing order.
        self.containers: dict[str, int] = {}
        self.next_seq = 1
        #: Canonical texts of the log/devctl rules whose current episode has been reported.
        self.exceeded: set[str] = set()
        #: The log and devctl rate limiters ("log", "devctl").
        self.rate_windows: dict[str, RateWindow] = {}
        #: "jail:NAME" / "process:PID" -> the seq current when it was first seen.
        self.seen: dict[str, int] = {}
        #: A state written before `seen` existed: what it never saw is older than every rule.
        self.seen_unknown_is_old = False
        #: The containers of process rules (their process may exit).
        self._process_keys: set[str] = set()
        #: Grows with every change applied (memos of derived views check it).
        self.version = 0

    # --- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_seq)

    def stored(self) -> Iterator[StoredRule]:
        """Every rule, oldest first."""
        for seq, (_, rule) in self._by_seq.items():
            yield StoredRule(rule, seq)

    def buckets(self) -> Mapping[str, dict[Rule, int]]:
        """Container key -> {rule: seq}, each oldest first."""
        return self._buckets

    def rules_of(self, key: str) -> Mapping[Rule, int]:
        return self._buckets.get(key, {})

    def process_containers(self) -> frozenset[str]:
        """The keys of the containers that hold process rules ("process:4242")."""
        return frozenset(self._process_keys)

    def since(self, key: str) -> int:
        """The seq current when a jail or attached process was first seen (rules with a
        smaller seq were added before it appeared)."""
        found = self.seen.get(key)
        if found is not None:
            return found
        return 0 if self.seen_unknown_is_old else self.next_seq

    def matching(self, rule_filter: Filter) -> list[int]:
        """The seqs of the rules a filter selects (`rctl_rule_matches`)."""
        if rule_filter.subject is not None and rule_filter.subject_id is not None:
            key = container_key(rule_filter.subject, rule_filter.subject_id)
            candidates: Iterable[tuple[Rule, int]] = self._buckets.get(key, {}).items()
        else:
            candidates = ((rule, seq) for seq, (_, rule) in self._by_seq.items())
        return [seq for rule, seq in candidates if rule_filter.matches(rule)]

    def snapshot(self) -> dict[str, Any]:
        """The table as the snapshot line's fields (without version, generation and crc)."""
        return {
            "next_seq": self.next_seq,
            "rules": [rule_entry(stored) for stored in self.stored()],
            "containers": dict(self.containers),
            "exceeded": sorted(self.exceeded),
            "rate_windows": windows_json(self.rate_windows),
            "seen": dict(self.seen),
        }

    # --- changing -----------------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Make one change (live, or replayed from the journal)."""
        self.version += 1
        if isinstance(change, Add):
            self._add(change.stored)
        elif isinstance(change, Delete):
            gone = [seq for seq in change.seqs if seq in self._by_seq]
            for seq in gone:
                self._drop(seq)
        elif isinstance(change, Seen):
            for key, since in change.changes.items():
                if since is None:
                    self.seen.pop(key, None)
                else:
                    self.seen[key] = since
        else:
            self.exceeded.difference_update(change.cleared)
            self.exceeded.update(change.flagged)
            self.rate_windows = dict(change.rate_windows)

    def _add(self, stored: StoredRule) -> None:
        rule, seq = stored.rule, stored.seq
        key = container_key(rule.subject, rule.subject_id)
        bucket = self._buckets.get(key)
        if bucket is not None:
            if rule.action is Action.DENY:
                old = self._denies.get((key, rule.resource, rule.per))
                if old is not None:
                    self._drop(bucket[old])
            elif rule in bucket:
                self._drop(bucket[rule])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            self.containers.setdefault(key, seq)
            if rule.subject is SubjectType.PROCESS:
                self._process_keys.add(key)
        bucket[rule] = seq
        self._by_seq[seq] = (key, rule)
        if rule.action is Action.DENY:
            self._denies[(key, rule.resource, rule.per)] = rule
        self.next_seq = max(self.next_seq, seq + 1)

    def _drop(self, seq: int) -> None:
        # A removed rule's episode ends with it (a re-added rule is a new link, flag clear),
        # and a container without rules is freed; a later rule creates it anew.
        key, rule = self._by_seq.pop(seq)
        bucket = self._buckets[key]
        del bucket[rule]
        if not bucket:
            del self._buckets[key]
            self.containers.pop(key, None)
            self._process_keys.discard(key)
        if rule.action is Action.DENY:
            self._denies.pop((key, rule.resource, rule.per), None)
        self.exceeded.discard(rule.canonical)


def table_of(stored: Iterable[StoredRule]) -> RuleTable:
    """A table holding these rules, added in order (each replacing as the kernel would)."""
    table = RuleTable()
    for item in stored:
        table.apply(Add(item))
    return table


# --- the table's fields as JSON values ------------------------------------------------------------


def rule_entry(stored: StoredRule) -> str:
    """ "<seq> <rule with its per spelt out>": one string per rule encodes fast."""
    rule = stored.rule
    return (
        f"{stored.seq} {rule.subject}:{rule.subject_id}:{rule.resource}:{rule.action}="
        f"{rule.amount}/{rule.per}"
    )


def decode_rule_entry(raw: object) -> StoredRule | None:
    """Decode `rule_entry`; None when it is not one."""
    if not isinstance(raw, str):
        return None
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


def windows_json(windows: Mapping[str, RateWindow]) -> dict[str, dict[str, Any]]:
    return {kind: {"start": w.start, "count": w.count} for kind, w in windows.items()}


def windows_of(raw: object) -> dict[str, RateWindow]:
    windows: dict[str, RateWindow] = {}
    for kind, value in raw.items() if isinstance(raw, dict) else ():
        if isinstance(value, dict):
            start, count = value.get("start"), value.get("count", 0)
            if (start is None or isinstance(start, int | float)) and isinstance(count, int):
                windows[str(kind)] = RateWindow(None if start is None else float(start), count)
    return windows
