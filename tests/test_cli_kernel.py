"""The kernel commands (show, usage, plan, apply, sim rctl) through the real command line.

Most tests run the installed console script (`.venv/bin/rctlpolicy`) as a subprocess, with
HOME in a temporary directory and the simulated host chosen by RCTLPOLICY_SIM_HOST or
--sim-host, exactly as an administrator would; the error tables go through `main(argv)`,
which is the same code without a process per case. Every command reads the host file and
the kernel's state afresh, so the tests edit the host file between commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from rctlpolicy.cli import main
from rctlpolicy.kernel.hostfile import default_host_path

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "rctlpolicy"
RCTLPOLICY = str(
    CONSOLE_SCRIPT if CONSOLE_SCRIPT.exists() else Path(sys.executable).parent / "rctlpolicy"
)
ON_FREEBSD = sys.platform.startswith("freebsd")

POLICY = """\
# db1's database, the web jails, and the web user
jail:db1:memoryuse:deny=4g
jail:db1:memoryuse:log=3g
jail:db1:maxproc:deny=100
jail:web1:maxproc:deny=50
user:www:maxproc:deny=256
"""
#: What plan and apply print when the kernel already matches the policy.
IN_SYNC = "No changes. The kernel's rules match the policy.\n"
POLICY_RULES = [
    "jail:db1:memoryuse:deny=4294967296",
    "jail:db1:memoryuse:log=3221225472",
    "jail:db1:maxproc:deny=100",
    "jail:web1:maxproc:deny=50",
    "user:80:maxproc:deny=256",
]


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str


@dataclass(frozen=True, slots=True)
class Cli:
    """The console script with a private HOME and (unless `host` is None) a host file."""

    home: Path
    host: Path | None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "NO_COLOR": "1",
            "LANG": "C.UTF-8",
        }
        if self.host is not None:
            env["RCTLPOLICY_SIM_HOST"] = str(self.host)
        env.update(extra or {})
        return env

    def __call__(self, *argv: str, env: Mapping[str, str] | None = None) -> Result:
        done = subprocess.run(
            [RCTLPOLICY, *argv],
            env=self.env(env),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(tmp_path: Path, host: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home, host)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "rules" / "rctl.conf"
    path.parent.mkdir()
    path.write_text(POLICY)
    return path


def edit_host(host: Path, **changes: object) -> None:
    data = yaml.safe_load(host.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    host.write_text(yaml.safe_dump(data))


def in_force(cli: Cli) -> list[str]:
    shown = cli("show", "-n")
    assert shown.code == 0, shown.err
    return shown.out.splitlines()


# --- out of the box ---------------------------------------------------------------------------


def test_the_bundled_host_makes_every_command_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, host=None)
    rules = ROOT / "rules"
    assert cli("show") == Result(0, "", "")
    copy = home / ".local" / "state" / "rctlpolicy" / "sim" / "host.yaml"
    assert copy.read_bytes() == default_host_path().read_bytes()

    usage = cli("usage")
    assert usage.code == 0, usage.err
    assert usage.out.splitlines()[1].split()[:3] == ["db1", "3", "cputime"]
    assert cli("usage", "jail:db1").out.splitlines()[0] == "cputime=84K"
    assert cli("sim", "rctl", "-hu", "jail:db1").out.splitlines()[0] == "cputime=84K"

    plan = cli("plan", str(rules), "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert plan.out.startswith("+ ")
    applied = cli("apply", str(rules))
    assert applied.code == 0, applied.err
    assert cli("plan", str(rules), "--detailed-exitcode") == Result(0, IN_SYNC, "")
    assert "user:www:maxproc:deny=256" in cli("show").out.splitlines()
    # The copy is made once: edits to it are the host from then on.
    add_jail(copy, "db9", 9)
    assert jail_names(cli) == ["db1", "db9", "web1", "web2"]


def add_jail(host: Path, name: str, jid: int) -> None:
    data = yaml.safe_load(host.read_text())
    data["jails"][name] = {"jid": jid}
    host.write_text(yaml.safe_dump(data))


def jail_names(cli: Cli) -> list[str]:
    usage = cli("usage", "--format", "json")
    assert usage.code == 0, usage.err
    return [row["name"] for row in json.loads(usage.out)["jails"]]


def test_xdg_state_home_holds_the_copy(tmp_path: Path) -> None:
    cli = Cli(tmp_path, host=None)
    state = tmp_path / "xdg"
    assert cli("show", env={"XDG_STATE_HOME": str(state)}).code == 0
    assert (state / "rctlpolicy" / "sim" / "host.yaml").is_file()
    assert not (tmp_path / ".local").exists()


# --- choosing the kernel ------------------------------------------------------------------------


@pytest.mark.skipif(ON_FREEBSD, reason="on FreeBSD --kernel freebsd is the real kernel")
@pytest.mark.parametrize("command", [["show"], ["usage"], ["plan"], ["apply"]])
def test_kernel_freebsd_off_freebsd_is_a_clear_usage_error(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--kernel", "freebsd")
    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        "rctlpolicy: --kernel freebsd needs FreeBSD; use --kernel sim to rehearse on the "
        "simulated host\n"
    )


@pytest.mark.skipif(ON_FREEBSD, reason="on FreeBSD --kernel freebsd is the real kernel")
def test_detailed_exitcode_keeps_2_for_changes_and_errors_are_1(
    cli: Cli, policy: Path, host: Path
) -> None:
    assert cli("plan", str(policy), "--detailed-exitcode", "--kernel", "freebsd").code == 1
    host.write_text("jails: [broken]\n")
    assert cli("plan", str(policy), "--detailed-exitcode").code == 1
    assert cli("plan", str(policy)).code == 2  # without it, an unusable host is an I/O error


@pytest.mark.parametrize("kernel", ["sim"] + ([] if ON_FREEBSD else ["auto"]))
def test_kernel_sim_and_auto_use_the_simulated_host(cli: Cli, kernel: str) -> None:
    assert cli("sim", "rctl", "-a", "jail:db1:maxproc:deny=7").code == 0
    assert cli("show", "--kernel", kernel) == Result(0, "jail:db1:maxproc:deny=7\n", "")


def test_sim_host_flag_and_a_missing_host_file(cli: Cli, tmp_path: Path, host: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("jails: {solo: {jid: 9}}\n")
    assert cli("usage", "--sim-host", str(other)).out.splitlines()[1] == (
        f"{'solo':<16} {9:>5}  (no usage, no limits)"
    )
    missing = cli("show", env={"RCTLPOLICY_SIM_HOST": str(tmp_path / "nope.yaml")})
    assert missing.code == 2
    assert (
        missing.err == f"rctlpolicy: simulated host file {tmp_path / 'nope.yaml'} does not exist\n"
    )


def test_a_broken_host_file_names_the_key(cli: Cli, host: Path) -> None:
    host.write_text(host.read_text() + "racct_enabled: true\n")
    for command in (["show"], ["usage"], ["sim", "rctl"]):
        result = cli(*command)
        assert result.code == 2, command
        assert f"{host}: racct_enabled: unknown key 'racct_enabled'" in result.err
        assert "did you mean 'racct_enable'?" in result.err


# --- sim rctl -------------------------------------------------------------------------------


def test_sim_rctl_is_rctl8_on_the_host_of_the_environment(cli: Cli, host: Path) -> None:
    usage = cli("sim", "rctl", "-hu", "jail:db1")
    assert usage.code == 0
    assert usage.out.splitlines()[:5] == [
        "cputime=84K",
        "datasize=1024M",
        "stacksize=0",
        "coredumpsize=0",
        "memoryuse=3686M",
    ]
    assert len(usage.out.splitlines()) == 25
    assert cli("sim", "rctl", "-a", "user:www:maxproc:deny=10").code == 0
    assert cli("sim", "rctl").out == "user:www:maxproc:deny=10\n"
    assert cli("sim", "rctl", "-n").out == "user:80:maxproc:deny=10\n"
    refused = cli("sim", "rctl", "-a", "process:9999:maxproc:deny=1")
    assert (refused.code, refused.err) == (
        1,
        "rctl: failed to add rule 'process:9999:maxproc:deny=1': No such process\n",
    )


def test_host_file_edits_take_effect_on_the_next_call(cli: Cli, host: Path) -> None:
    assert "memoryuse=3865470566\n" in cli("usage", "jail:db1", "--exact").out
    data = yaml.safe_load(host.read_text())
    data["usage"]["jail:db1"]["memoryuse"] = 1234
    host.write_text(yaml.safe_dump(data))
    assert "memoryuse=1234\n" in cli("usage", "jail:db1", "--exact").out
    add_jail(host, "db2", 7)
    assert jail_names(cli) == ["db1", "db2", "web1", "web2"]


def test_sim_rctl_takes_sim_host_before_rctls_own_options(
    cli: Cli, tmp_path: Path, host: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("users: {root: 0}\njails: {solo: {jid: 9}}\n")
    added = cli("sim", "rctl", "--sim-host", str(other), "-a", "jail:solo:maxproc:deny=3")
    assert added.code == 0
    assert cli("sim", "rctl", f"--sim-host={other}", "-n") == Result(
        0, "jail:solo:maxproc:deny=3\n", ""
    )
    assert cli("sim", "rctl", "-n").out == ""  # the host of the environment is another kernel
    # after rctl's own options it is rctl's to read, as rctl(8)'s getopt(3) would
    late = cli("sim", "rctl", "-n", "--sim-host", str(other))
    assert (late.code, late.err.splitlines()[0]) == (1, "rctl: illegal option -- -")


def test_sim_rctl_help_points_to_the_manual_pages(cli: Cli) -> None:
    shown = cli("sim", "rctl", "--help")
    assert shown.code == 0 and shown.err == ""
    assert "rctl [ -h ] [-a rule | -l filter | -r filter | -u filter | filter]" in shown.out
    assert "--sim-host FILE" in shown.out
    assert "See rctl(8) and rctlpolicy(8)." in shown.out
    assert cli("sim", "rctl", "-hu", "jail:db1").out.startswith("cputime=84K\n")  # -h: rctl's


# --- sim set ----------------------------------------------------------------------------------


def test_sim_set_changes_only_the_values_named(cli: Cli, host: Path) -> None:
    before = host.read_text()
    result = cli("sim", "set", "jail:db1", "swapuse=1g", "nsem=12")
    assert result == Result(
        0, "jail:db1 swapuse=1073741824 (was 268435456)\njail:db1 nsem=12 (was 0)\n", ""
    )
    # db1's value replaced where it stood, the new one after db1's last; nothing else moved
    expected = before.replace("swapuse: 268435456", "swapuse: 1073741824", 1)
    expected = expected.replace("    writeiops: 310\n", "    writeiops: 310\n    nsem: 12\n", 1)
    assert host.read_text() == expected
    assert "swapuse=1073741824\n" in cli("sim", "rctl", "-u", "jail:db1").out
    assert "nsem=12\n" in cli("sim", "rctl", "-u", "jail:db1").out


def test_sim_set_adds_subjects_the_file_does_not_mention(cli: Cli, host: Path) -> None:
    assert cli("sim", "set", "user:alice", "maxproc=7").code == 0
    assert cli("sim", "set", "jail:web2", "swapuse=2m").code == 0  # a {...} entry
    assert "maxproc=7\n" in cli("sim", "rctl", "-u", "user:1001").out
    usage = yaml.safe_load(host.read_text())["usage"]
    assert usage["user:1001"] == {"maxproc": 7}
    assert usage["jail:web2"]["swapuse"] == 2 * 1024**2
    assert usage["jail:web2"]["maxproc"] == 9


def test_sim_set_keeps_the_file_whole_and_its_mode(cli: Cli, host: Path) -> None:
    host.chmod(0o640)
    assert cli("sim", "set", "process:4242", "memoryuse=100").code == 0
    assert host.stat().st_mode & 0o777 == 0o640
    assert not [p.name for p in host.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jail:db9", "swapuse=1g"], "no jail 'db9' on the simulated host (did you mean 'db1'?)"),
        (["jial:db1", "swapuse=1g"], "unknown subject 'jial' (did you mean 'jail'?)"),
        (["user:nobody", "maxproc=1"], "no user 'nobody' on the simulated host"),
        (["process:77", "maxproc=1"], "no process 77 on the simulated host"),
        (["loginclass:stuff", "maxproc=1"], "no login class 'stuff' on the simulated host"),
        (["jail:db1", "swapuze=1g"], "unknown resource 'swapuze' (did you mean 'swapuse'?)"),
        (["jail:db1", "swapuse=lots"], "'lots' is not an amount for swapuse"),
        (["jail:db1", "swapuse"], "'swapuse' is not RESOURCE=AMOUNT (e.g. swapuse=1g)"),
        (["db1", "swapuse=1g"], "'db1' is not SUBJECT:ID"),
    ],
)
def test_sim_set_refuses_what_the_host_does_not_have(
    cli: Cli, host: Path, argv: list[str], message: str
) -> None:
    before = host.read_bytes()
    result = cli("sim", "set", *argv)
    assert result.code == 2
    assert result.err.startswith(f"rctlpolicy sim set: {message}")
    assert host.read_bytes() == before


# --- show -------------------------------------------------------------------------------------


def test_show_lists_like_rctl_with_names_unless_numeric(cli: Cli, policy: Path) -> None:
    assert cli("apply", str(policy)).code == 0
    shown = cli("show").out.splitlines()
    assert sorted(shown) == sorted(r.replace("user:80:", "user:www:") for r in POLICY_RULES)
    assert sorted(cli("show", "-n").out.splitlines()) == sorted(POLICY_RULES)
    assert cli("show", "jail:db1:memoryuse").out.splitlines() == [
        "jail:db1:memoryuse:log=3221225472",
        "jail:db1:memoryuse:deny=4294967296",
    ]
    assert cli("show", "user:www").out == "user:www:maxproc:deny=256\n"
    as_json = json.loads(cli("show", "--format", "json").out)
    assert sorted(as_json, key=lambda item: item["rule"]) == [
        {"rule": r} for r in sorted(POLICY_RULES)
    ]


def test_show_with_nothing_in_force_prints_nothing(cli: Cli) -> None:
    assert cli("show") == Result(0, "", "")
    assert cli("show", "--format", "json") == Result(0, "[]\n", "")


# --- usage ------------------------------------------------------------------------------------


def test_usage_of_one_subject_is_rctl_hu(cli: Cli) -> None:
    ours = cli("usage", "user:www")
    rctl = cli("sim", "rctl", "-hu", "user:www")
    assert ours.code == rctl.code == 0
    assert ours.out == rctl.out
    assert cli("usage", "user:www", "--exact").out == cli("sim", "rctl", "-u", "user:www").out
    as_json = json.loads(cli("usage", "process:4242", "--format", "json").out)
    assert as_json["memoryuse"] == 2147483648
    assert "pcpu" in as_json and "swapuse" not in as_json  # a process has no sloppy resources


def test_usage_table_puts_usage_beside_the_strictest_deny(cli: Cli, policy: Path) -> None:
    assert cli("apply", str(policy)).code == 0
    # Another tool's deny replaces ours in the kernel: the table shows what is in force.
    assert cli("sim", "rctl", "-a", "jail:db1:maxproc:deny=48").code == 0
    table = cli("usage").out.splitlines()
    assert table[0].split() == [
        "JAIL",
        "JID",
        "RESOURCE",
        "USAGE",
        "DENY",
        "USED",
        "OTHER",
        "LIMITS",
    ]
    memory = next(line for line in table if line.split()[:1] == ["memoryuse"])
    assert memory.split() == ["memoryuse", "3686M", "4096M", "90%", "log=3072M"]
    maxproc = next(line for line in table if line.split()[:1] == ["maxproc"])
    assert maxproc.split() == ["maxproc", "24", "48", "50%"]
    web1 = next(line for line in table if line.startswith("web1"))
    assert web1.split()[:2] == ["web1", "4"]
    as_json = json.loads(cli("usage", "--format", "json").out)
    db1 = as_json["jails"][0]
    assert (db1["name"], db1["jid"]) == ("db1", 3)
    assert db1["deny"] == {"memoryuse": 4294967296, "maxproc": 48}
    assert db1["percent"] == {"memoryuse": 90.0, "maxproc": 50.0}
    assert db1["usage"]["memoryuse"] == 3865470566
    assert "jail:db1:memoryuse:log=3221225472" in db1["rules"]


# --- plan and apply ------------------------------------------------------------------------------


def test_plan_apply_plan(cli: Cli, policy: Path) -> None:
    plan = cli("plan", str(policy))
    assert plan.code == 0
    assert plan.out.splitlines() == [
        *(f"+ {rule}" for rule in POLICY_RULES),
        "",
        "Plan: 5 to add, 0 to change, 0 to remove.",
    ]
    assert plan.err == ""
    assert cli("plan", str(policy), "--detailed-exitcode").code == 2
    as_json = json.loads(cli("plan", str(policy), "--format", "json").out)
    assert as_json["changes"] == {"add": POLICY_RULES, "change": [], "remove": []}

    applied = cli("apply", str(policy))
    assert applied.code == 0, applied.err
    assert applied.out.splitlines() == [
        *(f"+ {rule}" for rule in POLICY_RULES),
        "",
        "Applied: 5 added, 0 changed, 0 removed.",
    ]
    assert applied.err == ""
    assert sorted(in_force(cli)) == sorted(POLICY_RULES)

    # In sync: said in one line, and the detailed exit code says so.
    assert cli("plan", str(policy)) == Result(0, IN_SYNC, "")
    assert cli("plan", str(policy), "--detailed-exitcode") == Result(0, IN_SYNC, "")
    again = cli("apply", str(policy))
    assert (again.code, again.out) == (0, IN_SYNC)


def test_apply_removes_only_its_own_rules_unless_prune(cli: Cli, policy: Path) -> None:
    assert cli("apply", str(policy)).code == 0
    assert cli("sim", "rctl", "-a", "jail:web2:maxproc:deny=7", "user:www:nthr:deny=99").code == 0
    policy.write_text("jail:db1:maxproc:deny=200\njail:web1:maxproc:deny=50\n")

    plan = cli("plan", str(policy))
    # In the kernel's listing order (users before jails, newest first); the other tools'
    # rules are not mentioned.
    assert plan.out.splitlines() == [
        "- user:80:maxproc:deny=256",
        "- jail:db1:memoryuse:log=3221225472",
        "- jail:db1:memoryuse:deny=4294967296",
        "~ jail:db1:maxproc:deny=100 -> jail:db1:maxproc:deny=200",
        "",
        "Plan: 0 to add, 1 to change, 3 to remove.",
    ]
    assert plan.err == ""
    applied = cli("apply", str(policy))
    assert applied.code == 0, applied.err
    assert sorted(in_force(cli)) == sorted(
        [
            "jail:db1:maxproc:deny=200",
            "jail:web1:maxproc:deny=50",
            "jail:web2:maxproc:deny=7",
            "user:80:nthr:deny=99",
        ]
    )
    assert cli("plan", str(policy)) == Result(0, IN_SYNC, "")

    pruned = cli("plan", str(policy), "--prune")
    assert sorted(pruned.out.splitlines()[:2]) == [
        "- jail:web2:maxproc:deny=7",
        "- user:80:nthr:deny=99",
    ]
    assert pruned.out.splitlines()[2:] == ["", "Plan: 0 to add, 0 to change, 2 to remove."]
    assert cli("apply", str(policy), "--prune").code == 0
    assert sorted(in_force(cli)) == ["jail:db1:maxproc:deny=200", "jail:web1:maxproc:deny=50"]


def test_an_invalid_policy_changes_nothing(cli: Cli, policy: Path, host: Path) -> None:
    assert cli("apply", str(policy)).code == 0
    state = (host.parent / "host.yaml.rctlpolicy" / "applied.json").read_bytes()
    policy.write_text("jail:db1:maxproc:deny=1\njail:db1:memoryuze:deny=8g\n")
    for command in ("plan", "apply"):
        result = cli(command, str(policy))
        assert result.code == 1
        assert result.out == ""
        assert f"{policy}:2:10: error[unknown-resource]" in result.err
        assert "nothing was changed" in result.err
    assert sorted(in_force(cli)) == sorted(POLICY_RULES)
    assert (host.parent / "host.yaml.rctlpolicy" / "applied.json").read_bytes() == state


def test_a_process_gone_between_plan_and_apply_is_one_reported_failure(
    cli: Cli, policy: Path, host: Path
) -> None:
    policy.write_text("process:4242:openfiles:deny=1000\n" + POLICY)
    plan = cli("plan", str(policy))
    assert plan.out.splitlines()[0] == "+ process:4242:openfiles:deny=1000"
    saved = host.read_text()
    data = yaml.safe_load(saved)
    del data["processes"][4242], data["usage"]["process:4242"]
    host.write_text(yaml.safe_dump(data))  # postgres exits

    applied = cli("apply", str(policy))
    assert applied.code == 1
    assert applied.out.splitlines() == [
        *(f"+ {rule}" for rule in POLICY_RULES),
        "",
        "Applied: 5 added, 0 changed, 0 removed, 1 failed.",
    ]
    assert applied.err.splitlines() == [
        "rctlpolicy: failed to apply process:4242:openfiles:deny=1000: No such process",
    ]
    assert sorted(in_force(cli)) == sorted(POLICY_RULES)
    # Still gone: the same one failure, nothing else to do.
    again = cli("apply", str(policy))
    assert (again.code, again.out) == (1, "\nApplied: 0 added, 0 changed, 0 removed, 1 failed.\n")
    assert "failed to apply process:4242:openfiles:deny=1000: No such process" in again.err
    # Back again (a new postgres with the same pid): the next apply converges.
    host.write_text(saved)
    assert cli("apply", str(policy)).out.splitlines()[0] == "+ process:4242:openfiles:deny=1000"
    assert cli("plan", str(policy), "--detailed-exitcode") == Result(0, IN_SYNC, "")


def test_jail_patterns_follow_the_running_jails(cli: Cli, tmp_path: Path, host: Path) -> None:
    policy = tmp_path / "web.yaml"
    policy.write_text("rules:\n  - rule: jail:web*:maxproc:deny=64\n")
    assert cli("apply", str(policy)).out.splitlines()[:2] == [
        "+ jail:web1:maxproc:deny=64",
        "+ jail:web2:maxproc:deny=64",
    ]
    add_jail(host, "web3", 6)
    assert cli("plan", str(policy)).out.splitlines()[0] == "+ jail:web3:maxproc:deny=64"


# --- errors, as FreeBSD would give them, through main(argv) -------------------------------------

#: (argv after the command, exit status, what stderr must say). ESRCH, EINVAL, ENAMETOOLONG,
#: E2BIG, ERANGE are caught in the operand, with the errno the kernel would have returned;
#: EINVAL from the kernel itself (usage without a subject id) is reported as rctl(8) does.
FILTER_ERRORS: list[tuple[list[str], int, str]] = [
    (["show", "process:99999"], 2, "no process with pid 99999 (ESRCH: No such process)"),
    (["usage", "process:99999"], 2, "(ESRCH: No such process)"),
    (["show", "jail:" + "x" * 300], 2, "(ENAMETOOLONG: File name too long)"),
    (["usage", "jail:" + "x" * 300], 2, "(ENAMETOOLONG: File name too long)"),
    (["show", "jail:" + "x" * 5000], 2, "(E2BIG: Argument list too long)"),
    (["show", "jail:db1:memoryuse:deny=8e"], 2, "out of range (ERANGE: Result too large)"),
    (
        ["show", "jail:db1:cputime:deny=9t"],
        2,
        "out of range for cputime (ERANGE: Result too large)",
    ),
    (["show", "jail:db1:bogus"], 2, "unknown resource 'bogus' (EINVAL: Invalid argument)"),
    (["show", "g:wheel"], 2, "unknown subject 'group' (EINVAL: Invalid argument)"),
    (["show", "user:nosuch"], 2, "unknown user 'nosuch'"),
    (
        ["usage", "user:"],
        1,
        "rctlpolicy: failed to show resource consumption for 'user:': Invalid argument "
        "(name a subject and its id: jail:db1, user:www, process:4242)",
    ),
    (["usage", ":"], 1, "failed to show resource consumption for ':': Invalid argument"),
    (["usage", "::memoryuse"], 1, "for '::memoryuse': Invalid argument"),
]


@pytest.mark.parametrize(("argv", "code", "message"), FILTER_ERRORS)
def test_filter_errors_say_what_the_kernel_would(
    host: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main([*argv, "--sim-host", str(host)]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


POLICY_ERRORS: list[tuple[str, str]] = [
    ("process:1:swapuse:deny=1g", "error[per-process-not-supported]"),  # EOPNOTSUPP
    ("user:www:maxproc:deny=8e", "error[amount-out-of-range]"),  # ERANGE
    ("user:www:cputime:log=9t", "error[amount-out-of-range]"),  # ERANGE (x10^6 overflows)
    ("jail:" + "x" * 300 + ":maxproc:deny=1", "error["),  # ENAMETOOLONG
    ("user:nosuch:maxproc:deny=1", "error["),  # rctl(8): unknown user
]


@pytest.mark.parametrize(("line", "code"), POLICY_ERRORS)
def test_a_policy_the_kernel_would_refuse_changes_nothing(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, code: str
) -> None:
    policy = tmp_path / "p.conf"
    policy.write_text(f"jail:db1:maxproc:deny=100\n{line}\n")
    assert main(["apply", str(policy), "--sim-host", str(host)]) == 1
    captured = capsys.readouterr()
    assert code in captured.err
    assert captured.err.endswith("rctlpolicy: the policy has errors; nothing was changed\n")
    assert main(["show", "--sim-host", str(host)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"racct_enable": False},
            "RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable",
        ),
        ({"privileged": False}, "Operation not permitted"),
    ],
)
@pytest.mark.parametrize(
    "command", [["show"], ["usage"], ["usage", "jail:db1"], ["plan"], ["apply"]]
)
def test_a_kernel_that_refuses_everything_is_one_clear_message(
    host: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    message: str,
    command: list[str],
) -> None:
    edit_host(host, **change)
    policy = tmp_path / "p.conf"
    policy.write_text("jail:db1:maxproc:deny=100\n")
    paths = [str(policy)] if command[0] in ("plan", "apply") else []
    assert main([*command, *paths, "--sim-host", str(host)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("rctlpolicy: failed to ")
    assert message in line


def test_apply_without_root_says_so_through_the_console_script(
    cli: Cli, policy: Path, host: Path
) -> None:
    edit_host(host, privileged=False)
    result = cli("apply", str(policy))
    assert result.code == 1
    assert (
        result.err
        == "rctlpolicy: failed to apply the policy, stopped at '::': Operation not permitted\n"
    )
