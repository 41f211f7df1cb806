"""Actions: what runs when a `devctl` rule fires, and when it must not.

What an `on_match` means, its one validation, the event's `ActionContext` and the command built
from both live in the pure core module `rctlpolicy.onmatch`. This package is the machinery:

- `engine`: `ActionEngine` decides (cooldown, one run at a time per rule and jail, max_runs),
  runs each started action on a worker of its own, and reports an `ActionOutcome`;
- `runner`: `ActionProcessRunner` runs an argv as a supervised process group;
- `state`: where the decisions are remembered (`MemoryState` in the daemon, `FileState` shared
  by the one-shot `rctlpolicy handle` invocations);
- `procgroup`: how many processes a process group still has (Linux /proc, FreeBSD sysctl).
"""

from __future__ import annotations

from rctlpolicy.actions.engine import (
    DEFAULT_MAX_RUNNING,
    ActionEngine,
    ActionOutcome,
    Decision,
)
from rctlpolicy.actions.runner import (
    ACTION_ENVIRONMENT,
    ACTION_PATH,
    ActionProcessRunner,
    Finished,
    Outcome,
    Run,
    Runner,
    RunResult,
)
from rctlpolicy.actions.state import (
    CooldownState,
    FileState,
    MemoryState,
    StateEntry,
    StateKey,
)

__all__ = [
    "ACTION_ENVIRONMENT",
    "ACTION_PATH",
    "DEFAULT_MAX_RUNNING",
    "ActionEngine",
    "ActionOutcome",
    "ActionProcessRunner",
    "CooldownState",
    "Decision",
    "FileState",
    "Finished",
    "MemoryState",
    "Outcome",
    "Run",
    "RunResult",
    "Runner",
    "StateEntry",
    "StateKey",
]
