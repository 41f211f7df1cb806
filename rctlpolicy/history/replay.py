"""What a policy would have done to a usage timeline, with the kernel's semantics.

Per jail rule and jail (the kernel compares a jail's total with a `per=jail` rule's amount;
sys/kern/kern_rctl.c, `rctl_enforce`):

- usage above the amount is "over"; usage is taken to stay at a sample's value until the next
  sample (the last one counts for one interval);
- `deny` and `throttle`: the time spent over (the kernel refuses allocations then; for
  `memoryuse` it pages out; `throttle` slows the jail's I/O);
- `log`, `devctl` and the signals: one event per crossing from below to above, as the link's
  `rrl_exceeded` flag has it (set when the event goes out, cleared once usage is back within
  the limit);
- `log` and `devctl` events go through the kernel's global rate limits
  (`kern.racct.rctl.log_rate_limit` and `devctl_rate_limit`, 10 a second each, `ppsratecheck`).
  A refused event does not set `rrl_exceeded`, so the kernel sends it at the next allocation
  that is still over: here, at the next sample still over (delayed, not lost);
- a `devctl` rule's `on_match`: each event is handed to the real action engine
  (`ActionEngine.run_sync`) on a clock that is set to the event's time, with a runner that runs
  nothing, so cooldown and `max_runs` decide exactly as they would in the daemon.

Pure but for the engine's lock: no I/O, no real clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rctlpolicy.actioncontext import ActionContext, ActionInputError
from rctlpolicy.actions import ActionEngine, Finished, MemoryState, Outcome, RunResult
from rctlpolicy.clock import ManualClock
from rctlpolicy.history.timeline import Timeline, format_time
from rctlpolicy.model import Action, SubjectType
from rctlpolicy.onmatch import uses_event_fields
from rctlpolicy.policy import expand_jail_patterns
from rctlpolicy.policy_model import Policy, PolicyRule

#: kern.racct.rctl.log_rate_limit and devctl_rate_limit's defaults: events per second.
LOG_RATE_LIMIT = 10
DEVCTL_RATE_LIMIT = 10
#: The pid and ruid an action sees in a replay when its template asks for them (the samples
#: know no process; nothing is run or signalled).
STAND_IN_PID = 99999
STAND_IN_RUID = 0


@dataclass
class RuleReplay:
    """One rule and jail: what it would have done."""

    policy_rule: PolicyRule
    jail: str
    deny_seconds: float = 0.0
    crossings: int = 0
    actions_run: int = 0
    actions_suppressed: int = 0
    #: Events the rate limit held back to a later sample.
    delayed: int = 0
    first: float | None = None
    last: float | None = None
    #: (time, "crossing" | "run" | "suppressed") for the charts.
    marks: list[tuple[float, str]] = field(default_factory=list)
    #: Why an action was refused (not by cooldown or max_runs), once per reason.
    problems: list[str] = field(default_factory=list)

    @property
    def acted(self) -> bool:
        return self.deny_seconds > 0 or self.crossings > 0

    def over(self, time: float) -> None:
        if self.first is None:
            self.first = time
        self.last = time


@dataclass
class ReplayReport:
    interval: float
    start: float
    end: float
    rules: list[RuleReplay]
    #: Rules a jail timeline cannot replay, with why.
    skipped: list[tuple[PolicyRule, str]]
    notes: list[str]
    source: str

    @property
    def acted(self) -> bool:
        return any(r.acted for r in self.rules)

    def as_json(self) -> dict[str, Any]:
        """The document of `replay --format json`, exactly as rctlpolicy(8) describes it."""

        def when(seconds: float | None) -> str | None:
            return format_time(seconds) if seconds is not None else None

        return {
            "interval": self.interval,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "rules": [
                {
                    "rule": entry.policy_rule.canonical,
                    "jail": entry.jail,
                    "deny_seconds": entry.deny_seconds,
                    "crossings": entry.crossings,
                    "actions_run": entry.actions_run,
                    "actions_suppressed": entry.actions_suppressed,
                    "first": when(entry.first),
                    "last": when(entry.last),
                }
                for entry in self.rules
            ],
        }


class _NothingRuns:
    """A Runner whose commands are over before they begin: the replay runs nothing."""

    def start(self, argv: Sequence[str], *, timeout: float, name: str) -> Finished:
        return Finished(RunResult(Outcome.OK, 0, 0.0, 0.0, detail="replayed"))

    def terminate_all(self) -> None:
        return None


def _no_signal(pid: int, signum: int) -> None:
    return None


@contextlib.contextmanager
def _quiet_engine() -> Iterator[None]:
    """The engine logs its decisions for the daemon's log; a replay reports them itself."""
    engine_log = logging.getLogger("rctlpolicy.actions")
    before = engine_log.disabled
    engine_log.disabled = True
    try:
        yield
    finally:
        engine_log.disabled = before


def replayable(policy_rule: PolicyRule) -> str | None:
    """Why a rule cannot be replayed on jail usage (None when it can)."""
    rule = policy_rule.rule
    if rule.subject is not SubjectType.JAIL:
        return f"a {rule.subject.value} rule: the history holds jails' usage only"
    if rule.per is not SubjectType.JAIL:
        return f"per={rule.per.value}: the history holds the jail's total, not each {rule.per}'s"
    return None


def replay(policy: Policy, timeline: Timeline) -> ReplayReport:
    """Run the policy's jail rules over the timeline."""
    interval = timeline.interval
    rules: list[RuleReplay] = []
    skipped: list[tuple[PolicyRule, str]] = []
    for policy_rule in expand_jail_patterns(policy, timeline.jails()):
        reason = replayable(policy_rule)
        if reason is not None:
            skipped.append((policy_rule, reason))
            continue
        rules.append(RuleReplay(policy_rule, policy_rule.rule.subject_id))
    notes = list(timeline.notes)
    for jail in sorted({r.jail for r in rules} - set(timeline.jails())):
        notes.append(f"no usage of jail {jail} in the window")

    # Every sample of every rule, in time order: the rate limits are global.
    steps: list[tuple[float, int, int]] = []
    for index, entry in enumerate(rules):
        rule = entry.policy_rule.rule
        for position, (time, _) in enumerate(timeline.points(entry.jail, rule.resource)):
            steps.append((time, index, position))
    steps.sort()

    clock = ManualClock(start_time=timeline.start)
    engine = ActionEngine(clock, _NothingRuns(), MemoryState(), signaller=_no_signal)
    exceeded = [False] * len(rules)
    sent_in_second: dict[tuple[str, int], int] = {}
    with _quiet_engine():
        for time, index, position in steps:
            entry = rules[index]
            rule = entry.policy_rule.rule
            points = timeline.points(entry.jail, rule.resource)
            value = points[position][1]
            if value <= rule.amount:
                exceeded[index] = False
                continue
            entry.over(time)
            if rule.action in (Action.DENY, Action.THROTTLE):
                following = points[position + 1][0] if position + 1 < len(points) else None
                held = (following - time) if following is not None else interval
                entry.deny_seconds += max(0.0, min(held, timeline.end - time))
                if not exceeded[index]:
                    exceeded[index] = True
                    entry.crossings += 1
                    entry.marks.append((time, "crossing"))
                continue
            if exceeded[index]:
                continue
            if rule.action in (Action.LOG, Action.DEVCTL):
                limit = LOG_RATE_LIMIT if rule.action is Action.LOG else DEVCTL_RATE_LIMIT
                window = (rule.action.value, int(time))
                if sent_in_second.get(window, 0) >= limit:
                    entry.delayed += 1  # rrl_exceeded stays clear: tried again later
                    continue
                sent_in_second[window] = sent_in_second.get(window, 0) + 1
            exceeded[index] = True
            entry.crossings += 1
            entry.marks.append((time, "crossing"))
            if entry.policy_rule.on_match is not None:
                clock.advance(max(0.0, time - clock.time()))
                _act(engine, entry, time)
    engine.shutdown(0)
    return ReplayReport(interval, timeline.start, timeline.end, rules, skipped, notes,
                        timeline.source)  # fmt: skip


def _act(engine: ActionEngine, entry: RuleReplay, time: float) -> None:
    policy_rule = entry.policy_rule
    assert policy_rule.on_match is not None
    stand_in = uses_event_fields(policy_rule.on_match)
    try:
        context = ActionContext.from_event(
            policy_rule.rule,
            STAND_IN_PID if stand_in else None,
            STAND_IN_RUID if stand_in else None,
            entry.jail,
        )
    except ActionInputError as error:
        if str(error) not in entry.problems:
            entry.problems.append(str(error))
        return
    outcome = engine.run_sync(policy_rule, context)
    if outcome is None:
        return
    if outcome.outcome is Outcome.OK:
        entry.actions_run += 1
        entry.marks.append((time, "run"))
    elif outcome.outcome in (Outcome.SUPPRESSED, Outcome.EXHAUSTED):
        entry.actions_suppressed += 1
        entry.marks.append((time, "suppressed"))
    elif outcome.detail and outcome.detail not in entry.problems:
        entry.problems.append(outcome.detail)
