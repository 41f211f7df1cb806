"""The simulated kernel through its system calls: raw bytes in, FreeBSD's bytes or errno out."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from corpus_host import corpus_cases

from rctlpolicy.clock import ManualClock
from rctlpolicy.kernel.base import Jail, RctlCall, SyscallError
from rctlpolicy.kernel.hostfile import HostFileError, parse_host
from rctlpolicy.kernel.ruletable import RateWindow
from rctlpolicy.kernel.simulator import (
    MAX_INBUFSIZE,
    SimEvent,
    SimulatedSyscalls,
    events_due,
    format_log_line,
    ratecheck,
    read_inbuf,
)
from rctlpolicy.model import PROCESS_USAGE_RESOURCES, Action, Resource, Rule, SubjectType

BIG = 1 << 17  # rctl(8)'s first buffer size

#: The conformance corpus's host: users www=80 and root=0, group wheel=0, pid 1 exists and
#: 99999 does not, jail db1 has jid 3.
CORPUS_HOST: dict[str, Any] = {
    "users": {"root": 0, "www": 80},
    "groups": {"wheel": 0},
    "loginclasses": ["default", "daemon"],
    "processes": {1: {"comm": "init", "uid": 0}},
    "jails": {"db1": {"jid": 3}},
}


def write_host(path: Path, **changes: Any) -> Path:
    data = {**CORPUS_HOST, **changes}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def host_path(tmp_path: Path) -> Path:
    return write_host(tmp_path / "host.yaml")


@pytest.fixture
def kernel(host_path: Path) -> SimulatedSyscalls:
    return SimulatedSyscalls(host_path)


def z(text: str) -> bytes:
    """What rctl(8) passes: the text and its NUL (inbuflen = strlen + 1)."""
    return text.encode() + b"\0"


def add(kernel: SimulatedSyscalls, *rules: str) -> None:
    for rule in rules:
        kernel.call(RctlCall.ADD_RULE, z(rule), 0)


def listing(kernel: SimulatedSyscalls, rule_filter: str = "::") -> list[str]:
    out = kernel.call(RctlCall.GET_RULES, z(rule_filter), BIG).decode()
    return out.split(",") if out else []


def errno_of(action: Callable[[], object]) -> str:
    with pytest.raises(SyscallError) as caught:
        action()
    return caught.value.errno_name


# --- the common prologue -----------------------------------------------------------------------


@pytest.mark.parametrize("call", list(RctlCall))
def test_racct_disabled_is_enosys_for_every_call(tmp_path: Path, call: RctlCall) -> None:
    kernel = SimulatedSyscalls(write_host(tmp_path / "h.yaml", racct_enable=False))
    assert errno_of(lambda: kernel.call(call, z("user:80:maxproc:deny=1"), BIG)) == "ENOSYS"
    # ENOSYS comes before looking at the input at all
    assert errno_of(lambda: kernel.call(call, b"", BIG)) == "ENOSYS"
    assert not kernel.racct_enabled()


@pytest.mark.parametrize("call", list(RctlCall))
def test_unprivileged_caller_is_eperm(tmp_path: Path, call: RctlCall) -> None:
    kernel = SimulatedSyscalls(write_host(tmp_path / "h.yaml", privileged=False))
    assert errno_of(lambda: kernel.call(call, b"", BIG)) == "EPERM"


@pytest.mark.parametrize("call", list(RctlCall))
@pytest.mark.parametrize(
    ("inbuf", "errno"),
    [
        (b"", "EINVAL"),  # inbuflen 0
        (b"x" * (MAX_INBUFSIZE + 1), "E2BIG"),  # before copyinstr looks for the NUL
        (b"user:80:maxproc:deny=10", "ENAMETOOLONG"),  # no NUL within inbuflen
        (b"jail:\xff\xfe:maxproc:deny=1\0", "EINVAL"),  # not UTF-8 (a simulator limit)
    ],
)
def test_input_buffer_errors(
    kernel: SimulatedSyscalls, call: RctlCall, inbuf: bytes, errno: str
) -> None:
    assert errno_of(lambda: kernel.call(call, inbuf, BIG)) == errno


def test_read_inbuf_limits() -> None:
    longest = "jail:" + "j" * 250 + ":maxproc:deny=" + "1" * (MAX_INBUFSIZE - 1 - 269)
    assert len(z(longest)) == MAX_INBUFSIZE
    assert read_inbuf(z(longest)) == longest
    assert read_inbuf(b"\0") == ""
    assert read_inbuf(b"user\0more\0") == "user"


def test_text_after_an_embedded_nul_is_ignored(kernel: SimulatedSyscalls) -> None:
    kernel.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=10\0garbage", 0)
    assert listing(kernel) == ["user:80:maxproc:deny=10"]


def test_negative_outbuflen_is_a_programming_error(kernel: SimulatedSyscalls) -> None:
    with pytest.raises(ValueError, match="size_t"):
        kernel.call(RctlCall.GET_RULES, z("::"), -1)


# --- the conformance corpus (kernel layer) -----------------------------------------------------


def _corpus_cases() -> list[Any]:
    return [
        pytest.param(row, id=f"{row['mode']}-{row['op']}-{row['rule'][:50]!r}")
        for row in corpus_cases()
        if row["layer"] == "kernel"
    ]


CORPUS_CASES = _corpus_cases()


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus_kernel_layer(kernel: SimulatedSyscalls, case: dict[str, Any]) -> None:
    inbuf = z(case["rule"])
    call = {
        None: RctlCall.ADD_RULE,
        "list": RctlCall.GET_RULES,
        "remove": RctlCall.REMOVE_RULE,
        "usage": RctlCall.GET_RACCT,
        "limits": RctlCall.GET_LIMITS,
    }[case["op"]]
    if case["op"] == "remove":
        add(kernel, case["rule"])  # the corpus assumes a matching rule exists
    if not case["valid"]:
        assert errno_of(lambda: kernel.call(call, inbuf, BIG)) == case["errno"]
        return
    kernel.call(call, inbuf, BIG)
    if call is RctlCall.ADD_RULE:
        # compared whole: names may hold ',' (which breaks the comma-separated listing)
        assert kernel.call(RctlCall.GET_RULES, z("::"), BIG).decode() == case["canonical"]
    if call is RctlCall.REMOVE_RULE:
        assert listing(kernel) == []


def test_corpus_was_found() -> None:
    assert len(CORPUS_CASES) > 150


# --- add: per defaulting and duplicates --------------------------------------------------------


def test_per_defaults_to_the_subject_and_is_printed_only_when_different(
    kernel: SimulatedSyscalls,
) -> None:
    add(kernel, "user:80:maxproc:deny=10/user", "jail:db1:maxproc:deny=10/user")
    assert sorted(listing(kernel)) == ["jail:db1:maxproc:deny=10/user", "user:80:maxproc:deny=10"]


def test_a_deny_replaces_the_deny_of_the_same_subject_resource_and_per(
    kernel: SimulatedSyscalls,
) -> None:
    add(kernel, "user:80:maxproc:deny=10", "user:80:maxproc:deny=20")
    assert listing(kernel) == ["user:80:maxproc:deny=20"]
    add(kernel, "user:80:maxproc:deny=5/process")  # another per: both stay
    assert sorted(listing(kernel)) == ["user:80:maxproc:deny=20", "user:80:maxproc:deny=5/process"]
    add(kernel, "user:0:maxproc:deny=7")  # another subject id: both stay
    assert len(listing(kernel)) == 3


def test_other_actions_replace_only_an_identical_rule(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:log=10", "user:80:maxproc:log=20", "user:80:maxproc:log=10")
    assert listing(kernel) == ["user:80:maxproc:log=10", "user:80:maxproc:log=20"]
    add(kernel, "user:80:maxproc:devctl=10")
    assert len(listing(kernel)) == 3


def test_the_same_rule_in_other_spellings_is_one_rule(kernel: SimulatedSyscalls) -> None:
    add(
        kernel, "USER:080:MaxProc:LOG=+10", "user:80:maxproc:log=10/user", "user: 80:maxproc:log=10"
    )
    assert listing(kernel) == ["user:80:maxproc:log=10"]


def test_containers_are_created_on_demand(kernel: SimulatedSyscalls) -> None:
    add(
        kernel,
        "jail:nosuchjail:maxproc:deny=1",
        "loginclass:nosuchclass:maxproc:deny=1",
        "user:4294967295:maxproc:deny=1",
    )
    assert sorted(listing(kernel)) == [
        "jail:nosuchjail:maxproc:deny=1",
        "loginclass:nosuchclass:maxproc:deny=1",
        "user:-1:maxproc:deny=1",
    ]


@pytest.mark.parametrize(
    ("rule", "errno"),
    [
        ("process:99999:maxproc:deny=1", "ESRCH"),
        ("process:2:maxproc:deny=1", "ESRCH"),
        ("user:80:maxproc:deny", "EINVAL"),  # not fully specified
        ("user:80:cputime:deny=10", "EOPNOTSUPP"),
        ("process:1:swapuse:log=1", "EOPNOTSUPP"),
        ("user:80:maxproc:deny=-1", "ERANGE"),
        ("loginclass:" + "c" * 33 + ":maxproc:deny=1", "ENAMETOOLONG"),
    ],
)
def test_add_refusals(kernel: SimulatedSyscalls, rule: str, errno: str) -> None:
    assert errno_of(lambda: add(kernel, rule)) == errno
    assert listing(kernel) == []


# --- remove ------------------------------------------------------------------------------------


def test_per_is_a_wildcard_when_removing(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10", "user:80:maxproc:deny=10/process")
    kernel.call(RctlCall.REMOVE_RULE, z("user:80:maxproc:deny=10"), 0)
    assert listing(kernel) == []


def test_an_explicit_per_removes_exactly_one(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10", "user:80:maxproc:deny=10/process")
    kernel.call(RctlCall.REMOVE_RULE, z("user:80:maxproc:deny=10/user"), 0)
    assert listing(kernel) == ["user:80:maxproc:deny=10/process"]


def test_remove_everything_and_then_esrch(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10", "jail:db1:memoryuse:deny=1", "process:1:nthr:log=5")
    kernel.call(RctlCall.REMOVE_RULE, z(":"), 0)
    assert listing(kernel) == []
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z(":"), 0)) == "ESRCH"


def test_remove_by_field(kernel: SimulatedSyscalls) -> None:
    add(
        kernel,
        "user:80:maxproc:deny=10",
        "user:80:openfiles:deny=10",
        "jail:db1:maxproc:log=3",
        "process:1:maxproc:deny=4",
    )
    kernel.call(RctlCall.REMOVE_RULE, z("::maxproc"), 0)
    assert listing(kernel) == ["user:80:openfiles:deny=10"]
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z("jail:db1"), 0)) == "ESRCH"


def test_remove_a_process_filter(kernel: SimulatedSyscalls) -> None:
    add(kernel, "process:1:maxproc:deny=4", "user:0:maxproc:deny=4")
    kernel.call(RctlCall.REMOVE_RULE, z("process:1"), 0)
    assert listing(kernel) == ["user:0:maxproc:deny=4"]  # linked to pid 1, but not its rule
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z("process:1"), 0)) == "ESRCH"
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z("process:99999"), 0)) == "ESRCH"


def test_remove_by_in_millions_amount(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:cputime:log=3600")
    # without a resource the kernel compares the raw (x10^6) amount
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z(":::=3600"), 0)) == "ESRCH"
    kernel.call(RctlCall.REMOVE_RULE, z(":::=3600000000"), 0)
    add(kernel, "user:80:cputime:log=3600")
    kernel.call(RctlCall.REMOVE_RULE, z("::cputime:=3600"), 0)
    assert listing(kernel) == []


def test_remove_parse_errors(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10")
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z("bogus:"), 0)) == "EINVAL"
    assert errno_of(lambda: kernel.call(RctlCall.REMOVE_RULE, z("user:www"), 0)) == "EINVAL"
    assert listing(kernel) == ["user:80:maxproc:deny=10"]


# --- get_rules ---------------------------------------------------------------------------------


def test_listing_filters(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10", "user:80:maxproc:deny=10/jail", "jail:db1:maxproc:log=3")
    assert listing(kernel, "user:80") == ["user:80:maxproc:deny=10/jail", "user:80:maxproc:deny=10"]
    assert listing(kernel, ":::=/jail") == [
        "user:80:maxproc:deny=10/jail",
        "jail:db1:maxproc:log=3",  # its per is jail too (defaulted)
    ]
    assert listing(kernel, ":::log") == ["jail:db1:maxproc:log=3"]
    assert listing(kernel, "jail:db2") == []
    assert errno_of(lambda: listing(kernel, "user:80:maxproc:deny=1k")) == "EINVAL"


def test_listing_order(tmp_path: Path) -> None:
    host = write_host(
        tmp_path / "h.yaml",
        users={"root": 0, "www": 80, "pgsql": 770},
        processes={1: {"comm": "init", "uid": 0}, 500: {"comm": "sh", "uid": 80}},
        jails={"db1": {"jid": 3}, "web1": {"jid": 4}},
    )
    kernel = SimulatedSyscalls(host)
    add(
        kernel,
        "jail:web1:maxproc:deny=1",
        "jail:db1:maxproc:deny=1",
        "jail:new:maxproc:deny=1",  # a container created by this rule: newer than the host's
        "user:770:maxproc:deny=1",
        "user:80:maxproc:deny=1",
        "loginclass:daemon:maxproc:deny=1",
        "process:1:maxproc:deny=1",
        "process:500:maxproc:deny=1",
        "jail:db1:openfiles:deny=1",
        "process:1:openfiles:deny=1",
        "user:80:openfiles:deny=1",
    )
    assert listing(kernel) == [
        # process rules, newest process first, newest rule first
        "process:500:maxproc:deny=1",
        "process:1:openfiles:deny=1",
        "process:1:maxproc:deny=1",
        # loginclass containers
        "loginclass:daemon:maxproc:deny=1",
        # user containers by descending uid-hash bucket: 80 (bucket 80), 770 (bucket 2)
        "user:80:openfiles:deny=1",
        "user:80:maxproc:deny=1",
        "user:770:maxproc:deny=1",
        # jail containers, newest first: "new", then web1 and db1 as the host file orders them
        "jail:new:maxproc:deny=1",
        "jail:web1:maxproc:deny=1",
        "jail:db1:openfiles:deny=1",
        "jail:db1:maxproc:deny=1",
    ]


def test_get_rules_buffer_boundary(kernel: SimulatedSyscalls) -> None:
    add(kernel, "user:80:maxproc:deny=10", "jail:db1:memoryuse:deny=1073741824")
    expected = b"user:80:maxproc:deny=10,jail:db1:memoryuse:deny=1073741824"
    # the rules go in with a trailing comma and the NUL needs a byte: len + 2
    assert kernel.call(RctlCall.GET_RULES, z("::"), len(expected) + 2) == expected
    assert errno_of(lambda: kernel.call(RctlCall.GET_RULES, z("::"), len(expected) + 1)) == "ERANGE"


def test_get_rules_empty_answer_needs_its_nul(kernel: SimulatedSyscalls) -> None:
    assert kernel.call(RctlCall.GET_RULES, z("::"), 1) == b""
    assert errno_of(lambda: kernel.call(RctlCall.GET_RULES, z("::"), 0)) == "ERANGE"


def test_get_rules_maxbufsize(kernel: SimulatedSyscalls) -> None:
    max_size = 16 * 1024 * 1024
    assert kernel.call(RctlCall.GET_RULES, z("::"), max_size) == b""
    assert errno_of(lambda: kernel.call(RctlCall.GET_RULES, z("::"), max_size + 1)) == "E2BIG"
    # the filter is parsed first: its error wins
    assert errno_of(lambda: kernel.call(RctlCall.GET_RULES, z("bogus"), max_size + 1)) == "EINVAL"


def test_maxbufsize_comes_from_the_host(tmp_path: Path) -> None:
    kernel = SimulatedSyscalls(write_host(tmp_path / "h.yaml", maxbufsize=64))
    assert errno_of(lambda: kernel.call(RctlCall.GET_RULES, z("::"), 65)) == "E2BIG"
    assert errno_of(lambda: kernel.call(RctlCall.GET_LIMITS, z("process:1"), 65)) == "E2BIG"


# --- get_limits --------------------------------------------------------------------------------


def test_limits_of_a_process(tmp_path: Path) -> None:
    host = write_host(
        tmp_path / "h.yaml",
        users={"root": 0, "www": 80},
        processes={
            1: {"comm": "init", "uid": 0},
            77: {"comm": "nginx", "uid": "www", "jail": "inner", "loginclass": "daemon"},
        },
        jails={"db1": {"jid": 3}, "inner": {"jid": 4, "parent": "db1"}},
    )
    kernel = SimulatedSyscalls(host)
    add(
        kernel,
        "jail:0:maxproc:deny=1000",
        "jail:db1:maxproc:deny=100",
        "jail:inner:maxproc:deny=10",
        "jail:web1:maxproc:deny=10",  # not this process's jail
        "user:80:openfiles:deny=100",
        "user:0:openfiles:deny=100",  # not this process's uid
        "loginclass:daemon:nthr:deny=5",
        "process:77:memoryuse:log=1",
        "process:1:memoryuse:log=1",
    )
    out = kernel.call(RctlCall.GET_LIMITS, z("process:77"), BIG).decode().split(",")
    assert out == [
        "process:77:memoryuse:log=1",
        "loginclass:daemon:nthr:deny=5",
        "user:80:openfiles:deny=100",
        "jail:inner:maxproc:deny=10",
        "jail:db1:maxproc:deny=100",
        "jail:0:maxproc:deny=1000",
    ]
    # the other filter fields are parsed but ignored
    assert kernel.call(RctlCall.GET_LIMITS, z("process:77:nthr:log=3/user"), BIG).decode() == (
        ",".join(out)
    )
    joined = ",".join(out).encode()
    assert kernel.call(RctlCall.GET_LIMITS, z("process:77"), len(joined) + 2) == joined
    assert (
        errno_of(lambda: kernel.call(RctlCall.GET_LIMITS, z("process:77"), len(joined) + 1))
        == "ERANGE"
    )


@pytest.mark.parametrize(
    ("rule_filter", "errno"),
    [
        ("::", "EINVAL"),  # no subject
        (":::deny", "EINVAL"),
        ("user:80", "EOPNOTSUPP"),
        ("jail:db1", "EOPNOTSUPP"),
        ("user:", "EOPNOTSUPP"),
        ("process:", "EINVAL"),  # no pid
        ("process:99999", "ESRCH"),
        ("process:1:bogus", "EINVAL"),
    ],
)
def test_get_limits_refusals(kernel: SimulatedSyscalls, rule_filter: str, errno: str) -> None:
    assert errno_of(lambda: kernel.call(RctlCall.GET_LIMITS, z(rule_filter), BIG)) == errno


def test_limits_with_no_rules(kernel: SimulatedSyscalls) -> None:
    assert kernel.call(RctlCall.GET_LIMITS, z("process:1"), BIG) == b""


# --- get_racct ---------------------------------------------------------------------------------


@pytest.fixture
def usage_kernel(tmp_path: Path) -> SimulatedSyscalls:
    return SimulatedSyscalls(
        write_host(
            tmp_path / "h.yaml",
            processes={
                1: {"comm": "init", "uid": 0},
                4242: {"comm": "postgres", "uid": 80, "jail": "db1"},
            },
            usage={
                "jail:db1": {
                    "memoryuse": 1073741824,
                    "swapuse": 4096,
                    "maxproc": 12,
                    "cputime": 3600,
                    "pcpu": 150,
                },
                "user:www": {"maxproc": 40},
                "process:4242": {"memoryuse": 524288000, "swapuse": 7},
            },
        )
    )


def usage_lines(kernel: SimulatedSyscalls, rule_filter: str) -> dict[str, int]:
    out = kernel.call(RctlCall.GET_RACCT, z(rule_filter), BIG).decode()
    pairs = [item.split("=") for item in out.split(",")]
    return {name: int(value) for name, value in pairs}


def test_usage_of_a_jail(usage_kernel: SimulatedSyscalls) -> None:
    lines = usage_lines(usage_kernel, "jail:db1")
    assert list(lines) == [resource.value for resource in Resource]  # all 25, in id order
    assert lines["memoryuse"] == 1073741824
    assert lines["swapuse"] == 4096
    assert lines["maxproc"] == 12
    assert lines["cputime"] == 3600
    assert lines["pcpu"] == 150
    assert lines["openfiles"] == 0  # not in the host file


def test_usage_of_a_process_omits_the_sloppy_resources(usage_kernel: SimulatedSyscalls) -> None:
    lines = usage_lines(usage_kernel, "process:4242")
    assert list(lines) == [resource.value for resource in PROCESS_USAGE_RESOURCES]
    assert len(lines) == 17
    assert "swapuse" not in lines
    assert lines["memoryuse"] == 524288000


def test_usage_of_a_user_by_uid_and_of_unknown_containers(usage_kernel: SimulatedSyscalls) -> None:
    assert usage_lines(usage_kernel, "user:80")["maxproc"] == 40
    assert usage_lines(usage_kernel, "user:080:maxproc:deny=1")["maxproc"] == 40  # rest ignored
    assert set(usage_lines(usage_kernel, "jail:nosuch").values()) == {0}
    assert set(usage_lines(usage_kernel, "loginclass:daemon").values()) == {0}


@pytest.mark.parametrize(
    ("rule_filter", "errno"),
    [
        ("::", "EINVAL"),
        ("user:", "EINVAL"),
        ("process:", "EINVAL"),
        ("user:www", "EINVAL"),
        ("user:80:bogus", "EINVAL"),
        ("process:99999", "ESRCH"),
    ],
)
def test_get_racct_refusals(usage_kernel: SimulatedSyscalls, rule_filter: str, errno: str) -> None:
    assert errno_of(lambda: usage_kernel.call(RctlCall.GET_RACCT, z(rule_filter), BIG)) == errno


def test_get_racct_buffer_boundary(usage_kernel: SimulatedSyscalls) -> None:
    full = usage_kernel.call(RctlCall.GET_RACCT, z("jail:db1"), BIG)
    assert usage_kernel.call(RctlCall.GET_RACCT, z("jail:db1"), len(full) + 1) == full
    assert (
        errno_of(lambda: usage_kernel.call(RctlCall.GET_RACCT, z("jail:db1"), len(full)))
        == "ERANGE"
    )
    # no maxbufsize check for get_racct
    assert usage_kernel.call(RctlCall.GET_RACCT, z("jail:db1"), 1 << 30) == full


# --- the host file and the state file ----------------------------------------------------------


def test_host_file_edits_take_effect_on_the_next_call(tmp_path: Path) -> None:
    host = write_host(tmp_path / "h.yaml")
    kernel = SimulatedSyscalls(host)
    assert errno_of(lambda: add(kernel, "process:4242:maxproc:deny=1")) == "ESRCH"
    write_host(host, processes={1: {"comm": "init", "uid": 0}, 4242: {"comm": "pg", "uid": 80}})
    add(kernel, "process:4242:maxproc:deny=1")
    assert listing(kernel) == ["process:4242:maxproc:deny=1"]
    # the process exits: its rules go with it
    write_host(host)
    assert listing(kernel) == []
    write_host(host, racct_enable=False)
    assert errno_of(lambda: listing(kernel)) == "ENOSYS"


def test_jails_come_from_the_host(tmp_path: Path) -> None:
    host = write_host(tmp_path / "h.yaml", jails={"web1": {"jid": 9}, "db1": {"jid": 3}})
    kernel = SimulatedSyscalls(host)
    assert kernel.jails() == [Jail(3, "db1"), Jail(9, "web1")]
    assert kernel.racct_enabled()


def test_a_broken_host_file_is_a_host_file_error(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text("users: {www: 80}\nusage: {'jail:db1': {memoryuze: 1}}\n")
    kernel = SimulatedSyscalls(host)
    with pytest.raises(HostFileError, match=r"h\.yaml: usage: jail:db1: unknown resource"):
        kernel.call(RctlCall.GET_RULES, z("::"), BIG)
    with pytest.raises(HostFileError):
        kernel.jails()


def test_a_corrupt_state_file_reads_as_an_empty_kernel(
    kernel: SimulatedSyscalls, caplog: pytest.LogCaptureFixture
) -> None:
    add(kernel, "user:80:maxproc:deny=10")
    kernel.state_path.write_text("{{{ not json")
    with caplog.at_level(logging.WARNING):
        assert listing(kernel) == []
    assert "corrupt" in caplog.text
    add(kernel, "user:80:maxproc:deny=11")  # and the next write repairs it
    assert listing(kernel) == ["user:80:maxproc:deny=11"]


def test_state_file_is_beside_the_host_file(host_path: Path, kernel: SimulatedSyscalls) -> None:
    assert kernel.state_path == host_path.with_name("host.yaml.state.json")
    other = SimulatedSyscalls(host_path, host_path.parent / "elsewhere.json")
    assert other.state_path.name == "elsewhere.json"


def test_two_kernels_on_one_host_share_the_rules(host_path: Path) -> None:
    first, second = SimulatedSyscalls(host_path), SimulatedSyscalls(host_path)
    add(first, "user:80:maxproc:deny=10")
    assert listing(second) == ["user:80:maxproc:deny=10"]
    second.call(RctlCall.REMOVE_RULE, z("user:80"), 0)
    assert listing(first) == []


_ADDER = textwrap.dedent(
    """
    import sys
    from rctlpolicy.kernel.base import RctlCall
    from rctlpolicy.kernel.simulator import SimulatedSyscalls
    kernel = SimulatedSyscalls(sys.argv[1])
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()  # start together
    for n in range(int(sys.argv[3])):
        rule = f"loginclass:{sys.argv[2]}{n}:maxproc:deny={n}"
        kernel.call(RctlCall.ADD_RULE, rule.encode() + b"\\0", 0)
    """
)


def test_separate_processes_see_one_kernel_and_lose_no_update(host_path: Path) -> None:
    count = 40
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _ADDER, str(host_path), prefix, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for prefix in ("a", "b")
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        for child in children:
            assert child.wait(timeout=60) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
    rules = listing(SimulatedSyscalls(host_path))
    assert len(rules) == 2 * count
    assert {f"loginclass:a{n}:maxproc:deny={n}" for n in range(count)} <= set(rules)


# --- log and devctl ----------------------------------------------------------------------------


EVENT_HOST: dict[str, Any] = {
    "users": {"root": 0, "www": 80, "pgsql": 770},
    "processes": {
        1: {"comm": "init", "uid": 0},
        4242: {"comm": "postgres", "uid": "pgsql", "jail": "db1"},
        4243: {"comm": "postgres", "uid": "pgsql", "jail": "db1"},
        5100: {"comm": "su", "uid": "www", "euid": 0, "jail": "web1"},
    },
    "jails": {"db1": {"jid": 3}, "web1": {"jid": 4}, "empty": {"jid": 5}},
    "usage": {
        "jail:db1": {"memoryuse": 900, "maxproc": 2},
        "jail:web1": {"memoryuse": 100},
        "jail:empty": {"memoryuse": 50},
        "process:4243": {"memoryuse": 700},
        "user:www": {"maxproc": 30},
    },
}


@pytest.fixture
def event_host(tmp_path: Path) -> Path:
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(EVENT_HOST))
    return path


def set_usage(path: Path, key: str, resource: str, value: int) -> None:
    data = yaml.safe_load(path.read_text())
    data["usage"].setdefault(key, {})[resource] = value
    path.write_text(yaml.safe_dump(data))


def test_an_episode_fires_once_and_again_after_recovery(event_host: Path) -> None:
    clock = ManualClock()
    kernel = SimulatedSyscalls(event_host)
    add(kernel, "jail:db1:memoryuse:devctl=800", "jail:db1:memoryuse:deny=2000")
    events = kernel.evaluate_events(clock.time())
    rule = Rule(SubjectType.JAIL, "db1", Resource.MEMORYUSE, Action.DEVCTL, 800, SubjectType.JAIL)
    # the first linked process (by pid) stands for the jail
    assert events == [SimEvent("devctl", rule, 4242, 770, "db1", 770, "postgres")]
    clock.advance(5)
    assert kernel.evaluate_events(clock.time()) == []  # same episode
    set_usage(event_host, "jail:db1", "memoryuse", 800)  # back within the limit (not above)
    clock.advance(5)
    assert kernel.evaluate_events(clock.time()) == []
    set_usage(event_host, "jail:db1", "memoryuse", 801)
    clock.advance(5)
    assert [e.rule for e in kernel.evaluate_events(clock.time())] == [rule]


def test_episode_flags_are_shared_between_evaluators(event_host: Path) -> None:
    first, second = SimulatedSyscalls(event_host), SimulatedSyscalls(event_host)
    add(first, "jail:db1:memoryuse:log=800")
    assert len(first.evaluate_events(100.0)) == 1
    assert second.evaluate_events(101.0) == []


def test_removing_a_rule_ends_its_episode(event_host: Path) -> None:
    kernel = SimulatedSyscalls(event_host)
    add(kernel, "jail:db1:memoryuse:devctl=800")
    assert len(kernel.evaluate_events(100.0)) == 1
    kernel.call(RctlCall.REMOVE_RULE, z("jail:db1"), 0)
    add(kernel, "jail:db1:memoryuse:devctl=800")
    assert len(kernel.evaluate_events(200.0)) == 1


def test_per_decides_whose_usage_is_compared(event_host: Path) -> None:
    kernel = SimulatedSyscalls(event_host)
    # each db1 process against its own usage: only 4243 uses more than 600
    add(kernel, "jail:db1:memoryuse:log=600/process")
    # user www (real uid of pid 5100) compared per user
    add(kernel, "jail:web1:maxproc:devctl=20/user")
    events = kernel.evaluate_events(100.0)
    assert [(e.kind, e.pid, e.ruid, e.euid, e.jail, e.comm) for e in events] == [
        ("devctl", 5100, 80, 0, "web1", "su"),
        ("log", 4243, 770, 770, "db1", "postgres"),
    ]


def test_a_subject_without_processes_fires_as_pid_0(event_host: Path) -> None:
    kernel = SimulatedSyscalls(event_host)
    add(kernel, "jail:empty:memoryuse:devctl=10", "user:1234:maxproc:devctl=0")
    events = kernel.evaluate_events(100.0)
    assert [(e.pid, e.ruid, e.euid, e.jail, e.comm) for e in events] == [
        (0, 0, 0, "empty", "kernel")
    ]  # user 1234 uses nothing, so 0 is not exceeded


def test_rules_that_do_not_notify_never_fire(event_host: Path) -> None:
    kernel = SimulatedSyscalls(event_host)
    add(kernel, "jail:db1:memoryuse:deny=1", "jail:db1:memoryuse:sigterm=1")
    assert kernel.evaluate_events(100.0) == []


def test_the_rate_limiter_drops_and_retries(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump({**EVENT_HOST, "devctl_rate_limit": 2}))
    kernel = SimulatedSyscalls(host)
    add(kernel, *(f"jail:db1:memoryuse:devctl={n}" for n in range(5)))
    clock = ManualClock()
    first = kernel.evaluate_events(clock.time())
    assert len(first) == 2
    clock.advance(0.5)
    assert kernel.evaluate_events(clock.time()) == []  # window full; the other 3 stay unflagged
    clock.advance(0.5)
    second = kernel.evaluate_events(clock.time())
    assert len(second) == 2
    clock.advance(1)
    third = kernel.evaluate_events(clock.time())
    assert len(third) == 1
    fired = {e.rule.amount for e in first + second + third}
    assert fired == set(range(5))
    clock.advance(1)
    assert kernel.evaluate_events(clock.time()) == []


def test_log_and_devctl_have_separate_limiters(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump({**EVENT_HOST, "devctl_rate_limit": 1, "log_rate_limit": 0}))
    kernel = SimulatedSyscalls(host)
    add(
        kernel,
        "jail:db1:memoryuse:devctl=1",
        "jail:db1:memoryuse:devctl=2",
        "jail:db1:memoryuse:log=1",
    )
    assert [e.kind for e in kernel.evaluate_events(100.0)] == ["devctl"]  # log: 0 = never


def test_ratecheck() -> None:
    allowed, window = ratecheck(RateWindow(), 2, 10.0)
    assert allowed and window == RateWindow(10.0, 1)
    allowed, window = ratecheck(window, 2, 10.9)
    assert allowed and window == RateWindow(10.0, 2)
    allowed, window = ratecheck(window, 2, 10.95)
    assert not allowed and window == RateWindow(10.0, 3)
    allowed, window = ratecheck(window, 2, 11.0)
    assert allowed and window == RateWindow(11.0, 1)
    assert ratecheck(window, 2, 5.0) == (True, RateWindow(5.0, 1))  # the clock went back
    assert ratecheck(RateWindow(), 0, 1.0)[0] is False
    assert ratecheck(RateWindow(1.0, 1000), -1, 1.5)[0] is True


def test_events_due_is_pure() -> None:
    host = parse_host(yaml.safe_dump(EVENT_HOST))
    rule = Rule(SubjectType.JAIL, "db1", Resource.MAXPROC, Action.LOG, 1, SubjectType.JAIL)
    outcome = events_due(host, [rule], frozenset(), {}, 50.0)
    assert [e.pid for e in outcome.events] == [4242]
    assert outcome.exceeded == frozenset({rule.canonical})
    assert outcome.rate_windows == {"log": RateWindow(50.0, 1)}
    again = events_due(host, [rule], outcome.exceeded, outcome.rate_windows, 50.1)
    assert again.events == [] and again.exceeded == outcome.exceeded
    # flags of rules that are gone are dropped
    assert events_due(host, [], outcome.exceeded, {}, 51.0).exceeded == frozenset()


def test_format_log_line() -> None:
    rule = Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.LOG, 100, SubjectType.USER)
    event = SimEvent("log", rule, 4242, 80, "0", 4294967294, "sh")
    assert format_log_line(event) == (
        'rctl: rule "user:80:maxproc:log=100" matched by pid 4242 (sh), uid -2, jail 0'
    )


def test_format_log_line_cuts_the_rule_to_127_bytes() -> None:
    name = "j" * 200
    rule = Rule(SubjectType.JAIL, name, Resource.MEMORYUSE, Action.LOG, 1, SubjectType.JAIL)
    line = format_log_line(SimEvent("log", rule, 1, 0, name, 0, "init"))
    quoted = line.split('"')[1]
    assert quoted == rule.canonical[:127]
    assert line.endswith(f"matched by pid 1 (init), uid 0, jail {name}")


def test_no_events_when_racct_is_disabled(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump(EVENT_HOST))
    kernel = SimulatedSyscalls(host)
    add(kernel, "jail:db1:memoryuse:devctl=1")
    host.write_text(yaml.safe_dump({**EVENT_HOST, "racct_enable": False}))
    assert kernel.evaluate_events(1.0) == []


# --- nested jails: rules linked when added, or when a process attaches -------------------------

NESTED_HOST: dict[str, Any] = {
    "users": {"root": 0, "www": 80, "pgsql": 770},
    "loginclasses": ["default", "daemon"],
    "processes": {
        1: {"comm": "init", "uid": 0},
        20: {"comm": "postgres", "uid": "pgsql", "jail": "outer.inner"},
    },
    "jails": {"outer": {"jid": 3}, "outer.inner": {"jid": 4}},
    "usage": {"jail:outer": {"maxproc": 4}, "jail:outer.inner": {"maxproc": 3}},
}


def limits_of(kernel: SimulatedSyscalls, pid: int) -> list[str]:
    out = kernel.call(RctlCall.GET_LIMITS, z(f"process:{pid}"), BIG).decode()
    return out.split(",") if out else []


def with_processes(path: Path, jails: dict[str, Any], **processes: dict[str, Any]) -> None:
    """The host after jails started (or stopped) and processes appeared."""
    data = {**NESTED_HOST, "jails": {**NESTED_HOST["jails"], **jails}}
    data["processes"] = {**NESTED_HOST["processes"], **{int(p): v for p, v in processes.items()}}
    path.write_text(yaml.safe_dump(data))


def test_a_rule_added_on_a_parent_jail_reaches_its_child_jails_processes(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump(NESTED_HOST))
    kernel = SimulatedSyscalls(host)
    add(kernel, "jail:outer:maxproc:deny=10", "jail:0:nthr:deny=1000")
    # rctl_rule_add walks every process's prison chain
    assert limits_of(kernel, 20) == ["jail:0:nthr:deny=1000", "jail:outer:maxproc:deny=10"]
    # rctl -u of a jail adds its child jails' usage (racct_add_cred_locked)
    usage = dict(
        p.split("=")
        for p in kernel.call(RctlCall.GET_RACCT, z("jail:outer"), BIG).decode().split(",")
    )
    assert usage["maxproc"] == "7"


def test_a_jail_started_after_a_rule_gets_only_its_own_rules(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump(NESTED_HOST))
    kernel = SimulatedSyscalls(host)
    add(
        kernel,
        "jail:outer:maxproc:deny=10",
        "jail:0:nthr:deny=1000",
        "jail:outer.late:openfiles:deny=50",  # the container exists before the jail runs
        "user:80:nthr:deny=20",  # the new process's effective uid
        "user:770:nthr:deny=30",  # its real uid
    )
    # outer.late starts: jail(8) attaches its first process (rctl_proc_ucred_changed), the
    # others fork from it
    with_processes(
        host,
        {"outer.late": {"jid": 5}},
        **{"30": {"comm": "sh", "uid": "pgsql", "euid": "www", "jail": "outer.late"}},
    )
    assert limits_of(kernel, 30) == ["user:770:nthr:deny=30", "jail:outer.late:openfiles:deny=50"]
    # a process that was there all along keeps what the adds linked
    assert "jail:outer:maxproc:deny=10" in limits_of(kernel, 20)
    # a rule added now walks the prison chain again, the new jail included
    add(kernel, "jail:outer:memoryuse:deny=1000000")
    assert limits_of(kernel, 30)[0] == "jail:outer:memoryuse:deny=1000000"
    assert "jail:outer:maxproc:deny=10" not in limits_of(kernel, 30)
    # the jail's start is remembered in the state file: another process agrees
    assert limits_of(SimulatedSyscalls(host), 30) == limits_of(kernel, 30)


def test_a_process_attached_later_to_a_running_jail_gets_only_its_own_rules(
    tmp_path: Path,
) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump(NESTED_HOST))
    kernel = SimulatedSyscalls(host)
    add(kernel, "jail:outer:maxproc:deny=10", "jail:outer.inner:maxproc:deny=5")
    with_processes(
        host,
        {},
        **{
            "21": {"comm": "sh", "uid": 0, "jail": "outer.inner", "attached": True},  # jexec
            "22": {"comm": "postgres", "uid": "pgsql", "jail": "outer.inner"},  # a fork
        },
    )
    assert limits_of(kernel, 21) == ["jail:outer.inner:maxproc:deny=5"]
    assert limits_of(kernel, 22) == [
        "jail:outer.inner:maxproc:deny=5",
        "jail:outer:maxproc:deny=10",
    ]


def test_per_jail_compares_the_processes_own_jail_and_names_it(tmp_path: Path) -> None:
    host = tmp_path / "h.yaml"
    host.write_text(yaml.safe_dump(NESTED_HOST))
    kernel = SimulatedSyscalls(host)
    # outer's total is 4 + 3 = 7 > 5, but its only process is in outer.inner, which uses 3:
    # rctl_proc_rule_to_racct compares the process's own prison
    add(kernel, "jail:outer:maxproc:devctl=5")
    assert kernel.evaluate_events(100.0) == []
    data = yaml.safe_load(host.read_text())
    data["usage"]["jail:outer.inner"]["maxproc"] = 6
    host.write_text(yaml.safe_dump(data))
    events = kernel.evaluate_events(101.0)
    assert [(e.rule.canonical, e.pid, e.jail) for e in events] == [
        ("jail:outer:maxproc:devctl=5", 20, "outer.inner")
    ]
