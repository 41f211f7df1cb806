"""usage.py: `rctl -hu` lines, and the table of every jail against its limits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from corpus_host import rule

from rctlpolicy.kernel import KernelSetup, open_simulator
from rctlpolicy.kernel.base import RctlCall, RctlSyscalls
from rctlpolicy.kernel.freebsd import FreeBSDKernel
from rctlpolicy.model import Filter, Resource, SubjectType
from rctlpolicy.usage import HEADER, JailRow, JailTable, jail_usage_table, usage_lines

GIB = 1 << 30


@pytest.fixture
def setup(host: Path) -> KernelSetup:
    return open_simulator(host)


def test_usage_lines_are_rctl_hu() -> None:
    usage = {Resource.CPUTIME: 86400, Resource.MEMORYUSE: 3865470566, Resource.MAXPROC: 24}
    # rctl -h humanizes every resource, seconds included (humanize_number knows no units).
    assert usage_lines(usage) == "cputime=84K\nmemoryuse=3686M\nmaxproc=24\n"
    assert usage_lines(usage, human=False) == ("cputime=86400\nmemoryuse=3865470566\nmaxproc=24\n")


def test_usage_of_a_jail_through_the_kernel_has_every_resource(setup: KernelSetup) -> None:
    usage = setup.kernel.usage(Filter(SubjectType.JAIL, "db1"))
    assert list(usage) == list(Resource)
    lines = usage_lines(usage).splitlines()
    assert lines[0] == "cputime=84K"
    assert "memoryuse=3686M" in lines


def row(usage: dict[Resource, int], *texts: str) -> JailRow:
    return JailRow("db1", 3, usage, tuple(rule(text) for text in texts))


def test_the_strictest_jail_deny_is_the_limit() -> None:
    jail = row(
        {Resource.MEMORYUSE: 3 * GIB},
        "jail:db1:memoryuse:deny=4294967296",
        "jail:db1:memoryuse:log=3221225472",
        "jail:db1:memoryuse:deny=1073741824/process",  # per process: not the jail's total
    )
    assert jail.deny(Resource.MEMORYUSE) == 4 * GIB
    assert jail.percent(Resource.MEMORYUSE) == pytest.approx(75.0)
    assert [r.canonical for r in jail.others(Resource.MEMORYUSE)] == [
        "jail:db1:memoryuse:log=3221225472",
        "jail:db1:memoryuse:deny=1073741824/process",
    ]
    assert jail.deny(Resource.MAXPROC) is None
    assert jail.percent(Resource.MAXPROC) is None


@pytest.mark.parametrize(("used", "expected"), [(0, 0.0), (5, 100.0)])
def test_a_zero_deny_is_full_once_anything_is_used(used: int, expected: float) -> None:
    assert (
        row({Resource.MAXPROC: used}, "jail:db1:maxproc:deny=0").percent(Resource.MAXPROC)
        == expected
    )


def test_the_table_lines_up_usage_limit_and_percentage() -> None:
    table = JailTable(
        (
            row(
                {Resource.CPUTIME: 86400, Resource.MEMORYUSE: 3865470566},
                "jail:db1:memoryuse:deny=4294967296",
                "jail:db1:memoryuse:log=3221225472",
                "jail:db1:vmemoryuse:deny=8589934592/process",
            ),
            JailRow("web2", 5, {}),
        )
    )
    assert table.render().splitlines() == [
        HEADER,
        # Seconds stay seconds in the table; only bytes are humanized.
        "db1                  3  cputime                 86400            -      -",
        "                        memoryuse               3686M        4096M    90%  log=3072M",
        "                        vmemoryuse                  0            -      -  "
        "deny=8192M/process",
        "web2                 5  (no usage, no limits)",
    ]
    exact = table.render(human=False).splitlines()
    assert exact[2].split()[:4] == ["memoryuse", "3865470566", "4294967296", "90%"]


def test_the_table_as_json() -> None:
    table = JailTable(
        (
            row(
                {Resource.MEMORYUSE: 3 * GIB, Resource.MAXPROC: 10},
                "jail:db1:memoryuse:deny=4294967296",
                "jail:db1:memoryuse:log=3221225472",
            ),
        )
    )
    assert table.as_json() == {
        "jails": [
            {
                "name": "db1",
                "jid": 3,
                "usage": {"memoryuse": 3 * GIB, "maxproc": 10},
                "deny": {"memoryuse": 4 * GIB},
                "percent": {"memoryuse": 75.0},
                "rules": [
                    "jail:db1:memoryuse:deny=4294967296",
                    "jail:db1:memoryuse:log=3221225472",
                ],
            }
        ]
    }


def test_jail_usage_table_from_the_simulated_kernel(setup: KernelSetup) -> None:
    for text in (
        "jail:db1:memoryuse:deny=4294967296",
        "jail:web1:maxproc:deny=34",
        "jail:gone:maxproc:deny=1",  # a jail that is not running: no row
        "user:80:maxproc:deny=100",  # not a jail rule
    ):
        setup.kernel.add_rule(rule(text))
    table = jail_usage_table(setup.kernel)
    assert [(r.name, r.jid) for r in table.rows] == [("db1", 3), ("web1", 4), ("web2", 5)]
    db1, web1, web2 = table.rows
    assert db1.percent(Resource.MEMORYUSE) == pytest.approx(90.0, abs=0.1)
    assert web1.percent(Resource.MAXPROC) == pytest.approx(50.0)
    assert web2.rules == ()


@dataclass
class CountingSyscalls:
    """The system-call layer, counting each call."""

    inner: RctlSyscalls
    calls: Counter[RctlCall] = field(default_factory=Counter)

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        self.calls[call] += 1
        return self.inner.call(call, inbuf, outbuflen)


def test_jail_usage_table_makes_one_listing_and_one_usage_call_per_jail(
    tmp_path: Path,
) -> None:
    host = tmp_path / "host.yaml"
    names = [f"j{i:03d}" for i in range(40)]
    host.write_text(
        yaml.safe_dump(
            {
                "jails": {name: {"jid": i + 1} for i, name in enumerate(names)},
                "usage": {f"jail:{name}": {"maxproc": i} for i, name in enumerate(names)},
            }
        )
    )
    setup = open_simulator(host)
    for i, name in enumerate(names):
        setup.kernel.add_rule(rule(f"jail:{name}:maxproc:deny={2 * i + 2}"))

    counting = CountingSyscalls(setup.syscalls)
    table = jail_usage_table(FreeBSDKernel(counting, setup.kernel.jails, lambda: True))
    assert counting.calls == Counter({RctlCall.GET_RULES: 1, RctlCall.GET_RACCT: len(names)})
    assert [row.deny(Resource.MAXPROC) for row in table.rows] == [2 * i + 2 for i in range(40)]
