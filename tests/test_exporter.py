"""exporter.py: the collectors over the simulated kernel, each test with a fresh registry.

The kernel is `FreeBSDKernel` over `SimulatedSyscalls` (`open_simulator`), so the families are
built from the same system-call answers a FreeBSD host gives; the host file is edited to make
jails vanish or RACCT go off.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from corpus_host import rule
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from test_cli_kernel import edit_host

from rctlpolicy import metric_names as names
from rctlpolicy.daemonmetrics import DaemonCollector, DaemonStats
from rctlpolicy.exporter import JailCollector
from rctlpolicy.exposition import (
    CLASSIC_CONTENT_TYPE,
    TEXTFILE_MODE,
    classic_text,
    go_integer,
    make_registry,
    renderer,
    write_textfile,
)
from rctlpolicy.kernel import KernelSetup, open_simulator
from rctlpolicy.kernel.base import Jail, RctlCall, SyscallError
from rctlpolicy.kernel.freebsd import FreeBSDKernel
from rctlpolicy.metric_names import METRIC_TYPES, metric_spec, resource_metrics
from rctlpolicy.model import Resource
from rctlpolicy.web.metrics import WebCollector
from rctlpolicy.web.server import ServerStats

PROMTOOL = Path("/usr/bin/promtool")

#: Rules in force for most tests: two jail rules that differ only by amount (one series, the
#: strictest), a per-process deny, and rules on a user, a login class and a process.
RULES = (
    "jail:db1:memoryuse:deny=4294967296",
    "jail:db1:memoryuse:log=3221225472",
    "jail:db1:memoryuse:log=2147483648",
    "jail:db1:vmemoryuse:deny=8589934592/process",
    "jail:web1:maxproc:deny=100",
    "jail:db1:pcpu:deny=90",
    "user:80:maxproc:deny=256",
    "loginclass:daemon:openfiles:deny=65536/process",
    "process:4242:openfiles:deny=1000",
)


@pytest.fixture
def setup(host: Path) -> KernelSetup:
    setup = open_simulator(host)
    for text in RULES:
        setup.kernel.add_rule(rule(text))
    return setup


@pytest.fixture
def stats() -> DaemonStats:
    return DaemonStats(start_time=1_700_000_000.0)


def registry_of(*collectors: Collector) -> CollectorRegistry:
    return make_registry(list(collectors))


def families(registry: CollectorRegistry) -> dict[str, Metric]:
    return {family.name: family for family in registry.collect()}


def samples(registry: CollectorRegistry, sample_name: str) -> dict[tuple[str, ...], float]:
    """label values (in label-name order) -> value, for one series name."""
    found: dict[tuple[str, ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == sample_name:
                found[tuple(sample.labels[k] for k in sorted(sample.labels))] = sample.value
    return found


# --- the jail families --------------------------------------------------------------------------


def test_every_family_has_its_documented_name_type_and_labels(
    setup: KernelSetup, stats: DaemonStats
) -> None:
    stats.count_action("restart-pg", "swapuse", "ok", 1.2)
    registry = registry_of(
        JailCollector(setup.kernel, stats), DaemonCollector(stats), WebCollector(ServerStats())
    )
    seen = set()
    for family in registry.collect():
        # CounterMetricFamily drops `_total` from the family name; the sample keeps it.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        spec = metric_spec(name)
        assert family.type == spec.type.value, name
        for sample in family.samples:
            labels = set(sample.labels) - ({"le"} if family.type == "histogram" else set())
            assert labels == set(spec.labels), (name, sample)
        seen.add(name)
    missing = set(METRIC_TYPES) - seen
    # Limits exist only for resources with a jail rule; RSS only where it can be measured.
    assert all(n.startswith("jail_") and "_limit" in n for n in missing), missing


def test_jail_usage_is_jail_exporters(setup: KernelSetup) -> None:
    registry = registry_of(JailCollector(setup.kernel))
    found = families(registry)
    for resource in Resource:
        spec = resource_metrics(resource)
        family = found[spec.usage.removesuffix("_total")]
        assert family.type == spec.usage_type.value
    assert found["jail_cputime_seconds"].type == "counter"
    assert found["jail_wallclock_seconds"].type == "counter"
    assert samples(registry, names.JAIL_CPUTIME_SECONDS_TOTAL) == {
        ("db1",): 86400.0,
        ("web1",): 3600.0,
        ("web2",): 1800.0,
    }
    assert samples(registry, names.JAIL_MEMORYUSE_BYTES)[("db1",)] == 3865470566
    assert samples(registry, names.JAIL_PCPU_USED)[("db1",)] == 85
    assert samples(registry, names.JAIL_ID) == {("db1",): 3, ("web1",): 4, ("web2",): 5}
    assert samples(registry, names.JAIL_NUM) == {(): 3}


def test_limits_carry_name_action_per_and_the_strictest_amount(setup: KernelSetup) -> None:
    registry = registry_of(JailCollector(setup.kernel))
    # label order: action, name, per
    assert samples(registry, names.JAIL_MEMORYUSE_LIMIT_BYTES) == {
        ("deny", "db1", "jail"): 4294967296,
        ("log", "db1", "jail"): 2147483648,  # of log=3g and log=2g, the strictest
    }
    assert samples(registry, names.JAIL_VMEMORYUSE_LIMIT_BYTES) == {
        ("deny", "db1", "process"): 8589934592
    }
    assert samples(registry, names.JAIL_MAXPROC_LIMIT) == {("deny", "web1", "jail"): 100}
    assert samples(registry, names.JAIL_PCPU_LIMIT) == {("deny", "db1", "jail"): 90}


def test_other_rules_are_info_series_without_rule_text(setup: KernelSetup) -> None:
    registry = registry_of(JailCollector(setup.kernel))
    # label order: action, per, resource, subject, subject_id
    assert samples(registry, names.RCTLPOLICY_RULE_INFO) == {
        ("deny", "user", "maxproc", "user", "80"): 1,
        ("deny", "process", "openfiles", "loginclass", "daemon"): 1,
        ("deny", "process", "openfiles", "process", "4242"): 1,
    }
    for family in registry.collect():
        for sample in family.samples:
            for value in sample.labels.values():
                assert "=" not in value and value.count(":") == 0, (sample, value)


def test_no_created_series(setup: KernelSetup, stats: DaemonStats) -> None:
    stats.count_event("handled")
    registry = registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats))
    for text in (classic_text(registry), renderer(registry)("application/openmetrics-text")[0]):
        assert b"_created" not in text


def stop_jail(host: Path, name: str) -> None:
    """Edit the host file as if the jail had been stopped: it, its processes, its usage."""
    data = yaml.safe_load(host.read_text())
    del data["jails"][name]
    data["processes"] = {
        pid: process for pid, process in data["processes"].items() if process.get("jail") != name
    }
    data["usage"].pop(f"jail:{name}", None)
    host.write_text(yaml.safe_dump(data))


def test_a_jail_that_stops_disappears_from_the_next_scrape(setup: KernelSetup, host: Path) -> None:
    registry = registry_of(JailCollector(setup.kernel))
    assert b'name="web1"' in classic_text(registry)
    stop_jail(host, "web1")  # its rule stays in the kernel, as on FreeBSD
    assert "jail:web1:maxproc:deny=100" in [r.canonical for r in setup.kernel.rules()]
    assert b'name="web1"' not in classic_text(registry)  # id, usage and limits alike
    assert samples(registry, names.JAIL_NUM) == {(): 2}
    assert samples(registry, names.JAIL_MAXPROC_LIMIT) == {}
    assert set(samples(registry, names.JAIL_MEMORYUSE_BYTES)) == {("db1",), ("web2",)}


def test_racct_disabled_is_reported_not_a_crash(
    setup: KernelSetup, host: Path, stats: DaemonStats
) -> None:
    registry = registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats))
    assert samples(registry, names.RCTLPOLICY_RACCT_ENABLED) == {(): 1}
    edit_host(host, racct_enable=False)
    assert samples(registry, names.RCTLPOLICY_RACCT_ENABLED) == {(): 0}
    assert samples(registry, names.JAIL_MEMORYUSE_BYTES) == {}
    assert samples(registry, names.RCTLPOLICY_RULE_INFO) == {}
    assert samples(registry, names.JAIL_NUM) == {(): 3}  # jails are still listed
    edit_host(host, racct_enable=True)
    assert samples(registry, names.RCTLPOLICY_RACCT_ENABLED) == {(): 1}


def test_a_broken_host_file_empties_the_jail_families(
    setup: KernelSetup, host: Path, stats: DaemonStats
) -> None:
    registry = registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats))
    host.write_text("jails: [not, a, mapping]\n")
    assert samples(registry, names.JAIL_NUM) == {(): 0}
    assert samples(registry, names.RCTLPOLICY_RACCT_ENABLED) == {(): 0}
    assert samples(registry, names.RCTLPOLICY_BUILD_INFO) != {}


# --- the daemon's families ----------------------------------------------------------------------


def test_daemon_counters_and_histogram(stats: DaemonStats) -> None:
    stats.count_event("handled")
    stats.count_event("handled")
    stats.count_action("restart-pg", "swapuse", "ok", 0.3)
    stats.count_action("restart-pg", "swapuse", "failed", 7.0)
    stats.reloaded(True, rules=12, when=1_700_000_100.0)
    stats.devd_state(True, reconnected=True)
    registry = registry_of(DaemonCollector(stats))
    assert samples(registry, names.RCTLPOLICY_EVENTS_TOTAL)[("handled",)] == 2
    assert samples(registry, names.RCTLPOLICY_EVENTS_TOTAL)[("malformed",)] == 0
    assert samples(registry, names.RCTLPOLICY_ACTIONS_TOTAL) == {
        ("restart-pg", "failed", "swapuse"): 1,
        ("restart-pg", "ok", "swapuse"): 1,
    }
    buckets = samples(registry, "rctlpolicy_action_duration_seconds_bucket")
    assert buckets[("0.1",)] == 0
    assert buckets[("0.5",)] == 1
    assert buckets[("10.0",)] == 2
    assert buckets[("+Inf",)] == 2
    assert samples(registry, "rctlpolicy_action_duration_seconds_sum") == {(): 7.3}
    assert samples(registry, names.RCTLPOLICY_RULES) == {(): 12}
    assert samples(registry, names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL) == {(): 1}
    assert samples(registry, names.RCTLPOLICY_PROCESS_START_TIME_SECONDS) == {(): 1_700_000_000.0}


# --- formats ------------------------------------------------------------------------------------


def test_classic_text_unless_openmetrics_is_asked_for(
    setup: KernelSetup, stats: DaemonStats
) -> None:
    render = renderer(registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats)))
    for accept in (None, "", "*/*", "text/plain", "text/plain;version=0.0.4"):
        body, content_type = render(accept)
        assert content_type == CLASSIC_CONTENT_TYPE
        assert not body.endswith(b"# EOF\n")
        parsed = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "jail_memoryuse_bytes" in parsed
    body, content_type = render(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"# TYPE jail_cputime_seconds counter\n" in body


@pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool is not installed")
def test_promtool_finds_nothing_to_lint(setup: KernelSetup, stats: DaemonStats) -> None:
    stats.count_action("restart-pg", "swapuse", "ok", 1.0)
    stats.exhausted = frozenset({("restart-pg", "swapuse", "db1")})
    text = classic_text(registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats)))
    checked = subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input=text,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


# --- the textfile -------------------------------------------------------------------------------


def test_textfile_is_complete_world_readable_and_leaves_no_temp(
    setup: KernelSetup, tmp_path: Path
) -> None:
    registry = registry_of(JailCollector(setup.kernel))
    out = tmp_path / "textfiles"
    out.mkdir()
    target = out / "rctlpolicy.prom"
    write_textfile(registry, target)
    assert target.read_bytes() == classic_text(registry)
    assert stat.S_IMODE(target.stat().st_mode) == TEXTFILE_MODE
    assert os.listdir(out) == ["rctlpolicy.prom"]


class FailingCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("scrape failed")


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "rctlpolicy.prom"
    target.write_bytes(b"# old\n")
    with pytest.raises(RuntimeError):
        write_textfile(registry_of(FailingCollector()), target)
    assert target.read_bytes() == b"# old\n"
    assert os.listdir(out) == ["rctlpolicy.prom"]


def test_a_reader_never_sees_half_a_textfile(setup: KernelSetup, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "rctlpolicy.prom"
    registry = registry_of(JailCollector(setup.kernel))
    expected = classic_text(registry)
    write_textfile(registry, target)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(30):
                write_textfile(registry, target)
        except BaseException as error:  # reported by the test below
            errors.append(error)
        finally:
            done.set()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    reads = 0
    while not done.is_set() or reads < 50:
        assert target.read_bytes() == expected
        reads += 1
    for thread in threads:
        thread.join(10)
    assert not errors
    assert os.listdir(out) == ["rctlpolicy.prom"]


# --- the classic text written straight from the kernel's answers -------------------------------


class Answers:
    """A system-call layer that answers from strings: `rctl_get_racct` per filter text (a
    missing one fails with ESRCH, as for a jail that stopped between listing and asking) and
    one `rctl_get_rules` listing."""

    def __init__(self, racct: dict[str, str], rules: str = "") -> None:
        self.racct = racct
        self.rules = rules

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        text = inbuf.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if call is RctlCall.GET_RULES:
            return self.rules.encode()
        answer = self.racct.get(text.removesuffix(":"))  # a filter's text: jail:NAME:
        if answer is None:
            raise SyscallError("ESRCH")
        return answer.encode("utf-8", "surrogateescape")


def replayed_kernel(jails: list[Jail], racct: dict[str, str], rules: str = "") -> FreeBSDKernel:
    return FreeBSDKernel(Answers(racct, rules), lambda: jails, lambda: True)


def test_classic_text_is_generate_latest_byte_for_byte(
    setup: KernelSetup, stats: DaemonStats
) -> None:
    stats.count_event("handled")
    stats.count_action("restart-pg", "swapuse", "ok", 1.2)
    stats.exhausted = frozenset({("restart-pg", "swapuse", 'd"b\\1')})
    registry = registry_of(JailCollector(setup.kernel, stats), DaemonCollector(stats))
    text = classic_text(registry)
    assert b"jail_memoryuse_bytes{" in text and b"rctlpolicy_rule_info{" in text
    assert b"jail_memoryuse_limit_bytes{" in text
    # The process metrics (CPU, memory, fds) move between two scrapes: compared without them.
    moving = re.compile(rb"^rctlpolicy_process_(cpu_seconds|resident|open_fds).*\n", re.M)
    assert moving.sub(b"", text) == moving.sub(b"", generate_latest(registry))


#: Jail names with what the text format escapes, and what it does not.
jail_names = st.text(
    st.sampled_from(["a", "b", "z", "0", "9", "-", "_", ".", '"', "\\", "\n", " ", "é", "{", "}"]),
    min_size=1,
    max_size=6,
)
#: Usage values as the kernel prints them, and text a broken kernel might.
values = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(0, 2**63 - 1).map(str),
    st.integers(-(2**63), 2**64).map(str),
    st.sampled_from(["0", "-0", "007", "1000000", "9999999", "10000000000000000", "x", ""]),
)
resource_words = st.sampled_from([*(r.value for r in Resource), "newresource", "Bad", ""])


@st.composite
def answers(draw: st.DrawFn, words: list[str] | None) -> str:
    """An rctl_get_racct answer: of the given names (the kernel's shape), or of any."""
    if words is None:
        words = draw(st.lists(resource_words, max_size=6))
    pairs = [f"{word}={draw(values)}" for word in words]
    if draw(st.integers(0, 9)) == 0:
        pairs.insert(draw(st.integers(0, len(pairs))), draw(st.sampled_from(["", "a", "=1"])))
    return ",".join(pairs)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[list[Jail], dict[str, str], str]:
    names_ = draw(st.lists(jail_names, max_size=8, unique=True))
    jails = [Jail(index + 1, name) for index, name in enumerate(names_)]
    kernel_words = [r.value for r in Resource]
    if draw(st.booleans()):
        kernel_words = draw(st.permutations([*kernel_words[:5], "newresource"]))
    racct: dict[str, str] = {}
    for jail in jails:
        if draw(st.integers(0, 7)) == 0:
            continue  # gone between the listing and the question
        same = draw(st.integers(0, 5)) != 0
        racct[f"jail:{jail.name}"] = draw(answers(kernel_words if same else None))
    plain = [jail.name for jail in jails if jail.name.isalnum() and jail.name.isascii()]
    rules = [
        f"jail:{name}:{resource}:{action}={amount}{per}"
        for name in plain
        for resource, action, amount, per in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["memoryuse", "maxproc", "pcpu"]),
                    st.sampled_from(["deny", "log"]),
                    st.integers(1, 90),
                    st.sampled_from(["", "/process"]),
                ),
                max_size=3,
            )
        )
    ]
    rules += ["jail:gone:maxproc:deny=5", "user:80:maxproc:deny=10", "loginclass:a:nthr:log=7"]
    return jails, racct, ",".join(draw(st.permutations(rules)))


@given(hosts())
@settings(max_examples=300, deadline=None)
def test_classic_text_from_answers_is_what_the_families_give(
    host: tuple[list[Jail], dict[str, str], str],
) -> None:
    jails, racct, rules = host
    registry = registry_of(JailCollector(replayed_kernel(jails, racct, rules)))
    assert classic_text(registry) == generate_latest(registry)


@given(st.one_of(st.integers(-(2**70), 2**70).map(str), values.filter(bool)))
@settings(max_examples=2000, deadline=None)
def test_go_integer_is_float_to_go_string(text: str) -> None:
    try:
        expected = floatToGoString(int(text))
    except ValueError:
        return  # not an integer: the pattern that reads answers never passes one
    assert go_integer(text) == expected


def test_every_jail_of_one_shape_and_a_stranger(stats: DaemonStats) -> None:
    shape = ",".join(f"{r.value}={i * 1000}" for i, r in enumerate(Resource))
    jails = [Jail(1, "a"), Jail(2, "b"), Jail(3, "c"), Jail(4, "d")]
    racct = {
        "jail:a": shape,
        "jail:b": shape.replace("=0,", "=12345678,"),
        "jail:c": "cputime=5,newresource=7",
        "jail:d": "cputime=oops",
    }
    registry = registry_of(JailCollector(replayed_kernel(jails, racct), stats))
    text = classic_text(registry)
    assert text == generate_latest(registry)
    assert b'jail_cputime_seconds_total{name="c"} 5.0\n' in text
    assert b'name="d"} ' in text and b'jail_cputime_seconds_total{name="d"}' not in text
    assert b'jail_datasize_bytes{name="b"} 1000.0\n' in text


def test_a_scrape_does_not_hold_the_stats_lock_while_formatting(stats: DaemonStats) -> None:
    families_ = DaemonCollector(stats).collect()
    next(families_)  # the consumer is between two families
    assert stats.lock.acquire(timeout=5), "the scrape kept the lock"
    stats.lock.release()
    stats.count_event("handled")  # counted meanwhile: in the next scrape, not this one
    rest = {family.name: family for family in families_}
    assert all(s.value == 0 for s in rest["rctlpolicy_events"].samples)


def test_stats_snapshot_is_a_copy(stats: DaemonStats) -> None:
    stats.count_event("handled")
    copy = stats.snapshot()
    stats.count_event("handled")
    assert copy.events["handled"] == 1 and stats.events["handled"] == 2
    assert copy.lock is not stats.lock


def test_a_scrape_reads_the_host_file_once_even_just_after_an_edit(
    setup: KernelSetup, host: Path
) -> None:
    simulator = setup.simulator
    assert simulator is not None
    registry = registry_of(JailCollector(setup.kernel))
    for scrape in (classic_text, lambda r: list(r.collect())):
        edit_host(host, racct_enable=True)  # just written: every unpinned call would read it
        reads = simulator.host_file.reads
        scrape(registry)
        assert simulator.host_file.reads - reads == 1
