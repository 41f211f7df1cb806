"""Make the kernel match a policy: the side-effecting half of plan/apply.

Ownership: the canonical rules an apply added are recorded in a state file, so a later apply
removes only its own rules. The intent (rules about to be added) is recorded before the kernel
is touched, so an apply interrupted at any point converges on the next run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rctlpolicy.kernel.base import Kernel, KernelError
from rctlpolicy.model import Filter, Rule
from rctlpolicy.plan import Plan, make_plan
from rctlpolicy.statefile import JsonStateFile

DEFAULT_STATE_DIR = Path("/var/db/rctlpolicy")


@dataclass(slots=True)
class ApplyReport:
    plan: Plan
    added: list[Rule] = field(default_factory=list)
    removed: list[Rule] = field(default_factory=list)
    failures: list[tuple[Rule, KernelError]] = field(default_factory=list)
    #: How many kernel calls were made (listing included): the bench counts them.
    kernel_calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


class AppliedRules:
    """The state file holding the canonical rules earlier applies added."""

    def __init__(self, path: Path) -> None:
        self.file = JsonStateFile(path)

    def owned(self) -> set[str]:
        return set(self.file.read().get("owned", []))


def exact_filter(rule: Rule) -> Filter:
    """A filter matching only this rule (per given explicitly: it is a wildcard otherwise)."""
    return rule.as_filter()


def plan_for(kernel: Kernel, desired: Iterable[Rule], applied: AppliedRules,
             prune: bool = False) -> Plan:
    return make_plan(desired, kernel.rules(Filter()), applied.owned(), prune)


def apply_rules(kernel: Kernel, desired: Iterable[Rule], applied: AppliedRules,
                prune: bool = False) -> ApplyReport:
    """Plan and carry it out under the state file's lock (two applies never interleave)."""
    desired_list = list(desired)
    with applied.file.locked():
        data = applied.file.load()
        owned = set(data.get("owned", []))
        in_force = kernel.rules(Filter())
        plan = make_plan(desired_list, in_force, owned, prune)
        report = ApplyReport(plan, kernel_calls=1)
        if plan.empty:
            current = {rule.canonical for rule in in_force}
            if owned - current:
                data["owned"] = sorted(owned & current)
                applied.file.save(data)
            return report
        data["owned"] = sorted(owned | {rule.canonical for rule in plan.to_add})
        applied.file.save(data)  # the intent, before the kernel changes

        for rule in plan.to_add:
            report.kernel_calls += 1
            try:
                kernel.add_rule(rule)
            except KernelError as error:
                report.failures.append((rule, error))
            else:
                report.added.append(rule)
        for rule in plan.to_remove:
            report.kernel_calls += 1
            try:
                kernel.remove_rules(exact_filter(rule))
            except KernelError as error:
                if error.errno_name != "ESRCH":  # already gone is what we wanted
                    report.failures.append((rule, error))
                    continue
            report.removed.append(rule)

        current = {rule.canonical for rule in in_force}
        kept = (owned & current) | {rule.canonical for rule in report.added}
        kept -= {rule.canonical for rule in report.removed}
        added = {rule.canonical for rule in report.added}
        kept -= {old.canonical for old, new in plan.replaced if new.canonical in added}
        data["owned"] = sorted(kept)
        applied.file.save(data)
    return report
