"""Usage reports: one subject like `rctl -hu`, or every jail next to the limits in force."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rctlpolicy.amounts import humanize_number
from rctlpolicy.kernel.base import Kernel
from rctlpolicy.model import Action, Filter, Resource, SubjectType, Unit

_BYTE_UNITS = (Unit.BYTES, Unit.BYTES_PER_SECOND)


def usage_lines(usage: Mapping[Resource, int], human: bool = True) -> str:
    """`resource=value` lines in resource order, humanized like `rctl -h`."""
    return "".join(
        f"{resource}={humanize_number(value) if human else value}\n"
        for resource, value in usage.items()
    )


@dataclass(slots=True)
class JailRow:
    name: str
    jid: int
    usage: dict[Resource, int]
    #: resource -> strictest deny amount in force for the jail itself.
    deny: dict[Resource, int] = field(default_factory=dict)
    #: resource -> (action, amount) of every other limit (log, devctl, signals, throttle).
    other: dict[Resource, list[tuple[str, int]]] = field(default_factory=dict)

    def percent(self, resource: Resource) -> float | None:
        limit = self.deny.get(resource)
        if limit is None:
            return None
        if limit == 0:
            return 100.0 if self.usage.get(resource, 0) else 0.0
        return 100.0 * self.usage.get(resource, 0) / limit


@dataclass(slots=True)
class JailTable:
    rows: list[JailRow]

    def as_json(self) -> dict[str, object]:
        return {
            "jails": [
                {
                    "name": row.name,
                    "jid": row.jid,
                    "usage": {str(r): v for r, v in row.usage.items()},
                    "limits": {
                        str(r): {"deny": amount} for r, amount in row.deny.items()
                    },
                    "percent": {
                        str(r): round(p, 1)
                        for r in row.deny
                        if (p := row.percent(r)) is not None
                    },
                }
                for row in self.rows
            ]
        }

    def render(self, human: bool = True) -> str:
        def show(value: int, resource: Resource | None = None) -> str:
            # Only byte amounts read better humanized: 86400 s of cputime is not "84K".
            if human and (resource is None or resource.info.unit in _BYTE_UNITS):
                return humanize_number(value)
            return str(value)

        lines = [f"{'JAIL':<16} {'JID':>5}  {'RESOURCE':<16} {'USAGE':>12} {'DENY':>12} "
                 f"{'USED':>6}  OTHER LIMITS"]
        for row in self.rows:
            shown = [r for r in Resource
                     if row.usage.get(r, 0) or r in row.deny or r in row.other]
            if not shown:
                lines.append(f"{row.name:<16} {row.jid:>5}  (no usage, no limits)")
                continue
            for index, resource in enumerate(shown):
                name = row.name if index == 0 else ""
                jid = str(row.jid) if index == 0 else ""
                deny = row.deny.get(resource)
                percent = row.percent(resource)
                others = ", ".join(f"{a}={show(v, resource)}"
                                   for a, v in row.other.get(resource, []))
                lines.append(
                    f"{name:<16} {jid:>5}  {resource!s:<16} "
                    f"{show(row.usage.get(resource, 0), resource):>12} "
                    f"{show(deny, resource) if deny is not None else '-':>12} "
                    f"{f'{percent:.0f}%' if percent is not None else '-':>6}  {others}".rstrip()
                )
        return "\n".join(lines) + "\n"


def jail_usage_table(kernel: Kernel) -> JailTable:
    """Every running jail's usage with the jail rules in force for it."""
    rules = kernel.rules(Filter(subject=SubjectType.JAIL))
    rows: list[JailRow] = []
    for jail in sorted(kernel.jails(), key=lambda j: j.name):
        row = JailRow(jail.name, jail.jid, kernel.usage(Filter(SubjectType.JAIL, jail.name)))
        for rule in rules:
            if rule.subject_id != jail.name or rule.per is not SubjectType.JAIL:
                continue
            if rule.action is Action.DENY:
                current = row.deny.get(rule.resource)
                row.deny[rule.resource] = (rule.amount if current is None
                                           else min(current, rule.amount))
            else:
                row.other.setdefault(rule.resource, []).append((rule.action.value, rule.amount))
        rows.append(row)
    return JailTable(rows)
