"""What a policy is once loaded: rules with where they came from, and their on_match actions."""

from __future__ import annotations

from dataclasses import dataclass

from rctlpolicy.model import Rule
from rctlpolicy.records import NamedTuple

#: Placeholders an on_match `run` argv may use; each is substituted into one argv element.
PLACEHOLDERS = (
    "rule",
    "subject",
    "subject_id",
    "resource",
    "action",
    "amount",
    "pid",
    "ruid",
    "jail",
)


class SourceLocation(NamedTuple):
    path: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class RunLimit:
    """`max_runs: {count: 3, within: 1h}`: at most `count` runs in any `within` seconds."""

    count: int
    within: float


@dataclass(frozen=True, slots=True)
class OnMatch:
    """What to do when a devctl rule fires. Exactly one of run, service or signal is set.

    `run` is an argv template; `service` is (name, command), run as
    `service -j <jail> <name> <command>` (without -j on the host); `signal` is a signal
    name without the SIG prefix (`TERM`), sent to the event's pid.
    """

    run: tuple[str, ...] | None = None
    service: tuple[str, str] | None = None
    signal: str | None = None
    cooldown: float = 0.0
    max_runs: RunLimit | None = None
    timeout: float = 60.0


class PolicyRule(NamedTuple):
    """One rule of the policy with its origin.

    `rule` is the validated rule. For a YAML rule whose jail subject is a glob
    (`jail:web-*:...`), `jail_pattern` holds the glob and `rule.subject_id` the glob text too;
    the daemon expands it per running jail.
    """

    rule: Rule
    source: SourceLocation
    text: str
    on_match: OnMatch | None = None
    comment: str | None = None
    jail_pattern: str | None = None

    @property
    def canonical(self) -> str:
        return self.rule.canonical


class Policy(NamedTuple):
    rules: tuple[PolicyRule, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def concrete_rules(self) -> tuple[PolicyRule, ...]:
        """Rules that go to the kernel as they are (no jail glob)."""
        return tuple(r for r in self.rules if r.jail_pattern is None)
