"""Which policy rule an RCTL event is about, and what its action may act on.

`match_event` is the one path from a parsed devd event to an `ActionContext`, used by the
daemon (`Daemon.handle_event`) and by `rctlpolicy handle` alike. The kernel cuts its messages
at 127 bytes (kern_rctl.c, rctl_enforce, into devctl_notify), so the rule text and the jail
name may be cut short: the surviving prefix must then still name one policy rule (and, where
the jail comes from the event, one running jail).

What the event may decide, and what it may not:
- For a jail rule (`jail:db1:...`) the jail the action is about (`{jail}`, `service -j`, the
  cooldown key) is the rule's own jail. The kernel also fires a jail rule for processes in its
  child jails, so the event's `jail=` must be that jail or one of its children (`db1` or
  `db1.*`); any other jail is an event that cannot be true, rejected and counted, and nothing
  runs. So a forged or confused event can never move a jail rule's action to the host.
- For a user, login class or process rule, which fires in any jail, the jail is the event's.
- A resync (after devd reconnects, no event at hand) uses the same meaning: it can act on a
  jail rule, whose jail it knows, and waits for the event of any other rule.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rctlpolicy.actioncontext import ActionContext, ActionInputError
from rctlpolicy.devd.message import RctlEvent
from rctlpolicy.model import HOST_JAIL, Action, Rule, SubjectType
from rctlpolicy.onmatch import OnMatch, uses_event_fields
from rctlpolicy.policy_model import PolicyRule


class EventVerdict(enum.StrEnum):
    """What became of an RCTL event (the `outcome` label of rctlpolicy_events_total)."""

    HANDLED = "handled"  # a policy rule, and a context its action can use
    UNMATCHED = "unmatched"  # a rule the policy does not have
    MALFORMED = "malformed"  # values no action may use (pid, ruid, a jail name)
    TRUNCATED = "truncated"  # cut so short that no single rule (or jail) is left
    REJECTED = "rejected"  # a jail the rule cannot fire for: nothing runs


@dataclass(frozen=True, slots=True)
class EventMatch:
    """The policy rule an event is about and the context for its action (when HANDLED), or
    why there is none: `reason` is a log line's worth, with event values as repr()."""

    verdict: EventVerdict
    reason: str
    policy_rule: PolicyRule | None = None
    context: ActionContext | None = None


def rule_text_may_be_cut(event: RctlEvent) -> bool:
    """Whether the 127-byte cut may have shortened the rule itself (it ends the message)."""
    if not event.truncated:
        return False
    data = event.raw.rstrip("\n").removesuffix("\ufffd")
    return data.endswith("rule=" + event.rule)


def identify_rule(event: RctlEvent, rules: Mapping[str, PolicyRule]) -> PolicyRule | None:
    """The policy rule an RCTL event reports, or None.

    The rule text is whole unless the kernel's cut reached it: then it is the one policy rule
    it is a prefix of, and None when it is a prefix of several (or of none).
    """
    if not rule_text_may_be_cut(event):
        return rules.get(event.rule)
    candidates = [rule for canonical, rule in rules.items() if canonical.startswith(event.rule)]
    return candidates[0] if len(candidates) == 1 else None


def event_jail(event: RctlEvent, rule: Rule, jail_names: Iterable[str]) -> str | None:
    """The jail the event's process is in ("0": the host), or None when it cannot be told.

    An untruncated event says it. When the cut reached `jail=` (or removed it), a jail rule's
    subject is taken when the surviving prefix is consistent with it; otherwise the prefix must
    name exactly one running jail (or the host).
    """
    prefix = event.jail
    if prefix is not None and not event.truncated:
        return prefix
    if rule.subject is SubjectType.JAIL and (prefix is None or rule.subject_id.startswith(prefix)):
        return rule.subject_id
    if prefix is None:
        return None
    matches = sorted(name for name in {HOST_JAIL, *jail_names} if name.startswith(prefix))
    return matches[0] if len(matches) == 1 else None


def within_rule_jail(event: RctlEvent, rule: Rule) -> bool:
    """Whether a jail rule can have fired for the event's jail: the rule's jail or a child of
    it (`db1`, `db1.replica`). A jail name the cut shortened (or removed) must be consistent
    with one of those; a missing one claims nothing."""
    own = rule.subject_id
    if own == HOST_JAIL:
        return True  # every jail descends from the host
    jail = event.jail
    if jail is None:
        return True  # cut off (or a hook run without it): no claim that contradicts the rule
    if not event.truncated:
        return jail == own or jail.startswith(own + ".")
    return (own + ".").startswith(jail) or jail.startswith(own + ".")


def action_jail(event: RctlEvent, rule: Rule, jail_names: Iterable[str]) -> str | None:
    """The jail an action is about: the rule's own for a jail rule, the event's otherwise
    (None when a cut jail name cannot be told; see `event_jail`)."""
    if rule.subject is SubjectType.JAIL:
        return rule.subject_id
    return event_jail(event, rule, jail_names)


def match_event(
    event: RctlEvent, rules: Mapping[str, PolicyRule], jail_names: Iterable[str]
) -> EventMatch:
    """An RCTL event -> the policy rule it reports and the context for its action.

    `rules` is the policy by canonical rule text, `jail_names` the running jails (to complete a
    cut jail name). Every event gets exactly one verdict.
    """
    policy_rule = identify_rule(event, rules)
    if policy_rule is None:
        if rule_text_may_be_cut(event):
            return EventMatch(
                EventVerdict.TRUNCATED,
                f"truncated RCTL message matches no single policy rule: {event.raw[:200]!r}",
            )
        return EventMatch(
            EventVerdict.UNMATCHED, f"RCTL event for a rule not in the policy: {event.rule!r}"
        )
    rule = policy_rule.rule
    if rule.subject is SubjectType.JAIL and not within_rule_jail(event, rule):
        return EventMatch(
            EventVerdict.REJECTED,
            f"rejecting RCTL event for {rule.canonical} from jail {event.jail!r}: "
            f"the rule fires only for jail {rule.subject_id!r} and its child jails",
            policy_rule,
        )
    jail = action_jail(event, rule, jail_names)
    if jail is None:
        return EventMatch(
            EventVerdict.TRUNCATED,
            f"cannot tell the jail of truncated RCTL message {event.raw[:200]!r}",
            policy_rule,
        )
    try:
        context = ActionContext.from_event(rule, event.pid, event.ruid, jail)
    except ActionInputError as error:
        return EventMatch(
            EventVerdict.MALFORMED,
            f"refusing RCTL message with bad values ({error}): {event.raw[:200]!r}",
            policy_rule,
        )
    return EventMatch(EventVerdict.HANDLED, "", policy_rule, context)


# --- resync: acting without an event ----------------------------------------------------------


def resync_candidate(policy_rule: PolicyRule) -> bool:
    """Whether a resync can tell from usage alone that this rule's episode is on: a devctl
    rule with an action whose usage is summed over its own subject (not per process or user)."""
    rule = policy_rule.rule
    return (
        rule.action is Action.DEVCTL
        and policy_rule.on_match is not None
        and rule.per is rule.subject
    )


def needs_event_fields(on_match: OnMatch) -> bool:
    """Whether the action needs the pid or ruid that only a kernel event carries."""
    return uses_event_fields(on_match)


def resync_context(policy_rule: PolicyRule) -> ActionContext | str:
    """The context a resync acts in for this rule, or why it must wait for the kernel's event:
    the action needs the event's pid or ruid, or the rule is not a jail rule (its jail is the
    event's)."""
    rule = policy_rule.rule
    assert policy_rule.on_match is not None
    if needs_event_fields(policy_rule.on_match):
        return "its action needs the pid of an event"
    if rule.subject is not SubjectType.JAIL:
        return f"the jail of a {rule.subject.value} rule's action comes from its event"
    try:
        return ActionContext.from_event(rule, None, None, rule.subject_id)
    except ActionInputError as error:
        return str(error)


class Episode(enum.Enum):
    """Who acted on the episode of a rule that is over its limit now."""

    EVENT = "event"  # the kernel's event
    RESYNC = "resync"  # the resync after a (re)connect; the kernel's event may still come


class Episodes:
    """Which rules are in an episode (over their limit) and who acted on it, so the resync and
    the kernel's own event never both act on one episode. Shared by the daemon's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_rule: dict[str, Episode] = {}

    def event_arrived(self, canonical: str) -> bool:
        """Record the kernel's event; True when the resync already acted on this episode."""
        with self._lock:
            before = self._by_rule.get(canonical)
            self._by_rule[canonical] = Episode.EVENT
        return before is Episode.RESYNC

    def known(self, canonical: str) -> bool:
        with self._lock:
            return canonical in self._by_rule

    def resync_acts(self, canonical: str) -> None:
        with self._lock:
            self._by_rule[canonical] = Episode.RESYNC

    def end(self, canonical: str) -> None:
        """The rule is under its limit again: its next crossing is a new episode."""
        with self._lock:
            self._by_rule.pop(canonical, None)

    def active(self) -> list[str]:
        with self._lock:
            return list(self._by_rule)
