"""The action engine: what runs when a `devctl` rule fires, and when it must not.

An event (a parsed `Rule` plus the pid, ruid and jail the kernel reported) becomes an
`ActionContext`, validated on construction. A policy rule's `on_match` becomes a `Command`:
an argv (a `run` template with placeholders filled in, or the `service` sugar) or a signal.
Nothing here goes through a shell: every placeholder value lands inside exactly one argv element,
whatever it contains.

`ActionEngine` decides whether to act (cooldown, at most one run per rule and jail at a time,
`max_runs` within a window), runs commands on worker threads through a `Runner` so the devd
reader never waits, and reports every decision that acted or refused to act as an
`ActionOutcome`. The decision state lives in a `CooldownState`: `MemoryState` in the daemon,
`FileState` for the one-shot `rctlpolicy handle`, which shares it between invocations.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import selectors
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeAlias

from rctlpolicy.clock import Clock
from rctlpolicy.model import HOST_JAIL, JAIL_NAME_MAX, PID_MAX, UID_MAX, Rule, SubjectType
from rctlpolicy.policy_model import PLACEHOLDERS, OnMatch, PolicyRule

logger = logging.getLogger("rctlpolicy.actions")

#: The whole environment of an action: nothing of the daemon's own (no secrets, no LD_*).
ACTION_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
ACTION_ENVIRONMENT: Mapping[str, str] = {"PATH": ACTION_PATH, "HOME": "/"}

SERVICE_COMMAND = "/usr/sbin/service"

#: The host's jail name in RCTL events: prison0 is called "0".

#: kern_jail.c accepts a name whose length including its NUL is at most MAXHOSTNAMELEN (256).

_DECIMAL = re.compile(r"-?[0-9]{1,20}")  # ASCII only: str.isdigit() also accepts "١٢" and "²"


# --- errors -------------------------------------------------------------------------------------


class ActionError(Exception):
    """Base of the errors this module raises."""


class ActionInputError(ActionError):
    """A value from an event cannot be used: the action is not run."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {field} {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class ActionConfigError(ActionError):
    """An on_match in the policy cannot be run as written; the policy must be fixed."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class TemplateError(ActionConfigError):
    """A `run` argv template is malformed (unknown placeholder, stray brace, ...)."""

    def __init__(self, element: str, reason: str) -> None:
        super().__init__(f"run template element {element!r}", reason)
        self.element = element


# --- the event an action is for ----------------------------------------------------------------


def _control_character(text: str) -> str | None:
    """The first control character in `text` (C0, DEL, C1; NUL and newline included), if any."""
    for char in text:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def check_jail_name(name: str, field_name: str = "jail") -> str:
    """Return `name` if it can be a jail name, else raise ActionInputError.

    The kernel (kern_jail.c, kern_jail_set) only requires a NUL-terminated string of at most 255
    bytes. We are stricter, because the name ends up in argv and logs: no control characters
    (newlines would forge log lines) and no leading '-' (it could be read as an option by
    service(8), jexec(8) or any program given `{jail}`). "0" is the host.
    """
    if not isinstance(name, str):
        raise ActionInputError(field_name, name, "must be a string")
    if name == "":
        raise ActionInputError(field_name, name, "a jail name cannot be empty")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > JAIL_NAME_MAX:
        raise ActionInputError(
            field_name, name, f"{size} bytes; a jail name has at most {JAIL_NAME_MAX}"
        )
    bad = _control_character(name)
    if bad is not None:
        raise ActionInputError(
            field_name, name, f"contains the control character {bad!r}, which no jail name needs"
        )
    if name.startswith("-"):
        raise ActionInputError(field_name, name, "starts with '-' and could be taken for an option")
    return name


def _parse_number(field_name: str, value: str | int, *, signed_uid: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ActionInputError(field_name, value, "must be a decimal number")
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value) is None:
            raise ActionInputError(field_name, value, "must be a decimal number")
        number = int(value)
    else:
        number = value
    if signed_uid and -(2**31) <= number < 0:
        # The kernel prints cr_ruid with %d (kern_rctl.c, rctl_enforce), so a uid of 2^31 or
        # more arrives negative; map it back to the uid it is, which also keeps a '-' out of argv.
        number += 2**32
    return number


@dataclass(frozen=True, slots=True)
class ActionContext:
    """One firing of a rule: the rule, and what the event said about who crossed it.

    Valid by construction: pid and ruid are None or in range, and the jail is a name that
    `check_jail_name` accepts ("0" for the host).
    """

    rule: Rule
    pid: int | None
    ruid: int | None
    jail: str

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise ActionInputError("rule", self.rule, "must be a parsed Rule")
        bad = _control_character(self.rule.subject_id)
        if bad is not None:
            raise ActionInputError(
                "rule subject id", self.rule.subject_id, f"contains the control character {bad!r}"
            )
        if self.rule.subject is SubjectType.JAIL:
            check_jail_name(self.rule.subject_id, "rule jail")
        for name, value, maximum in (("pid", self.pid, PID_MAX), ("ruid", self.ruid, UID_MAX)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ActionInputError(name, value, "must be an integer")
            if not 0 <= value <= maximum:
                raise ActionInputError(name, value, f"out of range 0..{maximum}")
        check_jail_name(self.jail)

    @classmethod
    def from_event(
        cls, rule: Rule, pid: str | int | None, ruid: str | int | None, jail: str
    ) -> ActionContext:
        """Build a context from an event's raw fields; raise ActionInputError if one is unusable.

        pid and ruid are decimal text (or ints) or None when a truncated message lost them.
        A negative ruid is taken as the kernel's signed printing of a large uid.
        """
        pid_number = None if pid is None else _parse_number("pid", pid)
        ruid_number = None if ruid is None else _parse_number("ruid", ruid, signed_uid=True)
        return cls(rule, pid_number, ruid_number, jail)


# --- argv templates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _parse_element(element: str) -> tuple[str | _Field, ...]:
    """Split one argv element into literal text and placeholders; `{{`/`}}` are literal braces."""
    if not isinstance(element, str):
        raise TemplateError(repr(element), "every argv element must be a string")
    parts: list[str | _Field] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(element):
        literal.append(element[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match.group(1) is not None:
            name = match.group(1)
            if name not in PLACEHOLDERS:
                raise TemplateError(element, _unknown_placeholder(name))
            parts.append("".join(literal))
            literal = []
            parts.append(_Field(name))
        else:
            raise TemplateError(
                element,
                f"unmatched {token!r} at column {match.start() + 1}; "
                f"write {token * 2!r} for a literal brace",
            )
    literal.append(element[position:])
    parts.append("".join(literal))
    return tuple(part for part in parts if part != "")


def _unknown_placeholder(name: str) -> str:
    if name == "":
        return "empty placeholder '{}'"
    message = f"unknown placeholder {{{name}}}"
    close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
    if close:
        message += f"; did you mean {{{close[0]}}}?"
    return message + f" (known: {', '.join(PLACEHOLDERS)})"


def check_template(template: Sequence[str]) -> frozenset[str]:
    """Check a `run` argv template; return the placeholders it uses, or raise TemplateError.

    The program (element 0) takes no placeholders: event data must never choose what runs, and
    its basename is a metrics label, which must stay bounded. It is an absolute path or a bare
    name looked up in the actions' PATH.
    """
    if isinstance(template, str) or len(template) == 0:
        raise TemplateError(repr(template), "a run action is a non-empty list of argv elements")
    used: set[str] = set()
    for index, element in enumerate(template):
        parts = _parse_element(element)
        if "\0" in element:
            raise TemplateError(element, "contains a NUL byte, which argv cannot carry")
        fields = {part.name for part in parts if isinstance(part, _Field)}
        if index == 0:
            if fields:
                raise TemplateError(element, "the program to run cannot contain placeholders")
            if element == "":
                raise TemplateError(element, "the program to run is empty")
            if "/" in element and not element.startswith("/"):
                raise TemplateError(
                    element, "give the program as an absolute path or a bare name found in PATH"
                )
        used |= fields
    return frozenset(used)


def placeholder_values(ctx: ActionContext) -> dict[str, str | None]:
    """The value of every placeholder for this event; None where the event did not carry it."""
    rule = ctx.rule
    return {
        "rule": rule.canonical,
        "subject": rule.subject.value,
        "subject_id": rule.subject_id,
        "resource": rule.resource.value,
        "action": rule.action.value,
        "amount": str(rule.amount),
        "pid": None if ctx.pid is None else str(ctx.pid),
        "ruid": None if ctx.ruid is None else str(ctx.ruid),
        "jail": ctx.jail,
    }


def render_argv(template: Sequence[str], ctx: ActionContext) -> tuple[str, ...]:
    """Fill a `run` template: each placeholder's value stays inside its own argv element.

    Raises TemplateError for a malformed template and ActionInputError when a placeholder's
    value is unknown for this event (no pid in a truncated message, say).
    """
    check_template(template)
    values = placeholder_values(ctx)
    argv: list[str] = []
    for element in template:
        pieces: list[str] = []
        for part in _parse_element(element):
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = values[part.name]
            if value is None:
                raise ActionInputError(
                    part.name, None, "the event did not carry it, and the action needs it"
                )
            pieces.append(value)
        rendered = "".join(pieces)
        if "\0" in rendered:
            raise ActionInputError("argv element", rendered, "contains a NUL byte")
        argv.append(rendered)
    return tuple(argv)


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """Run this argv (never through a shell)."""

    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignalCommand:
    """Send signal `signum` to process `pid`."""

    pid: int
    signum: int


Command: TypeAlias = ExecCommand | SignalCommand


def parse_signal(name: str) -> signal.Signals:
    """A signal by name, with or without the SIG prefix, in any case: "TERM" -> SIGTERM."""
    text = name.strip().upper() if isinstance(name, str) else ""
    if text.startswith("SIG"):
        text = text[3:]
    try:
        return signal.Signals["SIG" + text]
    except KeyError:
        raise ActionConfigError(
            f"signal {name!r}", "not a signal name on this system (write it like TERM or HUP)"
        ) from None


_SERVICE_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_on_match(on_match: OnMatch) -> str:
    """Check an on_match as the engine will run it; return its action name or raise.

    Raises ActionConfigError (TemplateError for a bad `run` template).
    """
    chosen = [kind for kind in ("run", "service", "signal") if getattr(on_match, kind) is not None]
    if len(chosen) != 1:
        raise ActionConfigError(
            "on_match", f"needs exactly one of run, service or signal, not {chosen or 'none'}"
        )
    for what, value in (("timeout", on_match.timeout), ("cooldown", on_match.cooldown)):
        if not math.isfinite(value) or value < 0 or (what == "timeout" and value == 0):
            raise ActionConfigError(f"on_match {what}", f"{value!r} is not a usable duration")
    if on_match.max_runs is not None and (
        on_match.max_runs.count < 1
        or not math.isfinite(on_match.max_runs.within)
        or on_match.max_runs.within <= 0
    ):
        raise ActionConfigError("on_match max_runs", f"{on_match.max_runs} allows nothing")
    if on_match.run is not None:
        check_template(on_match.run)
        return os.path.basename(
            "".join(p for p in _parse_element(on_match.run[0]) if isinstance(p, str))
        )
    if on_match.service is not None:
        if len(on_match.service) != 2:
            raise ActionConfigError("on_match service", "is (name, command)")
        for what, word in zip(("name", "command"), on_match.service, strict=True):
            if not isinstance(word, str) or _SERVICE_WORD.fullmatch(word) is None:
                raise ActionConfigError(
                    f"service {what} {word!r}",
                    "must be a plain word (letters, digits, _ . + -, not starting with '-')",
                )
        return f"service:{on_match.service[0]}"
    assert on_match.signal is not None
    return f"signal:{parse_signal(on_match.signal).name[3:]}"


def action_name(on_match: OnMatch) -> str:
    """The metrics label for an action: "<program basename>", "service:<name>", "signal:<NAME>"."""
    return check_on_match(on_match)


def build_command(on_match: OnMatch, ctx: ActionContext) -> Command:
    """What to execute for this on_match and event.

    `service` runs `service -j <jail> <name> <command>`, without `-j` for the host (jail "0").
    A signal goes to the event's pid, never to pid 0 or 1 or to this process. The pid may have
    been reused by the time the signal is sent: the kernel gives no handle that prevents it.
    """
    check_on_match(on_match)
    if on_match.run is not None:
        return ExecCommand(render_argv(on_match.run, ctx))
    if on_match.service is not None:
        name, command = on_match.service
        if ctx.jail == HOST_JAIL:
            return ExecCommand((SERVICE_COMMAND, name, command))
        return ExecCommand((SERVICE_COMMAND, "-j", ctx.jail, name, command))
    assert on_match.signal is not None
    signum = parse_signal(on_match.signal)
    if ctx.pid is None:
        raise ActionInputError(
            "pid", None, "the event did not carry it; there is nothing to signal"
        )
    if ctx.pid <= 1:
        raise ActionInputError("pid", ctx.pid, "refusing to signal pid 0 (a process group) or 1")
    if ctx.pid == os.getpid():
        raise ActionInputError("pid", ctx.pid, "is rctlpolicy itself")
    return SignalCommand(ctx.pid, int(signum))


# --- outcomes ----------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """How an action ended (the `outcome` metrics label)."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SUPPRESSED = "suppressed"
    EXHAUSTED = "exhausted"


class Decision(enum.StrEnum):
    """What `ActionEngine.submit` did with an event."""

    STARTED = "started"  # queued to a worker; an outcome follows when it finishes
    SUPPRESSED = "suppressed"  # inside the cooldown, or a run for this rule+jail is running
    EXHAUSTED = "exhausted"  # max_runs reached within its window
    NO_ACTION = "no_action"  # the rule has no on_match
    REJECTED = "rejected"  # the command cannot be built from this event or policy (logged)
    CLOSED = "closed"  # the engine is shutting down


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one command ran. `duration` is monotonic seconds; `started_at` wall time."""

    outcome: Outcome
    exit_status: int | None
    started_at: float
    duration: float
    pid: int | None = None
    detail: str = ""


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


# --- running processes -------------------------------------------------------------------------


class Runner(Protocol):
    """Runs one argv to completion or timeout, from a worker thread."""

    def run(self, argv: Sequence[str], *, timeout: float, name: str) -> RunResult:
        """Run `argv`; never raise for a failure of the command itself."""
        ...

    def terminate_all(self) -> None:
        """Kill every running command's process group, and refuse new ones (shutdown)."""
        ...


class _OutputLogger:
    """Logs a child's merged stdout/stderr line by line, with a bound on what reaches the log."""

    def __init__(self, name: str, pid: int, max_lines: int, max_line_bytes: int = 4096) -> None:
        self._name = name
        self._pid = pid
        self._max_lines = max_lines
        self._max_line_bytes = max_line_bytes
        self._buffer = b""
        self._logged = 0
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > self._max_line_bytes:
                    self._emit(self._buffer[: self._max_line_bytes])
                    self._buffer = self._buffer[self._max_line_bytes :]
                    continue
                return
            self._emit(self._buffer[:newline])
            self._buffer = self._buffer[newline + 1 :]

    def flush(self) -> None:
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = b""
        if self._dropped:
            logger.info(
                "%s[%d]: %d more output lines not logged", self._name, self._pid, self._dropped
            )
            self._dropped = 0

    def _emit(self, raw: bytes) -> None:
        if self._logged >= self._max_lines:
            self._dropped += 1
            return
        self._logged += 1
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        logger.info("%s[%d]: %s", self._name, self._pid, line, extra={"action": self._name})


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Asked without reaping it, so its pid (the process group id we
    signal) cannot be reused before we are done with the group."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): it is gone
        return True
    return info is not None


class SubprocessRunner:
    """Runs actions as real processes: argv only, each in its own session and process group.

    The child gets stdin from /dev/null, a minimal environment, cwd "/", no inherited file
    descriptors; its stdout and stderr are merged and logged line by line. On timeout the whole
    process group gets SIGTERM, then SIGKILL after `grace` seconds, so helpers the action
    started die with it. Deadlines are on the real monotonic clock: the waiting happens in the
    kernel (select, waitid), which a manual clock cannot move.
    """

    def __init__(
        self,
        *,
        grace: float = 2.0,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        max_logged_lines: int = 200,
        poll_interval: float = 0.05,
    ) -> None:
        self.grace = grace
        self._env = dict(ACTION_ENVIRONMENT if env is None else env)
        self._cwd = cwd
        self._max_logged_lines = max_logged_lines
        self._poll_interval = poll_interval
        self._terminating = threading.Event()

    def terminate_all(self) -> None:
        """Kill the process groups of all running commands (each within `grace`); refuse new."""
        self._terminating.set()

    def run(self, argv: Sequence[str], *, timeout: float, name: str) -> RunResult:
        """Run argv to completion, timeout or termination; spawn failures are outcomes too."""
        args = list(argv)
        started_at = time.time()
        start = time.monotonic()
        if self._terminating.is_set():
            return RunResult(Outcome.FAILED, None, started_at, 0.0, detail="shutting down")
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=self._env,
                cwd=self._cwd,
                shell=False,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            logger.error("action %s: cannot start %s: %s", name, shlex.join(args), exc)
            return RunResult(
                Outcome.FAILED, None, started_at, time.monotonic() - start, detail=str(exc)
            )
        logger.info("action %s: started pid %d: %s", name, proc.pid, shlex.join(args))
        with proc:
            try:
                reason = self._supervise(proc, start + timeout, name)
            except BaseException:
                # Whatever broke, the group must not outlive us.
                self._kill_group(proc, name, "an internal error")
                proc.wait()
                raise
            returncode = proc.wait()
        duration = time.monotonic() - start
        if reason == "timeout":
            return RunResult(
                Outcome.TIMEOUT, returncode, started_at, duration, proc.pid,
                f"timed out after {timeout:g}s",
            )  # fmt: skip
        if reason == "terminated":
            return RunResult(
                Outcome.TIMEOUT, returncode, started_at, duration, proc.pid, "killed at shutdown"
            )
        if returncode == 0:
            return RunResult(Outcome.OK, 0, started_at, duration, proc.pid)
        detail = f"exit status {returncode}"
        if returncode < 0:
            with contextlib.suppress(ValueError):
                detail = f"killed by {signal.Signals(-returncode).name}"
        return RunResult(Outcome.FAILED, returncode, started_at, duration, proc.pid, detail)

    def _supervise(self, proc: subprocess.Popen[bytes], deadline: float, name: str) -> str:
        """Log output until the child exits ("exit"), the deadline passes ("timeout") or
        terminate_all is called ("terminated"); in the last two cases its group is killed."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        output = _OutputLogger(name, proc.pid, self._max_logged_lines)
        reading = True
        pause = 0.001
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                if _leader_exited(proc):
                    reason = "exit"
                    break
                now = time.monotonic()
                if now >= deadline:
                    reason = "timeout"
                    break
                if self._terminating.is_set():
                    reason = "terminated"
                    break
                wait = min(deadline - now, self._poll_interval)
                if reading:
                    if selector.select(wait):
                        reading = self._drain(fd, output)
                        if not reading:
                            selector.unregister(fd)
                else:
                    # Output is closed but the child lives on: check back soon, then less often.
                    self._terminating.wait(min(wait, pause))
                    pause = min(pause * 2, self._poll_interval)
        if reason != "exit":
            self._kill_group(proc, name, "timeout" if reason == "timeout" else "shutdown")
        if reading:
            # What the child wrote before it exited is in the pipe now; a stray process that
            # escaped the group may keep the pipe open, so do not wait for end of file.
            self._drain(fd, output)
        output.flush()
        return reason

    def _drain(self, fd: int, output: _OutputLogger) -> bool:
        """Read what is available; False at end of file. Bounded, so a chatty child cannot
        keep us from checking the deadline."""
        for _ in range(64):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            output.feed(chunk)
        return True

    def _kill_group(self, proc: subprocess.Popen[bytes], name: str, why: str) -> None:
        logger.warning(
            "action %s: killing process group %d (%s): SIGTERM, SIGKILL after %gs",
            name, proc.pid, why, self.grace,
        )  # fmt: skip
        _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + self.grace
        pause = 0.001
        while not _leader_exited(proc) and time.monotonic() < end:
            time.sleep(min(pause, max(0.0, end - time.monotonic())))
            pause = min(pause * 2, self._poll_interval)
        # Always, even if the leader went quietly: its helpers may ignore SIGTERM. The leader
        # is not reaped yet, so the group id still names this group and nothing else.
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        logger.error("cannot send %s to process group %d: %s", signum.name, pgid, exc)


# --- decision state ----------------------------------------------------------------------------

#: (canonical rule, jail)
StateKey: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class StateEntry:
    """What is remembered per rule and jail (all wall-clock times)."""

    cooldown_until: float = 0.0
    run_times: tuple[float, ...] = ()
    #: end of the max_runs window whose exhaustion was already logged
    exhausted_until: float = 0.0

    def is_idle(self, now: float) -> bool:
        return not self.run_times and self.cooldown_until <= now and self.exhausted_until <= now


class Claim:
    """The right to run the one action allowed at a time for a rule and jail; release once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class CooldownState(Protocol):
    """Where cooldowns, run times and running actions are kept."""

    def transaction(self) -> contextlib.AbstractContextManager[dict[StateKey, StateEntry]]:
        """Exclusive access to all entries; changes to the dict are kept if the block succeeds."""
        ...

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim the right to run for `key`, or None when a run for it is in progress."""
        ...


class MemoryState:
    """State for the daemon: in memory, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[StateKey, StateEntry] = {}
        self._running: set[StateKey] = set()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[StateKey, StateEntry]]:
        """Exclusive access to the entries (kept only if the block does not raise)."""
        with self._lock:
            entries = dict(self._entries)
            yield entries
            self._entries = entries

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim `key` within this process."""
        with self._lock:
            if key in self._running:
                return None
            self._running.add(key)
        return Claim(lambda: self._unclaim(key))

    def _unclaim(self, key: StateKey) -> None:
        with self._lock:
            self._running.discard(key)


_STATE_VERSION = 1


class FileState:
    """State shared by `rctlpolicy handle` invocations: a JSON file next to two lock files.

    `<path>.lock` is flock(2)ed around every read-modify-write; the file is replaced atomically
    (temp file, fsync, rename), so a reader never sees half a file. A file that cannot be read or
    parsed is logged and treated as empty: a lost cooldown is better than no action ever again.
    A run in progress holds a one-byte fcntl(2) lock in `<path>.running` at an offset derived
    from its key; the kernel drops it if the process dies, so a crash never leaves a stale claim.
    Those locks are per process: within one process the claims are also kept in memory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.running_path = self.path.with_name(self.path.name + ".running")
        self._mutex = threading.Lock()
        self._running: set[StateKey] = set()
        self._running_fd: int | None = None

    def __enter__(self) -> FileState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the claims file (dropping any claim still held)."""
        with self._mutex:
            if self._running_fd is not None:
                os.close(self._running_fd)
                self._running_fd = None
                self._running.clear()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[StateKey, StateEntry]]:
        """Lock, load, hand out the entries, and write them back if they changed."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._load()
            before = dict(entries)
            yield entries
            if entries != before:
                self._store(entries)
        finally:
            os.close(fd)  # drops the flock

    def try_claim(self, key: StateKey) -> Claim | None:
        """Claim `key` across processes (fcntl byte lock) and within this one."""
        offset = int.from_bytes(hashlib.sha256("\0".join(key).encode()).digest()[:8]) >> 2
        with self._mutex:
            if key in self._running:
                return None
            if self._running_fd is None:
                self._running_fd = os.open(
                    self.running_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            try:
                fcntl.lockf(self._running_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return None
                # No byte locks here (an NFS mount, say): fall back to this process's claims.
                logger.warning("cannot lock %s: %s", self.running_path, exc)
            self._running.add(key)
        return Claim(lambda: self._unclaim(key, offset))

    def _unclaim(self, key: StateKey, offset: int) -> None:
        with self._mutex:
            if key in self._running and self._running_fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.lockf(self._running_fd, fcntl.LOCK_UN, 1, offset)
            self._running.discard(key)

    def _load(self) -> dict[StateKey, StateEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            logger.error("cannot read action state %s, starting empty: %s", self.path, exc)
            return {}
        try:
            return _decode_state(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("action state %s is corrupt, starting empty: %s", self.path, exc)
            return {}

    def _store(self, entries: dict[StateKey, StateEntry]) -> None:
        document = {
            "version": _STATE_VERSION,
            "entries": [
                {
                    "rule": rule,
                    "jail": jail,
                    "cooldown_until": entry.cooldown_until,
                    "run_times": list(entry.run_times),
                    "exhausted_until": entry.exhausted_until,
                }
                for (rule, jail), entry in sorted(entries.items())
            ],
        }
        directory = self.path.parent
        try:
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            logger.error("cannot write action state %s: %s", self.path, exc)
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            logger.error("cannot write action state %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return
        # The rename is durable only once the directory is synced.
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _decode_state(document: object) -> dict[StateKey, StateEntry]:
    if not isinstance(document, dict) or document.get("version") != _STATE_VERSION:
        raise ValueError("not a version 1 state document")
    raw_entries = document["entries"]
    if not isinstance(raw_entries, list):
        raise ValueError("entries is not a list")
    entries: dict[StateKey, StateEntry] = {}
    for raw in raw_entries:
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        rule, jail, run_times = raw["rule"], raw["jail"], raw["run_times"]
        if (
            not isinstance(rule, str)
            or not isinstance(jail, str)
            or not isinstance(run_times, list)
        ):
            raise ValueError(f"malformed entry {raw!r}")
        entries[(rule, jail)] = StateEntry(
            _number(raw["cooldown_until"]),
            tuple(_number(t) for t in run_times),
            _number(raw["exhausted_until"]),
        )
    return entries


# --- the engine --------------------------------------------------------------------------------


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
class _Verdict:
    decision: Decision
    job: _Job | None = None
    outcome: ActionOutcome | None = None  # for a decision that runs nothing


class ActionEngine:
    """Decides whether an event's action runs, runs it off the caller's thread, reports it.

    Per (canonical rule, jail): at most one run at a time; none within `cooldown` seconds of the
    last start; at most `max_runs.count` starts within any `max_runs.within` seconds, after which
    the engine stops acting, logs an ERROR once per window and lists the key in `exhausted()`.
    Every decision other than no_action and closed produces exactly one `on_outcome` call: at
    once for a refusal (in the caller's thread), when the run ends for a start (in a worker
    thread). `on_outcome` must therefore be thread-safe; an exception in it is logged.
    """

    def __init__(
        self,
        clock: Clock,
        runner: Runner,
        state: CooldownState,
        *,
        signaller: Callable[[int, int], None] = os.kill,
        on_outcome: Callable[[ActionOutcome], None] | None = None,
        max_workers: int = 4,
    ) -> None:
        self._clock = clock
        self._runner = runner
        self._state = state
        self._signaller = signaller
        self._on_outcome = on_outcome
        # RLock: a future's done-callback may run at once, in the thread that holds the lock.
        self._lock = threading.RLock()
        self._closed = False
        self._pending: dict[Future[None], _Job] = {}
        self._exhausted: dict[StateKey, tuple[tuple[str, str, str], float]] = {}
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="rctlpolicy-action")

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
            if verdict.job is not None:
                future = self._executor.submit(self._work, verdict.job)
                self._pending[future] = verdict.job
                future.add_done_callback(self._forget)
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
                outcome = self._refusal(
                    policy_rule.on_match, ctx, Outcome.FAILED, "the engine is shut down"
                )
                verdict = _Verdict(Decision.CLOSED, outcome=outcome)
            else:
                verdict = self._decide(policy_rule.on_match, ctx)
        if verdict.job is not None:
            try:
                outcome = self._execute(verdict.job)
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
        their process groups. Actions still queued are not started (reported as failed).
        Returns once every worker thread is gone."""
        with self._lock:
            self._closed = True
            pending = dict(self._pending)
        for future, job in pending.items():
            if future.cancel():
                job.claim.release()
                self._report(
                    self._job_outcome(job, Outcome.FAILED, 0.0, detail="cancelled at shutdown")
                )
        _, not_done = wait_futures(list(pending), timeout=max(0.0, timeout))
        if not_done:
            logger.warning(
                "%d action(s) still running after %gs; killing them", len(not_done), timeout
            )
            self._runner.terminate_all()
        self._executor.shutdown(wait=True)

    # decisions

    def _decide(self, on_match: OnMatch, ctx: ActionContext) -> _Verdict:
        """Called with the engine lock held."""
        key: StateKey = (ctx.rule.canonical, ctx.jail)
        try:
            name = check_on_match(on_match)
            command = build_command(on_match, ctx)
        except ActionError as exc:
            logger.error("not acting on %s in jail %s: %s", ctx.rule, ctx.jail, exc)
            return _Verdict(
                Decision.REJECTED, outcome=self._refusal(on_match, ctx, Outcome.FAILED, str(exc))
            )
        try:
            claim = self._state.try_claim(key)
        except OSError as exc:
            return self._state_unavailable(on_match, ctx, exc)
        if claim is None:
            logger.info("%s for %s in jail %s: still running, suppressed", name, ctx.rule, ctx.jail)
            return _Verdict(
                Decision.SUPPRESSED,
                outcome=self._refusal(on_match, ctx, Outcome.SUPPRESSED, "still running"),
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
            return self._state_unavailable(on_match, ctx, exc)
        except BaseException:
            claim.release()
            raise
        if decision is not Decision.STARTED:
            claim.release()
            outcome = Outcome.SUPPRESSED if decision is Decision.SUPPRESSED else Outcome.EXHAUSTED
            return _Verdict(decision, outcome=self._refusal(on_match, ctx, outcome, detail))
        self._exhausted.pop(key, None)
        job = _Job(
            key, name, ctx.rule.resource.value, ctx.jail, command, on_match.timeout, claim,
            self._clock.monotonic(),
        )  # fmt: skip
        return _Verdict(Decision.STARTED, job=job)

    def _state_unavailable(self, on_match: OnMatch, ctx: ActionContext, exc: OSError) -> _Verdict:
        # Without the state a cooldown or max_runs cannot be honoured; not acting is the safe
        # side (an action that restarts a service must not start looping).
        logger.error(
            "not acting on %s in jail %s: action state unavailable: %s", ctx.rule, ctx.jail, exc
        )
        return _Verdict(
            Decision.REJECTED,
            outcome=self._refusal(on_match, ctx, Outcome.FAILED, f"state unavailable: {exc}"),
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

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.pop(future, None)

    def _work(self, job: _Job) -> None:
        try:
            outcome = self._execute(job)
        finally:
            job.claim.release()
        self._report(outcome)

    def _execute(self, job: _Job) -> ActionOutcome:
        start_delay = max(0.0, self._clock.monotonic() - job.decided_at)
        started_at = self._clock.time()
        try:
            if isinstance(job.command, ExecCommand):
                result = self._runner.run(job.command.argv, timeout=job.timeout, name=job.name)
            else:
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
        signame = signal.Signals(command.signum).name
        try:
            self._signaller(command.pid, command.signum)
        except ProcessLookupError:
            detail = f"pid {command.pid} is gone"
            outcome = Outcome.FAILED
        except OSError as exc:
            detail = f"cannot signal pid {command.pid}: {exc}"
            outcome = Outcome.FAILED
        else:
            detail = f"sent {signame} to pid {command.pid}"
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
        self, on_match: OnMatch, ctx: ActionContext, outcome: Outcome, detail: str
    ) -> ActionOutcome:
        try:
            name = check_on_match(on_match)
        except ActionError:
            name = "invalid"
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
