"""`--from prometheus=URL` against a real Prometheus server: a TSDB built from an OpenMetrics
file (`promtool tsdb create-blocks-from openmetrics`), `prometheus` serving it on a loopback
port, and replay and suggest giving the same report as `--from file=` and `--from history`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import wait_until

from rctlpolicy.cli import main
from rctlpolicy.history import HISTORY_FILE_NAME
from rctlpolicy.history.store import HistoryStore
from rctlpolicy.metric_names import resource_metrics
from rctlpolicy.model import Resource

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus and promtool are not installed (Debian package prometheus; "
    "dev/system-tools)",
)

M = 2**20
MINUTES = 90
#: Three hours ago, on a minute: old enough to be in blocks, young enough for any retention.
START = (int(time.time()) - 3 * 3600) // 60 * 60


def usage(minute: int) -> dict[str, dict[Resource, int]]:
    """db1 swaps over 512m for ten minutes every half hour; web1 is steady."""
    swap = 700 if minute % 30 < 10 else 200
    return {
        "db1": {Resource.SWAPUSE: swap * M, Resource.MAXPROC: 20 + minute % 7},
        "web1": {Resource.SWAPUSE: 0, Resource.MAXPROC: 9},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same timeline three ways: a JSON-lines file, a history database and Prometheus."""
    root = tmp_path_factory.mktemp("prometheus")
    jsonl = root / "usage.jsonl"
    store = HistoryStore(root / HISTORY_FILE_NAME)
    families: dict[str, list[str]] = {}
    with jsonl.open("w") as handle:
        for minute in range(MINUTES):
            when = START + 60 * minute
            sample = usage(minute)
            store.write(when, sample)
            for jail, values in sample.items():
                for resource, value in values.items():
                    record = {"time": when, "jail": jail, "resource": str(resource), "value": value}
                    handle.write(json.dumps(record) + "\n")
                    metric = resource_metrics(resource).usage
                    families.setdefault(metric, []).append(
                        f'{metric}{{name="{jail}"}} {value} {when}'
                    )
    store.close()
    openmetrics = root / "usage.om"
    with openmetrics.open("w") as handle:
        for metric, lines in families.items():
            handle.write(f"# TYPE {metric} gauge\n")
            # Per series, in time order: OpenMetrics wants a series' samples together.
            for line in sorted(lines, key=lambda text: (text.split(" ")[0], int(text.split()[-1]))):
                handle.write(line + "\n")
        handle.write("# EOF\n")
    tsdb = root / "tsdb"
    assert PROMTOOL is not None and PROMETHEUS is not None
    subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", str(openmetrics), str(tsdb)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    config = root / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n")
    port = free_port()
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=3650d"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, 60, "prometheus to be ready", interval=0.2)
        yield {
            "file": f"file={jsonl}",
            "history": "history",
            "prometheus": f"prometheus={url}",
            "state": str(root),
        }
    finally:
        server.terminate()
        server.wait(30)
        assert server.stderr is not None
        server.stderr.close()


POLICY = """\
rules:
  - rule: jail:db1:swapuse:deny=600m
  - rule: jail:db1:swapuse:devctl=512m
    on_match: {run: [/bin/echo, "{jail}"], cooldown: 45m}
  - rule: jail:web1:maxproc:log=5
"""
WINDOW = ["--start", str(START), "--end", str(START + 60 * MINUTES)]


def run(
    argv: list[str], source: str, sources: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> object:
    extra = ["--state-dir", sources["state"]] if source == "history" else []
    assert main([*argv, "--from", sources[source], *extra, *WINDOW, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_from_prometheus_is_the_same_report(
    sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    reports = {
        s: run(["replay", str(policy)], s, sources, capsys)
        for s in ("file", "history", "prometheus")
    }
    assert reports["prometheus"] == reports["file"] == reports["history"]
    rules = {item["rule"]: item for item in reports["file"]["rules"]}  # type: ignore[index]
    deny = rules["jail:db1:swapuse:deny=629145600"]
    assert (deny["deny_seconds"], deny["crossings"]) == (30 * 60, 3)
    devctl = rules["jail:db1:swapuse:devctl=536870912"]
    # Crossings at minutes 0, 30 and 60: the one at 30 falls in the 45-minute cooldown.
    assert (devctl["crossings"], devctl["actions_run"], devctl["actions_suppressed"]) == (3, 2, 1)
    assert rules["jail:web1:maxproc:log=5"]["crossings"] == 1


def test_suggest_from_prometheus_is_the_same_report(
    sources: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["suggest", "--min-samples", "60"]
    reports = {s: run(argv, s, sources, capsys) for s in ("file", "history", "prometheus")}
    assert reports["prometheus"] == reports["file"] == reports["history"]
    rules = [item["rule"] for item in reports["file"]["suggestions"]]  # type: ignore[index]
    assert rules == [
        "jail:db1:swapuse:deny=1g", "jail:db1:maxproc:deny=40", "jail:web1:maxproc:deny=12",
    ]  # fmt: skip


def test_a_prometheus_that_refuses_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text("jail:db1:maxproc:deny=10\n")
    port = free_port()  # nobody listens there
    assert main(["replay", str(policy), "--from", f"prometheus=http://127.0.0.1:{port}"]) == 2
    assert f"Prometheus at http://127.0.0.1:{port}:" in capsys.readouterr().err
