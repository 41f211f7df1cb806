"""The README's five-minute tour, walked as a newcomer would: `./dev/run` in one terminal, the
tour's commands, exactly as the README prints them, in another.

The tour runs in a fresh git checkout-like tree (dev/run, demo/, the README, a .gitignore, the
environment's .venv linked in) so that `git status` can prove the tour leaves the repository's
files alone. dev/bootstrap is the one file replaced: installing into the environment is the
test suite's set-up, not the tour's. The metrics port is a free one, not the README's 10217 (the
machine may run another daemon); a `sleep N; command` line is polled until its command shows
the change, up to a deadline, instead of trusting N seconds on a loaded machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import LogLines

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = ROOT / ".venv"

pytestmark = [
    pytest.mark.skipif(sys.platform.startswith("freebsd"), reason="the tour of the simulator"),
    pytest.mark.skipif(not (VENV / "bin" / "rctlpolicy").exists(), reason="needs .venv"),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]


def tour_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## A five-minute tour", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def tour_commands() -> list[str]:
    """Terminal 2's command lines, comments and blank lines left out."""
    lines = tour_block().split("# terminal 2", 1)[1].splitlines()
    commands = []
    for line in lines:
        code = re.sub(r"\s+# .*$", "", line).strip()
        if code and not code.startswith("#"):
            commands.append(code)
    return commands


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def git(tree: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=tree, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    top = Path(os.path.realpath(tmp_path)) / "rctlpolicy"
    shutil.copytree(ROOT / "dev", top / "dev")
    shutil.copytree(ROOT / "demo", top / "demo")
    shutil.copy(ROOT / "README.md", top / "README.md")
    shutil.copy(ROOT / ".gitignore", top / ".gitignore")
    (top / "dev" / "bootstrap").write_text("#!/bin/sh\n# installed by the test suite\n")
    (top / ".venv").symlink_to(VENV)
    git(top, "init", "-q")
    git(top, "add", "-A")
    git(top, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "tour")
    yield top


def test_the_readme_tour(tree: Path) -> None:
    block = tour_block()
    assert block.splitlines()[0].startswith("./dev/run ")
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RCTLPOLICY_SIM_HOST"}
    env.update(NO_COLOR="1", HOME=str(tree.parent))
    daemon = subprocess.Popen(
        ["./dev/run", "--web.listen-address", address, "--reload-settle", "0.5"],
        cwd=tree,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert daemon.stdout is not None
    log = LogLines(daemon.stdout)
    try:
        log.wait_for(r"rctlpolicy started: \d+ rules from \.demo/rules", 30)
        walk(tree, env, log, address)
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        status = daemon.wait(30)
        log.join(5)
        daemon.stdout.close()
    assert status == 0, log.text()
    # the tour changed its copies only
    assert git(tree, "status", "--porcelain") == ""
    assert "maxproc:deny=300" in (tree / ".demo" / "rules" / "rctl.conf").read_text()
    assert "maxproc:deny=200" in (tree / "demo" / "rules" / "rctl.conf").read_text()


def walk(tree: Path, env: dict[str, str], log: LogLines, address: str) -> None:
    terminal = dict(env, PATH=f"{tree / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    seen: list[str] = []
    for line in tour_commands():
        if line.startswith(". .venv/bin/activate"):
            continue  # PATH above is what activate sets
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            terminal[name] = value.replace("$PWD", str(tree))
            continue
        command = line.replace("127.0.0.1:10217", address)
        if command.startswith("curl ") and shutil.which("curl") is None:
            url = re.search(r"http://\S+", command)
            assert url is not None
            with urllib.request.urlopen(url.group(0), timeout=10) as response:
                body = response.read().decode()
            pattern = re.compile(r"^(jail_memoryuse|rctlpolicy_actions_total)", re.M)
            seen.append(command)
            check(command, 0, "\n".join(x for x in body.splitlines() if pattern.match(x)), log)
            continue
        sleep = re.fullmatch(r"sleep (\d+); (.*)", command)
        if sleep is not None:
            code, out = poll(sleep.group(2), tree, terminal, "maxproc:deny=300")
        else:
            done = subprocess.run(
                command, shell=True, cwd=tree, env=terminal, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            code, out = done.returncode, done.stdout + done.stderr
        seen.append(command)
        check(command, code, out, log)
    assert len(seen) >= 10, seen


def poll(command: str, tree: Path, env: dict[str, str], expected: str) -> tuple[int, str]:
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            command, shell=True, cwd=tree, env=env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        if expected in done.stdout or time.monotonic() > deadline:
            return done.returncode, done.stdout + done.stderr
        time.sleep(0.2)


def check(command: str, code: int, out: str, log: LogLines) -> None:
    """What each step of the tour promises."""
    what = f"{command}\n{out}"
    if "memoryuze" in command:
        assert code == 1 and "unknown resource 'memoryuze'" in out, what
        assert "did you mean 'memoryuse'?" in out, what
        return
    assert code == 0, what
    if command.startswith("rctlpolicy show") and "maxproc" not in command:
        assert "jail:db1:swapuse:devctl=536870912\n" in out, what
    elif command.startswith("rctlpolicy sim rctl -hu"):
        assert re.search(r"^memoryuse=\d+(\.\d+)?[KMG]$", out, re.M), what
    elif command.startswith("rctlpolicy usage"):
        assert "db1" in out and "web1" in out, what
    elif command.startswith("rctlpolicy plan"):
        assert not re.search(r"^\s*[-+~] ", out, re.M), what  # nothing to add, change, remove
    elif "show jail:db1:maxproc" in command:
        assert out == "jail:db1:maxproc:deny=300\n", what
    elif command.startswith("rctlpolicy sim set"):
        assert out.startswith("jail:db1 swapuse=1073741824 (was "), what
        log.wait_for(r"devctl: !system=RCTL subsystem=rule type=matched "
                     r"rule=jail:db1:swapuse:devctl=536870912", 20)  # fmt: skip
        log.wait_for(r"restarting postgresql in jail db1", 20)
    elif "metrics" in command:
        assert re.search(r"^jail_memoryuse\S* \d", out, re.M), what
        assert re.search(r"^rctlpolicy_actions_total\{.*\} 1\.0$", out, re.M), what
