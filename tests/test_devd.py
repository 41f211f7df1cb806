"""devd line parsing, RCTL events, and the socket client against the devd double."""

from __future__ import annotations

import errno
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rctlpolicy.devd import (
    DEVCTL_MAXBUF,
    RCTL_DATA_MAX,
    Backoff,
    Connected,
    DevdClient,
    DevdItem,
    Disconnected,
    LineFramer,
    MalformedEvent,
    RctlEvent,
    Receiving,
    SocketKind,
    format_rctl_event,
    parse_devd_line,
    parse_rctl_event,
)
from rctlpolicy.devd import batch as batch_module
from rctlpolicy.devd.batch import BatchReceiver, Record
from rctlpolicy.devd.client import RECEIVE_BUFFER, _ask_receive_buffer
from rctlpolicy.devdserver import DevdServer

HEADER = "!system=RCTL subsystem=rule type=matched "

# freebsd-integration.md section 2.3, exact lines.
EXAMPLE_USER = (
    "!system=RCTL subsystem=rule type=matched rule=user:770:swapuse:devctl=1073741824"
    " pid=81234 ruid=770 jail=0\n"
)
EXAMPLE_PGJAIL = (
    "!system=RCTL subsystem=rule type=matched rule=jail:pgjail:swapuse:devctl=536870912"
    " pid=4242 ruid=770 jail=pgjail\n"
)
EXAMPLE_PCPU = (
    "!system=RCTL subsystem=rule type=matched rule=jail:web01:pcpu:devctl=80/process"
    " pid=55123 ruid=80 jail=web01\n"
)
EXAMPLE_TRUNCATED = (
    "!system=RCTL subsystem=rule type=matched"
    " rule=jail:customer-database-production-eu-west-1:memoryuse:devctl=8589934592"
    " pid=23456 ruid=770 jail=customer-database-producti\n"
)
EXAMPLE_DEVFS = "!system=DEVFS subsystem=CDEV type=CREATE cdev=md0\n"
EXAMPLE_IFNET = "!system=IFNET subsystem=em0 type=LINK_UP\n"
EXAMPLE_UMASS = (
    "+umass0 at bus=0 hubaddr=1 port=2 devaddr=3 interface=0 ugen=ugen0.3 vendor=0x0781"
    ' product=0x5567 devclass=0x00 devsubclass=0x00 devproto=0x00 sernum="4C5300012345"'
    " release=0x0100 mode=host intclass=0x08 intsubclass=0x06 intprotocol=0x50 on uhub0\n"
)
EXAMPLE_NOMATCH = (
    "? at slot=31 function=4 dbsf=pci0:0:31:4 vendor=0x8086 device=0xa323 subvendor=0x1462"
    " subdevice=0x7b45 class=0x0c0500 on pci0\n"
)


# --------------------------------------------------------------------------------------------
# parse_devd_line


def pairs(line: str) -> dict[str, str]:
    """The parsed variables without the whole-line pseudo-variables."""
    return {k: v for k, v in parse_devd_line(line).items() if k not in ("*", "_")}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            EXAMPLE_USER,
            {
                "system": "RCTL",
                "subsystem": "rule",
                "type": "matched",
                "rule": "user:770:swapuse:devctl=1073741824",
                "pid": "81234",
                "ruid": "770",
                "jail": "0",
            },
            id="rctl-user",
        ),
        pytest.param(
            EXAMPLE_PGJAIL,
            {
                "system": "RCTL",
                "subsystem": "rule",
                "type": "matched",
                "rule": "jail:pgjail:swapuse:devctl=536870912",
                "pid": "4242",
                "ruid": "770",
                "jail": "pgjail",
            },
            id="rctl-jail",
        ),
        pytest.param(
            EXAMPLE_PCPU,
            {
                "system": "RCTL",
                "subsystem": "rule",
                "type": "matched",
                "rule": "jail:web01:pcpu:devctl=80/process",
                "pid": "55123",
                "ruid": "80",
                "jail": "web01",
            },
            id="rctl-per",
        ),
        pytest.param(
            EXAMPLE_TRUNCATED,
            {
                "system": "RCTL",
                "subsystem": "rule",
                "type": "matched",
                "rule": "jail:customer-database-production-eu-west-1:memoryuse:devctl=8589934592",
                "pid": "23456",
                "ruid": "770",
                "jail": "customer-database-producti",
            },
            id="rctl-truncated",
        ),
        pytest.param(
            EXAMPLE_DEVFS,
            {"system": "DEVFS", "subsystem": "CDEV", "type": "CREATE", "cdev": "md0"},
            id="devfs",
        ),
        pytest.param(
            EXAMPLE_IFNET, {"system": "IFNET", "subsystem": "em0", "type": "LINK_UP"}, id="ifnet"
        ),
        pytest.param(
            EXAMPLE_UMASS,
            {
                "device-name": "umass0",
                # The location's bus=0 is overwritten by "on uhub0": a later value wins.
                "bus": "uhub0",
                "hubaddr": "1",
                "port": "2",
                "devaddr": "3",
                "interface": "0",
                "ugen": "ugen0.3",
                "vendor": "0x0781",
                "product": "0x5567",
                "devclass": "0x00",
                "devsubclass": "0x00",
                "devproto": "0x00",
                "sernum": "4C5300012345",
                "release": "0x0100",
                "mode": "host",
                "intclass": "0x08",
                "intsubclass": "0x06",
                "intprotocol": "0x50",
            },
            id="attach",
        ),
        pytest.param(
            EXAMPLE_NOMATCH,
            {
                "slot": "31",
                "function": "4",
                "dbsf": "pci0:0:31:4",
                "vendor": "0x8086",
                "device": "0xa323",
                "subvendor": "0x1462",
                "subdevice": "0x7b45",
                "class": "0x0c0500",
                "bus": "pci0",
            },
            id="nomatch",
        ),
    ],
)
def test_parse_devd_line_spec_examples(line: str, expected: dict[str, str]) -> None:
    assert pairs(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('!a=1 data="two words" b=2', {"a": "1", "data": "two words", "b": "2"}),
        (r'!k="say \"hi\"" n=1', {"k": 'say "hi"', "n": "1"}),
        # Only \" loses its backslash; \\ stays two characters.
        (r'!k="a\\b" n=1', {"k": r"a\\b", "n": "1"}),
        # devd skips \" while scanning, so \\" does not close the value: unterminated, stop.
        (r'!a=1 k="a\\" n=1', {"a": "1"}),
        ('!a=1 b="unterminated c=3', {"a": "1"}),
        ("!a=1 garbage b=2", {"a": "1"}),
        ("!a.b=1 c=2", {}),
        ("!a=1 a=2", {"a": "2"}),
        ("!a= b=2", {"a": "", "b": "2"}),
        ("!=x b=2", {"": "x", "b": "2"}),  # devd's key loop accepts zero key characters
        ("! a=1", {}),  # no whitespace skip before the first pair of a notify
        ('!a=x"y b=2', {"a": 'x"y', "b": "2"}),
        (r"!a=x\"y", {"a": 'x"y'}),
        ("!a=1\tb=2\x0bc=3", {"a": "1", "b": "2", "c": "3"}),
        ('!a="x"b=2', {"a": "x", "b": "2"}),
        ("!a=1   b=2  ", {"a": "1", "b": "2"}),
        ("!a=1\n\n", {"a": "1"}),
        ("!a=1\0b=2", {"a": "1"}),
        ("!a=\u00e9t\u00e9 \u00e9=1 c=2", {"a": "\u00e9t\u00e9"}),  # non-ASCII is no key char
        ("+foo0 at   on bar0", {"device-name": "foo0", "bus": "bar0"}),
        ("-da0 at unit=0 on umass-sim0", {"device-name": "da0", "unit": "0", "bus": "umass-sim0"}),
        ("+foo0", {}),
        ("?", {}),
        ("x a=1", {}),
        ("", {}),
    ],
)
def test_parse_devd_line_pair_rules(line: str, expected: dict[str, str]) -> None:
    assert pairs(line) == expected


def test_parse_devd_line_pseudo_variables() -> None:
    variables = parse_devd_line(EXAMPLE_DEVFS)
    assert variables["*"] == EXAMPLE_DEVFS.rstrip("\n")
    assert variables["_"] == EXAMPLE_DEVFS.rstrip("\n")[1:]
    assert "timestamp" not in variables
    assert parse_devd_line("") == {}


def test_devd_lines_split_on_the_c_locale_spaces_only() -> None:
    # devd's isspace() runs in the C locale: the six ASCII spaces separate pairs, nothing else
    # (the same set the kernel's strto*() skip, amounts.C_SPACE).
    assert pairs("!a=1\t\vb=2\f\rc=3\nd=4") == {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert pairs("!a=1\u00a0b=2 c=3") == {"a": "1\u00a0b=2", "c": "3"}


# --------------------------------------------------------------------------------------------
# parse_rctl_event


def event(
    rule: str, pid: int | None, ruid: int | None, jail: str | None, line: str, truncated: bool
) -> RctlEvent:
    return RctlEvent(rule, pid, ruid, jail, truncated, line.rstrip("\n"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            EXAMPLE_USER,
            event("user:770:swapuse:devctl=1073741824", 81234, 770, "0", EXAMPLE_USER, False),
        ),
        (
            EXAMPLE_PGJAIL,
            event(
                "jail:pgjail:swapuse:devctl=536870912", 4242, 770, "pgjail", EXAMPLE_PGJAIL, False
            ),
        ),
        (
            EXAMPLE_PCPU,
            event("jail:web01:pcpu:devctl=80/process", 55123, 80, "web01", EXAMPLE_PCPU, False),
        ),
        (
            EXAMPLE_TRUNCATED,
            event(
                "jail:customer-database-production-eu-west-1:memoryuse:devctl=8589934592",
                23456,
                770,
                "customer-database-producti",
                EXAMPLE_TRUNCATED,
                True,
            ),
        ),
        # Fields the line lacks are None; a short line is not truncated.
        (
            HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1",
            event(
                "user:1:maxproc:devctl=5",
                7,
                1,
                None,
                HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1",
                False,
            ),
        ),
        (
            HEADER + "rule=user:1:maxproc:devctl=5",
            event(
                "user:1:maxproc:devctl=5",
                None,
                None,
                None,
                HEADER + "rule=user:1:maxproc:devctl=5",
                False,
            ),
        ),
        # The kernel prints the real uid with %d.
        (
            HEADER + "rule=user:4294967294:maxproc:devctl=5 pid=7 ruid=-2 jail=0",
            event(
                "user:4294967294:maxproc:devctl=5",
                7,
                4294967294,
                "0",
                HEADER + "rule=user:4294967294:maxproc:devctl=5 pid=7 ruid=-2 jail=0",
                False,
            ),
        ),
        # Everything after jail= is the name, even a space or a devd-looking pair; the kernel's
        # header still makes it an RCTL event although devd would now see type=x.
        (
            HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1 jail=odd name type=x",
            event(
                "user:1:maxproc:devctl=5",
                7,
                1,
                "odd name type=x",
                HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1 jail=odd name type=x",
                False,
            ),
        ),
        # A jail name holding " pid=" does not move the pid.
        (
            HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1 jail=a pid=9",
            event(
                "user:1:maxproc:devctl=5",
                7,
                1,
                "a pid=9",
                HEADER + "rule=user:1:maxproc:devctl=5 pid=7 ruid=1 jail=a pid=9",
                False,
            ),
        ),
    ],
)
def test_parse_rctl_event_reads_events(line: str, expected: RctlEvent) -> None:
    assert parse_rctl_event(line) == expected
    assert parse_rctl_event(line.encode()) == expected


@pytest.mark.parametrize(
    "line",
    [
        EXAMPLE_DEVFS,
        EXAMPLE_IFNET,
        EXAMPLE_UMASS,
        EXAMPLE_NOMATCH,
        "",
        "\n",
        "garbage",
        "!",
        "!!!",
        "\x00\x01\x02",
        "\ufffd\ufffdsystem=RCTL",
        "!system=RCTL subsystem=rule type=exceeded rule=x",
        "!system=RCTL subsystem=other type=matched rule=x",
        "!system=rctl subsystem=rule type=matched rule=x",
        "+foo0 at system=RCTL subsystem=rule type=matched on bar0",
        " !system=RCTL subsystem=rule type=matched rule=x pid=1 ruid=1 jail=0",
    ],
)
def test_parse_rctl_event_ignores_other_lines(line: str) -> None:
    assert parse_rctl_event(line) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("!system=RCTL subsystem=rule type=matched", "no rule= field"),
        (HEADER + "pid=1 ruid=1 jail=0", "no rule= field"),
        (HEADER, "no rule= field"),
        (HEADER + "rule= pid=1 ruid=1 jail=0", "empty rule"),
        (HEADER + "rule=a b pid=1 ruid=1 jail=0", "rule text contains a space: 'a b'"),
        (HEADER + "rule=user:1:maxproc:devctl=5 pid=abc ruid=1 jail=0", "pid is not a number"),
        (HEADER + "rule=user:1:maxproc:devctl=5 pid=-1 ruid=1 jail=0", "pid is not a number"),
        (HEADER + "rule=user:1:maxproc:devctl=5 pid=1 ruid=z jail=0", "ruid is not a number"),
        (HEADER + "rule=user:1:maxproc:devctl=5 pid=1 ruid=99999999999 jail=0", "ruid out of"),
        (
            "!subsystem=rule system=RCTL type=matched rule=x pid=1 ruid=1 jail=0",
            "RCTL header not in the kernel's form",
        ),
        (
            "!system=RCTL  subsystem=rule type=matched rule=x pid=1 ruid=1 jail=0",
            "RCTL header not in the kernel's form",
        ),
    ],
)
def test_parse_rctl_event_reports_malformed_lines(line: str, reason: str) -> None:
    result = parse_rctl_event(line)
    assert isinstance(result, MalformedEvent)
    assert result.reason.startswith(reason)
    assert result.raw == line


@pytest.mark.parametrize(
    "record",
    [
        HEADER.encode() + b"rule=user:1:maxproc:devctl=5 pid=1 ruid=1 jail=db\xff1",
        HEADER.encode() + b"rule=user:1:maxproc:devctl=5 pid=1 ruid=1 jail=\xc3",
        HEADER.encode() + b"rule=user:\xe9:maxproc:devctl=5 pid=1 ruid=1 jail=0",
        b"!subsystem=rule system=RCTL type=matched jail=\xed\xa0\x80",  # a UTF-16 surrogate
    ],
)
def test_an_rctl_line_that_is_not_utf8_is_malformed(record: bytes) -> None:
    result = parse_rctl_event(record)
    assert isinstance(result, MalformedEvent), result
    assert result.reason == "not UTF-8 text"
    assert "\ufffd" not in result.raw and "\\x" in result.raw  # the bytes, escaped
    # The same bytes through argv (rctlpolicy handle: os.fsdecode's surrogate escapes).
    again = parse_rctl_event(os.fsdecode(record))
    assert isinstance(again, MalformedEvent) and again.reason == "not UTF-8 text"


def test_other_subsystems_may_carry_any_bytes() -> None:
    assert parse_rctl_event(b"!system=DEVFS subsystem=CDEV type=CREATE cdev=\xff\xfe") is None
    assert parse_rctl_event(b"+\xff0 at bus=0 on uhub0") is None


def test_a_character_cut_by_the_kernel_is_dropped_but_one_before_the_cut_is_not() -> None:
    prefix_len = len("rule=") + len(" pid=23456 ruid=770 jail=")
    rule = rule_of_length(RCTL_DATA_MAX - prefix_len - 21)
    line = format_rctl_event(rule, 23456, 770, "\u0436" * 30)  # 21 bytes left: 10.5 chars
    result = parse_rctl_event(line)
    assert isinstance(result, RctlEvent) and result.truncated
    assert result.jail == "\u0436" * 10
    # A bad byte anywhere else in a cut line is still not UTF-8.
    spoiled = line.replace(b"pid=23456", b"pid=2345\xff")
    assert parse_rctl_event(spoiled) == MalformedEvent(
        "not UTF-8 text", spoiled.rstrip(b"\n").decode("utf-8", "backslashreplace")
    )
    # An incomplete character at the end of a line that is not at the limit is not a cut.
    short = HEADER.encode() + b"rule=user:1:maxproc:devctl=5 pid=1 ruid=1 jail=\xd0"
    assert isinstance(parse_rctl_event(short), MalformedEvent)


# Where the kernel's 127-byte cut lands, for data "rule=<R> pid=23456 ruid=770 jail=pgjail":
# SUFFIX[:k] survives after a rule of 122 - k characters.
SUFFIX = " pid=23456 ruid=770 jail=pgjail"


def rule_of_length(n: int) -> str:
    head, tail = "jail:", ":memoryuse:devctl=8589934592"
    return head + "x" * (n - len(head) - len(tail)) + tail


@pytest.mark.parametrize(
    ("kept", "pid", "ruid", "jail"),
    [
        (0, None, None, None),  # ends exactly after the rule: it may have been cut
        (1, None, None, None),  # " "
        (3, None, None, None),  # " pi"
        (5, None, None, None),  # " pid=": empty value
        (7, None, None, None),  # " pid=23": digits lost
        (10, None, None, None),  # " pid=23456": may have lost digits
        (11, 23456, None, None),  # " pid=23456 ": the space proves the pid whole
        (14, 23456, None, None),  # "... rui"
        (18, 23456, None, None),  # "... ruid=77"
        (19, 23456, None, None),  # "... ruid=770"
        (20, 23456, 770, None),  # "... ruid=770 "
        (24, 23456, 770, None),  # "... ruid=770 jail"
        (25, 23456, 770, ""),  # "... jail=": a cut jail is the text that survived
        (28, 23456, 770, "pgj"),
        (31, 23456, 770, "pgjail"),  # exactly 127 bytes: whole, but indistinguishable from a cut
    ],
)
def test_truncation_at_every_field(
    kept: int, pid: int | None, ruid: int | None, jail: str | None
) -> None:
    rule = rule_of_length(RCTL_DATA_MAX - len("rule=") - kept)
    line = format_rctl_event(rule, 23456, 770, "pgjail")
    assert line == (HEADER + "rule=" + rule + SUFFIX[:kept] + "\n").encode()
    assert len(line) == len(HEADER) + RCTL_DATA_MAX + 1
    result = parse_rctl_event(line.decode())
    assert result == RctlEvent(rule, pid, ruid, jail, True, line.decode().rstrip("\n"))
    assert parse_rctl_event(line) == result


def test_rule_cut_mid_way_keeps_the_surviving_prefix() -> None:
    rule = rule_of_length(140)
    line = format_rctl_event(rule, 23456, 770, "pgjail")
    result = parse_rctl_event(line.decode())
    assert isinstance(result, RctlEvent)
    assert result.truncated
    assert result.rule == rule[: RCTL_DATA_MAX - len("rule=")]
    assert (result.pid, result.ruid, result.jail) == (None, None, None)


def test_spec_truncated_example_is_what_the_kernel_builds() -> None:
    """The section 2.3 example: 139 bytes of data before the cut, a 169-byte line after it."""
    rule = "jail:customer-database-production-eu-west-1:memoryuse:devctl=8589934592"
    full = f"rule={rule} pid=23456 ruid=770 jail=customer-database-production-eu-west-1"
    assert len(full) == 139
    line = format_rctl_event(rule, 23456, 770, "customer-database-production-eu-west-1")
    assert line == EXAMPLE_TRUNCATED.encode()
    assert len(line) == 169


@pytest.mark.parametrize("spare", [0, 1, 2])
def test_cut_inside_a_multibyte_jail_name(spare: int) -> None:
    # The cut leaves 1 or 2 bytes of a 2-byte character, or ends on a character boundary.
    prefix_len = len("rule=") + len(" pid=23456 ruid=770 jail=")
    rule = rule_of_length(RCTL_DATA_MAX - prefix_len - 20 - spare)
    line = format_rctl_event(rule, 23456, 770, "\u0436" * 30)
    as_text = line.decode("utf-8", "replace")
    for given in (line, as_text):
        result = parse_rctl_event(given)
        assert isinstance(result, RctlEvent)
        assert result.truncated
        assert result.jail == "\u0436" * (10 + spare // 2)
        assert result.pid == 23456 and result.ruid == 770


def test_format_rctl_event_round_trips() -> None:
    line = format_rctl_event("user:770:swapuse:devctl=1073741824", 81234, 770, "0")
    assert line == EXAMPLE_USER.encode()
    big = format_rctl_event("user:4294967294:maxproc:devctl=5", 1, 4294967294, "0")
    assert b" ruid=-2 " in big
    parsed = parse_rctl_event(big)
    assert isinstance(parsed, RctlEvent) and parsed.ruid == 4294967294


@pytest.mark.parametrize(("pid", "ruid"), [(-1, 0), (1, -1), (1, 1 << 32)])
def test_format_rctl_event_rejects_impossible_ids(pid: int, ruid: int) -> None:
    with pytest.raises(ValueError):
        format_rctl_event("user:1:maxproc:devctl=5", pid, ruid, "0")


# --------------------------------------------------------------------------------------------
# Framing and backoff, pure


@pytest.mark.parametrize(
    ("chunks", "lines", "pending"),
    [
        ([b"!a=1\n"], [b"!a=1"], 0),
        ([b"!a=1\n!b=2\n!c=3\n"], [b"!a=1", b"!b=2", b"!c=3"], 0),
        ([b"!a", b"=1", b"\n!b=2\n!c"], [b"!a=1", b"!b=2"], 2),
        ([b"\n\n"], [b"", b""], 0),
        ([b"!a=1"], [], 4),
    ],
)
def test_line_framer(chunks: list[bytes], lines: list[bytes], pending: int) -> None:
    framer = LineFramer()
    got = [line for chunk in chunks for line in framer.feed(chunk)]
    assert got == lines
    assert framer.pending == pending


def test_line_framer_drops_oversized_lines_to_the_next_newline() -> None:
    framer = LineFramer(max_line=8)
    assert framer.feed(b"!a=1\n0123456789") == [b"!a=1"]
    assert framer.pending == 0 and framer.oversized == 1
    assert framer.feed(b"abcdefghijk") == []
    assert framer.feed(b"tail\n!b=2\n") == [b"!b=2"]
    assert framer.oversized == 1
    assert framer.feed(b"!c") == [] and framer.take_fragment() == b"!c"


def test_backoff_doubles_to_the_cap() -> None:
    assert [Backoff().delay(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert Backoff(initial=0.01, cap=0.05).delay(10_000) == 0.05


# --------------------------------------------------------------------------------------------
# DevdClient against the devd double

FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
TIMEOUT = 5.0


@pytest.fixture
def devd(sockdir: Path) -> Iterator[DevdServer]:
    with DevdServer(sockdir, check_interval=0.05, full_check_interval=0.05) as server:
        yield server


MakeClient = Callable[..., tuple[DevdClient, "queue.Queue[DevdItem]"]]


@pytest.fixture
def make_client(sockdir: Path) -> Iterator[MakeClient]:
    """Started clients on the double's paths (overridable), stopped at the end of the test."""
    started: list[DevdClient] = []

    def _make(**kwargs: object) -> tuple[DevdClient, queue.Queue[DevdItem]]:
        out: queue.Queue[DevdItem] = kwargs.pop("out", None) or queue.Queue()  # type: ignore[assignment]
        options: dict[str, object] = {
            "seqpacket_path": sockdir / "devd.seqpacket.pipe",
            "stream_path": sockdir / "devd.pipe",
            "backoff": FAST,
            **kwargs,
        }
        client = DevdClient(out, **options)  # type: ignore[arg-type]
        client.start()
        started.append(client)
        return client, out

    yield _make
    for client in started:
        assert client.stop(timeout=TIMEOUT)


def record_of(text: str) -> bytes:
    """A record as the reader queues it: devd's bytes without the trailing newline."""
    return text.rstrip("\n").encode()


def take(out: queue.Queue[DevdItem], n: int = 1) -> list[DevdItem]:
    return [out.get(timeout=TIMEOUT) for _ in range(n)]


def test_seqpacket_client_gets_one_item_per_record(
    devd: DevdServer, make_client: MakeClient
) -> None:
    client, out = make_client()
    assert take(out) == [Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET)]
    assert client.connected
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    # Records, not newlines, frame the seqpacket socket: a record without "\n" is still one.
    for line in (EXAMPLE_USER.encode(), b"!no-newline=1", EXAMPLE_DEVFS.encode()):
        devd.send(line)
    assert take(out) == [Receiving(str(devd.seqpacket_path), SocketKind.SEQPACKET)]
    assert client.receiving
    assert take(out, 3) == [record_of(EXAMPLE_USER), b"!no-newline=1", record_of(EXAMPLE_DEVFS)]


def test_client_falls_back_to_the_stream_socket(
    devd: DevdServer, make_client: MakeClient, sockdir: Path
) -> None:
    _, out = make_client(seqpacket_path=sockdir / "absent.pipe")
    assert take(out) == [Connected(str(devd.stream_path), SocketKind.STREAM)]
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.send(EXAMPLE_PGJAIL.encode())
    devd.send(EXAMPLE_IFNET.encode())
    assert take(out) == [Receiving(str(devd.stream_path), SocketKind.STREAM)]
    assert take(out, 2) == [record_of(EXAMPLE_PGJAIL), record_of(EXAMPLE_IFNET)]


def test_a_stream_socket_at_the_seqpacket_path_is_skipped(
    devd: DevdServer, make_client: MakeClient
) -> None:
    # Connecting a seqpacket socket to a stream listener fails (EPROTOTYPE): fall back.
    _, out = make_client(seqpacket_path=devd.stream_path, stream_path=devd.stream_path)
    assert take(out) == [Connected(str(devd.stream_path), SocketKind.STREAM)]


def test_stream_framing_splits_joins_and_discards_the_last_fragment(
    sockdir: Path, make_client: MakeClient
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sockdir / "devd.pipe"))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    try:
        client, out = make_client()
        conn, _ = listener.accept()
        with conn:
            assert take(out) == [Connected(str(sockdir / "devd.pipe"), SocketKind.STREAM)]
            conn.sendall(b"!a=1\n!b")
            assert take(out) == [Receiving(str(sockdir / "devd.pipe"), SocketKind.STREAM)]
            assert take(out) == [b"!a=1"]  # "!b" is now held as a fragment
            conn.sendall(b"=2\n!c=3\n!d=4\n\n!e")
            assert take(out, 3) == [b"!b=2", b"!c=3", b"!d=4"]
        # devd's short write: the unterminated "!e" is discarded at EOF, never delivered.
        assert take(out) == [Disconnected("EOF")]
        assert client.fragments_discarded == 1
        assert client.lines == 4
    finally:
        listener.close()


def test_restart_reconnects_and_reports_it(devd: DevdServer, make_client: MakeClient) -> None:
    seen: list[Connected | Disconnected] = []
    client, out = make_client(on_transition=seen.append)
    assert take(out) == [Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET)]
    # Restart only once devd holds the client: closing a listener resets connections still
    # waiting in its backlog (ECONNRESET rather than EOF).
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.restart()
    assert take(out, 2) == [
        Disconnected("EOF"),
        Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET),
    ]
    assert client.reconnects == 1
    assert seen == [
        Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        Disconnected("EOF"),
        Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET),
    ]
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.send(EXAMPLE_PCPU.encode())
    assert take(out, 2) == [
        Receiving(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        record_of(EXAMPLE_PCPU),
    ]


def test_client_waits_out_a_devd_outage(devd: DevdServer, make_client: MakeClient) -> None:
    client, out = make_client()
    take(out)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.stop()  # stale socket files: every attempt now gets ECONNREFUSED
    assert take(out) == [Disconnected("EOF")]
    assert not client.connected
    devd.start()
    assert take(out) == [Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET)]
    assert (client.connected, client.reconnects) == (True, 1)


def test_reconnect_attempts_back_off_to_the_cap(sockdir: Path, make_client: MakeClient) -> None:
    delays: list[float] = []
    enough = threading.Event()
    release = threading.Event()

    def record(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 8:
            enough.set()
            release.wait(TIMEOUT)

    client, out = make_client(backoff=Backoff(), wait=record)
    assert enough.wait(TIMEOUT)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert not client.connected
    assert out.empty()
    release.set()


def test_a_peer_that_hangs_up_at_once_is_retried_with_a_growing_backoff(
    sockdir: Path, make_client: MakeClient
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(sockdir / "devd.seqpacket.pipe"))
    listener.listen(16)
    listener.settimeout(0.05)
    hung_up = threading.Event()

    def hang_up() -> None:
        while not hung_up.is_set():
            try:
                peer, _ = listener.accept()
            except TimeoutError:
                continue
            peer.close()

    acceptor = threading.Thread(target=hang_up, daemon=True)
    acceptor.start()
    delays: list[float] = []
    enough = threading.Event()
    release = threading.Event()

    def record(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 6:
            enough.set()
            release.wait(TIMEOUT)

    try:
        client, _ = make_client(backoff=Backoff(), wait=record)
        assert enough.wait(TIMEOUT)
        assert delays == [0.5, 1, 2, 4, 8, 16]
        assert client.reconnects == 5  # every attempt connected, and was hung up on
        assert not client.receiving
    finally:
        hung_up.set()
        release.set()
        acceptor.join(TIMEOUT)
        listener.close()


def test_garbage_and_non_rctl_lines_are_delivered_for_the_parser(
    devd: DevdServer, make_client: MakeClient
) -> None:
    _, out = make_client()
    take(out)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    records = [
        b"\xff\xfe" + EXAMPLE_USER.encode(),  # bad UTF-8 still becomes an item
        EXAMPLE_DEVFS.encode(),
        b"\n",  # empty after the newline: nothing to deliver
        b"!system=RCTL subsystem=rule type=matched rule=x pid=oops ruid=1 jail=0\n",
        EXAMPLE_TRUNCATED.encode(),
    ]
    for record in records:
        devd.send(record)
    assert isinstance(take(out)[0], Receiving)
    items = take(out, 4)
    assert items[0] == b"\xff\xfe" + record_of(EXAMPLE_USER)  # the bytes as devd sent them
    results = [parse_rctl_event(item) for item in items if isinstance(item, bytes)]
    assert results[:2] == [None, None]
    assert isinstance(results[2], MalformedEvent)
    assert isinstance(results[3], RctlEvent) and results[3].truncated
    assert out.empty()


def test_flood_of_2000_events_arrives_in_order(
    devd: DevdServer, make_client: MakeClient, sockdir: Path
) -> None:
    _, seq_out = make_client()
    _, stream_out = make_client(seqpacket_path=sockdir / "absent.pipe")
    take(seq_out)
    take(stream_out)
    assert devd.wait_for_clients(2, timeout=TIMEOUT)
    first = True
    lines = [
        format_rctl_event(f"user:{i}:swapuse:devctl=1073741824", 1000 + i, i, f"jail{i}")
        for i in range(2000)
    ]
    # Batches well inside the send buffer: a client that reads promptly is never dropped.
    for start in range(0, len(lines), 200):
        batch = lines[start : start + 200]
        for record in batch:
            assert devd.send(record) == 2
        expected = [record.rstrip(b"\n") for record in batch]
        if first:
            assert isinstance(take(seq_out)[0], Receiving)
            assert isinstance(take(stream_out)[0], Receiving)
            first = False
        assert take(seq_out, len(batch)) == expected
        assert take(stream_out, len(batch)) == expected
    assert devd.dropped_total == 0
    assert seq_out.empty() and stream_out.empty()


def test_oversized_seqpacket_record_is_cut_and_counted(
    devd: DevdServer, make_client: MakeClient
) -> None:
    client, out = make_client()
    take(out)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.send(b"!big=" + b"x" * (DEVCTL_MAXBUF + 100) + b"\n")
    devd.send(EXAMPLE_USER.encode())
    assert isinstance(take(out)[0], Receiving)
    big, after = take(out, 2)
    assert isinstance(big, bytes) and len(big) == DEVCTL_MAXBUF
    assert after == record_of(EXAMPLE_USER)
    assert client.records_truncated == 1


class WatchedQueue(queue.Queue[DevdItem]):
    """A bounded queue that lets the test wait until the reader has offered n items."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.offered = 0
        self.offers = threading.Condition()

    def put_nowait(self, item: DevdItem) -> None:
        with self.offers:
            self.offered += 1
            self.offers.notify_all()
        super().put_nowait(item)


def test_full_bounded_queue_drops_without_blocking_the_reader(
    devd: DevdServer, make_client: MakeClient
) -> None:
    watched = WatchedQueue(maxsize=3)
    client, out = make_client(out=watched)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    for i in range(3):
        devd.send(f"!n={i}\n".encode())
    with watched.offers:
        assert watched.offers.wait_for(lambda: watched.offered == 5, timeout=TIMEOUT)
    # Connected, Receiving and !n=0 filled the queue; !n=1 and !n=2 were dropped, not waited for.
    assert client.dropped == 2
    assert take(out, 3) == [
        Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        Receiving(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        b"!n=0",
    ]
    devd.send(b"!n=3\n")
    assert take(out) == [b"!n=3"]


def test_stop_ends_a_connected_reader_promptly(devd: DevdServer, sockdir: Path) -> None:
    out: queue.Queue[DevdItem] = queue.Queue()
    client = DevdClient(out, seqpacket_path=devd.seqpacket_path, stream_path=devd.stream_path)
    client.start()
    take(out)
    started = time.monotonic()
    assert client.stop(timeout=TIMEOUT)
    assert time.monotonic() - started < 1.0
    assert take(out) == [Disconnected("stopped")]
    assert not client.connected


def test_stop_interrupts_the_backoff_wait(sockdir: Path) -> None:
    out: queue.Queue[DevdItem] = queue.Queue()
    # Nothing listens, and the next attempt is 30 s away.
    client = DevdClient(
        out,
        seqpacket_path=sockdir / "none",
        stream_path=None,
        backoff=Backoff(initial=30.0),
    )
    with client:
        pass
    started = time.monotonic()
    assert client.stop(timeout=TIMEOUT)  # stopping twice is harmless
    assert time.monotonic() - started < 1.0
    assert out.empty()


def test_client_arguments_are_checked(sockdir: Path) -> None:
    out: queue.Queue[DevdItem] = queue.Queue()
    with pytest.raises(ValueError, match="8192"):
        DevdClient(out, recv_size=4096)
    with pytest.raises(ValueError, match="needs"):
        DevdClient(out, seqpacket_path=None, stream_path=None)
    unstarted = DevdClient(out, seqpacket_path=sockdir / "x")
    assert unstarted.stop()


# --------------------------------------------------------------------------------------------
# Many records per call, the receive buffer, devd's client limit


@pytest.mark.parametrize("batch", [True, False])
def test_batch_receiver_takes_records_whole_in_order(batch: bool) -> None:
    sender, receiver_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sender, receiver_sock:
        receiver_sock.setblocking(False)
        receiver = BatchReceiver(receiver_sock, DEVCTL_MAXBUF, count=8, batch=batch)
        if batch and sys.platform.startswith(("linux", "freebsd")):
            assert receiver.batched
        with pytest.raises(BlockingIOError):
            receiver.receive()
        sent = [f"!n={i}".encode() * (i + 1) for i in range(20)]
        sent.append(b"!big=" + b"x" * DEVCTL_MAXBUF)
        for record in sent:
            sender.send(record, socket.MSG_EOR)
        got: list[Record] = []
        while len(got) < len(sent):
            records = receiver.receive()
            assert 1 <= len(records) <= (8 if receiver.batched else 1)
            got.extend(records)
        assert [r.data for r in got[:-1]] == sent[:-1]
        assert not any(r.cut for r in got[:-1])
        assert got[-1] == Record(sent[-1][:DEVCTL_MAXBUF], True)
        sender.close()
        assert receiver.receive() == []  # EOF


@pytest.mark.parametrize("missing", [False, True])
def test_records_sent_before_the_peer_closed_come_before_eof(
    missing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if missing:  # a libc without recvmmsg(2): one recvmsg(2) per record, the same results
        monkeypatch.setattr(batch_module, "_recvmmsg", lambda: None)
    sender, receiver_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sender, receiver_sock:
        receiver_sock.setblocking(False)
        receiver = BatchReceiver(receiver_sock, DEVCTL_MAXBUF, count=8)
        assert receiver.batched is (not missing and sys.platform.startswith(("linux", "freebsd")))
        sent = [f"!n={i}".encode() for i in range(3)]
        for record in sent:
            sender.send(record, socket.MSG_EOR)
        sender.close()  # mid-batch: the batch ends at the end of file, nothing is lost
        got: list[bytes] = []
        while (records := receiver.receive()) != []:
            got.extend(record.data for record in records)
        assert got == sent
        assert receiver.receive() == []


def test_the_reader_asks_for_a_large_receive_buffer(
    devd: DevdServer, make_client: MakeClient
) -> None:
    client, out = make_client()
    take(out)
    default = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with default:
        assert client.receive_buffer > default.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_a_connection_devd_has_not_accepted_is_not_receiving(sockdir: Path) -> None:
    # devd at its limit stops accepting, yet connect() succeeds into the listen queue.
    with DevdServer(sockdir, client_limit=1, full_check_interval=0.05) as server:
        first, first_out = queue.Queue[DevdItem](), queue.Queue[DevdItem]()
        seqpacket = server.seqpacket_path
        holder = DevdClient(first_out, seqpacket_path=seqpacket, stream_path=None, backoff=FAST)
        waiting = DevdClient(first, seqpacket_path=seqpacket, stream_path=None, backoff=FAST)
        with holder:
            assert take(first_out) == [Connected(str(seqpacket), SocketKind.SEQPACKET)]
            assert server.wait_for_clients(1, TIMEOUT)
            with waiting:
                assert take(first) == [Connected(str(seqpacket), SocketKind.SEQPACKET)]
                server.send(EXAMPLE_USER.encode())
                assert take(first_out, 2)[1] == record_of(EXAMPLE_USER)
                assert holder.receiving
                assert first.empty() and waiting.connected and not waiting.receiving
                holder.stop()  # a slot frees: devd accepts the waiting connection
                assert server.wait_for(lambda s: s.accepted_total == 2, TIMEOUT)
                assert server.wait_for_clients(1, TIMEOUT)
                server.send(EXAMPLE_PCPU.encode())
                assert take(first, 2) == [
                    Receiving(str(seqpacket), SocketKind.SEQPACKET),
                    record_of(EXAMPLE_PCPU),
                ]
                assert waiting.receiving


def test_where_records_carry_msg_eor_a_part_without_it_is_discarded(
    devd: DevdServer, make_client: MakeClient
) -> None:
    # Linux never sets MSG_EOR on receive, so here every record looks like a part of one:
    # what a FreeBSD reader sees of the record devd's short send left behind.
    client, out = make_client(require_eor=True)
    take(out)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    devd.send(EXAMPLE_USER.encode())
    assert isinstance(take(out)[0], Receiving)
    with pytest.raises(queue.Empty):
        out.get(timeout=0.2)
    assert (client.fragments_discarded, client.lines) == (1, 0)


def test_a_simple_queue_is_bounded_by_the_limit(devd: DevdServer, make_client: MakeClient) -> None:
    simple: queue.SimpleQueue[DevdItem] = queue.SimpleQueue()
    client, _ = make_client(out=simple, limit=3)
    assert devd.wait_for_clients(1, timeout=TIMEOUT)
    for i in range(5):
        devd.send(f"!n={i}\n".encode())
    deadline = time.monotonic() + TIMEOUT
    while client.lines < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Connected, Receiving and !n=0 make three: !n=1 to !n=4 found the queue at its limit.
    assert (client.lines, client.dropped) == (5, 4)
    assert [simple.get(timeout=TIMEOUT) for _ in range(3)] == [
        Connected(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        Receiving(str(devd.seqpacket_path), SocketKind.SEQPACKET),
        b"!n=0",
    ]
    devd.send(b"!n=5\n")
    assert simple.get(timeout=TIMEOUT) == b"!n=5"


class RefusingSocket(socket.socket):
    """A real socket on a system that refuses receive buffers over 256 KiB, as FreeBSD does
    over kern.ipc.maxsockbuf's share (ENOBUFS)."""

    asked: list[int]

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        self.asked.append(value)
        if option == socket.SO_RCVBUF and value > 262144:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        super().setsockopt(level, option, value, *rest)


def test_the_receive_buffer_request_is_halved_until_accepted() -> None:
    with RefusingSocket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.asked = []
        got = _ask_receive_buffer(sock, RECEIVE_BUFFER)
        assert sock.asked == [1 << 20, 1 << 19, 1 << 18]
        assert got == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0
