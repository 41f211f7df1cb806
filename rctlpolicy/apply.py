"""Make the kernel match a policy: the side-effecting half of plan/apply.

Ownership: the canonical rules an apply added are recorded in a state file, so a later apply
removes only its own rules. The intent (rules about to be added) is recorded before the kernel
is touched, and the outcome after, so an apply interrupted at any point converges on the next
run: an owned rule that is not in force is forgotten, one that is stays owned.

The one cost of recording the intent first: a rule that an interrupted apply meant to add, and
that another tool adds before the next apply, is taken for ours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rctlpolicy.kernel.base import Kernel, KernelError
from rctlpolicy.model import EVERYTHING, Rule
from rctlpolicy.plan import Plan, make_plan
from rctlpolicy.statefile import JsonStateFile

log = logging.getLogger("rctlpolicy.apply")

DEFAULT_STATE_DIR = Path("/var/db/rctlpolicy")
#: The file in the state directory that holds the rules applies added.
APPLIED_FILE = "applied.json"

#: Refusals that every later call would get too (RACCT off, not root): the apply stops.
FATAL_ERRNOS = frozenset({"ENOSYS", "EPERM"})


@dataclass(slots=True)
class ApplyReport:
    """What an apply did: the plan it followed and each call's outcome."""

    plan: Plan
    added: list[Rule] = field(default_factory=list)
    removed: list[Rule] = field(default_factory=list)
    failures: list[tuple[Rule, KernelError]] = field(default_factory=list)
    #: How many Kernel calls were made, the listing included.
    kernel_calls: int = 0

    @property
    def ok(self) -> bool:
        """True when every planned change was made."""
        return not self.failures

    @property
    def replaced(self) -> list[tuple[Rule, Rule]]:
        """The (old, new) denies the kernel replaced because the new one was added."""
        added = {rule.canonical for rule in self.added}
        return [(old, new) for old, new in self.plan.replaced if new.canonical in added]


class AppliedRules:
    """The state file holding the canonical rules earlier applies added."""

    def __init__(self, path: Path) -> None:
        self.file = JsonStateFile(path)

    @classmethod
    def in_dir(cls, state_dir: Path) -> AppliedRules:
        """The state file of a state directory (`applied.json`)."""
        return cls(state_dir / APPLIED_FILE)

    @property
    def path(self) -> Path:
        """Where the state file is."""
        return self.file.path

    def owned(self) -> set[str]:
        """The rules earlier applies added, read without the lock: the file is replaced by
        rename, so a reader sees one whole version, and `plan` needs no write access."""
        return _owned_of(self.file.load(), self.file.path)


def _owned_of(data: dict[str, Any], path: Path) -> set[str]:
    owned = data.get("owned", [])
    if not isinstance(owned, list) or not all(isinstance(item, str) for item in owned):
        log.warning("%s: 'owned' is not a list of rules; treating it as empty", path)
        return set()
    return set(owned)


def _save_owned(applied: AppliedRules, data: dict[str, Any], owned: set[str]) -> None:
    data["owned"] = sorted(owned)
    applied.file.save(data)


def plan_for(
    kernel: Kernel, desired: Iterable[Rule], applied: AppliedRules, prune: bool = False
) -> Plan:
    """What `apply_rules` would do now (one listing call, nothing changed)."""
    return make_plan(desired, kernel.rules(EVERYTHING), applied.owned(), prune)


def apply_rules(
    kernel: Kernel, desired: Iterable[Rule], applied: AppliedRules, prune: bool = False
) -> ApplyReport:
    """Plan and carry it out under the state file's lock (two applies never interleave).

    A rule the kernel refuses is reported in `failures` and the rest is applied. A refusal
    that every call would get (ENOSYS, EPERM) stops the apply: the state is recorded and the
    KernelError raised. Anything else raised (an interrupt) leaves the recorded intent, which
    the next apply reconciles.
    """
    desired_list = list(desired)
    with applied.file.locked():
        data = applied.file.load()
        owned = _owned_of(data, applied.path)
        in_force = kernel.rules(EVERYTHING)
        current = {rule.canonical for rule in in_force}
        plan = make_plan(desired_list, in_force, owned, prune)
        report = ApplyReport(plan, kernel_calls=1)
        if plan.empty:
            if not owned <= current:  # forget rules that left the kernel some other way
                _save_owned(applied, data, owned & current)
            return report
        # The intent, before the kernel changes: an interrupted apply leaves these owned.
        _save_owned(applied, data, owned | {rule.canonical for rule in plan.to_add})
        try:
            _carry_out(kernel, plan, report)
        except KernelError:
            # A fatal refusal: record what was done, then let the caller say why it stopped.
            _save_owned(applied, data, _owned_after(owned, current, report))
            raise
        # (Anything else raised, an interrupt, leaves the intent for the next apply: a call
        # cut short may or may not have reached the kernel.)
        _save_owned(applied, data, _owned_after(owned, current, report))
    return report


def _carry_out(kernel: Kernel, plan: Plan, report: ApplyReport) -> None:
    # Additions first: a changed limit is never absent while it is being changed.
    for rule in plan.to_add:
        report.kernel_calls += 1
        try:
            kernel.add_rule(rule)
        except KernelError as error:
            report.failures.append((rule, error))
            if error.errno_name in FATAL_ERRNOS:
                raise
        else:
            report.added.append(rule)
    for rule in plan.to_remove:
        report.kernel_calls += 1
        try:
            kernel.remove_rules(rule.as_filter())
        except KernelError as error:
            if error.errno_name != "ESRCH":  # already gone is what we wanted
                report.failures.append((rule, error))
                if error.errno_name in FATAL_ERRNOS:
                    raise
                continue
        report.removed.append(rule)


def _owned_after(owned: set[str], current: set[str], report: ApplyReport) -> set[str]:
    """Ours after the calls: what we owned and is still in force, plus what we added, minus
    what we removed and the denies our additions replaced."""
    kept = (owned & current) | {rule.canonical for rule in report.added}
    kept -= {rule.canonical for rule in report.removed}
    kept -= {old.canonical for old, _ in report.replaced}
    return kept
