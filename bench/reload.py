"""Benchmark a reload of a large policy: how fast SIGTERM stops the daemon meanwhile, and
whether devd's events still get through.

    .venv/bin/python bench/reload.py [--mb 10] [--samples 3] [--events 5000] [--check]

The daemon is `python -m rctlpolicy daemon` from the bench's own non-editable install
(`bench/_venv.py`, bytecode, run from a neutral directory) on a simulated host with the devd
double (`DevdServer`) on a real seqpacket socket, as in bench/daemon.py. A policy of `--mb`
megabytes of rctl.conf is put in its rules directory and SIGHUP makes it load it (in a child
process).

- SIGTERM to exit: the time from SIGTERM to the daemon's exit, while the policy loads, against
  the same daemon idle (the baseline, measured in the same run): medians over `--samples`.
  Goal: under 2 s (the issue's figure), whatever the policy's size.
- Events while loading: `--events` RCTL lines sent at 10,000 a second, as devd forwards them
  (it drops a client whose send fails), while the policy loads: how many the daemon counted,
  and how many devd had to drop. Goal: all counted, none dropped.

Goals are printed beside the figures; the exit status is 0 unless --check is given and a goal
is missed. Figures from a busy machine are noisy: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import functools
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The test suite's harness for the daemon subprocess (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _venv import NEUTRAL_CWD, bench_env, bench_python
from daemon_helpers import Env, short_tempdir, wait_until

from rctlpolicy.devd import format_rctl_event

GOAL_SIGTERM_SECONDS = 2.0
#: A rule the policy does not have: each event is read, matched, counted, and nothing runs.
UNMATCHED = "jail:web2:maxproc:devctl=7"


def big_policy(path: Path, megabytes: float) -> int:
    """Write an rctl.conf of about `megabytes` of distinct, valid rules; returns its size."""
    lines = []
    size = 0
    n = 0
    while size < megabytes * 1024 * 1024:
        line = f"jail:j{n}:maxproc:deny={n + 1}\n"
        lines.append(line)
        size += len(line)
        n += 1
    path.write_text("".join(lines))
    return size


@functools.cache
def installed_python() -> str:
    """The bench venv's interpreter (non-editable install, bytecode), made once per run."""
    return str(bench_python())


@contextmanager
def world() -> Iterator[Env]:
    """A daemon's world; the daemon runs as users run it (`bench/_venv.py`)."""
    with tempfile.TemporaryDirectory(prefix="rp-bench-") as root, short_tempdir() as sockets:
        env = Env(
            Path(root), sockets, python=installed_python(), cwd=NEUTRAL_CWD, environ=bench_env()
        )
        try:
            (env.rules_dir / "base.conf").write_text("jail:db1:maxproc:deny=100\n")
            yield env
        finally:
            env.close()


def sigterm_seconds(megabytes: float) -> float:
    """SIGTERM to exit, idle (0 MB) or while a policy of `megabytes` loads."""
    with world() as env:
        # Only SIGHUP reloads: the big file must not start a load of its own.
        daemon = env.start("--log.level", "debug", config={"reload-debounce": 3600})
        if megabytes:
            big_policy(env.rules_dir / "big.conf", megabytes)
            mark = daemon.log.mark
            daemon.send_signal(signal.SIGHUP)
            daemon.log.wait_for(r"loading the policy of \S+ in process \d+", 30, mark)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        status = daemon.proc.wait(60)
        took = time.monotonic() - started
        assert status == 0, daemon.log.text()[-2000:]
        return took


def events_while_loading(megabytes: float, count: int) -> tuple[int, int]:
    """(events counted, events devd dropped) for `count` lines sent at 10,000/s meanwhile."""
    with world() as env:
        daemon = env.start("--log.level", "debug", config={"reload-debounce": 3600})
        big_policy(env.rules_dir / "big.conf", megabytes)
        mark = daemon.log.mark
        daemon.send_signal(signal.SIGHUP)
        daemon.log.wait_for(r"loading the policy of \S+ in process \d+", 30, mark)
        line = format_rctl_event(UNMATCHED, 5200, 80, "web2")
        started = time.monotonic()
        for index in range(count):
            ahead = started + index / 10_000 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            env.server.send(line)
        with_load = not daemon.log.find(r"policy reloaded", mark)

        def counted() -> float:
            return daemon.value("rctlpolicy_events_total", outcome="unmatched")

        try:
            wait_until(lambda: counted() >= count - env.server.dropped_total, 60, "events")
        except AssertionError:
            pass
        if not with_load:
            print("  (the load finished before the events were sent: use a larger --mb)")
        return int(counted()), env.server.dropped_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)

    idle = statistics.median(sigterm_seconds(0) for _ in range(args.samples))
    loading = statistics.median(sigterm_seconds(args.mb) for _ in range(args.samples))
    counted, dropped = events_while_loading(args.mb, args.events)
    ok_sigterm = loading < GOAL_SIGTERM_SECONDS
    ok_events = counted == args.events and dropped == 0
    print(f"SIGTERM to exit, idle (baseline):        {idle:.3f} s (median of {args.samples})")
    print(
        f"SIGTERM to exit, {args.mb:g} MB policy loading: {loading:.3f} s "
        f"({loading / idle:.2f}x idle; goal < {GOAL_SIGTERM_SECONDS:g} s: "
        f"{'met' if ok_sigterm else 'MISSED'})"
    )
    print(
        f"events while it loads (10,000/s):        {counted} of {args.events} counted, "
        f"{dropped} dropped by devd (goal: all, none: {'met' if ok_events else 'MISSED'})"
    )
    return 1 if args.check and not (ok_sigterm and ok_events) else 0


if __name__ == "__main__":
    sys.exit(main())
