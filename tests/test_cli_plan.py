"""`plan` and `apply` as a newcomer meets them: the daemon's settings (--config, --state-dir,
its rules directory), what they print in and out of sync, their JSON documents, their exit
codes, and jail patterns that match nothing. Through the installed console script, with real
files; the last test runs a real daemon beside them.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import test_cli_kernel
import yaml
from daemon_helpers import Env
from test_cli_kernel import IN_SYNC, POLICY, POLICY_RULES, Cli, Result, in_force

from rctlpolicy.config import DEFAULT_RULES_DIR

FORMAT_KEYS = {
    "format_version",
    "command",
    "ok",
    "error",
    "rules",
    "state_dir",
    "prune",
    "in_sync",
    "summary",
    "changes",
    "in_force",
    "warnings",
    "diagnostics",
}

#: The console script with a private HOME and the host file: test_cli_kernel's fixture.
cli = test_cli_kernel.cli


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rctl.conf").write_text(POLICY)
    return directory


def config_file(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / "rctlpolicy.yaml"
    path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in settings.items()}))
    return path


# --- the daemon's settings ----------------------------------------------------------------------


def test_no_path_reads_the_rules_directory_the_config_file_names(
    cli: Cli, tmp_path: Path, rules: Path
) -> None:
    config = config_file(tmp_path, rules_dir=str(rules), state_dir=str(tmp_path / "state"))
    plan = cli("plan", "--config", str(config))
    assert plan.code == 0, plan.err
    lines = plan.out.splitlines()
    assert lines[0] == f"Using the daemon's rules directory {rules} (set in {config})."
    assert lines[1:] == [
        *(f"+ {rule}" for rule in POLICY_RULES),
        "",
        "Plan: 5 to add, 0 to change, 0 to remove.",
    ]
    applied = cli("apply", "--config", str(config))
    assert applied.out.splitlines()[0] == lines[0]
    assert json.loads((tmp_path / "state" / "applied.json").read_text())["owned"] == sorted(
        POLICY_RULES
    )
    assert cli("plan", "--config", str(config)).out == lines[0] + "\n" + IN_SYNC


def test_a_relative_rules_dir_in_the_config_file_is_relative_to_the_file(
    cli: Cli, tmp_path: Path, rules: Path
) -> None:
    config = config_file(tmp_path, rules_dir="rules")
    plan = cli("plan", "--config", str(config))
    assert plan.out.splitlines()[0] == (
        f"Using the daemon's rules directory {rules.resolve()} (set in {config})."
    )


def test_a_config_key_spelt_the_old_way_is_read_and_said_by_plan_as_by_the_daemon(
    cli: Cli, tmp_path: Path, rules: Path
) -> None:
    config = tmp_path / "old.yaml"
    config.write_text(f"rules-dir: {rules}\noutput.file-path: metrics.prom\n")
    plan = cli("plan", "--config", str(config))
    assert plan.code == 0, plan.err
    assert plan.err.splitlines() == [
        f"rctlpolicy plan: {config}: 'output.file-path' is now spelt 'output-file' "
        "(the old name goes in the next release)"
    ]


@pytest.mark.skipif(DEFAULT_RULES_DIR.exists(), reason="this machine has the default directory")
def test_no_path_and_no_config_is_the_built_in_default_and_a_missing_one_is_exit_2(
    cli: Cli,
) -> None:
    for command in ("plan", "apply"):
        result = cli(command)
        assert result == Result(
            2,
            "",
            f"Using the daemon's rules directory {DEFAULT_RULES_DIR} (the built-in default).\n"
            f"rctlpolicy: {DEFAULT_RULES_DIR}: No such file or directory\n",
        )


def test_the_help_says_where_the_rules_come_from_and_what_errors_become(cli: Cli) -> None:
    plan_help = " ".join(cli("plan", "--help").out.split())
    assert "With no PATH the daemon's rules directory is read" in plan_help
    assert "1 for every error (usage and I/O errors included)" in plan_help
    assert "--state-dir DIR" in plan_help and "--config FILE" in plan_help
    apply_help = " ".join(cli("apply", "--help").out.split())
    assert "the daemon's rules directory" in apply_help
    assert "--state-dir DIR" in apply_help and "--detailed-exitcode" not in apply_help


def test_the_state_dir_flag_wins_over_the_config_file(
    cli: Cli, tmp_path: Path, rules: Path
) -> None:
    from_file, from_flag = tmp_path / "file-state", tmp_path / "flag-state"
    config = config_file(tmp_path, state_dir=str(from_file))
    assert cli("apply", str(rules), "--config", str(config)).code == 0
    assert (from_file / "applied.json").is_file()
    # The daemon's ledger is in the file's directory: a rule dropped from the policy is shown
    # as removed there, and not with another ledger (which never added it).
    (rules / "rctl.conf").write_text("jail:db1:maxproc:deny=100\n")
    ours = cli("plan", str(rules), "--config", str(config))
    assert "- jail:web1:maxproc:deny=50" in ours.out.splitlines()
    other = cli("plan", str(rules), "--config", str(config), "--state-dir", str(from_flag))
    assert other.out == IN_SYNC
    as_json = json.loads(
        cli("plan", str(rules), "--state-dir", str(from_flag), "--format", "json").out
    )
    assert as_json["state_dir"] == str(from_flag)


def test_the_config_files_kernel_and_sim_host_are_used_unless_given(
    cli: Cli, tmp_path: Path, rules: Path, host: Path
) -> None:
    config = config_file(tmp_path, kernel="sim", sim_host=str(host))
    result = cli("apply", str(rules), "--config", str(config), env={"RCTLPOLICY_SIM_HOST": ""})
    assert result.code == 0, result.err
    assert sorted(in_force(cli)) == sorted(POLICY_RULES)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("rules-dri: /x\n", "unknown setting 'rules-dri'; did you mean 'rules-dir'?"),
        ("state-dir: [a\n", "YAML error"),
    ],
)
def test_a_bad_config_file_is_a_usage_error(
    cli: Cli, tmp_path: Path, rules: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    for command in ("plan", "apply"):
        result = cli(command, str(rules), "--config", str(config))
        assert (result.code, result.out) == (2, "")
        assert message in result.err
    missing = cli("plan", "--config", str(tmp_path / "none.yaml"))
    assert missing.code == 2
    assert "none.yaml: No such file or directory" in missing.err


# --- what they print --------------------------------------------------------------------------


def test_a_changed_amount_is_one_change_for_every_action(cli: Cli, rules: Path) -> None:
    assert cli("apply", str(rules)).code == 0
    (rules / "rctl.conf").write_text(
        POLICY.replace("memoryuse:log=3g", "memoryuse:log=2g").replace("deny=100", "deny=150")
    )
    plan = cli("plan", str(rules))
    assert plan.out.splitlines() == [
        "~ jail:db1:memoryuse:log=3221225472 -> jail:db1:memoryuse:log=2147483648",
        "~ jail:db1:maxproc:deny=100 -> jail:db1:maxproc:deny=150",
        "",
        "Plan: 0 to add, 2 to change, 0 to remove.",
    ]
    applied = cli("apply", str(rules))
    assert applied.out.splitlines() == [
        *plan.out.splitlines()[:3],
        "Applied: 0 added, 2 changed, 0 removed.",
    ]
    assert "jail:db1:memoryuse:log=3221225472" not in in_force(cli)


def test_json_is_one_document_on_stdout_for_plan_and_apply(cli: Cli, rules: Path) -> None:
    plan = cli("plan", str(rules), "--format", "json")
    assert (plan.code, plan.err) == (0, "")
    document = json.loads(plan.out)
    assert set(document) == FORMAT_KEYS
    assert document["format_version"] == 1
    assert document["command"] == "plan"
    assert (document["ok"], document["error"], document["in_sync"]) == (True, None, False)
    assert document["rules"] == {"paths": [str(rules)], "source": "arguments", "config_file": None}
    assert document["summary"] == {"add": 5, "change": 0, "remove": 0}
    assert document["changes"] == {"add": POLICY_RULES, "change": [], "remove": []}
    assert document["in_force"] == []

    applied = cli("apply", str(rules), "--format", "json")
    assert (applied.code, applied.err) == (0, "")
    document = json.loads(applied.out)
    assert set(document) == FORMAT_KEYS | {"applied", "failed"}
    assert document["command"] == "apply"
    assert document["applied"] == {"add": POLICY_RULES, "change": [], "remove": []}
    assert document["failed"] == []

    again = json.loads(cli("apply", str(rules), "--format", "json").out)
    assert again["in_sync"] is True
    assert again["applied"] == {"add": [], "change": [], "remove": []}
    assert again["in_force"] == sorted(POLICY_RULES)


def test_json_failures_are_documents_too(cli: Cli, tmp_path: Path, rules: Path) -> None:
    missing = cli("apply", str(tmp_path / "nope"), "--format", "json")
    assert missing.code == 2
    document = json.loads(missing.out)
    assert document["ok"] is False
    assert document["error"].endswith("nope: No such file or directory")

    (rules / "rctl.conf").write_text("jail:db1:maxproc:deny=1\njail:db1:memoryuze:deny=8g\n")
    invalid = cli("plan", str(rules), "--format", "json")
    assert invalid.code == 1
    document = json.loads(invalid.out)
    assert document["error"] == "the policy has errors; nothing was changed"
    [diagnostic] = document["diagnostics"]
    assert (diagnostic["path"], diagnostic["line"], diagnostic["column"]) == (
        str(rules / "rctl.conf"),
        2,
        10,
    )
    assert diagnostic["code"] == "unknown-resource"
    assert f"{rules / 'rctl.conf'}:2:10: error[unknown-resource]" in invalid.err


# --- exit codes -------------------------------------------------------------------------------


def test_exit_codes_follow_one_rule(cli: Cli, tmp_path: Path, rules: Path) -> None:
    missing = str(tmp_path / "missing")
    for command in ("plan", "apply"):
        result = cli(command, missing)
        assert result == Result(2, "", f"rctlpolicy: {missing}: No such file or directory\n")
    assert cli("plan", missing, "--detailed-exitcode").code == 1
    assert cli("plan", str(rules), "--detailed-exitcode").code == 2
    assert cli("plan", str(rules), "--no-such-flag").code == 2
    (rules / "bad.conf").write_text("jail:db1:maxproc:deny=\n")
    assert cli("plan", str(rules)).code == 1
    assert cli("plan", str(rules), "--detailed-exitcode").code == 1
    assert cli("apply", str(rules)).code == 1


# --- jail patterns that match no running jail --------------------------------------------------


def test_a_pattern_matching_no_jail_is_said_by_plan_apply_and_lint(
    cli: Cli, tmp_path: Path, host: Path
) -> None:
    policy = tmp_path / "mail.yaml"
    policy.write_text("rules:\n  - rule: jail:mail-*:maxproc:deny=10\n")
    warning = (
        f"rctlpolicy: warning: {policy}:2:11: the jail pattern 'mail-*' matches no running "
        "jail (running: db1, web1, web2)\n"
    )
    assert cli("plan", str(policy)) == Result(0, IN_SYNC, warning)
    assert cli("apply", str(policy)) == Result(0, IN_SYNC, warning)
    document = json.loads(cli("plan", str(policy), "--format", "json").out)
    [found] = document["warnings"]
    assert found["code"] == "jail-pattern-unmatched"
    assert "'mail-*'" in found["message"] and "db1, web1, web2" in found["message"]
    lint = cli("lint", "--resolve", "--sim-host", str(host), str(policy))
    assert "warning[jail-pattern-unmatched]: the jail pattern 'mail-*' matches" in lint.out


# --- beside a running daemon ------------------------------------------------------------------


def test_plan_beside_a_running_daemon_shows_exactly_what_it_will_do(env: Env) -> None:
    env.policy(
        "p.yaml",
        ["jail:db1:maxproc:deny=100", "jail:db1:memoryuse:log=3g", "jail:web1:maxproc:deny=50"],
    )
    # Settings in the config file only, as rc.d runs the daemon; a reload only on SIGHUP.
    settings = {
        "rules-dir": str(env.rules_dir),
        "state-dir": str(env.state),
        "kernel": "sim",
        "sim-host": str(env.host.path),
        "reload-settle": 3600,
    }
    daemon = env.start(config=settings, devd=False)
    config = env.root / "rctlpolicy.yaml"
    cli = Cli(env.root, host=None)
    assert cli("plan", "--config", str(config)).out.splitlines()[1:] == [IN_SYNC.strip()]
    # Another tool's rule, which neither the daemon nor plan touch without --prune.
    assert env.host.rctl("-a", "jail:web2:maxproc:deny=7").returncode == 0
    before = set(env.host.rules())

    env.policy("p.yaml", ["jail:db1:maxproc:deny=200", "user:www:maxproc:deny=256"])
    plan = cli("plan", "--config", str(config))
    assert plan.code == 0, plan.err
    assert plan.out.splitlines() == [
        f"Using the daemon's rules directory {env.rules_dir} (set in {config}).",
        "- jail:web1:maxproc:deny=50",
        "- jail:db1:memoryuse:log=3221225472",
        "~ jail:db1:maxproc:deny=100 -> jail:db1:maxproc:deny=200",
        "+ user:80:maxproc:deny=256",
        "",
        "Plan: 1 to add, 1 to change, 2 to remove.",
    ]
    changes = json.loads(cli("plan", "--config", str(config), "--format", "json").out)["changes"]
    assert set(env.host.rules()) == before  # planning changed nothing

    mark = daemon.log.mark
    daemon.send_signal(signal.SIGHUP)
    daemon.log.wait_for(r"policy reloaded \(SIGHUP\)", since=mark)
    expected = (before - set(changes["remove"]) - {c["old"] for c in changes["change"]}) | (
        set(changes["add"]) | {c["new"] for c in changes["change"]}
    )
    assert set(env.host.rules()) == expected
    assert "jail:web2:maxproc:deny=7" in expected
    assert cli("plan", "--config", str(config)).out.splitlines()[1:] == [IN_SYNC.strip()]
    assert daemon.stop() == 0


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_config_file_that_is_not_utf8_is_one_line_and_exit_2(
    cli: Cli, tmp_path: Path, command: str
) -> None:
    config = tmp_path / "rctlpolicy.yaml"
    config.write_bytes(b"rules-dir: \xff\xfe\n")
    result = cli(command, "--config", str(config))
    assert result.code == 2
    assert result.err == f"rctlpolicy: {config}: not UTF-8 text (byte 11)\n"
    assert result.out == ""


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_file_that_runs_commands_and_others_can_write_is_refused_as_the_daemon_does(
    cli: Cli, rules: Path, command: str
) -> None:
    actions = rules / "actions.yaml"
    actions.write_text(
        "rules:\n  - rule: jail:db1:swapuse:devctl=512m\n    on_match:\n"
        "      run: [/bin/echo, hello]\n"
    )
    actions.chmod(0o664)
    result = cli(command, "--format", "json", str(rules))
    assert result.code == 1
    document = json.loads(result.out)
    assert [d["code"] for d in document["diagnostics"]] == ["unsafe-file"]
    assert "writable by group or others" in document["diagnostics"][0]["message"]
    assert in_force(cli) == []
    actions.chmod(0o644)
    assert cli(command, str(rules)).code == 0


def test_a_warning_never_writes_control_characters_to_the_terminal(
    cli: Cli, tmp_path: Path
) -> None:
    rules = tmp_path / "escape"
    rules.mkdir()
    (rules / "a.yaml").write_text('rules:\n  - rule: "jail:we\\e[31mb*:maxproc:deny=5"\n')
    result = cli("plan", str(rules))
    assert result.code == 0
    assert "\x1b" not in result.err
    assert "the jail pattern 'we\\x1b[31mb*' matches no running jail" in result.err


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_config_file_that_is_a_fifo_or_too_large_is_one_line_and_exit_2(
    cli: Cli, tmp_path: Path, command: str
) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes it: read, it would hang the command
    result = cli(command, "--config", str(fifo))
    assert (result.code, result.out) == (2, "")
    assert result.err == f"rctlpolicy: {fifo}: not a regular file\n"
    large = tmp_path / "large.yaml"
    large.write_text("#" * (1024 * 1024 + 1))
    result = cli(command, "--config", str(large))
    assert (result.code, result.out) == (2, "")
    assert result.err == f"rctlpolicy: {large}: larger than 1048576 bytes\n"


def test_a_config_file_reached_through_a_symlink_is_read_as_the_daemon_reads_it(
    cli: Cli, tmp_path: Path, rules: Path
) -> None:
    real = config_file(tmp_path, rules_dir=str(rules), state_dir=str(tmp_path / "state"))
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    result = cli("plan", "--config", str(link))
    assert result.code == 0, result.err
    assert result.out.startswith(f"Using the daemon's rules directory {rules} (set in {link}).")
