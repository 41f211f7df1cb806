"""`--from prometheus=URL` against a real Prometheus server: a TSDB built from an OpenMetrics
file (`promtool tsdb create-blocks-from openmetrics`), `prometheus` serving it on a loopback
port over TLS with basic auth (its --web.config.file; a throwaway CA made by `openssl`), and
replay and suggest giving the same report as `--from file=` and `--from history`."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from daemon_helpers import wait_until

from rctlpolicy.cli import main
from rctlpolicy.history import HISTORY_FILE_NAME
from rctlpolicy.history.store import HistoryStore
from rctlpolicy.metric_names import resource_metrics
from rctlpolicy.model import Resource

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None or OPENSSL is None,
    reason="prometheus, promtool or openssl is not installed (Debian packages prometheus, "
    "openssl; dev/system-tools)",
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


def _openssl(cwd: Path, *args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(cwd: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    _openssl(
        cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server",
    )  # fmt: skip
    (cwd / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    _openssl(
        cwd, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-out", "server.pem",
        "-extfile", "server.ext",
    )  # fmt: skip


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
    make_pki(root)
    (root / "password").write_text("s3cret\n")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = root / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {root / 'server.pem'}\n"
        f"  key_file: {root / 'server.key'}\nbasic_auth_users:\n  reader: {hashed}\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=3650d",
         f"--web.config.file={web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(root / "ca.pem"))
    login = base64.b64encode(b"reader:s3cret").decode()

    def ready() -> bool:
        request = urllib.request.Request(
            f"{url}/-/ready", headers={"Authorization": f"Basic {login}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:
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
            "auth": f"--basic-auth-user=reader --basic-auth-password-file={root / 'password'} "
            f"--ca-file={root / 'ca.pem'}",
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
    if source == "prometheus":
        extra = sources["auth"].split()
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


def test_without_its_credentials_or_ca_prometheus_refuses_and_it_is_said(
    sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text("jail:db1:maxproc:deny=10\n")
    ca = sources["auth"].split()[-1]
    argv = ["replay", str(policy), "--from", sources["prometheus"], *WINDOW]
    assert main([*argv, ca]) == 2
    assert "HTTP 401 Unauthorized" in capsys.readouterr().err
    assert main([*argv, "--basic-auth-user=reader"]) == 2
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


def test_a_bearer_token_wins_over_basic_auth(tmp_path: Path) -> None:
    from rctlpolicy.history.prometheus import PrometheusAuth

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    password = tmp_path / "password"
    password.write_text("pw\n")
    assert PrometheusAuth("u", password).headers() == {"Authorization": "Basic dTpwdw=="}
    both = PrometheusAuth("u", password, token)
    assert both.headers() == {"Authorization": "Bearer t0ken"}


def test_a_prometheus_that_refuses_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text("jail:db1:maxproc:deny=10\n")
    port = free_port()  # nobody listens there
    assert main(["replay", str(policy), "--from", f"prometheus=http://127.0.0.1:{port}"]) == 2
    assert f"Prometheus at http://127.0.0.1:{port}:" in capsys.readouterr().err
