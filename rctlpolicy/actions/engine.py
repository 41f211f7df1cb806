"""The action engine: whether an event's action runs, running it off the caller's thread, and
what came of it.

Per (canonical rule, jail): at most one run at a time; none within `cooldown` seconds of the
last start; at most `max_runs.count` starts within any `max_runs.within` seconds. A started
action gets a worker thread of its own, so a hung action never delays another rule's: only when
`max_running` actions already run does a new one wait for one of them to end (a log line, and
the `on_slots` callback reports it for the metrics). The command is started in the thread
that submits the event (the devd dispatcher), so nothing but the spawn itself stands between an
event and its action's process; the worker then supervises it.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rctlpolicy.actioncontext import ActionContext, ActionError
from rctlpolicy.actions.runner import Outcome, Run, Runner, RunResult
from rctlpolicy.actions.state import Claim, CooldownState, StateEntry, StateKey
from rctlpolicy.clock import Clock
from rctlpolicy.onmatch import (
    SIGNALS,
    Command,
    ExecCommand,
    OnMatch,
    SignalCommand,
    action_name,
    build_command,
)
from rctlpolicy.policy_model import PolicyRule

logger = logging.getLogger("rctlpolicy.actions")

#: How many actions may run at once before a new one waits for one to end.
DEFAULT_MAX_RUNNING = 64
#: How long a worker whose action ended waits for the next one before its thread ends.
IDLE_WORKER_SECONDS = 2.0


class Decision(enum.StrEnum):
    """What `ActionEngine.submit` did with an event."""

    STARTED = "started"  # given to a worker; an outcome follows when it finishes
    SUPPRESSED = "suppressed"  # inside the cooldown, or a run for this rule+jail is running
    EXHAUSTED = "exhausted"  # max_runs reached within its window
    NO_ACTION = "no_action"  # the rule has no on_match
    REJECTED = "rejected"  # the command cannot be built from this event or policy (logged)
    CLOSED = "closed"  # the engine is shutting down


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """One reported action: run, refused (suppressed, exhausted) or failed to start.

    `started_at` is the engine clock's wall time when the action began (or was refused);
    `start_delay` the monotonic seconds it waited for a worker after the decision.
    """

    name: str
    resource: str
    jail: str
    outcome: Outcome
    duration: float
    started_at: float
    rule: str = ""
    exit_status: int | None = None
    detail: str = ""
    start_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class _Job:
    key: StateKey
    name: str
    resource: str
    jail: str
    command: Command
    timeout: float
    claim: Claim = field(compare=False)
    decided_at: float  # engine monotonic clock


@dataclass(frozen=True, slots=True)
class _Begun:
    """A job whose command has started (`run`; None for a signal, sent by its worker)."""

    run: Run | None
    started_at: float  # engine wall clock
    start_delay: float  # seconds from the decision to the start


@dataclass(frozen=True, slots=True)
class _Verdict:
    decision: Decision
    job: _Job | None = None
    outcome: ActionOutcome | None = None  # for a decision that runs nothing


def host_signal(signum: int) -> signal.Signals | None:
    """This system's signal for FreeBSD's signal number `signum` (the same on FreeBSD)."""
    for name, number in SIGNALS.items():
        if number == signum:
            try:
                return signal.Signals["SIG" + name]
            except KeyError:
                return None
    return None


class ActionEngine:
    """Decides whether an event's action runs, runs it off the caller's thread, reports it.

    When an action reaches its max_runs, the engine stops acting, logs an ERROR once per window
    and lists the key in `exhausted()`. Every decision other than no_action and closed produces
    exactly one `on_outcome` call: at once for a refusal (in the caller's thread), when the run
    ends for a start (in a worker thread). `on_outcome` and `on_slots` (running, max_running,
    delayed so far) must therefore be thread-safe; an exception in `on_outcome` is logged.
    """

    def __init__(
        self,
        clock: Clock,
        runner: Runner,
        state: CooldownState,
        *,
        signaller: Callable[[int, int], None] = os.kill,
        on_outcome: Callable[[ActionOutcome], None] | None = None,
        max_workers: int = DEFAULT_MAX_RUNNING,
        on_slots: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._runner = runner
        self._state = state
        self._signaller = signaller
        self._on_outcome = on_outcome
        self._on_slots = on_slots
        self._own_pid = os.getpid()
        self.max_running = max(1, max_workers)
        # RLock: a refusal is reported while deciding, and on_outcome may call exhausted().
        self._lock = threading.RLock()
        self._closed = False
        self._running = 0
        self._delayed = 0
        self._waiting: deque[_Job] = deque()
        self._workers: set[threading.Thread] = set()
        #: Workers waiting for a job, and where they are handed one (None: shutdown).
        self._idle = 0
        self._handoff: queue.SimpleQueue[tuple[_Job, _Begun] | None] = queue.SimpleQueue()
        self._exhausted: dict[StateKey, tuple[tuple[str, str, str], float]] = {}
        self._report_slots()

    # public API

    def submit(self, policy_rule: PolicyRule, ctx: ActionContext) -> Decision:
        """Decide at once and, if the action starts, run it on a worker thread. Never blocks on
        the action; with a FileState it may wait briefly for the state file's lock."""
        if policy_rule.on_match is None:
            return Decision.NO_ACTION
        with self._lock:
            if self._closed:
                logger.warning("not acting on %s in jail %s: shutting down", ctx.rule, ctx.jail)
                return Decision.CLOSED
            verdict = self._decide(policy_rule.on_match, ctx)
            now = verdict.job is not None and self._reserve(verdict.job)
        if verdict.job is not None:
            if now:
                self._launch(verdict.job)
            self._report_slots()
        if verdict.outcome is not None:
            self._report(verdict.outcome)
        return verdict.decision

    def run_sync(self, policy_rule: PolicyRule, ctx: ActionContext) -> ActionOutcome | None:
        """Decide and, if allowed, run the action in this thread (for `rctlpolicy handle`).

        Returns the outcome (also passed to on_outcome), or None when the rule has no on_match.
        """
        if policy_rule.on_match is None:
            return None
        with self._lock:
            if self._closed:
                name = action_name(policy_rule.on_match, ctx.rule)
                outcome = self._refusal(name, ctx, Outcome.FAILED, "the engine is shut down")
                verdict = _Verdict(Decision.CLOSED, outcome=outcome)
            else:
                verdict = self._decide(policy_rule.on_match, ctx)
        if verdict.job is not None:
            try:
                outcome = self._execute(verdict.job, self._begin(verdict.job))
            finally:
                verdict.job.claim.release()
        else:
            assert verdict.outcome is not None
            outcome = verdict.outcome
        self._report(outcome)
        return outcome

    def exhausted(self) -> set[tuple[str, str, str]]:
        """(action name, resource, jail) of every key whose max_runs window is still full."""
        now = self._clock.time()
        with self._lock:
            for key in [k for k, (_, until) in self._exhausted.items() if until <= now]:
                del self._exhausted[key]
            return {label for label, _ in self._exhausted.values()}

    def shutdown(self, timeout: float) -> None:
        """Stop accepting; let running actions finish for up to `timeout` seconds, then kill
        their process groups. Actions still waiting for a worker are not started (reported as
        failed). Returns once every worker thread is gone."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            workers = list(self._workers)
            for _ in range(self._idle):
                self._handoff.put(None)
            self._idle = 0
        for job in waiting:
            job.claim.release()
            cancelled = self._job_outcome(job, Outcome.FAILED, 0.0, detail="cancelled at shutdown")
            self._report(cancelled)
        deadline = time.monotonic() + max(0.0, timeout)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        still = [worker for worker in workers if worker.is_alive()]
        if still:
            logger.warning(
                "%d action(s) still running after %gs; killing them", len(still), timeout
            )
            self._runner.terminate_all()
        while workers:  # including one a submit in flight started after the copy above
            for worker in workers:
                worker.join()
            with self._lock:
                workers = list(self._workers)
        self._report_slots()

    # decisions

    def _decide(self, on_match: OnMatch, ctx: ActionContext) -> _Verdict:
        """Called with the engine lock held."""
        key: StateKey = (ctx.rule.canonical, ctx.jail)
        name = action_name(on_match, ctx.rule)
        try:
            command = build_command(on_match, ctx, own_pid=self._own_pid)
        except ActionError as exc:
            logger.error("not acting on %s in jail %s: %s", ctx.rule, ctx.jail, exc)
            return _Verdict(
                Decision.REJECTED, outcome=self._refusal(name, ctx, Outcome.FAILED, str(exc))
            )
        try:
            claim = self._state.try_claim(key)
        except OSError as exc:
            return self._state_unavailable(name, ctx, exc)
        if claim is None:
            logger.info("%s for %s in jail %s: still running, suppressed", name, ctx.rule, ctx.jail)
            return _Verdict(
                Decision.SUPPRESSED,
                outcome=self._refusal(name, ctx, Outcome.SUPPRESSED, "still running"),
            )
        try:
            with self._state.transaction() as entries:
                now = self._clock.time()
                decision, detail = self._admit(
                    entries, key=key, on_match=on_match, now=now, name=name, ctx=ctx
                )
                for other in [k for k, entry in entries.items() if entry.is_idle(now)]:
                    del entries[other]
        except OSError as exc:
            claim.release()
            return self._state_unavailable(name, ctx, exc)
        except BaseException:
            claim.release()
            raise
        if decision is not Decision.STARTED:
            claim.release()
            outcome = Outcome.SUPPRESSED if decision is Decision.SUPPRESSED else Outcome.EXHAUSTED
            return _Verdict(decision, outcome=self._refusal(name, ctx, outcome, detail))
        self._exhausted.pop(key, None)
        job = _Job(
            key, name, ctx.rule.resource.value, ctx.jail, command, on_match.timeout, claim,
            self._clock.monotonic(),
        )  # fmt: skip
        return _Verdict(Decision.STARTED, job=job)

    def _state_unavailable(self, name: str, ctx: ActionContext, exc: OSError) -> _Verdict:
        # Without the state a cooldown or max_runs cannot be honoured; not acting is the safe
        # side (an action that restarts a service must not start looping).
        logger.error(
            "not acting on %s in jail %s: action state unavailable: %s", ctx.rule, ctx.jail, exc
        )
        return _Verdict(
            Decision.REJECTED,
            outcome=self._refusal(name, ctx, Outcome.FAILED, f"state unavailable: {exc}"),
        )

    def _admit(
        self,
        entries: dict[StateKey, StateEntry],
        *,
        key: StateKey,
        on_match: OnMatch,
        now: float,
        name: str,
        ctx: ActionContext,
    ) -> tuple[Decision, str]:
        """Apply cooldown and max_runs to the key's entry, updating it; return the decision."""
        entry = _current(entries.get(key, StateEntry()), on_match, now)
        entries[key] = entry
        if now < entry.cooldown_until:
            left = entry.cooldown_until - now
            logger.info(
                "%s for %s in jail %s: in cooldown for %.0fs more, suppressed",
                name, ctx.rule, ctx.jail, left,
            )  # fmt: skip
            return Decision.SUPPRESSED, f"cooldown, {left:.0f}s left"
        limit = on_match.max_runs
        if limit is not None and len(entry.run_times) >= limit.count:
            until = min(entry.run_times) + limit.within
            label = (name, ctx.rule.resource.value, ctx.jail)
            self._exhausted[key] = (label, until)
            if entry.exhausted_until <= now:
                logger.error(
                    "%s for %s in jail %s ran %d times within %gs: NOT ACTING until %s. "
                    "The action is not solving the problem; look at the jail.",
                    name, ctx.rule, ctx.jail, len(entry.run_times), limit.within,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)),
                )  # fmt: skip
                entries[key] = replace(entry, exhausted_until=until)
            return Decision.EXHAUSTED, f"max_runs {limit.count} within {limit.within:g}s reached"
        run_times = (*entry.run_times, now) if limit is not None else ()
        entries[key] = StateEntry(now + on_match.cooldown, run_times, 0.0)
        return Decision.STARTED, ""

    # running

    def _reserve(self, job: _Job) -> bool:
        """True when a worker slot is the job's now; else queue it (max_running already run).
        Called with the engine lock held."""
        if self._running < self.max_running:
            self._running += 1
            return True
        if not self._waiting:
            logger.warning(
                "%d actions are running, the most allowed at once: %s for %s in jail %s "
                "waits for one of them to end",
                self.max_running, job.name, job.key[0], job.jail,
            )  # fmt: skip
        self._waiting.append(job)
        self._delayed += 1
        return False

    def _launch(self, job: _Job) -> None:
        """Start the job's command in this thread (the event path: no thread switch before the
        spawn), then hand it to a worker to see it through: an idle one if there is one (a
        queue put, instead of starting a thread while the program starts up), else a new one."""
        try:
            begun = self._begin(job)
            with self._lock:
                if self._idle > 0:
                    self._idle -= 1
                    self._handoff.put((job, begun))
                    return
            worker = threading.Thread(
                target=self._worker, args=(job, begun), name="rctlpolicy-action", daemon=True
            )
            with self._lock:
                self._workers.add(worker)
            worker.start()
        except BaseException:  # no worker to see it through: give the slot and claim back
            with self._lock:
                self._running -= 1
                self._workers = {w for w in self._workers if w.is_alive()}
            job.claim.release()
            raise

    def _begin(self, job: _Job) -> _Begun:
        """Start an argv now (a signal is sent by the worker); note how long it waited."""
        start_delay = max(0.0, self._clock.monotonic() - job.decided_at)
        started_at = self._clock.time()
        run: Run | None = None
        if isinstance(job.command, ExecCommand):
            run = self._runner.start(job.command.argv, timeout=job.timeout, name=job.name)
        return _Begun(run, started_at, start_delay)

    def _worker(self, job: _Job, begun: _Begun) -> None:
        handed: tuple[_Job, _Begun] | None = (job, begun)
        while handed is not None:
            self._run_jobs(*handed)
            handed = self._idle_wait()

    def _run_jobs(self, job: _Job, begun: _Begun) -> None:
        """Run a job, then the jobs waiting for a worker, then give the slot back."""
        current: _Job | None = job
        started: _Begun | None = begun
        while current is not None:
            try:
                self._work(current, started or self._begin(current))
            except Exception:  # a worker must always hand its slot back
                logger.exception("action %s failed inside rctlpolicy", current.name)
            started = None
            with self._lock:
                if self._waiting and not self._closed:
                    current = self._waiting.popleft()
                else:
                    current = None
                    self._running -= 1
            self._report_slots()

    def _idle_wait(self) -> tuple[_Job, _Begun] | None:
        """Wait (up to IDLE_WORKER_SECONDS) to be handed the next started job; None to end."""
        me = threading.current_thread()
        with self._lock:
            if self._closed:
                self._workers.discard(me)
                return None
            self._idle += 1
        try:
            handed = self._handoff.get(timeout=IDLE_WORKER_SECONDS)
        except queue.Empty:
            with self._lock:
                if self._idle > 0:  # nobody counted on this worker: it may go
                    self._idle -= 1
                    self._workers.discard(me)
                    return None
            handed = self._handoff.get()  # a launch took this worker just now: it is coming
        if handed is None:  # shutdown
            with self._lock:
                self._workers.discard(me)
        return handed

    def _work(self, job: _Job, begun: _Begun) -> None:
        try:
            outcome = self._execute(job, begun)
        finally:
            job.claim.release()
        self._report(outcome)

    def _execute(self, job: _Job, begun: _Begun) -> ActionOutcome:
        started_at, start_delay = begun.started_at, begun.start_delay
        try:
            if begun.run is not None:
                result = begun.run.wait()
            else:
                assert isinstance(job.command, SignalCommand)
                result = self._send_signal(job.command, job.name)
        except Exception as exc:
            logger.exception("action %s failed inside rctlpolicy", job.name)
            result = RunResult(Outcome.FAILED, None, started_at, 0.0, detail=repr(exc))
        outcome = self._job_outcome(
            job, result.outcome, result.duration, started_at,
            exit_status=result.exit_status, detail=result.detail, start_delay=start_delay,
        )  # fmt: skip
        level = logging.INFO if result.outcome is Outcome.OK else logging.WARNING
        logger.log(
            level, "action %s for %s in jail %s: %s%s after %.2fs",
            job.name, job.key[0], job.jail, result.outcome.value,
            f" ({result.detail})" if result.detail else "", result.duration,
        )  # fmt: skip
        return outcome

    def _send_signal(self, command: SignalCommand, name: str) -> RunResult:
        started_at = self._clock.time()
        start = self._clock.monotonic()
        signum = host_signal(command.signum)
        if signum is None:
            detail = f"signal {command.signum} (FreeBSD's numbering) does not exist on this system"
            outcome = Outcome.FAILED
        else:
            try:
                self._signaller(command.pid, int(signum))
            except ProcessLookupError:
                detail = f"pid {command.pid} is gone"
                outcome = Outcome.FAILED
            except OSError as exc:
                detail = f"cannot signal pid {command.pid}: {exc}"
                outcome = Outcome.FAILED
            else:
                detail = f"sent {signum.name} to pid {command.pid}"
                outcome = Outcome.OK
        logger.info("action %s: %s", name, detail)
        return RunResult(outcome, None, started_at, self._clock.monotonic() - start, None, detail)

    # reporting

    def _job_outcome(
        self,
        job: _Job,
        outcome: Outcome,
        duration: float,
        started_at: float | None = None,
        *,
        exit_status: int | None = None,
        detail: str = "",
        start_delay: float = 0.0,
    ) -> ActionOutcome:
        return ActionOutcome(
            name=job.name,
            resource=job.resource,
            jail=job.jail,
            outcome=outcome,
            duration=duration,
            started_at=self._clock.time() if started_at is None else started_at,
            rule=job.key[0],
            exit_status=exit_status,
            detail=detail,
            start_delay=start_delay,
        )

    def _refusal(
        self, name: str, ctx: ActionContext, outcome: Outcome, detail: str
    ) -> ActionOutcome:
        return ActionOutcome(
            name=name,
            resource=ctx.rule.resource.value,
            jail=ctx.jail,
            outcome=outcome,
            duration=0.0,
            started_at=self._clock.time(),
            rule=ctx.rule.canonical,
            detail=detail,
        )

    def _report(self, outcome: ActionOutcome) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            logger.exception("on_outcome callback failed for %s", outcome)

    def _report_slots(self) -> None:
        if self._on_slots is None:
            return
        with self._lock:  # in order: two workers' reports must not arrive swapped
            self._on_slots(self._running, self.max_running, self._delayed)


def _current(entry: StateEntry, on_match: OnMatch, now: float) -> StateEntry:
    """The entry as it matters now: expired run times dropped, and nothing trusted to lie
    further ahead than the policy allows (the wall clock may have been set back, or the
    policy's cooldown shortened since)."""
    within = on_match.max_runs.within if on_match.max_runs is not None else 0.0
    run_times = tuple(min(t, now) for t in entry.run_times if t > now - within)
    return StateEntry(
        cooldown_until=min(entry.cooldown_until, now + on_match.cooldown),
        run_times=run_times,
        exhausted_until=min(entry.exhausted_until, now + within),
    )
