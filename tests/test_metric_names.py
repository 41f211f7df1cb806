"""rctlpolicy.metric_names: the exported families and their naming."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rctlpolicy import metric_names as mn
from rctlpolicy.model import Resource, Unit

#: The contract with dashboards and alerts; a change here is a change for every user.
EXPECTED_FAMILIES = {
    # per-jail usage: sysutils/jail_exporter's names
    "jail_cputime_seconds_total": "counter", "jail_wallclock_seconds_total": "counter",
    "jail_memoryuse_bytes": "gauge", "jail_datasize_bytes": "gauge",
    "jail_stacksize_bytes": "gauge", "jail_coredumpsize_bytes": "gauge",
    "jail_memorylocked_bytes": "gauge", "jail_vmemoryuse_bytes": "gauge",
    "jail_swapuse_bytes": "gauge", "jail_msgqsize_bytes": "gauge", "jail_shmsize_bytes": "gauge",
    "jail_maxproc": "gauge", "jail_openfiles": "gauge", "jail_pseudoterminals": "gauge",
    "jail_nthr": "gauge", "jail_msgqqueued": "gauge", "jail_nmsgq": "gauge", "jail_nsem": "gauge",
    "jail_nsemop": "gauge", "jail_nshm": "gauge", "jail_pcpu_used": "gauge",
    "jail_readbps": "gauge", "jail_writebps": "gauge", "jail_readiops": "gauge",
    "jail_writeiops": "gauge",
    "jail_id": "gauge", "jail_num": "gauge",
    # per-jail limits: the unit after _limit
    "jail_cputime_limit_seconds": "gauge", "jail_wallclock_limit_seconds": "gauge",
    "jail_memoryuse_limit_bytes": "gauge", "jail_datasize_limit_bytes": "gauge",
    "jail_stacksize_limit_bytes": "gauge", "jail_coredumpsize_limit_bytes": "gauge",
    "jail_memorylocked_limit_bytes": "gauge", "jail_vmemoryuse_limit_bytes": "gauge",
    "jail_swapuse_limit_bytes": "gauge", "jail_msgqsize_limit_bytes": "gauge",
    "jail_shmsize_limit_bytes": "gauge",
    "jail_maxproc_limit": "gauge", "jail_openfiles_limit": "gauge",
    "jail_pseudoterminals_limit": "gauge", "jail_nthr_limit": "gauge",
    "jail_msgqqueued_limit": "gauge", "jail_nmsgq_limit": "gauge", "jail_nsem_limit": "gauge",
    "jail_nsemop_limit": "gauge", "jail_nshm_limit": "gauge", "jail_pcpu_limit": "gauge",
    "jail_readbps_limit": "gauge", "jail_writebps_limit": "gauge",
    "jail_readiops_limit": "gauge", "jail_writeiops_limit": "gauge",
    # the daemon
    "rctlpolicy_rule_info": "gauge",
    "rctlpolicy_build_info": "gauge",
    "rctlpolicy_racct_enabled": "gauge",
    "rctlpolicy_config_last_reload_successful": "gauge",
    "rctlpolicy_config_last_reload_success_timestamp_seconds": "gauge",
    "rctlpolicy_rules": "gauge",
    "rctlpolicy_config_reload_pending": "gauge",
    "rctlpolicy_devd_connected": "gauge",
    "rctlpolicy_devd_reconnects_total": "counter",
    "rctlpolicy_devd_receiving": "gauge",
    "rctlpolicy_devd_records_dropped_total": "counter",
    "rctlpolicy_kernel_rules_lost_total": "counter",
    "rctlpolicy_events_total": "counter",
    "rctlpolicy_actions_total": "counter",
    "rctlpolicy_action_duration_seconds": "histogram",
    "rctlpolicy_exhausted_actions": "gauge",
    "rctlpolicy_actions_running": "gauge",
    "rctlpolicy_actions_running_limit": "gauge",
    "rctlpolicy_actions_delayed_total": "counter",
    "rctlpolicy_history_samples_total": "counter",
    "rctlpolicy_history_dropped_total": "counter",
    "rctlpolicy_history_paused": "gauge",
    "rctlpolicy_process_cpu_seconds_total": "counter",
    "rctlpolicy_process_resident_memory_bytes": "gauge",
    "rctlpolicy_process_start_time_seconds": "gauge",
    "rctlpolicy_process_open_fds": "gauge",
    "rctlpolicy_web_connections_open": "gauge",
    "rctlpolicy_web_connections_limit": "gauge",
    "rctlpolicy_web_connections_evicted_total": "counter",
    "rctlpolicy_web_connections_refused_total": "counter",
    "rctlpolicy_web_tls_handshake_timeouts_total": "counter",
    "rctlpolicy_web_auth_failures_total": "counter",
    "rctlpolicy_web_requests_too_large_total": "counter",
}  # fmt: skip


def test_the_exported_families_are_exactly_the_contract() -> None:
    assert len(mn.ALL_METRICS) == len(set(mn.ALL_METRICS))
    assert {name: str(kind) for name, kind in mn.METRIC_TYPES.items()} == EXPECTED_FAMILIES
    assert tuple(spec.name for spec in mn.METRIC_SPECS) == mn.ALL_METRICS


def test_labels() -> None:
    assert mn.metric_spec("jail_memoryuse_bytes").labels == ("name",)
    assert mn.metric_spec("jail_memoryuse_limit_bytes").labels == ("name", "action", "per")
    assert mn.metric_spec("rctlpolicy_rule_info").labels == (
        "subject", "subject_id", "resource", "action", "per",
    )  # fmt: skip
    assert mn.metric_spec("rctlpolicy_events_total").labels == ("outcome",)
    assert mn.metric_spec("rctlpolicy_actions_total").labels == ("name", "resource", "outcome")
    assert mn.metric_spec("rctlpolicy_exhausted_actions").labels == ("name", "resource", "jail")
    assert mn.metric_spec("rctlpolicy_build_info").labels == ("version",)
    assert mn.sample_labels("rctlpolicy_action_duration_seconds_bucket") == {"le"}
    assert mn.sample_labels("rctlpolicy_action_duration_seconds_sum") == set()
    with pytest.raises(KeyError):
        mn.sample_labels("rctlpolicy_action_duration_seconds")  # a family, not a series


def test_histogram_series_names() -> None:
    assert {
        "rctlpolicy_action_duration_seconds_bucket",
        "rctlpolicy_action_duration_seconds_sum",
        "rctlpolicy_action_duration_seconds_count",
    } <= mn.ALL_SAMPLE_NAMES
    assert "rctlpolicy_action_duration_seconds" not in mn.ALL_SAMPLE_NAMES


_UNIT_SUFFIX = {Unit.BYTES: "_bytes", Unit.SECONDS: "_seconds"}


@pytest.mark.parametrize("resource", list(Resource), ids=str)
def test_every_resource_has_a_usage_and_a_limit_family(resource: Resource) -> None:
    metrics = mn.resource_metrics(resource)
    assert mn.resource_metrics(str(resource)) == metrics
    assert metrics.resource is resource
    suffix = _UNIT_SUFFIX.get(resource.info.unit, "")
    if resource is Resource.PCPU:
        assert metrics.usage == "jail_pcpu_used"  # jail_exporter's name
    elif resource.info.unit is Unit.SECONDS:
        assert metrics.usage == f"jail_{resource}{suffix}_total"
        assert metrics.usage_type is mn.MetricType.COUNTER
    else:
        assert metrics.usage == f"jail_{resource}{suffix}"
    assert metrics.limit == f"jail_{resource}_limit{suffix}"
    assert mn.METRIC_TYPES[metrics.usage] is metrics.usage_type
    assert mn.METRIC_TYPES[metrics.limit] is mn.MetricType.GAUGE


def test_resource_metrics_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="memoryuze"):
        mn.resource_metrics("memoryuze")


# --- as prometheus_client exposes them ---------------------------------------------------


class _EverythingOnce:
    """One sample of every family, built the way an exporter's collect() builds them."""

    def collect(self) -> Iterator[Metric]:
        for spec in mn.METRIC_SPECS:
            values = [f"v{i}" for i in range(len(spec.labels))]
            family: Metric
            if spec.type is mn.MetricType.COUNTER:
                family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
                family.add_metric(values, 1)
            elif spec.type is mn.MetricType.GAUGE:
                family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
                family.add_metric(values, 1)
            else:
                family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
                family.add_metric(values, buckets=[("1.0", 1), ("+Inf", 2)], sum_value=3)
            yield family


@pytest.fixture(scope="module")
def exposition() -> bytes:
    registry = CollectorRegistry()
    registry.register(_EverythingOnce())
    return generate_latest(registry)


def test_prometheus_client_exposes_exactly_the_constant_names(exposition: bytes) -> None:
    samples = {
        re.split(r"[{ ]", line)[0]
        for line in exposition.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert samples == mn.ALL_SAMPLE_NAMES


def test_promtool_finds_no_naming_problems(exposition: bytes) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; dev/system-tools)")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
