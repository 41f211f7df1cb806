"""Tests of the action engine with real processes, real signals and real lock files.

Children that must wait do so on a `Gate` (a unix socket they connect to and read from) so the
test decides when they go on; nothing here sleeps and then asserts.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rctlpolicy.actioncontext import ActionContext, ActionInputError
from rctlpolicy.actions import (
    ACTION_PATH,
    ActionEngine,
    ActionOutcome,
    ActionProcessRunner,
    CooldownState,
    Decision,
    FileState,
    MemoryState,
    Outcome,
)
from rctlpolicy.actions import engine as engine_module
from rctlpolicy.actions import runner as runner_module
from rctlpolicy.actions.procgroup import group_size
from rctlpolicy.clock import ManualClock, SystemClock
from rctlpolicy.model import Action, Resource, Rule, SubjectType
from rctlpolicy.onmatch import (
    ActionConfigError,
    ExecCommand,
    OnMatch,
    RunLimit,
    SignalCommand,
    TemplateError,
    action_name,
    build_command,
    check_on_match,
    check_template,
    render_argv,
)
from rctlpolicy.policy_model import PolicyRule, SourceLocation

PY = sys.executable
TRUE = "/bin/true"
DEADLINE = 10.0

#: Connects to the gate (argv[1]), says its pid, and waits until told to go (or the gate closes).
#: Brace-free so that it can sit in a run template unescaped.
GATE_CHILD = (
    "import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "s.sendall(b'%d\\n' % os.getpid()); s.recv(1)"
)
#: Writes its argv (after the output path) as JSON to argv[1].
ARGV_DUMP = "import json,sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))"


# --- fixtures and helpers ----------------------------------------------------------------------


class Gate:
    """A unix socket that action children connect to and then wait on."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rp")
        self.path = os.path.join(self.directory, "g")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.connections: list[socket.socket] = []

    def arrive(self, timeout: float = DEADLINE) -> tuple[socket.socket, int]:
        """Wait for the next child to connect; return its connection and pid."""
        self.server.settimeout(timeout)
        connection, _ = self.server.accept()
        connection.settimeout(timeout)
        self.connections.append(connection)
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(64)
            assert chunk, "child hung up before saying its pid"
            data += chunk
        return connection, int(data)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.server.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()


def gone(connection: socket.socket) -> bool:
    """True when the peer process has died (its end of the socket closed), within DEADLINE."""
    connection.settimeout(DEADLINE)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def jail_rule(
    jail: str = "web01",
    resource: Resource = Resource.MEMORYUSE,
    per: SubjectType = SubjectType.JAIL,
) -> Rule:
    return Rule(SubjectType.JAIL, jail, resource, Action.DEVCTL, 1073741824, per)


RULE = jail_rule()


def policy(on_match: OnMatch | None, rule: Rule = RULE) -> PolicyRule:
    return PolicyRule(rule, SourceLocation("rules/test.yaml", 3, 1), rule.canonical, on_match)


def ctx(jail: str = "web01", pid: int | None = 4242, ruid: int | None = 770) -> ActionContext:
    return ActionContext.from_event(jail_rule(jail), pid, ruid, jail)


class Outcomes:
    """on_outcome that queues what it gets."""

    def __init__(self) -> None:
        self.queue: queue.Queue[ActionOutcome] = queue.Queue()

    def __call__(self, outcome: ActionOutcome) -> None:
        self.queue.put(outcome)

    def next(self) -> ActionOutcome:
        return self.queue.get(timeout=DEADLINE)

    def none_pending(self) -> bool:
        return self.queue.empty()


EngineFactory = Callable[..., tuple[ActionEngine, Outcomes]]


@pytest.fixture
def make_engine() -> Iterator[EngineFactory]:
    """Engines with an Outcomes recorder; all shut down at the end of the test."""
    engines: list[ActionEngine] = []

    def make(
        clock: ManualClock | SystemClock | None = None,
        state: CooldownState | None = None,
        runner: ActionProcessRunner | None = None,
        **kwargs: object,
    ) -> tuple[ActionEngine, Outcomes]:
        outcomes = Outcomes()
        engine = ActionEngine(
            clock or ManualClock(),
            runner or ActionProcessRunner(grace=0.5),
            state or MemoryState(),
            on_outcome=outcomes,
            **kwargs,  # type: ignore[arg-type]
        )
        engines.append(engine)
        return engine, outcomes

    yield make
    for engine in engines:
        engine.shutdown(timeout=0)


# --- clock -------------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start_time=100.0, start_monotonic=5.0)
    assert (clock.time(), clock.monotonic()) == (100.0, 5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (102.5, 7.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    clock.set_time(50.0)
    assert (clock.time(), clock.monotonic()) == (50.0, 7.5)


def test_system_clock_reads_the_host() -> None:
    clock = SystemClock()
    assert abs(clock.time() - time.time()) < 5
    first = clock.monotonic()
    assert clock.monotonic() >= first


# --- validation of event data ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "pid", "ruid", "jail"),
    [
        ("pid", "12; rm -rf /", "0", "web01"),
        ("pid", "-1", "0", "web01"),
        ("pid", "", "0", "web01"),
        ("pid", " 12", "0", "web01"),
        ("pid", "12 ", "0", "web01"),
        ("pid", "+12", "0", "web01"),
        ("pid", "0x10", "0", "web01"),
        ("pid", "12.0", "0", "web01"),
        ("pid", "\uff11\uff12", "0", "web01"),  # fullwidth digits pass str.isdigit()
        ("pid", "2147483648", "0", "web01"),
        ("pid", True, "0", "web01"),
        ("pid", -5, "0", "web01"),
        ("ruid", "12", "abc", "web01"),
        ("ruid", "12", "4294967296", "web01"),
        ("ruid", "12", "-2147483649", "web01"),
        ("ruid", "12", "$(id -u)", "web01"),
        ("jail", "12", "0", "-x"),
        ("jail", "12", "0", "--help"),
        ("jail", "12", "0", "web\n01"),
        ("jail", "12", "0", "web\r01"),
        ("jail", "12", "0", "web\x0001"),
        ("jail", "12", "0", "web\x1b[31m"),
        ("jail", "12", "0", "web\x7f"),
        ("jail", "12", "0", "web\x85"),  # C1 NEL
        ("jail", "12", "0", ""),
        ("jail", "12", "0", "x" * 256),
        ("jail", "12", "0", "\u00e9" * 128),  # 256 bytes in UTF-8
    ],
)
def test_from_event_rejects(field: str, pid: object, ruid: object, jail: str) -> None:
    with pytest.raises(ActionInputError) as caught:
        ActionContext.from_event(RULE, pid, ruid, jail)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.reason


@pytest.mark.parametrize(
    "jail",
    ["0", "web01", "parent.child", "7", "with space", "a'b\"c;$(d)`e`", "x" * 255, "\u00e9" * 127],
)
def test_from_event_accepts_jail_names_the_kernel_allows(jail: str) -> None:
    context = ActionContext.from_event(RULE, "81234", "770", jail)
    assert (context.pid, context.ruid, context.jail) == (81234, 770, jail)


def test_from_event_takes_ints_and_missing_values() -> None:
    context = ActionContext.from_event(RULE, 5, 0, "0")
    assert (context.pid, context.ruid) == (5, 0)
    context = ActionContext.from_event(RULE, None, None, "0")
    assert (context.pid, context.ruid) == (None, None)


def test_negative_ruid_is_the_kernels_signed_printing_of_a_large_uid() -> None:
    assert ActionContext.from_event(RULE, "1", "-2", "0").ruid == 4294967294
    assert ActionContext.from_event(RULE, "1", "4294967295", "0").ruid == 4294967295


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ActionInputError):
        ActionContext(RULE, 1, 2, "-x")
    with pytest.raises(ActionInputError):
        ActionContext(RULE, -1, 2, "0")
    with pytest.raises(ActionInputError) as caught:
        ActionContext(jail_rule("-evil"), 1, 2, "0")
    assert caught.value.field == "rule jail"


# --- argv templates ----------------------------------------------------------------------------

NASTY_JAIL = "we b;$(touch /tmp/pwned) `id` 'q' \"dq\" && |x| > y * ~"


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("{rule}", "jail:web01:memoryuse:devctl=1073741824"),
        ("{subject}", "jail"),
        ("{subject_id}", "web01"),
        ("{resource}", "memoryuse"),
        ("{action}", "devctl"),
        ("{amount}", "1073741824"),
        ("{pid}", "4242"),
        ("{ruid}", "770"),
        ("{jail}", "web01"),
        ("--jail={jail}", "--jail=web01"),
        ("{pid}:{ruid}@{jail}", "4242:770@web01"),
        ("{{jail}}", "{jail}"),
        ("{{{jail}}}", "{web01}"),
        ("a}}b{{c", "a}b{c"),
        ("plain", "plain"),
    ],
)
def test_render_placeholder_table(element: str, expected: str) -> None:
    assert render_argv(("/bin/echo", element), ctx()) == ("/bin/echo", expected)


def test_render_rule_with_per_and_host() -> None:
    rule = jail_rule(resource=Resource.PCPU, per=SubjectType.PROCESS)
    context = ActionContext.from_event(rule, "55123", "80", "0")
    assert render_argv(("x", "{rule}", "{jail}"), context) == (
        "x",
        "jail:web01:pcpu:devctl=1073741824/process",
        "0",
    )


def test_values_stay_single_literal_elements() -> None:
    argv = render_argv(("/bin/echo", "{jail}", "--name={jail}", "{subject_id}"), ctx(NASTY_JAIL))
    assert argv == ("/bin/echo", NASTY_JAIL, f"--name={NASTY_JAIL}", NASTY_JAIL)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (("x", "{nope}"), "unknown placeholder {nope}"),
        (("x", "{jial}"), "did you mean '{jail}'"),
        (("x", "{}"), "empty placeholder"),
        (("x", "{pid!r}"), "unknown placeholder"),
        (("x", "{pid:>5}"), "unknown placeholder"),
        (("x", "{ pid }"), "unknown placeholder"),
        (("x", "{pid"), "unmatched '{'"),
        (("x", "pid}"), "unmatched '}'"),
        (("x", "{a{pid}"), "unmatched '{'"),
        (("{jail}", "x"), "cannot contain placeholders"),
        (("/usr/local/bin/{resource}",), "cannot contain placeholders"),
        (("bin/tool",), "absolute path"),
        (("",), "empty"),
        ((), "non-empty"),
        (("x", "a\0b"), "NUL"),
        (("x", ""), "non-empty string"),
    ],
)
def test_template_errors(template: tuple[str, ...], message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        render_argv(template, ctx())


def test_check_template_lists_placeholders() -> None:
    used = check_template(("/usr/local/bin/x", "--pid={pid}", "{jail}", "{{pid}}"))
    assert used == {"pid", "jail"}


def test_unknown_value_is_an_input_error() -> None:
    with pytest.raises(ActionInputError) as caught:
        render_argv(("/bin/kill", "{pid}"), ctx(pid=None))
    assert caught.value.field == "pid"
    assert render_argv(("/bin/echo", "{jail}"), ctx(pid=None)) == ("/bin/echo", "web01")


def test_argv_reaches_the_child_intact(tmp_path: Path) -> None:
    """A real child prints its argv: every substituted value is one literal element."""
    out = tmp_path / "argv.json"
    template = (
        PY, "-c", ARGV_DUMP, str(out),
        "{jail}", "--jail={jail}", "{rule}", "{pid}", "{ruid}", "{{literal}}",
    )  # fmt: skip
    argv = render_argv(template, ctx(NASTY_JAIL))
    result = ActionProcessRunner().run(argv, timeout=DEADLINE, name="dump")
    assert result.outcome is Outcome.OK
    assert json.loads(out.read_text()) == [
        NASTY_JAIL,
        f"--jail={NASTY_JAIL}",
        f"jail:{NASTY_JAIL}:memoryuse:devctl=1073741824",
        "4242",
        "770",
        "{literal}",
    ]
    assert not Path("/tmp/pwned").exists()


# --- commands and names ------------------------------------------------------------------------


def command(on_match: OnMatch, context: ActionContext) -> ExecCommand | SignalCommand:
    return build_command(on_match, context, own_pid=os.getpid())


def test_service_sugar_with_and_without_jail() -> None:
    on_match = OnMatch(service=("postgresql", "restart"))
    assert command(on_match, ctx("pgjail")) == ExecCommand(
        ("/usr/sbin/service", "-j", "pgjail", "postgresql", "restart")
    )
    assert command(on_match, ctx("0")) == ExecCommand(
        ("/usr/sbin/service", "postgresql", "restart")
    )
    assert command(on_match, ctx("with space")) == ExecCommand(
        ("/usr/sbin/service", "-j", "with space", "postgresql", "restart")
    )
    assert action_name(on_match, RULE) == "web01-memoryuse-postgresql"


@pytest.mark.parametrize(
    "service",
    [("-e", "restart"), ("pg", "-v"), ("a b", "restart"), ("../../x", "start"), ("", "x")],
)
def test_service_words_are_checked(service: tuple[str, str]) -> None:
    with pytest.raises(ActionConfigError):
        command(OnMatch(service=service), ctx())


def test_signal_command() -> None:
    assert command(OnMatch(signal="TERM"), ctx()) == SignalCommand(4242, signal.SIGTERM)
    assert command(OnMatch(signal="sighup"), ctx()) == SignalCommand(4242, signal.SIGHUP)
    assert action_name(OnMatch(signal="TERM"), RULE) == "web01-memoryuse-SIGTERM"
    assert action_name(OnMatch(signal="sigkill"), RULE) == "web01-memoryuse-SIGKILL"


@pytest.mark.parametrize("pid", [None, 0, 1, os.getpid()])
def test_signal_refuses_pids(pid: int | None) -> None:
    with pytest.raises(ActionInputError) as caught:
        command(OnMatch(signal="TERM"), ctx(pid=pid))
    assert caught.value.field == "pid"


@pytest.mark.parametrize("name", ["NOPE", "15", "", "SIG"])
def test_signal_names_are_checked(name: str) -> None:
    with pytest.raises(ActionConfigError, match="signal"):
        command(OnMatch(signal=name), ctx())


def test_action_names() -> None:
    notify = OnMatch(run=("/usr/local/bin/notify-admin", "{jail}"))
    assert action_name(notify, RULE) == "web01-memoryuse-notify-admin"
    assert action_name(OnMatch(run=("logger", "x")), RULE) == "web01-memoryuse-logger"
    user = Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.DEVCTL, 100, SubjectType.USER)
    assert action_name(OnMatch(run=("logger", "x")), user) == "user-80-maxproc-logger"
    chosen = OnMatch(run=("/usr/sbin/service", "postgresql", "restart"), name="restart-pg")
    assert action_name(chosen, RULE) == "restart-pg"


@pytest.mark.parametrize(
    "on_match",
    [
        OnMatch(),
        OnMatch(run=("x",), signal="TERM"),
        OnMatch(run=("x",), timeout=0),
        OnMatch(run=("x",), cooldown=-1),
        OnMatch(run=("x",), cooldown=float("nan")),
        OnMatch(run=("x",), max_runs=RunLimit(0, 60)),
        OnMatch(run=("x",), max_runs=RunLimit(1, 0)),
    ],
)
def test_on_match_must_be_runnable(on_match: OnMatch) -> None:
    with pytest.raises(ActionConfigError):
        check_on_match(on_match)


# --- the subprocess runner ---------------------------------------------------------------------


def test_runner_outcomes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    runner = ActionProcessRunner()
    ok = runner.run([TRUE], timeout=DEADLINE, name="true")
    assert (ok.outcome, ok.exit_status) == (Outcome.OK, 0)
    assert ok.duration >= 0 and ok.started_at > 0
    failed = runner.run([PY, "-c", "raise SystemExit(3)"], timeout=DEADLINE, name="three")
    assert (failed.outcome, failed.exit_status, failed.detail) == (
        Outcome.FAILED,
        3,
        "exit status 3",
    )
    missing = runner.run(["/nonexistent/program", "x"], timeout=DEADLINE, name="missing")
    assert (missing.outcome, missing.exit_status) == (Outcome.FAILED, None)
    assert "No such file" in missing.detail
    assert any(
        r.levelno == logging.ERROR and "/nonexistent/program" in r.getMessage()
        for r in caplog.records
    )


def test_runner_logs_output_and_gives_a_minimal_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    os.environ["RCTLPOLICY_TEST_SECRET"] = "hunter2"
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    script = (
        "import os,sys; print(sorted(os.environ)); print('cwd', os.getcwd());"
        "print('stdin', repr(sys.stdin.read()));"
        f"os.fstat({write_end})"  # close_fds: an inheritable descriptor must not be there
    )
    try:
        result = ActionProcessRunner().run(["/usr/bin/env"], timeout=DEADLINE, name="env")
        assert result.outcome is Outcome.OK
        env_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("env[")]
        assert sorted(line.split(": ", 1)[1] for line in env_lines) == [
            "HOME=/",
            f"PATH={ACTION_PATH}",
        ]
        assert all(
            getattr(r, "action", None) == "env"
            for r in caplog.records
            if r.getMessage().startswith("env[")
        )
        caplog.clear()
        result = ActionProcessRunner().run([PY, "-c", script], timeout=DEADLINE, name="probe")
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("probe[")]
        assert any("cwd /" in line for line in lines)
        assert any("stdin ''" in line for line in lines)
        assert any("Bad file descriptor" in line for line in lines)  # stderr is logged too
        assert result.outcome is Outcome.FAILED
    finally:
        del os.environ["RCTLPOLICY_TEST_SECRET"]
        os.close(read_end)
        os.close(write_end)


def test_runner_bounds_what_it_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    script = "import sys\nfor i in range(10): print('line', i)\nsys.stdout.write('tail')"
    result = ActionProcessRunner(max_logged_lines=3).run([PY, "-c", script], timeout=10, name="c")
    assert result.outcome is Outcome.OK
    lines = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.msg.startswith("%s[")]
    assert lines == ["line 0", "line 1", "line 2", "8 more output lines not logged"]


def test_timeout_kills_the_whole_process_group(gate: Gate) -> None:
    """The action starts a helper that ignores SIGTERM; after the timeout both are gone."""
    helper = (
        "import os,signal,socket,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'%d\\n' % os.getpid()); s.recv(1)"
    )
    child = (
        "import subprocess,sys,time; "
        "subprocess.Popen([sys.executable,'-c',sys.argv[2],sys.argv[1]]); time.sleep(600)"
    )
    runner = ActionProcessRunner(grace=0.3)
    results: queue.Queue[object] = queue.Queue()
    worker = threading.Thread(
        target=lambda: results.put(
            runner.run([PY, "-c", child, gate.path, helper], timeout=1.0, name="spawner")
        )
    )
    worker.start()
    connection, helper_pid = gate.arrive()
    worker.join(DEADLINE)
    result = results.get(timeout=DEADLINE)
    assert getattr(result, "outcome", None) is Outcome.TIMEOUT
    # The helper ignores SIGTERM and sits in recv(): its end closes only when SIGKILL ends it.
    assert gone(connection), f"the helper (pid {helper_pid}) outlived the timeout"


def test_runner_does_not_wait_for_an_escaped_helper(gate: Gate) -> None:
    """A helper that left the group and holds stdout open must not hold the action up."""
    child = (
        "import subprocess,sys; subprocess.Popen([sys.executable,'-c',sys.argv[2],sys.argv[1]],"
        "start_new_session=True); print('started')"
    )
    result = ActionProcessRunner().run(
        [PY, "-c", child, gate.path, GATE_CHILD], timeout=30, name="e"
    )
    assert result.outcome is Outcome.OK
    assert result.duration < 20
    connection, _ = gate.arrive()
    connection.sendall(b"x")
    assert gone(connection)


def test_what_an_action_leaves_in_its_group_ends_with_it(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """`helper &`: the action exits at once, leaving a helper (that ignores SIGTERM) in its
    process group; the run is over only once the helper is killed too."""
    helper = (
        "import os,signal,socket,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'%d\\n' % os.getpid()); print('ready', flush=True); s.recv(1)"
    )
    leader = (
        "import subprocess,sys; p=subprocess.Popen([sys.executable,'-c',sys.argv[2],sys.argv[1]],"
        "stdout=subprocess.PIPE); p.stdout.readline()"
    )
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    runner = ActionProcessRunner(grace=0.3)
    result = runner.run([PY, "-c", leader, gate.path, helper], timeout=DEADLINE, name="leaver")
    assert result.outcome is Outcome.OK
    connection, helper_pid = gate.arrive()
    assert gone(connection), f"the helper (pid {helper_pid}) outlived its action"
    assert any("1 process(es) left in group" in r.getMessage() for r in caplog.records)


def test_group_size_counts_a_process_group() -> None:
    code = (
        "import subprocess,sys,time; "
        "subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    )
    with subprocess.Popen([PY, "-c", code], start_new_session=True) as leader:
        try:
            deadline = time.monotonic() + DEADLINE
            while group_size(leader.pid) != 2:
                assert time.monotonic() < deadline, f"group of {group_size(leader.pid)}"
                time.sleep(0.01)
        finally:
            os.killpg(leader.pid, signal.SIGKILL)


def test_where_the_group_cannot_be_counted_leftovers_get_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    runner = ActionProcessRunner(grace=0.2, group_size=lambda pgid: None)
    assert runner.run([TRUE], timeout=DEADLINE, name="true").outcome is Outcome.OK
    assert any("an unknown number of process(es)" in r.getMessage() for r in caplog.records)


def test_an_action_that_leaves_nothing_ends_without_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    result = ActionProcessRunner(grace=600).run([TRUE], timeout=DEADLINE, name="true")
    assert result.outcome is Outcome.OK  # the 600 s grace was not waited for
    assert not any("left in group" in r.getMessage() for r in caplog.records)


def test_the_start_is_logged_once_the_program_started_even_past_fd_setsize(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The start line waits (up to ANNOUNCE_DELAY) for the program's first output or its exit,
    # whatever the descriptor's number: with 1,100 descriptors open its pipe is past select()'s
    # FD_SETSIZE.
    monkeypatch.setattr(runner_module, "ANNOUNCE_DELAY", DEADLINE)
    marker = tmp_path / "exited"
    script = f"import pathlib, time; time.sleep(0.2); pathlib.Path({str(marker)!r}).touch()"
    seen: list[bool] = []

    class AtStart(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "started pid" in record.getMessage():
                seen.append(marker.exists())

    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    handler = AtStart()
    logging.getLogger("rctlpolicy.actions").addHandler(handler)
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(1100)]
    try:
        assert held[-1] > 1024  # the action's pipe comes after these
        result = ActionProcessRunner().run([PY, "-c", script], timeout=DEADLINE, name="late")
    finally:
        logging.getLogger("rctlpolicy.actions").removeHandler(handler)
        for fd in [*held, null]:
            os.close(fd)
    assert result.outcome is Outcome.OK
    assert seen == [True]


def test_a_flood_of_output_is_read_and_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`yes` for a while: what is past the bound is counted (every line, exactly) and dropped."""
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    lines = 400_000
    script = f"import sys; sys.stdout.write('y\\n' * {lines}); sys.stdout.write('no newline')"
    runner = ActionProcessRunner(max_logged_lines=5)
    result = runner.run([PY, "-c", script], timeout=60, name="yes")
    assert result.outcome is Outcome.OK
    logged = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.msg.startswith("%s[")]
    assert logged == ["y"] * 5 + [f"{lines - 5 + 1} more output lines not logged"]


def test_a_long_line_is_logged_in_bounded_pieces(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    script = "import sys; sys.stdout.write('x' * 10000 + '\\n' + 'tail')"
    result = ActionProcessRunner().run([PY, "-c", script], timeout=DEADLINE, name="long")
    assert result.outcome is Outcome.OK
    logged = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.msg.startswith("%s[")]
    assert [len(line) for line in logged] == [4096, 4096, 1808, 4]


# --- the engine: deciding ----------------------------------------------------------------------


def test_no_on_match_is_no_action(make_engine: EngineFactory) -> None:
    engine, outcomes = make_engine()
    assert engine.submit(policy(None), ctx()) is Decision.NO_ACTION
    assert engine.run_sync(policy(None), ctx()) is None
    assert outcomes.none_pending()


def test_outcome_record(make_engine: EngineFactory) -> None:
    clock = ManualClock(start_time=1_800_000_000.0)
    engine, outcomes = make_engine(clock)
    on_match = OnMatch(run=(PY, "-c", "raise SystemExit(7)"))
    assert engine.submit(policy(on_match), ctx("db1")) is Decision.STARTED
    outcome = outcomes.next()
    assert outcome.name == f"db1-memoryuse-{os.path.basename(PY)}"
    assert (outcome.resource, outcome.jail, outcome.outcome) == ("memoryuse", "db1", Outcome.FAILED)
    assert outcome.exit_status == 7
    assert outcome.started_at == 1_800_000_000.0
    assert outcome.duration > 0
    assert outcome.rule == "jail:db1:memoryuse:devctl=1073741824"


def test_cooldown(make_engine: EngineFactory) -> None:
    clock = ManualClock()
    engine, outcomes = make_engine(clock)
    rule = policy(OnMatch(run=(TRUE,), cooldown=60))
    assert engine.submit(rule, ctx()) is Decision.STARTED
    assert outcomes.next().outcome is Outcome.OK
    clock.advance(59)
    assert engine.submit(rule, ctx()) is Decision.SUPPRESSED
    suppressed = outcomes.next()
    assert (suppressed.outcome, suppressed.name, suppressed.duration) == (
        Outcome.SUPPRESSED,
        "web01-memoryuse-true",
        0.0,
    )
    assert engine.submit(rule, ctx("other")) is Decision.STARTED  # per rule *and* jail
    assert outcomes.next().jail == "other"
    clock.advance(1)
    assert engine.submit(rule, ctx()) is Decision.STARTED
    assert outcomes.next().outcome is Outcome.OK


def test_cooldown_survives_no_wall_clock_step_back(make_engine: EngineFactory) -> None:
    clock = ManualClock(start_time=1_000_000.0)
    engine, outcomes = make_engine(clock)
    rule = policy(OnMatch(run=(TRUE,), cooldown=60))
    assert engine.submit(rule, ctx()) is Decision.STARTED
    outcomes.next()
    clock.set_time(1_000_000.0 - 86_400)  # set back a day: the cooldown must not last a day
    assert engine.submit(rule, ctx()) is Decision.SUPPRESSED
    outcomes.next()
    clock.advance(60)
    assert engine.submit(rule, ctx()) is Decision.STARTED
    outcomes.next()


def test_max_runs_exhaustion_and_recovery(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rctlpolicy.actions")
    clock = ManualClock()
    engine, outcomes = make_engine(clock)
    engine_true = policy(OnMatch(run=(TRUE,), max_runs=RunLimit(2, 3600)))
    for _ in range(2):
        assert engine.submit(engine_true, ctx()) is Decision.STARTED
        assert outcomes.next().outcome is Outcome.OK
        clock.advance(600)
    assert engine.exhausted() == set()
    for _ in range(3):
        assert engine.submit(engine_true, ctx()) is Decision.EXHAUSTED
        assert outcomes.next().outcome is Outcome.EXHAUSTED
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "NOT ACTING" in errors[0].getMessage()
    assert engine.exhausted() == {("web01-memoryuse-true", "memoryuse", "web01")}
    clock.advance(3600 - 1200)  # the first run leaves the window
    assert engine.exhausted() == set()
    assert engine.submit(engine_true, ctx()) is Decision.STARTED
    assert outcomes.next().outcome is Outcome.OK
    assert engine.submit(engine_true, ctx()) is Decision.EXHAUSTED  # the next window is full
    outcomes.next()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_one_run_at_a_time_per_rule_and_jail(make_engine: EngineFactory, gate: Gate) -> None:
    engine, outcomes = make_engine()
    rule = policy(OnMatch(run=(PY, "-c", GATE_CHILD, gate.path)))
    assert engine.submit(rule, ctx()) is Decision.STARTED
    first, _ = gate.arrive()
    assert engine.submit(rule, ctx()) is Decision.SUPPRESSED
    assert outcomes.next().detail == "still running"
    assert engine.submit(rule, ctx("db1")) is Decision.STARTED  # another jail runs alongside
    second, _ = gate.arrive()
    first.sendall(b"x")
    done = outcomes.next()
    assert (done.jail, done.outcome) == ("web01", Outcome.OK)
    assert engine.submit(rule, ctx()) is Decision.STARTED
    third, _ = gate.arrive()
    second.sendall(b"x")
    third.sendall(b"x")
    assert {outcomes.next().jail, outcomes.next().jail} == {"db1", "web01"}


def test_signal_action_on_a_real_process(make_engine: EngineFactory, gate: Gate) -> None:
    engine, outcomes = make_engine()
    with subprocess.Popen([PY, "-c", GATE_CHILD, gate.path]) as child:
        _, pid = gate.arrive()
        assert pid == child.pid
        rule = policy(OnMatch(signal="TERM"))
        assert engine.submit(rule, ctx(pid=pid)) is Decision.STARTED
        outcome = outcomes.next()
        assert (outcome.outcome, outcome.name) == (Outcome.OK, "web01-memoryuse-SIGTERM")
        assert child.wait(timeout=DEADLINE) == -signal.SIGTERM


def test_signal_failures_are_outcomes(make_engine: EngineFactory) -> None:
    sent: list[tuple[int, int]] = []

    def signaller(pid: int, signum: int) -> None:
        sent.append((pid, signum))
        raise ProcessLookupError(pid)

    engine, outcomes = make_engine(signaller=signaller)
    assert engine.submit(policy(OnMatch(signal="HUP")), ctx(pid=99999)) is Decision.STARTED
    outcome = outcomes.next()
    assert (outcome.outcome, outcome.detail) == (Outcome.FAILED, "pid 99999 is gone")
    assert sent == [(99999, signal.SIGHUP)]


def test_unusable_event_is_rejected_and_reported(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine, outcomes = make_engine()
    decision = engine.submit(policy(OnMatch(run=("/bin/kill", "{pid}"))), ctx(pid=None))
    assert decision is Decision.REJECTED
    outcome = outcomes.next()
    assert (outcome.outcome, outcome.name) == (Outcome.FAILED, "web01-memoryuse-kill")
    assert "pid" in outcome.detail
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_a_failing_on_outcome_does_not_stop_the_engine(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: queue.Queue[ActionOutcome] = queue.Queue()

    def explode(outcome: ActionOutcome) -> None:
        calls.put(outcome)
        raise RuntimeError("metrics broke")

    engine = ActionEngine(ManualClock(), ActionProcessRunner(), MemoryState(), on_outcome=explode)
    try:
        rule = policy(OnMatch(run=(TRUE,)))
        assert engine.submit(rule, ctx()) is Decision.STARTED
        assert calls.get(timeout=DEADLINE).outcome is Outcome.OK
        assert engine.submit(rule, ctx()) in (Decision.STARTED, Decision.SUPPRESSED)
        calls.get(timeout=DEADLINE)
    finally:
        engine.shutdown(timeout=DEADLINE)
    assert any("on_outcome callback failed" in r.getMessage() for r in caplog.records)


# --- the engine: workers ------------------------------------------------------------------------


def test_hung_actions_never_delay_another_rules_action(
    make_engine: EngineFactory, gate: Gate
) -> None:
    """Issue 8, 4: four actions hang; a fifth rule's action still starts at once (it used to
    wait for one of the four workers)."""
    engine, outcomes = make_engine(runner=ActionProcessRunner(grace=0.2))
    hang = OnMatch(run=(PY, "-c", GATE_CHILD, gate.path), timeout=600)
    hung = []
    for jail in ("a", "b", "c", "d"):
        assert engine.submit(policy(hang, jail_rule(jail)), ctx(jail)) is Decision.STARTED
        hung.append(gate.arrive()[0])
    other = jail_rule("e", Resource.MAXPROC)
    context = ActionContext.from_event(other, 1, 0, "e")
    assert engine.submit(policy(hang, other), context) is Decision.STARTED
    fifth, _ = gate.arrive()  # with the four still hanging
    for connection in (*hung, fifth):
        connection.sendall(b"x")
    assert {outcomes.next().outcome for _ in range(5)} == {Outcome.OK}


def test_past_the_running_limit_an_action_waits_and_it_is_counted(
    make_engine: EngineFactory, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    slots: list[tuple[int, int, int]] = []
    engine, outcomes = make_engine(
        runner=ActionProcessRunner(grace=0.2),
        max_workers=1,
        on_slots=lambda *s: slots.append(s),
    )
    assert slots == [(0, 1, 0)]
    rule = policy(OnMatch(run=(PY, "-c", GATE_CHILD, gate.path)))
    assert engine.submit(rule, ctx("a")) is Decision.STARTED
    first, _ = gate.arrive()
    assert engine.submit(rule, ctx("b")) is Decision.STARTED
    assert slots[-1] == (1, 1, 1)
    assert any("the most allowed at once" in r.getMessage() for r in caplog.records)
    first.sendall(b"x")
    second, _ = gate.arrive()  # b runs once a has ended, on the same worker
    second.sendall(b"x")
    assert [outcomes.next().jail, outcomes.next().jail] == ["a", "b"]
    wait_until_true(lambda: slots[-1] == (0, 1, 1))


def wait_until_true(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- the engine: shutting down -----------------------------------------------------------------


def test_shutdown_kills_a_running_action_within_its_bound(
    make_engine: EngineFactory, gate: Gate
) -> None:
    engine, outcomes = make_engine(runner=ActionProcessRunner(grace=0.2))
    rule = policy(OnMatch(run=(PY, "-c", GATE_CHILD, gate.path), timeout=600))
    assert engine.submit(rule, ctx()) is Decision.STARTED
    connection, _ = gate.arrive()
    start = time.monotonic()
    engine.shutdown(timeout=0.2)
    assert time.monotonic() - start < 0.2 + 0.2 + 2.0
    outcome = outcomes.next()
    assert (outcome.outcome, outcome.detail) == (Outcome.TIMEOUT, "killed at shutdown")
    assert gone(connection)
    assert engine.submit(rule, ctx()) is Decision.CLOSED
    assert engine.run_sync(rule, ctx()) is not None


def test_shutdown_lets_a_quick_action_finish(make_engine: EngineFactory, gate: Gate) -> None:
    engine, outcomes = make_engine()
    assert engine.submit(policy(OnMatch(run=(PY, "-c", GATE_CHILD, gate.path))), ctx())
    connection, _ = gate.arrive()
    connection.sendall(b"x")  # it will finish on its own, well within the shutdown bound
    engine.shutdown(timeout=DEADLINE)
    assert outcomes.next().outcome is Outcome.OK


def test_shutdown_does_not_start_queued_actions(make_engine: EngineFactory, gate: Gate) -> None:
    engine, outcomes = make_engine(runner=ActionProcessRunner(grace=0.2), max_workers=1)
    rule = policy(OnMatch(run=(PY, "-c", GATE_CHILD, gate.path)))
    assert engine.submit(rule, ctx("a")) is Decision.STARTED
    gate.arrive()
    assert engine.submit(rule, ctx("b")) is Decision.STARTED  # queued behind "a"
    engine.shutdown(timeout=0.1)
    reported = {o.jail: o for o in (outcomes.next(), outcomes.next())}
    assert reported["b"].outcome is Outcome.FAILED
    assert reported["b"].detail == "cancelled at shutdown"
    assert reported["a"].outcome is Outcome.TIMEOUT


def _action_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rctlpolicy-action" and t.is_alive()]


def test_a_worker_whose_action_ended_takes_the_next_and_shutdown_ends_it_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Idle for an hour unless told: shutdown must hand the idle worker its end, not wait it out
    # (pytest's timeout fails the test otherwise).
    monkeypatch.setattr(engine_module, "IDLE_WORKER_SECONDS", 3600.0)
    ran_on: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()
    engine = ActionEngine(
        ManualClock(),
        ActionProcessRunner(),
        MemoryState(),
        on_outcome=lambda outcome: ran_on.put(threading.current_thread()),
    )
    try:
        assert engine.submit(policy(OnMatch(run=(TRUE,))), ctx("a")) is Decision.STARTED
        first = ran_on.get(timeout=DEADLINE)
        assert engine.submit(policy(OnMatch(run=(TRUE,))), ctx("b")) is Decision.STARTED
        assert ran_on.get(timeout=DEADLINE) is first  # handed over, no new thread
        assert _action_threads() == [first]  # idle now, waiting for the next action
    finally:
        engine.shutdown(timeout=DEADLINE)
    assert _action_threads() == []


def test_an_idle_worker_ends_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "IDLE_WORKER_SECONDS", 0.05)
    ran_on: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()
    engine = ActionEngine(
        ManualClock(),
        ActionProcessRunner(),
        MemoryState(),
        on_outcome=lambda outcome: ran_on.put(threading.current_thread()),
    )
    try:
        assert engine.submit(policy(OnMatch(run=(TRUE,))), ctx("a")) is Decision.STARTED
        worker = ran_on.get(timeout=DEADLINE)
        worker.join(DEADLINE)
        assert not worker.is_alive()
        # and the next action gets a worker of its own
        assert engine.submit(policy(OnMatch(run=(TRUE,))), ctx("b")) is Decision.STARTED
        assert ran_on.get(timeout=DEADLINE) is not worker
    finally:
        engine.shutdown(timeout=DEADLINE)
    assert _action_threads() == []


# --- FileState: the one-shot `handle` ----------------------------------------------------------


def test_file_state_across_two_invocations(make_engine: EngineFactory, tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "actions.json"
    rule = policy(OnMatch(run=(TRUE,), cooldown=300))
    with FileState(path) as first_state:
        first, _ = make_engine(clock, first_state)
        assert first.run_sync(rule, ctx()).outcome is Outcome.OK  # type: ignore[union-attr]
    with FileState(path) as second_state:
        second, outcomes = make_engine(clock, second_state)
        outcome = second.run_sync(rule, ctx())
        assert outcome is not None and outcome.outcome is Outcome.SUPPRESSED
        assert outcomes.next() == outcome
        clock.advance(300)
        assert second.run_sync(rule, ctx()).outcome is Outcome.OK  # type: ignore[union-attr]
    document = json.loads(path.read_text())
    assert document["entries"][0]["rule"] == RULE.canonical
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "actions.json",
        "actions.json.lock",
        "actions.json.running",
    ]


def test_file_state_max_runs_logged_once_across_invocations(
    make_engine: EngineFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    path = tmp_path / "actions.json"
    rule = policy(OnMatch(run=(TRUE,), max_runs=RunLimit(1, 100)))
    outcomes = []
    for _ in range(4):
        with FileState(path) as state:
            engine, _ = make_engine(clock, state)
            outcome = engine.run_sync(rule, ctx())
            assert outcome is not None
            outcomes.append(outcome.outcome)
    assert outcomes == [Outcome.OK, Outcome.EXHAUSTED, Outcome.EXHAUSTED, Outcome.EXHAUSTED]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    clock.advance(100)
    with FileState(path) as state:
        engine, _ = make_engine(clock, state)
        assert engine.run_sync(rule, ctx()).outcome is Outcome.OK  # type: ignore[union-attr]


def test_file_state_concurrent_invocations(tmp_path: Path) -> None:
    """Eight `handle`s at once: one acts on the shared key, and no update to other keys is lost."""
    clock = ManualClock()
    path = tmp_path / "actions.json"
    rule = policy(OnMatch(run=(TRUE,), cooldown=60))
    barrier = threading.Barrier(16)
    results: queue.Queue[tuple[str, Outcome]] = queue.Queue()

    def invocation(jail: str) -> None:
        with FileState(path) as state:
            engine = ActionEngine(clock, ActionProcessRunner(), state)
            barrier.wait(DEADLINE)
            outcome = engine.run_sync(rule, ctx(jail))
            engine.shutdown(timeout=DEADLINE)
        assert outcome is not None
        results.put((jail, outcome.outcome))

    threads = [threading.Thread(target=invocation, args=("shared",)) for _ in range(8)]
    threads += [threading.Thread(target=invocation, args=(f"j{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    got = [results.get(timeout=DEADLINE) for _ in threads]
    shared = sorted(outcome for jail, outcome in got if jail == "shared")
    assert shared == sorted([Outcome.OK] + [Outcome.SUPPRESSED] * 7)
    assert all(outcome is Outcome.OK for jail, outcome in got if jail != "shared")
    jails = {entry["jail"] for entry in json.loads(path.read_text())["entries"]}
    assert jails == {"shared"} | {f"j{i}" for i in range(8)}


CROSS_PROCESS_HANDLE = textwrap.dedent(
    """
    import sys
    from rctlpolicy.actions import ActionEngine, ActionProcessRunner, FileState
    from rctlpolicy.actioncontext import ActionContext
    from rctlpolicy.clock import SystemClock
    from rctlpolicy.model import Action, Resource, Rule, SubjectType
    from rctlpolicy.onmatch import OnMatch
    from rctlpolicy.policy_model import PolicyRule, SourceLocation

    state_path, gate, code = sys.argv[1:4]
    rule = Rule(SubjectType.JAIL, "web01", Resource.MEMORYUSE, Action.DEVCTL, 1073741824,
                SubjectType.JAIL)
    on_match = OnMatch(run=(sys.executable, "-c", code, gate))
    with FileState(state_path) as state:
        engine = ActionEngine(SystemClock(), ActionProcessRunner(), state)
        outcome = engine.run_sync(
            PolicyRule(rule, SourceLocation("x", 1, 1), rule.canonical, on_match),
            ActionContext.from_event(rule, "42", "0", "web01"),
        )
        engine.shutdown(0)
    print(outcome.outcome)
    """
)


def test_file_state_one_run_at_a_time_across_processes(
    make_engine: EngineFactory, tmp_path: Path, gate: Gate
) -> None:
    path = tmp_path / "actions.json"
    with subprocess.Popen(
        [PY, "-c", CROSS_PROCESS_HANDLE, str(path), gate.path, GATE_CHILD],
        stdout=subprocess.PIPE,
        text=True,
    ) as other:
        connection, _ = gate.arrive()  # the other invocation's action is running now
        with FileState(path) as state:
            engine, _ = make_engine(SystemClock(), state)
            outcome = engine.run_sync(policy(OnMatch(run=(TRUE,))), ctx())
            assert outcome is not None
            assert (outcome.outcome, outcome.detail) == (Outcome.SUPPRESSED, "still running")
            connection.sendall(b"x")
            stdout, _ = other.communicate(timeout=DEADLINE)
            assert stdout.strip() == "ok"
            outcome = engine.run_sync(policy(OnMatch(run=(TRUE,))), ctx())
            assert outcome is not None and outcome.outcome is Outcome.OK


def test_file_state_follows_no_planted_symlink(make_engine: EngineFactory, tmp_path: Path) -> None:
    """The state file is replaced, never written through; its lock file must be a file."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "actions.json"
    path.symlink_to(victim)
    with FileState(path) as state:
        engine, _ = make_engine(ManualClock(), state)
        outcome = engine.run_sync(policy(OnMatch(run=(TRUE,), cooldown=60)), ctx())
    assert outcome is not None and outcome.outcome is Outcome.OK
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and (path.stat().st_mode & 0o777) == 0o600
    (tmp_path / "actions.json.lock").unlink()
    (tmp_path / "actions.json.lock").symlink_to(victim)
    with FileState(path) as state:
        engine, _ = make_engine(ManualClock(), state)
        outcome = engine.run_sync(policy(OnMatch(run=(TRUE,))), ctx("other"))
    assert outcome is not None and outcome.outcome is Outcome.FAILED
    assert "symbolic link" in outcome.detail
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'{"version": 99, "entries": []}',
        b'{"version": 1, "entries": [{"rule": "r", "jail": "j"}]}',
        b'{"version": 1, "entries": [{"rule": "r", "jail": "j", "cooldown_until": NaN, '
        b'"run_times": [], "exhausted_until": 0}]}',
        b'{"version": 1, "entries": [{"rule": 1, "jail": "j", "cooldown_until": 0, '
        b'"run_times": [], "exhausted_until": 0}]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_corrupt_state_file_is_logged_and_treated_as_empty(
    make_engine: EngineFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "actions.json"
    path.write_bytes(content)
    with FileState(path) as state:
        engine, _ = make_engine(ManualClock(), state)
        outcome = engine.run_sync(policy(OnMatch(run=(TRUE,), cooldown=60)), ctx())
    assert outcome is not None and outcome.outcome is Outcome.OK
    assert any(re.search("starting (from )?empty", r.getMessage()) for r in caplog.records)
    assert json.loads(path.read_text())["entries"][0]["jail"] == "web01"


def test_unwritable_state_refuses_to_act(
    make_engine: EngineFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileState(tmp_path / "missing-dir" / "actions.json") as state:
        engine, _ = make_engine(ManualClock(), state)
        outcome = engine.run_sync(policy(OnMatch(run=(TRUE,))), ctx())
    assert outcome is not None and outcome.outcome is Outcome.FAILED
    assert "state unavailable" in outcome.detail
