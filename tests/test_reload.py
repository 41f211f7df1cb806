"""The reload gate: when a changed rules directory may be applied. Time is moved by hand (a
ManualClock), so nothing here sleeps; the daemon tests drive the same gate through real files."""

from __future__ import annotations

import pytest
from corpus_host import rule

from rctlpolicy.clock import ManualClock
from rctlpolicy.policyload import FileMark, Fingerprint
from rctlpolicy.reload import ReloadGate, Step, held_back, removals

SETTLE, DEBOUNCE, SAVE_LIMIT = 2.0, 0.3, 3.0


def fingerprint(digest: str, complete: bool = True, name: str = "rctl.conf") -> Fingerprint:
    return Fingerprint(((f"/rules/{name}", FileMark(len(digest), 1, digest, complete)),))


class Gate:
    """A gate and its clock, with the calls the reload thread makes."""

    def __init__(self, applied: Fingerprint | None = None) -> None:
        self.clock = ManualClock()
        self.gate = ReloadGate(SETTLE, DEBOUNCE, SAVE_LIMIT)
        self.gate.finished(applied if applied is not None else fingerprint("v0"))

    def at_next_check(self, seen: Fingerprint, saving: str | None = None) -> Step:
        """Move the clock to the gate's next look and look."""
        due = self.gate.next_check
        assert due is not None, "nothing pending"
        self.clock.advance(max(0.0, due - self.clock.monotonic()))
        return self.gate.check(seen, saving, self.clock.monotonic()).step

    def poke(self) -> None:
        self.gate.poke(self.clock.monotonic())


def test_a_change_is_loaded_once_it_stayed_the_same_for_the_settle_period() -> None:
    g = Gate()
    g.poke()
    assert g.gate.pending
    assert g.at_next_check(fingerprint("v1")) is Step.WAIT  # first seen: settling starts
    assert g.gate.next_check == pytest.approx(g.clock.monotonic() + SETTLE)
    assert g.at_next_check(fingerprint("v1")) is Step.LOAD
    assert g.gate.loaded(fingerprint("v1"), g.clock.monotonic())
    g.gate.finished(fingerprint("v1"))
    assert not g.gate.pending and g.gate.next_check is None


def test_a_file_written_in_pieces_never_settles_until_the_writer_stops() -> None:
    g = Gate()
    g.poke()
    for piece in range(1, 20):  # a new piece before each settle period ends
        g.clock.advance(0.5)
        g.poke()
        due = g.gate.next_check
        assert due is not None
        g.clock.advance(due - g.clock.monotonic())
        assert g.gate.check(fingerprint(f"v{piece}"), None, g.clock.monotonic()).step is Step.WAIT
    assert g.at_next_check(fingerprint("v19")) is Step.LOAD


def test_a_burst_of_events_is_one_look_after_the_debounce() -> None:
    g = Gate()
    for _ in range(50):
        g.poke()
        g.clock.advance(0.01)
    assert g.gate.next_check == pytest.approx(g.clock.monotonic() - 0.01 + DEBOUNCE)


def test_an_rctl_conf_without_its_final_newline_waits_for_it() -> None:
    g = Gate()
    g.poke()
    cut = fingerprint("jail:db1:memoryuse:deny=4", complete=False)
    assert g.at_next_check(cut) is Step.WAIT
    for _ in range(10):  # however long it stays so
        assert g.at_next_check(cut) is Step.WAIT
    verdict = g.gate.check(cut, None, g.clock.monotonic())
    assert verdict.reason is not None and "has no newline yet" in verdict.reason
    assert g.gate.pending
    done = fingerprint("jail:db1:memoryuse:deny=4g\n")
    assert g.at_next_check(done) is Step.WAIT
    assert g.at_next_check(done) is Step.LOAD


def test_an_editor_save_half_way_is_waited_for_up_to_the_limit() -> None:
    g = Gate()
    g.poke()
    empty = fingerprint("")
    assert g.at_next_check(empty, "p.yaml is empty") is Step.WAIT
    assert g.at_next_check(empty, "p.yaml is empty") is Step.WAIT
    g.clock.advance(SAVE_LIMIT)
    verdict = g.gate.check(empty, "p.yaml is empty", g.clock.monotonic())
    assert verdict.step is Step.LOAD
    assert verdict.reason is not None and "reloading anyway" in verdict.reason


def test_a_load_that_read_something_else_waits_again() -> None:
    g = Gate()
    g.poke()
    g.at_next_check(fingerprint("v1"))
    assert g.at_next_check(fingerprint("v1")) is Step.LOAD
    assert not g.gate.loaded(fingerprint("v2"), g.clock.monotonic())  # changed while read
    assert g.at_next_check(fingerprint("v2")) is Step.LOAD


def test_what_was_last_loaded_is_not_loaded_again() -> None:
    g = Gate(applied=fingerprint("v0"))
    g.poke()  # an event that changed nothing the policy is made of
    assert g.at_next_check(fingerprint("v0")) is Step.UNCHANGED
    assert not g.gate.pending


def test_a_policy_held_back_is_applied_when_seen_again_after_a_settle_period() -> None:
    g = Gate()
    g.poke()
    g.at_next_check(fingerprint("small"))
    assert g.at_next_check(fingerprint("small")) is Step.LOAD
    g.gate.hold(g.clock.monotonic())
    assert g.gate.pending
    assert g.at_next_check(fingerprint("small")) is Step.APPLY_HELD


def test_a_policy_held_back_that_changes_again_settles_anew() -> None:
    g = Gate()
    g.poke()
    g.at_next_check(fingerprint("small"))
    g.at_next_check(fingerprint("small"))
    g.gate.hold(g.clock.monotonic())
    verdict = g.gate.check(fingerprint("restored"), None, g.clock.monotonic())
    assert verdict.step is Step.WAIT and verdict.reason is not None
    assert g.at_next_check(fingerprint("restored")) is Step.LOAD  # not APPLY_HELD


@pytest.mark.parametrize(
    ("removed", "in_force", "held"),
    [(11, 20, True), (11, 22, False), (10, 12, False), (200, 300, True), (0, 0, False)],
)
def test_which_removals_are_held_back(removed: int, in_force: int, held: bool) -> None:
    assert held_back(removed, in_force) is held


def test_a_changed_amount_is_not_a_removal() -> None:
    old = [rule("jail:db1:maxproc:deny=100"), rule("jail:web1:maxproc:deny=50")]
    assert removals(old, [rule("jail:db1:maxproc:deny=200")]) == 1
    assert removals(old, [rule("jail:db1:maxproc:deny=1"), rule("jail:web1:maxproc:deny=2")]) == 0
    assert removals(old, []) == 2
