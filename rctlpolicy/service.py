"""Process-level wiring of the daemon and of the one-shot `handle` hook.

`run_daemon` is what `rctlpolicy daemon` runs: logging, pidfile, the kernel, the simulated devd
when the simulated host is used without a devd socket, signals, the main loop.
`handle_event` is what `rctlpolicy handle` runs for one event from a devd.conf notify block.
`setup_logging` and the pidfile are the process's, not the daemon's: both commands log alike.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from rctlpolicy.config import DaemonConfig
from rctlpolicy.daemon import SWITCH_INTERVAL, Daemon, StartupError, StoppedDuringStartup
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.formats import render
from rctlpolicy.kernel import KernelSetup, KernelSetupError, open_kernel
from rctlpolicy.loadworker import ChildLoader
from rctlpolicy.model import Severity
from rctlpolicy.policyload import LOG_DIAGNOSTICS_PER_FILE, LOG_SOURCE_CHARS, for_the_log
from rctlpolicy.safeio import PUBLIC_MODE, make_directory, read_bytes, write_atomic

log = logging.getLogger("rctlpolicy")


# --- the process: logging and the pidfile -----------------------------------------------------


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u2028`):
    whatever a logged value holds (an event's field, a file's line), it never starts a line of
    its own, forges one, or drives a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineFormatter(logging.Formatter):
    """Every record is exactly one line, whoever logged it and whatever its values held (a
    traceback too: its line breaks are escaped like any others)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class _SysLogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        # syslogd restarting must not lose the message or raise: stderr catches it.
        sys.stderr.write(f"rctlpolicy: {self.format(record)}\n")


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info pid=42 msg="..."`: logfmt's key=value pairs, one record a line."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        import json

        # JSON's string escapes are logfmt's; what JSON leaves (DEL, U+2028) is escaped too.
        quoted = escape_controls(json.dumps(super().format(record), ensure_ascii=False))
        head = f"ts={_timestamp(record)} " if self.with_time else ""
        return f"{head}level={record.levelname.lower()} pid={record.process} msg={quoted}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `{"ts": ..., "level": "info", "pid": 42, "msg": ...}`."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, object] = {"ts": _timestamp(record)} if self.with_time else {}
        entry.update(level=record.levelname.lower(), pid=record.process)
        entry["msg"] = super().format(record)
        return json.dumps(entry, ensure_ascii=True)  # \u2028 and controls escaped: one line


def _timestamp(record: logging.LogRecord) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _formatter(log_format: str, *, syslog: bool) -> logging.Formatter:
    """The `--log.format` formatter; syslog stamps time and pid itself."""
    if log_format == "logfmt":
        return LogfmtFormatter(with_time=not syslog)
    if log_format == "json":
        return JsonFormatter(with_time=not syslog)
    if syslog:
        return OneLineFormatter("%(message)s")
    return OneLineFormatter("%(asctime)s rctlpolicy[%(process)d] %(levelname)s: %(message)s")


def setup_logging(config: DaemonConfig) -> None:
    """syslog (facility daemon, FreeBSD's /var/run/log) or stderr, as `--log.format` says."""
    level = getattr(logging, config.log_level.upper())
    root = logging.getLogger("rctlpolicy")
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if config.syslog:
        handler = _SysLogHandler(
            address=config.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.ident = f"rctlpolicy[{os.getpid()}]: "
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(_formatter(config.log_format, syslog=config.syslog))
    root.addHandler(handler)
    logging.raiseExceptions = False


def write_pidfile(path: Path) -> None:
    """Write our pid atomically (a reader never sees an empty pidfile), mode 0644.

    Through `safeio.write_atomic`: the pidfile's directory may be writable by others, who must
    not be able to plant the temporary name or redirect the write with a symlink.
    """
    write_atomic(path, f"{os.getpid()}\n", mode=PUBLIC_MODE)


def remove_pidfile(path: Path) -> None:
    """Remove the pidfile if it is still ours."""
    try:
        if read_bytes(path, limit=64).strip() == str(os.getpid()).encode():
            path.unlink()
    except OSError as error:
        if error.errno != errno.ENOENT:
            log.warning("cannot remove pidfile %s: %s", path, error)


# --- the daemon -------------------------------------------------------------------------------


def _problems(diagnostics: tuple[Diagnostic, ...], private: frozenset[str] = frozenset()) -> str:
    """The diagnostics as the log may show them (`policyload.for_the_log`): capped, and
    nothing quoted from a file others cannot read."""
    shown = for_the_log([d for d in diagnostics if d.severity is not Severity.INFO], private)
    return "".join(render(shown, per_file=LOG_DIAGNOSTICS_PER_FILE, source_width=LOG_SOURCE_CHARS))


class DaemonRunning(Exception):
    """Another daemon holds the state directory's lock."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"another daemon (pid {pid or 'unknown'}) holds {path}")
        self.path = path
        self.pid = pid


#: Held by a running daemon for its whole life: two daemons on one state directory would each
#: remove the rules the other added and bind each other's sockets.
DAEMON_LOCK = "daemon.lock"


def hold_daemon_lock(state_dir: Path) -> int:
    """Take the state directory's daemon lock (flock, never waiting) and write our pid into it.

    Returns the descriptor, to be closed when the daemon ends (the file stays: removing a lock
    file another process may be opening races). Raises DaemonRunning naming the holder's pid,
    OSError (UnsafeStateFileError for a symlink, a hard link or another user's file planted
    there) when it cannot be opened.
    """
    import fcntl

    from rctlpolicy.safeio import open_lock_file

    path = state_dir / DAEMON_LOCK
    fd = open_lock_file(path, ours=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        holder = holder if holder.isdigit() else ""  # a pid, or nothing said about it
        os.close(fd)
        raise DaemonRunning(path, holder) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _missing_rules_dir(rules_dir: Path) -> str | None:
    """Why the rules directory cannot be used at all, or None (its files are the loader's)."""
    try:
        os.stat(rules_dir)
    except OSError as error:
        return f"rules directory {rules_dir}: {error.strerror or error}"
    return None


def _os_error(error: OSError) -> str:
    """`path: reason` without Python's `[Errno N]`."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def _say(config: DaemonConfig, command: str, message: str) -> None:
    """A start-up failure: one line on stderr, and in syslog when the daemon logs there."""
    if config.syslog:
        log.error("%s", message)
    print(f"rctlpolicy {command}: {message}", file=sys.stderr)


def run_daemon(config: DaemonConfig) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit status.

    0 after a stop signal; 1 when the policy has errors (printed on stderr) or another daemon
    holds the state directory; 2 when the rules directory is missing, or the kernel interface,
    a socket or a file cannot be opened. What it cannot use is said before anything starts.
    """
    setup_logging(config)
    problem = _missing_rules_dir(config.rules_dir)
    if problem is not None:
        _say(config, "daemon", problem)
        return 2
    try:
        setup = open_kernel(config.kernel, config.sim_host)
    except KernelSetupError as error:
        _say(config, "daemon", str(error))
        return 2
    state_dir = config.state_dir or setup.state_dir
    try:
        make_directory(state_dir)
        lock_fd = hold_daemon_lock(state_dir)
    except DaemonRunning as running:
        _say(
            config,
            "daemon",
            f"another daemon (pid {running.pid or 'unknown'}) is using the state directory "
            f"{state_dir}; stop it first",
        )
        return 1
    except OSError as error:
        _say(config, "daemon", f"state directory {state_dir}: {_os_error(error)}")
        return 2
    try:
        return _run_locked(config, setup, state_dir)
    finally:
        os.close(lock_fd)


def _run_locked(config: DaemonConfig, setup: KernelSetup, state_dir: Path) -> int:
    sim_devd = None
    devd_paths = None
    if setup.simulated and config.devd_socket is None:
        from rctlpolicy.simdevd import SimDevd

        sim_devd = SimDevd(setup)
        try:
            sim_devd.start()
        except OSError as error:
            hint = ""
            if error.errno in (errno.EADDRINUSE, errno.EBUSY):  # `sim devd`, another daemon's
                hint = f"; to read it, pass --devd-socket {sim_devd.server.seqpacket_path}"
            _say(config, "daemon", f"cannot start the simulated devd: {_os_error(error)}{hint}")
            return 2
        devd_paths = (sim_devd.server.seqpacket_path, sim_devd.server.stream_path)
        log.info("simulated devd serving %s", sim_devd.server.seqpacket_path)
    loader = ChildLoader(config.kernel, setup.sim_host, config.max_policy_file_size)
    daemon = Daemon(
        config,
        setup.kernel,
        loader,
        state_dir,
        devd_paths=devd_paths,
        rule_store=setup.rule_store,
    )
    daemon.install_signal_handlers()
    # This process is the daemon: the devd reader's switch interval holds until it returns.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(SWITCH_INTERVAL, switch_interval))
    try:
        if config.pidfile is not None:
            # Before the slow part: rc.subr finds the process while it starts.
            write_pidfile(config.pidfile)
        try:
            daemon.start()
        except StoppedDuringStartup:
            log.info("stopped while starting; nothing was changed")
            daemon.shutdown()
            return 0
        except StartupError as error:
            sys.stderr.write(_problems(error.diagnostics, error.private))
            print(f"rctlpolicy daemon: cannot start: {error}", file=sys.stderr)
            daemon.shutdown()
            return 1
        except OSError as error:
            _say(config, "daemon", f"cannot start: {_os_error(error)}")
            daemon.shutdown()
            return 2
        return daemon.run()
    finally:
        sys.setswitchinterval(switch_interval)
        daemon.restore_signal_handlers()
        daemon.close()
        if sim_devd is not None:
            sim_devd.stop()
        if config.pidfile is not None:
            remove_pidfile(config.pidfile)


def _optional(value: str | None) -> str | None:
    # devd substitutes a variable the (cut) message did not carry as an empty word.
    return value if value else None


def handle_event(
    config: DaemonConfig, rule_text: str, pid: str | None, ruid: str | None, jail: str | None
) -> int:
    """`rctlpolicy handle`: one event from devd.conf's notify block, acted on once.

    The fields are devd's variables of the event; the kernel's line is rebuilt from them, so a
    message cut at 127 bytes is recognised and identified as the daemon does. Cooldowns and
    max_runs hold across invocations (a locked state file in the state directory).
    """
    from rctlpolicy.actions import ActionEngine, ActionProcessRunner, FileState, Outcome
    from rctlpolicy.clock import SystemClock
    from rctlpolicy.devd.message import RCTL_HEADER, MalformedEvent, parse_rctl_event
    from rctlpolicy.eventmatch import EventVerdict, match_event
    from rctlpolicy.kernel.base import KernelError
    from rctlpolicy.policyload import expand, load_rules

    setup_logging(config)
    problem = _missing_rules_dir(config.rules_dir)
    if problem is not None:
        print(f"rctlpolicy handle: {problem}", file=sys.stderr)
        return 2
    try:
        setup: KernelSetup = open_kernel(config.kernel, config.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy handle: {error}", file=sys.stderr)
        return 2
    load = load_rules(config.rules_dir, setup.resolver, max_file_bytes=config.max_policy_file_size)
    if load.policy is None:
        sys.stderr.write(_problems(load.diagnostics, load.private))
        print("rctlpolicy handle: the policy has errors; not acting", file=sys.stderr)
        return 1
    fields = [("rule", rule_text), ("pid", _optional(pid)), ("ruid", _optional(ruid)),
              ("jail", _optional(jail))]  # fmt: skip
    data = " ".join(f"{key}={value}" for key, value in fields if value is not None)
    event = parse_rctl_event(f"{RCTL_HEADER} {data}".encode("utf-8", "surrogateescape"))
    if event is None or isinstance(event, MalformedEvent):
        reason = event.reason if event is not None else "not an RCTL event"
        print(f"rctlpolicy handle: malformed event ({reason})", file=sys.stderr)
        return 1
    try:
        jail_names = {j.name for j in setup.kernel.jails()}
    except (KernelError, OSError):  # jail patterns then match nothing; the event still can
        jail_names = set()
    if event.jail and not event.truncated:
        jail_names.add(event.jail)  # a jail pattern's rule for a jail started a moment ago
    loaded = expand(load.policy, jail_names)
    match = match_event(event, loaded.by_canonical, jail_names)
    if match.verdict is not EventVerdict.HANDLED or match.policy_rule is None:
        level = logging.INFO if match.verdict is EventVerdict.UNMATCHED else logging.WARNING
        log.log(level, "%s", match.reason)
        if match.policy_rule is None:
            print(f"rctlpolicy handle: no single policy rule is {event.rule}", file=sys.stderr)
        elif match.verdict is EventVerdict.TRUNCATED:
            print(f"rctlpolicy handle: cannot tell which jail {jail!r} is (cut short)",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"rctlpolicy handle: {match.reason}", file=sys.stderr)
        return 1
    assert match.context is not None
    state_dir = config.state_dir or setup.state_dir
    state_path: Path = state_dir / "actions.json"
    try:
        make_directory(state_dir)
        with FileState(state_path) as state:
            engine = ActionEngine(SystemClock(), ActionProcessRunner(), state)
            try:
                outcome = engine.run_sync(match.policy_rule, match.context)
            finally:
                engine.shutdown(config.shutdown_timeout)
    except OSError as error:
        print(f"rctlpolicy handle: {state_path}: {_os_error(error)}", file=sys.stderr)
        return 2
    if outcome is None:
        return 0
    detail = f" ({outcome.detail})" if outcome.detail else ""
    print(f"rctlpolicy handle: {outcome.name}: {outcome.outcome.value}{detail}")
    return 0 if outcome.outcome in (Outcome.OK, Outcome.SUPPRESSED, Outcome.EXHAUSTED) else 1
