"""The daemon's own health as Prometheus metrics: the counters its threads update
(DaemonStats), copied under their lock and formatted outside it (DaemonCollector), and this
process's CPU, memory, start time and open files.
"""

from __future__ import annotations

import os
import resource as resource_module
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rctlpolicy import __version__
from rctlpolicy import metric_names as names
from rctlpolicy.exposition import metric_help
from rctlpolicy.history import HistoryStats
from rctlpolicy.metric_names import metric_spec

EVENT_OUTCOMES = ("handled", "unmatched", "malformed", "truncated", "rejected")
ACTION_OUTCOMES = ("ok", "failed", "timeout", "suppressed", "exhausted")
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class DaemonStats:
    """The daemon's own counters and states, updated by its threads, read on each scrape.

    Times come from the owner's clock (`start_time`, `reloaded(when=...)`): no reading of the
    system clock here, so a test's ManualClock decides what the scrape says.
    """

    #: Wall-clock seconds when the daemon started (process_start_time_seconds).
    start_time: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    racct_enabled: bool = True
    last_reload_ok: bool = False
    last_reload_success: float = 0.0
    rules: int = 0
    reload_pending: bool = False
    devd_connected: bool = False
    devd_reconnects: int = 0
    #: Whether devd has sent a record on the current connection (it accepted us).
    devd_receiving: bool = False
    #: Reads the devd reader's count of records dropped on a full queue (set by the daemon).
    devd_records_dropped: Callable[[], int] = lambda: 0
    #: Times the kernel was found without the rules the daemon applied (and they were re-applied).
    kernel_rules_lost: int = 0
    events: Counter[str] = field(default_factory=Counter)
    actions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0
    exhausted: frozenset[tuple[str, str, str]] = frozenset()
    actions_running: int = 0
    actions_running_limit: int = 0
    actions_delayed: int = 0
    #: The usage history's sampler (its own lock: its threads never take this one).
    history: HistoryStats = field(default_factory=HistoryStats)

    def snapshot(self) -> DaemonStats:
        """A consistent copy, taken under the lock (with a lock of its own): read it at
        leisure while the daemon's threads go on counting."""
        with self.lock:
            values: dict[str, Any] = {
                item.name: _copied(getattr(self, item.name))
                for item in fields(self)
                if item.name != "lock"
            }
        return DaemonStats(**values)

    def count_event(self, outcome: str) -> None:
        with self.lock:
            self.events[outcome] += 1

    def count_action(
        self, name: str, resource: str, outcome: str, duration: float | None = None
    ) -> None:
        with self.lock:
            self.actions[(name, resource, outcome)] += 1
            if duration is not None:
                self.duration_count += 1
                self.duration_sum += duration
                for index, bound in enumerate(DURATION_BUCKETS):
                    if duration <= bound:
                        self.duration_buckets[index] += 1

    def action_slots(self, running: int, limit: int, delayed: int) -> None:
        """The action engine's workers: running now, the most at once, waits so far."""
        with self.lock:
            self.actions_running = running
            self.actions_running_limit = limit
            self.actions_delayed = delayed

    def reloaded(self, ok: bool, when: float, rules: int | None = None) -> None:
        """A reload ended at wall-clock `when`; a good one sets the rule count and time."""
        with self.lock:
            self.last_reload_ok = ok
            if ok:
                self.last_reload_success = when
                if rules is not None:
                    self.rules = rules

    def devd_state(self, connected: bool, reconnected: bool = False) -> None:
        with self.lock:
            self.devd_connected = connected
            self.devd_receiving = False
            if reconnected:
                self.devd_reconnects += 1

    def devd_receiving_now(self) -> None:
        """The current connection's first record arrived."""
        with self.lock:
            self.devd_receiving = True


def _copied(value: object) -> object:
    """A container copied (one level: the stats hold numbers and strings), else the value."""
    if isinstance(value, dict | list | set):
        return value.copy()
    return value


class DaemonCollector(Collector):
    """The daemon's health: reloads, devd, events, actions, and its own process."""

    def __init__(self, stats: DaemonStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        # A copy taken under the lock and formatted without it: a scrape never holds up the
        # threads that count events and actions (a generator holding the lock would keep it
        # for as long as its consumer takes between two families).
        s = self.stats.snapshot()
        build = GaugeMetricFamily(
            names.RCTLPOLICY_BUILD_INFO,
            metric_help(names.RCTLPOLICY_BUILD_INFO),
            labels=list(metric_spec(names.RCTLPOLICY_BUILD_INFO).labels),
        )
        build.add_metric([__version__], 1)
        yield build
        gauges: tuple[tuple[str, float], ...] = (
            (names.RCTLPOLICY_RACCT_ENABLED, int(s.racct_enabled)),
            (names.RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESSFUL, int(s.last_reload_ok)),
            (
                names.RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
                s.last_reload_success,
            ),
            (names.RCTLPOLICY_RULES, s.rules),
            (names.RCTLPOLICY_CONFIG_RELOAD_PENDING, int(s.reload_pending)),
            (names.RCTLPOLICY_DEVD_CONNECTED, int(s.devd_connected)),
        )
        for name, value in gauges:
            yield GaugeMetricFamily(name, metric_help(name), value=value)
        yield CounterMetricFamily(
            names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL,
            metric_help(names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL),
            value=s.devd_reconnects,
        )
        yield GaugeMetricFamily(
            names.RCTLPOLICY_DEVD_RECEIVING,
            metric_help(names.RCTLPOLICY_DEVD_RECEIVING),
            value=int(s.devd_receiving),
        )
        yield CounterMetricFamily(
            names.RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL,
            metric_help(names.RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL),
            value=s.devd_records_dropped(),
        )
        yield CounterMetricFamily(
            names.RCTLPOLICY_KERNEL_RULES_LOST_TOTAL,
            metric_help(names.RCTLPOLICY_KERNEL_RULES_LOST_TOTAL),
            value=s.kernel_rules_lost,
        )
        events = CounterMetricFamily(
            names.RCTLPOLICY_EVENTS_TOTAL,
            metric_help(names.RCTLPOLICY_EVENTS_TOTAL),
            labels=["outcome"],
        )
        for outcome in EVENT_OUTCOMES:
            events.add_metric([outcome], s.events.get(outcome, 0))
        yield events
        actions = CounterMetricFamily(
            names.RCTLPOLICY_ACTIONS_TOTAL,
            metric_help(names.RCTLPOLICY_ACTIONS_TOTAL),
            labels=["name", "resource", "outcome"],
        )
        for (name, res, outcome), count in sorted(s.actions.items()):
            actions.add_metric([name, res, outcome], count)
        yield actions
        cumulative = []
        running = 0
        for bound, count in zip(DURATION_BUCKETS, s.duration_buckets, strict=True):
            running = count  # buckets already hold cumulative counts (<= bound)
            cumulative.append((_bound(bound), running))
        cumulative.append(("+Inf", s.duration_count))
        yield HistogramMetricFamily(
            names.RCTLPOLICY_ACTION_DURATION_SECONDS,
            metric_help(names.RCTLPOLICY_ACTION_DURATION_SECONDS),
            buckets=cumulative,
            sum_value=s.duration_sum,
        )
        exhausted = GaugeMetricFamily(
            names.RCTLPOLICY_EXHAUSTED_ACTIONS,
            metric_help(names.RCTLPOLICY_EXHAUSTED_ACTIONS),
            labels=["name", "resource", "jail"],
        )
        for labels in sorted(s.exhausted):
            exhausted.add_metric(list(labels), 1)
        yield exhausted
        for name, value in (
            (names.RCTLPOLICY_ACTIONS_RUNNING, s.actions_running),
            (names.RCTLPOLICY_ACTIONS_RUNNING_LIMIT, s.actions_running_limit),
        ):
            yield GaugeMetricFamily(name, metric_help(name), value=value)
        yield CounterMetricFamily(
            names.RCTLPOLICY_ACTIONS_DELAYED_TOTAL,
            metric_help(names.RCTLPOLICY_ACTIONS_DELAYED_TOTAL),
            value=s.actions_delayed,
        )
        h = s.history
        with h.lock:
            samples, dropped, paused = h.samples, h.dropped, h.paused
        for name, count in (
            (names.RCTLPOLICY_HISTORY_SAMPLES_TOTAL, samples),
            (names.RCTLPOLICY_HISTORY_DROPPED_TOTAL, dropped),
        ):
            yield CounterMetricFamily(name, metric_help(name), value=count)
        yield GaugeMetricFamily(
            names.RCTLPOLICY_HISTORY_PAUSED,
            metric_help(names.RCTLPOLICY_HISTORY_PAUSED),
            value=paused,
        )
        yield from process_metrics(s.start_time)


def _bound(value: float) -> str:
    return repr(float(value))


def process_metrics(start_time: float) -> Iterator[Metric]:
    """CPU, memory, start time and open fds of this process, by means FreeBSD has too."""
    times = os.times()
    yield CounterMetricFamily(
        names.RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL,
        metric_help(names.RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL),
        value=times.user + times.system,
    )
    rss = resident_memory_bytes()
    if rss is not None:
        yield GaugeMetricFamily(
            names.RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES,
            metric_help(names.RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES),
            value=rss,
        )
    yield GaugeMetricFamily(
        names.RCTLPOLICY_PROCESS_START_TIME_SECONDS,
        metric_help(names.RCTLPOLICY_PROCESS_START_TIME_SECONDS),
        value=start_time,
    )
    yield GaugeMetricFamily(
        names.RCTLPOLICY_PROCESS_OPEN_FDS,
        metric_help(names.RCTLPOLICY_PROCESS_OPEN_FDS),
        value=open_fds(),
    )


def resident_memory_bytes() -> int | None:
    """Current RSS: /proc on Linux; getrusage's peak elsewhere (FreeBSD has no /proc by
    default, and the peak of a long-running daemon tracks its resident size closely)."""
    try:
        pages = Path("/proc/self/statm").read_text().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass
    peak_kib = resource_module.getrusage(resource_module.RUSAGE_SELF).ru_maxrss
    return peak_kib * 1024 if peak_kib else None


def open_fds() -> int:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        if len(entries) > 3 or directory == "/proc/self/fd":
            return max(0, len(entries) - 1)  # listdir's own descriptor
    soft, _ = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    count = 0
    for fd in range(min(soft if soft > 0 else 4096, 4096)):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count
