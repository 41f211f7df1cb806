"""The benches' own virtualenv: rctlpolicy installed as users install it (not editable), with
bytecode compiled, plus whatever baseline tools a bench compares against (yamllint, ...).

    from _venv import bench_python
    python = bench_python(["yamllint"])       # Path to .bench/venv/bin/python

The venv lives in `.bench/venv` (git-ignored) and is reused; rctlpolicy itself is reinstalled
from the working tree on every call, so a bench always measures the code in front of it.
PYTHONDONTWRITEBYTECODE is removed from the environment of every process the bench starts
(`bench_env()`), so imports use and keep .pyc files as an installed package does. Run timed
processes with `cwd=NEUTRAL_CWD`: from the checkout, `python -c` would import the working
tree's `rctlpolicy/` instead of the installed one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench" / "venv"
#: A directory without a `rctlpolicy/` in it, for the processes a bench times.
NEUTRAL_CWD = ROOT / ".bench"


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for processes a bench times: bytecode on, no editable-path finders."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    }
    env.update(extra or {})
    return env


def bench_python(tools: Sequence[str] = ()) -> Path:
    """Create (once) the bench venv, install rctlpolicy non-editable and `tools`; compile."""
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    env = bench_env()
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if tools:
        subprocess.run([*pip, *tools], check=True, env=env)
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(ROOT)], check=True, env=env)
    # Dependencies once (a no-op when present), then bytecode for everything in the venv.
    subprocess.run([*pip, str(ROOT)], check=True, env=env)
    subprocess.run(
        [str(python), "-m", "compileall", "-q", "-j", "0", str(VENV / "lib")],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return python


if __name__ == "__main__":
    print(bench_python(sys.argv[1:]))
