"""Running an action's command as a supervised process group, and how a run ended.

Each command runs as the leader of its own session and process group, with stdin from
/dev/null, a minimal environment, cwd "/" and no inherited descriptors; its merged output is
logged, up to a bound, and the rest read in large blocks and dropped, so a chatty action costs
time linear in what it prints. The run ends when the leader exits, its timeout passes or the
daemon stops; then whatever is left in its process group gets SIGTERM, and SIGKILL after the
grace period. A process that leaves the group (setsid(2), setpgid(2)) is not followed: that is
how daemon(8) and the rc.d scripts `service ... restart` runs start the services an action
restarts, which must outlive it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import select
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rctlpolicy.actions.procgroup import group_size

logger = logging.getLogger("rctlpolicy.actions")

#: The whole environment of an action: nothing of the daemon's own (no secrets, no LD_*).
ACTION_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
ACTION_ENVIRONMENT: Mapping[str, str] = {"PATH": ACTION_PATH, "HOME": "/"}

#: Bytes asked for per read of an action's output (a pipe holds 64 KiB unless grown).
READ_SIZE = 1 << 20
#: How long the start of an action may wait to be logged for the program's first output.
ANNOUNCE_DELAY = 0.002
#: Linux's F_SETPIPE_SZ: a larger pipe means fewer reads of a chatty action.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)


class Outcome(enum.StrEnum):
    """How an action ended (the `outcome` metrics label)."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SUPPRESSED = "suppressed"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one command ran. `duration` is monotonic seconds; `started_at` wall time."""

    outcome: Outcome
    exit_status: int | None
    started_at: float
    duration: float
    pid: int | None = None
    detail: str = ""


class Run(Protocol):
    """A command that was started: `wait` supervises it to its end."""

    def wait(self) -> RunResult:
        """Block until the run is over (exit, timeout or shutdown); never raise for a failure
        of the command itself."""
        ...


class Runner(Protocol):
    """Starts one argv (in the caller's thread, so the start costs no thread switch) and
    supervises it to completion or timeout from a worker thread."""

    def start(self, argv: Sequence[str], *, timeout: float, name: str) -> Run:
        """Start `argv` now; a failure to start is a Run that is already over."""
        ...

    def terminate_all(self) -> None:
        """Kill every running command's process group, and refuse new ones (shutdown)."""
        ...


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that is over before it began (the program could not be started)."""

    result: RunResult

    def wait(self) -> RunResult:
        return self.result


class _OutputLogger:
    """Logs a child's merged stdout/stderr line by line, up to `max_lines` lines; past that it
    only counts what it drops. Linear in the output's size: every byte is looked at once."""

    def __init__(self, name: str, pid: int, max_lines: int, max_line_bytes: int = 4096) -> None:
        self._name = name
        self._pid = pid
        self._max_lines = max_lines
        self._max_line_bytes = max_line_bytes
        self._pending = bytearray()  # the start of a line not yet ended
        self._logged = 0
        self._dropped = 0
        self._dropping_partial = False  # a dropped line not yet ended

    def feed(self, data: bytes) -> None:
        start = 0
        while self._logged < self._max_lines and start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            room = self._max_line_bytes - len(self._pending)
            if end - start > room:  # a long line is logged in pieces
                self._pending += data[start : start + room]
                self._emit()
                start += room
                continue
            self._pending += data[start:end]
            if newline < 0:
                return
            self._emit()
            start = newline + 1
        if start < len(data):
            # Past the bound: count the lines, keep nothing (bytes.count runs in C).
            self._dropped += data.count(b"\n", start)
            self._dropping_partial = not data.endswith(b"\n")

    def flush(self) -> None:
        if self._pending:
            self._emit()
        if self._dropping_partial:
            self._dropped += 1
            self._dropping_partial = False
        if self._dropped:
            logger.info(
                "%s[%d]: %d more output lines not logged", self._name, self._pid, self._dropped
            )
            self._dropped = 0

    def _emit(self) -> None:
        raw = bytes(self._pending)
        self._pending.clear()
        self._logged += 1
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        logger.info("%s[%d]: %s", self._name, self._pid, line, extra={"action": self._name})


def _exit_status(proc: subprocess.Popen[bytes]) -> int | bool | None:
    """The child's exit status (negative: killed by that signal) once it has exited, without
    reaping it, so its pid (the process group id we signal) cannot be reused before we are done
    with the group. None while it runs; True when it was reaped elsewhere (SIGCHLD ignored)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


class ActionProcessRunner:
    """Runs actions as real processes: argv only, each in its own session and process group.

    On timeout (or `terminate_all`) the whole group gets SIGTERM, then SIGKILL after `grace`
    seconds. When the leader exits by itself, what it left in its group gets the same, and the
    run is over only once the group is empty. Deadlines are on the real monotonic clock: the
    waiting happens in the kernel (select, waitid), which a manual clock cannot move.
    """

    def __init__(
        self,
        *,
        grace: float = 2.0,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        max_logged_lines: int = 200,
        poll_interval: float = 0.05,
        group_size: Callable[[int], int | None] = group_size,
    ) -> None:
        self.grace = grace
        self._env = dict(ACTION_ENVIRONMENT if env is None else env)
        self._cwd = cwd
        self._max_logged_lines = max_logged_lines
        self._poll_interval = poll_interval
        self._group_size = group_size
        self._terminating = threading.Event()

    def terminate_all(self) -> None:
        """Kill the process groups of all running commands (each within `grace`); refuse new."""
        self._terminating.set()

    def run(self, argv: Sequence[str], *, timeout: float, name: str) -> RunResult:
        """Run argv to completion, timeout or termination; spawn failures are outcomes too."""
        return self.start(argv, timeout=timeout, name=name).wait()

    def start(self, argv: Sequence[str], *, timeout: float, name: str) -> Run:
        """Start argv in its own session now; `wait()` on the result supervises it."""
        args = list(argv)
        started_at = time.time()
        start = time.monotonic()
        if self._terminating.is_set():
            return Finished(
                RunResult(Outcome.FAILED, None, started_at, 0.0, detail="shutting down")
            )
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
            return Finished(
                RunResult(
                    Outcome.FAILED, None, started_at, time.monotonic() - start, detail=str(exc)
                )
            )
        return _Process(self, proc, name, timeout, started_at, start, args)

    def _finish(
        self,
        proc: subprocess.Popen[bytes],
        name: str,
        timeout: float,
        started_at: float,
        start: float,
        argv: Sequence[str] = (),
    ) -> RunResult:
        with proc:
            try:
                self._announce(proc, name, argv)
                reason = self._supervise(proc, start + timeout, name)
                duration = time.monotonic() - start
                status = _exit_status(proc)
                if reason == "exit":
                    self._end_leftovers(proc, name)
            except BaseException:
                # Whatever broke, the group must not outlive us.
                self._kill_group(proc, name, "an internal error")
                proc.wait()
                raise
            returncode = proc.wait()
        if isinstance(status, int) and not isinstance(status, bool):
            returncode = status
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

    @staticmethod
    def _announce(proc: subprocess.Popen[bytes], name: str, argv: Sequence[str]) -> None:
        """Log the start once the program has had a moment to start (its first output, its
        exit, or ANNOUNCE_DELAY): the log write, and whatever reads the log, then do not take
        a CPU from the program's own start-up (on the event path, bench/events.py)."""
        assert proc.stdout is not None
        # poll(2), not select(2): a descriptor past FD_SETSIZE (1024; the metrics endpoint
        # alone may hold that many) is a ValueError to select.select, and no wait at all.
        poller = select.poll()
        poller.register(proc.stdout, select.POLLIN)
        with contextlib.suppress(OSError):
            poller.poll(ANNOUNCE_DELAY * 1000)
        logger.info("action %s: started pid %d: %s", name, proc.pid, shlex.join(argv))

    def _supervise(self, proc: subprocess.Popen[bytes], deadline: float, name: str) -> str:
        """Log output until the child exits ("exit"), the deadline passes ("timeout") or
        terminate_all is called ("terminated"); in the last two cases its group is killed."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        if _F_SETPIPE_SZ is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, READ_SIZE)
        output = _OutputLogger(name, proc.pid, self._max_logged_lines)
        reading = True
        pause = 0.001
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                if _exit_status(proc) is not None:
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
            # What the child wrote before it exited is in the pipe now; a process it left
            # behind may keep the pipe open, so do not wait for end of file.
            self._drain(fd, output)
        output.flush()
        return reason

    def _drain(self, fd: int, output: _OutputLogger) -> bool:
        """Read what is available; False at end of file. Bounded, so a chatty child cannot
        keep us from checking the deadline."""
        for _ in range(16):
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            output.feed(chunk)
        return True

    def _end_leftovers(self, proc: subprocess.Popen[bytes], name: str) -> None:
        """The leader exited: end what it left in its group (SIGTERM, SIGKILL after grace)."""
        size = self._group_size(proc.pid)
        if size is not None and size <= 1:
            return  # only the unreaped leader: nothing left behind
        left = "an unknown number of" if size is None else str(size - 1)
        logger.warning(
            "action %s: %s process(es) left in group %d after it exited: "
            "SIGTERM, SIGKILL after %gs",
            name, left, proc.pid, self.grace,
        )  # fmt: skip
        _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + self.grace
        pause = 0.001
        while time.monotonic() < end and not self._terminating.is_set():
            size = self._group_size(proc.pid)
            if size is not None and size <= 1:
                return
            self._terminating.wait(min(pause, max(0.0, end - time.monotonic())))
            pause = min(pause * 2, self._poll_interval)
        _signal_group(proc.pid, signal.SIGKILL)

    def _kill_group(self, proc: subprocess.Popen[bytes], name: str, why: str) -> None:
        logger.warning(
            "action %s: killing process group %d (%s): SIGTERM, SIGKILL after %gs",
            name, proc.pid, why, self.grace,
        )  # fmt: skip
        _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + self.grace
        pause = 0.001
        while _exit_status(proc) is None and time.monotonic() < end:
            time.sleep(min(pause, max(0.0, end - time.monotonic())))
            pause = min(pause * 2, self._poll_interval)
        # Always, even if the leader went quietly: its helpers may ignore SIGTERM. The leader
        # is not reaped yet, so the group id still names this group and nothing else.
        _signal_group(proc.pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class _Process:
    """A started action process; `wait` supervises it (once)."""

    runner: ActionProcessRunner
    proc: subprocess.Popen[bytes]
    name: str
    timeout: float
    started_at: float  # wall clock
    start: float  # monotonic
    argv: Sequence[str] = ()

    def wait(self) -> RunResult:
        return self.runner._finish(  # the runner's own second half of a run
            self.proc, self.name, self.timeout, self.started_at, self.start, self.argv
        )


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        logger.error("cannot send %s to process group %d: %s", signum.name, pgid, exc)
