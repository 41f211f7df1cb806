"""Desired rules vs. rules in force -> what to add and remove (pure).

Rules are compared by canonical form, as sets. An earlier apply's rules are "owned": only those
are removed when the policy drops them, never rules that other tools (jail managers, rc.d/rctl)
put into the kernel, unless pruning is asked for. A deny added for a subject, resource and per
that already has a deny with another amount replaces it in the kernel (kern_rctl.c:
rctl_rule_add), so such a rule is listed as replaced and needs no removal call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rctlpolicy.model import Action, Rule


@dataclass(frozen=True, slots=True)
class Plan:
    to_add: tuple[Rule, ...]
    to_remove: tuple[Rule, ...]
    #: (rule in force, the added deny that replaces it).
    replaced: tuple[tuple[Rule, Rule], ...]
    #: Rules in force that the policy does not name and that we did not add (left alone).
    foreign: tuple[Rule, ...]

    @property
    def empty(self) -> bool:
        return not (self.to_add or self.to_remove or self.replaced)

    def lines(self) -> list[str]:
        """`+`/`-` lines in canonical form, removals first within each rule key."""
        out = [f"- {rule.canonical}" for rule in self.to_remove]
        for old, new in self.replaced:
            out.append(f"- {old.canonical}  (replaced by {new.canonical})")
        out.extend(f"+ {rule.canonical}" for rule in self.to_add)
        return out


def _deny_key(rule: Rule) -> tuple[object, ...]:
    return (rule.subject, rule.subject_id, rule.resource, rule.per)


def normalize_desired(rules: Iterable[Rule]) -> list[Rule]:
    """What the kernel would hold after adding `rules` in order: exact duplicates collapse,
    and for deny only the last amount per (subject, id, resource, per) survives."""
    by_canonical: dict[str, Rule] = {}
    last_deny: dict[tuple[object, ...], str] = {}
    for rule in rules:
        if rule.action is Action.DENY:
            previous = last_deny.get(_deny_key(rule))
            if previous is not None and previous != rule.canonical:
                by_canonical.pop(previous, None)
            last_deny[_deny_key(rule)] = rule.canonical
        by_canonical.pop(rule.canonical, None)
        by_canonical[rule.canonical] = rule
    return list(by_canonical.values())


def make_plan(
    desired: Iterable[Rule], in_force: Iterable[Rule], owned: Iterable[str], prune: bool = False
) -> Plan:
    wanted = normalize_desired(desired)
    wanted_set = {rule.canonical for rule in wanted}
    current = {rule.canonical: rule for rule in in_force}
    owned_set = set(owned)
    to_add = tuple(rule for rule in wanted if rule.canonical not in current)
    replaced: list[tuple[Rule, Rule]] = []
    replaced_set: set[str] = set()
    denies_added = {_deny_key(rule): rule for rule in to_add if rule.action is Action.DENY}
    for canonical, rule in current.items():
        if canonical in wanted_set or rule.action is not Action.DENY:
            continue
        new = denies_added.get(_deny_key(rule))
        if new is not None:
            replaced.append((rule, new))
            replaced_set.add(canonical)
    to_remove = tuple(
        rule
        for canonical, rule in current.items()
        if canonical not in wanted_set
        and canonical not in replaced_set
        and (prune or canonical in owned_set)
    )
    foreign = tuple(
        rule
        for canonical, rule in current.items()
        if canonical not in wanted_set and canonical not in owned_set and not prune
        and canonical not in replaced_set
    )
    return Plan(to_add, to_remove, tuple(replaced), foreign)
