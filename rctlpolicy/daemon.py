"""The rctlpolicy daemon: keep the kernel in line with the policy, act on devd's RCTL events,
serve metrics.

Threads and what they own:
- the main thread: signals (through a self-pipe, so a handler never takes a lock), reloads and
  reconciles, one at a time, in `run()`;
- the devd reader (`DevdClient`): only reads the socket and queues lines;
- the dispatcher: parses queued lines, finds the policy rule, hands it to the action engine
  (which runs commands on its own workers), and resynchronises after a reconnect;
- the jail watcher: notices jails starting and stopping (jail patterns) and ends episodes;
- watchdog's observer, debounced into reload requests;
- the metrics server's accept thread and connection workers.
Nothing that goes wrong after start-up stops the daemon: it is logged and counted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rctlpolicy.actions import (
    ActionContext,
    ActionEngine,
    ActionInputError,
    ActionOutcome,
    Decision,
    MemoryState,
    SubprocessRunner,
    action_name,
)
from rctlpolicy.apply import AppliedRules, apply_rules
from rctlpolicy.clock import Clock, SystemClock
from rctlpolicy.config import DaemonConfig, split_address
from rctlpolicy.devd import (
    Connected,
    DevdClient,
    Disconnected,
    MalformedEvent,
    RctlEvent,
    parse_rctl_event,
)
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.exporter import (
    DaemonCollector,
    DaemonStats,
    JailCollector,
    make_registry,
    renderer,
    write_textfile,
)
from rctlpolicy.files import (
    PolicyReadError,
    UnsafeFileError,
    check_safe_ownership,
    read_policy_files,
)
from rctlpolicy.formats import format_text
from rctlpolicy.kernel.base import Kernel, KernelError
from rctlpolicy.lint import lint_files
from rctlpolicy.model import Action, Filter, Severity, SubjectType
from rctlpolicy.policy import expand_jail_patterns
from rctlpolicy.policy_model import Policy, PolicyRule
from rctlpolicy.semantics import Resolver

log = logging.getLogger("rctlpolicy")


class StartupError(Exception):
    """The daemon cannot start; the message (and diagnostics) say why."""

    def __init__(self, message: str, diagnostics: Iterable[Diagnostic] = ()) -> None:
        super().__init__(message)
        self.diagnostics = tuple(diagnostics)


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """A policy that passed lint, with its rules expanded for the running jails."""

    policy: Policy
    expanded: tuple[PolicyRule, ...]
    by_canonical: dict[str, PolicyRule] = field(hash=False, compare=False)
    jail_names: frozenset[str]


def load_rules(rules_dir: Path, resolver: Resolver) -> tuple[Policy | None, list[Diagnostic]]:
    """Read and lint the rules directory; None when it has errors (or cannot be read)."""
    try:
        files = read_policy_files([rules_dir])
    except PolicyReadError as error:
        return None, [Diagnostic(error.path, 0, 0, Severity.ERROR, "io-error", error.reason)]
    result = lint_files(files, resolver)
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    for policy_file in files:
        if not policy_file.is_yaml:
            continue
        runs_commands = any(r.on_match is not None and r.source.path == policy_file.path
                            for r in result.policy.rules)
        if runs_commands:
            try:
                check_safe_ownership(Path(policy_file.path))
            except UnsafeFileError as error:
                errors.append(Diagnostic(policy_file.path, 0, 0, Severity.ERROR,
                                         "unsafe-file", str(error)))
    if errors:
        return None, list(result.diagnostics) + [e for e in errors if e.code == "unsafe-file"]
    return result.policy, list(result.diagnostics)


def expand(policy: Policy, jail_names: Iterable[str]) -> LoadedRules:
    names = frozenset(jail_names)
    expanded = tuple(expand_jail_patterns(policy, names))
    by_canonical: dict[str, PolicyRule] = {}
    for policy_rule in expanded:
        # The first rule with on_match wins for a canonical form named twice.
        known = by_canonical.get(policy_rule.canonical)
        if known is None or (known.on_match is None and policy_rule.on_match is not None):
            by_canonical[policy_rule.canonical] = policy_rule
    return LoadedRules(policy, expanded, by_canonical, names)


class _SignalPipe:
    """Signals and requests from other threads become bytes on a pipe the main loop reads."""

    RELOAD = b"H"
    STOP = b"T"
    RECONCILE = b"J"

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)

    def send(self, what: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a request
            os.write(self.write_fd, what)

    def receive(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.read_fd, 512)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class _ReloadDebouncer:
    """watchdog events -> one reload request once the directory has been quiet for a while,
    so an editor's save (temp file, rename, backup dance, truncate-and-write) is one reload."""

    def __init__(self, delay: float, fire: Callable[[], None]) -> None:
        self.delay = delay
        self.fire = fire
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def poke(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.delay, self.fire)
            self._timer.daemon = True
            self._timer.name = "rctlpolicy-reload-debounce"
            self._timer.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer.is_alive() and timer is not threading.current_thread():
                timer.join(1.0)


def _is_policy_path(path: str) -> bool:
    from rctlpolicy.files import POLICY_SUFFIXES, is_editor_droppings

    name = os.path.basename(path)
    return name.endswith(POLICY_SUFFIXES) and not is_editor_droppings(name)


class _RulesWatcher:
    """Watches the rules directory with watchdog (imported here: lint never loads it)."""

    def __init__(self, directory: Path, debouncer: _ReloadDebouncer) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if event.is_directory or any(p and _is_policy_path(p) for p in paths):
                    outer.debouncer.poke()

        self.debouncer = debouncer
        self.observer = Observer()
        self.observer.name = "rctlpolicy-rules-watcher"
        self.observer.daemon = True
        self.observer.schedule(Handler(), str(directory), recursive=False)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5.0)


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        kernel: Kernel,
        resolver: Resolver,
        state_dir: Path,
        *,
        clock: Clock | None = None,
        engine: ActionEngine | None = None,
        devd_paths: tuple[Path | None, Path | None] | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.resolver = resolver
        self.clock = clock or SystemClock()
        self.stats = DaemonStats()
        self.applied = AppliedRules(state_dir / "applied.json")
        self.engine = engine or ActionEngine(self.clock, SubprocessRunner(), MemoryState(),
                                             on_outcome=self._on_outcome)
        self._loaded: LoadedRules | None = None
        self._control = _SignalPipe()
        self._stopping = threading.Event()
        self._events: queue.Queue[Any] = queue.Queue()
        self._episodes: set[tuple[str, str]] = set()
        self._episodes_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.registry = make_registry([JailCollector(kernel, self.stats),
                                       DaemonCollector(self.stats)])
        self.web: Any = None
        self.devd: DevdClient | None = None
        self._devd_paths = devd_paths
        self._watcher: _RulesWatcher | None = None
        self._debouncer = _ReloadDebouncer(config.reload_debounce,
                                           lambda: self._control.send(_SignalPipe.RELOAD))
        self._previous_handlers: dict[int, Any] = {}
        self.ready = threading.Event()

    # --- start-up ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Before any slow start-up work: an early HUP must not kill the process."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self._control.send(_SignalPipe.RELOAD if signum == signal.SIGHUP
                               else _SignalPipe.STOP)

        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def start(self) -> None:
        """Load and apply the policy, then start every loop. Raises StartupError."""
        policy, diagnostics = load_rules(self.config.rules_dir, self.resolver)
        if policy is None:
            raise StartupError(f"the policy in {self.config.rules_dir} has errors",
                               diagnostics)
        self._log_diagnostics(diagnostics, logging.WARNING)
        status = self.kernel.racct_status()
        self.stats.racct_enabled = status.enabled
        if not status.enabled:
            log.error("RACCT/RCTL is not usable: %s", status.reason)
        jail_names = self._jail_names()
        self._install(policy, jail_names)
        self.stats.reloaded(True, len(self._loaded.expanded) if self._loaded else 0,
                            self.clock.time())
        self._start_web()
        self._start_devd()
        dispatcher = threading.Thread(target=self._dispatch_loop, name="rctlpolicy-dispatch",
                                      daemon=True)
        jail_watcher = threading.Thread(target=self._jail_loop, name="rctlpolicy-jails",
                                        daemon=True)
        self._threads += [dispatcher, jail_watcher]
        dispatcher.start()
        jail_watcher.start()
        try:
            self._watcher = _RulesWatcher(self.config.rules_dir, self._debouncer)
            self._watcher.start()
        except OSError as error:
            log.error("cannot watch %s (%s); reload with SIGHUP", self.config.rules_dir, error)
            self._watcher = None
        self._write_textfile()
        log.info("rctlpolicy started: %d rules from %s, metrics on %s%s",
                 len(self._loaded.expanded) if self._loaded else 0, self.config.rules_dir,
                 self.config.listen_address, self.config.telemetry_path)
        self.ready.set()

    def _start_web(self) -> None:
        from rctlpolicy.web import MetricsServer, load_web_config

        web_config = None
        if self.config.web_config_file is not None:
            web_config = load_web_config(self.config.web_config_file)
        host, port = split_address(self.config.listen_address)
        self.web = MetricsServer(host, port, self.config.telemetry_path,
                                 renderer(self.registry), web_config=web_config,
                                 landing_page=_landing_page(self.config.telemetry_path))
        self.web.start()

    def _start_devd(self) -> None:
        if self._devd_paths is not None:
            seqpacket, stream = self._devd_paths
        else:
            seqpacket = self.config.devd_socket or Path("/var/run/devd.seqpacket.pipe")
            stream = seqpacket.with_name("devd.pipe")
        self.devd = DevdClient(self._events, seqpacket_path=seqpacket, stream_path=stream)
        self.devd.start()

    @property
    def metrics_port(self) -> int:
        return int(self.web.port) if self.web is not None else 0

    # --- the main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status (0)."""
        while not self._stopping.is_set():
            requests = self._control.receive(timeout=1.0)
            if _SignalPipe.STOP in requests:
                break
            if _SignalPipe.RELOAD in requests:
                self.reload("signal or file change")
            elif _SignalPipe.RECONCILE in requests:
                self.reconcile("jails changed")
        self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._control.send(_SignalPipe.STOP)

    def request_reload(self) -> None:
        self._control.send(_SignalPipe.RELOAD)

    def reload(self, reason: str) -> bool:
        """Re-read the policy; an invalid one changes nothing in the kernel."""
        policy, diagnostics = load_rules(self.config.rules_dir, self.resolver)
        if policy is None:
            log.error("reload (%s) rejected: the policy has errors; the rules in force are "
                      "kept", reason)
            self._log_diagnostics(diagnostics, logging.ERROR)
            self.stats.reloaded(False)
            self._write_textfile()
            return False
        self._log_diagnostics(diagnostics, logging.WARNING)
        self._install(policy, self._jail_names())
        count = len(self._loaded.expanded) if self._loaded else 0
        self.stats.reloaded(True, count, self.clock.time())
        log.info("policy reloaded (%s): %d rules", reason, count)
        self._write_textfile()
        return True

    def reconcile(self, reason: str) -> None:
        if self._loaded is None:
            return
        self._install(self._loaded.policy, self._jail_names())
        log.info("rules reconciled (%s)", reason)

    def _install(self, policy: Policy, jail_names: Iterable[str]) -> None:
        loaded = expand(policy, jail_names)
        try:
            report = apply_rules(self.kernel, [r.rule for r in loaded.expanded], self.applied)
        except KernelError as error:
            log.error("cannot apply the policy: %s", error)
        except OSError as error:
            log.error("cannot apply the policy (state file): %s", error)
        else:
            for rule in report.added:
                log.info("added rule %s", rule)
            for rule in report.removed:
                log.info("removed rule %s", rule)
            for rule, refusal in report.failures:
                log.error("the kernel refused %s: %s", rule, refusal.reason)
        self._loaded = loaded

    def _jail_names(self) -> set[str]:
        try:
            return {jail.name for jail in self.kernel.jails()}
        except (KernelError, OSError) as error:
            log.warning("cannot list jails: %s", error)
            return set(self._loaded.jail_names) if self._loaded else set()

    # --- devd events ----------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._dispatch(item)
            except Exception:  # one bad event must never stop the dispatcher
                log.exception("error while handling a devd message")

    def _dispatch(self, item: Any) -> None:
        if isinstance(item, Connected):
            reconnected = self.devd is not None and self.devd.reconnects > 0
            self.stats.devd_state(True, reconnected)
            log.info("connected to devd at %s (%s)", item.path, item.kind)
            self.resync()
            return
        if isinstance(item, Disconnected):
            self.stats.devd_state(False)
            log.warning("devd connection lost (%s); reconnecting", item.reason)
            return
        if not isinstance(item, str):
            return
        event = parse_rctl_event(item)
        if event is None:
            return
        if isinstance(event, MalformedEvent):
            self.stats.count_event("malformed")
            log.warning("malformed RCTL message (%s): %r", event.reason, event.raw[:200])
            return
        self.handle_event(event)

    def handle_event(self, event: RctlEvent) -> Decision | None:
        loaded = self._loaded
        if loaded is None:
            return None
        policy_rule = self._identify(event, loaded)
        if policy_rule is None:
            if event.truncated:
                self.stats.count_event("truncated")
                log.warning("truncated RCTL message matches no single policy rule: %r",
                            event.raw[:200])
            else:
                self.stats.count_event("unmatched")
                log.info("RCTL event for a rule not in the policy: %s", event.rule)
            return None
        jail = self._event_jail(event, policy_rule, loaded)
        if jail is None:
            self.stats.count_event("truncated")
            log.warning("cannot tell the jail of truncated RCTL message %r", event.raw[:200])
            return None
        try:
            ctx = ActionContext.from_event(policy_rule.rule, event.pid, event.ruid, jail)
        except ActionInputError as error:
            self.stats.count_event("malformed")
            log.warning("refusing RCTL message with bad values (%s): %r", error, event.raw[:200])
            return None
        self.stats.count_event("handled")
        with self._episodes_lock:
            self._episodes.add((policy_rule.canonical, jail))
        return self._submit(policy_rule, ctx)

    def _submit(self, policy_rule: PolicyRule, ctx: ActionContext) -> Decision:
        decision = self.engine.submit(policy_rule, ctx)
        if decision is Decision.EXHAUSTED:
            self.stats.exhausted = frozenset(self.engine.exhausted())
        return decision

    @staticmethod
    def _identify(event: RctlEvent, loaded: LoadedRules) -> PolicyRule | None:
        exact = loaded.by_canonical.get(event.rule)
        if exact is not None or not event.truncated:
            return exact
        candidates = [rule for canonical, rule in loaded.by_canonical.items()
                      if canonical.startswith(event.rule)]
        return candidates[0] if len(candidates) == 1 else None

    @staticmethod
    def _event_jail(event: RctlEvent, policy_rule: PolicyRule,
                    loaded: LoadedRules) -> str | None:
        jail_cut = event.truncated and (event.jail is None or event.rule != policy_rule.canonical
                                        or event.raw.rstrip("\n").endswith("jail=" + event.jail))
        if event.jail is not None and not (event.truncated and jail_cut):
            return event.jail
        rule = policy_rule.rule
        if rule.subject is SubjectType.JAIL:
            return rule.subject_id
        if event.jail:
            matches = [name for name in loaded.jail_names if name.startswith(event.jail)]
            if len(matches) == 1:
                return matches[0]
        return None

    def resync(self) -> None:
        """After a (re)connect: act on devctl rules whose episode began while we were away."""
        loaded = self._loaded
        if loaded is None:
            return
        for policy_rule in loaded.expanded:
            rule = policy_rule.rule
            if rule.action is not Action.DEVCTL or policy_rule.on_match is None:
                continue
            if rule.per is not rule.subject:
                continue  # usage summed per process/user/jail cannot be read for the subject
            over = self._over_limit(policy_rule)
            if over is None:
                continue
            jail = rule.subject_id if rule.subject is SubjectType.JAIL else "0"
            key = (policy_rule.canonical, jail)
            with self._episodes_lock:
                if not over:
                    self._episodes.discard(key)
                    continue
                if key in self._episodes:
                    continue  # already handled before the disconnect
                self._episodes.add(key)
            try:
                ctx = ActionContext.from_event(rule, None, None, jail)
            except ActionInputError as error:
                log.warning("cannot resync %s: %s", rule, error)
                continue
            log.warning("%s is over its limit since devd was unreachable; acting now", rule)
            self.stats.count_event("handled")
            self._submit(policy_rule, ctx)

    def _over_limit(self, policy_rule: PolicyRule) -> bool | None:
        rule = policy_rule.rule
        try:
            usage = self.kernel.usage(Filter(rule.subject, rule.subject_id))
        except KernelError as error:
            log.debug("cannot read usage for %s: %s", rule, error)
            return None
        return usage.get(rule.resource, 0) > rule.amount

    def _end_finished_episodes(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        with self._episodes_lock:
            active = set(self._episodes)
        for canonical, jail in active:
            policy_rule = loaded.by_canonical.get(canonical)
            if policy_rule is None or self._over_limit(policy_rule) is False:
                with self._episodes_lock:
                    self._episodes.discard((canonical, jail))

    def _jail_loop(self) -> None:
        while not self._stopping.wait(self.config.jail_poll_interval):
            try:
                loaded = self._loaded
                if loaded is not None and any(r.jail_pattern for r in loaded.policy.rules):
                    names = self._jail_names()
                    if names != loaded.jail_names:
                        self._control.send(_SignalPipe.RECONCILE)
                self._end_finished_episodes()
                self.stats.exhausted = frozenset(self.engine.exhausted())
                self._write_textfile()
            except Exception:
                log.exception("error in the jail watcher")

    def _on_outcome(self, outcome: ActionOutcome) -> None:
        self.stats.count_action(outcome.name, outcome.resource, outcome.outcome.value,
                                outcome.duration if outcome.outcome.value in
                                ("ok", "failed", "timeout") else None)
        if outcome.outcome.value == "exhausted":
            self.stats.exhausted = frozenset(self.engine.exhausted())

    # --- shutdown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping")
        self._debouncer.close()
        if self._watcher is not None:
            self._watcher.stop()
        if self.devd is not None:
            self.devd.stop()
        self.engine.shutdown(self.config.shutdown_timeout)
        for thread in self._threads:
            thread.join(5.0)
        if self.config.flush_on_exit:
            try:
                report = apply_rules(self.kernel, [], self.applied)
                log.info("flushed %d rules on exit", len(report.removed))
            except (KernelError, OSError) as error:
                log.error("cannot flush rules on exit: %s", error)
        self._write_textfile()
        if self.web is not None:
            self.web.stop()
        self._control.close()
        log.info("stopped")

    # --- helpers --------------------------------------------------------------------------

    def _write_textfile(self) -> None:
        if self.config.output_file is None:
            return
        try:
            write_textfile(self.registry, self.config.output_file)
        except OSError as error:
            log.error("cannot write %s: %s", self.config.output_file, error)

    @staticmethod
    def _log_diagnostics(diagnostics: Iterable[Diagnostic], level: int) -> None:
        shown = [d for d in diagnostics if d.severity is not Severity.INFO]
        if shown:
            for line in format_text(shown).splitlines():
                log.log(level if any(d.severity is Severity.ERROR for d in shown)
                        else logging.WARNING, "%s", line)

    def action_names(self) -> list[str]:
        loaded = self._loaded
        if loaded is None:
            return []
        return sorted({action_name(r.on_match) for r in loaded.expanded if r.on_match})


def _landing_page(path: str) -> bytes:
    return (
        "<html><head><title>rctlpolicy</title></head><body><h1>rctlpolicy</h1>"
        f'<p><a href="{path}">Metrics</a></p></body></html>\n'
    ).encode()


def write_pidfile(path: Path) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(f"{os.getpid()}\n")
    os.replace(temp, path)


def remove_pidfile(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError as error:
        if error.errno != errno.ENOENT:
            log.warning("cannot remove pidfile %s: %s", path, error)


def setup_logging(config: DaemonConfig) -> None:
    """syslog (facility daemon, FreeBSD's /var/run/log) or stderr."""
    import logging.handlers

    level = getattr(logging, config.log_level.upper())
    root = logging.getLogger("rctlpolicy")
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if config.syslog:

        class _SysLog(logging.handlers.SysLogHandler):
            def handleError(self, record: logging.LogRecord) -> None:
                # syslogd restarting must not lose the message or raise: stderr catches it.
                import sys

                sys.stderr.write(f"rctlpolicy: {record.getMessage()}\n")

        handler = _SysLog(address=config.syslog_socket,
                          facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.ident = f"rctlpolicy[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s rctlpolicy[%(process)d] %(levelname)s: %(message)s"))
    root.addHandler(handler)
    logging.raiseExceptions = False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll a condition until it holds or the deadline passes (for start-up checks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
