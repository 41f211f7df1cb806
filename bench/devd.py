"""Benchmark devd's event rate: the highest rate the daemon takes for a while with nothing lost.

    .venv/bin/python bench/devd.py [--seconds 2] [--rates 2500,5000,10000,15000,20000] [--check]

The sender is the devd double (`DevdServer`), which sends as devd's `notify_clients` does: one
non-blocking send(2) per event to a client whose SO_SNDBUF is 256 KiB, and the client dropped
at its first failed or short send (sbin/devd/devd.cc; docs/fidelity.md). Events go out paced
at each rate for `--seconds`; an event is lost when devd had to drop the daemon, or when the
daemon never counted it (`rctlpolicy_events_total`, every outcome) after the burst.

The daemon is `rctlpolicy daemon` from the bench's own non-editable install (bench/_venv.py)
on a simulated host, at log level info as it runs by default. Two policies, each its own run:
the event's rule without an action, and with an `on_match` action under a cooldown (the first
event runs it, the rest are suppressed: the engine's decision is on the path, the spawns are
not what is measured; bench/events.py measures those).

Goal (issue 8, item 6): 0 lost at 10,000 events/s for 2 s, with and without on_match. The
figures come from a shared 2-core machine: the sender and the daemon compete for the CPU, so
the highest rate is a floor. The exit status is 0 unless --check is given and a goal is missed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import BenchDaemon
from _venv import bench_python
from daemon_helpers import short_tempdir, wait_until

from rctlpolicy.devd import format_rctl_event
from rctlpolicy.devdserver import DevdServer

GOAL_RATE = 10_000
RULE = "user:80:maxproc:devctl=1000"
ACTION = {"run": ["/bin/true"], "cooldown": "1h", "timeout": 10}


@dataclass
class Burst:
    rate: int
    sent: int
    counted: int
    devd_dropped_us: bool
    queue_dropped: int
    seconds: float

    @property
    def lost(self) -> int:
        return self.sent - self.counted


class Daemon(BenchDaemon):
    """`rctlpolicy daemon` from the bench venv on a simulated host, fed by `server`."""

    def __init__(self, python: Path, root: Path, server: DevdServer, rules: list[Any]) -> None:
        super().__init__(python, root, server, rules, {"log.level": "info"})

    def counted(self) -> int:
        return int(self.metric("rctlpolicy_events_total"))


def burst(daemon: Daemon, rate: int, seconds: float) -> Burst:
    """Send `rate` events a second for `seconds`, paced in 1 ms steps; count what arrived."""
    server = daemon.server
    if server.client_count == 0:  # devd dropped it last time: wait for the reconnect
        mark = daemon.log.mark
        assert server.wait_for_clients(1, 30), "the daemon did not reconnect"
        daemon.log.wait_for(r"resync \(reconnected to devd\)", 30, since=mark)
    before = daemon.counted()
    dropped_before = server.dropped_total
    queue_before = daemon.metric("rctlpolicy_devd_records_dropped_total")
    line = format_rctl_event(RULE, 5100, 80, "bench")
    total = int(rate * seconds)
    sent = 0
    started = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            server.send(line)
            sent += 1
        if server.dropped_total != dropped_before:
            break  # devd dropped us: the rest would reach nobody
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - started
    dropped = server.dropped_total != dropped_before
    if dropped:
        sent = total  # everything after the drop is lost to the daemon too

    # Wait for the daemon to count what it received: until all, or no progress for 2 s.
    last, last_change = -1, time.monotonic()
    while True:
        counted = daemon.counted() - before
        if counted >= sent:
            break
        if counted != last:
            last, last_change = counted, time.monotonic()
        elif time.monotonic() - last_change > 2.0:
            break
        time.sleep(0.1)
    queue_dropped = int(daemon.metric("rctlpolicy_devd_records_dropped_total") - queue_before)
    return Burst(rate, sent, counted, dropped, queue_dropped, elapsed)


def run_mode(python: Path, root: Path, sockets: Path, rules: list[Any], args: Any) -> list[Burst]:
    server = DevdServer(sockets)
    server.start()
    daemon = Daemon(python, root, server, rules)
    try:
        bursts = []
        for rate in args.rates:
            result = burst(daemon, rate, args.seconds)
            bursts.append(result)
            wait_until(lambda: daemon.proc.poll() is None, 1, "the daemon to be running")
        return bursts
    finally:
        daemon.stop()
        server.stop(remove_files=True)


def highest(bursts: list[Burst]) -> int:
    """The highest rate with nothing lost, all lower rates included."""
    best = 0
    for result in sorted(bursts, key=lambda b: b.rate):
        if result.lost or result.devd_dropped_us:
            break
        best = result.rate
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each burst")
    parser.add_argument(
        "--rates",
        type=lambda text: [int(r) for r in re.split(r"[ ,]+", text) if r],
        default=[2_500, 5_000, 10_000, 15_000, 20_000, 30_000, 40_000],
        help="events a second, comma-separated",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    python = bench_python()
    modes = {
        "without on_match": [{"rule": RULE}],
        "with on_match": [{"rule": RULE, "on_match": ACTION}],
    }
    met_all = True
    with tempfile.TemporaryDirectory(prefix="rctlbench") as tmp:
        for index, (label, rules) in enumerate(modes.items()):
            with short_tempdir() as sockets:
                bursts = run_mode(python, Path(tmp) / str(index), sockets, rules, args)
            print(f"devd events at a steady rate for {args.seconds:g} s, {label}:")
            for b in bursts:
                state = "devd DROPPED the daemon" if b.devd_dropped_us else "kept"
                print(
                    f"  {b.rate:>7,}/s  sent {b.sent:>7,}  counted {b.counted:>7,}  "
                    f"lost {b.lost:>6,}  queue drops {b.queue_dropped:>5,}  {state}"
                    f"  (sent in {b.seconds:.2f} s)"
                )
            best = highest(bursts)
            goal = next((b for b in bursts if b.rate == GOAL_RATE), None)
            met = goal is not None and goal.lost == 0 and not goal.devd_dropped_us
            met_all &= met
            verdict = "met" if met else "NOT MET"
            print(f"  highest rate with 0 lost: {best:,}/s   goal: 0 lost at {GOAL_RATE:,}/s  "
                  f"{verdict}")  # fmt: skip
    return 1 if args.check and not met_all else 0


if __name__ == "__main__":
    sys.exit(main())
