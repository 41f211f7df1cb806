"""Benchmark the event path: a devd line -> the action's process running, against a bare spawn.

    .venv/bin/python bench/events.py [--events 2000] [--hung 4] [--check]

The daemon is `rctlpolicy daemon` from the bench's own non-editable install (`bench/_venv.py`,
bytecode compiled, run from a neutral directory), on a simulated host, fed by the devd double
(`DevdServer`) on a real seqpacket socket. The action is GNU date(1) printing its own start
time and the event's jail (`date "+%s.%N {jail}"`); the daemon logs its output, so an event's
latency is that time minus the moment the bench sent the line. The baseline, measured in the
same run and interleaved with the events (one bare spawn after each event, so both see the
same machine): the same date command spawned directly, as the engine spawns it (argv, its own
session, a minimal environment), from the time just before the spawn.

The floor, measured in the same run and interleaved too: bench/_floor.py, a process that reads
devd as the daemon does (the same reader thread handing raw records to another thread) and
whose other thread only parses each record and spawns the same command, with no policy,
matching, state or logging. daemon / floor is what the daemon's own work adds; floor / bare is
what reading devd on one thread and spawning from another costs in Python (two thread wake-ups
before the spawn, each a wait for a CPU on a busy machine).

Also printed:
- isolation (issue 8, 4): the start delay of another rule's action while `--hung` actions
  hang, against the same figure with none hanging;
- reading an action's output: the daemon-side CPU time per MiB of short lines for two sizes
  (linear: the ratio of the two per-MiB costs is about 1).

Figures taken on a shared machine are indicative; compare ratios, not milliseconds. The exit
status is 0 unless --check is given and a goal is missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The test suite's harness for the daemon's log and the simulated host (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import BenchDaemon
from _venv import NEUTRAL_CWD, bench_env, bench_python
from daemon_helpers import LogLines, short_tempdir, wait_until

from rctlpolicy.actions import ActionProcessRunner
from rctlpolicy.devd import format_rctl_event
from rctlpolicy.devdserver import DevdServer

GOAL_MEDIAN_RATIO = 1.3
GOAL_P99_RATIO = 2.0
DATE = "/usr/bin/date"
SLEEP = "/bin/sleep"
#: A devctl rule of user www: its events may come from any jail, and the action is about the
#: event's jail, so each event's jail makes a distinct (rule, jail) for the engine.
RULE = "user:80:maxproc:devctl=1000"
#: Rules whose actions hang (jail rules, each its own key).
HUNG_RULES = (
    "jail:db1:maxproc:devctl={}",
    "jail:web1:maxproc:devctl={}",
    "jail:web2:maxproc:devctl={}",
)
_OUTPUT = re.compile(r"\[\d+\]: (\d+\.\d+) (\S+)$")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/"}


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Daemon(BenchDaemon):
    """`rctlpolicy daemon` from the bench venv, its log collected line by line."""

    def __init__(self, python: Path, root: Path, server: DevdServer, rules: object) -> None:
        super().__init__(
            python, root, server, rules, {"log.level": "info", "shutdown-timeout": 0.5}
        )

    def starts(self) -> dict[str, float]:
        """Jail -> the time its action's process started (as it printed it)."""
        found: dict[str, float] = {}
        for line in self.log.text().splitlines():
            match = _OUTPUT.search(line)
            if match:
                found.setdefault(match.group(2), float(match.group(1)))
        return found


class Floor:
    """bench/_floor.py from the bench venv on its own devd double: the reader design alone."""

    def __init__(self, python: Path, server: DevdServer) -> None:
        self.server = server
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve().parent / "_floor.py"),
             str(server.seqpacket_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=NEUTRAL_CWD, env=bench_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.log = LogLines(self.proc.stdout)
        self.log.wait_for(r"^ready$", 60)
        assert server.wait_for_clients(1, 10), "the floor client did not connect to devd"

    def latency(self, jail: str) -> float:
        mark = self.log.mark
        sent = time.time()
        assert self.server.send(format_rctl_event(RULE, 5100, 80, jail)) == 1, "devd dropped us"
        match = self.log.wait_for(rf"\[\d+\]: (\d+\.\d+) {re.escape(jail)}$", 10, since=mark)
        return float(match.group(1)) - sent

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def bare_spawn(label: str) -> float:
    """One spawn of the action as the engine spawns it: seconds to the program's start."""
    sent = time.time()
    result = subprocess.run(
        [DATE, f"+%s.%N {label}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        check=True,
    )
    return float(result.stdout.split()[0]) - sent


def event_latency(daemon: Daemon, server: DevdServer, jail: str) -> float:
    """Send one event to an idle daemon; wait until its action has ended. Returns the time."""
    mark = daemon.log.mark
    sent = time.time()
    assert server.send(format_rctl_event(RULE, 5100, 80, jail)) == 1, "devd dropped us"
    match = daemon.log.wait_for(rf"\[\d+\]: (\d+\.\d+) {re.escape(jail)}$", 10, since=mark)
    daemon.log.wait_for(rf"for {re.escape(RULE)} in jail {re.escape(jail)}: ok", 10, since=mark)
    return float(match.group(1)) - sent


def latency_run(python: Path, root: Path, sockets: Path, events: int) -> dict[str, Any]:
    root.mkdir()
    server = DevdServer(sockets)
    server.start()
    floor_server = DevdServer(sockets / "floor")
    floor_server.start()
    on_match = {"run": [DATE, "+%s.%N {jail}"], "timeout": 10}
    daemon = Daemon(python, root, server, [{"rule": RULE, "on_match": on_match}])
    floor = Floor(python, floor_server)
    try:
        for index in range(20):  # warm up every path (page cache, bytecode, the imports)
            event_latency(daemon, server, f"w{index}")
            floor.latency(f"w{index}")
            bare_spawn(f"w{index}")
        daemon_times, floor_times, bare_times = [], [], []
        for index in range(events):
            daemon_times.append(event_latency(daemon, server, f"e{index:05d}"))
            floor_times.append(floor.latency(f"f{index:05d}"))
            bare_times.append(bare_spawn(f"b{index:05d}"))
        return {"daemon": daemon_times, "floor": floor_times, "bare": bare_times}
    finally:
        daemon.stop()
        floor.stop()
        server.stop()
        floor_server.stop(remove_files=True)


def isolation_run(
    python: Path, root: Path, sockets: Path, hung: int, samples: int
) -> dict[str, Any]:
    """Another rule's action start delay while `hung` actions hang, and with none hanging."""
    root.mkdir()
    server = DevdServer(sockets)
    server.start()
    hang_rules = [HUNG_RULES[i % len(HUNG_RULES)].format(10_000 + i) for i in range(hung)]
    rules: list[dict[str, Any]] = [
        {"rule": rule, "on_match": {"run": [SLEEP, "600"], "timeout": "20m"}} for rule in hang_rules
    ]
    rules.append({"rule": RULE, "on_match": {"run": [DATE, "+%s.%N {jail}"], "timeout": 10}})
    daemon = Daemon(python, root, server, rules)
    try:
        idle = [event_latency(daemon, server, f"i{index}") for index in range(samples)]
        mark = daemon.log.mark
        for rule in hang_rules:
            server.send(format_rctl_event(rule, 4242, 0, rule.split(":")[1]))
        wait_until(
            lambda: (
                daemon.log.count(r"action \S+: started pid \d+: /bin/sleep", since=mark) >= hung
            ),
            20,
            f"{hung} hung actions",
        )
        busy = [event_latency(daemon, server, f"h{index}") for index in range(samples)]
        return {"idle": idle, "busy": busy}
    finally:
        daemon.stop()
        server.stop()


def output_cpu_seconds(megabytes: int) -> float:
    """CPU seconds this process spends reading an action's `megabytes` MiB of 2-byte lines."""
    logging.getLogger("rctlpolicy.actions").setLevel(logging.WARNING)  # what a daemon logs
    code = (
        "import sys; chunk = b'y\\n' * 32768\n"
        f"for _ in range({megabytes} * 16): sys.stdout.buffer.write(chunk)"
    )
    runner = ActionProcessRunner()
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = runner.run([sys.executable, "-c", code], timeout=300, name="yes")
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert result.outcome.value == "ok", result
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def line(label: str, value: str, goal: str = "", met: bool | None = None) -> None:
    verdict = "" if met is None else ("met" if met else "NOT MET")
    print(f"{label:<34}{value:>24}   {goal:<34}{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events, one at a time")
    parser.add_argument("--hung", type=int, default=4, help="hanging actions (isolation)")
    parser.add_argument("--isolation-samples", type=int, default=50)
    parser.add_argument("--output-mib", type=int, default=32, help="smaller output size")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    for program in (DATE, SLEEP):
        if not Path(program).exists():
            print(f"{program} is needed (GNU date, for %N)", file=sys.stderr)
            return 2
    python = bench_python()
    with tempfile.TemporaryDirectory(prefix="rctlbench") as tmp, short_tempdir() as sockets:
        latency = latency_run(python, Path(tmp) / "a", sockets, args.events)
        isolation = isolation_run(
            python, Path(tmp) / "b", sockets, args.hung, args.isolation_samples
        )
    small = output_cpu_seconds(args.output_mib)
    large = output_cpu_seconds(4 * args.output_mib)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.2f} ms"

    ours, bare = latency["daemon"], latency["bare"]
    median_ratio = statistics.median(ours) / statistics.median(bare)
    p99_ratio = percentile(ours, 0.99) / percentile(bare, 0.99)
    median_ok, p99_ok = median_ratio <= GOAL_MEDIAN_RATIO, p99_ratio <= GOAL_P99_RATIO
    print(f"devd line -> action start, {len(ours)} events one at a time (action: {DATE})")
    print("  (indicative: a shared machine; the ratios are the figures)")
    line("  daemon median / p99", f"{ms(statistics.median(ours))} / {ms(percentile(ours, 0.99))}")
    line(
        "  bare spawn median / p99", f"{ms(statistics.median(bare))} / {ms(percentile(bare, 0.99))}"
    )
    line(
        "  median ratio", f"{median_ratio:.2f}x", f"<= {GOAL_MEDIAN_RATIO:g}x bare spawn", median_ok
    )
    line("  p99 ratio", f"{p99_ratio:.2f}x", f"<= {GOAL_P99_RATIO:g}x bare spawn", p99_ok)
    floor = latency["floor"]
    print("  the floor: a reader thread handing records to a thread that only parses and spawns")
    line("  floor median / p99", f"{ms(statistics.median(floor))} / {ms(percentile(floor, 0.99))}")
    line("  floor median ratio", f"{statistics.median(floor) / statistics.median(bare):.2f}x")
    line("  daemon / floor, median", f"{statistics.median(ours) / statistics.median(floor):.2f}x")
    load = os.getloadavg()
    line("  load average (1, 5 min)", f"{load[0]:.1f}, {load[1]:.1f}", "on 2 cores: a busy machine")
    idle, busy = isolation["idle"], isolation["busy"]
    print(f"another rule's action while {args.hung} actions hang ({len(busy)} events each)")
    line("  median, none hanging", ms(statistics.median(idle)))
    line(f"  median / max, {args.hung} hanging", f"{ms(statistics.median(busy))} / {ms(max(busy))}")
    delay = statistics.median(busy) - statistics.median(idle)
    line("  added start delay (median)", ms(delay), "was 29.6 s (a pool of 4)")
    print("reading an action's output (2-byte lines), the daemon's CPU time")
    per_small, per_large = small / args.output_mib, large / (4 * args.output_mib)
    line(f"  {args.output_mib} MiB / {4 * args.output_mib} MiB", f"{small:.2f} s / {large:.2f} s")
    line("  per MiB, large / small", f"{per_large / per_small:.2f}x", "linear: about 1x")
    return 1 if args.check and not (median_ok and p99_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
