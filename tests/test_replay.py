"""`rctlpolicy replay`: the kernel's semantics on a timeline (deny time, one event per crossing,
the devctl rate limit, cooldown and max_runs by the real action engine), the sources, the
formats and the exit status."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rctlpolicy.cli import main
from rctlpolicy.history import HISTORY_FILE_NAME
from rctlpolicy.history.replay import replay
from rctlpolicy.history.store import HistoryStore
from rctlpolicy.history.timeline import Timeline, TimelineError, from_file, parse_time
from rctlpolicy.lint import lint_files
from rctlpolicy.model import Resource
from rctlpolicy.policy import PolicyFile
from rctlpolicy.policy_model import Policy

T0 = 1_800_000_000 - 1_800_000_000 % 3600
G = 2**30
#: db1's memoryuse every minute: over 4g at minutes 2-4 and 7-8, 12-13 (three crossings).
MEMORY = [3, 3, 5, 5, 5, 3, 3, 5, 5, 3, 3, 3, 5, 5, 3]


def policy(text: str, name: str = "p.yaml") -> Policy:
    result = lint_files([PolicyFile(name, text)])
    errors = [d for d in result.diagnostics if d.severity.value == "error"]
    assert not errors, errors
    return result.policy


def timeline(values: list[int] = MEMORY, jail: str = "db1", step: float = 60) -> Timeline:
    line = Timeline(T0, T0 + step * len(values), source="test")
    for index, value in enumerate(values):
        line.add(T0 + step * index, jail, Resource.MEMORYUSE, value * G)
    return line.finish()


def test_deny_is_the_time_over_and_log_one_event_per_crossing() -> None:
    report = replay(
        policy("jail:db1:memoryuse:deny=4g\njail:db1:memoryuse:log=4g\n", "p.conf"), timeline()
    )
    deny, log = report.rules
    assert report.interval == 60
    assert deny.deny_seconds == 7 * 60 and deny.crossings == 3
    assert (deny.first, deny.last) == (T0 + 120, T0 + 13 * 60)
    assert log.deny_seconds == 0 and log.crossings == 3
    assert [t - T0 for t, kind in log.marks if kind == "crossing"] == [120, 420, 720]
    assert report.acted


def test_usage_at_the_amount_is_not_over() -> None:
    report = replay(policy("jail:db1:memoryuse:devctl=4g\n", "p.conf"), timeline([4, 4, 4]))
    assert not report.acted and report.rules[0].first is None


def test_cooldown_and_max_runs_are_the_action_engines() -> None:
    rules = """\
rules:
  - rule: jail:db1:memoryuse:devctl=4g
    on_match: {run: [/bin/echo, "{jail}"], cooldown: 6m}
  - rule: jail:db1:memoryuse:devctl=4500m
    on_match: {signal: SIGTERM, max_runs: {count: 2, within: 1h}}
"""
    report = replay(policy(rules), timeline())
    cooled, limited = report.rules
    # Crossings at minutes 2, 7 and 12: the one at 7 is within 6 minutes of the run at 2.
    assert (cooled.crossings, cooled.actions_run, cooled.actions_suppressed) == (3, 2, 1)
    assert [(t - T0, k) for t, k in cooled.marks if k != "crossing"] == [
        (120, "run"), (420, "suppressed"), (720, "run"),
    ]  # fmt: skip
    # The signal's pid is a stand-in (the samples know no process); the third run is refused.
    assert (limited.crossings, limited.actions_run, limited.actions_suppressed) == (3, 2, 1)
    assert not cooled.problems and not limited.problems


def test_the_devctl_rate_limit_delays_events_to_the_next_sample() -> None:
    """12 jails cross in the same second: the kernel sends 10; the other 2 keep rrl_exceeded
    clear (kern_rctl.c, rctl_enforce) and go out at the next allocation still over."""
    line = Timeline(T0, T0 + 600)
    jails = [f"j{n:02d}" for n in range(12)]
    for jail in jails:
        for minute, value in enumerate([3, 5, 5, 5]):
            line.add(T0 + 60 * minute, jail, Resource.MEMORYUSE, value * G)
    text = "".join(f"jail:{jail}:memoryuse:devctl=4g\n" for jail in jails)
    report = replay(policy(text, "p.conf"), line.finish())
    first_times = sorted(entry.marks[0][0] - T0 for entry in report.rules)
    assert first_times == [60] * 10 + [120] * 2
    assert sum(entry.delayed for entry in report.rules) == 2
    assert all(entry.crossings == 1 for entry in report.rules)


def test_rules_a_jail_timeline_cannot_replay_are_said() -> None:
    text = "user:www:maxproc:deny=10\njail:db1:maxproc:deny=5/process\njail:db1:maxproc:log=5\n"
    report = replay(policy(text, "p.conf"), timeline())
    assert [r.policy_rule.canonical for r in report.rules] == ["jail:db1:maxproc:log=5"]
    assert [reason for _, reason in report.skipped] == [
        "a user rule: the history holds jails' usage only",
        "per=process: the history holds the jail's total, not each process's",
    ]


def test_jail_patterns_expand_over_the_timelines_jails() -> None:
    line = timeline()
    line.add(T0, "web1", Resource.MEMORYUSE, 9 * G)
    report = replay(policy("rules:\n  - rule: jail:web*:memoryuse:log=1g\n"), line.finish())
    assert [(r.jail, r.crossings) for r in report.rules] == [("web1", 1)]


# --- sources -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1800000000", 1_800_000_000.0), ("2027-01-15T08:00:00Z", float(T0)),
     ("2027-01-15T09:00:00+01:00", float(T0))],
)  # fmt: skip
def test_times_are_unix_seconds_or_rfc3339(text: str, expected: float) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"time": 1, "jail": "a", "resource": "memoryuze", "value": 1}', "unknown resource"),
     ('{"time": 1, "jail": "a", "value": 1}', "no 'resource'"),
     ('{"time": "yesterday", "jail": "a", "resource": "maxproc", "value": 1}', "not a time"),
     ('{"time": 1, "jail": "a", "resource": "maxproc", "value": -1}', "'value' must be"),
     ("[1, 2]", "not a JSON object"), ("{", "not JSON")],
)  # fmt: skip
def test_a_bad_line_of_a_file_says_where(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text('{"time": 1, "jail": "a", "resource": "maxproc", "value": 1}\n' + line + "\n")
    with pytest.raises(TimelineError, match=rf"usage.jsonl:2: .*{message}"):
        from_file(path, 0, 2**40)


def write_sources(tmp_path: Path, values: list[int] = MEMORY) -> tuple[Path, Path]:
    """The same timeline as a JSON-lines file and as the daemon's history database."""
    jsonl = tmp_path / "usage.jsonl"
    store = HistoryStore(tmp_path / HISTORY_FILE_NAME)
    with jsonl.open("w") as handle:
        for index, value in enumerate(values):
            when = T0 + 60 * index
            record = {"time": when, "jail": "db1", "resource": "memoryuse", "value": value * G}
            handle.write(json.dumps(record) + "\n")
            store.write(when, {"db1": {Resource.MEMORYUSE: value * G, Resource.MAXPROC: 3}})
    store.close()
    return jsonl, tmp_path


POLICY = """\
rules:
  - rule: jail:db1:memoryuse:deny=4g
  - rule: jail:db1:memoryuse:devctl=4g
    on_match: {run: [/bin/echo, "{jail}"], cooldown: 6m}
"""
WINDOW = ["--start", str(T0), "--end", str(T0 + 60 * len(MEMORY))]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str], status: int = 0) -> object:
    assert main(argv) == status
    return json.loads(capsys.readouterr().out)


def test_file_and_history_give_the_same_report_in_the_issues_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl, state = write_sources(tmp_path)
    rules = tmp_path / "p.yaml"
    rules.write_text(POLICY)
    common = ["replay", str(rules), *WINDOW, "--format", "json"]
    from_jsonl = run_json([*common, "--from", f"file={jsonl}"], capsys)
    from_history = run_json([*common, "--from", "history", "--state-dir", str(state)], capsys)
    assert from_jsonl == from_history
    assert from_jsonl == {
        "interval": 60.0,
        "start": "2027-01-15T08:00:00Z",
        "end": "2027-01-15T08:15:00Z",
        "rules": [
            {"rule": "jail:db1:memoryuse:deny=4294967296", "jail": "db1", "deny_seconds": 420.0,
             "crossings": 3, "actions_run": 0, "actions_suppressed": 0,
             "first": "2027-01-15T08:02:00Z", "last": "2027-01-15T08:13:00Z"},
            {"rule": "jail:db1:memoryuse:devctl=4294967296", "jail": "db1", "deny_seconds": 0.0,
             "crossings": 3, "actions_run": 2, "actions_suppressed": 1,
             "first": "2027-01-15T08:02:00Z", "last": "2027-01-15T08:13:00Z"},
        ],
    }  # fmt: skip


def test_detailed_exitcode_is_3_when_a_rule_would_have_acted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl, _ = write_sources(tmp_path)
    acting, idle = tmp_path / "acting.conf", tmp_path / "idle.conf"
    acting.write_text("jail:db1:memoryuse:deny=4g\n")
    idle.write_text("jail:db1:memoryuse:deny=8g\n")
    source = ["--from", f"file={jsonl}", *WINDOW, "--detailed-exitcode"]
    assert main(["replay", str(acting), *source]) == 3
    assert main(["replay", str(idle), *source]) == 0
    assert main(["replay", str(acting), "--from", f"file={jsonl}", *WINDOW]) == 0
    text = capsys.readouterr().out
    assert "jail:db1:memoryuse:deny=4294967296" in text
    assert "Usage sampled every 60s" in text and "spike shorter than the interval" in text


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [(["--from", "influx=x"], 2, "write history, file=PATH or prometheus=URL"),
     (["--from", "file=/nonexistent/usage.jsonl"], 2, "No such file"),
     (["--from", "prometheus=ftp://x"], 2, "must start with http"),
     (["--from", "history", "--state-dir", "/nonexistent"], 2, "no usage history")],
)  # fmt: skip
def test_sources_that_cannot_be_read(
    tmp_path: Path, argv: list[str], status: int, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:memoryuse:deny=4g\n")
    assert main(["replay", str(rules), *argv]) == status
    assert message in capsys.readouterr().err


def test_a_policy_path_that_cannot_be_read_is_an_io_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent.conf"
    assert main(["replay", str(missing), "--from", "file=/dev/null"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["suggest", "--against", str(missing), "--from", "file=/dev/null"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_policy_with_errors_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:memoryuze:deny=4g\n")
    assert main(["replay", str(rules), "--from", "file=/dev/null"]) == 1
    assert "the policy has errors" in capsys.readouterr().err


def test_html_has_one_svg_chart_per_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    jsonl, _ = write_sources(tmp_path)
    rules = tmp_path / "p.yaml"
    rules.write_text(POLICY)
    assert main(["replay", str(rules), "--from", f"file={jsonl}", *WINDOW, "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.count("<svg") == 2
    assert "jail:db1:memoryuse:devctl=4294967296" in page
    assert "pip install" not in page


def test_html_without_matplotlib_says_how_to_get_charts(tmp_path: Path) -> None:
    jsonl, _ = write_sources(tmp_path)
    rules = tmp_path / "p.yaml"
    rules.write_text(POLICY)
    code = (
        "import sys; sys.modules['matplotlib'] = None; from rctlpolicy.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = ["replay", str(rules), "--from", f"file={jsonl}", *WINDOW, "--format", "html"]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install &#x27;rctlpolicy[plot]&#x27;" in result.stdout
    assert "<svg" not in result.stdout
    assert "<td>jail:db1:memoryuse:deny=4294967296</td>" in result.stdout


GOOD_LINE = b'{"time": 1, "jail": "a", "resource": "maxproc", "value": 1}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [(b'{"time": 1, "jail": "a", "resource": "maxproc", "value": 1}\xff\xfe\n', "2: not UTF-8"),
     (b'{"time": {}, "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": [1], "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": NaN, "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": "inf", "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": 1e300, "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": -1, "jail": "a", "resource": "maxproc", "value": 1}\n', "2: .*not a time"),
     (b'{"time": "9999-12-31T23:59:59-01:00", "jail": "a", "resource": "maxproc", "value": 1}\n',
      "2: .*not a time between 1970 and 9999"),
     (b'{"time": 1, "jail": "a", "resource": ["maxproc"], "value": 1}\n', "2: unknown resource"),
     (b'{"time": 1, "jail": "a", "resource": {}, "value": 1}\n', "2: unknown resource"),
     (b'{"time": 1, "jail": 7, "resource": "maxproc", "value": 1}\n', "2: 'jail' must be"),
     (b'{"time": 1, "jail": "a", "resource": "maxproc", "value": Infinity}\n', "2: 'value' must"),
     (b'{"time": 1, "jail": "a", "resource": "maxproc", "value": NaN}\n', "2: 'value' must"),
     (b'{"time": 1, "jail": "a", "resource": "maxproc", "value": "5"}\n', "2: 'value' must"),
     (b'{"jail": "' + b"a" * 200_000 + b'"}\n', "2: a line longer than"),
     (b"\x00\x01\x02garbage\n", "2: not JSON")],
)  # fmt: skip
def test_a_garbage_file_is_one_line_and_exit_2_for_replay_and_suggest(
    tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_bytes(GOOD_LINE + content)
    rules = tmp_path / "p.conf"
    rules.write_text("jail:a:maxproc:deny=4\n")
    for argv in (["replay", str(rules)], ["suggest"]):
        assert main([*argv, "--from", f"file={path}", "--start", "0", "--end", "100"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(rf"usage.jsonl:{message}", err), err


def _one_shot_server(answer: Callable[[socket.socket], None]) -> tuple[str, threading.Event]:
    """A loopback server that reads each request and hands the connection to `answer`."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        with listener:
            listener.settimeout(0.2)
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(65536)
                    with contextlib.suppress(OSError):
                        answer(conn)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", done


def _http(body: bytes, status: str = "200 OK") -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    return answer


def _never_answers(conn: socket.socket) -> None:
    time.sleep(3)


def _drips(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(30):
        conn.sendall(b" ")
        time.sleep(0.1)


def _cut_short(conn: socket.socket) -> None:
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"status": "succ')


def _not_http(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xff garbage, not HTTP\r\n\r\n")


@pytest.mark.parametrize(
    ("answer", "message"),
    [(_http(b"<html>oops</html>", "500 Internal Server Error"), "HTTP 500"),
     (_http(b'{"status": "error", "error": "bad query"}', "400 Bad Request"), "bad query"),
     (_http(b"not json at all"), "not JSON"),
     (_http(b"\xff\xfe\x00"), "not JSON"),
     (_http(b"[1, 2, 3]"), "not a query_range answer"),
     (_http(b'{"status": "success", "data": [1]}'), "expected a matrix"),
     (_http(b'{"status": "success", "data": {"resultType": "matrix", "result": [1]}}'),
      "not a list of series"),
     (_http(b'{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": '
            b'{"name": "db1"}, "values": [[1, "x"]]}]}}'), "is not a \\[time, value\\]"),
     (_http(b'{"status": "success", "data": {"resultType": "matrix", "result": [{"metric": '
            b'{"name": "db1"}, "values": [7]}]}}'), "is not a \\[time, value\\]"),
     (_never_answers, "timed out"), (_drips, "no complete answer within"),
     (_cut_short, "cut short"), (_not_http, "not an HTTP answer")],
)  # fmt: skip
def test_a_prometheus_that_misbehaves_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    answer: Callable[[socket.socket], None], message: str,
) -> None:  # fmt: skip
    from rctlpolicy.history import prometheus

    monkeypatch.setattr(prometheus, "TIMEOUT", 1.0)
    url, done = _one_shot_server(answer)
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:maxproc:deny=4\n")
    try:
        for argv in (["replay", str(rules)], ["suggest"]):
            window = ["--start", "0", "--end", "600"]
            assert main([*argv, "--from", f"prometheus={url}", *window]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1, err
            assert re.search(rf"Prometheus at {url}: .*{message}", err), err
    finally:
        done.set()


def test_prometheus_auth_is_read_once_for_all_the_queries_of_a_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    answered: list[int] = []
    empty = b'{"status": "success", "data": {"resultType": "matrix", "result": []}}'

    def answer(conn: socket.socket) -> None:
        token.unlink(missing_ok=True)  # a token rotated away after the first query
        answered.append(1)
        _http(empty)(conn)

    url, done = _one_shot_server(answer)
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:maxproc:deny=4\njail:db1:memoryuse:deny=1g\njail:db2:nthr:deny=9\n")
    try:
        argv = ["replay", str(rules), "--from", f"prometheus={url}", "--bearer-token-file",
                str(token), "--start", "0", "--end", "600", "--format", "json"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        done.set()
    assert len(answered) == 3  # one query per resource the policy names, every one answered


def test_a_timeline_keeps_the_resources_asked_for_and_every_jail_seen(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    lines = [{"time": 1, "jail": "a", "resource": "maxproc", "value": 3},
             {"time": 1, "jail": "a", "resource": "memoryuse", "value": 5},
             {"time": 1, "jail": "b", "resource": "nthr", "value": 7}]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    timeline = from_file(path, 0, 10, [Resource.MAXPROC])
    assert list(timeline.series) == [("a", Resource.MAXPROC)]
    assert timeline.jails() == ["a", "b"]  # b is still a jail a pattern rule expands to
    assert from_file(path, 0, 10).jails() == ["a", "b"]


@pytest.mark.parametrize("when", ["1e300", "-5", "9999-12-31T23:59:59-01:00", "nan"])
@pytest.mark.parametrize("command", ["history", "replay", "suggest"])
def test_a_time_out_of_range_is_refused_by_every_command(
    tmp_path: Path, when: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:maxproc:deny=4\n")
    argv = [command, *([str(rules)] if command == "replay" else [])]
    assert main([*argv, "--state-dir", str(tmp_path), f"--start={when}"]) == 2
    assert "is not a time" in capsys.readouterr().err
