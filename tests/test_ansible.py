"""contrib/ansible: the rctlpolicy.freebsd collection through the real engine.

Every playbook run here is a real `ansible-playbook` run of the collection's own playbooks
(the ones its README shows) against localhost with ansible_connection=local, the simulated
host (RCTLPOLICY_SIM_HOST in the task environment) and temporary directories. What needs
FreeBSD itself (pkg install, sysctl kern.racct.enable, the rc.d service, a reboot) cannot
run here: those tasks are syntax-checked, linted, and switched off or left to fail softly
(the sysctl read) in the role's real runs; the role's --check run shows it writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_helpers import DaemonProcess, SimHost

from rctlpolicy.config import load_config_file

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / "contrib" / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "rctlpolicy" / "freebsd"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
RCTLPOLICY = BIN / "rctlpolicy"
#: A stdout callback that prints every task's result as JSON (results_json).
CALLBACKS = Path(__file__).resolve().parent / "data" / "ansible_callbacks"

pytestmark = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists(), reason="ansible-core is not installed (the test extra)"
)

POLICY = "jail:db1:maxproc:deny=100\njail:db1:memoryuse:log=3g\njail:web1:maxproc:deny=50\n"
RULES = [
    "jail:db1:maxproc:deny=100",
    "jail:db1:memoryuse:log=3221225472",
    "jail:web1:maxproc:deny=50",
]


class World:
    """A controller and a managed host in one temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = SimHost(root / "host.yaml")
        self.src = root / "policy"
        self.src.mkdir()
        (self.src / "rctl.conf").write_text(POLICY)
        self.rules_dir = root / "etc" / "rules"
        self.state_dir = root / "state"
        self.inventory = root / "inventory.ini"
        self.inventory.write_text(
            "[jailhosts]\n"
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        )

    def env(self) -> dict[str, str]:
        home = self.root / "ansible-home"
        return {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "PYTHONWARNINGS": "ignore",
            "PYTHONDONTWRITEBYTECODE": "1",  # the action plugin is loaded from the checkout
        }

    def playbook(
        self, name: str, *args: str, json_output: bool = True, **extra: Any
    ) -> subprocess.CompletedProcess[str]:
        env = self.env()
        if json_output:
            env["ANSIBLE_CALLBACK_PLUGINS"] = str(CALLBACKS)
            env["ANSIBLE_STDOUT_CALLBACK"] = "results_json"
        variables = {"rctlpolicy_hosts": "jailhosts", "rctlpolicy_become": False, **extra}
        return subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                "-i",
                str(self.inventory),
                f"rctlpolicy.freebsd.{name}",
                "-e",
                json.dumps(variables),
                *args,
            ],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def tasks(self, tasks: list[dict[str, Any]]) -> Run:
        """A playbook of these tasks (the module called directly) against the simulated host."""
        playbook = self.root / "tasks.yml"
        play = {
            "name": "Tasks",
            "hosts": "jailhosts",
            "gather_facts": False,
            "environment": {"RCTLPOLICY_SIM_HOST": str(self.host.path)},
            "tasks": tasks,
        }
        playbook.write_text(yaml.safe_dump([play]))
        env = {
            **self.env(),
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
            "ANSIBLE_STDOUT_CALLBACK": "results_json",
        }
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), str(playbook)]
        run = subprocess.run(
            argv, env=env, cwd=self.root, capture_output=True, text=True, timeout=120, check=False
        )
        return Run(run)

    def policy(self, *args: str, json_output: bool = True, **extra: Any) -> Any:
        """The policy playbook against the simulated host; its JSON result (or the run)."""
        variables = {
            "rctlpolicy_policy_src": str(self.src) + "/",
            "rctlpolicy_rules_dir": str(self.rules_dir),
            "rctlpolicy_state_dir": str(self.state_dir),
            "rctlpolicy_environment": {"RCTLPOLICY_SIM_HOST": str(self.host.path)},
            **extra,
        }
        run = self.playbook("policy", *args, json_output=json_output, **variables)
        return Run(run) if json_output else run

    def kernel(self) -> list[str]:
        return self.host.rules()


class Run:
    """One playbook run's JSON callback output."""

    def __init__(self, run: subprocess.CompletedProcess[str]) -> None:
        self.returncode = run.returncode
        self.stderr = run.stderr
        try:
            self.document: dict[str, Any] = json.loads(run.stdout)
        except json.JSONDecodeError:
            message = f"no JSON from ansible-playbook:\n{run.stdout}\n{run.stderr}"
            raise AssertionError(message) from None

    def task(self, name: str) -> dict[str, Any]:
        for task in self.document["tasks"]:
            if task["name"] == name:
                result: dict[str, Any] = {**task["result"], "status": task["status"]}
                return result
        raise AssertionError(f"no task {name!r} in {json.dumps(self.document)[:2000]}")

    @property
    def result(self) -> dict[str, Any]:
        return self.task("Make the kernel's rules match the policy")

    @property
    def stats(self) -> Mapping[str, int]:
        stats: Mapping[str, int] = self.document["stats"]["localhost"]
        return stats


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# --- the module -----------------------------------------------------------------------------


def test_check_mode_shows_the_diff_and_changes_nothing(world: World) -> None:
    run = world.policy("--check", "--diff", json_output=False)
    assert run.returncode == 0, run.stdout + run.stderr
    # The kernel's rules, then the file, as unified diffs.
    assert "+jail:db1:maxproc:deny=100\n+jail:db1:memoryuse:log=3221225472\n" in run.stdout
    assert f"+++ after: {world.rules_dir}/rctl.conf" in run.stdout
    assert "+jail:db1:memoryuse:log=3g" in run.stdout
    assert "changed=1" in run.stdout
    assert world.kernel() == []
    assert not world.rules_dir.exists()


def test_apply_is_idempotent_and_follows_the_policy(world: World) -> None:
    first = world.policy()
    assert first.returncode == 0, first.stderr
    assert first.result["changed"] is True
    assert first.result["summary"] == {"add": 3, "change": 0, "remove": 0}
    assert first.result["files"]["written"] == [f"{world.rules_dir}/rctl.conf"]
    assert world.kernel() == RULES
    assert (world.rules_dir / "rctl.conf").read_text() == POLICY
    assert (world.rules_dir / "rctl.conf").stat().st_mode & 0o777 == 0o644
    assert json.loads((world.state_dir / "applied.json").read_text())["owned"] == RULES

    again = world.policy()
    assert (again.returncode, again.result["changed"]) == (0, False)
    assert again.stats["changed"] == 0

    # A new amount is a change; a rule dropped from the policy is removed, being ours.
    (world.src / "rctl.conf").write_text("jail:db1:maxproc:deny=200\njail:web1:maxproc:deny=50\n")
    changed = world.policy()
    assert changed.result["changes"] == {
        "add": [],
        "change": [{"old": "jail:db1:maxproc:deny=100", "new": "jail:db1:maxproc:deny=200"}],
        "remove": ["jail:db1:memoryuse:log=3221225472"],
    }
    assert world.kernel() == ["jail:db1:maxproc:deny=200", "jail:web1:maxproc:deny=50"]


def test_prune_removes_what_the_policy_does_not_name(world: World) -> None:
    assert world.policy().returncode == 0
    assert world.host.rctl("-a", "jail:web2:maxproc:deny=7").returncode == 0
    kept = world.policy()
    assert kept.result["changed"] is False
    assert "jail:web2:maxproc:deny=7" in world.kernel()
    pruned = world.policy(rctlpolicy_prune=True)
    assert pruned.result["changes"]["remove"] == ["jail:web2:maxproc:deny=7"]
    assert world.kernel() == RULES


def test_an_invalid_policy_fails_with_file_line_col_and_changes_nothing(world: World) -> None:
    assert world.policy().returncode == 0
    before = (world.rules_dir / "rctl.conf").read_text()
    (world.src / "rctl.conf").write_text("jail:db1:maxproc:deny=1\njail:db1:memoryuze:deny=8g\n")
    failed = world.policy()
    assert failed.returncode == 2
    result = failed.result
    assert result["status"] == "failed"
    assert (
        f"{world.src}/rctl.conf:2:10: error[unknown-resource]: unknown resource 'memoryuze'"
        in result["msg"]
    )
    assert result["diagnostics"][0]["path"] == f"{world.src}/rctl.conf"
    assert world.kernel() == RULES
    assert (world.rules_dir / "rctl.conf").read_text() == before


def test_a_symlink_planted_in_rules_dir_is_replaced_never_followed(world: World) -> None:
    assert world.policy().returncode == 0
    secret = world.root / "secret.conf"
    secret.write_text("# TOPSECRET\n")
    secret.chmod(0o600)
    target = world.rules_dir / "rctl.conf"
    target.unlink()
    target.symlink_to(secret)
    # The diff shows neither the link's target nor its text; the link is replaced, not written
    # through.
    run = world.policy("--diff", json_output=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "TOPSECRET" not in run.stdout
    assert not target.is_symlink()
    assert target.read_text() == POLICY
    assert secret.read_text() == "# TOPSECRET\n"
    assert [p.name for p in world.rules_dir.iterdir()] == ["rctl.conf"]


def test_the_files_kept_in_rules_dir_are_checked_as_the_daemon_reads_them(world: World) -> None:
    # One file sent (not a directory): the other files in rules_dir stay and are part of the
    # policy. One that runs commands and that the group can write is refused by the daemon;
    # the module's check sees its mode too, so nothing is written.
    assert world.policy().returncode == 0
    actions = world.rules_dir / "actions.yaml"
    actions.write_text(
        "rules:\n  - rule: jail:db1:swapuse:devctl=512m\n    on_match:\n"
        "      run: [/bin/echo, hello]\n"
    )
    actions.chmod(0o664)
    (world.src / "rctl.conf").write_text("jail:db1:maxproc:deny=200\n")
    run = world.policy(rctlpolicy_policy_src=str(world.src / "rctl.conf"))
    assert run.returncode == 2
    assert "writable by group or others" in run.result["msg"], run.result["msg"]
    assert "nothing was changed" in run.result["msg"]
    assert (world.rules_dir / "rctl.conf").read_text() == POLICY
    assert world.kernel() == RULES


def test_a_file_that_cannot_be_replaced_leaves_the_whole_policy_as_it_was(world: World) -> None:
    # Files are written whole and renamed only once all of them are: rules_dir never holds
    # half a policy (here a.conf renamed, b.conf not).
    (world.src / "a.conf").write_text("jail:web1:maxproc:deny=60\n")
    (world.src / "b.conf").write_text("jail:web2:maxproc:deny=70\n")
    world.rules_dir.mkdir(parents=True)
    (world.rules_dir / "a.conf").write_text("jail:web1:maxproc:deny=50\n")
    (world.rules_dir / "b.conf").mkdir()
    run = world.policy()
    assert run.returncode == 2
    assert "nothing was changed" in run.result["msg"], run.result["msg"]
    assert (world.rules_dir / "a.conf").read_text() == "jail:web1:maxproc:deny=50\n"
    assert sorted(p.name for p in world.rules_dir.iterdir()) == ["a.conf", "b.conf"]
    assert world.kernel() == []


def test_bad_output_from_rctlpolicy_is_a_clear_failure(world: World) -> None:
    outputs = {
        "not json": "Traceback (most recent call last):\n  boom",
        "a list": "[]",
        "no keys": '{"format_version": 1}',
        "bad changes": json.dumps(
            {
                "format_version": 1,
                **{key: [] for key in ("diagnostics", "warnings", "in_force")},
                **dict.fromkeys(["error", "in_sync", "summary", "rules"], None),
                "changes": {"add": 1},
            }
        ),
    }
    tasks = []
    for name, output in outputs.items():
        script = world.root / f"rctlpolicy-{name.replace(' ', '-')}"
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit 1\n")
        script.chmod(0o755)
        module = {"rules_dir": str(world.root), "executable": str(script)}
        tasks.append({"name": name, "rctlpolicy.freebsd.policy": module, "ignore_errors": True})
    run = world.tasks(tasks)
    messages = {name: run.task(name)["msg"] for name in outputs}
    assert all(run.task(name)["status"] == "failed" for name in outputs)
    assert messages["not json"].startswith("rctlpolicy plan printed no JSON document (exit 1)")
    assert messages["a list"].startswith("rctlpolicy plan printed no JSON document")
    assert messages["no keys"].startswith("rctlpolicy plan printed a JSON document without")
    assert "changes.add|change|remove" in messages["bad changes"]
    assert not any("MODULE FAILURE" in m for m in messages.values()), messages


def test_without_src_or_rules_dir_the_daemons_config_says_where_the_policy_is(
    world: World,
) -> None:
    world.rules_dir.mkdir(parents=True)
    (world.rules_dir / "rctl.conf").write_text(POLICY)
    config = world.root / "rctlpolicy.yaml"
    config.write_text(
        yaml.safe_dump({"rules-dir": str(world.rules_dir), "state-dir": str(world.state_dir)})
    )
    env = dict(world.env(), RCTLPOLICY_SIM_HOST=str(world.host.path))
    run = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-i",
            str(world.inventory),
            "-m",
            "rctlpolicy.freebsd.policy",
            "-a",
            f"config={config}",
            "--check",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "localhost | CHANGED" in run.stdout
    assert f'"rules_dir": "{world.rules_dir}"' in run.stdout
    assert world.kernel() == []


def test_reload_lets_the_running_daemon_apply_the_policy(world: World) -> None:
    world.rules_dir.mkdir(parents=True)
    pidfile = world.root / "rctlpolicy.pid"
    flags = {
        "--kernel": "sim",
        "--sim-host": str(world.host.path),
        "--rules-dir": str(world.rules_dir),
        "--state-dir": str(world.state_dir),
        "--pidfile": str(pidfile),
        "--web.listen-address": "127.0.0.1:0",
        "--reload-settle": "3600",  # only the module's SIGHUP reloads
    }
    daemon = DaemonProcess([part for flag in flags.items() for part in flag])
    try:
        daemon.wait_started()
        mark = daemon.log.mark
        run = world.policy(rctlpolicy_reload=True, rctlpolicy_pidfile=str(pidfile))
        assert run.returncode == 0, run.stderr
        assert run.result["reloaded"] is True
        daemon.log.wait_for(r"policy reloaded \(SIGHUP\): 3 rules", since=mark)
        assert world.kernel() == RULES
        # The daemon's record, not a second one: it added the rules.
        assert json.loads((world.state_dir / "applied.json").read_text())["owned"] == RULES
        assert (
            world.policy(rctlpolicy_reload=True, rctlpolicy_pidfile=str(pidfile)).result["changed"]
            is False
        )
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.close()


# --- the role -------------------------------------------------------------------------------


def role_variables(world: World, **extra: Any) -> dict[str, Any]:
    etc = world.root / "etc"
    return {
        "rctlpolicy_install_package": False,  # pkg(8): FreeBSD only
        "rctlpolicy_manage_service": False,  # rc.d/rctlpolicy: FreeBSD only
        "rctlpolicy_policy_src": str(world.src),
        "rctlpolicy_controller_command": str(RCTLPOLICY),
        "rctlpolicy_rules_dir": str(world.rules_dir),
        "rctlpolicy_config_path": str(etc / "rctlpolicy.yaml"),
        "rctlpolicy_loader_conf": str(world.root / "boot" / "loader.conf"),
        "rctlpolicy_rc_conf": str(etc / "rc.conf.d" / "rctlpolicy"),
        "rctlpolicy_settings": {"state-dir": "/var/db/rctlpolicy", "jail-poll-interval": 10},
        "rctlpolicy_prometheus_file_sd_dir": str(world.root / "file_sd"),
        **extra,
    }


def test_the_role_in_check_mode_writes_nothing(world: World) -> None:
    (world.root / "etc").mkdir()
    run = Run(world.playbook("fleet", "--check", **role_variables(world)))
    assert run.returncode == 0, [t for t in run.document["tasks"] if t["status"] == "failed"]
    assert run.task("Write the daemon's configuration")["changed"] is True
    assert run.task("Turn resource accounting on at boot (a loader tunable)")["changed"] is True
    assert list((world.root / "etc").iterdir()) == []
    assert not (world.root / "boot").exists()
    assert not (world.root / "file_sd").exists()


def test_the_role_lints_on_the_controller_before_it_copies(world: World) -> None:
    (world.src / "rctl.conf").write_text("jail:db1:memoryuze:deny=8g\n")
    run = Run(world.playbook("fleet", **role_variables(world)))
    assert run.returncode == 2
    lint = run.task("Check the policy on the controller before it is copied")
    assert lint["status"] == "failed"
    assert f"{world.src}/rctl.conf:1:10: error[unknown-resource]" in lint["stdout"]
    assert not world.rules_dir.exists()


def test_the_role_sets_a_host_up_and_its_prometheus_target(world: World) -> None:
    variables = role_variables(world, rctlpolicy_listen_address="[::]:10300")
    (world.root / "etc").mkdir()  # /usr/local/etc: there on every FreeBSD host with pkg(8)
    first = Run(world.playbook("fleet", **variables))
    assert first.returncode == 0, [t for t in first.document["tasks"] if t["status"] == "failed"]
    config = load_config_file(Path(variables["rctlpolicy_config_path"]))
    assert config["rules_dir"] == world.rules_dir
    assert config["listen_address"] == "[::]:10300"
    assert config["jail_poll_interval"] == 10.0
    assert (world.root / "boot" / "loader.conf").read_text() == 'kern.racct.enable="1"\n'
    assert (Path(variables["rctlpolicy_rc_conf"])).read_text().splitlines() == [
        'rctlpolicy_enable="YES"',
        f'rctlpolicy_config="{variables["rctlpolicy_config_path"]}"',
        f'rctlpolicy_rules_dir="{world.rules_dir}"',
    ]
    assert (world.rules_dir / "rctl.conf").read_text() == POLICY
    # Off FreeBSD kern.racct.enable cannot be read: the role says a reboot is needed.
    notice = first.task("Say that a reboot is needed to turn resource accounting on")
    assert "kern.racct.enable is off on localhost" in notice["msg"]
    target = json.loads((world.root / "file_sd" / "localhost.json").read_text())
    # Scraped where the daemon listens, under the host's inventory name.
    assert target == [{"targets": ["localhost:10300"], "labels": {"host": "localhost"}}]

    again = Run(world.playbook("fleet", **variables))
    assert again.returncode == 0
    assert again.stats["changed"] == 0

    # Prometheus reads the target file the role wrote, and names the instance by its host.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (dev/system-tools)")
    scrape = yaml.safe_load((REPO / "contrib" / "prometheus" / "prometheus-fleet.yml").read_text())
    scrape.pop("rule_files")
    scrape["scrape_configs"][0]["file_sd_configs"][0]["files"] = [
        str(world.root / "file_sd" / "*.json")
    ]
    config_path = world.root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape))
    found = subprocess.run(
        # File discovery reads the files at once; promtool waits out its whole timeout.
        [promtool, "check", "service-discovery", "--timeout=3s", str(config_path), "rctlpolicy"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert found.returncode == 0, found.stdout + found.stderr
    [discovered] = json.loads(found.stdout)
    assert discovered["labels"]["instance"] == "localhost"
    assert discovered["labels"]["__address__"] == "localhost:10300"
    assert "host" not in discovered["labels"]


# --- the collection as a whole --------------------------------------------------------------


def test_the_playbooks_pass_syntax_check(world: World) -> None:
    for name in ("fleet", "policy"):
        run = world.playbook(name, "--syntax-check", json_output=False)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_collection_builds_installs_and_documents_its_module(world: World) -> None:
    galaxy = BIN / "ansible-galaxy"
    built = subprocess.run(
        [str(galaxy), "collection", "build", str(COLLECTION), "--output-path", str(world.root)],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = world.root.glob("rctlpolicy-freebsd-*.tar.gz")
    # From the built tarball, and straight from the checkout.
    for source, installed in (
        (tarball, world.root / "from-tarball"),
        (COLLECTION, world.root / "collections"),
    ):
        done = subprocess.run(
            [str(galaxy), "collection", "install", "--force", str(source), "-p", str(installed)],
            env=world.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        plugins = installed / "ansible_collections" / "rctlpolicy" / "freebsd" / "plugins"
        assert (plugins / "modules" / "policy.py").is_file()
        assert (plugins / "action" / "policy.py").is_file()
    env = dict(world.env(), ANSIBLE_COLLECTIONS_PATH=str(installed))
    doc = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "rctlpolicy.freebsd.policy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert doc.returncode == 0, doc.stderr
    documented = json.loads(doc.stdout)["rctlpolicy.freebsd.policy"]
    assert set(documented["doc"]["options"]) >= {"rules_dir", "src", "prune", "reload"}
    assert documented["examples"] and documented["return"]


def test_ansible_lint_finds_nothing(world: World) -> None:
    lint = BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed (the test extra)")
    run = subprocess.run(
        [str(lint), "--offline", "--nocolor"],
        env=world.env(),
        cwd=COLLECTION,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_readme_shows_the_tested_playbook() -> None:
    readme = (COLLECTION / "README.md").read_text()
    playbook = (COLLECTION / "playbooks" / "policy.yml").read_text()
    assert f"```yaml\n{playbook}```" in readme
    for name in ("fleet", "policy"):
        assert f"rctlpolicy.freebsd.{name}" in (REPO / "README.md").read_text()
