"""Benchmark the usage history against the budgets of issue 13.

    .venv/bin/python bench/history.py [--jails 500] [--days 35] [--check]

- Disk: `--jails` jails kept for `--days` days at the defaults (every sample of the last 48 h
  at 60 s, hourly rollups for the rest), as the store writes them: the last 48 hours are
  written tick by tick through `HistoryStore.write` (which rolls up each hour as it ends and
  prunes), and the older hours are rollup rows copied from the ones it made, shifted back, so
  the file holds what 35 days leave behind. Goal: <= 300 MiB (database and WAL together).
- CPU: one sampling tick is the sampler's work for every jail: reading each jail's usage (one
  call per jail to an in-memory kernel standing in for rctl_get_racct(2), whose own cost is
  the kernel's) and writing the sample, measured with `time.process_time()` over an hour of
  ticks (the tick that ends an hour also rolls it up). Share of one core at a 60 s interval:
  the hour's CPU seconds / 3600. Goal: <= 2 %. The baseline, measured in the same run, is the
  reading alone: the ratio says what storing costs on top of asking.

Usage values are random around a demo-like shape per jail, so the varints have realistic
sizes. Goals are printed beside the figures; the exit status is 0 unless --check is given and
a goal is missed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rctlpolicy.history import HistoryStats
from rctlpolicy.history.sampler import HistorySampler
from rctlpolicy.history.store import HOUR, HistoryStore
from rctlpolicy.kernel.base import Jail
from rctlpolicy.model import Filter, Resource

GOAL_DISK_MIB = 300.0
GOAL_CPU_SHARE = 0.02
INTERVAL = 60
MIB = 1024 * 1024

#: Typical magnitudes per resource (rctl -u units); zero for those jails rarely use.
SHAPE: dict[Resource, float] = {
    Resource.CPUTIME: 86400, Resource.DATASIZE: 2**30, Resource.STACKSIZE: 2**23,
    Resource.MEMORYUSE: 2**31, Resource.VMEMORYUSE: 2**32, Resource.MAXPROC: 40,
    Resource.OPENFILES: 2000, Resource.NTHR: 80, Resource.SWAPUSE: 2**28, Resource.NSHM: 4,
    Resource.SHMSIZE: 2**30, Resource.WALLCLOCK: 1_000_000, Resource.PCPU: 60,
    Resource.READBPS: 2**24, Resource.WRITEBPS: 2**23, Resource.READIOPS: 800,
    Resource.WRITEIOPS: 300,
}  # fmt: skip


class MemoryKernel:
    """The Kernel calls the sampler makes, answered from memory (new values each tick)."""

    def __init__(self, jails: int, seed: int = 13) -> None:
        self._random = random.Random(seed)
        self._jails = [Jail(n + 1, f"jail{n:04d}") for n in range(jails)]
        self._scale = {j.name: self._random.uniform(0.2, 2.0) for j in self._jails}

    def jails(self) -> Sequence[Jail]:
        return self._jails

    def usage(self, rule_filter: Filter) -> dict[Resource, int]:
        scale = self._scale[rule_filter.subject_id or ""]
        draw = self._random.random
        return {
            r: int(SHAPE.get(r, 0) * scale * (0.8 + 0.4 * draw())) if r in SHAPE else 0
            for r in Resource
        }


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def disk(jails: int, days: int, directory: Path) -> tuple[float, float, int]:
    """MiB on disk after `days` days of `jails` jails; also seconds taken and rows."""
    kernel = MemoryKernel(jails)
    path = directory / "history.sqlite"
    store = HistoryStore(path)
    start = 1_800_000_000 - 1_800_000_000 % HOUR
    raw_hours = 48
    began = time.monotonic()
    ticks = raw_hours * HOUR // INTERVAL
    for tick in range(ticks + 1):
        now = start + tick * INTERVAL
        store.write(now, {j.name: kernel.usage(Filter(None, j.name)) for j in kernel.jails()})
    store.close()
    # Older hours: the rollups the store made, copied back in time until `days` are covered.
    import sqlite3

    db = sqlite3.connect(path)
    made = db.execute("SELECT MIN(hour), MAX(hour) FROM hourly").fetchone()
    span = made[1] - made[0] + HOUR
    oldest_wanted = start + raw_hours * HOUR - days * 86400
    shift = span
    while made[0] - shift + span > oldest_wanted:
        db.execute(
            "INSERT OR IGNORE INTO hourly SELECT jail, hour - ?, samples, stats FROM hourly "
            "WHERE hour >= ? AND hour - ? >= ?",
            (shift, made[0], shift, oldest_wanted),
        )
        shift += span
    db.commit()
    rows = db.execute(
        "SELECT (SELECT COUNT(*) FROM raw) + (SELECT COUNT(*) FROM hourly)"
    ).fetchone()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return _size(path) / MIB, time.monotonic() - began, int(rows[0])


def cpu(jails: int, directory: Path) -> tuple[list[float], list[float], float, float]:
    """Per-tick CPU seconds over one hour of 60 s ticks: (with writing, reading alone, the
    hour's total with writing, the hour's total reading alone)."""
    kernel = MemoryKernel(jails)
    stats = HistoryStats()
    sampler = HistorySampler(
        kernel,  # type: ignore[arg-type]
        directory / "cpu.sqlite",
        _Clock(),
        INTERVAL,
        stats,
        raw_retention=48 * HOUR,
        retention=35 * 86400,
    )
    store = sampler.store
    start = 1_800_000_000 - 1_800_000_000 % HOUR
    # Warm up: an hour already stored, so the hour's end rolls up a full hour.
    for tick in range(HOUR // INTERVAL):
        store.write(
            start + tick * INTERVAL,
            {j.name: kernel.usage(Filter(None, j.name)) for j in kernel.jails()},
        )
    with_write: list[float] = []
    read_only: list[float] = []
    for tick in range(HOUR // INTERVAL + 1):
        now = start + HOUR + tick * INTERVAL
        _Clock.now = now
        before = time.process_time()
        sampler.sample()
        sampler.write(sampler._items.get_nowait())
        with_write.append(time.process_time() - before)
        before = time.process_time()
        {j.name: kernel.usage(Filter(None, j.name)) for j in kernel.jails()}
        read_only.append(time.process_time() - before)
    store.close()
    assert stats.dropped == 0
    return with_write, read_only, sum(with_write[1:]), sum(read_only[1:])


class _Clock:
    now = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jails", type=int, default=500)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rctlpolicy-bench-") as name:
        directory = Path(name)
        mib, seconds, rows = disk(args.jails, args.days, directory)
        print(
            f"disk: {args.jails} jails x {args.days} days = {mib:.1f} MiB ({rows} rows; "
            f"48 h of samples written in {seconds:.0f} s) -- goal <= {GOAL_DISK_MIB:.0f} MiB: "
            f"{'ok' if mib <= GOAL_DISK_MIB else 'MISSED'} ({mib / GOAL_DISK_MIB:.2f}x the budget)"
        )
        ticks, baseline, hour, hour_read = cpu(args.jails, directory)
    share = hour / HOUR
    ordered = sorted(ticks)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))]
    print(
        f"cpu: sampling + writing {args.jails} jails every {INTERVAL} s: median tick "
        f"{statistics.median(ticks) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (the hour's "
        f"rollup tick {ticks[-1] * 1000:.0f} ms); {share * 100:.3f} % of a core -- goal <= "
        f"{GOAL_CPU_SHARE * 100:.0f} %: {'ok' if share <= GOAL_CPU_SHARE else 'MISSED'}"
    )
    print(
        f"baseline (reading the usage alone, same run): median tick "
        f"{statistics.median(baseline) * 1000:.1f} ms; sampling with storing costs "
        f"{hour / hour_read:.1f}x reading alone"
    )
    missed = mib > GOAL_DISK_MIB or share > GOAL_CPU_SHARE
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
