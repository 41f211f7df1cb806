"""Usage reports: one subject like `rctl -hu`, or every jail next to the limits in force."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rctlpolicy.amounts import humanize_number
from rctlpolicy.kernel.base import Kernel
from rctlpolicy.model import Action, Filter, Resource, Rule, SubjectType, Unit

_BYTE_UNITS = (Unit.BYTES, Unit.BYTES_PER_SECOND)

HEADER = (
    f"{'JAIL':<16} {'JID':>5}  {'RESOURCE':<16} {'USAGE':>12} {'DENY':>12} {'USED':>6}  "
    "OTHER LIMITS"
)


def usage_lines(usage: Mapping[Resource, int], human: bool = True) -> str:
    """`resource=value` lines in resource order, humanized like `rctl -h` (every resource,
    seconds and counts too, as rctl(8) does)."""
    return "".join(
        f"{resource}={humanize_number(value) if human else value}\n"
        for resource, value in usage.items()
    )


@dataclass(frozen=True, slots=True)
class JailRow:
    """One running jail: its usage and the jail rules in force for it."""

    name: str
    jid: int
    usage: Mapping[Resource, int]
    #: Every rule in force with subject `jail:<name>`, in the kernel's order.
    rules: tuple[Rule, ...] = ()

    def deny(self, resource: Resource) -> int | None:
        """The strictest deny on the jail's own total (per jail), None without one."""
        amounts = [
            rule.amount
            for rule in self.rules
            if rule.resource is resource
            and rule.action is Action.DENY
            and rule.per is SubjectType.JAIL
        ]
        return min(amounts) if amounts else None

    def percent(self, resource: Resource) -> float | None:
        """Usage as a percentage of the strictest deny (None without a deny)."""
        limit = self.deny(resource)
        if limit is None:
            return None
        used = self.usage.get(resource, 0)
        if limit == 0:
            return 100.0 if used else 0.0
        return 100.0 * used / limit

    def others(self, resource: Resource) -> list[Rule]:
        """The other rules on the resource: log, devctl, signals, throttle, and denies per
        process or user (which the jail's total cannot be compared with)."""
        return [
            rule
            for rule in self.rules
            if rule.resource is resource
            and not (rule.action is Action.DENY and rule.per is SubjectType.JAIL)
        ]

    def shown(self) -> list[Resource]:
        """The resources worth a line: used, or limited."""
        limited = {rule.resource for rule in self.rules}
        return [r for r in Resource if self.usage.get(r, 0) or r in limited]


@dataclass(frozen=True, slots=True)
class JailTable:
    """`rctlpolicy usage` without a filter: every running jail, by name."""

    rows: tuple[JailRow, ...]

    def as_json(self) -> dict[str, object]:
        """The table for `--format json`: exact numbers, every rule in canonical form."""
        jails: list[dict[str, object]] = []
        for row in self.rows:
            deny = {r: amount for r in Resource if (amount := row.deny(r)) is not None}
            jails.append(
                {
                    "name": row.name,
                    "jid": row.jid,
                    "usage": {str(r): v for r, v in row.usage.items()},
                    "deny": {str(r): amount for r, amount in deny.items()},
                    "percent": {
                        str(r): round(p, 1) for r in deny if (p := row.percent(r)) is not None
                    },
                    "rules": [rule.canonical for rule in row.rules],
                }
            )
        return {"jails": jails}

    def render(self, human: bool = True) -> str:
        """The text table: one line per used or limited resource of each jail."""

        def show(value: int, resource: Resource) -> str:
            # Only byte amounts read better humanized: 86400 s of cputime is not "84K".
            if human and resource.info.unit in _BYTE_UNITS:
                return humanize_number(value)
            return str(value)

        def other(rule: Rule) -> str:
            per = "" if rule.per is SubjectType.JAIL else f"/{rule.per}"
            return f"{rule.action}={show(rule.amount, rule.resource)}{per}"

        lines = [HEADER]
        for row in self.rows:
            shown = row.shown()
            if not shown:
                lines.append(f"{row.name:<16} {row.jid:>5}  (no usage, no limits)")
                continue
            for index, resource in enumerate(shown):
                name = row.name if index == 0 else ""
                jid = str(row.jid) if index == 0 else ""
                deny = row.deny(resource)
                percent = row.percent(resource)
                others = ", ".join(other(rule) for rule in row.others(resource))
                used = show(row.usage.get(resource, 0), resource)
                denied = show(deny, resource) if deny is not None else "-"
                ratio = f"{percent:.0f}%" if percent is not None else "-"
                line = (
                    f"{name:<16} {jid:>5}  {resource!s:<16} {used:>12} {denied:>12} "
                    f"{ratio:>6}  {others}"
                )
                lines.append(line.rstrip())
        return "\n".join(lines) + "\n"


def jail_usage_table(kernel: Kernel) -> JailTable:
    """Every running jail's usage with the jail rules in force for it.

    One listing of the jail rules and one usage call per jail: the rules are grouped by jail
    once, so 500 jails with 10,000 rules cost 500 look-ups, not 5,000,000 comparisons.
    """
    by_jail: dict[str, list[Rule]] = {}
    for rule in kernel.rules(Filter(subject=SubjectType.JAIL)):
        by_jail.setdefault(rule.subject_id, []).append(rule)
    rows = [
        JailRow(
            jail.name,
            jail.jid,
            kernel.usage(Filter(SubjectType.JAIL, jail.name)),
            tuple(by_jail.get(jail.name, ())),
        )
        for jail in sorted(kernel.jails(), key=lambda j: j.name)
    ]
    return JailTable(tuple(rows))
