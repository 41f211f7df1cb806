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
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain, repeat
from pathlib import Path
from typing import Any

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

from rctlpolicy import __version__, safeio
from rctlpolicy import metric_names as names
from rctlpolicy.history import HistoryStats
from rctlpolicy.kernel.base import Jail, Kernel, KernelError
from rctlpolicy.kernel.freebsd import UNREADABLE, USAGE_PAIR, parse_usage
from rctlpolicy.metric_names import metric_spec, resource_metrics
from rctlpolicy.model import Filter, Resource, Rule, SubjectType

log = logging.getLogger("rctlpolicy.exporter")

CLASSIC_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EVENT_OUTCOMES = ("handled", "unmatched", "malformed", "truncated", "rejected")
ACTION_OUTCOMES = ("ok", "failed", "timeout", "suppressed", "exhausted")
TEXTFILE_MODE = safeio.PUBLIC_MODE
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


class JailCollector(Collector):
    """jail_exporter-compatible usage per running jail, and the rules in force.

    Every series of a jail (its id, usage and limits) is built from the jails running at the
    scrape, so a jail that stopped disappears from the next scrape. Rules on users, login
    classes and processes are `rctlpolicy_rule_info` series: labels with the rule's fields,
    never the whole rule text.

    Two ways out, one content: `collect()` builds prometheus_client families (OpenMetrics,
    and any registry), and `write_classic()` writes the classic text straight from the
    kernel's answers (`rctl_get_racct`'s `cputime=0,datasize=...` strings), which is what a
    scrape asks for: a 500-jail host has some 14,000 samples. tests/test_exporter.py proves
    the two byte for byte equal to prometheus_client's `generate_latest` of the families.
    """

    def __init__(self, kernel: Kernel, stats: DaemonStats | None = None) -> None:
        self.kernel = kernel
        self.stats = stats
        self._headers = _JailHeaders()

    def _running(self) -> tuple[bool, list[Jail]]:
        """Whether RACCT is usable (told to the stats too), and the jails running now."""
        racct_ok = self.kernel.racct_status().enabled
        if self.stats is not None:
            with self.stats.lock:
                self.stats.racct_enabled = racct_ok
        try:
            jails = list(self.kernel.jails())
        except (KernelError, OSError) as error:
            log.warning("cannot list jails: %s", error)
            jails = []
        return racct_ok, jails

    def _usage_answers(self, jails: list[Jail], racct_ok: bool) -> Iterator[tuple[int, Jail, str]]:
        """Each running jail's `rctl_get_racct` answer, with the jail's index in `jails`; a jail
        that cannot be read is left out (with RACCT off every call would fail with ENOSYS:
        none is made, and rctlpolicy_racct_enabled says why)."""
        if not racct_ok:
            return
        read = getattr(self.kernel, "usage_text", None)
        for index, jail in enumerate(jails):
            try:
                if read is not None:
                    answer: str = read(Filter(SubjectType.JAIL, jail.name))
                else:
                    usage = self.kernel.usage(Filter(SubjectType.JAIL, jail.name))
                    answer = ",".join(f"{res.value}={value}" for res, value in usage.items())
            except (KernelError, OSError) as error:
                log.warning("cannot read usage of jail %s: %s", jail.name, error)
                continue
            yield index, jail, answer

    def _batch(self) -> contextlib.AbstractContextManager[None]:
        """One scrape's kernel calls as one batch (`FreeBSDKernel.batch`)."""
        batch = getattr(self.kernel, "batch", None)
        if batch is None:
            return contextlib.nullcontext()
        context: contextlib.AbstractContextManager[None] = batch()
        return context

    def collect(self) -> Iterator[Metric]:
        """The families of one scrape, built fresh from the kernel."""
        with self._batch():
            return iter(list(self._families()))

    def _families(self) -> Iterator[Metric]:
        racct_ok, jails = self._running()
        jail_id = GaugeMetricFamily(names.JAIL_ID, _help(names.JAIL_ID), labels=["name"])
        for jail in jails:
            jail_id.add_metric([jail.name], jail.jid)
        yield jail_id
        yield GaugeMetricFamily(names.JAIL_NUM, _help(names.JAIL_NUM), value=len(jails))

        usage_families = _usage_families()
        for _, jail, answer in self._usage_answers(jails, racct_ok):
            try:
                usage = parse_usage(answer)
            except KernelError as error:
                log.warning("cannot read usage of jail %s: %s", jail.name, error)
                continue
            for res, value in usage.items():
                usage_families[res].add_metric([jail.name], value)
        yield from usage_families.values()
        limits, info = self._rules({jail.name for jail in jails}, racct_ok)
        families: dict[Resource, GaugeMetricFamily] = {}
        for (res, jail_name, action, per), amount in limits:
            family = families.get(res)
            if family is None:
                limit_name = resource_metrics(res).limit
                family = GaugeMetricFamily(
                    limit_name, _help(limit_name), labels=list(names.LIMIT_LABELS)
                )
                families[res] = family
            family.add_metric([jail_name, action, per], amount)
        yield from families.values()
        rule_info = _rule_info_family()
        for labels in info:
            rule_info.add_metric(list(labels), 1)
        yield rule_info

    def write_classic(self, append: Callable[[str], object]) -> None:
        """The families of `collect()` as classic text (what `classic_text` writes for them),
        written straight from the kernel's answers without building a family or a sample."""
        with self._batch():
            self._write_classic(append)

    def _write_classic(self, append: Callable[[str], object]) -> None:
        headers = self._headers
        racct_ok, jails = self._running()
        go = _GoNumbers()
        # A jail's label part, written once per jail and then for each of its samples.
        labels = [f'{{name="{_label_value(jail.name)}"}} ' for jail in jails]
        append(headers.jail_id)
        append(
            "".join(
                chain.from_iterable(
                    zip(
                        repeat(names.JAIL_ID),
                        labels,
                        map(go.__getitem__, [str(jail.jid) for jail in jails]),
                        repeat("\n"),
                    )
                )
            )
        )
        append(headers.jail_num)
        append(f"{names.JAIL_NUM} {go[str(len(jails))]}\n")

        answers = [
            (labels[index], jail, answer)
            for index, jail, answer in self._usage_answers(jails, racct_ok)
        ]
        columns = _usage_columns(answers)
        for res in Resource:
            append(headers.usage[res])
            column = columns.get(res)
            if column:
                column_labels, values = column
                append(
                    "".join(
                        chain.from_iterable(
                            zip(
                                repeat(headers.usage_sample[res]),
                                column_labels,
                                map(go.__getitem__, values),
                                repeat("\n"),
                            )
                        )
                    )
                )

        limits, info = self._rules({jail.name for jail in jails}, racct_ok)
        current: Resource | None = None
        line = ""
        for (res, jail_name, action, per), amount in limits:
            if res is not current:
                current = res
                append(headers.limit(res))
                line = headers.limit_line(res)
            append(line.format(_label_value(jail_name), action, per, go[str(amount)]))
        append(headers.rule_info)
        info_line = headers.rule_info_line
        for info_labels in info:
            append(info_line.format(*map(_label_value, info_labels), "1.0"))

    def _rules(
        self, running: set[str], racct_ok: bool
    ) -> tuple[list[tuple[tuple[Resource, str, str, str], int]], list[tuple[str, ...]]]:
        """The jail limits of running jails (sorted) and the other rules' info labels."""
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
        return sorted(limits.items()), sorted(info)


def _usage_families() -> dict[Resource, GaugeMetricFamily | CounterMetricFamily]:
    """An empty usage family per resource, in the kernel's resource order."""
    families: dict[Resource, GaugeMetricFamily | CounterMetricFamily] = {}
    for res in Resource:
        spec = resource_metrics(res)
        family_type = (
            CounterMetricFamily if spec.usage_type.value == "counter" else GaugeMetricFamily
        )
        families[res] = family_type(spec.usage, _help(spec.usage), labels=["name"])
    return families


def _rule_info_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        names.RCTLPOLICY_RULE_INFO,
        _help(names.RCTLPOLICY_RULE_INFO),
        labels=list(metric_spec(names.RCTLPOLICY_RULE_INFO).labels),
    )


class _JailHeaders:
    """The fixed parts of JailCollector's classic text: each family's HELP and TYPE lines and
    sample names, taken from families built as `collect()` builds them (so both agree), and
    line templates with the labels in the order the text format sorts them."""

    def __init__(self) -> None:
        self.jail_id = _header(GaugeMetricFamily(names.JAIL_ID, _help(names.JAIL_ID)))
        self.jail_num = _header(GaugeMetricFamily(names.JAIL_NUM, _help(names.JAIL_NUM)))
        self.usage: dict[Resource, str] = {}
        self.usage_sample: dict[Resource, str] = {}
        for res, family in _usage_families().items():
            self.usage[res] = _header(family)
            family.add_metric(["x"], 0)
            self.usage_sample[res] = family.samples[0].name
        info = _rule_info_family()
        self.rule_info = _header(info)
        self.rule_info_line = _line_template(
            info.name, list(metric_spec(names.RCTLPOLICY_RULE_INFO).labels)
        )
        self._limits: dict[Resource, tuple[str, str]] = {}

    def limit(self, res: Resource) -> str:
        return self._limit(res)[0]

    def limit_line(self, res: Resource) -> str:
        return self._limit(res)[1]

    def _limit(self, res: Resource) -> tuple[str, str]:
        known = self._limits.get(res)
        if known is None:
            name = resource_metrics(res).limit
            family = GaugeMetricFamily(name, _help(name))
            template = _line_template(name, list(names.LIMIT_LABELS))
            known = self._limits[res] = (_header(family), template)
        return known


def _line_template(sample: str, labels: list[str]) -> str:
    """A str.format template for one sample: positional fields are the label values in
    `labels` order (escaped by the caller), then the value; labels sorted by name."""
    order = sorted(range(len(labels)), key=lambda index: labels[index])
    text = ",".join(f'{labels[index]}="{{{index}}}"' for index in order)
    sample = sample.replace("{", "{{").replace("}", "}}")
    return f"{sample}{{{{{text}}}}} {{{len(labels)}}}\n"


class _GoNumbers(dict[str, str]):
    """Decimal integer text -> `floatToGoString` of its value, remembered for one scrape (most
    usage values repeat: zeros, limits, counts)."""

    def __missing__(self, text: str) -> str:
        value = self[text] = go_integer(text)
        return value


def go_integer(text: str) -> str:
    """`floatToGoString(int(text))` for decimal integer text (an optional '-', digits), as
    prometheus_client writes a sample's value, without its float round trip where the result
    is plain: up to 15 digits a double holds the integer exactly and repr() writes it with
    '.0' (tests/test_exporter.py checks this against floatToGoString)."""
    digits = len(text)
    if 0 < digits <= 15 and text.isdecimal() and text.isascii():
        if text[0] != "0":
            if digits <= 6:
                return text + ".0"
            # floatToGoString: past 6 integer digits Go switches to an exponent.
            mantissa = f"{text[0]}.{text[1:]}".rstrip("0").rstrip(".")
            return f"{mantissa}e+{digits - 1:02d}"
        if digits == 1:
            return "0.0"
    return str(float_to_go_string(int(text)))  # type: ignore[no-untyped-call]


def _usage_columns(
    answers: list[tuple[str, Jail, str]],
) -> dict[Resource, tuple[list[str], list[str]]]:
    """resource -> (label parts, value texts) of the jails that report it, in jail order, from
    `(label part, jail, rctl_get_racct answer)`: what `parse_usage` would give each jail.

    The kernel answers every jail with the same resources in the same order
    (`rctl_racct_to_sbuf`), so the first answer's shape becomes one regular expression that
    checks and cuts each of the others, and the values are transposed into columns in C.
    Answers of another shape take `parse_usage`'s own steps.
    """
    if not answers:
        return {}
    shape = _answer_shape(answers[0][2])
    rows: list[tuple[str, ...]] = []
    if shape is not None:
        pattern, resources = shape
        fullmatch = pattern.fullmatch
        for _, _, answer in answers:
            match = fullmatch(answer)
            if match is None:
                break
            rows.append(match.groups())
        else:
            row_labels = [label for label, _, _ in answers]
            if not resources:
                return {}
            return {
                res: (row_labels, list(values))
                for res, values in zip(resources, zip(*rows, strict=True), strict=True)
            }
    columns: dict[Resource, tuple[list[str], list[str]]] = {}
    for label, jail, answer in answers:
        try:
            usage = _usage_texts(answer)
        except KernelError as error:
            log.warning("cannot read usage of jail %s: %s", jail.name, error)
            continue
        for res, value in usage.items():
            column = columns.get(res)
            if column is None:
                column = columns[res] = ([], [])
            column[0].append(label)
            column[1].append(value)
    return {res: columns[res] for res in Resource if res in columns}


def _answer_shape(answer: str) -> tuple[re.Pattern[str], list[Resource]] | None:
    """A pattern matching exactly the answers of this one's shape (the same names in the same
    order), grouping the values of the known resources; None when the answer is of a shape
    `parse_usage` reads in ways a pattern does not (empty pieces, a name twice, no pairs)."""
    try:
        usage = _usage_texts(answer)
    except KernelError:
        return None
    pairs = answer.split(",")
    words = [pair.partition("=")[0] for pair in pairs]
    if not answer or "" in pairs or len(set(words)) != len(words):
        return None
    parts = [
        f"{word}=(-?[0-9]+)" if word in _RESOURCE_NAMES else f"{word}=-?[0-9]+" for word in words
    ]
    return re.compile(",".join(parts)), list(usage)


_RESOURCE_NAMES = {res.value: res for res in Resource}


def _usage_texts(answer: str) -> dict[Resource, str]:
    """`parse_usage`, with each value's text kept as the kernel wrote it."""
    usage: dict[Resource, str] = {}
    for pair in answer.split(","):
        if not pair:
            continue
        match = USAGE_PAIR.match(pair)
        if match is None:
            raise KernelError(UNREADABLE, pair, "the kernel reported usage rctlpolicy cannot read")
        res = _RESOURCE_NAMES.get(match.group(1))
        if res is not None:
            usage[res] = match.group(2)
    return usage


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
        yield from process_metrics(s.start_time)


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


class ExporterRegistry(CollectorRegistry):
    """A registry that also keeps its collectors in order, so that `classic_text` can let
    each collector that has a `write_classic` write its text itself."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self._ordered: list[Collector] = []
        self._ordered_lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        super().register(collector)
        with self._ordered_lock:
            self._ordered.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        with self._ordered_lock:
            self._ordered.remove(collector)

    def collectors(self) -> list[Collector]:
        """The collectors in registration order (the order of `collect()`)."""
        with self._ordered_lock:
            return list(self._ordered)


def make_registry(collectors: Sequence[Collector]) -> ExporterRegistry:
    registry = ExporterRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry


_NEEDS_ESCAPE = re.compile(r'[\\\n"]')


def _label_value(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(metric: Metric) -> str:
    """A family's HELP and TYPE lines, as generate_latest writes them."""
    name, kind = metric.name, metric.type
    if kind == "counter":
        name += "_total"
    elif kind == "unknown":
        kind = "untyped"
    doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _write_families(metrics: Iterable[Metric], append: Callable[[str], object]) -> None:
    for metric in metrics:
        append(_header(metric))
        for sample in metric.samples:
            labels = sample.labels
            value: str = float_to_go_string(sample.value)  # type: ignore[no-untyped-call]
            if labels:
                text = ",".join(f'{key}="{_label_value(labels[key])}"' for key in sorted(labels))
                append(f"{sample.name}{{{text}}} {value}\n")
            else:
                append(f"{sample.name} {value}\n")


def classic_text(registry: CollectorRegistry) -> bytes:
    """The classic text format (0.0.4), which node_exporter's textfile collector reads.

    Byte for byte what prometheus_client's generate_latest writes for our families (no
    timestamps, no _created samples, names valid as they are). A collector of an
    `ExporterRegistry` that has a `write_classic(append)` writes its own part (JailCollector:
    straight from the kernel's answers, the bulk of a scrape); the others' families are
    formatted here.
    """
    out: list[str] = []
    append = out.append
    if isinstance(registry, ExporterRegistry):
        for collector in registry.collectors():
            write = getattr(collector, "write_classic", None)
            if write is not None:
                write(append)
            else:
                _write_families(collector.collect(), append)
    else:
        _write_families(registry.collect(), append)
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

    Written through safeio, the one writer: its temporary file is unique (two threads may
    write at once), hidden and not `*.prom` (node_exporter reads only those); the file is
    world-readable (node_exporter does not run as root).
    """
    safeio.write_atomic(path, classic_text(registry), mode=TEXTFILE_MODE)
