"""Running FreeBSD's own commands (rctl(8), jls(8), sysctl(8)) for the kernel backend.

The backend asks the system through libc when it can and through these commands when it
cannot; a `CommandRunner` is passed in, so tests swap the real processes for a script.
Commands are argv lists, never run through a shell.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs an argv (never through a shell) to completion."""

    def run(self, argv: Sequence[str]) -> CommandResult:
        """Raises OSError when the program cannot be started."""
        ...


class SubprocessCommandRunner:
    """The CommandRunner of a real system: each argv a child process, stdout and stderr
    captured apart, stdin closed, a timeout on the whole run."""

    def __init__(self, *, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self._timeout = timeout
        self._env = dict(env) if env is not None else None

    def run(self, argv: Sequence[str]) -> CommandResult:
        """Run argv; a timeout surfaces as subprocess.TimeoutExpired."""
        completed = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            timeout=self._timeout,
            env=self._env,
            check=False,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)
