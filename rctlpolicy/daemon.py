"""The rctlpolicy daemon: keep the kernel in line with the policy, act on devd's RCTL events,
serve metrics.

Threads and what they own (each loop a small thread class that stops on a sentinel):
- the main thread: signals (through a self-pipe, so a handler never takes a lock), in `run()`;
- the reload thread (`rctlpolicy.reload.Reloader`): loads the policy (in a child process) once
  it has settled, applies it, and reconciles, one at a time;
- the devd reader (`DevdClient`): only reads the socket and queues lines, so devd never waits;
- the dispatcher (`QueueLoop`): parses queued lines, finds the policy rule, hands it to the
  action engine (which runs commands on its own workers), and resynchronises after each
  (re)connect;
- the jail watcher (`PeriodicLoop`): notices jails starting and stopping (jail patterns),
  retries a failed apply and ends episodes;
- watchdog's observer (`rctlpolicy.watcher`), whose events go to the reload thread;
- the metrics server's accept thread and connection workers;
- the usage history's sampler and writer (`rctlpolicy.history.sampler`), unless
  `--history.interval 0`: nothing else waits on its database.
Nothing that goes wrong after start-up stops the daemon: it is logged and counted.

Loading the policy is `rctlpolicy.policyload`; the process around the daemon (logging, the
pidfile) is `rctlpolicy.service`. The pure decisions about events (which policy rule a possibly
truncated event is about, which jail its action is about) are `rctlpolicy.eventmatch`, shared
with `rctlpolicy handle` and tested on their own.

One responsibility, hence one module of some 700 lines: the `Daemon` class wires those parts
together and owns the state they share (the rules in force, the stats, the action engine). Each
section below (start-up, signals, the reload thread's side, devd events, shutdown) is a handful
of short methods over that shared state; cutting one out would only pass the state back in.
"""

from __future__ import annotations

import html
import logging
import os
import queue
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rctlpolicy.actioncontext import ActionContext
from rctlpolicy.actions import (
    DEFAULT_MAX_RUNNING,
    ActionEngine,
    ActionOutcome,
    ActionProcessRunner,
    Decision,
    MemoryState,
    Outcome,
    Runner,
)
from rctlpolicy.apply import AppliedRules, apply_rules
from rctlpolicy.clock import Clock, SystemClock
from rctlpolicy.config import DaemonConfig
from rctlpolicy.daemonmetrics import DaemonCollector, DaemonStats
from rctlpolicy.devd import (
    Connected,
    DevdClient,
    DevdItem,
    Disconnected,
    MalformedEvent,
    RctlEvent,
    Receiving,
    parse_rctl_event,
)
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.eventmatch import (
    Episodes,
    EventVerdict,
    match_event,
    resync_candidate,
    resync_context,
)
from rctlpolicy.exporter import JailCollector
from rctlpolicy.exposition import make_registry, renderer, wants_openmetrics, write_textfile
from rctlpolicy.formats import render
from rctlpolicy.kernel.base import Kernel, KernelError, RuleStoreWatch
from rctlpolicy.loops import PeriodicLoop, QueueLoop, Wakeup
from rctlpolicy.model import Filter, Rule, Severity
from rctlpolicy.onmatch import action_name
from rctlpolicy.policy_model import PolicyRule
from rctlpolicy.policyload import (
    LOG_DIAGNOSTICS_PER_FILE,
    LOG_SOURCE_CHARS,
    LoadedRules,
    PolicyLoad,
    expand,
    for_the_log,
)
from rctlpolicy.reload import PolicyLoader, Reloader
from rctlpolicy.watcher import RulesWatcher
from rctlpolicy.web.settings import parse_listen_address

if TYPE_CHECKING:
    from rctlpolicy.web import MetricsServer, WebConfig

log = logging.getLogger("rctlpolicy")


class StartupError(Exception):
    """The daemon cannot start; the message (and diagnostics) say why."""

    def __init__(
        self,
        message: str,
        diagnostics: Iterable[Diagnostic] = (),
        private: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.diagnostics = tuple(diagnostics)
        #: Files whose content must not be quoted (see `policyload.for_the_log`).
        self.private = private


class StoppedDuringStartup(Exception):
    """SIGTERM or SIGINT came while the daemon was starting: nothing was changed."""


# --- the daemon ------------------------------------------------------------------------------

#: Records the devd reader may queue ahead of the dispatcher; more are dropped and counted
#: (rctlpolicy_devd_records_dropped_total) rather than letting devd drop the daemon.
DEVD_QUEUE_MAX = 100_000
#: The interpreter's thread switch interval while the daemon process runs (set by
#: rctlpolicy.service.run_daemon, the process's owner, and restored when it returns; a Daemon
#: used as a library leaves the interpreter's setting alone): the devd reader wins the GIL back
#: within 0.2 ms of its socket becoming readable however busy the dispatcher is (the default
#: is 5 ms). bench/devd.py: with on_match, 0 lost up to 20,000 events/s (10,000 at 1 ms).
SWITCH_INTERVAL = 0.0002

#: Requests to the main loop, one byte each on its wakeup pipe.
_RELOAD = b"H"
_STOP = b"T"


class Daemon:
    """The service's state and loops; `run_daemon` (service.py) wires it into a process.

    Use: `install_signal_handlers()`, `start()` (raises StartupError), `run()` until a stop
    request, then `restore_signal_handlers()` and `close()`.
    """

    def __init__(
        self,
        config: DaemonConfig,
        kernel: Kernel,
        loader: PolicyLoader,
        state_dir: Path,
        *,
        clock: Clock | None = None,
        runner: Runner | None = None,
        devd_paths: tuple[Path | None, Path | None] | None = None,
        max_parallel_actions: int = DEFAULT_MAX_RUNNING,
        rule_store: RuleStoreWatch | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.loader = loader
        # The simulated kernel's rules can be lost while the daemon runs (its state file
        # removed or damaged): the generation the last apply saw tells when to apply again.
        self._rule_store = rule_store
        self._kernel_generation: str | None = None
        self.clock = clock or SystemClock()
        self.stats = DaemonStats(start_time=self.clock.time())
        self.applied = AppliedRules.in_dir(state_dir)
        self.engine = ActionEngine(
            self.clock,
            runner or ActionProcessRunner(),
            MemoryState(),
            on_outcome=self._on_outcome,
            max_workers=max_parallel_actions,
            on_slots=self.stats.action_slots,
        )
        self._loaded: LoadedRules | None = None
        self._install_failed = False
        self._retry_delay = 0.0
        self._retry_at = 0.0
        self._jails_error: str | None = None
        self._control = Wakeup()
        self._stopping = threading.Event()
        self._started = False
        self._dispatcher: QueueLoop[DevdItem] = QueueLoop(
            "rctlpolicy-dispatch", self._dispatch, queue.SimpleQueue()
        )
        #: What the devd reader feeds and the dispatcher takes from.
        self._events = self._dispatcher.items
        self._jail_watcher = PeriodicLoop(
            "rctlpolicy-jails", config.jail_poll_interval, self._watch_jails
        )
        self._connections = 0
        self._episodes = Episodes()
        self._textfile_lock = threading.Lock()
        self.registry = make_registry(
            [JailCollector(kernel, self.stats), DaemonCollector(self.stats)]
        )
        self.web: MetricsServer | None = None
        self.devd: DevdClient | None = None
        self._devd_paths = devd_paths
        self._watcher: RulesWatcher | None = None
        self._reloader = Reloader(
            self,
            loader,
            config.rules_dir,
            self.clock,
            settle=config.reload_settle,
            debounce=config.reload_debounce,
            max_file_bytes=config.max_policy_file_size,
        )
        self._previous_handlers: dict[int, Any] = {}
        self._previous_wakeup_fd = -1
        self._state_dir = state_dir
        self.history: Any = None

    # --- start-up ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Before any slow start-up work: an early HUP must not kill the process."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self._control.post(_RELOAD if signum == signal.SIGHUP else _STOP)

        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, handler)
        # The signal may be delivered to any thread, and Python runs the handler only when
        # the main thread next runs bytecode: the wakeup fd wakes the main loop's select.
        self._previous_wakeup_fd = signal.set_wakeup_fd(
            self._control.write_fileno(), warn_on_full_buffer=False
        )

    def restore_signal_handlers(self) -> None:
        """Put back the handlers install_signal_handlers() replaced."""
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        if self._previous_handlers:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._previous_handlers.clear()

    def start(self) -> None:
        """Load and apply the policy, then start every loop. Raises StartupError (and OSError
        when the metrics address cannot be bound), StoppedDuringStartup on SIGTERM."""
        # A rules directory that is not there is said once, before anything starts.
        try:
            os.stat(self.config.rules_dir)
        except OSError as error:
            raise StartupError(
                f"rules directory {self.config.rules_dir}: {error.strerror or error}"
            ) from error
        # Watch first: an edit made while we start must still lead to a reload.
        try:
            self._watcher = RulesWatcher(self.config.rules_dir, self._reloader.changed)
            self._watcher.start()
        except OSError as error:
            log.error("cannot watch %s (%s); reload with SIGHUP", self.config.rules_dir, error)
            self._watcher = None
        load = self.loader.load(self.config.rules_dir, self._control, _STOP)
        if load is None:
            raise StoppedDuringStartup()
        if load.policy is None:
            raise StartupError(
                f"the policy in {self.config.rules_dir} has errors", load.diagnostics, load.private
            )
        self._log_diagnostics(load)
        status = self.kernel.racct_status()
        self.stats.racct_enabled = status.enabled
        if not status.enabled:
            log.error("RACCT/RCTL is not usable: %s", status.reason)
        ok = self._apply(self.prepare(load))
        self.stats.reloaded(ok, self.clock.time(), self._rule_count())
        self._start_web()
        self._start_devd()
        self._dispatcher.start()
        self._jail_watcher.start()
        self._start_history()
        self._reloader.start_from(load)
        self._started = True
        self._write_textfile()
        log.info(
            "rctlpolicy started: %d rules from %s; serving metrics on %s",
            self._rule_count(),
            self.config.rules_dir,
            self.metrics_url,
        )

    def _start_web(self) -> None:
        from rctlpolicy.web import MetricsServer, WebConfigError
        from rctlpolicy.web.metrics import WebCollector

        web_config = None
        if self.config.web_config_file is not None:
            try:
                web_config = self._read_web_config()
            except WebConfigError as error:
                raise StartupError(str(error)) from error
        # ":10217" is every address, IPv6 too where the system has it (split_address says
        # 0.0.0.0, for the IPv4-only view of the other commands).
        host, port = parse_listen_address(self.config.listen_address)
        self.web = MetricsServer(
            host,
            port,
            self.config.telemetry_path,
            renderer(self.registry),
            web_config=web_config,
            landing_page=_landing_page(self.config.telemetry_path),
            render_key=wants_openmetrics,
        )
        self.registry.register(WebCollector(self.web.stats))
        self.web.start()

    def _start_history(self) -> None:
        if not self.config.history_interval:
            return
        from rctlpolicy.history import HISTORY_FILE_NAME
        from rctlpolicy.history.sampler import HistorySampler

        self.history = HistorySampler(
            self.kernel,
            self._state_dir / HISTORY_FILE_NAME,
            self.clock,
            self.config.history_interval,
            self.stats.history,
            raw_retention=self.config.history_raw_retention,
            retention=self.config.history_retention,
        )
        self.history.start()

    def _read_web_config(self) -> WebConfig:
        from rctlpolicy.web import load_web_config

        assert self.config.web_config_file is not None
        return load_web_config(self.config.web_config_file)

    def _start_devd(self) -> None:
        if self._devd_paths is not None:
            seqpacket, stream = self._devd_paths
        else:
            seqpacket = self.config.devd_socket or Path("/var/run/devd.seqpacket.pipe")
            stream = seqpacket.with_name("devd.pipe")
        # A SimpleQueue hands a record to the dispatcher in half the time a Queue takes; the
        # reader bounds it (DEVD_QUEUE_MAX) itself.
        self.devd = DevdClient(
            self._events, seqpacket_path=seqpacket, stream_path=stream, limit=DEVD_QUEUE_MAX
        )
        client = self.devd
        self.stats.devd_records_dropped = lambda: client.dropped
        self.devd.start()

    @property
    def metrics_port(self) -> int:
        """The bound metrics port (after asking for port 0, the one the kernel chose)."""
        return int(self.web.port) if self.web is not None else 0

    @property
    def metrics_url(self) -> str:
        """Where the metrics are served, with the bound port."""
        if self.web is None:
            return ""
        return str(self.web.url)

    # --- the main loop: signals ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `request_stop`); returns the exit status (0)."""
        while True:
            requests = self._control.wait()
            if _STOP in requests:
                break
            if _RELOAD in requests:
                self._reloader.reload_now()
        self.shutdown()
        return 0

    def request_stop(self) -> None:
        """Ask the main loop to stop, from any thread (as SIGTERM does)."""
        self._control.post(_STOP)

    def request_reload(self) -> None:
        """Ask for a reload now, from any thread (as SIGHUP does)."""
        self._control.post(_RELOAD)

    # --- the reload thread's side (rctlpolicy.reload.ReloadTarget) -------------------------

    def loaded_sizes(self) -> Mapping[str, int]:
        """Bytes of each file of the policy in force."""
        return self._loaded.file_sizes if self._loaded is not None else {}

    def rules_in_force(self) -> tuple[Rule, ...]:
        """The rules the policy in force keeps in the kernel."""
        return tuple(r.rule for r in self._loaded.expanded) if self._loaded is not None else ()

    def prepare(self, load: PolicyLoad) -> LoadedRules:
        """A valid load's rules, expanded for the jails that run now."""
        assert load.policy is not None
        return expand(load.policy, self._jail_names(), load.file_sizes)

    def install(self, load: PolicyLoad, prepared: LoadedRules, reason: str) -> None:
        """Apply a new policy (its rules expanded by `prepare`)."""
        self._log_diagnostics(load)
        ok = self._apply(prepared)
        self.stats.reloaded(ok, self.clock.time(), self._rule_count())
        if ok:
            log.info("policy reloaded (%s): %d rules", reason, self._rule_count())
        else:
            log.error("policy reloaded (%s), but the kernel refused part of it", reason)
        self._write_textfile()

    def reject(self, load: PolicyLoad, reason: str) -> None:
        """An invalid policy changes nothing in the kernel: say why."""
        log.error(
            "reload (%s) rejected: the policy has errors; the rules in force are kept", reason
        )
        self._log_diagnostics(load, logging.ERROR)
        self.stats.reloaded(False, self.clock.time())
        self._write_textfile()

    def reload_pending(self, pending: bool) -> None:
        """Show whether a change to the policy waits to be applied."""
        with self.stats.lock:
            self.stats.reload_pending = pending

    def reload_web_config(self) -> None:
        """Read the web config again (with every reload of the policy)."""
        self._reload_web_config()

    def _reload_web_config(self) -> None:
        if self.web is None or self.config.web_config_file is None:
            return
        from rctlpolicy.web import WebConfigError

        try:
            self.web.set_web_config(self._read_web_config())
        except WebConfigError as error:
            log.error("keeping the previous web config: %s", error)

    def reconcile(self, reason: str) -> None:
        """Apply the loaded policy again (jails came or went, or the last apply failed)."""
        loaded = self._loaded
        if loaded is None:
            return
        failing = self._install_failed
        again = expand(loaded.policy, self._jail_names(), loaded.file_sizes)
        if self._apply(again) and failing:
            self.stats.reloaded(True, self.clock.time(), self._rule_count())
        with self.stats.lock:
            self.stats.rules = self._rule_count()
        log.info("rules reconciled (%s)", reason)
        self._write_textfile()

    def _apply(self, loaded: LoadedRules) -> bool:
        """Make the kernel hold these rules; False when the kernel refused some."""
        ok = False
        try:
            report = apply_rules(self.kernel, [r.rule for r in loaded.expanded], self.applied)
        except KernelError as error:
            log.error("cannot apply the policy: %s", error)
        except OSError as error:
            log.error("cannot apply the policy (state file): %s", error)
        else:
            for rule in report.removed:
                log.info("removed rule %s", rule)
            for rule in report.added:
                log.info("added rule %s", rule)
            for rule, refusal in report.failures:
                log.error("the kernel refused %s: %s", rule, refusal.reason)
            ok = report.ok
        self._loaded = loaded
        self._install_failed = not ok
        self._kernel_generation = self._current_generation()
        if ok:
            self._retry_delay = 0.0
        else:
            # Retried from the jail loop, less and less often (RACCT may stay off until reboot).
            self._retry_delay = min(
                max(2 * self._retry_delay, self.config.jail_poll_interval), 300.0
            )
            self._retry_at = self.clock.monotonic() + self._retry_delay
        return ok

    def _rule_count(self) -> int:
        return len(self._loaded.expanded) if self._loaded is not None else 0

    def _jail_names(self) -> set[str]:
        try:
            names = {jail.name for jail in self.kernel.jails()}
        except (KernelError, OSError) as error:
            # Logged when it starts failing (or fails differently), not on every poll.
            if str(error) != self._jails_error:
                log.warning("cannot list jails (keeping the last list): %s", error)
            self._jails_error = str(error)
            return set(self._loaded.jail_names) if self._loaded else set()
        if self._jails_error is not None:
            log.info("the jails can be listed again")
            self._jails_error = None
        return names

    # --- devd events ---------------------------------------------------------------------

    def _dispatch(self, item: DevdItem) -> None:
        if isinstance(item, Connected):
            self._connections += 1
            self.stats.devd_state(True, reconnected=self._connections > 1)
            self.resync("connected to devd" if self._connections == 1 else "reconnected to devd")
            return
        if isinstance(item, Receiving):
            # devd accepted us only now, perhaps long after the connect (its client limit):
            # what fired in between never reached us.
            self.stats.devd_receiving_now()
            self.resync("first record from devd")
            return
        if isinstance(item, Disconnected):
            self.stats.devd_state(False)
            return
        event = parse_rctl_event(item)
        if event is None:
            return  # not an RCTL event: devd forwards every subsystem's
        if isinstance(event, MalformedEvent):
            self.stats.count_event("malformed")
            log.warning("malformed RCTL message (%s): %r", event.reason, event.raw[:200])
            return
        self.handle_event(event)

    def handle_event(self, event: RctlEvent) -> Decision | None:
        """Count an RCTL event and, when it names a policy rule with an action, act on it."""
        loaded = self._loaded
        if loaded is None:
            return None
        match = match_event(event, loaded.by_canonical, loaded.jail_names)
        self.stats.count_event(match.verdict.value)
        if match.verdict is EventVerdict.UNMATCHED:
            log.info("%s", match.reason)
        elif match.verdict is not EventVerdict.HANDLED:
            log.warning("%s", match.reason)
        if match.policy_rule is None or match.context is None:
            return None
        policy_rule = match.policy_rule
        if resync_candidate(policy_rule) and self._episodes.event_arrived(policy_rule.canonical):
            # The kernel's report of the episode the resync already acted on.
            log.info(
                "%s: the resync already acted on this episode; not acting twice",
                policy_rule.canonical,
            )
            self._count_refusal(policy_rule, Outcome.SUPPRESSED)
            return Decision.SUPPRESSED
        return self._submit(policy_rule, match.context)

    def _submit(self, policy_rule: PolicyRule, ctx: ActionContext) -> Decision:
        decision = self.engine.submit(policy_rule, ctx)
        if decision is Decision.EXHAUSTED:
            self.stats.exhausted = frozenset(self.engine.exhausted())
        return decision

    def _count_refusal(self, policy_rule: PolicyRule, outcome: Outcome) -> None:
        assert policy_rule.on_match is not None
        name = action_name(policy_rule.on_match, policy_rule.rule)
        self.stats.count_action(name, policy_rule.rule.resource.value, outcome.value)

    def resync(self, reason: str) -> None:
        """After a (re)connect: act on devctl rules whose episode began while no event could
        reach us (devd keeps no history), but never on an episode already acted on."""
        loaded = self._loaded
        if loaded is None:
            return
        acted = known = waiting = 0
        seen: set[str] = set()
        for policy_rule in loaded.expanded:
            canonical = policy_rule.canonical
            if not resync_candidate(policy_rule) or canonical in seen:
                continue
            seen.add(canonical)
            over = self._over_limit(policy_rule.rule)
            if over is None:
                continue
            if not over:
                self._episodes.end(canonical)
                continue
            if self._episodes.known(canonical):
                known += 1
                continue
            context = resync_context(policy_rule)
            if isinstance(context, str):
                log.warning(
                    "%s is over its limit, but %s; it runs at the kernel's next event for it",
                    canonical,
                    context,
                )
                waiting += 1
                continue
            self._episodes.resync_acts(canonical)
            log.warning(
                "%s is over its limit and no event for it reached us; acting now", canonical
            )
            acted += 1
            self._submit(policy_rule, context)
        log.info(
            "resync (%s): acted on %d rule(s) over their limit, %d already handled, "
            "%d waiting for an event",
            reason,
            acted,
            known,
            waiting,
        )

    def _over_limit(self, rule: Rule) -> bool | None:
        try:
            usage = self.kernel.usage(Filter(rule.subject, rule.subject_id))
        except (KernelError, OSError) as error:
            log.debug("cannot read usage for %s: %s", rule, error)
            return None
        return usage.get(rule.resource, 0) > rule.amount

    def _end_finished_episodes(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        for canonical in self._episodes.active():
            policy_rule = loaded.by_canonical.get(canonical)
            if policy_rule is None or self._over_limit(policy_rule.rule) is False:
                self._episodes.end(canonical)

    def _watch_jails(self) -> None:
        """One tick of the jail watcher: reconcile when the kernel lost its rules, when jails
        came or went (or the last apply failed and its retry is due), watch the rules directory
        again if it was replaced, end finished episodes, refresh the textfile."""
        loaded = self._loaded
        if loaded is not None:
            if self._kernel_lost_rules():
                self._reloader.reconcile("the kernel lost its rules")
            elif self._install_failed and self.clock.monotonic() >= self._retry_at:
                self._reloader.reconcile("retrying the apply that failed")
            elif (
                any(r.jail_pattern for r in loaded.policy.rules)
                and self._jail_names() != loaded.jail_names
            ):
                self._reloader.reconcile("jails started or stopped")
        if self._watcher is not None:
            self._watcher.check()
        self._end_finished_episodes()
        self.stats.exhausted = frozenset(self.engine.exhausted())
        self._write_textfile()

    def _current_generation(self) -> str | None:
        if self._rule_store is None:
            return None
        try:
            return self._rule_store.rule_store_status().generation
        except OSError as error:
            log.debug("cannot read the kernel's rule store: %s", error)
            return self._kernel_generation

    def _kernel_lost_rules(self) -> bool:
        """Whether the rules the last apply put in are gone (said once per loss)."""
        if self._rule_store is None:
            return False
        try:
            status = self._rule_store.rule_store_status()
        except OSError as error:
            log.debug("cannot read the kernel's rule store: %s", error)
            return False
        if status.generation == self._kernel_generation:
            return False
        self._kernel_generation = status.generation
        how = f"damaged ({status.damage})" if status.damage else "removed"
        log.error(
            "the simulated kernel lost the rules this daemon applied: its state file was %s; "
            "re-applying the policy",
            how,
        )
        with self.stats.lock:
            self.stats.kernel_rules_lost += 1
        return True

    def _on_outcome(self, outcome: ActionOutcome) -> None:
        timed = outcome.outcome in (Outcome.OK, Outcome.FAILED, Outcome.TIMEOUT)
        self.stats.count_action(
            outcome.name,
            outcome.resource,
            outcome.outcome.value,
            outcome.duration if timed else None,
        )
        if outcome.outcome is Outcome.EXHAUSTED:
            self.stats.exhausted = frozenset(self.engine.exhausted())

    # --- shutdown ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop reading events, let running actions finish within the bound, stop serving.

        The rules stay in the kernel unless --flush-on-exit (and only after a real start: a
        daemon that failed to start must not unload what an earlier one applied).
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping")
        if self._watcher is not None:
            self._watcher.stop()
        if self._reloader.is_alive():
            # A load in progress is abandoned at once; an apply under way is let finish for a
            # moment (an apply cut short converges on the next start, see rctlpolicy.apply).
            self._reloader.stop()
            self._reloader.join(1.0)
        if self.devd is not None:
            self.devd.stop()
        self.engine.shutdown(self.config.shutdown_timeout)
        for loop in (self._dispatcher, self._jail_watcher):
            if loop.is_alive():
                loop.stop()
                loop.join(5.0)
        if self.history is not None:
            self.history.stop()
        if self._started and self.config.flush_on_exit:
            try:
                report = apply_rules(self.kernel, [], self.applied)
                log.info("flushed %d rules on exit", len(report.removed))
            except (KernelError, OSError) as error:
                log.error("cannot flush rules on exit: %s", error)
        if self._started:
            self._write_textfile()
        if self.web is not None:
            self.web.stop()
        log.info("stopped")

    def close(self) -> None:
        """Release the wakeup pipes; call after restore_signal_handlers()."""
        self._control.close()
        self._reloader.close()

    # --- helpers -------------------------------------------------------------------------

    def _write_textfile(self) -> None:
        if self.config.output_file is None:
            return
        with self._textfile_lock:  # the main and jail threads both write it
            try:
                write_textfile(self.registry, self.config.output_file)
            except OSError as error:
                log.error("cannot write %s: %s", self.config.output_file, error)

    @staticmethod
    def _log_diagnostics(load: PolicyLoad, level: int = logging.WARNING) -> None:
        found = [d for d in load.diagnostics if d.severity is not Severity.INFO]
        if not found:
            return
        if not any(d.severity is Severity.ERROR for d in found):
            level = logging.WARNING
        for chunk in render(
            for_the_log(found, load.private),
            per_file=LOG_DIAGNOSTICS_PER_FILE,
            source_width=LOG_SOURCE_CHARS,
        ):
            for line in chunk.splitlines():
                log.log(level, "%s", line)


def _landing_page(path: str) -> bytes:
    return (
        "<html><head><title>rctlpolicy</title></head><body><h1>rctlpolicy</h1>"
        f'<p><a href="{html.escape(path)}">Metrics</a></p></body></html>\n'
    ).encode()
