"""The reload pipeline: when a change to the rules directory is applied, and by which thread.

A policy is applied only once it has **settled**, since files appear in pieces (a slow scp, a
configuration tool, someone typing into `cat >`) and a policy read half-way would unload good
rules or load a cut one:

1. a change (a watchdog event) schedules a look at the directory after the debounce;
2. each look reads every policy file (size, mtime, content hash: `policyload.Fingerprint`);
   the policy has settled when the fingerprint stayed the same for the settle period (2 s by
   default), no rctl.conf file lacks its final newline, and no editor save looks half-way
   (`save_in_progress`, waited for up to a limit);
3. the settled policy is loaded in a child process (`loadworker`), which cannot hold the
   daemon's signals or events; what the child read must be what had settled, or the wait
   starts again;
4. a valid policy that would remove more than half of the rules in force (and more than
   `HOLD_MIN_REMOVALS`) is **held back**, logged, and applied only if the same policy is seen
   again after a further settle period;
5. it is applied (or, with errors, rejected: the kernel keeps its rules).

SIGHUP means "apply now": it loads at once and skips every wait, the hold included. The pure
half is `ReloadGate` (time is passed in, so tests move it by hand); `Reloader` is the thread.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rctlpolicy.clock import Clock
from rctlpolicy.loops import Wakeup
from rctlpolicy.model import Rule
from rctlpolicy.policyload import (
    DEFAULT_MAX_FILE_BYTES,
    Fingerprint,
    LoadedRules,
    PolicyLoad,
    read_rules_dir,
    save_in_progress,
)

log = logging.getLogger("rctlpolicy")

#: A reload removing more rules than this, and more than half of those in force, is held back.
HOLD_MIN_REMOVALS = 10


def removals(in_force: Iterable[Rule], wanted: Iterable[Rule]) -> int:
    """How many rules in force a policy wanting `wanted` takes out of the kernel: a rule whose
    amount changes is replaced, not removed."""
    keep = {_identity(rule) for rule in wanted}
    return sum(1 for rule in {_identity(rule) for rule in in_force} if rule not in keep)


def _identity(rule: Rule) -> tuple[object, ...]:
    return (rule.subject, rule.subject_id, rule.resource, rule.action, rule.per)


def held_back(removed: int, in_force: int) -> bool:
    """Whether removing `removed` of the `in_force` rules needs the policy seen twice."""
    return removed > HOLD_MIN_REMOVALS and 2 * removed > in_force


# --- the pure half -------------------------------------------------------------------------------


class Step(enum.Enum):
    WAIT = "wait"  # look again at `ReloadGate.next_check`
    LOAD = "load"  # the policy has settled: load it, then call `loaded`
    APPLY_HELD = "apply-held"  # the policy held back was seen again, unchanged: apply it
    UNCHANGED = "unchanged"  # the directory holds what was last loaded: nothing to do


@dataclass(frozen=True, slots=True)
class Verdict:
    step: Step
    #: Why it waits (log it when it changes), or for LOAD a note on why it stops waiting.
    reason: str | None = None


class ReloadGate:
    """Decides, look after look, when a changed rules directory may be loaded and applied."""

    def __init__(self, settle: float, debounce: float, save_limit: float) -> None:
        self.settle = settle
        self.debounce = debounce
        self.save_limit = save_limit
        #: When to look at the directory next (monotonic seconds); None: nothing pending.
        self.next_check: float | None = None
        self._pending = False
        self._baseline: Fingerprint | None = None
        self._stable_since = 0.0
        self._saving_since: float | None = None
        self._outcome: Fingerprint | None = None  # what the last load read
        self._held: Fingerprint | None = None
        self._held_at = 0.0

    @property
    def pending(self) -> bool:
        """Whether a change is waiting to be applied (settling, unfinished or held back)."""
        return self._pending

    def poke(self, now: float) -> None:
        """Something in the directory changed: look after the debounce."""
        self._pending = True
        self.next_check = now + self.debounce

    def _wait(self, until: float, reason: str | None = None) -> Verdict:
        self.next_check = until
        return Verdict(Step.WAIT, reason)

    def check(self, fingerprint: Fingerprint, saving: str | None, now: float) -> Verdict:
        """A look at the directory: its fingerprint now, and whether a save looks half-way."""
        self._pending = True
        if fingerprint != self._baseline:
            self._baseline = fingerprint
            self._stable_since = now
            if self._held is not None:
                self._held = None
                return self._wait(now + self.settle, "the policy changed again; not held")
            return self._wait(now + self.settle)
        if self._held is None and fingerprint == self._outcome:
            self.finished(fingerprint)
            return Verdict(Step.UNCHANGED)
        unfinished = fingerprint.unfinished()
        if unfinished is not None:
            return self._wait(now + self.settle, f"reload put off: {unfinished}")
        note = None
        if saving is None:
            self._saving_since = None
        else:
            if self._saving_since is None:
                self._saving_since = now
            waited = now - self._saving_since
            if waited < self.save_limit:
                until = min(now + self.settle, self._saving_since + self.save_limit)
                return self._wait(until, f"reload put off: {saving}; waiting for the save")
            note = f"{saving} for {waited:.0f} s; reloading anyway"
        if now < self._stable_since + self.settle:
            return self._wait(self._stable_since + self.settle)
        if self._held is not None:
            if now < self._held_at + self.settle:
                return self._wait(self._held_at + self.settle)
            return Verdict(Step.APPLY_HELD)
        self.next_check = None
        return Verdict(Step.LOAD, note)

    def loaded(self, fingerprint: Fingerprint | None, now: float) -> bool:
        """Whether the load read what had settled; if not, the wait starts again."""
        if fingerprint is None or fingerprint == self._baseline:
            return True
        self._baseline = fingerprint
        self._stable_since = now
        self.next_check = now + self.settle
        return False

    def hold(self, now: float) -> None:
        """The settled policy is held back until it is seen again after a settle period."""
        self._held = self._baseline
        self._held_at = now
        self.next_check = now + self.settle

    def finished(self, fingerprint: Fingerprint | None) -> None:
        """The policy read as `fingerprint` was applied or rejected: nothing is pending."""
        self.next_check = None
        self._pending = False
        self._held = None
        self._saving_since = None
        if fingerprint is not None:
            self._outcome = self._baseline = fingerprint


# --- the thread ----------------------------------------------------------------------------------


class PolicyLoader(Protocol):
    def load(self, rules_dir: Path, cancel: Wakeup, stop: bytes) -> PolicyLoad | None:
        """The rules directory loaded; None when `stop` was posted to `cancel` meanwhile."""
        ...


class ReloadTarget(Protocol):
    """What the reload thread needs from the daemon."""

    def loaded_sizes(self) -> Mapping[str, int]:
        """Bytes of each file of the policy in force (to recognise an editor's save)."""
        ...

    def rules_in_force(self) -> tuple[Rule, ...]:
        """The rules the policy in force keeps in the kernel."""
        ...

    def prepare(self, load: PolicyLoad) -> LoadedRules:
        """A valid load's rules, expanded for the jails that run now."""
        ...

    def install(self, load: PolicyLoad, prepared: LoadedRules, reason: str) -> None:
        """Apply the policy."""
        ...

    def reject(self, load: PolicyLoad, reason: str) -> None:
        """Keep the rules in force and say why the policy was refused."""
        ...

    def reconcile(self, reason: str) -> None:
        """Apply the policy in force again (jails came or went, the last apply failed)."""
        ...

    def reload_web_config(self) -> None: ...

    def reload_pending(self, pending: bool) -> None:
        """Show whether a change waits to be applied (a metric)."""
        ...


_CHANGED = b"C"
_NOW = b"N"
_RECONCILE = b"R"
_STOP = b"S"


class Reloader(threading.Thread):
    """The thread that loads and applies the policy: changes, SIGHUP and reconcile requests
    come in as requests (`changed`, `reload_now`, `reconcile`), one at a time; `stop` ends it,
    abandoning a load in progress."""

    def __init__(
        self,
        target: ReloadTarget,
        loader: PolicyLoader,
        rules_dir: Path,
        clock: Clock,
        *,
        settle: float,
        debounce: float,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        super().__init__(name="rctlpolicy-reload", daemon=True)
        self.target = target
        self.loader = loader
        self.rules_dir = rules_dir
        self.clock = clock
        self.max_file_bytes = max_file_bytes
        # How long a save that looks half-way through may hold a reload back.
        self.gate = ReloadGate(settle, debounce, max(settle, 2.0, 10 * debounce))
        self.inbox = Wakeup()
        self._reconcile_reason = "jails started or stopped"
        self._held: tuple[PolicyLoad, LoadedRules] | None = None
        self._said: str | None = None

    # --- requests, from any thread -------------------------------------------------------

    def changed(self) -> None:
        """The rules directory changed (a watchdog event)."""
        self.inbox.post(_CHANGED)

    def reload_now(self) -> None:
        """SIGHUP: load and apply at once, without waiting for anything."""
        self.inbox.post(_NOW)

    def reconcile(self, reason: str) -> None:
        self._reconcile_reason = reason
        self.inbox.post(_RECONCILE)

    def stop(self) -> None:
        self.inbox.post(_STOP)

    def start_from(self, load: PolicyLoad) -> None:
        """Start the thread, the policy of `load` being in force."""
        self.gate.finished(load.fingerprint)
        self.start()

    # --- the thread ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the request pipe, once no thread posts any more."""
        self.inbox.close()

    def run(self) -> None:
        while True:
            due = self.gate.next_check
            timeout = None if due is None else max(0.0, due - self.clock.monotonic())
            requests = self.inbox.wait(timeout)
            if _STOP in requests:
                return
            try:
                self._serve(requests)
            except Exception:  # a reload that breaks must not take the daemon down
                log.exception("error while reloading")
            self.target.reload_pending(self.gate.pending)

    def _serve(self, requests: set[bytes]) -> None:
        if _CHANGED in requests:
            self.gate.poke(self.clock.monotonic())
            self.target.reload_pending(True)
        if _NOW in requests:
            self._reload_now()
        if _RECONCILE in requests:
            self.target.reconcile(self._reconcile_reason)
        due = self.gate.next_check
        if due is not None and self.clock.monotonic() >= due:
            self._look()

    def _say(self, reason: str | None) -> None:
        """Log why a reload waits, once per reason."""
        if reason is not None and reason != self._said:
            log.info("%s", reason)
        self._said = reason

    def _look(self) -> None:
        fingerprint = read_rules_dir(self.rules_dir, max_file_bytes=self.max_file_bytes)
        saving = save_in_progress(self.target.loaded_sizes())
        verdict = self.gate.check(fingerprint.fingerprint, saving, self.clock.monotonic())
        if verdict.step is Step.WAIT:
            self._say(verdict.reason)
            return
        self._said = None
        if verdict.step is Step.APPLY_HELD:
            assert self._held is not None
            held, prepared = self._held
            self._held = None
            log.warning(
                "the policy held back is unchanged after %.3g s: applying it", self.gate.settle
            )
            self.target.install(held, prepared, "files changed, confirmed")
            self.gate.finished(held.fingerprint)
        elif verdict.step is Step.LOAD:
            if verdict.reason is not None:
                log.warning("%s", verdict.reason)
            load = self._load()
            if load is None:
                return
            if not self.gate.loaded(load.fingerprint, self.clock.monotonic()):
                log.info("the policy changed while it was read; waiting for it to settle")
                return
            self._conclude(load, "files changed", confirmed=False)

    def _load(self) -> PolicyLoad | None:
        self.target.reload_web_config()
        return self.loader.load(self.rules_dir, self.inbox, _STOP)

    def _reload_now(self) -> None:
        self._held = None
        load = self._load()
        if load is not None:
            self._conclude(load, "SIGHUP", confirmed=True)

    def _conclude(self, load: PolicyLoad, reason: str, *, confirmed: bool) -> None:
        if load.policy is None:
            self.target.reject(load, reason)
            self.gate.finished(load.fingerprint)
            return
        prepared = self.target.prepare(load)
        in_force = {rule.canonical: rule for rule in self.target.rules_in_force()}
        removed = removals(in_force.values(), (r.rule for r in prepared.expanded))
        if held_back(removed, len(in_force)):
            if not confirmed:
                self._held = (load, prepared)
                self.gate.hold(self.clock.monotonic())
                log.warning(
                    "reload held back: it would remove %d of the %d rules in force; it is "
                    "applied if the policy is unchanged in %.3g s, or at once on SIGHUP",
                    removed,
                    len(in_force),
                    self.gate.settle,
                )
                return
            log.warning("removing %d of the %d rules in force (%s)", removed, len(in_force), reason)
        self.target.install(load, prepared, reason)
        self.gate.finished(load.fingerprint)
