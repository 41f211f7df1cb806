"""What every subcommand shares: exit statuses, colour, and the options several commands take.

Kept small and free of heavy imports: `rctlpolicy lint` (pre-commit, every commit) imports it.
"""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False  # not typing's: importing typing costs lint start-up (rctlpolicy.records)
if TYPE_CHECKING:
    from typing import TextIO

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


#: Flags renamed to the one convention (Prometheus-style dotted groups for what exporters
#: share: --web.*, --log.*; dashes for the rest): the old spellings still work for one release,
#: with a note on stderr, and rctlpolicy(8) lists them. The config file's keys alike
#: (rctlpolicy.config.RENAMED_KEYS).
OLD_SPELLINGS: dict[str, str] = {
    "--log-level": "--log.level",
    "--output.file-path": "--output-file",
}


def modern_spellings(arguments: list[str], notes: list[str]) -> list[str]:
    """`arguments` with every old flag spelling (`--log-level debug`, `--log-level=debug`)
    replaced by its new one; a note for each goes to `notes`. Nothing after `--` is touched."""
    result: list[str] = []
    for index, argument in enumerate(arguments):
        if argument == "--":
            return result + arguments[index:]
        name, equals, value = argument.partition("=")
        new = OLD_SPELLINGS.get(name)
        if new is None:
            result.append(argument)
            continue
        notes.append(f"{name} is now spelt {new} (the old name goes in the next release)")
        result.append(new + equals + value)
    return result


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def sim_host_option(sub: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    sub.add_argument(
        "--sim-host",
        metavar="FILE",
        default=os.environ.get("RCTLPOLICY_SIM_HOST"),
        help="simulated host file (default: $RCTLPOLICY_SIM_HOST, or the bundled example host)",
    )


def kernel_choice_option(sub: argparse.ArgumentParser) -> None:
    """--kernel: which RCTL interface (FreeBSD's system calls or the simulated host)."""
    sub.add_argument(
        "--kernel",
        choices=("auto", "freebsd", "sim"),
        default="auto",
        help="the RCTL interface: FreeBSD's system calls, or the simulated "
        "host (auto: FreeBSD when running on it, the simulator elsewhere)",
    )


def kernel_options(sub: argparse.ArgumentParser) -> None:
    """--kernel, --sim-host and --format, for the commands that talk to the kernel."""
    kernel_choice_option(sub)
    sim_host_option(sub)
    sub.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format (default: text)",
    )


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def size(text: str) -> int:
    from rctlpolicy.config import ConfigError, parse_size

    try:
        return parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
