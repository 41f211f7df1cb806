"""Benchmark the metrics endpoint under abuse: is Prometheus still served?

    .venv/bin/python bench/web_abuse.py [--seconds 20] [--check]

The daemon is `python -m rctlpolicy daemon` on a simulated host (plain HTTP, then HTTPS, then
basic auth over HTTP, each with its own web config), attacked from a separate process over real
sockets while this process scrapes it as Prometheus would: one scrape every 0.5 s on a fresh
connection (no keep-alive to hide behind), a failure being anything but a 200 within 1 s.
Attacks, each for --seconds:

- slowloris: 1,000 connections sending their headers a line every few seconds, each
  reconnecting at once when closed; then 2,000 (twice the connection cap: evictions);
- stalled TLS handshakes: 200 connections that send nothing (or the first bytes of a
  ClientHello), reconnecting when closed;
- password guessing: 200 clients sending wrong basic-auth passwords as fast as answered;
- 1,000 concurrent scrapes: 1,000 clients scraping back to back;
- header flood: 64 connections sending 99 headers of 64 KB each, over and over; the daemon's
  resident memory is sampled every 50 ms and its peak compared with the idle figure.

The baseline is the same legitimate scraping with no attack, measured in the same run. Goals:
>= 99 % of legitimate scrapes succeed under each attack; RSS within 64 MiB of idle during the
flood. The exit status is 0 unless --check is given and a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

# The test suite's harness for the daemon subprocess (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_helpers import DaemonProcess, SimHost, short_tempdir, write_config

from rctlpolicy.devdserver import DevdServer

GOAL_SUCCESS = 0.99
GOAL_RSS_MIB = 64.0
SCRAPE_INTERVAL = 0.5
SCRAPE_TIMEOUT = 1.0
PASSWORD = "s3cret"
ATTACKS = ("header-flood", "slowloris", "slowloris-x2", "scrapes", "stalled-tls", "guessing")


# --- the legitimate scraper (this process) ----------------------------------------------------


@dataclass
class ScrapeLog:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.latencies) + len(self.failures)

    @property
    def success(self) -> float:
        return len(self.latencies) / self.total if self.total else 0.0


def scrape_once(url: str, context: ssl.SSLContext | None, auth: str | None) -> float:
    """One scrape on a fresh connection; its duration, or an exception."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    started = time.perf_counter()
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=SCRAPE_TIMEOUT, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=SCRAPE_TIMEOUT)
    try:
        headers = {"Authorization": f"Basic {auth}"} if auth else {}
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200 or b"rctlpolicy_rules" not in body:
            raise RuntimeError(f"status {response.status}")
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    if elapsed > SCRAPE_TIMEOUT:
        raise TimeoutError(f"{elapsed:.2f} s")
    return elapsed


def scrape_for(
    url: str, seconds: float, context: ssl.SSLContext | None, auth: str | None
) -> ScrapeLog:
    log = ScrapeLog()
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < deadline:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += SCRAPE_INTERVAL
        try:
            log.latencies.append(scrape_once(url, context, auth))
        except Exception as exc:
            log.failures.append(f"{type(exc).__name__}: {exc}")
    return log


# --- the attacks (a child process) ------------------------------------------------------------


async def slowloris(host: str, port: int, count: int, stop: float, tally: dict[str, int]) -> None:
    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                tally["connections"] += 1
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() < stop:
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 2.0)
                    except TimeoutError:
                        writer.write(b"X-a: b\r\n")
                        continue
                    if not data:
                        break
                writer.close()
            except OSError:
                tally["errors"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(count)))


async def stalled_tls(host: str, port: int, count: int, stop: float, tally: dict[str, int]) -> None:
    async def one(n: int) -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                tally["connections"] += 1
                if n % 2:
                    writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
                try:
                    await asyncio.wait_for(reader.read(1024), max(0.0, stop - time.monotonic()))
                except TimeoutError:
                    pass
                writer.close()
            except OSError:
                tally["errors"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one(n) for n in range(count)))


async def http_loop(
    host: str, port: int, count: int, stop: float, tally: dict[str, int], request: bytes
) -> None:
    """Clients sending `request` back to back (keep-alive), reconnecting when closed."""

    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                tally["connections"] += 1
                while time.monotonic() < stop:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = head.split(b" ", 2)[1].decode()
                    tally[status] = tally.get(status, 0) + 1
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await reader.readexactly(length)
                    if b"connection: close" in head.lower():
                        break
                writer.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                tally["errors"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(count)))


async def header_flood(
    host: str, port: int, count: int, stop: float, tally: dict[str, int]
) -> None:
    header = b"X-Flood: " + b"a" * 65536 + b"\r\n"

    async def one() -> None:
        while time.monotonic() < stop:
            try:
                _, writer = await asyncio.open_connection(host, port)
                tally["connections"] += 1
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                for _ in range(99):
                    writer.write(header)
                    await writer.drain()
                writer.write(b"\r\n")
                await writer.drain()
                writer.close()
            except OSError:
                tally["cut_off"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(count)))


def attack_main(name: str, url: str, count: int, seconds: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally: dict[str, int] = {"connections": 0, "errors": 0, "cut_off": 0}
    stop = time.monotonic() + seconds
    if name == "slowloris":
        coroutine = slowloris(host, port, count, stop, tally)
    elif name == "stalled-tls":
        coroutine = stalled_tls(host, port, count, stop, tally)
    elif name == "guessing":
        token = base64.b64encode(b"prometheus:wrong").decode()
        request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
        coroutine = http_loop(host, port, count, stop, tally, request.encode())
    elif name == "scrapes":
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        coroutine = http_loop(host, port, count, stop, tally, request)
    elif name == "header-flood":
        coroutine = header_flood(host, port, count, stop, tally)
    else:
        raise SystemExit(f"unknown attack {name}")
    asyncio.run(coroutine)
    print(json.dumps(tally))


# --- the runs -----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    result = subprocess.run(
        ["ps", "-o", "rss=", "-p", str(pid)], check=False, capture_output=True, text=True
    )
    return int(result.stdout.strip() or 0)


def make_certificate(directory: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("the openssl command is needed for the TLS run")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip


@dataclass
class Run:
    name: str
    log: ScrapeLog
    tally: dict[str, int]
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    web: dict[str, float] = field(default_factory=dict)
    #: The same scraping of the same daemon without an attack, when not the first run's.
    baseline: ScrapeLog | None = None


def start_daemon(root: Path, sockets: Path, web_config: str | None) -> tuple[DaemonProcess, Any]:
    root.mkdir()
    host = SimHost(root / "host.yaml")
    server = DevdServer(sockets)
    server.start()
    rules = root / "rules"
    rules.mkdir()
    (rules / "bench.conf").write_text("jail:db1:maxproc:deny=100\nuser:80:maxproc:devctl=1000\n")
    config = write_config(root / "rctlpolicy.yaml", {"log-level": "warning"})
    args = [
        "--config", str(config), "--kernel", "sim", "--sim-host", str(host.path),
        "--rules-dir", str(rules), "--state-dir", str(root / "state"),
        "--web.listen-address", "127.0.0.1:0", "--devd-socket", str(server.seqpacket_path),
        "--log-level", "info",
    ]  # fmt: skip
    if web_config is not None:
        (root / "web.yml").write_text(web_config)
        args += ["--web.config.file", str(root / "web.yml")]
    daemon = DaemonProcess(args)
    daemon.wait_started(30)
    return daemon, server


def web_counters(url: str, context: ssl.SSLContext | None, auth: str | None) -> dict[str, float]:
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Authorization": f"Basic {auth}"} if auth else {}
    conn.request("GET", parts.path, headers=headers)
    body = conn.getresponse().read().decode()
    conn.close()
    found = {}
    for line in body.splitlines():
        if line.startswith("rctlpolicy_web_"):
            name, value = line.rsplit(" ", 1)
            found[name.removeprefix("rctlpolicy_web_")] = float(value)
    return found


def attack(
    name: str,
    count: int,
    daemon: DaemonProcess,
    seconds: float,
    context: ssl.SSLContext | None = None,
    auth: str | None = None,
    sample_rss: bool = True,
    baseline: ScrapeLog | None = None,
) -> Run:
    # Prometheus was scraping before the attack began (so its credentials are verified).
    scrape_once(daemon.url, context, auth)
    rss_idle = rss_kib(daemon.pid)
    child = subprocess.Popen(
        [sys.executable, __file__, "--attack", name.removesuffix("-x2"), "--url", daemon.url,
         "--count", str(count), "--seconds", str(seconds + 1.0)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = [rss_idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_kib(daemon.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_rss:
        sampler.start()
    time.sleep(1.0)  # let the attack build up
    log = scrape_for(daemon.url, seconds, context, auth)
    out, _ = child.communicate(timeout=seconds + 60)
    stop.set()
    if sample_rss:
        sampler.join()
    tally = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    run = Run(name, log, tally, rss_idle, peak[0], web_counters(daemon.url, context, auth))
    run.baseline = baseline
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each attack")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--only",
        default=",".join(ATTACKS),
        help=f"attacks to run, comma-separated (default: all of {','.join(ATTACKS)})",
    )
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        attack_main(args.attack, args.url, args.count, args.seconds)
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))  # the daemon inherits it

    runs: list[Run] = []
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="rctlweb") as tmp, short_tempdir() as sockets:
        root = Path(tmp)
        daemon, devd = start_daemon(root / "plain", sockets / "a", None)
        try:
            runs.append(Run("baseline", scrape_for(daemon.url, args.seconds, None, None), {}))
            # The flood first, so that "before" is the daemon's memory before any attack.
            plain = (
                ("header-flood", 64),
                ("slowloris", 1000),
                # Twice the connection cap: the server evicts to make room.
                ("slowloris-x2", 2000),
                ("scrapes", 1000),
            )
            for name, count in plain:
                if name in only:
                    runs.append(attack(name, count, daemon, args.seconds))
        finally:
            daemon.stop()
            devd.stop()

        if "stalled-tls" in only:
            runs.append(tls_run(root, sockets, args.seconds))
        if "guessing" in only:
            runs.append(auth_run(root, sockets, args.seconds))
    return report(runs, args)


def tls_run(root: Path, sockets: Path, seconds: float) -> Run:
    (root / "tls").mkdir()
    make_certificate(root / "tls")
    tls_config = (
        f"tls_server_config:\n  cert_file: {root / 'tls' / 'server.pem'}\n"
        f"  key_file: {root / 'tls' / 'server.key'}\n"
    )
    context = ssl.create_default_context(cafile=root / "tls" / "server.pem")
    daemon, devd = start_daemon(root / "https", sockets / "b", tls_config)
    try:
        baseline = scrape_for(daemon.url, seconds / 2, context, None)
        return attack("stalled-tls", 200, daemon, seconds, context=context, baseline=baseline)
    finally:
        daemon.stop()
        devd.stop()


def auth_run(root: Path, sockets: Path, seconds: float) -> Run:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    auth = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    auth_config = f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    daemon, devd = start_daemon(root / "auth", sockets / "c", auth_config)
    try:
        scrape_once(daemon.url, None, auth)  # Prometheus's credentials are verified already
        baseline = scrape_for(daemon.url, seconds / 2, None, auth)
        return attack("guessing", 200, daemon, seconds, auth=auth, baseline=baseline)
    finally:
        daemon.stop()
        devd.stop()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def report(runs: list[Run], args: argparse.Namespace) -> int:
    baseline = runs[0].log
    plain_p99 = percentile(baseline.latencies, 0.99)
    print(f"legitimate scrapes: one every {SCRAPE_INTERVAL:g} s on a fresh connection, "
          f"{SCRAPE_TIMEOUT:g} s timeout, {args.seconds:g} s per attack")  # fmt: skip
    print(f"{'attack':<24}{'ok':>10}{'median':>10}{'p99':>10}{'p99/base':>10}   goal")
    all_met = True
    for run in runs:
        log = run.log
        med = statistics.median(log.latencies) * 1000 if log.latencies else float("nan")
        p99 = percentile(log.latencies, 0.99)
        base_p99 = plain_p99
        if run.baseline is not None:
            base_p99 = percentile(run.baseline.latencies, 0.99)
            print(f"{'  its baseline':<24}{run.baseline.success:>9.1%} "
                  f"{statistics.median(run.baseline.latencies) * 1000:>8.2f}ms"
                  f"{base_p99 * 1000:>8.2f}ms")  # fmt: skip
        met = log.success >= GOAL_SUCCESS
        all_met &= met
        goal = (
            ""
            if run.name == "baseline"
            else f">= {GOAL_SUCCESS:.0%}: {'met' if met else 'NOT MET'}"
        )
        print(f"{run.name:<24}{log.success:>9.1%} {med:>8.2f}ms{p99 * 1000:>8.2f}ms"
              f"{p99 / base_p99 if base_p99 else 0:>9.1f}x   {goal}")  # fmt: skip
        if log.failures:
            print(f"    failures: {log.failures[:3]}")
        if run.tally:
            tally = ", ".join(f"{k} {v}" for k, v in sorted(run.tally.items()) if v)
            print(f"    attacker: {tally}")
        if run.web:
            web = ", ".join(f"{k} {v:g}" for k, v in sorted(run.web.items()))
            print(f"    server:   {web}")
        if run.rss_peak_kib:
            growth = (run.rss_peak_kib - run.rss_idle_kib) / 1024
            goal = ""
            if run.name == "header-flood":
                rss_met = growth <= GOAL_RSS_MIB
                all_met &= rss_met
                goal = f"; goal within {GOAL_RSS_MIB:g} MiB: {'met' if rss_met else 'NOT MET'}"
            print(f"    RSS before {run.rss_idle_kib / 1024:.1f} MiB, peak "
                  f"{run.rss_peak_kib / 1024:.1f} MiB (+{growth:.1f} MiB{goal})")  # fmt: skip
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    os.environ.pop("RCTLPOLICY_SIM_HOST", None)
    sys.exit(main())
