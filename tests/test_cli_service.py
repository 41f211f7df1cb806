"""The command line a newcomer meets around the daemon: `daemon`, `handle`, `sim`, `usage`.

Each test runs the real console script (or `python -m rctlpolicy`) as a subprocess on real
files: its help, its flag names, its exit status, what it says on stderr, and what it leaves
on disk. The parser-wide rules (every flag has a help line, one naming convention) walk
`build_parser` over every subcommand, so a flag added later is held to them too.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_helpers import PYTHON, DaemonProcess, SimHost, short_tempdir
from test_manpages import commands

from rctlpolicy.cli import build_parser
from rctlpolicy.cli.common import OLD_SPELLINGS
from rctlpolicy.config import RENAMED_KEYS

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "rctlpolicy"
RCTLPOLICY = str(
    CONSOLE_SCRIPT if CONSOLE_SCRIPT.exists() else Path(sys.executable).parent / "rctlpolicy"
)
MAN_8 = ROOT / "man" / "rctlpolicy.8"

POLICY = "jail:db1:maxproc:deny=200\njail:db1:swapuse:devctl=512m\n"


def run(
    *argv: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RCTLPOLICY_SIM_HOST"}
    return subprocess.run(
        [RCTLPOLICY, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=dict(base, NO_COLOR="1", **(env or {})),
    )


def own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(
            a, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction
        )
    ]


ALL_PARSERS = dict(commands(build_parser()))


def options_in_help(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w.-]*)", text))


class World:
    """A simulated host, a rules directory and a state directory under a short /tmp path
    (the simulated devd's sockets go beside the host file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = SimHost(root / "host.yaml")
        self.rules = root / "rules"
        self.rules.mkdir()
        (self.rules / "rctl.conf").write_text(POLICY)
        self.state = root / "state"
        self.devd_dir = root / "host.yaml.devd"

    def daemon_args(self, *extra: str, state: Path | None = None) -> list[str]:
        return [
            "--kernel", "sim", "--sim-host", str(self.host.path),
            "--rules-dir", str(self.rules), "--state-dir", str(state or self.state),
            "--web.listen-address", "127.0.0.1:0", *extra,
        ]  # fmt: skip


@pytest.fixture
def world() -> Iterator[World]:
    with short_tempdir() as root:
        yield World(root)


@contextmanager
def running(args: list[str]) -> Iterator[DaemonProcess]:
    """A started daemon, stopped with SIGTERM (exit 0) and its output collected at the end."""
    daemon = DaemonProcess(args)
    try:
        daemon.wait_started()
        yield daemon
    finally:
        status = daemon.stop()
        daemon.close()
    assert status == 0, daemon.log.text()


def identity(path: Path) -> tuple[int, int]:
    info = os.stat(path, follow_symlinks=False)
    return info.st_dev, info.st_ino


# --- help: every flag says what it is, handle shows only its own ------------------------------


@pytest.mark.parametrize("path", list(ALL_PARSERS), ids=lambda p: " ".join(p) or "rctlpolicy")
def test_every_flag_and_argument_has_a_help_line(path: tuple[str, ...]) -> None:
    parser = ALL_PARSERS[path]
    silent = [a.option_strings or [a.dest] for a in own_actions(parser) if not a.help]
    assert not silent, f"{' '.join(path)}: no help line for {silent}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            quiet = [c.dest for c in action._choices_actions if not c.help]
            assert not quiet, f"subcommands without a help line: {quiet}"


#: Prometheus-style dotted groups for what exporters share (exporter-toolkit's --web.*,
#: promlog's --log.level/--log.format), and the history group; dashes for everything else.
DOTTED_GROUPS = ("web", "log", "history")
_DASHED = r"[a-z][a-z0-9]*(-[a-z0-9]+)*"


@pytest.mark.parametrize("path", list(ALL_PARSERS), ids=lambda p: " ".join(p) or "rctlpolicy")
def test_flag_names_follow_one_convention(path: tuple[str, ...]) -> None:
    for action in own_actions(ALL_PARSERS[path]):
        for option in action.option_strings:
            if not option.startswith("--"):
                assert re.fullmatch(r"-[a-zA-Z]", option), option
                continue
            name = option[2:]
            if "." in name:
                group, _, rest = name.partition(".")
                assert group in DOTTED_GROUPS, f"{option}: dots are for {DOTTED_GROUPS} only"
                assert all(re.fullmatch(_DASHED, part) for part in rest.split(".")), option
            else:
                assert re.fullmatch(_DASHED, name), f"{option}: lower-case words and dashes"


def test_old_spellings_are_mapped_to_flags_that_exist_and_documented() -> None:
    daemon = {o for a in own_actions(ALL_PARSERS[("daemon",)]) for o in a.option_strings}
    assert set(OLD_SPELLINGS.values()) <= daemon
    assert not set(OLD_SPELLINGS) & daemon  # hidden: not in any --help
    assert {f"--{key}" for key in RENAMED_KEYS} == set(OLD_SPELLINGS)
    manual = MAN_8.read_text(encoding="utf-8")
    for old, new in OLD_SPELLINGS.items():
        # mdoc's Fl writes the first dash: `.It Fl -log-level` is --log-level
        said = f".It Fl {old[1:]}\nis now\n.Fl {new[1:]} .\n"
        assert said in manual, f"rctlpolicy(8) does not say {old} is now {new}"


def test_handle_help_lists_only_what_handle_uses() -> None:
    shown = run("handle", "--help")
    assert shown.returncode == 0
    assert options_in_help(shown.stdout) == {
        "-h", "--help", "--rule", "--pid", "--ruid", "--jail", "--config", "--rules-dir",
        "--kernel", "--sim-host", "--state-dir", "--log.level", "--log.format", "--syslog",
        "--no-syslog", "--syslog-socket", "--max-policy-file-size", "--shutdown-timeout",
    }  # fmt: skip


def test_handle_without_pid_says_what_is_missing(world: World) -> None:
    done = run("handle", "--rule", "jail:db1:swapuse:devctl=536870912", "--jail", "db1",
               "--kernel", "sim", "--sim-host", str(world.host.path),
               "--rules-dir", str(world.rules))  # fmt: skip
    assert done.returncode == 2
    assert "the following arguments are required: --pid" in done.stderr
    assert "None" not in done.stderr


def test_usage_is_in_human_units_unless_exact(world: World) -> None:
    host = ["--sim-host", str(world.host.path)]
    world.host.set_usage("jail:db1", "memoryuse", 3 * 1024**3 // 2)
    human = run("usage", "jail:db1", *host)
    exact = run("usage", "jail:db1", "--exact", *host)
    assert human.returncode == exact.returncode == 0
    assert "memoryuse=1536M\n" in human.stdout
    assert "memoryuse=1610612736\n" in exact.stdout
    table = run("usage", *host)
    assert table.returncode == 0 and re.search(r"\b\d+(\.\d+)?[KMGT]\b", table.stdout)
    assert not re.search(r"\b\d+(\.\d+)?[KMGT]\b", run("usage", "--exact", *host).stdout)
    shown = " ".join(run("usage", "--help").stdout.split())  # as read, wrapping aside
    assert (
        "--exact exact numbers (bytes, counts) instead of human units such as 1.5G (the default)"
        in shown
    )
    assert "FILTER one subject: jail:db1, user:www," in shown
    commands = " ".join(run("--help").stdout.split())
    assert "usage resource usage in human units (like rctl -hu)" in commands


# --- the daemon's start-up: said once, before anything starts ----------------------------------


def test_a_missing_rules_directory_is_one_line_before_anything_starts(world: World) -> None:
    missing = world.root / "no-such-rules"
    done = run("daemon", *world.daemon_args("--rules-dir", str(missing)))
    assert done.returncode == 2
    assert (
        done.stderr == f"rctlpolicy daemon: rules directory {missing}: No such file or directory\n"
    )
    assert not world.devd_dir.exists()  # no simulated devd was started
    assert not world.state.exists()


def test_two_daemons_on_one_state_directory(world: World) -> None:
    with running(world.daemon_args()) as first:
        sockets = {p: identity(p) for p in world.devd_dir.iterdir()}
        assert len(sockets) == 2
        assert (world.state / "daemon.lock").read_text() == f"{first.pid}\n"
        second = subprocess.run(
            [PYTHON, "-m", "rctlpolicy", "daemon", *world.daemon_args()],
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr == (
            f"rctlpolicy daemon: another daemon (pid {first.pid}) is using the state "
            f"directory {world.state}; stop it first\n"
        )
        # nothing of the first's was touched: its sockets, its lock, its service
        assert {p: identity(p) for p in world.devd_dir.iterdir()} == sockets
        assert (world.state / "daemon.lock").read_text() == f"{first.pid}\n"
        assert first.scrape()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(str(world.devd_dir / "devd.seqpacket.pipe"))
        assert first.proc.poll() is None
    # the lock goes with the first: a daemon starts again on the same directory
    with running(world.daemon_args()) as again:
        assert (world.state / "daemon.lock").read_text() == f"{again.pid}\n"


def test_a_second_daemon_never_takes_over_a_running_simulated_devd(world: World) -> None:
    with running(world.daemon_args()):
        sockets = {p: identity(p) for p in world.devd_dir.iterdir()}
        second = run("daemon", *world.daemon_args(state=world.root / "other-state"))
        assert second.returncode == 2
        assert second.stderr == (
            "rctlpolicy daemon: cannot start the simulated devd: another devd is serving "
            f"{world.devd_dir / 'devd.seqpacket.pipe'}; to read it, pass --devd-socket "
            f"{world.devd_dir / 'devd.seqpacket.pipe'}\n"
        )
        assert {p: identity(p) for p in world.devd_dir.iterdir()} == sockets
        served = run("sim", "devd", "--sim-host", str(world.host.path))
        assert served.returncode == 2 and "another devd is serving" in served.stderr
        assert {p: identity(p) for p in world.devd_dir.iterdir()} == sockets


def test_a_lock_file_planted_as_a_symlink_is_refused(world: World) -> None:
    world.state.mkdir(mode=0o700)
    target = world.root / "elsewhere"
    target.write_text("keep\n")
    (world.state / "daemon.lock").symlink_to(target)
    done = run("daemon", *world.daemon_args())
    assert done.returncode == 2
    assert "daemon.lock" in done.stderr and "symbolic link" in done.stderr
    assert target.read_text() == "keep\n"
    assert not world.devd_dir.exists()


def test_a_lock_file_planted_as_a_hard_link_is_refused_before_it_is_locked(world: World) -> None:
    # O_NOFOLLOW cannot see a hard link: whoever can write the state directory could link any
    # file of the filesystem there, for the daemon to lock, truncate and write its pid into.
    world.state.mkdir(mode=0o700)
    target = world.root / "elsewhere"
    target.write_text("keep\n")
    os.link(target, world.state / "daemon.lock")
    with open(target, "rb") as held:
        done = run("daemon", *world.daemon_args())
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the daemon did not keep it locked
    assert done.returncode == 2
    assert done.stderr == (
        f"rctlpolicy daemon: state directory {world.state}: {world.state / 'daemon.lock'}: "
        "has 2 hard links; refusing to use it\n"
    )
    assert target.read_text() == "keep\n"
    assert not world.devd_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's file")
def test_a_lock_file_of_another_user_is_refused(world: World) -> None:
    world.state.mkdir(mode=0o777)
    planted = world.state / "daemon.lock"
    planted.write_text("\x1b[2J666\n")
    os.chown(planted, 65534, 65534)
    done = run("daemon", *world.daemon_args())
    assert done.returncode == 2
    assert "daemon.lock: is owned by uid 65534; refusing to use it" in done.stderr
    assert planted.read_text() == "\x1b[2J666\n"


def test_a_held_lock_names_its_holder_only_by_a_pid(world: World) -> None:
    world.state.mkdir(mode=0o700)
    lock = world.state / "daemon.lock"
    lock.write_text("\x1b]0;owned\x07\n")  # not a pid: never echoed to a terminal
    lock.chmod(0o600)
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = run("daemon", *world.daemon_args())
    assert done.returncode == 1
    assert done.stderr == (
        f"rctlpolicy daemon: another daemon (pid unknown) is using the state directory "
        f"{world.state}; stop it first\n"
    )


def test_a_lock_left_by_a_killed_daemon_does_not_block_the_next(world: World) -> None:
    killed = DaemonProcess(world.daemon_args())
    try:
        killed.wait_started()
        killed.proc.kill()
        killed.proc.wait(30)
    finally:
        killed.close()
    assert (world.state / "daemon.lock").read_text() == f"{killed.pid}\n"
    with running(world.daemon_args()) as again:
        assert (world.state / "daemon.lock").read_text() == f"{again.pid}\n"


SWITCH_PROBE = """
import os, signal, sys, threading, time
from pathlib import Path
from rctlpolicy.config import DaemonConfig
from rctlpolicy.service import run_daemon
host, rules, state = map(Path, sys.argv[1:4])
sys.setswitchinterval(0.004)
seen = []
def watch():
    while sys.getswitchinterval() == 0.004:
        time.sleep(0.01)
    seen.append(sys.getswitchinterval())
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
status = run_daemon(DaemonConfig(rules_dir=rules, kernel="sim", sim_host=host, state_dir=state,
                                 listen_address="127.0.0.1:0", history_interval=0))
print(status, [round(x, 6) for x in seen], sys.getswitchinterval())
"""


def test_the_daemon_process_switch_interval_is_restored_when_it_returns(world: World) -> None:
    done = subprocess.run(
        [PYTHON, "-c", SWITCH_PROBE, str(world.host.path), str(world.rules), str(world.state)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout == "0 [0.0002] 0.004\n", done.stderr


# --- exit statuses: 0 success, 1 findings or failures, 2 usage or I/O ---------------------------


def test_daemon_exit_statuses(world: World) -> None:
    missing_host = run("daemon", *world.daemon_args("--sim-host", str(world.root / "none.yaml")))
    assert missing_host.returncode == 2, missing_host.stderr
    assert missing_host.stderr.count("\n") == 1
    (world.rules / "bad.conf").write_text("jail:db1:memoryuze:deny=1g\n")
    policy_errors = run("daemon", *world.daemon_args())
    assert policy_errors.returncode == 1
    assert "memoryuze" in policy_errors.stderr
    (world.rules / "bad.conf").unlink()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run("daemon", *world.daemon_args("--web.listen-address", f"127.0.0.1:{port}"))
    assert busy.returncode == 2
    assert "cannot start:" in busy.stderr and "[Errno" not in busy.stderr
    assert run("daemon", "--no-such-flag").returncode == 2


def test_handle_and_sim_exit_statuses(world: World) -> None:
    event = ["--rule", "jail:db1:swapuse:devctl=536870912", "--pid", "1", "--jail", "db1"]
    no_host = run("handle", *event, "--kernel", "sim", "--sim-host", str(world.root / "x.yaml"),
                  "--rules-dir", str(world.rules), "--state-dir", str(world.state))  # fmt: skip
    assert no_host.returncode == 2, no_host.stderr
    not_ours = run("handle", "--rule", "jail:db1:maxproc:devctl=1", "--pid", "1", "--jail",
                   "db1", "--kernel", "sim", "--sim-host", str(world.host.path),
                   "--rules-dir", str(world.rules), "--state-dir", str(world.state))  # fmt: skip
    assert not_ours.returncode == 1
    gone = world.root / "gone"
    no_rules = run("handle", *event, "--kernel", "sim", "--sim-host", str(world.host.path),
                   "--rules-dir", str(gone), "--state-dir", str(world.state))  # fmt: skip
    assert (no_rules.returncode, no_rules.stderr) == (
        2,
        f"rctlpolicy handle: rules directory {gone}: No such file or directory\n",
    )
    assert run("sim", "rctl", "--sim-host", str(world.root / "x.yaml"), "-n").returncode == 2
    assert (
        run("sim", "set", "--sim-host", str(world.host.path), "jail:db9", "maxproc=1").returncode
        == 2
    )
    assert run("sim", "devd", "--sim-host", str(world.root / "x.yaml")).returncode == 2


# --- flag names: the new spellings, the old ones for one release --------------------------------


def test_old_flag_and_config_spellings_work_with_a_note(world: World) -> None:
    config = world.root / "rctlpolicy.yaml"
    config.write_text("output.file-path: metrics.prom\n")
    missing = world.root / "none"
    done = run("daemon", "--config", str(config), "--log-level=debug",
               *world.daemon_args("--rules-dir", str(missing)))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "rctlpolicy: --log-level is now spelt --log.level (the old name goes in the next release)",
        f"rctlpolicy daemon: {config}: 'output.file-path' is now spelt 'output-file' "
        "(the old name goes in the next release)",
        f"rctlpolicy daemon: rules directory {missing}: No such file or directory",
    ]
    both = world.root / "both.yaml"
    both.write_text("log-level: info\nlog.level: debug\n")
    twice = run("daemon", "--config", str(both), *world.daemon_args())
    assert twice.returncode == 2 and "given twice" in twice.stderr


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_log_format_logfmt_and_json(world: World, log_format: str) -> None:
    with running(world.daemon_args("--log.format", log_format, "--log.level", "info")) as daemon:
        pass
    lines = daemon.log.text().splitlines()
    assert len(lines) > 3
    for line in lines:
        if log_format == "json":
            entry = json.loads(line)
            assert set(entry) == {"ts", "level", "pid", "msg"} and entry["pid"] == daemon.pid
        else:
            assert re.fullmatch(
                r'ts=\S+Z level=(debug|info|warning|error) pid=\d+ msg="([^"\\]|\\.)*"', line
            ), line
    assert any("rctlpolicy started" in line for line in lines)


def test_sockets_left_by_a_daemon_that_died_are_replaced(world: World) -> None:
    world.devd_dir.mkdir()
    stale = world.devd_dir / "devd.seqpacket.pipe"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(str(stale))  # closed without unlinking: what a killed daemon leaves
    with running(world.daemon_args()) as daemon:
        daemon.wait_connected()  # the daemon reads the simulated devd it bound there
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(str(stale))
    assert not stale.exists()  # the daemon's own, removed as it stopped
