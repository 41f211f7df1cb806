"""The simulated kernel's state: the rule table, its journal and snapshot, damage and repair."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from corpus_host import rule

from rctlpolicy.kernel.ruletable import (
    Add,
    Change,
    Delete,
    Flags,
    RateWindow,
    RuleTable,
    Seen,
    StoredRule,
    table_of,
)
from rctlpolicy.kernel.simstate import StateStore
from rctlpolicy.model import Action, Filter, Resource, Rule, SubjectType


def _jail_rule(n: int) -> Rule:
    return Rule(SubjectType.JAIL, f"j{n}", Resource.MAXPROC, Action.DENY, n, SubjectType.JAIL)


def _add(store: StateStore, new: Rule) -> None:
    store.change(lambda table: ([Add(StoredRule(new, table.next_seq))], None))


def _remove(store: StateStore, rule_filter: Filter) -> None:
    store.change(lambda table: ([Delete(tuple(table.matching(rule_filter)))], None))


def _rules(table: RuleTable) -> list[Rule]:
    return [stored.rule for stored in table.stored()]


# --- the table ---------------------------------------------------------------------------------


def test_adding_replaces_denies_and_identical_rules() -> None:
    deny10 = rule("user:80:maxproc:deny=10")
    deny20 = rule("user:80:maxproc:deny=20")
    log10 = rule("user:80:maxproc:log=10")
    log20 = rule("user:80:maxproc:log=20")
    table = table_of(
        StoredRule(r, n) for n, r in enumerate([deny10, deny20, log10, log20, log10], 1)
    )
    assert _rules(table) == [deny20, log20, log10]
    assert table.next_seq == 6
    # a deny of another per or resource is another rule
    table.apply(Add(StoredRule(rule("user:80:maxproc:deny=5/process"), 6)))
    assert len(table) == 4


def test_removing_forgets_containers_and_episodes() -> None:
    log10 = rule("jail:db1:maxproc:log=10")
    table = table_of([StoredRule(log10, 1)])
    table.apply(Flags((log10.canonical,), (), {}))
    assert table.containers == {"jail:db1": 1}
    table.apply(Delete(tuple(table.matching(Filter()))))
    assert len(table) == 0
    assert table.containers == {} and table.exceeded == set()
    # re-adding an identical rule makes a new link: its episode starts over
    again = table_of([StoredRule(log10, 1)])
    again.apply(Flags((log10.canonical,), (), {}))
    again.apply(Add(StoredRule(log10, 2)))
    assert again.exceeded == set()


def test_a_complete_filter_looks_in_one_container_only() -> None:
    table = table_of(StoredRule(_jail_rule(n), n + 1) for n in range(50))
    assert table.matching(_jail_rule(7).as_filter()) == [8]
    assert table.matching(Filter(SubjectType.JAIL, "j9")) == [10]
    assert len(table.matching(Filter(resource=Resource.MAXPROC))) == 50
    assert table.matching(Filter(SubjectType.JAIL, "nope")) == []


def test_seen_notes_and_forgets() -> None:
    table = RuleTable()
    assert table.since("jail:db1") == 1  # never seen: newer than every rule
    table.apply(Seen({"jail:db1": 1}))
    table.apply(Add(StoredRule(_jail_rule(0), 1)))
    assert table.since("jail:db1") == 1 and table.since("jail:web") == 2
    table.apply(Seen({"jail:db1": None}))
    assert table.since("jail:db1") == 2


# --- the file ----------------------------------------------------------------------------------


def test_state_path_is_beside_the_host_file(tmp_path: Path) -> None:
    assert StateStore.path_beside(tmp_path / "host.yaml") == tmp_path / "host.yaml.state.json"


def test_state_round_trip(tmp_path: Path) -> None:
    changes: list[Change] = [
        Add(StoredRule(rule("user:80:maxproc:deny=10"), 1)),
        Add(StoredRule(rule("jail:db1:pcpu:log=50"), 3)),
        Flags(("jail:db1:pcpu:log=50",), (), {"log": RateWindow(12.5, 2)}),
        Seen({"jail:db1": 1}),
    ]
    store = StateStore(tmp_path / "s.json")
    store.change(lambda _table: (changes, None))
    written = store.read().snapshot()
    assert written == {
        "next_seq": 4,
        "rules": ["1 user:80:maxproc:deny=10/user", "3 jail:db1:pcpu:log=50/jail"],
        "containers": {"user:80": 1, "jail:db1": 3},
        "exceeded": ["jail:db1:pcpu:log=50"],
        "rate_windows": {"log": {"start": 12.5, "count": 2}},
        "seen": {"jail:db1": 1},
    }
    assert StateStore(store.path).read().snapshot() == written
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_a_missing_state_file_is_an_empty_kernel(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json")
    assert len(store.read()) == 0
    assert store.status().generation is None


def test_a_failed_change_leaves_the_file_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json")
    _add(store, rule("user:80:maxproc:deny=10"))
    before = store.path.read_bytes()

    def fail(_table: RuleTable) -> tuple[list[Change], None]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.change(fail)
    assert store.path.read_bytes() == before
    assert _rules(store.read()) == [rule("user:80:maxproc:deny=10")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_changes_are_journalled_and_every_reader_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    writer = StateStore(path)
    for n in range(5):
        _add(writer, _jail_rule(n))
    lines = path.read_text().splitlines()
    assert len(lines) == 5  # the first add wrote the snapshot, the others one line each
    assert json.loads(lines[1])["add"] == "2 jail:j1:maxproc:deny=1/jail"
    fresh = StateStore(path).read()
    assert fresh.snapshot() == writer.read().snapshot()
    assert _rules(fresh) == [_jail_rule(n) for n in range(5)]
    assert fresh.containers["jail:j4"] == 5 and fresh.next_seq == 6


def test_a_removal_is_one_journal_line(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = StateStore(path)
    for n in range(3):
        _add(store, _jail_rule(n))
    _remove(store, Filter(SubjectType.JAIL, "j1"))
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[3])["del"] == [2]
    assert _rules(StateStore(path).read()) == [_jail_rule(0), _jail_rule(2)]


def test_two_stores_interleave_through_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    first, second = StateStore(path), StateStore(path)
    for n in range(6):
        _add(first if n % 2 else second, _jail_rule(n))
    _remove(first, Filter(SubjectType.JAIL, "j2"))
    expected = {_jail_rule(n) for n in range(6)} - {_jail_rule(2)}
    assert set(_rules(second.read())) == expected  # second read only the lines appended
    assert set(_rules(StateStore(path).read())) == expected


def test_the_journal_is_folded_into_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = StateStore(path, journal_max=3)
    for n in range(10):
        _add(store, _jail_rule(n))
    assert len(path.read_text().splitlines()) <= 4
    assert len(StateStore(path).read()) == 10


def test_a_journal_longer_than_the_rules_is_folded(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = StateStore(path, journal_min=50)
    for _ in range(100):  # add and remove the same rule: 200 changes, one rule at most
        _add(store, _jail_rule(0))
        _remove(store, Filter(SubjectType.JAIL, "j0"))
    assert len(path.read_text().splitlines()) <= 51
    assert len(StateStore(path).read()) == 0


# --- damage ------------------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> StateStore:
    """A state file with a snapshot and three journal lines."""
    store = StateStore(tmp_path / "s.json")
    for n in range(4):
        _add(store, _jail_rule(n))
    return store


def test_a_torn_journal_line_is_dropped_with_a_warning(
    written: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    with written.path.open("a") as handle:
        handle.write('{"add": "5 jail:j')  # a writer killed half-way through its line
    with caplog.at_level(logging.WARNING):
        table = StateStore(written.path).read()
    assert _rules(table) == [_jail_rule(n) for n in range(4)]
    assert "journal line 4 is cut short" in caplog.text


@pytest.mark.parametrize(
    ("damage", "kept", "reason"),
    [
        (lambda data: b"", 0, "the file is empty"),
        (lambda data: data[:40], 0, "snapshot is cut short"),
        (lambda data: b"\x00garbage\xff" * 50, 0, "not JSON"),
        (lambda data: b"{not json", 0, "not JSON"),
        (lambda data: data.replace(b"j2:maxproc:deny=2", b"j2:maxproc:deny=9"), 2, "checksum"),
        (lambda data: data[: data.rindex(b"\n", 0, -1) + 1], 3, "shrank"),  # a whole line lost
        (lambda data: data + b"not a journal line\n", 4, "journal line 4"),
    ],
)
def test_damage_is_found_logged_once_and_repaired(
    written: StateStore,
    caplog: pytest.LogCaptureFixture,
    damage: object,
    kept: int,
    reason: str,
) -> None:
    assert callable(damage)
    generation = written.status().generation
    assert generation is not None
    written.path.write_bytes(damage(written.path.read_bytes()))  # in place: same inode
    # ... a while after the last write (within one timestamp tick stat could not tell)
    info = written.path.stat()
    os.utime(written.path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    with caplog.at_level(logging.WARNING):
        table = written.read()
        assert len(table) == kept
        written.read()
        StateStore(written.path).read()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text  # the repair rewrote the file: nobody finds it again
    assert "corrupt" in errors[0].getMessage() and reason in errors[0].getMessage()
    status = StateStore(written.path).status()
    assert status.generation not in (None, generation)
    assert status.damage is not None and reason in status.damage
    assert written.damage_found == 1
    # the next change is recorded on the repaired file
    _add(written, _jail_rule(9))
    assert _rules(StateStore(written.path).read())[-1] == _jail_rule(9)


def test_a_removed_state_file_is_a_new_generation(written: StateStore) -> None:
    generation = written.status().generation
    os.unlink(written.path)
    assert written.status().generation is None
    assert len(written.read()) == 0
    _add(written, _jail_rule(1))
    assert written.status().generation not in (None, generation)
    assert written.status().damage is None


def test_folding_keeps_the_generation(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json", journal_max=2)
    _add(store, _jail_rule(0))
    generation = store.status().generation
    for n in range(1, 6):
        _add(store, _jail_rule(n))
    assert StateStore(store.path).status().generation == generation


# --- files written by the version before checksums ---------------------------------------------


def test_a_version_1_file_is_read_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    snapshot = {"version": 1, "next_seq": 2, "rules": ["1 jail:j0:maxproc:deny=0/jail"],
                "containers": {"jail:j0": 1}, "exceeded": [], "rate_windows": {}}  # fmt: skip
    journal = {"add": "2 jail:j1:maxproc:deny=1/jail", "container": ["jail:j1", 2]}
    path.write_text(json.dumps(snapshot) + "\n" + json.dumps(journal) + "\n")
    store = StateStore(path)
    assert _rules(store.read()) == [_jail_rule(0), _jail_rule(1)]
    _add(store, _jail_rule(2))
    assert path.read_text().startswith('{"version":2,')
    assert _rules(StateStore(path).read()) == [_jail_rule(n) for n in range(3)]


def test_an_old_state_file_without_a_final_newline_takes_a_change(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": 1, "rules": ["1 jail:j0:maxproc:deny=0/jail"]}))
    store = StateStore(path)
    _add(store, _jail_rule(1))
    assert _rules(StateStore(path).read()) == [_jail_rule(0), _jail_rule(1)]


def test_malformed_entries_of_a_version_1_file_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.json"
    good = "2 user:80:maxproc:deny=10/user"
    path.write_text(
        json.dumps(
            {
                "rules": [
                    good,
                    "1 group:0:maxproc:deny=1/user",
                    {"seq": 3},
                    "x user:80:maxproc:deny=10/user",
                    "4 process:x:maxproc:deny=1/process",
                    "5 user:80:maxproc:deny=-1/user",
                    "6 user:80:maxproc:deny=1",
                    "7 user::maxproc:deny=1/user",
                    "8 jail:a/b=c:maxproc:deny=1/jail",
                ],
                "containers": {"user:80": "old"},
                "exceeded": [1, "a"],
                "rate_windows": {"log": {"start": "soon"}, "devctl": 3},
                "next_seq": "many",
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        table = StateStore(path).read()
    jail_rule = Rule(
        SubjectType.JAIL, "a/b=c", Resource.MAXPROC, Action.DENY, 1, SubjectType.JAIL
    )  # names may hold '/' and '='
    assert list(table.stored()) == [
        StoredRule(rule("user:80:maxproc:deny=10"), 2),
        StoredRule(jail_rule, 8),
    ]
    assert table.next_seq == 9
    assert table.containers == {}
    assert table.exceeded == {"a"}
    assert table.rate_windows == {}
    assert "dropping a malformed rule entry" in caplog.text


def test_a_version_1_file_of_the_wrong_shape_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"rules": {"a": 1}, "containers": [], "exceeded": "x"}))
    assert len(StateStore(path).read()) == 0
