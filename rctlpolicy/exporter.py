"""Prometheus collectors: per-jail usage and limits from the kernel, and the daemon's health.

Collectors follow prometheus_client's custom-collector pattern: `collect()` builds every family
fresh on each scrape from data sources passed to the constructor, so a test hands in a
simulated kernel and a fresh `CollectorRegistry`. Families are built by hand, which also means
no `_created` series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource as resource_module
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString as float_to_go_string

from rctlpolicy import __version__
from rctlpolicy import metric_names as names
from rctlpolicy.history import HistoryStats
from rctlpolicy.kernel.base import Kernel, KernelError
from rctlpolicy.metric_names import metric_spec, resource_metrics
from rctlpolicy.model import Filter, Resource, Rule, SubjectType

log = logging.getLogger("rctlpolicy.exporter")

CLASSIC_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EVENT_OUTCOMES = ("handled", "unmatched", "malformed", "truncated", "rejected")
ACTION_OUTCOMES = ("ok", "failed", "timeout", "suppressed", "exhausted")
TEXTFILE_MODE = 0o644
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _help(name: str) -> str:
    return metric_spec(name).help


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


class JailCollector(Collector):
    """jail_exporter-compatible usage per running jail, and the rules in force.

    Every series of a jail (its id, usage and limits) is built from the jails running at the
    scrape, so a jail that stopped disappears from the next scrape. Rules on users, login
    classes and processes are `rctlpolicy_rule_info` series: labels with the rule's fields,
    never the whole rule text.
    """

    def __init__(self, kernel: Kernel, stats: DaemonStats | None = None) -> None:
        self.kernel = kernel
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """The families of one scrape, built fresh from the kernel."""
        racct_ok = self.kernel.racct_status().enabled
        if self.stats is not None:
            with self.stats.lock:
                self.stats.racct_enabled = racct_ok
        try:
            jails = list(self.kernel.jails())
        except (KernelError, OSError) as error:
            log.warning("cannot list jails: %s", error)
            jails = []
        jail_id = GaugeMetricFamily(names.JAIL_ID, _help(names.JAIL_ID), labels=["name"])
        for jail in jails:
            jail_id.add_metric([jail.name], jail.jid)
        yield jail_id
        yield GaugeMetricFamily(names.JAIL_NUM, _help(names.JAIL_NUM), value=len(jails))

        usage_families: dict[Resource, GaugeMetricFamily | CounterMetricFamily] = {}
        for res in Resource:
            spec = resource_metrics(res)
            family_type = (
                CounterMetricFamily if spec.usage_type.value == "counter" else GaugeMetricFamily
            )
            usage_families[res] = family_type(spec.usage, _help(spec.usage), labels=["name"])
        # With RACCT off every call fails with ENOSYS: the families stay empty, and
        # rctlpolicy_racct_enabled says why.
        for jail in jails if racct_ok else []:
            try:
                usage = self.kernel.usage(Filter(SubjectType.JAIL, jail.name))
            except (KernelError, OSError) as error:
                log.warning("cannot read usage of jail %s: %s", jail.name, error)
                continue
            for res, value in usage.items():
                usage_families[res].add_metric([jail.name], value)
        yield from usage_families.values()
        yield from self._limits({jail.name for jail in jails}, racct_ok)

    def _limits(self, running: set[str], racct_ok: bool) -> Iterator[Metric]:
        rules: list[Rule] = []
        if racct_ok:
            try:
                rules = self.kernel.rules(Filter())
            except (KernelError, OSError) as error:
                log.warning("cannot list rules: %s", error)
        # Two rules can differ only by amount (log at 80 %, log at 90 %): one series per label
        # set, the strictest amount, keeps the exposition valid and "% of limit" meaningful.
        limits: dict[tuple[Resource, str, str, str], int] = {}
        info: set[tuple[str, str, str, str, str]] = set()
        for rule in rules:
            if rule.subject is SubjectType.JAIL:
                if rule.subject_id not in running:
                    continue  # a jail that is not running has no series
                key = (rule.resource, rule.subject_id, rule.action.value, rule.per.value)
                limits[key] = min(rule.amount, limits.get(key, rule.amount))
            else:
                info.add(
                    (
                        rule.subject.value,
                        rule.subject_id,
                        rule.resource.value,
                        rule.action.value,
                        rule.per.value,
                    )
                )
        families: dict[Resource, GaugeMetricFamily] = {}
        for (res, jail, action, per), amount in sorted(limits.items()):
            family = families.get(res)
            if family is None:
                limit_name = resource_metrics(res).limit
                family = GaugeMetricFamily(
                    limit_name, _help(limit_name), labels=list(names.LIMIT_LABELS)
                )
                families[res] = family
            family.add_metric([jail, action, per], amount)
        yield from families.values()
        rule_info = GaugeMetricFamily(
            names.RCTLPOLICY_RULE_INFO,
            _help(names.RCTLPOLICY_RULE_INFO),
            labels=list(metric_spec(names.RCTLPOLICY_RULE_INFO).labels),
        )
        for labels in sorted(info):
            rule_info.add_metric(list(labels), 1)
        yield rule_info


class DaemonCollector(Collector):
    """The daemon's health: reloads, devd, events, actions, and its own process."""

    def __init__(self, stats: DaemonStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        with s.lock:
            build = GaugeMetricFamily(
                names.RCTLPOLICY_BUILD_INFO,
                _help(names.RCTLPOLICY_BUILD_INFO),
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
                yield GaugeMetricFamily(name, _help(name), value=value)
            yield CounterMetricFamily(
                names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL,
                _help(names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL),
                value=s.devd_reconnects,
            )
            yield GaugeMetricFamily(
                names.RCTLPOLICY_DEVD_RECEIVING,
                _help(names.RCTLPOLICY_DEVD_RECEIVING),
                value=int(s.devd_receiving),
            )
            yield CounterMetricFamily(
                names.RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL,
                _help(names.RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL),
                value=s.devd_records_dropped(),
            )
            yield CounterMetricFamily(
                names.RCTLPOLICY_KERNEL_RULES_LOST_TOTAL,
                _help(names.RCTLPOLICY_KERNEL_RULES_LOST_TOTAL),
                value=s.kernel_rules_lost,
            )
            events = CounterMetricFamily(
                names.RCTLPOLICY_EVENTS_TOTAL,
                _help(names.RCTLPOLICY_EVENTS_TOTAL),
                labels=["outcome"],
            )
            for outcome in EVENT_OUTCOMES:
                events.add_metric([outcome], s.events.get(outcome, 0))
            yield events
            actions = CounterMetricFamily(
                names.RCTLPOLICY_ACTIONS_TOTAL,
                _help(names.RCTLPOLICY_ACTIONS_TOTAL),
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
                _help(names.RCTLPOLICY_ACTION_DURATION_SECONDS),
                buckets=cumulative,
                sum_value=s.duration_sum,
            )
            exhausted = GaugeMetricFamily(
                names.RCTLPOLICY_EXHAUSTED_ACTIONS,
                _help(names.RCTLPOLICY_EXHAUSTED_ACTIONS),
                labels=["name", "resource", "jail"],
            )
            for labels in sorted(s.exhausted):
                exhausted.add_metric(list(labels), 1)
            yield exhausted
            for name, value in (
                (names.RCTLPOLICY_ACTIONS_RUNNING, s.actions_running),
                (names.RCTLPOLICY_ACTIONS_RUNNING_LIMIT, s.actions_running_limit),
            ):
                yield GaugeMetricFamily(name, _help(name), value=value)
            yield CounterMetricFamily(
                names.RCTLPOLICY_ACTIONS_DELAYED_TOTAL,
                _help(names.RCTLPOLICY_ACTIONS_DELAYED_TOTAL),
                value=s.actions_delayed,
            )
            start_time = s.start_time
        h = s.history
        with h.lock:
            samples, dropped, paused = h.samples, h.dropped, h.paused
        for name, count in (
            (names.RCTLPOLICY_HISTORY_SAMPLES_TOTAL, samples),
            (names.RCTLPOLICY_HISTORY_DROPPED_TOTAL, dropped),
        ):
            yield CounterMetricFamily(name, _help(name), value=count)
        yield GaugeMetricFamily(
            names.RCTLPOLICY_HISTORY_PAUSED, _help(names.RCTLPOLICY_HISTORY_PAUSED), value=paused
        )
        yield from process_metrics(start_time)


def _bound(value: float) -> str:
    return repr(float(value))


def process_metrics(start_time: float) -> Iterator[Metric]:
    """CPU, memory, start time and open fds of this process, by means FreeBSD has too."""
    times = os.times()
    yield CounterMetricFamily(
        names.RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL,
        _help(names.RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL),
        value=times.user + times.system,
    )
    rss = resident_memory_bytes()
    if rss is not None:
        yield GaugeMetricFamily(
            names.RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES,
            _help(names.RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES),
            value=rss,
        )
    yield GaugeMetricFamily(
        names.RCTLPOLICY_PROCESS_START_TIME_SECONDS,
        _help(names.RCTLPOLICY_PROCESS_START_TIME_SECONDS),
        value=start_time,
    )
    yield GaugeMetricFamily(
        names.RCTLPOLICY_PROCESS_OPEN_FDS,
        _help(names.RCTLPOLICY_PROCESS_OPEN_FDS),
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


def make_registry(collectors: Sequence[Collector]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


_NEEDS_ESCAPE = re.compile(r'[\\\n"]')


def _label_value(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def classic_text(registry: CollectorRegistry) -> bytes:
    """The classic text format (0.0.4), which node_exporter's textfile collector reads.

    Byte for byte what prometheus_client's generate_latest writes for our families (no
    timestamps, no _created samples, names valid as they are), in a third of the time: a
    500-jail host has some 13,000 samples, and a scrape holds the interpreter meanwhile.
    """
    out: list[str] = []
    append = out.append
    for metric in registry.collect():
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif kind == "unknown":
            kind = "untyped"
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in metric.samples:
            labels = sample.labels
            value: str = float_to_go_string(sample.value)  # type: ignore[no-untyped-call]
            if labels:
                text = ",".join(f'{key}="{_label_value(labels[key])}"' for key in sorted(labels))
                append(f"{sample.name}{{{text}}} {value}\n")
            else:
                append(f"{sample.name} {value}\n")
    return "".join(out).encode("utf-8")


def renderer(registry: CollectorRegistry) -> Callable[[str | None], tuple[bytes, str]]:
    """The web server's render callback: classic text unless OpenMetrics is asked for."""

    def render(accept: str | None) -> tuple[bytes, str]:
        if accept and "application/openmetrics-text" in accept:
            text: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
            return text, OPENMETRICS_CONTENT_TYPE
        return classic_text(registry), CLASSIC_CONTENT_TYPE

    return render


def write_textfile(registry: CollectorRegistry, path: Path) -> None:
    """node_exporter's textfile collector format, replaced atomically: a reader sees the old
    file or the new one, never half of one.

    The temporary file is unique (two threads may write at once), hidden and not `*.prom`
    (node_exporter reads only those), and made world-readable like the file it replaces
    (node_exporter does not run as root).
    """
    text = classic_text(registry)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, TEXTFILE_MODE)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
