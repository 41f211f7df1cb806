"""Every metric family rctlpolicy exports: names, types, help texts and label names.

This is the one table the exporter, the Grafana dashboard (contrib/grafana/rctlpolicy.json) and
the alert rules (contrib/prometheus/rctlpolicy-alerts.yml) agree on; their tests check every
name they use against `ALL_METRICS`, so a renamed metric is a failing test, not a blank panel.

Per-jail usage follows sysutils/jail_exporter (phyber/jail_exporter, src/exporter.rs) name for
name, `name` label included, so dashboards written for it keep working: `jail_<resource>` with
the unit appended (`jail_memoryuse_bytes`), the two cumulative times as counters
(`jail_cputime_seconds_total`, `jail_wallclock_seconds_total`) and pcpu as `jail_pcpu_used`.
Limits move the unit after `_limit` (`jail_memoryuse_limit_bytes`) as Prometheus' naming
practice puts the unit last.

Counter names keep their `_total`: prometheus_client's CounterMetricFamily strips it from the
family name and puts it back on the sample, so the constant is what PromQL sees either way.
The values of the `outcome` labels belong to the code that counts them (rctlpolicy.daemonmetrics).

The tests check the dashboards' and alert rules' expressions against this table with a small
PromQL scanner of their own (tests/promql.py).

Pure: no I/O, no prometheus_client import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rctlpolicy.model import Resource


class MetricType(StrEnum):
    """A family's type, spelled as in the text exposition format's `# TYPE` line."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric family."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The series names a query can use: a histogram's three, otherwise the name itself."""
        if self.type is MetricType.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


# Label names shared by several families.
LABEL_JAIL_NAME = "name"  # jail_exporter's label for the jail name
LIMIT_LABELS = ("name", "action", "per")

# Per-jail usage (jail_exporter's names), one per RACCT resource.
JAIL_CPUTIME_SECONDS_TOTAL = "jail_cputime_seconds_total"
JAIL_DATASIZE_BYTES = "jail_datasize_bytes"
JAIL_STACKSIZE_BYTES = "jail_stacksize_bytes"
JAIL_COREDUMPSIZE_BYTES = "jail_coredumpsize_bytes"
JAIL_MEMORYUSE_BYTES = "jail_memoryuse_bytes"
JAIL_MEMORYLOCKED_BYTES = "jail_memorylocked_bytes"
JAIL_MAXPROC = "jail_maxproc"
JAIL_OPENFILES = "jail_openfiles"
JAIL_VMEMORYUSE_BYTES = "jail_vmemoryuse_bytes"
JAIL_PSEUDOTERMINALS = "jail_pseudoterminals"
JAIL_SWAPUSE_BYTES = "jail_swapuse_bytes"
JAIL_NTHR = "jail_nthr"
JAIL_MSGQQUEUED = "jail_msgqqueued"
JAIL_MSGQSIZE_BYTES = "jail_msgqsize_bytes"
JAIL_NMSGQ = "jail_nmsgq"
JAIL_NSEM = "jail_nsem"
JAIL_NSEMOP = "jail_nsemop"
JAIL_NSHM = "jail_nshm"
JAIL_SHMSIZE_BYTES = "jail_shmsize_bytes"
JAIL_WALLCLOCK_SECONDS_TOTAL = "jail_wallclock_seconds_total"
JAIL_PCPU_USED = "jail_pcpu_used"
JAIL_READBPS = "jail_readbps"
JAIL_WRITEBPS = "jail_writebps"
JAIL_READIOPS = "jail_readiops"
JAIL_WRITEIOPS = "jail_writeiops"

# Per-jail limits: the amount of each jail rule in force, labelled {name, action, per}.
JAIL_CPUTIME_LIMIT_SECONDS = "jail_cputime_limit_seconds"
JAIL_DATASIZE_LIMIT_BYTES = "jail_datasize_limit_bytes"
JAIL_STACKSIZE_LIMIT_BYTES = "jail_stacksize_limit_bytes"
JAIL_COREDUMPSIZE_LIMIT_BYTES = "jail_coredumpsize_limit_bytes"
JAIL_MEMORYUSE_LIMIT_BYTES = "jail_memoryuse_limit_bytes"
JAIL_MEMORYLOCKED_LIMIT_BYTES = "jail_memorylocked_limit_bytes"
JAIL_MAXPROC_LIMIT = "jail_maxproc_limit"
JAIL_OPENFILES_LIMIT = "jail_openfiles_limit"
JAIL_VMEMORYUSE_LIMIT_BYTES = "jail_vmemoryuse_limit_bytes"
JAIL_PSEUDOTERMINALS_LIMIT = "jail_pseudoterminals_limit"
JAIL_SWAPUSE_LIMIT_BYTES = "jail_swapuse_limit_bytes"
JAIL_NTHR_LIMIT = "jail_nthr_limit"
JAIL_MSGQQUEUED_LIMIT = "jail_msgqqueued_limit"
JAIL_MSGQSIZE_LIMIT_BYTES = "jail_msgqsize_limit_bytes"
JAIL_NMSGQ_LIMIT = "jail_nmsgq_limit"
JAIL_NSEM_LIMIT = "jail_nsem_limit"
JAIL_NSEMOP_LIMIT = "jail_nsemop_limit"
JAIL_NSHM_LIMIT = "jail_nshm_limit"
JAIL_SHMSIZE_LIMIT_BYTES = "jail_shmsize_limit_bytes"
JAIL_WALLCLOCK_LIMIT_SECONDS = "jail_wallclock_limit_seconds"
JAIL_PCPU_LIMIT = "jail_pcpu_limit"
JAIL_READBPS_LIMIT = "jail_readbps_limit"
JAIL_WRITEBPS_LIMIT = "jail_writebps_limit"
JAIL_READIOPS_LIMIT = "jail_readiops_limit"
JAIL_WRITEIOPS_LIMIT = "jail_writeiops_limit"

# Jails (jail_exporter's names).
JAIL_ID = "jail_id"
JAIL_NUM = "jail_num"

# The daemon itself.
RCTLPOLICY_RULE_INFO = "rctlpolicy_rule_info"
RCTLPOLICY_BUILD_INFO = "rctlpolicy_build_info"
RCTLPOLICY_RACCT_ENABLED = "rctlpolicy_racct_enabled"
RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESSFUL = "rctlpolicy_config_last_reload_successful"
RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = (
    "rctlpolicy_config_last_reload_success_timestamp_seconds"
)
RCTLPOLICY_RULES = "rctlpolicy_rules"
RCTLPOLICY_CONFIG_RELOAD_PENDING = "rctlpolicy_config_reload_pending"
RCTLPOLICY_DEVD_CONNECTED = "rctlpolicy_devd_connected"
RCTLPOLICY_DEVD_RECONNECTS_TOTAL = "rctlpolicy_devd_reconnects_total"
RCTLPOLICY_DEVD_RECEIVING = "rctlpolicy_devd_receiving"
RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL = "rctlpolicy_devd_records_dropped_total"
RCTLPOLICY_KERNEL_RULES_LOST_TOTAL = "rctlpolicy_kernel_rules_lost_total"
RCTLPOLICY_EVENTS_TOTAL = "rctlpolicy_events_total"
RCTLPOLICY_ACTIONS_TOTAL = "rctlpolicy_actions_total"
RCTLPOLICY_ACTION_DURATION_SECONDS = "rctlpolicy_action_duration_seconds"
RCTLPOLICY_EXHAUSTED_ACTIONS = "rctlpolicy_exhausted_actions"
RCTLPOLICY_ACTIONS_RUNNING = "rctlpolicy_actions_running"
RCTLPOLICY_ACTIONS_RUNNING_LIMIT = "rctlpolicy_actions_running_limit"
RCTLPOLICY_ACTIONS_DELAYED_TOTAL = "rctlpolicy_actions_delayed_total"
RCTLPOLICY_HISTORY_SAMPLES_TOTAL = "rctlpolicy_history_samples_total"
RCTLPOLICY_HISTORY_DROPPED_TOTAL = "rctlpolicy_history_dropped_total"
RCTLPOLICY_HISTORY_PAUSED = "rctlpolicy_history_paused"
# prometheus_client's ProcessCollector reads Linux /proc and reports nothing on FreeBSD, so the
# daemon measures itself under its own prefix.
RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL = "rctlpolicy_process_cpu_seconds_total"
RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES = "rctlpolicy_process_resident_memory_bytes"
RCTLPOLICY_PROCESS_START_TIME_SECONDS = "rctlpolicy_process_start_time_seconds"
RCTLPOLICY_PROCESS_OPEN_FDS = "rctlpolicy_process_open_fds"

# The metrics endpoint itself (rctlpolicy.web): how it holds up against its clients.
RCTLPOLICY_WEB_CONNECTIONS_OPEN = "rctlpolicy_web_connections_open"
RCTLPOLICY_WEB_CONNECTIONS_LIMIT = "rctlpolicy_web_connections_limit"
RCTLPOLICY_WEB_CONNECTIONS_EVICTED_TOTAL = "rctlpolicy_web_connections_evicted_total"
RCTLPOLICY_WEB_CONNECTIONS_REFUSED_TOTAL = "rctlpolicy_web_connections_refused_total"
RCTLPOLICY_WEB_TLS_HANDSHAKE_TIMEOUTS_TOTAL = "rctlpolicy_web_tls_handshake_timeouts_total"
RCTLPOLICY_WEB_AUTH_FAILURES_TOTAL = "rctlpolicy_web_auth_failures_total"
RCTLPOLICY_WEB_REQUESTS_TOO_LARGE_TOTAL = "rctlpolicy_web_requests_too_large_total"


@dataclass(frozen=True, slots=True)
class ResourceMetrics:
    """The two per-jail families of one RACCT resource."""

    resource: Resource
    usage: str
    limit: str
    usage_type: MetricType
    #: The usage family's help text (rctl(8)'s wording, as jail_exporter uses it).
    description: str


_C, _G = MetricType.COUNTER, MetricType.GAUGE
_R = Resource
_RESOURCE_METRICS: dict[Resource, ResourceMetrics] = {
    m.resource: m
    for m in (
        ResourceMetrics(
            _R.CPUTIME, JAIL_CPUTIME_SECONDS_TOTAL, JAIL_CPUTIME_LIMIT_SECONDS, _C,
            "CPU time, in seconds",
        ),
        ResourceMetrics(
            _R.DATASIZE, JAIL_DATASIZE_BYTES, JAIL_DATASIZE_LIMIT_BYTES, _G,
            "data size, in bytes",
        ),
        ResourceMetrics(
            _R.STACKSIZE, JAIL_STACKSIZE_BYTES, JAIL_STACKSIZE_LIMIT_BYTES, _G,
            "stack size, in bytes",
        ),
        ResourceMetrics(
            _R.COREDUMPSIZE, JAIL_COREDUMPSIZE_BYTES, JAIL_COREDUMPSIZE_LIMIT_BYTES, _G,
            "core dump size, in bytes",
        ),
        ResourceMetrics(
            _R.MEMORYUSE, JAIL_MEMORYUSE_BYTES, JAIL_MEMORYUSE_LIMIT_BYTES, _G,
            "resident set size, in bytes",
        ),
        ResourceMetrics(
            _R.MEMORYLOCKED, JAIL_MEMORYLOCKED_BYTES, JAIL_MEMORYLOCKED_LIMIT_BYTES, _G,
            "locked memory, in bytes",
        ),
        ResourceMetrics(
            _R.MAXPROC, JAIL_MAXPROC, JAIL_MAXPROC_LIMIT, _G,
            "number of processes",
        ),
        ResourceMetrics(
            _R.OPENFILES, JAIL_OPENFILES, JAIL_OPENFILES_LIMIT, _G,
            "file descriptor table size",
        ),
        ResourceMetrics(
            _R.VMEMORYUSE, JAIL_VMEMORYUSE_BYTES, JAIL_VMEMORYUSE_LIMIT_BYTES, _G,
            "address space, in bytes",
        ),
        ResourceMetrics(
            _R.PSEUDOTERMINALS, JAIL_PSEUDOTERMINALS, JAIL_PSEUDOTERMINALS_LIMIT, _G,
            "number of PTYs",
        ),
        ResourceMetrics(
            _R.SWAPUSE, JAIL_SWAPUSE_BYTES, JAIL_SWAPUSE_LIMIT_BYTES, _G,
            "swap space that may be reserved or used, in bytes",
        ),
        ResourceMetrics(
            _R.NTHR, JAIL_NTHR, JAIL_NTHR_LIMIT, _G,
            "number of threads",
        ),
        ResourceMetrics(
            _R.MSGQQUEUED, JAIL_MSGQQUEUED, JAIL_MSGQQUEUED_LIMIT, _G,
            "number of queued SysV messages",
        ),
        ResourceMetrics(
            _R.MSGQSIZE, JAIL_MSGQSIZE_BYTES, JAIL_MSGQSIZE_LIMIT_BYTES, _G,
            "SysV message queue size, in bytes",
        ),
        ResourceMetrics(
            _R.NMSGQ, JAIL_NMSGQ, JAIL_NMSGQ_LIMIT, _G,
            "number of SysV message queues",
        ),
        ResourceMetrics(
            _R.NSEM, JAIL_NSEM, JAIL_NSEM_LIMIT, _G,
            "number of SysV semaphores",
        ),
        ResourceMetrics(
            _R.NSEMOP, JAIL_NSEMOP, JAIL_NSEMOP_LIMIT, _G,
            "number of SysV semaphores modified in a single semop(2) call",
        ),
        ResourceMetrics(
            _R.NSHM, JAIL_NSHM, JAIL_NSHM_LIMIT, _G,
            "number of SysV shared memory segments",
        ),
        ResourceMetrics(
            _R.SHMSIZE, JAIL_SHMSIZE_BYTES, JAIL_SHMSIZE_LIMIT_BYTES, _G,
            "SysV shared memory size, in bytes",
        ),
        ResourceMetrics(
            _R.WALLCLOCK, JAIL_WALLCLOCK_SECONDS_TOTAL, JAIL_WALLCLOCK_LIMIT_SECONDS, _C,
            "wallclock time, in seconds",
        ),
        ResourceMetrics(
            _R.PCPU, JAIL_PCPU_USED, JAIL_PCPU_LIMIT, _G,
            "%CPU, in percents of a single CPU core",
        ),
        ResourceMetrics(
            _R.READBPS, JAIL_READBPS, JAIL_READBPS_LIMIT, _G,
            "filesystem reads, in bytes per second",
        ),
        ResourceMetrics(
            _R.WRITEBPS, JAIL_WRITEBPS, JAIL_WRITEBPS_LIMIT, _G,
            "filesystem writes, in bytes per second",
        ),
        ResourceMetrics(
            _R.READIOPS, JAIL_READIOPS, JAIL_READIOPS_LIMIT, _G,
            "filesystem reads, in operations per second",
        ),
        ResourceMetrics(
            _R.WRITEIOPS, JAIL_WRITEIOPS, JAIL_WRITEIOPS_LIMIT, _G,
            "filesystem writes, in operations per second",
        ),
    )
}  # fmt: skip


def resource_metrics(resource: Resource | str) -> ResourceMetrics:
    """The usage and limit family names (and the usage type) of a resource, by name or enum.

    Raises ValueError for a name that is not a RACCT resource.
    """
    return _RESOURCE_METRICS[Resource(resource)]


def _specs() -> tuple[MetricSpec, ...]:
    specs: list[MetricSpec] = []
    for m in _RESOURCE_METRICS.values():
        specs.append(MetricSpec(m.usage, m.usage_type, m.description, (LABEL_JAIL_NAME,)))
    for m in _RESOURCE_METRICS.values():
        specs.append(
            MetricSpec(
                m.limit,
                _G,
                f"Amount of the jail rule on {m.resource} in force, in the usage's unit "
                "(the strictest of rules that differ only by amount).",
                LIMIT_LABELS,
            )
        )
    specs += [
        MetricSpec(JAIL_ID, _G, "ID of the named jail.", (LABEL_JAIL_NAME,)),
        MetricSpec(JAIL_NUM, _G, "Current number of running jails."),
        MetricSpec(
            RCTLPOLICY_RULE_INFO,
            _G,
            "Always 1: an RCTL rule in force on a user, login class or process "
            "(jail rules are the jail_*_limit families).",
            ("subject", "subject_id", "resource", "action", "per"),
        ),
        MetricSpec(
            RCTLPOLICY_BUILD_INFO, _G, "Always 1, labelled by rctlpolicy's version.", ("version",)
        ),
        MetricSpec(
            RCTLPOLICY_RACCT_ENABLED, _G, "1 if the kernel accounts resources (kern.racct.enable)."
        ),
        MetricSpec(
            RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESSFUL,
            _G,
            "1 if the last configuration (re)load succeeded, 0 if the daemon kept the old one.",
        ),
        MetricSpec(
            RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
            _G,
            "Unix time of the last successful configuration (re)load.",
        ),
        MetricSpec(RCTLPOLICY_RULES, _G, "Number of RCTL rules the policy keeps in force."),
        MetricSpec(
            RCTLPOLICY_CONFIG_RELOAD_PENDING,
            _G,
            "1 while a change to the policy waits to be applied: settling, still being written, "
            "or held back because it would remove most rules.",
        ),
        MetricSpec(
            RCTLPOLICY_DEVD_CONNECTED, _G, "1 while the daemon is connected to devd's socket."
        ),
        MetricSpec(
            RCTLPOLICY_DEVD_RECONNECTS_TOTAL,
            _C,
            "Connections to devd's socket made after the first one.",
        ),
        MetricSpec(
            RCTLPOLICY_DEVD_RECEIVING,
            _G,
            "1 once devd has sent a record on the current connection; 0 while connected but "
            "not yet accepted (devd at its client limit, devd -l) or on a host with no events "
            "since the connection.",
        ),
        MetricSpec(
            RCTLPOLICY_DEVD_RECORDS_DROPPED_TOTAL,
            _C,
            "devd records the daemon received but dropped because its event queue was full.",
        ),
        MetricSpec(
            RCTLPOLICY_KERNEL_RULES_LOST_TOTAL,
            _C,
            "Times the kernel was found without the rules the daemon applied (the simulated "
            "host's state file removed or damaged); the policy is then applied again.",
        ),
        MetricSpec(
            RCTLPOLICY_EVENTS_TOTAL,
            _C,
            "RCTL events received from devd, by what the daemon did with them.",
            ("outcome",),
        ),
        MetricSpec(
            RCTLPOLICY_ACTIONS_TOTAL,
            _C,
            "on_match actions by action name (on_match name, or <jail>-<resource>-<program>), "
            "resource and outcome (run or not).",
            ("name", "resource", "outcome"),
        ),
        MetricSpec(
            RCTLPOLICY_ACTION_DURATION_SECONDS,
            MetricType.HISTOGRAM,
            "Wall time of on_match actions, from start to exit, all actions together.",
        ),
        MetricSpec(
            RCTLPOLICY_EXHAUSTED_ACTIONS,
            _G,
            "1 while an action has reached its max_runs and is suppressed.",
            ("name", "resource", "jail"),
        ),
        MetricSpec(RCTLPOLICY_ACTIONS_RUNNING, _G, "on_match actions running now."),
        MetricSpec(
            RCTLPOLICY_ACTIONS_RUNNING_LIMIT,
            _G,
            "The most on_match actions that run at once; more wait for one to end.",
        ),
        MetricSpec(
            RCTLPOLICY_ACTIONS_DELAYED_TOTAL,
            _C,
            "on_match actions that waited because the running limit was reached.",
        ),
        MetricSpec(
            RCTLPOLICY_HISTORY_SAMPLES_TOTAL,
            _C,
            "Jail usage samples stored in the usage history (one per jail and interval).",
        ),
        MetricSpec(
            RCTLPOLICY_HISTORY_DROPPED_TOTAL,
            _C,
            "Jail usage samples not stored: the history's writer was behind, or storing was "
            "paused.",
        ),
        MetricSpec(
            RCTLPOLICY_HISTORY_PAUSED,
            _G,
            "1 while the usage history cannot be written (a full disk); sampling retries "
            "every interval.",
        ),
        MetricSpec(
            RCTLPOLICY_PROCESS_CPU_SECONDS_TOTAL,
            _C,
            "User and system CPU time of the daemon, in seconds.",
        ),
        MetricSpec(
            RCTLPOLICY_PROCESS_RESIDENT_MEMORY_BYTES, _G, "Resident memory of the daemon, in bytes."
        ),
        MetricSpec(RCTLPOLICY_PROCESS_START_TIME_SECONDS, _G, "Unix time the daemon started at."),
        MetricSpec(
            RCTLPOLICY_PROCESS_OPEN_FDS, _G, "Number of open file descriptors of the daemon."
        ),
        MetricSpec(
            RCTLPOLICY_WEB_CONNECTIONS_OPEN, _G, "Connections to the metrics endpoint open now."
        ),
        MetricSpec(
            RCTLPOLICY_WEB_CONNECTIONS_LIMIT,
            _G,
            "The most connections the metrics endpoint keeps open at once.",
        ),
        MetricSpec(
            RCTLPOLICY_WEB_CONNECTIONS_EVICTED_TOTAL,
            _C,
            "Connections closed to make room for a new one, with the endpoint full: each the "
            "oldest that had not sent an authorised request (slow, stalled or guessing clients).",
        ),
        MetricSpec(
            RCTLPOLICY_WEB_CONNECTIONS_REFUSED_TOTAL,
            _C,
            "Connections closed at once because the endpoint was full of connections being "
            "served or kept alive after an authorised request.",
        ),
        MetricSpec(
            RCTLPOLICY_WEB_TLS_HANDSHAKE_TIMEOUTS_TOTAL,
            _C,
            "TLS handshakes the metrics endpoint gave up on because the client was too slow.",
        ),
        MetricSpec(
            RCTLPOLICY_WEB_AUTH_FAILURES_TOTAL,
            _C,
            "Requests to the metrics endpoint answered 401: no, malformed or wrong credentials.",
        ),
        MetricSpec(
            RCTLPOLICY_WEB_REQUESTS_TOO_LARGE_TOTAL,
            _C,
            "Requests refused (431) because their request line and headers went past the budget.",
        ),
    ]
    return tuple(specs)


#: Every exported family, in exposition order.
METRIC_SPECS: tuple[MetricSpec, ...] = _specs()
#: Every exported family name (for a histogram, its base name).
ALL_METRICS: tuple[str, ...] = tuple(spec.name for spec in METRIC_SPECS)
#: Family name -> type.
METRIC_TYPES: dict[str, MetricType] = {spec.name: spec.type for spec in METRIC_SPECS}
#: Every series name a query may use: family names plus a histogram's _bucket, _sum, _count.
ALL_SAMPLE_NAMES: frozenset[str] = frozenset(
    sample for spec in METRIC_SPECS for sample in spec.sample_names
)


def metric_spec(name: str) -> MetricSpec:
    """The spec of a family by name; KeyError if rctlpolicy does not export it."""
    return _SPECS_BY_NAME[name]


_SPECS_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRIC_SPECS}
_SPECS_BY_SAMPLE: dict[str, MetricSpec] = {
    sample: spec for spec in METRIC_SPECS for sample in spec.sample_names
}


def sample_labels(sample_name: str) -> frozenset[str]:
    """The label names rctlpolicy puts on a series of this name (`le` on a histogram bucket).

    Prometheus adds its target labels (`instance`, `job`) on top. KeyError if rctlpolicy
    exports no such series.
    """
    spec = _SPECS_BY_SAMPLE[sample_name]
    extra = ("le",) if sample_name == f"{spec.name}_bucket" else ()
    return frozenset((*spec.labels, *extra))
