"""`rctlpolicy suggest` (percentile + margin, readable amounts, evidence, --min-samples,
--against; every suggestion passes lint), `rctlpolicy sim timeline`, and the README's "Before
a limit goes live" walked on a copy of the demo host."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rctlpolicy.cli import main
from rctlpolicy.history import HISTORY_FILE_NAME
from rctlpolicy.history.scripted import ScriptError, parse_script
from rctlpolicy.history.store import HistoryStore
from rctlpolicy.history.suggest import readable_amount, suggest
from rctlpolicy.history.timeline import Timeline
from rctlpolicy.kernel.hostfile import default_host_path
from rctlpolicy.model import Resource, Unit

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000 - 1_800_000_000 % 3600
M = 2**20


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [(4.3 * 2**30, Unit.BYTES, "5g"), (400 * M, Unit.BYTES, "512m"), (1023 * M, Unit.BYTES, "1g"),
     (1024 * M, Unit.BYTES, "1g"), (70_000, Unit.BYTES, "80k"), (100, Unit.BYTES, "128"),
     (30, Unit.COUNT, "30"), (31, Unit.COUNT, "40"), (160, Unit.COUNT, "200"),
     (2930, Unit.COUNT, "3000"), (0, Unit.COUNT, "1"), (106, Unit.PERCENT, "120"),
     (45 * M, Unit.BYTES_PER_SECOND, "48m")],
)  # fmt: skip
def test_amounts_are_rounded_up_to_what_a_person_writes(
    value: float, unit: Unit, expected: str
) -> None:
    amount, text = readable_amount(value, unit)
    assert text == expected
    assert amount >= value


def timeline(minutes: int = 1440) -> Timeline:
    line = Timeline(T0, T0 + 60 * minutes, source="test")
    for minute in range(minutes):
        when = T0 + 60 * minute
        line.add(when, "db1", Resource.MEMORYUSE, (300 + minute % 100) * M)  # p99 398m
        line.add(when, "db1", Resource.MAXPROC, 20 + minute % 5)
        line.add(when, "db1", Resource.SWAPUSE, 0)  # never used: no suggestion
        if minute < 100:
            line.add(when, "web1", Resource.MAXPROC, 9)
    return line.finish()


def test_p99_plus_margin_with_its_evidence_and_too_little_data_skipped() -> None:
    found = suggest(timeline())
    assert found.min_samples == 1440  # a day's worth at 60 s
    assert [(s.rule, s.amount) for s in found.suggestions] == [
        ("jail:db1:memoryuse:deny=512m", 512 * M),  # 398m x 1.25 = 497.5m
        ("jail:db1:maxproc:deny=30", 30),  # 24 x 1.25
    ]
    evidence = found.suggestions[0].evidence
    assert (evidence.samples, evidence.p50, evidence.p99, evidence.max) == (
        1440, 348 * M, 398 * M, 399 * M,
    )  # fmt: skip
    assert found.skipped == [("web1", "100 samples, fewer than --min-samples 1440: no suggestion")]


def test_percentile_margin_and_min_samples_are_options() -> None:
    found = suggest(timeline(), percentile_wanted=50, margin=0, min_samples=50)
    assert [s.rule for s in found.suggestions] == [
        "jail:db1:memoryuse:deny=384m", "jail:db1:maxproc:deny=25", "jail:web1:maxproc:deny=10",
    ]  # fmt: skip


def write_history(state: Path) -> None:
    store = HistoryStore(state / HISTORY_FILE_NAME)
    line = timeline()
    for minute in range(1440):
        when = T0 + 60 * minute
        usage = {
            jail: {r: points[minute][1] for (j, r), points in line.series.items()
                   if j == jail and minute < len(points)}
            for jail in ("db1", "web1")
        }  # fmt: skip
        store.write(when, {jail: values for jail, values in usage.items() if values})
    store.close()


WINDOW = ["--start", str(T0), "--end", str(T0 + 86400)]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    write_history(tmp_path)
    return tmp_path


def test_json_is_the_issues_schema(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suggest", "--state-dir", str(state), *WINDOW, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"suggestions", "skipped"}
    assert document["suggestions"][0] == {
        "jail": "db1", "resource": "memoryuse", "action": "deny", "amount": 512 * M,
        "rule": "jail:db1:memoryuse:deny=512m",
        "evidence": {"samples": 1440, "p50": 348 * M, "p99": 398 * M, "max": 399 * M,
                     "start": "2027-01-15T08:00:00Z", "end": "2027-01-16T07:59:00Z"},
    }  # fmt: skip
    assert document["skipped"] == [
        {"jail": "web1", "reason": "100 samples, fewer than --min-samples 1440: no suggestion"}
    ]


@pytest.mark.parametrize("form", ["conf", "yaml"])
def test_every_suggested_rule_passes_lint(
    state: Path, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["suggest", "--state-dir", str(state), *WINDOW, "--format", form, "--min-samples", "10"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "# jail" not in text  # nobody skipped with 10
    path = tmp_path / f"suggested.{form}"
    path.write_text(text)
    assert main(["lint", "--strict", str(path)]) == 0, capsys.readouterr().out
    assert text.count("deny=") == 3
    if form == "conf":
        assert "# 1440 samples, p50 348M, p99 398M, max 399M (2027-01-15T08:00:00Z to " in text
    else:
        assert 'comment: "1440 samples, p50 348M, p99 398M, max 399M' in text


def test_against_shows_rules_that_will_fire_or_do_nothing(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text(
        "jail:db1:memoryuse:deny=350m\njail:db1:maxproc:deny=1000\njail:db1:maxproc:log=26\n"
    )
    assert main(["suggest", "--state-dir", str(state), *WINDOW, "--against", str(policy)]) == 0
    text = capsys.readouterr().out
    assert (
        "# jail:db1:memoryuse:deny=367001600: below the observed p99 398M: it will fire "
        "(suggested: 512m)" in text
    )
    assert (
        "# jail:db1:maxproc:deny=1000: more than 10x the observed max 24: it does nothing "
        "(suggested: 30)" in text
    )
    assert "maxproc:log=26" not in text


def test_too_little_data_says_so(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suggest", "web1", "--state-dir", str(state), *WINDOW]) == 0
    out = capsys.readouterr().out
    assert "# jail web1: 100 samples, fewer than --min-samples 1440: no suggestion" in out
    assert "jail:web1:" not in out


# --- sim timeline ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [({"jails": {"db1": {"memoryuze": 1}}}, "jails.db1.memoryuze: unknown resource"),
     ({"jails": {"db1": {"memoryuse": {"base": "lots"}}}}, "is not an amount"),
     ({"interval": "0s", "jails": {"db1": {}}}, "interval: '0s' is not a duration"),
     ({"jails": {}}, "jails: a mapping"), ({"colour": 1, "jails": {}}, "unknown key")],
)  # fmt: skip
def test_a_wrong_script_says_where(script: dict[str, object], message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(message)):
        parse_script(script)


def test_sim_timeline_fills_the_history_and_leaves_the_host_at_the_last_sample(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "t.yaml"
    script.write_text(
        "duration: 1h\ninterval: 5m\njails:\n  db1:\n    maxproc: {base: 30, daily: 0}\n"
        "    swapuse: {base: 1m, spikes: {every: 30m, for: 5m, add: 1m}}\n"
    )
    state = tmp_path / "state"
    argv = ["sim", "timeline", str(script), "--sim-host", str(host), "--state-dir", str(state),
            "--end", str(T0)]  # fmt: skip
    assert main(argv) == 0
    assert "13 samples of 1 jail(s), every 300s" in capsys.readouterr().out
    raw = list(HistoryStore(state / HISTORY_FILE_NAME, readonly=True).raw(["db1"]))
    assert [s.values[Resource.MAXPROC] for s in raw] == [30] * 13
    assert [s.values[Resource.SWAPUSE] // M for s in raw] == [2, 1, 1, 1, 1, 1] * 2 + [2]
    assert raw[0].values[Resource.OPENFILES] == 2100  # not scripted: the host's
    assert main(["sim", "rctl", "--sim-host", str(host), "-u", "jail:db1"]) == 0
    assert "maxproc=30\n" in capsys.readouterr().out
    assert main(["sim", "timeline", str(script), "--sim-host", str(host)]) == 0
    script.write_text("jails:\n  db9:\n    maxproc: 1\n")
    assert main(["sim", "timeline", str(script), "--sim-host", str(host)]) == 2
    assert "the simulated host has no jail db9" in capsys.readouterr().err


# --- the README --------------------------------------------------------------------------------


def readme_section(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"README has no section {title!r}"
    block = re.search(r"```sh\n(.*?)```", match.group(1), re.S)
    assert block is not None
    return [
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]


def test_the_readme_before_a_limit_goes_live_works_on_the_demo_host(tmp_path: Path) -> None:
    """Each command of the section, run by a shell in a copy of the demo, must succeed."""
    shutil.copytree(REPO / "demo", tmp_path / "demo")
    (tmp_path / ".demo").mkdir()
    shutil.copy(default_host_path(), tmp_path / ".demo" / "host.yaml")
    os.chmod(tmp_path / "demo" / "rules", 0o755)
    for policy in (tmp_path / "demo" / "rules").iterdir():
        os.chmod(policy, 0o644)
    bin_dir = Path(sys.executable).parent
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RCTLPOLICY_")}
    environment["PATH"] = f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}"
    outputs = []
    for line in readme_section("Before a limit goes live"):
        result = subprocess.run(
            ["bash", "-c", f"set -eo pipefail; {line}"], cwd=tmp_path, env=environment,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    suggested = (tmp_path / "suggested.conf").read_text()
    assert "jail:db1:memoryuse:deny=" in suggested
    page = (tmp_path / "replay.html").read_text()
    assert "jail:db1:swapuse:devctl=536870912" in page


@pytest.mark.parametrize(
    ("text", "message"),
    [(b"jails: {db1: {maxproc: 1}\n", "line 2, column 1"),
     (b"duration: 1h\nduration: 2h\njails:\n  db1:\n    maxproc: 1\n", "given twice"),
     (b"jails:\n  db1:\n    maxproc: 1\n    maxproc: 2\n", "given twice"),
     (b"jails:\n  db1:\n    maxproc: \xff\xfe\n", "not UTF-8"),
     (b"duration: [1h]\njails:\n  db1:\n    maxproc: 1\n", "duration: "),
     (b"duration: .nan\njails:\n  db1:\n    maxproc: 1\n", "is not a duration"),
     (b"interval: .inf\njails:\n  db1:\n    maxproc: 1\n", "is not a duration"),
     (b"jails:\n  db1:\n    maxproc: .inf\n", "is not an amount"),
     (b"jails:\n  db1:\n    maxproc: {base: .nan}\n", "is not an amount"),
     (b"jails:\n  db1:\n    maxproc: {base: [1]}\n", "must be an amount"),
     (b"jails:\n  db1:\n    maxproc: {base: 1, spikes: {for: 5m}}\n", "spikes: says how often"),
     (b"- a list\n", "a timeline script is a mapping")],
)  # fmt: skip
def test_a_malformed_timeline_script_is_one_line_and_exit_2(
    host: Path, tmp_path: Path, text: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "t.yaml"
    script.write_bytes(text)
    state = tmp_path / "state"
    argv = ["sim", "timeline", str(script), "--sim-host", str(host), "--state-dir", str(state)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"rctlpolicy sim timeline: {script}: ") and message in err, err
    assert not state.exists()
