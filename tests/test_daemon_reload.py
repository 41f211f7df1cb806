"""The daemon's promises under hostile conditions, through its real interfaces: a policy written
in pieces, a reload that would unload most rules, a rules directory deleted and re-created, a
huge policy and SIGTERM, files planted under policy names, log lines forged from events.

Each test runs the daemon as a subprocess (`daemon_helpers.Env`) on a simulated host, writes real
files, sends real signals, and reads the kernel through `rctlpolicy sim rctl` in other processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest
from daemon_helpers import Env, FakeSyslogd, action_argv, wait_for_records

from rctlpolicy.devd import RCTL_HEADER

DB1_MEM = "jail:db1:memoryuse:devctl=4294967296"


def _added(daemon_log: str) -> set[str]:
    return set(re.findall(r"added rule (\S+)", daemon_log))


# --- §1: a policy that is still being written is never applied -------------------------------


def test_a_policy_written_in_pieces_is_applied_only_once_it_is_whole(env: Env) -> None:
    """rctl.conf rewritten in 25-byte pieces 0.5 s apart (a slow scp, someone typing into
    `cat >`), its last line left without its newline a while: no cut rule ever reaches the
    kernel and no rule is unloaded on the way."""
    old = "jail:db1:maxproc:deny=100\nuser:www:maxproc:deny=200\njail:web1:openfiles:deny=4096\n"
    new = old + "jail:db1:memoryuse:deny=4g\njail:web2:maxproc:deny=77"
    conf = env.rules_dir / "rctl.conf"
    conf.write_text(old)
    daemon = env.start(config={"reload-settle": 2})
    before = env.host.rules()
    start = daemon.log.mark

    pieces = [new[i : i + 25] for i in range(0, len(new), 25)]
    with conf.open("w") as handle:  # truncated: the writer starts from nothing
        for piece in pieces:
            time.sleep(0.5)  # the writer's pace, not a wait for the daemon
            mark = daemon.log.mark
            handle.write(piece)
            handle.flush()
    # The whole text but its final newline: still being written, as rc.d/rctl would see it.
    daemon.log.wait_for(r"reload put off: the last line of \S+rctl\.conf has no newline", 10, mark)
    assert env.host.rules() == before
    daemon.wait_value("rctlpolicy_config_reload_pending", 1)

    mark = daemon.log.mark
    with conf.open("a") as handle:
        handle.write("\n")
    daemon.log.wait_for(r"policy reloaded \(files changed\): 5 rules", since=mark)
    assert env.host.rules() == sorted(
        [*before, "jail:db1:memoryuse:deny=4294967296", "jail:web2:maxproc:deny=77"]
    )
    log = "\n".join(daemon.log.lines[start:])
    assert _added(log) == {"jail:db1:memoryuse:deny=4294967296", "jail:web2:maxproc:deny=77"}
    assert "removed rule" not in log
    assert "rejected" not in log
    daemon.wait_value("rctlpolicy_config_reload_pending", 0)


def _jail_rules(count: int) -> str:
    return "".join(f"jail:j{n}:maxproc:deny={100 + n}\n" for n in range(count))


def test_a_reload_that_would_remove_most_rules_is_held_until_seen_again(env: Env) -> None:
    conf = env.rules_dir / "rctl.conf"
    conf.write_text(_jail_rules(14))
    daemon = env.start(config={"reload-settle": 2})
    assert len(env.host.rules()) == 14

    mark = daemon.log.mark
    conf.write_text(_jail_rules(2))
    daemon.log.wait_for(r"reload held back: it would remove 12 of the 14 rules in force", 15, mark)
    assert len(env.host.rules()) == 14
    daemon.wait_value("rctlpolicy_config_reload_pending", 1)

    daemon.log.wait_for(r"the policy held back is unchanged after 2 s: applying it", 15, mark)
    daemon.log.wait_for(r"policy reloaded \(files changed, confirmed\): 2 rules", since=mark)
    assert env.host.rules() == ["jail:j0:maxproc:deny=100", "jail:j1:maxproc:deny=101"]
    daemon.wait_value("rctlpolicy_config_reload_pending", 0)


def test_sighup_applies_a_mass_removal_at_once(env: Env) -> None:
    conf = env.rules_dir / "rctl.conf"
    conf.write_text(_jail_rules(14))
    # A debounce longer than the test: only the signal can cause this reload.
    daemon = env.start(config={"reload-debounce": 60})
    conf.write_text(_jail_rules(2))
    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    daemon.log.wait_for(r"policy reloaded \(SIGHUP\): 2 rules", since=mark)
    assert daemon.log.find(r"removing 12 of the 14 rules in force \(SIGHUP\)", mark)
    assert not daemon.log.find("held back", mark)
    assert len(env.host.rules()) == 2


def test_edits_are_picked_up_after_the_rules_directory_is_deleted_and_recreated(
    env: Env,
) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    daemon = env.start()

    mark = daemon.log.mark
    shutil.rmtree(env.rules_dir)
    daemon.log.wait_for(r"reload \(files changed\) rejected", since=mark)
    assert env.host.rules() == ["jail:db1:maxproc:deny=100"]

    # Re-created with its content in one step (as a restore or a configuration tool does).
    staging = env.root / "rules.new"
    staging.mkdir()
    (staging / "p.yaml").write_text("rules:\n  - jail:db1:maxproc:deny=200\n")
    mark = daemon.log.mark
    staging.rename(env.rules_dir)
    daemon.log.wait_for(r"added rule jail:db1:maxproc:deny=200", since=mark)

    for amount in (300, 400):  # later edits are seen too, without a signal
        mark = daemon.log.mark
        env.policy("p.yaml", [f"jail:db1:maxproc:deny={amount}"])
        daemon.log.wait_for(rf"added rule jail:db1:maxproc:deny={amount}", since=mark)
    assert env.host.rules() == ["jail:db1:maxproc:deny=400"]


def test_sigterm_during_a_10_mb_reload_stops_the_daemon_while_events_are_still_handled(
    env: Env,
) -> None:
    argv = action_argv(env.out, "{jail}", "{pid}")
    env.policy("p.yaml", [{"rule": DB1_MEM, "on_match": {"run": argv}}])
    # Only the signal reloads: the file written below must not start a load of its own.
    daemon = env.start("--log.level", "debug", config={"reload-debounce": 60})
    before = env.host.rules()
    lines = (f"jail:j{n}:maxproc:deny={n + 1}\n" for n in range(400_000))
    big = env.rules_dir / "big.conf"
    big.write_text("".join(lines))
    assert big.stat().st_size > 10 * 1024 * 1024

    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    child = int(daemon.log.wait_for(r"loading the policy of \S+ in process (\d+)", 15, mark)[1])
    # The load is in another process: events go on being handled meanwhile.
    env.send(DB1_MEM, pid=4243)
    [record] = wait_for_records(env.out, 1)
    assert record["argv"] == ["db1", "4243"]
    assert not daemon.log.find(r"policy reloaded", mark)  # the load is still under way

    daemon.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    daemon.log.wait_for(r"policy load abandoned: stopping", since=mark)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert env.host.rules() == before


def test_sigterm_while_a_huge_policy_loads_at_start_up_exits_0_changing_nothing(
    env: Env,
) -> None:
    lines = (f"jail:j{n}:maxproc:deny={n + 1}\n" for n in range(400_000))
    (env.rules_dir / "big.conf").write_text("".join(lines))
    daemon = env.start("--log.level", "debug", wait=False)
    daemon.log.wait_for(r"loading the policy of \S+ in process \d+", 15)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    daemon.log.wait_for(r"stopped while starting; nothing was changed")
    assert env.host.rules() == []


# --- §2: nothing planted by someone else is followed, and nothing secret is quoted -------------


def test_planted_and_oversized_files_are_named_never_quoted_and_change_nothing(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    daemon = env.start(config={"reload-debounce": 60, "max-policy-file-size": "64k"})
    before = env.host.rules()

    # A secret file (root's, mode 0600) and a directory, linked under policy names.
    secret = env.root / "master.passwd"
    secret.write_text(
        "".join(f"user{n}:$6$secret-hash-{n}:19000:0:99999:7:::\n" for n in range(30))
    )
    os.chmod(secret, 0o600)
    (env.rules_dir / "shadow.conf").symlink_to(secret)
    (env.rules_dir / "etc.conf").symlink_to(env.root)
    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    daemon.log.wait_for(r"reload \(SIGHUP\) rejected", since=mark)
    daemon.log.wait_for(r"etc\.conf: error\[io-error\]: a symbolic link to \S+, which is a dir")
    daemon.log.wait_for(r"shadow\.conf:1:\d+: error\[\S+\]: not quoted: \S+shadow\.conf is not")
    daemon.log.wait_for(r"\.\.\. and \d+ more in \S+shadow\.conf")
    assert "secret-hash" not in daemon.log.text()
    (env.rules_dir / "shadow.conf").unlink()
    (env.rules_dir / "etc.conf").unlink()

    # Over the size limit: refused before it is read.
    (env.rules_dir / "big.conf").write_text("jail:db1:maxproc:deny=100\n" * 4000)
    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    daemon.log.wait_for(
        r"big\.conf: error\[io-error\]: 104,000 bytes, over the limit of 65,536", since=mark
    )
    (env.rules_dir / "big.conf").unlink()

    # A readable file full of errors: 20 of them in the log, the rest counted, lines cut.
    bad = env.rules_dir / "bad.conf"
    bad.write_text("jail:db1:maxproc:deny=" + "9" * 1000 + "x\n" + "not a rule\n" * 49)
    os.chmod(bad, 0o644)
    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    daemon.log.wait_for(r"\.\.\. and \d+ more in \S+bad\.conf", since=mark)
    assert daemon.log.count(r"bad\.conf:\d+:\d+: (error|warning)\[", mark) == 20
    assert max(len(line) for line in daemon.log.lines[mark:]) < 400

    assert env.host.rules() == before
    assert daemon.value("rctlpolicy_config_last_reload_successful") == 0


# --- §5: log lines never carry raw control characters --------------------------------------


#: A rule field that would forge a line of its own (no blank in it: the kernel's rules have
#: none, so the event is read as one for a rule that is not in the policy, and logged so).
FORGED = "\nFORGED:rctlpolicy[1]:ERROR:all-rules-removed\r\x1b[2J"


def _forged_event() -> bytes:
    rule = "jail:db1:memoryuse:devctl=1" + FORGED
    return f"{RCTL_HEADER} rule={rule} pid=4242 ruid=0 jail=db1\n".encode()


def test_a_forged_event_field_stays_on_its_own_log_line_on_stderr(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    daemon = env.start()
    assert env.server.send(_forged_event()) == 1
    daemon.log.wait_for(r"\\nFORGED:rctlpolicy\[1\]:ERROR:all-rules-removed\\r\\x1b\[2J")
    assert not [line for line in daemon.log.lines if line.startswith("FORGED")]
    assert not [line for line in daemon.log.lines if "\x1b" in line]


def test_a_forged_event_field_stays_in_its_own_syslog_message(env: Env) -> None:
    syslogd = FakeSyslogd(env.server.directory / "log")
    try:
        env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
        daemon = env.start("--syslog", "--syslog-socket", str(syslogd.path), wait=False)
        assert env.server.wait_for_clients(1, 15)
        syslogd.receive_until(b"resync")  # connected, and past its first resync
        assert env.server.send(_forged_event()) == 1
        datagram = syslogd.receive_until(b"FORGED")
        assert re.match(rb"<\d+>rctlpolicy\[\d+\]: ", datagram)  # one message, the daemon's own
        assert b"\\nFORGED" in datagram and b"\\r\\x1b[2J" in datagram
        assert not set(datagram[:-1]) & set(range(32))  # the trailing NUL is Python's
        assert daemon.stop() == 0
    finally:
        syslogd.close()
