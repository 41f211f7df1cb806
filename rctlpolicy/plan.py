"""Desired rules vs. rules in force -> what to add and remove (pure).

Rules are compared by canonical form, as sets. An earlier apply's rules are "owned": only those
are removed when the policy drops them, never rules that other tools (jail managers, rc.d/rctl)
put into the kernel, unless pruning is asked for. A deny added for a subject, resource and per
that already has a deny with another amount replaces it in the kernel (kern_rctl.c:
rctl_rule_add), so such a rule is listed as replaced and needs no removal call.

`Rule.canonical` is built afresh on every access; each rule's text is taken once here, which
keeps a no-op plan of 10,000 rules a small fraction of the time it takes to parse them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.model import Action, Resource, Rule, SubjectType

#: What a deny replaces on add: the same subject, id, resource and per, any amount.
DenyKey = tuple[SubjectType, str, Resource, SubjectType]


@dataclass(frozen=True, slots=True)
class Plan:
    """What an apply does: rules to add, owned rules to remove, denies the kernel replaces."""

    to_add: tuple[Rule, ...]
    to_remove: tuple[Rule, ...]
    #: (rule in force, the added deny that replaces it).
    replaced: tuple[tuple[Rule, Rule], ...]
    #: Rules in force that the policy does not name and that we did not add (left alone).
    foreign: tuple[Rule, ...]
    #: Rules in force that the policy names (left as they are).
    kept: tuple[Rule, ...] = ()

    @property
    def in_force(self) -> list[Rule]:
        """The rules in force when the plan was made, in the kernel's order."""
        old = [old for old, _ in self.replaced]
        return [*self.kept, *self.to_remove, *old, *self.foreign]

    @property
    def empty(self) -> bool:
        """True when the kernel already matches the policy (apply would make no call)."""
        return not (self.to_add or self.to_remove or self.replaced)

    def lines(self) -> list[str]:
        """`+`/`-` lines in canonical form: removals, then replacements, then additions."""
        out = [f"- {rule.canonical}" for rule in self.to_remove]
        for old, new in self.replaced:
            out.append(f"- {old.canonical}  (replaced by {new.canonical})")
        out.extend(f"+ {rule.canonical}" for rule in self.to_add)
        return out


def _deny_key(rule: Rule) -> DenyKey:
    return (rule.subject, rule.subject_id, rule.resource, rule.per)


def _normalized(rules: Iterable[Rule]) -> dict[str, Rule]:
    """What the kernel would hold after adding `rules` in order, canonical -> rule, in the
    order it would list them: exact duplicates collapse, and for deny only the last amount
    per (subject, id, resource, per) survives."""
    by_canonical: dict[str, Rule] = {}
    last_deny: dict[DenyKey, str] = {}
    for rule in rules:
        canonical = rule.canonical
        if rule.action is Action.DENY:
            key = _deny_key(rule)
            previous = last_deny.get(key)
            if previous is not None and previous != canonical:
                by_canonical.pop(previous, None)
            last_deny[key] = canonical
        # Re-inserting moves a repeated rule to where it was last added.
        by_canonical.pop(canonical, None)
        by_canonical[canonical] = rule
    return by_canonical


def make_plan(
    desired: Iterable[Rule], in_force: Iterable[Rule], owned: Iterable[str], prune: bool = False
) -> Plan:
    """Compare the policy's rules with the kernel's; `owned` holds the canonical texts of the
    rules earlier applies added (the only ones removed unless `prune`)."""
    with no_cyclic_gc():
        return _make_plan(desired, in_force, owned, prune)


def _make_plan(
    desired: Iterable[Rule], in_force: Iterable[Rule], owned: Iterable[str], prune: bool
) -> Plan:
    wanted = _normalized(desired)
    current = {rule.canonical: rule for rule in in_force}
    owned_set = owned if isinstance(owned, set | frozenset) else set(owned)
    to_add = tuple(rule for canonical, rule in wanted.items() if canonical not in current)
    denies_added = {_deny_key(rule): rule for rule in to_add if rule.action is Action.DENY}
    replaced: list[tuple[Rule, Rule]] = []
    to_remove: list[Rule] = []
    foreign: list[Rule] = []
    kept: list[Rule] = []
    for canonical, rule in current.items():
        if canonical in wanted:
            kept.append(rule)
            continue
        if denies_added and rule.action is Action.DENY:
            new = denies_added.get(_deny_key(rule))
            if new is not None:
                # The kernel drops the old deny when the new one is added: no removal call,
                # whoever added it (two denies for one key cannot both be in force).
                replaced.append((rule, new))
                continue
        if prune or canonical in owned_set:
            to_remove.append(rule)
        else:
            foreign.append(rule)
    return Plan(to_add, tuple(to_remove), tuple(replaced), tuple(foreign), tuple(kept))
