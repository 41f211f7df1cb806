"""The daemon's settings for the commands that share its ledger (`plan`, `apply`).

The ledger (the rules an apply added, in the state directory) is the daemon's: a `plan` that
reads another one shows what the daemon would not do. So these commands take `--config` and
`--state-dir` and settle them as the daemon does (defaults, then the config file, then flags),
and with no PATH they read the daemon's rules directory.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from rctlpolicy.config import DEFAULT_CONFIG_PATH, LoadedConfig, load_daemon_config


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """What `plan`/`apply` share with the daemon, settled as the daemon settles them."""

    loaded: LoadedConfig
    #: The state directory given by flag or file; None: the kernel's default (the daemon's).
    state_dir: Path | None

    @property
    def rules_dir(self) -> Path:
        return self.loaded.config.rules_dir

    @property
    def rules_dir_origin(self) -> str:
        """Where the rules directory was set: the config file, or the built-in default."""
        if "rules_dir" in self.loaded.from_file and self.loaded.path is not None:
            return f"set in {self.loaded.path}"
        return "the built-in default"

    def rules_dir_line(self) -> str:
        """The first line of a plan or apply that was given no PATH."""
        return f"Using the daemon's rules directory {self.rules_dir} ({self.rules_dir_origin})."


def ledger_options(sub: argparse.ArgumentParser) -> None:
    """--config and --state-dir, with the daemon's defaults. Call after kernel_options: the
    kernel and simulated host then come from the config file too, unless given."""
    sub.add_argument(
        "--config",
        metavar="FILE",
        help=f"the daemon's YAML config file, for its rules directory, state directory, kernel "
        f"and simulated host (default: {DEFAULT_CONFIG_PATH} if present); flags win",
    )
    sub.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the daemon's state directory, which records the rules it added (default: as the "
        "daemon: the config file's, else /var/db/rctlpolicy; beside the host file on the "
        "simulator)",
    )
    # None, not "auto": a kernel the config file names is used unless one is given here.
    sub.set_defaults(kernel=None)


def ledger_settings(args: argparse.Namespace) -> LedgerSettings:
    """Settle the flags against the config file; raises ConfigError. Sets args.kernel and
    args.sim_host to the settled values (for open_kernel_or_say)."""
    flags = {
        "kernel": args.kernel,
        "sim_host": Path(args.sim_host) if args.sim_host else None,
        "state_dir": Path(args.state_dir) if args.state_dir else None,
    }
    notes: list[str] = []
    loaded = load_daemon_config(Path(args.config) if args.config else None, flags, notes)
    for note in notes:  # a key spelt the old way: accepted for one release, and said
        print(f"rctlpolicy {args.command}: {note}", file=sys.stderr)
    args.kernel = loaded.config.kernel
    args.sim_host = loaded.config.sim_host
    return LedgerSettings(loaded, loaded.config.state_dir)
