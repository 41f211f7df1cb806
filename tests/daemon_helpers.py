"""Running the real daemon in tests: a subprocess, its log, its metrics, a simulated host, and
`Env`, one test's world of them.

Everything here waits on a deadline (a condition variable for the log, polling for files and
scrapes), never on a fixed sleep. Used by test_daemon.py, test_handle.py and bench/daemon.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from rctlpolicy.devd import format_rctl_event
from rctlpolicy.devdserver import DevdServer
from rctlpolicy.kernel.hostfile import default_host_path

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent

#: The action every test policy runs: it writes what it was given as one JSON file per run
#: (argv after the output directory, its whole environment, when it started), then sleeps for
#: argv[2] seconds when asked to. The template language reads braces as placeholders, so the
#: program has none.
ACTION_CODE = """\
import json, os, sys, time
started = time.time()
out, pause = sys.argv[1], float(sys.argv[2])
record = dict(argv=sys.argv[3:], env=dict(os.environ), time=started, pid=os.getpid())
name = os.path.join(out, "%.6f-%d.json" % (started, os.getpid()))
with open(os.path.join(out, ".tmp-%d" % os.getpid()), "w") as handle:
    json.dump(record, handle)
os.rename(handle.name, name)
if pause:
    time.sleep(pause)
"""

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    """Poll until `predicate()` is truthy and return it; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def action_argv(out: Path, *fields: str, pause: float = 0.0) -> list[str]:
    """A `run` template for ACTION_CODE: the fields (placeholders) are recorded in argv."""
    return [PYTHON, "-S", "-c", ACTION_CODE, str(out), str(pause), *fields]


def records(out: Path) -> list[dict[str, Any]]:
    """The runs ACTION_CODE recorded in `out`, oldest first."""
    found = []
    for path in sorted(out.glob("*.json")):
        found.append(json.loads(path.read_text()))
    return sorted(found, key=lambda record: float(record["time"]))


def wait_for_records(out: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until at least `count` action runs were recorded."""
    return wait_until(
        lambda: found if len(found := records(out)) >= count else None,
        timeout,
        f"{count} action run(s) recorded in {out}",
    )


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A directory with a short path under /tmp, for unix sockets (sun_path is ~104 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="rp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the simulated host -----------------------------------------------------------------------


class SimHost:
    """A copy of the bundled simulated host in a test directory, edited as a running host
    changes: every write replaces the file atomically (the simulator rereads it on each call)."""

    def __init__(self, path: Path, data: Mapping[str, Any] | None = None) -> None:
        self.path = path
        if data is None:
            self.write(yaml.safe_load(default_host_path().read_text()))
        else:
            self.write(dict(data))

    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.path.read_text())
        return loaded

    def write(self, data: Mapping[str, Any]) -> None:
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text(yaml.safe_dump(dict(data), sort_keys=False))
        os.replace(temp, self.path)

    def set_usage(self, container: str, resource: str, value: int) -> None:
        """Set what `rctl -u <container>` reports for one resource (e.g. "jail:db1")."""
        data = self.data()
        data.setdefault("usage", {}).setdefault(container, {})[resource] = value
        self.write(data)

    def add_jail(self, name: str, jid: int) -> None:
        data = self.data()
        data.setdefault("jails", {})[name] = {"jid": jid}
        self.write(data)

    def remove_jail(self, name: str) -> None:
        """The jail stops: its processes and its usage go with it."""
        data = self.data()
        del data["jails"][name]
        data["processes"] = {
            pid: proc for pid, proc in data.get("processes", {}).items() if proc.get("jail") != name
        }
        data.get("usage", {}).pop(f"jail:{name}", None)
        self.write(data)

    def rctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`rctlpolicy sim rctl ARGS` as another process (it sees the same simulated kernel)."""
        env = dict(os.environ, RCTLPOLICY_SIM_HOST=str(self.path))
        return subprocess.run(
            [PYTHON, "-m", "rctlpolicy", "sim", "rctl", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )

    def rules(self) -> list[str]:
        """The rules in force, as `rctl` lists them (numeric ids)."""
        result = self.rctl("-n")
        assert result.returncode == 0, result.stderr
        return sorted(result.stdout.split())


# --- the daemon subprocess --------------------------------------------------------------------


class LogLines:
    """Collects a pipe's lines on a thread; waits for a line matching a pattern."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._stream = stream
        self._thread = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def find(self, pattern: str, since: int = 0) -> re.Match[str] | None:
        with self._changed:
            for line in self.lines[since:]:
                match = re.search(pattern, line)
                if match:
                    return match
        return None

    def count(self, pattern: str, since: int = 0) -> int:
        with self._changed:
            return sum(1 for line in self.lines[since:] if re.search(pattern, line))

    def wait_for(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """The first line from index `since` on that matches; fail at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        with self._changed:
            checked = since
            while True:
                for line in self.lines[checked:]:
                    match = compiled.search(line)
                    if match:
                        return match
                checked = max(checked, len(self.lines))
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    why = "the daemon's output ended" if self._closed else f"{timeout:g}s passed"
                    raise AssertionError(f"{why} before a line matching {pattern!r}:\n{tail}")
                self._changed.wait(left)

    @property
    def mark(self) -> int:
        """The index of the next line: pass it as `since` to wait for what comes after now."""
        with self._changed:
            return len(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


class DaemonProcess:
    """`python -m rctlpolicy daemon ARGS` with its stderr and stdout collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        python: str | None = None,
        cwd: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`env` is added to `environ` (default: this process's environment); `python` and
        `cwd` default to this interpreter and the checkout (the benches pass their own
        non-editable install, run from a directory without `rctlpolicy/`)."""
        base = {
            k: v for k, v in (os.environ if environ is None else environ).items()
            if k != "RCTLPOLICY_SIM_HOST"
        }  # fmt: skip
        self.args = [python or PYTHON, "-m", "rctlpolicy", "daemon", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(base, **(env or {})),
            cwd=cwd or REPO,
        )
        assert self.proc.stdout is not None
        self.log = LogLines(self.proc.stdout)
        self.url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_started(self, timeout: float = 15.0) -> str:
        """Wait for the start-up line; returns the metrics URL (with the port chosen)."""
        match = self.log.wait_for(r"rctlpolicy started: .* serving metrics on (\S+)", timeout)
        self.url = match.group(1)
        return self.url

    def wait_connected(self, timeout: float = 10.0, since: int = 0) -> None:
        """Wait until the daemon has taken in a connection to devd (and resynchronised)."""
        self.log.wait_for(r"resync \((re)?connected to devd\)", timeout, since)

    def scrape(self, accept: str | None = None) -> str:
        request = urllib.request.Request(self.url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of one scrape, by (name, labels)."""
        found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return found

    def value(self, metric: str, /, **labels: str) -> float:
        """One sample's value; 0 when the series is absent (a counter never incremented)."""
        return self.samples().get((metric, frozenset(labels.items())), 0.0)

    def total(self, metric: str, /, **labels: str) -> float:
        """The sum of the samples of `metric` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples().items()
            if sample == metric and wanted <= sample_labels
        )

    def wait_value(self, metric: str, expected: float, /, **labels: str) -> None:
        """Wait (up to 10 s) until a sample has exactly the expected value."""
        last: list[float] = []

        def reached() -> bool:
            last[:] = [self.value(metric, **labels)]
            return last[0] == expected

        try:
            wait_until(reached, 10.0, f"{metric}{labels} == {expected}", interval=0.05)
        except AssertionError as error:
            raise AssertionError(
                f"{error} (last value {last})\n{self.log.text()[-3000:]}"
            ) from None

    def send_signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send the signal and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Make sure the process is gone and its output thread ended (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        self.log.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class FakeSyslogd:
    """The SOCK_DGRAM socket FreeBSD's syslogd has at /var/run/log, bound in a test directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(10)

    def receive_until(self, needle: bytes, timeout: float = 15.0) -> bytes:
        """The first datagram that contains `needle` (the ones before it are dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            datagram: bytes = self.socket.recv(8192)
            if needle in datagram:
                return datagram
        raise AssertionError(f"no syslog message with {needle!r}")

    def close(self) -> None:
        self.socket.close()


def write_config(path: Path, settings: Mapping[str, object]) -> Path:
    """A daemon config file (keys spelt as the flags, without the dashes)."""
    path.write_text(yaml.safe_dump(dict(settings)))
    return path


# --- one test's world ---------------------------------------------------------------------------

#: Short intervals, so a test waits for its daemon as little as it can.
FAST = {
    "jail-poll-interval": 0.2,
    "reload-debounce": 0.1,
    "reload-settle": 0.3,
    "shutdown-timeout": 5,
}


class Env:
    """One test's world: a simulated host, a rules directory, a devd double, daemons."""

    def __init__(
        self,
        root: Path,
        socket_dir: Path,
        *,
        python: str | None = None,
        cwd: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`python`, `cwd` and `environ`: how its daemons are started (`DaemonProcess`)."""
        self._python, self._cwd, self._environ = python, cwd, environ
        self.root = root
        self.host = SimHost(root / "host.yaml")
        self.rules_dir = root / "rules"
        self.rules_dir.mkdir()
        self.out = root / "out"
        self.out.mkdir()
        self.state = root / "state"
        self.server = DevdServer(socket_dir)
        self.daemons: list[DaemonProcess] = []

    def policy(self, name: str, rules: Sequence[dict[str, Any] | str]) -> Path:
        """A YAML policy file: each rule is a rule text or a mapping (rule, on_match...)."""
        entries = [{"rule": r} if isinstance(r, str) else r for r in rules]
        path = self.rules_dir / name
        path.write_text(yaml.safe_dump({"rules": entries}, sort_keys=False))
        return path

    def start(
        self,
        *extra: str,
        config: dict[str, Any] | None = None,
        devd: bool = True,
        wait: bool = True,
    ) -> DaemonProcess:
        """Start the daemon; with `devd`, on the devd double (started here if need be)."""
        config_path = write_config(self.root / "rctlpolicy.yaml", {**FAST, **(config or {})})
        args = [
            "--config", str(config_path),
            "--kernel", "sim",
            "--sim-host", str(self.host.path),
            "--rules-dir", str(self.rules_dir),
            "--state-dir", str(self.state),
            "--web.listen-address", "127.0.0.1:0",
        ]  # fmt: skip
        if devd:
            if not self.server.running:
                self.server.start()
            args += ["--devd-socket", str(self.server.seqpacket_path)]
        daemon = DaemonProcess(
            [*args, *extra], python=self._python, cwd=self._cwd, environ=self._environ
        )
        self.daemons.append(daemon)
        if wait:
            daemon.wait_started()
            if devd:
                assert self.server.wait_for_clients(1, 10)
                daemon.wait_connected()
        return daemon

    def send(self, rule: str, pid: int = 4242, ruid: int = 770, jail: str = "db1") -> None:
        """One RCTL event, as the kernel writes it, to every devd client."""
        assert self.server.send(format_rctl_event(rule, pid, ruid, jail)) == 1

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.server.stop()
