"""The daemon's pure decisions (rctlpolicy.eventmatch): which rule and jail an RCTL event is
about (the kernel cuts its messages at 127 bytes), which rules a resync may act on.

Events are built as the kernel writes them (`format_rctl_event`) and read by the daemon's parser,
so the tables exercise the real cut points.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from corpus_host import rule
from prometheus_client import generate_latest

from rctlpolicy.clock import ManualClock
from rctlpolicy.config import DaemonConfig
from rctlpolicy.daemon import Daemon
from rctlpolicy.devd import RctlEvent, format_rctl_event, parse_rctl_event
from rctlpolicy.eventmatch import (
    event_jail,
    identify_rule,
    needs_event_fields,
    resync_candidate,
    rule_text_may_be_cut,
)
from rctlpolicy.kernel import open_kernel
from rctlpolicy.loadworker import ChildLoader
from rctlpolicy.onmatch import OnMatch
from rctlpolicy.policy_model import PolicyRule, SourceLocation

LONG = "customer-database-production-eu-west-1-replica-0001"  # cut inside jail=
HUGE = "j" * 120  # cut inside the rule itself
RUN = OnMatch(run=("/usr/bin/true", "{jail}"))


def policy_rule(
    text: str, on_match: OnMatch | None = RUN, pattern: str | None = None
) -> PolicyRule:
    return PolicyRule(rule(text), SourceLocation("p.yaml", 1, 1), text, on_match, None, pattern)


def event(rule_text: str, jail: str, pid: int = 4242, ruid: int = 770) -> RctlEvent:
    parsed = parse_rctl_event(format_rctl_event(rule_text, pid, ruid, jail))
    assert isinstance(parsed, RctlEvent)
    return parsed


def index(*texts: str) -> dict[str, PolicyRule]:
    return {r.canonical: r for r in (policy_rule(t) for t in texts)}


DB1 = "jail:db1:memoryuse:devctl=4294967296"
LONG_RULE = f"jail:{LONG}:memoryuse:devctl=8589934592"
HUGE_MEM = f"jail:{HUGE}:memoryuse:devctl=8589934592"
HUGE_VMEM = f"jail:{HUGE}:vmemoryuse:devctl=8589934592"
USER_RULE = "user:770:swapuse:devctl=1073741824"


# --- which rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule_text", "jail", "policy", "expected"),
    [
        (DB1, "db1", (DB1,), DB1),  # whole message, exact rule
        (DB1, "db1", ("jail:db1:memoryuse:devctl=1",), None),  # not in the policy
        (LONG_RULE, LONG, (LONG_RULE,), LONG_RULE),  # jail= cut, the rule whole
        (HUGE_MEM, HUGE, (HUGE_MEM,), HUGE_MEM),  # the rule cut: one policy rule fits
        (HUGE_MEM, HUGE, (HUGE_MEM, HUGE_VMEM), None),  # the cut part fits both
        (HUGE_MEM, HUGE, (DB1,), None),  # ... or fits none of them
    ],
)
def test_identify_rule(
    rule_text: str, jail: str, policy: tuple[str, ...], expected: str | None
) -> None:
    found = identify_rule(event(rule_text, jail), index(*policy))
    assert (found.canonical if found else None) == expected


def test_a_whole_rule_in_a_truncated_message_is_never_matched_by_prefix() -> None:
    # The jail name was cut, not the rule: "...devctl=8" is not "...devctl=85899...".
    short = f"jail:{LONG}:memoryuse:devctl=8"
    cut = event(short, LONG)
    assert cut.truncated and not rule_text_may_be_cut(cut)
    assert identify_rule(cut, index(LONG_RULE)) is None


def test_rule_text_may_be_cut_only_when_it_ends_the_message() -> None:
    assert not rule_text_may_be_cut(event(DB1, "db1"))
    assert not rule_text_may_be_cut(event(LONG_RULE, LONG))
    assert rule_text_may_be_cut(event(HUGE_MEM, HUGE))


# --- which jail --------------------------------------------------------------------------------

RUNNING = {"db1", "web1", "web10", LONG, "pg-primary-long-name"}


@pytest.mark.parametrize(
    ("rule_text", "jail", "expected"),
    [
        (DB1, "db1", "db1"),  # whole message: the jail field as it is
        (USER_RULE, "0", "0"),  # the host
        (USER_RULE, "web1", "web1"),  # a user rule fires in any jail
        (LONG_RULE, LONG, LONG),  # jail= cut: the rule's subject
        (HUGE_MEM, HUGE, HUGE),  # jail= gone with the rule's tail: the subject
    ],
)
def test_event_jail(rule_text: str, jail: str, expected: str) -> None:
    cut = event(rule_text, jail)
    assert event_jail(cut, rule(rule_text), RUNNING) == expected


def _user_event(jail_prefix: str) -> RctlEvent:
    """A user rule's event whose jail field was cut to `jail_prefix` (built by hand: a real
    cut needs a jail name of exactly the right length)."""
    raw = f"!system=RCTL subsystem=rule type=matched rule={USER_RULE} pid=1 ruid=770 jail="
    return RctlEvent(USER_RULE, 1, 770, jail_prefix, True, raw + jail_prefix)


def test_a_cut_jail_of_a_user_rule_must_name_one_running_jail() -> None:
    assert event_jail(_user_event("pg-pri"), rule(USER_RULE), RUNNING) == "pg-primary-long-name"
    assert event_jail(_user_event("web1"), rule(USER_RULE), RUNNING) is None  # web1 or web10
    assert event_jail(_user_event("nope"), rule(USER_RULE), RUNNING) is None
    assert event_jail(_user_event(""), rule(USER_RULE), RUNNING) is None


def test_a_jail_rule_with_a_cut_jail_naming_a_child_jail_needs_a_unique_match() -> None:
    # A jail rule also fires for the processes of its child jails ("db1.replica").
    raw = f"!system=RCTL subsystem=rule type=matched rule={DB1} pid=1 ruid=0 jail=db1.rep"
    cut = RctlEvent(DB1, 1, 0, "db1.rep", True, raw)
    assert event_jail(cut, rule(DB1), RUNNING | {"db1.replica"}) == "db1.replica"
    assert event_jail(cut, rule(DB1), RUNNING) is None


def test_the_jail_of_a_real_cut_user_event_is_found_among_running_jails() -> None:
    jail = "tenant-" + "x" * 90
    truncated = event(USER_RULE, jail)
    assert truncated.truncated and truncated.jail != jail
    assert event_jail(truncated, rule(USER_RULE), {jail, "db1"}) == jail


# --- resync ------------------------------------------------------------------------------------


def test_resync_candidates_are_devctl_rules_with_an_action_over_their_subject() -> None:
    assert resync_candidate(policy_rule(DB1))
    assert not resync_candidate(policy_rule(DB1, on_match=None))
    assert not resync_candidate(policy_rule("jail:db1:memoryuse:devctl=4294967296/process"))
    assert not resync_candidate(policy_rule("jail:db1:memoryuse:log=4294967296"))


def test_actions_that_need_an_event_cannot_run_from_a_resync() -> None:
    assert not needs_event_fields(OnMatch(run=("/usr/bin/logger", "{jail}", "{rule}")))
    assert needs_event_fields(OnMatch(run=("/usr/bin/logger", "pid={pid}")))
    assert needs_event_fields(OnMatch(run=("/usr/bin/logger", "{ruid}")))
    assert needs_event_fields(OnMatch(signal="TERM"))
    assert not needs_event_fields(OnMatch(service=("postgresql", "restart")))


# --- the clock seam ----------------------------------------------------------------------------


def test_the_daemon_reads_time_only_through_its_clock(tmp_path: Path) -> None:
    """What a scrape says about time comes from the injected clock, never the system's."""
    host = tmp_path / "host.yaml"
    host.write_text("jails: {db1: {jid: 3}}\n")
    setup = open_kernel("sim", host)
    clock = ManualClock(start_time=1_234_567_890.0)
    daemon = Daemon(
        DaemonConfig(rules_dir=tmp_path / "rules"),
        setup.kernel,
        ChildLoader("sim", host),
        tmp_path / "state",
        clock=clock,
    )
    try:
        clock.advance(60)
        assert daemon.stats.start_time == 1_234_567_890.0
        text = generate_latest(daemon.registry).decode()
        assert "rctlpolicy_process_start_time_seconds 1.23456789e+09" in text
    finally:
        daemon.close()


# --- the interpreter is the process's, not the library's ---------------------------------------


def test_a_daemon_used_as_a_library_leaves_the_switch_interval_alone(tmp_path: Path) -> None:
    """Only `rctlpolicy daemon` (service.run_daemon, the process's owner) shortens the thread
    switch interval; a Daemon started in a test or another program leaves it as it was."""
    host = tmp_path / "host.yaml"
    host.write_text("jails: {db1: {jid: 3}}\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    setup = open_kernel("sim", host)
    before = sys.getswitchinterval()
    daemon = Daemon(
        DaemonConfig(rules_dir=rules, listen_address="127.0.0.1:0", history_interval=0),
        setup.kernel,
        ChildLoader("sim", host),
        tmp_path / "state",
        devd_paths=(tmp_path / "devd.seqpacket.pipe", tmp_path / "devd.pipe"),
    )
    try:
        daemon.start()
        assert daemon.devd is not None  # the reader runs
        assert sys.getswitchinterval() == before
    finally:
        daemon.shutdown()
        daemon.close()
    assert sys.getswitchinterval() == before
