"""jail-pattern-unmatched (warning, with --resolve): a jail pattern (`jail:mail-*` in a YAML
policy) that matches no running jail.

rctlpolicy expands a pattern into one rule per running jail whose name matches, so a pattern
that matches nothing puts no rule in the kernel: often a typo (`mail-*` for jails named
`mx-1`, `mx-2`). The message names the pattern and the jails it was matched against. It is
a warning, not an error: the rules apply as soon as a matching jail starts. Without
--resolve the running jails are not known and nothing is said.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rctlpolicy.checks.base import Context, Finding
from rctlpolicy.codes import Code
from rctlpolicy.policy import jail_pattern_matches
from rctlpolicy.policy_model import PolicyRule

#: How many running jails the message names before "and N more".
NAMED = 10


def _jails(names: Sequence[str]) -> str:
    if not names:
        return "no jail is running"
    shown = ", ".join(names[:NAMED])
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return f"running: {shown}{more}"


def check(rules: Sequence[PolicyRule], context: Context) -> Iterator[Finding]:
    if context.running_jails is None:
        return
    names = sorted(context.running_jails)
    for rule in rules:
        pattern = rule.jail_pattern
        if pattern is None or any(jail_pattern_matches(pattern, name) for name in names):
            continue
        yield Finding(
            rule,
            Code.JAIL_PATTERN_UNMATCHED,
            f"the jail pattern '{pattern}' matches no running jail ({_jails(names)})",
            "the rule applies to each jail whose name matches once it starts; check the "
            "pattern against jls name",
        )
