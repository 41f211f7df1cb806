"""plan.py: desired vs. in-force rules, ownership, deny replacement (pure)."""

from __future__ import annotations

import pytest
from corpus_host import rule

from rctlpolicy.model import Rule
from rctlpolicy.plan import make_plan


def rules(*texts: str) -> list[Rule]:
    return [rule(t) for t in texts]


def test_in_sync_plan_is_empty() -> None:
    desired = rules("jail:db1:memoryuse:deny=100", "user:80:maxproc:deny=10")
    plan = make_plan(desired, desired, {r.canonical for r in desired})
    assert plan.empty
    assert plan.lines() == []


def test_adds_missing_and_removes_only_owned() -> None:
    desired = rules("jail:db1:memoryuse:deny=100")
    in_force = rules("jail:old:maxproc:deny=5", "jail:other:maxproc:deny=7")
    plan = make_plan(desired, in_force, owned={"jail:old:maxproc:deny=5"})
    assert [r.canonical for r in plan.to_add] == ["jail:db1:memoryuse:deny=100"]
    assert [r.canonical for r in plan.to_remove] == ["jail:old:maxproc:deny=5"]
    assert [r.canonical for r in plan.foreign] == ["jail:other:maxproc:deny=7"]
    assert plan.lines() == ["- jail:old:maxproc:deny=5", "+ jail:db1:memoryuse:deny=100"]


def test_prune_removes_foreign_rules_too() -> None:
    plan = make_plan([], rules("jail:other:maxproc:deny=7"), owned=set(), prune=True)
    assert [r.canonical for r in plan.to_remove] == ["jail:other:maxproc:deny=7"]


def test_deny_with_new_amount_replaces_old_in_kernel() -> None:
    old = rule("jail:db1:memoryuse:deny=100")
    new = rule("jail:db1:memoryuse:deny=200")
    plan = make_plan([new], [old], owned={old.canonical})
    assert plan.to_add == (new,)
    assert plan.to_remove == ()  # the kernel removes it on add
    assert plan.replaced == ((old, new),)
    assert "- jail:db1:memoryuse:deny=100  (replaced by jail:db1:memoryuse:deny=200)" in (
        plan.lines()
    )


def test_log_rules_with_other_amounts_coexist() -> None:
    old = rule("jail:db1:memoryuse:log=100")
    new = rule("jail:db1:memoryuse:log=200")
    plan = make_plan([new], [old], owned={old.canonical})
    assert plan.to_add == (new,)
    assert plan.to_remove == (old,)
    assert plan.replaced == ()


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("jail:a:maxproc:deny=1", "jail:a:maxproc:deny=2"), ["jail:a:maxproc:deny=2"]),
        (
            ("jail:a:maxproc:deny=1", "jail:a:maxproc:deny=1/process"),
            ["jail:a:maxproc:deny=1", "jail:a:maxproc:deny=1/process"],
        ),
        (
            ("jail:a:maxproc:log=1", "jail:a:maxproc:log=2", "jail:a:maxproc:log=1"),
            ["jail:a:maxproc:log=2", "jail:a:maxproc:log=1"],
        ),
    ],
)
def test_desired_rules_are_added_as_the_kernel_would_hold_them(
    texts: tuple[str, ...], expected: list[str]
) -> None:
    plan = make_plan(rules(*texts), [], owned=())
    assert [r.canonical for r in plan.to_add] == expected
