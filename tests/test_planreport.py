"""planreport.py: a plan grouped as a reader counts it, its text and its JSON document (pure)."""

from __future__ import annotations

import json

import pytest
from corpus_host import rule

from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.model import Severity
from rctlpolicy.plan import make_plan
from rctlpolicy.planreport import (
    FORMAT_VERSION,
    IN_SYNC,
    Change,
    Changes,
    PlanDocument,
    applied_changes,
    apply_text,
    changes_of,
    plan_text,
    warning_text,
)

#: (desired, in force, owned, what the plan shows).
CASES: list[tuple[list[str], list[str], list[str], list[str]]] = [
    ([], [], [], []),
    (["jail:a:maxproc:deny=1"], [], [], ["+ jail:a:maxproc:deny=1"]),
    # A deny's new amount: the kernel replaces it on add, whoever added the old one.
    (
        ["jail:a:maxproc:deny=2"],
        ["jail:a:maxproc:deny=1"],
        [],
        ["~ jail:a:maxproc:deny=1 -> jail:a:maxproc:deny=2"],
    ),
    # Another action's new amount: a change when the old rule is ours to remove.
    (
        ["jail:a:maxproc:log=2"],
        ["jail:a:maxproc:log=1"],
        ["jail:a:maxproc:log=1"],
        ["~ jail:a:maxproc:log=1 -> jail:a:maxproc:log=2"],
    ),
    # ... and an addition beside a rule left alone when it is not.
    (["jail:a:maxproc:log=2"], ["jail:a:maxproc:log=1"], [], ["+ jail:a:maxproc:log=2"]),
    # Two old amounts for one new one: which one changed is not known, so no pairing.
    (
        ["jail:a:maxproc:log=3"],
        ["jail:a:maxproc:log=1", "jail:a:maxproc:log=2"],
        ["jail:a:maxproc:log=1", "jail:a:maxproc:log=2"],
        ["- jail:a:maxproc:log=1", "- jail:a:maxproc:log=2", "+ jail:a:maxproc:log=3"],
    ),
    # Another per, action or subject is not the same rule.
    (
        ["jail:a:openfiles:deny=2/process", "jail:b:maxproc:log=1"],
        ["jail:a:openfiles:deny=1", "jail:a:maxproc:log=1"],
        ["jail:a:openfiles:deny=1", "jail:a:maxproc:log=1"],
        [
            "- jail:a:openfiles:deny=1",
            "- jail:a:maxproc:log=1",
            "+ jail:a:openfiles:deny=2/process",
            "+ jail:b:maxproc:log=1",
        ],
    ),
]


@pytest.mark.parametrize(("desired", "in_force", "owned", "lines"), CASES)
def test_changes_group_a_plan_as_a_reader_counts_it(
    desired: list[str], in_force: list[str], owned: list[str], lines: list[str]
) -> None:
    plan = make_plan([rule(t) for t in desired], [rule(t) for t in in_force], set(owned))
    changes = changes_of(plan)
    assert changes.lines() == lines
    assert changes.empty == (not lines)
    assert sorted(r.canonical for r in plan.in_force) == sorted(in_force)


def test_plan_text_says_in_sync_or_ends_with_the_counts() -> None:
    assert plan_text(Changes()) == [IN_SYNC]
    assert IN_SYNC == "No changes. The kernel's rules match the policy."
    changes = Changes(
        add=(rule("jail:a:maxproc:deny=1"),),
        change=(Change(rule("jail:b:maxproc:deny=1"), rule("jail:b:maxproc:deny=2")),),
        remove=(rule("jail:c:maxproc:deny=1"), rule("jail:d:maxproc:deny=1")),
    )
    assert plan_text(changes) == [
        "- jail:c:maxproc:deny=1",
        "- jail:d:maxproc:deny=1",
        "~ jail:b:maxproc:deny=1 -> jail:b:maxproc:deny=2",
        "+ jail:a:maxproc:deny=1",
        "",
        "Plan: 1 to add, 1 to change, 2 to remove.",
    ]


def test_apply_text_counts_what_was_done() -> None:
    assert apply_text(Changes(), 0) == [IN_SYNC]
    assert apply_text(Changes(), 2) == ["", "Applied: 0 added, 0 changed, 0 removed, 2 failed."]
    done = Changes(add=(rule("jail:a:maxproc:deny=1"),))
    assert apply_text(done, 0) == [
        "+ jail:a:maxproc:deny=1",
        "",
        "Applied: 1 added, 0 changed, 0 removed.",
    ]


def test_applied_changes_keep_only_what_the_kernel_took() -> None:
    plan = make_plan(
        [rule("jail:a:maxproc:log=2"), rule("jail:b:maxproc:deny=2"), rule("jail:c:nthr:deny=1")],
        [rule("jail:a:maxproc:log=1"), rule("jail:b:maxproc:deny=1"), rule("jail:d:nthr:deny=1")],
        {"jail:a:maxproc:log=1", "jail:d:nthr:deny=1"},
    )
    planned = changes_of(plan)
    assert [c.new.canonical for c in planned.change] == [
        "jail:a:maxproc:log=2",
        "jail:b:maxproc:deny=2",
    ]
    # The log's old rule was not removed, the nthr rule was refused: only the deny counts.
    done = applied_changes(
        planned,
        added=[rule("jail:a:maxproc:log=2"), rule("jail:b:maxproc:deny=2")],
        removed=[rule("jail:d:nthr:deny=1")],
        plan=plan,
    )
    assert done.lines() == [
        "- jail:d:nthr:deny=1",
        "~ jail:b:maxproc:deny=1 -> jail:b:maxproc:deny=2",
    ]


def test_a_warning_names_its_place() -> None:
    warning = Diagnostic("p.yaml", 2, 11, Severity.WARNING, "jail-pattern-unmatched", "no jail")
    assert warning_text(warning) == "rctlpolicy: warning: p.yaml:2:11: no jail"
    assert warning_text(warning._replace(line=0)) == "rctlpolicy: warning: no jail"


def test_the_document_has_every_key_even_when_the_command_stopped_early() -> None:
    stopped = PlanDocument("plan", paths=["rules"], error="rules: No such file or directory")
    document = json.loads(json.dumps(stopped.as_dict()))
    assert document["format_version"] == FORMAT_VERSION == 1
    assert (document["ok"], document["in_sync"], document["changes"]) == (False, None, None)
    assert "applied" not in document
    applied = PlanDocument("apply", changes=Changes(), applied=Changes()).as_dict()
    assert applied["ok"] is True
    assert applied["applied"] == {"add": [], "change": [], "remove": []}
    assert applied["summary"] == {"add": 0, "change": 0, "remove": 0}
