"""The classic text exposition format (0.0.4) and where it goes: the registry whose collectors
may write their own text, the web server's render callback, node_exporter's textfile.

Byte for byte what prometheus_client's generate_latest writes for the same families (a test
holds it to that), and faster: the jail collector writes its part straight from the kernel's
answers with the pieces here (headers, label escaping, Go's number spelling).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prometheus_client.core import (
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

from rctlpolicy import safeio
from rctlpolicy.metric_names import metric_spec

CLASSIC_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXTFILE_MODE = safeio.PUBLIC_MODE


def metric_help(name: str) -> str:
    """A metric's HELP text, from its one home (metric_names)."""
    return metric_spec(name).help


class GoNumbers(dict[str, str]):
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


def label_value(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def family_header(metric: Metric) -> str:
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
        append(family_header(metric))
        for sample in metric.samples:
            labels = sample.labels
            value: str = float_to_go_string(sample.value)  # type: ignore[no-untyped-call]
            if labels:
                text = ",".join(f'{key}="{label_value(labels[key])}"' for key in sorted(labels))
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


def wants_openmetrics(accept: str | None) -> bool:
    """What of an Accept header the render depends on (the web server shares renders by it)."""
    return bool(accept) and "application/openmetrics-text" in str(accept)


def renderer(registry: CollectorRegistry) -> Callable[[str | None], tuple[bytes, str]]:
    """The web server's render callback: classic text unless OpenMetrics is asked for."""

    def render(accept: str | None) -> tuple[bytes, str]:
        if wants_openmetrics(accept):
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
