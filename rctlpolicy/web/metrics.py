"""The metrics endpoint's own counters as Prometheus families (names in metric_names)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rctlpolicy import metric_names as names
from rctlpolicy.metric_names import metric_spec
from rctlpolicy.web.server import ServerStats

_GAUGES = (
    (names.RCTLPOLICY_WEB_CONNECTIONS_OPEN, "connections_open"),
    (names.RCTLPOLICY_WEB_CONNECTIONS_LIMIT, "connections_max"),
)
_COUNTERS = (
    (names.RCTLPOLICY_WEB_CONNECTIONS_EVICTED_TOTAL, "connections_evicted"),
    (names.RCTLPOLICY_WEB_CONNECTIONS_REFUSED_TOTAL, "connections_refused"),
    (names.RCTLPOLICY_WEB_TLS_HANDSHAKE_TIMEOUTS_TOTAL, "handshake_timeouts"),
    (names.RCTLPOLICY_WEB_AUTH_FAILURES_TOTAL, "auth_failures"),
    (names.RCTLPOLICY_WEB_REQUESTS_TOO_LARGE_TOTAL, "requests_too_large"),
)


class WebCollector(Collector):
    """Reports a MetricsServer's ``stats``: copied under their lock, built outside it."""

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        values = self.stats.snapshot()
        for name, key in _GAUGES:
            yield GaugeMetricFamily(name, metric_spec(name).help, value=values[key])
        for name, key in _COUNTERS:
            yield CounterMetricFamily(name, metric_spec(name).help, value=values[key])
