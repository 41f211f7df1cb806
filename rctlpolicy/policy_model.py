"""What a policy is once loaded: rules with where they came from, and their on_match actions
(`OnMatch` and its checks live in rctlpolicy.onmatch)."""

from __future__ import annotations

from rctlpolicy.model import Rule
from rctlpolicy.records import NamedTuple

# `rctlpolicy lint` of an rctl.conf never needs the on_match checks; importing them only for
# the type checker keeps them out of its start-up (see rctlpolicy.records).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from rctlpolicy.onmatch import OnMatch

__all__ = ["Policy", "PolicyRule", "SourceLocation"]


class SourceLocation(NamedTuple):
    path: str
    line: int
    column: int


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
