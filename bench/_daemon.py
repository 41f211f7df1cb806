"""`rctlpolicy daemon` as the event benches run it: from the bench venv, on a simulated host,
fed by a devd double, its log collected line by line (bench/devd.py, bench/events.py)."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _venv import NEUTRAL_CWD, bench_env
from daemon_helpers import LogLines, SimHost, write_config
from prometheus_client.parser import text_string_to_metric_families

from rctlpolicy.devdserver import DevdServer


class BenchDaemon:
    """The daemon with `rules` as its policy and `settings` in its config file, started and
    connected to `server` (its first resync done) before the constructor returns."""

    def __init__(
        self,
        python: Path,
        root: Path,
        server: DevdServer,
        rules: object,
        settings: dict[str, Any],
    ) -> None:
        rules_dir = root / "rules"
        rules_dir.mkdir(parents=True)
        (rules_dir / "bench.yaml").write_text(yaml.safe_dump({"rules": rules}))
        config = write_config(root / "rctlpolicy.yaml", settings)
        host = SimHost(root / "host.yaml")
        argv = [
            str(python), "-m", "rctlpolicy", "daemon", "--config", str(config),
            "--kernel", "sim", "--sim-host", str(host.path), "--rules-dir", str(rules_dir),
            "--state-dir", str(root / "state"), "--web.listen-address", "127.0.0.1:0",
            "--devd-socket", str(server.seqpacket_path),
        ]  # fmt: skip
        self.server = server
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=NEUTRAL_CWD,
            env=bench_env(),
        )
        assert self.proc.stdout is not None
        self.log = LogLines(self.proc.stdout)
        started = self.log.wait_for(r"rctlpolicy started: .* serving metrics on (\S+)", 60)
        self.url = started.group(1)
        assert server.wait_for_clients(1, 10), "the daemon did not connect to devd"
        self.log.wait_for(r"resync \(connected to devd\)", 10)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples in one scrape."""
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    total += sample.value
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
