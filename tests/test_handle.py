"""`rctlpolicy handle`: devd's hook mode, one process per event, run as devd would run it.

Cooldowns hold across invocations through the locked state file; a message the kernel cut
short is identified as the daemon identifies it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from daemon_helpers import PYTHON, SimHost, action_argv, records, wait_for_records

from rctlpolicy.devd import RctlEvent, format_rctl_event, parse_rctl_event

DB1_MEM = "jail:db1:memoryuse:devctl=4294967296"
LONG = "customer-database-production-eu-west-1-replica-0001"
LONG_RULE = f"jail:{LONG}:memoryuse:devctl=8589934592"


class Hook:
    def __init__(self, root: Path) -> None:
        self.host = SimHost(root / "host.yaml")
        self.rules = root / "rules"
        self.rules.mkdir()
        self.out = root / "out"
        self.out.mkdir()
        self.state = root / "state"
        self.config = root / "rctlpolicy.yaml"
        self.config.write_text("log.level: warning\n")

    def policy(self, entries: list[dict[str, object]]) -> None:
        (self.rules / "p.yaml").write_text(yaml.safe_dump({"rules": entries}))

    def handle(self, *event: str) -> subprocess.CompletedProcess[str]:
        """What devd.conf's action line runs: rctlpolicy handle --rule $rule --pid $pid ..."""
        argv = [
            PYTHON, "-m", "rctlpolicy", "handle",
            "--config", str(self.config),
            "--kernel", "sim", "--sim-host", str(self.host.path),
            "--rules-dir", str(self.rules), "--state-dir", str(self.state),
        ]  # fmt: skip
        return subprocess.run(
            [*argv, *event], capture_output=True, text=True, timeout=30, check=False
        )


@pytest.fixture
def hook(tmp_path: Path) -> Hook:
    return Hook(tmp_path)


def test_a_second_event_within_the_cooldown_is_suppressed(hook: Hook) -> None:
    argv = action_argv(hook.out, "{jail}", "{pid}", "{ruid}")
    hook.policy([{"rule": DB1_MEM, "on_match": {"run": argv, "cooldown": "1h"}}])
    event = ("--rule", DB1_MEM, "--pid", "4242", "--ruid", "770", "--jail", "db1")

    first = hook.handle(*event)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(": ok")
    assert [r["argv"] for r in records(hook.out)] == [["db1", "4242", "770"]]

    second = hook.handle(*event)
    assert second.returncode == 0, second.stderr
    assert "suppressed (cooldown" in second.stdout
    assert len(records(hook.out)) == 1
    assert (hook.state / "actions.json").exists()


def test_a_cut_jail_name_is_taken_from_the_rule(hook: Hook) -> None:
    hook.host.add_jail(LONG, 11)
    hook.policy([{"rule": LONG_RULE, "on_match": {"run": action_argv(hook.out, "{jail}")}}])
    # What devd parsed from the kernel's line: the jail name cut at the 127-byte limit.
    cut = parse_rctl_event(format_rctl_event(LONG_RULE, 23456, 770, LONG))
    assert isinstance(cut, RctlEvent) and cut.jail is not None and cut.jail != LONG
    result = hook.handle("--rule", LONG_RULE, "--pid", "23456", "--ruid", "770",
                         "--jail", cut.jail)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert wait_for_records(hook.out, 1)[0]["argv"] == [LONG]


def test_an_event_for_a_rule_not_in_the_policy_does_nothing(hook: Hook) -> None:
    hook.policy([{"rule": DB1_MEM, "on_match": {"run": action_argv(hook.out, "{jail}")}}])
    result = hook.handle("--rule", "jail:db1:memoryuse:devctl=1", "--pid", "1", "--jail", "db1")
    assert result.returncode == 1
    assert "no single policy rule is jail:db1:memoryuse:devctl=1" in result.stderr
    assert records(hook.out) == []


def test_an_invalid_policy_is_not_acted_on(hook: Hook) -> None:
    hook.policy([{"rule": "jail:db1:memoryuze:devctl=1g"}])
    result = hook.handle("--rule", DB1_MEM, "--pid", "4242", "--jail", "db1")
    assert result.returncode == 1
    assert "error[unknown-resource]" in result.stderr
    assert "the policy has errors; not acting" in result.stderr


def test_an_event_from_a_jail_the_rule_does_not_cover_runs_nothing(hook: Hook) -> None:
    hook.policy([{"rule": DB1_MEM, "on_match": {"run": action_argv(hook.out, "{jail}")}}])
    result = hook.handle("--rule", DB1_MEM, "--pid", "4242", "--ruid", "0", "--jail", "0")
    assert result.returncode == 1
    assert "rejecting RCTL event for jail:db1:memoryuse" in result.stderr
    assert records(hook.out) == []
    child = hook.handle("--rule", DB1_MEM, "--pid", "4242", "--ruid", "0", "--jail", "db1.a")
    assert child.returncode == 0, child.stderr
    assert records(hook.out)[0]["argv"] == ["db1"]


def test_a_field_that_is_not_utf8_makes_the_event_malformed(hook: Hook) -> None:
    """devd passes the kernel's bytes through argv; they reach Python as surrogate escapes."""
    hook.policy([{"rule": DB1_MEM, "on_match": {"run": action_argv(hook.out, "{jail}")}}])
    jail = os.fsdecode(b"db\xff1")
    result = hook.handle("--rule", DB1_MEM, "--pid", "4242", "--ruid", "770", "--jail", jail)
    assert result.returncode == 1
    assert "malformed event (not UTF-8 text)" in result.stderr
    assert records(hook.out) == []
