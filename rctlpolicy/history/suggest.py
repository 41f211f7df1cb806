"""Limits proposed from observed usage, the way Kubernetes' Vertical Pod Autoscaler does it:
a high percentile of the window plus a safety margin, rounded up to an amount a person would
write (`5g`, `512m`, `200`).

Only the resources worth limiting get a suggestion: memory, swap, processes, files, threads
and %CPU as `deny`, the four I/O rates as `throttle` (the only action the kernel allows on
them). A jail with fewer samples than asked gets none, and a line saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rctlpolicy.amounts import humanize_number
from rctlpolicy.history.store import percentile
from rctlpolicy.history.timeline import Timeline, format_time
from rctlpolicy.model import Action, Resource, Unit
from rctlpolicy.policy_model import Policy

#: The resources a suggestion is made for, and the action it proposes: throttle where the
#: kernel allows it (the four I/O rates, model.Resource.throttle_allowed), deny elsewhere.
SUGGESTED: dict[Resource, Action] = {
    resource: Action.THROTTLE if resource.throttle_allowed else Action.DENY
    for resource in (
        Resource.MEMORYUSE, Resource.VMEMORYUSE, Resource.SWAPUSE, Resource.MAXPROC,
        Resource.OPENFILES, Resource.NTHR, Resource.PCPU,
        Resource.READBPS, Resource.WRITEBPS, Resource.READIOPS, Resource.WRITEIOPS,
    )
}  # fmt: skip

#: Mantissas a byte amount is rounded up to, per unit (k, m, g, t): 5g, 512m, 96k.
_BYTE_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192,
               256, 384, 512, 768, 1024)  # fmt: skip
#: Mantissas a count is rounded up to, per power of ten: 30, 200, 1500.
_COUNT_STEPS = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
_SUFFIXES = ("", "k", "m", "g", "t", "p")


def readable_amount(value: float, unit: Unit) -> tuple[int, str]:
    """`value` rounded up to an amount a person would write: (the amount, its text)."""
    value = max(1.0, value)
    if unit in (Unit.BYTES, Unit.BYTES_PER_SECOND):
        power = 0
        while value >= 1024 and power < len(_SUFFIXES) - 1:
            value /= 1024
            power += 1
        step = next(s for s in _BYTE_STEPS if s >= value - 1e-9)
        if step == 1024 and power < len(_SUFFIXES) - 1:
            step, power = 1, power + 1
        return step * 1024**power, f"{step}{_SUFFIXES[power]}"
    scale = 10 ** max(0, math.floor(math.log10(value)))
    mantissa = next(s for s in _COUNT_STEPS if s * scale >= value - 1e-9)
    amount = math.ceil(mantissa * scale - 1e-9)
    return amount, str(amount)


@dataclass(frozen=True, slots=True)
class Evidence:
    samples: int
    p50: int
    p99: int
    max: int
    start: float
    end: float
    #: The percentile the amount came from, when it is not p99.
    percentile: float = 99.0
    at_percentile: int = 0

    def text(self, unit: Unit) -> str:
        def show(value: int) -> str:
            return (
                humanize_number(value)
                if unit in (Unit.BYTES, Unit.BYTES_PER_SECOND)
                else str(value)
            )

        chosen = (
            f", p{self.percentile:g} {show(self.at_percentile)}"
            if self.percentile not in (50.0, 99.0)
            else ""
        )
        return (
            f"{self.samples} samples, p50 {show(self.p50)}, p99 {show(self.p99)}{chosen}, "
            f"max {show(self.max)} ({format_time(self.start)} to {format_time(self.end)})"
        )


@dataclass(frozen=True, slots=True)
class Suggestion:
    jail: str
    resource: Resource
    action: Action
    amount: int
    #: The amount as written in the rule (`5g`).
    written: str
    evidence: Evidence

    @property
    def rule(self) -> str:
        return f"jail:{self.jail}:{self.resource}:{self.action}={self.written}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """An existing rule far from what the usage suggests."""

    rule: str
    jail: str
    resource: Resource
    verdict: str


@dataclass(frozen=True, slots=True)
class Suggestions:
    suggestions: list[Suggestion]
    skipped: list[tuple[str, str]]
    percentile: float
    margin: float
    min_samples: int
    interval: float
    start: float
    end: float
    source: str
    notes: list[str]

    def as_json(self, against: Sequence[Comparison] | None = None) -> dict[str, object]:
        document: dict[str, object] = {
            "suggestions": [
                {
                    "jail": s.jail,
                    "resource": str(s.resource),
                    "action": str(s.action),
                    "amount": s.amount,
                    "rule": s.rule,
                    "evidence": {
                        "samples": s.evidence.samples,
                        "p50": s.evidence.p50,
                        "p99": s.evidence.p99,
                        "max": s.evidence.max,
                        "start": format_time(s.evidence.start),
                        "end": format_time(s.evidence.end),
                    },
                }
                for s in self.suggestions
            ],
            "skipped": [{"jail": jail, "reason": reason} for jail, reason in self.skipped],
        }
        if against is not None:
            document["against"] = [
                {"rule": c.rule, "jail": c.jail, "resource": str(c.resource), "verdict": c.verdict}
                for c in against
            ]
        return document


def suggest(
    timeline: Timeline,
    *,
    percentile_wanted: float = 99.0,
    margin: float = 25.0,
    min_samples: int | None = None,
    jails: Sequence[str] | None = None,
    resources: Sequence[Resource] | None = None,
) -> Suggestions:
    """Suggestions per jail and resource; `min_samples` defaults to a day's worth."""
    interval = timeline.interval
    if min_samples is None:
        min_samples = max(1, round(86400 / interval)) if interval else 1
    wanted = set(resources) if resources else set(SUGGESTED)
    suggestions: list[Suggestion] = []
    skipped: list[tuple[str, str]] = []
    for jail in timeline.jails():
        if jails is not None and jail not in jails:
            continue
        counts = [len(timeline.points(jail, r)) for r in SUGGESTED]
        samples = max(counts, default=0)
        if samples < min_samples:
            skipped.append(
                (jail, f"{samples} samples, fewer than --min-samples {min_samples}: no suggestion")
            )
            continue
        for resource, action in SUGGESTED.items():
            if resource not in wanted:
                continue
            points = timeline.points(jail, resource)
            ordered = sorted(value for _, value in points)
            if not ordered or ordered[-1] == 0:
                continue  # never used: nothing to size a limit on
            chosen = percentile(ordered, percentile_wanted / 100)
            amount, written = readable_amount(chosen * (1 + margin / 100), resource.info.unit)
            evidence = Evidence(
                len(ordered),
                percentile(ordered, 0.50),
                percentile(ordered, 0.99),
                ordered[-1],
                points[0][0],
                points[-1][0],
                percentile_wanted,
                chosen,
            )
            suggestions.append(Suggestion(jail, resource, action, amount, written, evidence))
    for jail in jails or ():
        if jail not in timeline.jails():
            skipped.append((jail, "no usage in the window: no suggestion"))
    return Suggestions(
        suggestions, skipped, percentile_wanted, margin, min_samples, interval,
        timeline.start, timeline.end, timeline.source, list(timeline.notes),
    )  # fmt: skip


def compare(policy: Policy, found: Suggestions) -> list[Comparison]:
    """The policy's jail rules far from the usage: an amount below the observed percentile
    fires (often, for a deny: allocations fail), one 10x above the maximum does nothing."""
    by_key = {(s.jail, s.resource): s for s in found.suggestions}
    out: list[Comparison] = []
    for policy_rule in policy.rules:
        rule = policy_rule.rule
        if rule.subject.value != "jail" or policy_rule.jail_pattern is not None:
            continue
        seen = by_key.get((rule.subject_id, rule.resource))
        if seen is None:
            continue
        unit = rule.resource.info.unit
        show = humanize_number if unit in (Unit.BYTES, Unit.BYTES_PER_SECOND) else str
        evidence = seen.evidence
        if rule.amount < evidence.p99:
            verdict = (
                f"below the observed p99 {show(evidence.p99)}: it will fire "
                f"(suggested: {seen.written})"
            )
        elif rule.amount > 10 * evidence.max:
            verdict = (
                f"more than 10x the observed max {show(evidence.max)}: it does nothing "
                f"(suggested: {seen.written})"
            )
        else:
            continue
        out.append(Comparison(policy_rule.canonical, rule.subject_id, rule.resource, verdict))
    return out
