"""`rctlpolicy lint`, through main(argv) and through the installed console script."""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rctlpolicy.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, main

PROJECT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("rctlpolicy")
EXAMPLE_RULES = PROJECT / "rules"

BAD = "# db host\n\tjail:db1:memoryuze:deny=8g\njail:3:maxproc:deny=10  # jid 3?\n"

TEXT = """\
bad.conf:2:11: error[unknown-resource]: unknown resource 'memoryuze'
 2 |  jail:db1:memoryuze:deny=8g
   |           ^~~~~~~~~
   = help: did you mean 'memoryuse'?
bad.conf:3:6: warning[jail-id-not-jid]: jail subjects are names: jail:3 means the jail named \
'3', not the jail with jid 3
 3 | jail:3:maxproc:deny=10  # jid 3?
   |      ^
   = help: use the jail's name (jls name); only unnamed jails are named after their jid
bad.conf:3:25: info[trailing-comment]: text after the rule is ignored by rc.d/rctl
 3 | jail:3:maxproc:deny=10  # jid 3?
   |                         ^~~~~~~~
"""

PARSABLE = """\
bad.conf:2:11: [error] unknown resource 'memoryuze' (unknown-resource)
bad.conf:3:6: [warning] jail subjects are names: jail:3 means the jail named '3', not the jail \
with jid 3 (jail-id-not-jid)
bad.conf:3:25: [info] text after the rule is ignored by rc.d/rctl (trailing-comment)
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with bad.conf, good.conf and warn.conf; the paths printed are relative."""
    (tmp_path / "bad.conf").write_text(BAD)
    (tmp_path / "good.conf").write_text("jail:db1:maxproc:deny=100\n")
    (tmp_path / "warn.conf").write_text("jail:3:maxproc:deny=100\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(extra)
    return env


def run_script(
    args: list[str], cwd: Path, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=script_env(**env),
        timeout=60,
        check=False,
    )


# --- main(argv) -------------------------------------------------------------------------------


def test_text_format(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["lint", "bad.conf"], capsys)
    assert code == EXIT_FINDINGS
    assert out == TEXT
    assert err == ""


def test_text_caret_is_under_the_column(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["lint", "--format", "text", "bad.conf"], capsys)
    lines = out.splitlines()
    head = lines[0]
    column = int(head.split(":")[2])
    source, caret = lines[1], lines[2]
    # " 2 | <source>" and "   | <caret>": the same prefix, so offsets line up.
    prefix = source.index("|") + 2
    assert caret.index("^") - prefix == column - 1
    assert source[prefix + column - 1 :].startswith("memoryuze")


def test_parsable_format(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["lint", "--format", "parsable", "bad.conf"], capsys)
    assert code == EXIT_FINDINGS
    assert out == PARSABLE


def test_github_format(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["lint", "--format", "github", "bad.conf"], capsys)
    lines = out.splitlines()
    assert lines[0] == (
        "::error file=bad.conf,line=2,col=11,title=unknown-resource::"
        "unknown resource 'memoryuze' (did you mean 'memoryuse'?)"
    )
    assert lines[1].startswith("::warning file=bad.conf,line=3,col=6,title=jail-id-not-jid::")
    assert lines[2].startswith("::notice file=bad.conf,line=3,col=25,title=trailing-comment::")


def test_github_format_escapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a,b:c.conf"
    path.write_text("jail:db1:maxproc:deny=50%\n")
    _, out, _ = run_main(["lint", "--format", "github", str(path)], capsys)
    assert out.startswith(f"::error file={tmp_path}/a%2Cb%3Ac.conf,line=1,col=23,")
    assert "50%25" in out


def test_json_format(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["lint", "--format", "json", "-q", "bad.conf", "good.conf"], capsys)
    assert code == EXIT_FINDINGS
    document = json.loads(out)
    assert set(document) == {"diagnostics", "rules"}
    diagnostics = document["diagnostics"]
    for diagnostic in diagnostics:
        assert set(diagnostic) == {
            "path",
            "line",
            "column",
            "severity",
            "code",
            "message",
            "suggestion",
        }
    # JSON keeps notes even with -q.
    places = [(d["path"], d["line"], d["column"], d["severity"], d["code"]) for d in diagnostics]
    assert places == [
        ("bad.conf", 2, 11, "error", "unknown-resource"),
        ("bad.conf", 3, 6, "warning", "jail-id-not-jid"),
        ("bad.conf", 3, 25, "info", "trailing-comment"),
    ]
    assert diagnostics[0]["suggestion"] == "did you mean 'memoryuse'?"
    assert diagnostics[2]["suggestion"] is None
    good = "jail:db1:maxproc:deny=100"
    assert document["rules"] == [
        {
            "path": "bad.conf",
            "line": 3,
            "rule": "jail:3:maxproc:deny=10",
            "canonical": "jail:3:maxproc:deny=10",
        },
        {"path": "good.conf", "line": 1, "rule": good, "canonical": good},
    ]


def test_json_canonical_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.conf"
    path.write_text("u:80:vmemoryuse:deny=1g/process\n")
    _, out, _ = run_main(["lint", "--format", "json", str(path)], capsys)
    (rule,) = json.loads(out)["rules"]
    assert rule["canonical"] == "user:80:vmemoryuse:deny=1073741824/process"


def test_quiet_hides_notes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["lint", "-q", "--format", "parsable", "bad.conf"], capsys)
    assert "[info]" not in out
    assert out.splitlines() == PARSABLE.splitlines()[:2]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["lint", "good.conf"], EXIT_OK),
        (["lint", "--strict", "good.conf"], EXIT_OK),
        (["lint", "warn.conf"], EXIT_OK),
        (["lint", "--strict", "warn.conf"], EXIT_FINDINGS),
        (["lint", "bad.conf"], EXIT_FINDINGS),
        (["lint", "good.conf", "bad.conf"], EXIT_FINDINGS),
        (["lint", "."], EXIT_FINDINGS),
        (["lint", "missing.conf"], EXIT_USAGE),
        (["lint"], EXIT_USAGE),
        (["lint", "--format", "xml", "good.conf"], EXIT_USAGE),
        (["frobnicate"], EXIT_USAGE),
        ([], EXIT_USAGE),
        (["--version"], EXIT_OK),
    ],
)
def test_exit_codes(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int
) -> None:
    assert run_main(argv, capsys)[0] == code


def test_missing_file_says_which(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["lint", "good.conf", "missing.conf"], capsys)
    assert code == EXIT_USAGE
    assert out == ""
    assert err == "rctlpolicy lint: missing.conf: No such file or directory\n"


def test_a_directory_is_read_as_a_rules_directory(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "rules").mkdir()
    (workdir / "rules" / "a.conf").write_text("jail:a:bogus:deny=1\n")
    (workdir / "rules" / "a.conf~").write_text("jail:a:bogus:deny=1\n")
    (workdir / "rules" / "b.yaml").write_text("rules:\n  - jail:b:bogus:deny=1\n")
    _, out, _ = run_main(["lint", "--format", "parsable", "rules"], capsys)
    assert [line.split(": ")[0] for line in out.splitlines()] == [
        "rules/a.conf:1:8",
        "rules/b.yaml:2:12",
    ]


def test_resolve_looks_users_up_on_this_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.conf"
    path.write_text("user:root:maxproc:deny=10\nuser:no-such-user-rp:maxproc:deny=10\n")
    code, out, _ = run_main(["lint", "--format", "json", str(path)], capsys)
    assert code == EXIT_OK  # offline: names are accepted as they are
    code, out, _ = run_main(["lint", "--resolve", "--format", "json", str(path)], capsys)
    document = json.loads(out)
    assert code == EXIT_FINDINGS
    assert [r["canonical"] for r in document["rules"]] == ["user:0:maxproc:deny=10"]
    assert [(d["line"], d["code"]) for d in document["diagnostics"]] == [(2, "unknown-user")]


def test_the_example_rules_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["lint", "--strict", "--format", "json", str(EXAMPLE_RULES)], capsys)
    document = json.loads(out)
    assert document["diagnostics"] == []
    assert code == EXIT_OK
    paths = {Path(rule["path"]).name for rule in document["rules"]}
    assert paths == {"rctl.conf", "postgres.yaml"}


# --- the console script, as a real process ------------------------------------------------------


def test_console_script_is_installed() -> None:
    assert CONSOLE_SCRIPT.is_file(), "run dev/bootstrap: the console script is missing"


def test_console_script_text_and_exit_code(workdir: Path) -> None:
    done = run_script(["lint", "bad.conf"], workdir)
    assert done.returncode == EXIT_FINDINGS
    assert done.stdout == TEXT
    assert "\033[" not in done.stdout  # not a terminal: no colour
    assert done.stderr == ""


def test_console_script_exit_codes(workdir: Path) -> None:
    assert run_script(["lint", "good.conf"], workdir).returncode == EXIT_OK
    assert run_script(["lint", "warn.conf"], workdir).returncode == EXIT_OK
    assert run_script(["lint", "--strict", "warn.conf"], workdir).returncode == EXIT_FINDINGS
    missing = run_script(["lint", "missing.conf"], workdir)
    assert missing.returncode == EXIT_USAGE
    assert "missing.conf" in missing.stderr
    usage = run_script(["lint"], workdir)
    assert usage.returncode == EXIT_USAGE
    assert usage.stderr.startswith("usage: rctlpolicy lint")


def test_console_script_reads_stdin(workdir: Path) -> None:
    done = run_script(["lint", "--format", "parsable", "-"], workdir, stdin=BAD)
    assert done.returncode == EXIT_FINDINGS
    assert done.stdout == PARSABLE.replace("bad.conf", "<stdin>")
    clean = run_script(["lint", "-"], workdir, stdin="jail:db1:maxproc:deny=100\n")
    assert (clean.returncode, clean.stdout) == (EXIT_OK, "")


def test_console_script_json(workdir: Path) -> None:
    done = run_script(["lint", "--format", "json", "bad.conf"], workdir)
    assert done.returncode == EXIT_FINDINGS
    assert json.loads(done.stdout)["diagnostics"][0]["code"] == "unknown-resource"


def test_python_dash_m(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rctlpolicy", "lint", "--format", "parsable", "bad.conf"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (EXIT_FINDINGS, PARSABLE)


def run_on_terminal(args: list[str], cwd: Path, **env: str) -> tuple[int, str]:
    """Run the console script with its output on a pseudo-terminal; returns (status, output)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
            env=script_env(**env),
        )
    finally:
        os.close(terminal)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
    status = process.wait(timeout=60)
    return status, output.decode().replace("\r\n", "\n")


def test_colour_on_a_terminal(workdir: Path) -> None:
    status, output = run_on_terminal(["lint", "bad.conf"], workdir)
    assert status == EXIT_FINDINGS
    assert "\033[1;31merror[unknown-resource]\033[0m" in output
    assert "\033[1;33mwarning[jail-id-not-jid]\033[0m" in output


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_color_on_a_terminal(workdir: Path, value: str) -> None:
    status, output = run_on_terminal(["lint", "bad.conf"], workdir, NO_COLOR=value)
    assert status == EXIT_FINDINGS
    assert "\033[" not in output
    assert output == TEXT


def test_lint_stays_light(workdir: Path) -> None:
    # pre-commit runs lint on every commit: the daemon's heavy imports must not come along.
    program = (
        "import sys\n"
        "from rctlpolicy.cli import main\n"
        "status = main(['lint', '--format', 'json', 'bad.conf', 'good.conf'])\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('prometheus_client', 'watchdog', 'bcrypt'))\n"
        "print('HEAVY', heavy, status, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
        check=False,
    )
    assert done.stderr.strip() == f"HEAVY [] {EXIT_FINDINGS}"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.yaml", "rules:\n  - rule: |\n      jail:db1:maxproc:deny=10\n"),
        ("b.conf", "jail:\x1b[2Jdb1:maxprok:deny=10\n"),
    ],
    ids=["yaml-block-scalar", "escape"],
)
def test_control_characters_are_not_echoed_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    (tmp_path / name).write_text(text)
    _, out, _ = run_main(["lint", "--format", "parsable", str(tmp_path / name)], capsys)
    _, document, _ = run_main(["lint", "--format", "json", str(tmp_path / name)], capsys)
    assert len(out.splitlines()) == len(json.loads(document)["diagnostics"])
    _, out, _ = run_main(["lint", str(tmp_path / name)], capsys)
    assert not [c for c in out if c != "\n" and not c.isprintable()]


def test_crlf_file_fails_like_crlf_on_stdin(workdir: Path) -> None:
    (workdir / "dos.conf").write_bytes(b"jail:db1:maxproc:deny=10\r\n")
    on_stdin = subprocess.run(
        [str(CONSOLE_SCRIPT), "lint", "--format", "parsable", "-"],
        cwd=workdir,
        input=b"jail:db1:maxproc:deny=10\r\n",
        capture_output=True,
        env=script_env(),
        timeout=60,
        check=False,
    )
    assert on_stdin.returncode == EXIT_FINDINGS
    assert b"(carriage-return)" in on_stdin.stdout
    from_file = run_script(["lint", "--format", "parsable", "dos.conf"], workdir)
    assert "dos.conf:1:25: [error]" in from_file.stdout
    assert from_file.returncode == EXIT_FINDINGS


# --- how much is printed, and the memory it takes ----------------------------------------------


def test_at_most_200_findings_per_file_then_how_many_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.conf").write_text("jail:a:bogus:deny=1\n" * 250)
    (tmp_path / "b.conf").write_text("jail:b:bogus:deny=1\njail:b:maxproc:deny=1 # x\n")
    for fmt in ("text", "parsable", "github"):
        code, out, _ = run_main(["lint", "--format", fmt, str(tmp_path)], capsys)
        assert code == EXIT_FINDINGS
        lines = out.splitlines()
        assert f"... and 50 more in {tmp_path / 'a.conf'}" in lines
        assert sum(str(tmp_path / "a.conf") in line for line in lines) == 201
        assert not [line for line in lines if line.startswith("... and") and "b.conf" in line]
    code, out, _ = run_main(["lint", "--format", "json", str(tmp_path)], capsys)
    assert code == EXIT_FINDINGS
    assert len(json.loads(out)["diagnostics"]) == 250 + 2


def test_quiet_notes_do_not_count_towards_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.conf"
    notes = "".join(f"jail:a{n}:maxproc:deny=1 # note\n" for n in range(5))
    path.write_text(notes + "jail:a:bogus:deny=1\n" * 201)
    _, out, _ = run_main(["lint", "-q", "--format", "parsable", str(path)], capsys)
    assert out.splitlines()[-1] == f"... and 1 more in {path}"
    assert "(trailing-comment)" not in out


def _random_text(size: int) -> str:
    rng = random.Random(11)
    return "".join(rng.choice("abcdefgjlmpsu0123456789:=/ #\t-_.\n") for _ in range(size))


def _peak_rss_kib(args: list[str], cwd: Path) -> int:
    """The largest resident set of `rctlpolicy ARGS`, measured by a parent of its own."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=False)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, str(CONSOLE_SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout)


def test_memory_stays_flat_however_many_findings_a_file_has(tmp_path: Path) -> None:
    """Random text makes tens of thousands of findings; lint holds no more memory for them
    than for a file of comments of the same size (it used to hold them all, and their text)."""
    size = 600_000
    (tmp_path / "random.conf").write_text(_random_text(size))
    comment = "# " + "x" * 40 + "\n"
    (tmp_path / "comments.conf").write_text(comment * (size // len(comment)))
    quiet = _peak_rss_kib(["lint", "comments.conf"], tmp_path)
    noisy = _peak_rss_kib(["lint", "random.conf"], tmp_path)
    assert noisy <= quiet * 1.25, (noisy, quiet)


# --- a directory without policy files; jail patterns against a host ---------------------------


def test_a_directory_without_policy_files_is_a_warning_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "typos").mkdir()
    (tmp_path / "typos" / "db.rule").write_text("jail:db1:maxproc:deny=10\n")
    for directory in ("empty", "typos"):
        done = run_script(["lint", directory], tmp_path)
        assert (done.returncode, done.stdout) == (EXIT_OK, "")
        assert done.stderr == (
            f"rctlpolicy lint: warning: {directory}: no policy file in this directory "
            "(looked for *.conf, *.rules, *.yaml, *.yml)\n"
        )
        strict = run_script(["lint", "--strict", directory], tmp_path)
        assert (strict.returncode, strict.stderr) == (EXIT_FINDINGS, done.stderr)


def test_files_and_directories_with_policy_files_say_nothing_on_stderr(workdir: Path) -> None:
    (workdir / "rules").mkdir()
    (workdir / "rules" / "a.conf").write_text("jail:a:maxproc:deny=1\n")
    done = run_script(["lint", "--strict", "rules", "good.conf"], workdir)
    assert (done.returncode, done.stdout, done.stderr) == (EXIT_OK, "", "")


def test_resolve_on_a_simulated_host_names_the_jails_a_pattern_missed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "host.yaml"
    host.write_text("jails:\n  db1: {jid: 3}\n  web1: {jid: 4}\nusers: {www: 80}\n")
    policy = tmp_path / "rules.yaml"
    policy.write_text(
        "rules:\n  - jail:mail-*:maxproc:deny=10\n  - jail:web*:maxproc:deny=10\n"
        "  - user:www:maxproc:deny=10\n"
    )
    args = ["lint", "--format", "parsable", str(policy)]
    assert run_main(args, capsys)[1] == ""  # offline: nothing is known about running jails
    code, out, err = run_main(["lint", "--resolve", "--sim-host", str(host), *args[1:]], capsys)
    assert (code, err) == (EXIT_OK, "")
    assert out == (
        f"{policy}:2:5: [warning] the jail pattern 'mail-*' matches no running jail "
        "(running: db1, web1) (jail-pattern-unmatched)\n"
    )
    strict = run_main(
        ["lint", "--strict", "--resolve", "--sim-host", str(host), str(policy)], capsys
    )
    assert strict[0] == EXIT_FINDINGS


def test_resolve_on_a_simulated_host_that_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "host.yaml").write_text("jails: [")
    (tmp_path / "a.conf").write_text("jail:a:maxproc:deny=1\n")
    code, out, err = run_main(
        ["lint", "--resolve", "--sim-host", str(tmp_path / "host.yaml"), str(tmp_path / "a.conf")],
        capsys,
    )
    assert (code, out) == (EXIT_USAGE, "")
    assert err.startswith("rctlpolicy lint: ")


def test_lint_parses_with_its_own_parser_as_with_the_whole_one() -> None:
    """`rctlpolicy lint` starts without building every command's parser: the same help."""
    from rctlpolicy.cli import build_parser
    from rctlpolicy.cli.lint import lint_parser

    whole = build_parser()
    subcommands = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction))
    assert lint_parser().format_help() == subcommands.choices["lint"].format_help()
    assert lint_parser().format_usage() == subcommands.choices["lint"].format_usage()
