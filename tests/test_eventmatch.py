"""An RCTL event -> the policy rule and the action's context (`match_event`), and what a resync may
act on: the meaning of `{jail}` for jail rules (the rule's own jail) and for every other rule (the
event's), and the events that cannot be true for a jail rule.

Events are built as the kernel writes them (`format_rctl_event`) and read by the daemon's parser.
"""

from __future__ import annotations

import pytest
from corpus_host import rule

from rctlpolicy.actioncontext import ActionContext
from rctlpolicy.devd import RctlEvent, format_rctl_event, parse_rctl_event
from rctlpolicy.eventmatch import (
    Episodes,
    EventVerdict,
    match_event,
    resync_context,
    within_rule_jail,
)
from rctlpolicy.onmatch import OnMatch
from rctlpolicy.policy_model import PolicyRule, SourceLocation

DB1 = "jail:db1:memoryuse:devctl=4294967296"
USER = "user:80:maxproc:devctl=100"
RUNNING = {"db1", "db1.replica", "web1"}
SERVICE = OnMatch(service=("postgresql", "restart"))


def policy_rule(text: str, on_match: OnMatch | None = SERVICE) -> PolicyRule:
    return PolicyRule(rule(text), SourceLocation("p.yaml", 1, 1), text, on_match)


def event(rule_text: str, jail: str, pid: int = 4242, ruid: int = 770) -> RctlEvent:
    parsed = parse_rctl_event(format_rctl_event(rule_text, pid, ruid, jail))
    assert isinstance(parsed, RctlEvent)
    return parsed


def rules(*texts: str) -> dict[str, PolicyRule]:
    return {r.canonical: r for r in (policy_rule(t) for t in texts)}


@pytest.mark.parametrize(
    ("rule_text", "jail", "verdict", "action_jail"),
    [
        (DB1, "db1", EventVerdict.HANDLED, "db1"),
        # A jail rule fires for its child jails too; the action is still about db1.
        (DB1, "db1.replica", EventVerdict.HANDLED, "db1"),
        (DB1, "db1.replica.shard", EventVerdict.HANDLED, "db1"),
        # Never the host, nor a jail whose name only starts like it.
        (DB1, "0", EventVerdict.REJECTED, None),
        (DB1, "db10", EventVerdict.REJECTED, None),
        (DB1, "web1", EventVerdict.REJECTED, None),
        (DB1, "db1x.y", EventVerdict.REJECTED, None),
        # Any other rule's action is about the event's jail.
        (USER, "web1", EventVerdict.HANDLED, "web1"),
        (USER, "0", EventVerdict.HANDLED, "0"),
        ("jail:db1:memoryuse:devctl=1", "db1", EventVerdict.UNMATCHED, None),
    ],
)
def test_match_event(
    rule_text: str, jail: str, verdict: EventVerdict, action_jail: str | None
) -> None:
    match = match_event(event(rule_text, jail), rules(DB1, USER), RUNNING)
    assert match.verdict is verdict, match.reason
    assert (match.context.jail if match.context else None) == action_jail
    if verdict is EventVerdict.REJECTED:
        assert repr(jail) in match.reason
        assert match.policy_rule is not None and match.context is None


def test_a_rejected_event_builds_nothing_on_the_host() -> None:
    # Issue 8, 5: rule jail:db1 with a service action; an event saying jail=0 built
    # `service postgresql restart` on the host.
    match = match_event(event(DB1, "0"), rules(DB1), RUNNING)
    assert match.verdict is EventVerdict.REJECTED
    assert match.context is None


def _cut(rule_text: str, jail_prefix: str | None) -> RctlEvent:
    """An event whose jail field the 127-byte cut shortened (or removed)."""
    raw = f"!system=RCTL subsystem=rule type=matched rule={rule_text} pid=1 ruid=0"
    if jail_prefix is not None:
        raw += f" jail={jail_prefix}"
    return RctlEvent(rule_text, 1, 0, jail_prefix, True, raw)


@pytest.mark.parametrize(
    ("prefix", "within"),
    [
        (None, True),  # jail= cut off entirely
        ("", True),
        ("d", True),
        ("db1", True),
        ("db1.", True),
        ("db1.rep", True),
        ("dbx", False),
        ("0", False),
        ("w", False),
    ],
)
def test_a_cut_jail_name_must_fit_the_rules_jail_or_a_child(
    prefix: str | None, within: bool
) -> None:
    cut = _cut(DB1, prefix)
    assert within_rule_jail(cut, rule(DB1)) is within
    match = match_event(cut, rules(DB1), RUNNING)
    assert match.verdict is (EventVerdict.HANDLED if within else EventVerdict.REJECTED)
    if within:
        assert match.context is not None and match.context.jail == "db1"


def test_the_value_errors_of_an_event_are_malformed() -> None:
    match = match_event(event(USER, "-rf"), rules(USER), RUNNING)
    assert match.verdict is EventVerdict.MALFORMED
    assert "starts with '-'" in match.reason


def test_reasons_never_carry_raw_control_characters() -> None:
    raw = "!system=RCTL subsystem=rule type=matched rule=jail:x\n:y pid=1 ruid=0 jail=0"
    cut = RctlEvent("jail:x\n:y", 1, 0, "0", False, raw)
    match = match_event(cut, rules(DB1), RUNNING)
    assert match.verdict is EventVerdict.UNMATCHED
    assert "\n" not in match.reason


# --- resync ----------------------------------------------------------------------------------


def test_a_resync_acts_on_a_jail_rule_in_its_own_jail() -> None:
    context = resync_context(policy_rule(DB1))
    assert isinstance(context, ActionContext)
    assert (context.jail, context.pid, context.ruid) == ("db1", None, None)


def test_a_resync_waits_for_the_event_of_any_other_rule() -> None:
    # A user rule's action is about the event's jail; acting from the host would be wrong.
    assert "comes from its event" in str(resync_context(policy_rule(USER)))
    needs_pid = OnMatch(run=("/usr/bin/logger", "{pid}"))
    assert "needs the pid" in str(resync_context(policy_rule(DB1, needs_pid)))


def test_episodes_tell_the_event_of_an_episode_the_resync_acted_on() -> None:
    episodes = Episodes()
    assert not episodes.event_arrived(DB1)  # the kernel's event: act
    assert episodes.known(DB1)
    episodes.end(DB1)
    episodes.resync_acts(DB1)
    assert episodes.event_arrived(DB1)  # the same episode's event: do not act twice
    assert episodes.active() == [DB1]
