"""Benchmark the daemon: event-to-action latency, a 2,000-event burst, the scrape of 500 jails,
and its memory.

    .venv/bin/python bench/daemon.py [--events 200] [--burst 2000] [--jails 500] [--check]

The scrape is bench/scrape.py's (issue 12, goal 2: the cost per sample with the kernel's
answers replayed from recorded strings, against prometheus_client's generate_latest in the same
run, at 125 and 2,000 jails and --jails; the HTTP scrape of a daemon on the simulated host and
the simulator's share beside it), run from here too.

Everything goes through the real interfaces: the daemon is `python -m rctlpolicy daemon` from
the bench's own non-editable install (`bench/_venv.py`, bytecode), on a simulated host, fed by
the devd double (`DevdServer`) on a real seqpacket socket. The action is GNU date(1) printing
its own start time and the event's jail (`date "+%s.%N {jail}"`); the daemon logs its output,
so each event's latency is that time minus the moment the bench sent the line. The baseline is
measured in the same run: the same date command spawned directly
(subprocess, as the engine does). Goals are printed beside the figures; the exit status is 0
unless --check is given and a goal is missed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

# The test suite's harness for the daemon subprocess (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import scrape
from _venv import NEUTRAL_CWD, bench_env, bench_python
from daemon_helpers import DaemonProcess, SimHost, short_tempdir, wait_until, write_config

from rctlpolicy.devd import format_rctl_event
from rctlpolicy.devdserver import DevdServer

GOAL_P99_RATIO = 2.0
DATE = "/usr/bin/date"
#: A devctl rule of user www: its events may come from any jail, so each event's jail makes a
#: distinct (rule, jail) for the engine, and 2,000 of them are 2,000 runs.
RULE = "user:80:maxproc:devctl=1000"
_OUTPUT = re.compile(r"date\[\d+\]: (\d+\.\d+) (\S+)$")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def action_starts(daemon: DaemonProcess) -> dict[str, float]:
    """Jail -> the time its action's process started (as it printed it)."""
    starts: dict[str, float] = {}
    for line in daemon.log.text().splitlines():
        match = _OUTPUT.search(line)
        if match:
            starts.setdefault(match.group(2), float(match.group(1)))
    return starts


def bare_spawn_latencies(count: int) -> list[float]:
    """The same action spawned directly, as the engine spawns it (argv, own session)."""
    latencies = []
    for index in range(count):
        sent = time.time()
        result = subprocess.run(
            [DATE, f"+%s.%N b{index}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": "/"},
            start_new_session=True,
            check=True,
        )
        latencies.append(float(result.stdout.split()[0]) - sent)
    return latencies


def start_daemon(root: Path, host: SimHost, server: DevdServer, rules: object) -> DaemonProcess:
    rules_dir = root / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "bench.yaml").write_text(yaml.safe_dump({"rules": rules}))
    config = write_config(root / "rctlpolicy.yaml", {"log.level": "info"})
    daemon = DaemonProcess([
        "--config", str(config), "--kernel", "sim", "--sim-host", str(host.path),
        "--rules-dir", str(rules_dir), "--state-dir", str(root / "state"),
        "--web.listen-address", "127.0.0.1:0", "--devd-socket", str(server.seqpacket_path),
    ], python=str(bench_python()), cwd=NEUTRAL_CWD, environ=bench_env())  # fmt: skip
    daemon.wait_started(30)
    assert server.wait_for_clients(1, 10), "the daemon did not connect to devd"
    daemon.wait_connected(10)
    return daemon


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def latency_run(args: argparse.Namespace, root: Path, sockets: Path) -> dict[str, Any]:
    root.mkdir()
    host = SimHost(root / "host.yaml")
    server = DevdServer(sockets)
    server.start()
    on_match = {"run": [DATE, "+%s.%N {jail}"], "cooldown": 0, "timeout": 10}
    daemon = start_daemon(root, host, server, [{"rule": RULE, "on_match": on_match}])
    try:
        # One event at a time, each to an idle daemon: a lone event, as RCTL events are.
        sent: dict[str, float] = {}
        for index in range(args.events):
            jail = f"s{index:05d}"
            mark = daemon.log.mark
            sent[jail] = time.time()
            server.send(format_rctl_event(RULE, 5100, 80, jail))
            # Idle again before the next one: the action has ended and been accounted for.
            daemon.log.wait_for(rf"action \S+ for \S+ in jail {jail}: ok", 10, since=mark)
        starts = action_starts(daemon)
        single = [starts[jail] - at for jail, at in sent.items()]

        # The burst: spread evenly over one second, each event a new jail.
        burst_sent: dict[str, float] = {}
        began = time.monotonic()
        for index in range(args.burst):
            ahead = began + index / args.burst - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            jail = f"b{index:05d}"
            burst_sent[jail] = time.time()
            assert server.send(format_rctl_event(RULE, 5100, 80, jail)) == 1, "devd dropped us"
        send_seconds = time.monotonic() - began
        handled = args.events + args.burst
        # Polled slowly, and from the log: scrapes during the burst would load the daemon.
        wait_until(lambda: len(action_starts(daemon)) >= handled, 300, "every action", interval=0.2)
        wait_until(
            lambda: daemon.total("rctlpolicy_actions_total", outcome="ok") >= handled,
            60,
            "every action counted",
            interval=0.2,
        )
        starts = action_starts(daemon)
        burst = [starts[jail] - at for jail, at in burst_sent.items()]
        counted = {
            outcome: daemon.value("rctlpolicy_events_total", outcome=outcome)
            for outcome in ("handled", "unmatched", "malformed", "truncated")
        }
        return {
            "single": single,
            "burst": burst,
            "burst_send_seconds": send_seconds,
            "counted": counted,
            "actions_ok": daemon.total("rctlpolicy_actions_total", outcome="ok"),
            "dropped_by_devd": server.dropped_total,
            "rss_kib": rss_kib(daemon.pid),
        }
    finally:
        daemon.stop()
        daemon.close()
        server.stop()


def line(label: str, value: str, goal: str = "", met: bool | None = None) -> None:
    verdict = "" if met is None else ("met" if met else "NOT MET")
    print(f"{label:<30}{value:>26}   {goal:<30}{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="single events, one at a time")
    parser.add_argument("--burst", type=int, default=2000, help="events sent within one second")
    parser.add_argument("--jails", type=int, default=500, help="jails of the scraped host")
    parser.add_argument("--scrapes", type=int, default=20, help="timed scrapes (median)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    if not Path(DATE).exists():
        print(f"{DATE} is needed (GNU date, for %N)", file=sys.stderr)
        return 2

    bare = bare_spawn_latencies(args.events)
    with tempfile.TemporaryDirectory(prefix="rctlbench") as tmp, short_tempdir() as sockets:
        latency = latency_run(args, Path(tmp) / "a", sockets)

    ms: Callable[[float], str] = lambda seconds: f"{seconds * 1000:.2f} ms"  # noqa: E731
    single, burst = latency["single"], latency["burst"]
    p99, bare_p99 = percentile(single, 0.99), percentile(bare, 0.99)
    lost = args.events + args.burst - latency["counted"]["handled"]
    p99_ok = p99 <= GOAL_P99_RATIO * bare_p99
    lost_ok = lost == 0 and latency["actions_ok"] == args.events + args.burst

    print(f"event -> action start, {args.events} events one at a time (action: {DATE})")
    line("  daemon median / p99", f"{ms(statistics.median(single))} / {ms(p99)}",
         f"p99 <= {GOAL_P99_RATIO:g}x bare ({p99 / bare_p99:.2f}x)", p99_ok)  # fmt: skip
    line("  bare spawn median / p99", f"{ms(statistics.median(bare))} / {ms(bare_p99)}")
    print(f"burst: {args.burst} events (distinct jails) sent over "
          f"{latency['burst_send_seconds']:.2f} s")  # fmt: skip
    line("  median / p99 / max", f"{ms(statistics.median(burst))} / "
         f"{ms(percentile(burst, 0.99))} / {ms(max(burst))}")  # fmt: skip
    counted = ", ".join(f"{k} {v:g}" for k, v in latency["counted"].items())
    line("  events lost", f"{lost:g}", "not one event lost", lost_ok)
    print(f"    counted: {counted}; actions ok {latency['actions_ok']:g}; "
          f"dropped by devd {latency['dropped_by_devd']}")  # fmt: skip
    print("resident memory (VmRSS)")
    line("  after the burst", f"{latency['rss_kib'] / 1024:.1f} MiB")
    print(f"scrape (bench/scrape.py), {sorted({125, args.jails, 2000})} jails")
    scrape_ok = scrape.run(sorted({125, args.jails, 2000}), 15, args.jails, args.scrapes)
    return 1 if args.check and not (p99_ok and lost_ok and scrape_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
