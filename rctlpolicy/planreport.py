"""What `plan` and `apply` print: the text and the JSON document (pure).

A rule whose amount changes (the same subject, resource, action and per, a new amount) is one
change, shown once as `~ old -> new`: a deny the kernel replaces on add (rctlpolicy.plan), or
any other action whose old rule is removed as the new one is added. Additions and removals
are the rest. The JSON document's schema is in rctlpolicy(8), "PLAN AND APPLY DOCUMENTS";
`FORMAT_VERSION` changes when a key changes meaning or goes away (new keys may be added).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.formats import clean, where
from rctlpolicy.model import Resource, Rule, SubjectType
from rctlpolicy.plan import Plan

FORMAT_VERSION = 1
IN_SYNC = "No changes. The kernel's rules match the policy."

#: What a change keeps: everything but the amount.
_ChangeKey = tuple[SubjectType, str, Resource, str, SubjectType]


@dataclass(frozen=True, slots=True)
class Change:
    """A rule in force replaced by one with another amount."""

    old: Rule
    new: Rule


@dataclass(frozen=True, slots=True)
class Changes:
    """A plan as it is shown: additions, changed amounts and removals, each rule once."""

    add: tuple[Rule, ...] = ()
    change: tuple[Change, ...] = ()
    remove: tuple[Rule, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.remove)

    def lines(self) -> list[str]:
        """`-`, `~` and `+` lines in canonical form: removals, changes, then additions."""
        out = [f"- {rule.canonical}" for rule in self.remove]
        out.extend(f"~ {c.old.canonical} -> {c.new.canonical}" for c in self.change)
        out.extend(f"+ {rule.canonical}" for rule in self.add)
        return out

    def counts(self) -> dict[str, int]:
        return {"add": len(self.add), "change": len(self.change), "remove": len(self.remove)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "add": [rule.canonical for rule in self.add],
            "change": [{"old": c.old.canonical, "new": c.new.canonical} for c in self.change],
            "remove": [rule.canonical for rule in self.remove],
        }


def _change_key(rule: Rule) -> _ChangeKey:
    return (rule.subject, rule.subject_id, rule.resource, rule.action.value, rule.per)


def changes_of(plan: Plan) -> Changes:
    """Group a plan's calls as a reader counts them (see the module's docstring). A removal
    and an addition pair up only when each is the one of its kind for that key."""
    removed: defaultdict[_ChangeKey, list[Rule]] = defaultdict(list)
    added: defaultdict[_ChangeKey, list[Rule]] = defaultdict(list)
    for rule in plan.to_remove:
        removed[_change_key(rule)].append(rule)
    for rule in plan.to_add:
        added[_change_key(rule)].append(rule)
    paired: dict[str, Rule] = {}  # new canonical -> old rule
    for key, olds in removed.items():
        news = added.get(key, [])
        if len(olds) == 1 and len(news) == 1:
            paired[news[0].canonical] = olds[0]
    replaced = {new.canonical: old for old, new in plan.replaced}
    paired_old = {old.canonical for old in paired.values()}
    # In the policy's order, as the additions are.
    change = [
        Change(replaced.get(r.canonical) or paired[r.canonical], r)
        for r in plan.to_add
        if r.canonical in replaced or r.canonical in paired
    ]
    return Changes(
        add=tuple(
            r for r in plan.to_add if r.canonical not in paired and r.canonical not in replaced
        ),
        change=tuple(change),
        remove=tuple(r for r in plan.to_remove if r.canonical not in paired_old),
    )


def applied_changes(
    planned: Changes, added: Iterable[Rule], removed: Iterable[Rule], plan: Plan
) -> Changes:
    """What an apply did, grouped as its plan was: a change counts when its new rule was
    added and its old one left the kernel (removed, or replaced by the kernel itself)."""
    added_set = {rule.canonical for rule in added}
    removed_set = {rule.canonical for rule in removed}
    kernel_replaced = {old.canonical for old, _ in plan.replaced}
    return Changes(
        add=tuple(r for r in planned.add if r.canonical in added_set),
        change=tuple(
            c
            for c in planned.change
            if c.new.canonical in added_set
            and (c.old.canonical in removed_set or c.old.canonical in kernel_replaced)
        ),
        remove=tuple(r for r in planned.remove if r.canonical in removed_set),
    )


def summary_line(changes: Changes) -> str:
    return (
        f"Plan: {len(changes.add)} to add, {len(changes.change)} to change, "
        f"{len(changes.remove)} to remove."
    )


def plan_text(changes: Changes) -> list[str]:
    """What `plan` prints on stdout after the optional first line."""
    if changes.empty:
        return [IN_SYNC]
    return [*changes.lines(), "", summary_line(changes)]


def apply_text(done: Changes, failed: int) -> list[str]:
    """What `apply` prints on stdout after the optional first line."""
    if done.empty and not failed:
        return [IN_SYNC]
    tail = f", {failed} failed" if failed else ""
    return [
        *done.lines(),
        "",
        f"Applied: {len(done.add)} added, {len(done.change)} changed, "
        f"{len(done.remove)} removed{tail}.",
    ]


def warning_text(warning: Diagnostic) -> str:
    """A policy warning plan and apply repeat from lint (a pattern that matches no jail)."""
    place = f"{where(warning)}: " if warning.line else ""
    return f"rctlpolicy: warning: {place}{clean(warning.message)}"


@dataclass(slots=True)
class PlanDocument:
    """The JSON document of `plan --format json` and `apply --format json`, built as the
    command goes (a failure part-way still makes one whole document)."""

    command: str
    paths: Sequence[str] = ()
    #: "arguments" (PATHs given), "config" (the config file's rules-dir) or "default".
    rules_source: str = "arguments"
    config_file: str | None = None
    state_dir: str | None = None
    prune: bool = False
    in_force: Sequence[str] | None = None
    changes: Changes | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    applied: Changes | None = None
    failed: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        changes = self.changes
        document: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "command": self.command,
            "ok": self.error is None and not self.diagnostics and not self.failed,
            "error": self.error,
            "rules": {
                "paths": list(self.paths),
                "source": self.rules_source,
                "config_file": self.config_file,
            },
            "state_dir": self.state_dir,
            "prune": self.prune,
            "in_sync": None if changes is None else changes.empty,
            "summary": None if changes is None else changes.counts(),
            "changes": None if changes is None else changes.as_dict(),
            "in_force": None if self.in_force is None else list(self.in_force),
            "warnings": [d.as_dict() for d in self.warnings],
            "diagnostics": [d.as_dict() for d in self.diagnostics],
        }
        if self.command == "apply":
            document["applied"] = None if self.applied is None else self.applied.as_dict()
            document["failed"] = list(self.failed)
        return document
