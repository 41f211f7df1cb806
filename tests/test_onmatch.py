"""One validation of `on_match`: what `rctlpolicy lint` accepts is exactly what the action engine
runs. A table of cases goes through both with real processes, and hypothesis generates on_match
values for the engine, writes each as YAML for lint, and compares the two verdicts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rctlpolicy.actioncontext import ActionContext
from rctlpolicy.actions import (
    ActionEngine,
    ActionOutcome,
    ActionProcessRunner,
    Decision,
    Finished,
    MemoryState,
    Outcome,
    RunResult,
)
from rctlpolicy.amounts import parse_duration
from rctlpolicy.clock import ManualClock
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.model import Action, Resource, Rule, Severity, SubjectType
from rctlpolicy.onmatch import (
    MAX_DURATION,
    SIGNALS,
    OnMatch,
    RunLimit,
    canonical_signal,
    check_on_match,
    on_match_problems,
    render_argv,
)
from rctlpolicy.policy import PolicyFile, load_policy
from rctlpolicy.policy_model import PolicyRule, SourceLocation

PY = sys.executable
RULE = Rule(SubjectType.JAIL, "db1", Resource.MEMORYUSE, Action.DEVCTL, 1 << 30, SubjectType.JAIL)
ARGV_DUMP = "import json,sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))"


def lint(on_match: Mapping[str, Any]) -> list[Diagnostic]:
    """The errors lint reports for a rule with this on_match (as YAML data)."""
    text = yaml.safe_dump({"rules": [{"rule": RULE.canonical, "on_match": dict(on_match)}]})
    loaded = load_policy([PolicyFile("p.yaml", text)])
    return [d for d in loaded.diagnostics if d.severity is Severity.ERROR]


def policy(on_match: OnMatch) -> PolicyRule:
    return PolicyRule(RULE, SourceLocation("p.yaml", 2, 5), RULE.canonical, on_match)


def context(pid: int = 4242) -> ActionContext:
    return ActionContext.from_event(RULE, pid, 770, "db1")


def engine_value(data: Mapping[str, Any]) -> OnMatch:
    """The OnMatch a caller of the engine would build from the same data."""
    service = data.get("service")
    limit = data.get("max_runs")
    return OnMatch(
        run=tuple(data["run"]) if "run" in data else None,
        service=(service["name"], service["command"]) if service is not None else None,
        signal=data.get("signal"),
        cooldown=parse_duration(data.get("cooldown", 0)),
        timeout=parse_duration(data.get("timeout", 60)),
        max_runs=RunLimit(limit["count"], parse_duration(limit["within"])) if limit else None,
        name=data.get("name"),
    )


# --- a table, through real processes -------------------------------------------------------------


def cases(out: str) -> list[tuple[str, dict[str, Any], bool]]:
    dump = [PY, "-c", ARGV_DUMP, out]
    term: dict[str, Any] = {"signal": "TERM"}
    pg = {"name": "pg", "command": "restart"}
    return [
        ("service name with @ (lint accepted it)", {"service": {**pg, "name": "pg@1"}}, False),
        ("service", {"service": {"name": "postgresql", "command": "restart"}}, True),
        ("service command option", {"service": {"name": "pg", "command": "-rf"}}, False),
        ("named service", {"name": "restart-db1-postgres", "service": pg}, True),
        ("run with placeholders", {"run": [*dump, "{jail}", "--pid={pid}", "{{x}}"]}, True),
        ("run, bare program name", {"run": ["true"]}, True),
        ("run, relative path", {"run": ["bin/tool", "{jail}"]}, False),
        ("run, placeholder in program", {"run": ["/usr/local/bin/{resource}"]}, False),
        ("run, NUL byte", {"run": [*dump, "a\0b"]}, False),
        ("run, empty argument", {"run": [*dump, ""]}, False),
        ("run, conversion", {"run": [*dump, "{pid!r}"]}, False),
        ("run, unknown placeholder", {"run": [*dump, "{jale}"]}, False),
        ("run, stray brace", {"run": [*dump, "{pid"]}, False),
        ("signal", term, True),
        ("signal FreeBSD has, Linux may not", {"signal": "SIGINFO"}, True),
        ("signal misspelt", {"signal": "TREM"}, False),
        ("signal by number", {"signal": "15"}, False),
        ("zero timeout", {**term, "timeout": 0}, False),
        ("cooldown over a year", {**term, "cooldown": "367d"}, False),
        ("max_runs count 0", {**term, "max_runs": {"count": 0, "within": "1h"}}, False),
        ("max_runs", {**term, "max_runs": {"count": 2, "within": "1h"}, "cooldown": "5m"}, True),
        ("bad name", {**term, "name": "restart db1"}, False),
        ("two commands", {**term, "run": ["/bin/true"]}, False),
        ("no command", {"cooldown": "5m"}, False),
    ]  # fmt: skip


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process for signal actions to be sent to."""
    with subprocess.Popen([PY, "-c", "import time; time.sleep(600)"]) as child:
        yield child
        child.kill()


@pytest.mark.parametrize("index", range(len(cases(""))), ids=[c[0] for c in cases("")])
def test_lint_and_the_engine_agree(
    index: int, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    out = tmp_path / "argv.json"
    _, data, runs = cases(str(out))[index]
    assert (lint(data) == []) is runs
    outcomes: list[ActionOutcome] = []
    engine = ActionEngine(
        ManualClock(), ActionProcessRunner(grace=0.5), MemoryState(), on_outcome=outcomes.append
    )
    try:
        decision = engine.submit(policy(engine_value(data)), context(sleeper.pid))
    finally:
        engine.shutdown(timeout=30)
    assert (decision is Decision.STARTED) is runs
    if not runs:
        assert [o.outcome for o in outcomes] == [Outcome.FAILED]
        return
    # It ran: a process was started (or its start failed), or a signal sent.
    [outcome] = outcomes
    assert outcome.outcome in (Outcome.OK, Outcome.FAILED)
    if "run" in data and data["run"][0] == PY:
        assert json.loads(out.read_text()) == ["db1", f"--pid={sleeper.pid}", "{x}"]
    if data.get("signal") == "TERM":
        assert sleeper.wait(30) == -signal.SIGTERM


def test_lint_through_the_cli_refuses_what_the_engine_would_refuse(tmp_path: Path) -> None:
    policy_file = tmp_path / "p.yaml"
    on_match = {"service": {"name": "pg@1", "command": "restart"}}
    policy_file.write_text(
        yaml.safe_dump({"rules": [{"rule": RULE.canonical, "on_match": on_match}]})
    )
    done = subprocess.run(
        [PY, "-m", "rctlpolicy", "lint", str(policy_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "invalid-service" in done.stdout + done.stderr


# --- a property: every on_match the engine can be given -------------------------------------------


class RecordingRunner:
    """Records what the engine asks to run (the verdict is the engine's, not the process's)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, ...]] = []

    def start(self, argv: Sequence[str], *, timeout: float, name: str) -> Finished:
        self.runs.append(tuple(argv))
        return Finished(RunResult(Outcome.OK, 0, 0.0, 0.0))

    def terminate_all(self) -> None:
        pass


def yaml_duration(seconds: float) -> object:
    """A duration as a policy writes it: an exact decimal (every float has one), or, for what
    no duration is (negative, nan, inf), Python's spelling of the number."""
    if seconds >= 0 and seconds == seconds and seconds != float("inf"):
        return format(Decimal(seconds), "f")
    return repr(seconds)


def yaml_data(on_match: OnMatch) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if on_match.name is not None:
        data["name"] = on_match.name
    if on_match.run is not None:
        data["run"] = list(on_match.run)
    if on_match.service is not None:
        data["service"] = {"name": on_match.service[0], "command": on_match.service[1]}
    if on_match.signal is not None:
        data["signal"] = on_match.signal
    data["cooldown"] = yaml_duration(on_match.cooldown)
    data["timeout"] = yaml_duration(on_match.timeout)
    if on_match.max_runs is not None:
        limit = on_match.max_runs
        data["max_runs"] = {"count": limit.count, "within": yaml_duration(limit.within)}
    return data


# Each part is valid more often than not, so that both verdicts come up often; the invalid
# values are the ones a policy author might write, and arbitrary text.


def mostly(good: st.SearchStrategy[Any], *bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` nine times in ten, else one of `bad`."""
    return st.integers(0, 9).flatmap(lambda roll: good if roll else st.one_of(*bad))


TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=10)
PLAIN = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="{}\0"), min_size=1)
TRICKY = st.sampled_from(["{jale}", "{", "}", "{pid!r}", "{pid:>5}", "", "a\0b", "{}", "{ pid }"])
GOOD_ELEMENT = st.one_of(
    PLAIN, st.sampled_from(["{jail}", "{pid}", "--rule={rule}", "{{x}}", "-j", "{ruid}@{jail}"])
)
ELEMENT = mostly(GOOD_ELEMENT, TRICKY, TEXT)
PROGRAM = mostly(
    st.sampled_from(["/bin/echo", "echo", "/x{{y"]),
    st.sampled_from(["bin/echo", "", "/usr/bin/{jail}", "{pid}", "/x\0"]),
    TEXT,
)
RUN = st.tuples(PROGRAM, st.lists(ELEMENT, max_size=4)).map(lambda t: (t[0], *t[1]))
WORD = mostly(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,8}", fullmatch=True),
    st.sampled_from(["pg@1", "-x", "a b", "", ".x", "{jail}"]),
    TEXT,
)
SIGNAL = mostly(
    st.tuples(st.sampled_from(["", "SIG", "sig"]), st.sampled_from(sorted(SIGNALS))).map(
        lambda t: t[0] + (t[1].lower() if t[0] == "sig" else t[1])
    ),
    st.sampled_from(["TREM", "15", "", "SIG", "RTMIN"]),
    TEXT,
)
GOOD_DURATION = st.one_of(
    st.integers(1, 86400).map(float), st.floats(1e-3, MAX_DURATION), st.just(MAX_DURATION)
)
DURATION = mostly(GOOD_DURATION, st.floats(), st.just(0.0))
NAME = mostly(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}", fullmatch=True),
    st.sampled_from(["a b", "", "x" * 65, "-x"]),
    TEXT,
)
#: Exactly one command most of the time; none, several or an empty argv sometimes.
COMMAND: st.SearchStrategy[dict[str, Any]] = st.one_of(
    RUN.map(lambda run: {"run": run}),
    st.tuples(WORD, WORD).map(lambda service: {"service": service}),
    SIGNAL.map(lambda name: {"signal": name}),
    st.fixed_dictionaries(
        {}, optional={"run": RUN | st.just(()), "service": st.tuples(WORD, WORD), "signal": SIGNAL}
    ),
)
ON_MATCH = st.builds(
    lambda command, **rest: OnMatch(**command, **rest),
    COMMAND,
    cooldown=DURATION,
    timeout=DURATION,
    max_runs=st.none()
    | st.builds(RunLimit, mostly(st.integers(1, 10**6), st.integers()), DURATION),
    name=mostly(st.none(), NAME),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ON_MATCH)
def test_every_on_match_either_fails_lint_or_runs(on_match: OnMatch) -> None:
    data = yaml_data(on_match)
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # the policy file says what we mean
    lint_ok = lint(data) == []
    runner = RecordingRunner()
    signals: list[tuple[int, int]] = []
    engine = ActionEngine(
        ManualClock(), runner, MemoryState(), signaller=lambda p, s: signals.append((p, s))
    )
    try:
        decision = engine.submit(policy(on_match), context())
    finally:
        engine.shutdown(timeout=30)
    assert (decision is Decision.STARTED) is lint_ok, (on_match, lint(data))
    assert lint_ok is not any(p.severity is Severity.ERROR for p in on_match_problems(on_match))
    if not lint_ok:
        return
    check_on_match(on_match)
    if on_match.run is not None:
        assert runner.runs == [render_argv(on_match.run, context())]
    elif on_match.service is not None:
        assert runner.runs == [("/usr/sbin/service", "-j", "db1", *on_match.service)]
    # What lint loaded is what the engine was given.
    text = yaml.safe_dump({"rules": [{"rule": RULE.canonical, "on_match": data}]})
    (loaded,) = load_policy([PolicyFile("p.yaml", text)]).policy.rules
    expected = on_match
    if on_match.signal is not None:
        expected = OnMatch(**{**_fields(on_match), "signal": canonical_signal(on_match.signal)})
    assert loaded.on_match == expected


def _fields(on_match: OnMatch) -> dict[str, Any]:
    return {name: getattr(on_match, name) for name in OnMatch.__slots__}
