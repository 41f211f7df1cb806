"""The jail collector: per-jail usage and limits from the kernel, jail_exporter's names.

Collectors follow prometheus_client's custom-collector pattern: `collect()` builds every family
fresh on each scrape from data sources passed to the constructor, so a test hands in a
simulated kernel and a fresh `CollectorRegistry`. Families are built by hand, which also means
no `_created` series.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from itertools import chain, repeat

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rctlpolicy import metric_names as names
from rctlpolicy.daemonmetrics import DaemonStats
from rctlpolicy.exposition import GoNumbers, family_header, label_value, metric_help
from rctlpolicy.kernel.base import Jail, Kernel, KernelError, batched
from rctlpolicy.kernel.freebsd import UNREADABLE, USAGE_PAIR, parse_usage
from rctlpolicy.metric_names import metric_spec, resource_metrics
from rctlpolicy.model import Filter, Resource, Rule, SubjectType

log = logging.getLogger("rctlpolicy.exporter")


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

    def collect(self) -> Iterator[Metric]:
        """The families of one scrape, built fresh from the kernel."""
        with batched(self.kernel):
            return iter(list(self._families()))

    def _families(self) -> Iterator[Metric]:
        racct_ok, jails = self._running()
        jail_id = GaugeMetricFamily(names.JAIL_ID, metric_help(names.JAIL_ID), labels=["name"])
        for jail in jails:
            jail_id.add_metric([jail.name], jail.jid)
        yield jail_id
        yield GaugeMetricFamily(names.JAIL_NUM, metric_help(names.JAIL_NUM), value=len(jails))

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
                    limit_name, metric_help(limit_name), labels=list(names.LIMIT_LABELS)
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
        with batched(self.kernel):
            self._write_classic(append)

    def _write_classic(self, append: Callable[[str], object]) -> None:
        headers = self._headers
        racct_ok, jails = self._running()
        go = GoNumbers()
        # A jail's label part, written once per jail and then for each of its samples.
        labels = [f'{{name="{label_value(jail.name)}"}} ' for jail in jails]
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
            append(line.format(label_value(jail_name), action, per, go[str(amount)]))
        append(headers.rule_info)
        info_line = headers.rule_info_line
        for info_labels in info:
            append(info_line.format(*map(label_value, info_labels), "1.0"))

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
        families[res] = family_type(spec.usage, metric_help(spec.usage), labels=["name"])
    return families


def _rule_info_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        names.RCTLPOLICY_RULE_INFO,
        metric_help(names.RCTLPOLICY_RULE_INFO),
        labels=list(metric_spec(names.RCTLPOLICY_RULE_INFO).labels),
    )


class _JailHeaders:
    """The fixed parts of JailCollector's classic text: each family's HELP and TYPE lines and
    sample names, taken from families built as `collect()` builds them (so both agree), and
    line templates with the labels in the order the text format sorts them."""

    def __init__(self) -> None:
        self.jail_id = family_header(GaugeMetricFamily(names.JAIL_ID, metric_help(names.JAIL_ID)))
        self.jail_num = family_header(
            GaugeMetricFamily(names.JAIL_NUM, metric_help(names.JAIL_NUM))
        )
        self.usage: dict[Resource, str] = {}
        self.usage_sample: dict[Resource, str] = {}
        for res, family in _usage_families().items():
            self.usage[res] = family_header(family)
            family.add_metric(["x"], 0)
            self.usage_sample[res] = family.samples[0].name
        info = _rule_info_family()
        self.rule_info = family_header(info)
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
            family = GaugeMetricFamily(name, metric_help(name))
            template = _line_template(name, list(names.LIMIT_LABELS))
            known = self._limits[res] = (family_header(family), template)
        return known


def _line_template(sample: str, labels: list[str]) -> str:
    """A str.format template for one sample: positional fields are the label values in
    `labels` order (escaped by the caller), then the value; labels sorted by name."""
    order = sorted(range(len(labels)), key=lambda index: labels[index])
    text = ",".join(f'{labels[index]}="{{{index}}}"' for index in order)
    sample = sample.replace("{", "{{").replace("}", "}}")
    return f"{sample}{{{{{text}}}}} {{{len(labels)}}}\n"


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
