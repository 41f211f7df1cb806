"""The pre-commit hook, for real: `pre-commit try-repo` against a throw-away git repository
holding a good and a bad policy.

try-repo clones the hook's repository at a commit and pip-installs it into a fresh virtualenv
(about ten seconds the first time; PRE_COMMIT_HOME is shared by the session so that happens
once). It would see only committed files, plus changes to tracked ones: so the hook's
repository here is a snapshot of this working tree, committed, which is what CI's clean
checkout holds too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PRE_COMMIT = Path(sys.executable).with_name("pre-commit")
HOOK_ID = "rctlpolicy-lint"
FINDING = re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+):(?P<column>\d+): (?P<level>\w+)\[", re.M)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def git_env(home: Path) -> dict[str, str]:
    """The environment without anything a surrounding git or pre-commit run would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(
        PRE_COMMIT_HOME=str(home),
        PRE_COMMIT_COLOR="never",
        GIT_AUTHOR_NAME="rctlpolicy tests",
        GIT_AUTHOR_EMAIL="tests@rctlpolicy.invalid",
        GIT_COMMITTER_NAME="rctlpolicy tests",
        GIT_COMMITTER_EMAIL="tests@rctlpolicy.invalid",
        GIT_CONFIG_NOSYSTEM="1",
        NO_COLOR="1",
    )
    return env


def git(cwd: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def project_files() -> list[str]:
    """This working tree's files as git sees them (tracked, and new but not ignored)."""
    if not (PROJECT / ".git").exists():
        # An unpacked tarball: everything but what .gitignore keeps out of a checkout.
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        skip |= {".hypothesis", "build", "dist"}
        return [
            str(path.relative_to(PROJECT))
            for path in PROJECT.rglob("*")
            if path.is_file()
            and not skip & set(path.relative_to(PROJECT).parts)
            and not any(part.endswith(".egg-info") for part in path.parts)
        ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture(scope="session")
def hook_repo(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> Path:
    """A committed snapshot of this working tree: the repository try-repo installs from."""
    if shutil.which("git") is None:
        pytest.fail("git is needed: pre-commit works on git repositories")
    snapshot = tmp_path_factory.mktemp("hook-repo")
    for name in project_files():
        source = PROJECT / name
        if source.is_file():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, snapshot / name)
    assert (snapshot / ".pre-commit-hooks.yaml").is_file()
    env = git_env(pre_commit_home)
    git(snapshot, env, "init", "-q")
    git(snapshot, env, "add", "-A")
    git(snapshot, env, "commit", "-q", "-m", "snapshot for the pre-commit test")
    return snapshot


@pytest.fixture
def work_repo(tmp_path: Path, pre_commit_home: Path) -> Path:
    """The throw-away repository the hook runs in."""
    repo = tmp_path / "work"
    (repo / "rules").mkdir(parents=True)
    (repo / "rules" / "ok.conf").write_text(
        "# a good policy\njail:db1:maxproc:deny=100\nuser:www:vmemoryuse:deny=2g\n"
    )
    (repo / "rules" / "bad.conf").write_text(
        "# a bad policy\njail:db1:memoryuze:deny=8g\n\tjail:db1:cputime:deny=3600\n"
    )
    (repo / "rules" / "pg.yaml").write_text(
        "rules:\n  - rule: jail:pg:swapuse:devctl=1g\n    on_match: {signal: TERM}\n"
    )
    # Not policy files: the hook's `files` pattern must leave them alone.
    (repo / "notes.txt").write_text("jail:db1:memoryuze:deny=8g\n")
    (repo / "docker-compose.yaml").write_text("services: {}\n")
    env = git_env(pre_commit_home)
    git(repo, env, "init", "-q")
    git(repo, env, "add", "-A")
    return repo


def try_repo(work: Path, hook_repo: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PRE_COMMIT), "try-repo", str(hook_repo), HOOK_ID, "--all-files"],
        cwd=work,
        env=git_env(home),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


def test_hook_fails_on_the_bad_policy_with_file_line_col(
    work_repo: Path, hook_repo: Path, pre_commit_home: Path
) -> None:
    done = try_repo(work_repo, hook_repo, pre_commit_home)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"- hook id: {HOOK_ID}" in output
    findings = [
        (m["path"], int(m["line"]), int(m["column"]), m["level"]) for m in FINDING.finditer(output)
    ]
    assert findings == [
        ("rules/bad.conf", 2, 10, "error"),
        ("rules/bad.conf", 3, 19, "error"),
    ], output
    assert "did you mean 'memoryuse'?" in output


def test_hook_passes_once_the_bad_policy_is_gone(
    work_repo: Path, hook_repo: Path, pre_commit_home: Path
) -> None:
    env = git_env(pre_commit_home)
    git(work_repo, env, "rm", "-q", "--cached", "rules/bad.conf")
    (work_repo / "rules" / "bad.conf").unlink()
    done = try_repo(work_repo, hook_repo, pre_commit_home)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"rctlpolicy lint\.+Passed", output), output
    assert FINDING.search(output) is None
