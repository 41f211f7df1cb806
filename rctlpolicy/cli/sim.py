"""`rctlpolicy sim`: rctl(8) and devd on the simulated host, and changing its usage."""

from __future__ import annotations

import argparse
import os
import sys

from rctlpolicy.cli.common import EXIT_OK, EXIT_USAGE, seconds, sim_host_option

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any


SIM_RCTL_HELP = """\
usage: rctlpolicy sim rctl [--sim-host FILE] [rctl-argument ...]
       rctl [ -h ] [-a rule | -l filter | -r filter | -u filter | filter]

rctl(8) on the simulated host: the same options (-a, -h, -l, -n, -r, -u), output, messages
and exit status. -h is rctl's own (human-readable numbers), so this help is --help only.
The host file is --sim-host FILE, else $RCTLPOLICY_SIM_HOST, else the bundled example.
Exit status: rctl(8)'s; 2 when the host file cannot be read.
See rctl(8) and rctlpolicy(8).
"""


#: The options `sim rctl` reads itself, before rctl(8)'s own (its parser passes every argument
#: on to rctl, whose -h is not help).
SIM_RCTL_OPTIONS = ("--sim-host", "--help")


def _sim_rctl_arguments(args: argparse.Namespace) -> tuple[str | None, list[str]] | None:
    """--sim-host FILE (or --sim-host=FILE) before rctl's own arguments; None after --help."""
    sim_host: str | None = args.sim_host
    rest = list(args.rctl_args)
    while rest:
        if rest[0] == "--help":
            sys.stdout.write(SIM_RCTL_HELP)
            return None
        if rest[0] == "--sim-host" and len(rest) > 1:
            sim_host, rest = rest[1], rest[2:]
        elif rest[0].startswith("--sim-host="):
            sim_host, rest = rest[0].partition("=")[2], rest[1:]
        else:
            break
    return sim_host, rest


def _cmd_sim_rctl(args: argparse.Namespace) -> int:
    from rctlpolicy.kernel import KernelSetupError, open_simulator
    from rctlpolicy.kernel.rctl8 import run_rctl

    parsed = _sim_rctl_arguments(args)
    if parsed is None:
        return EXIT_OK
    sim_host, rctl_args = parsed
    try:
        setup = open_simulator(sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_rctl(rctl_args, setup.syscalls, setup.resolver, setup.names, sys.stdout, sys.stderr)


def _cmd_sim_set(args: argparse.Namespace) -> int:
    from rctlpolicy.kernel import KernelSetupError, resolve_sim_host
    from rctlpolicy.kernel.hostedit import HostEditError, parse_usage_change, set_usage
    from rctlpolicy.kernel.hostfile import HostFileError

    try:
        changes = [parse_usage_change(text) for text in args.changes]
        path = resolve_sim_host(args.sim_host)
        edit = set_usage(path, args.subject, changes)
    except (HostEditError, KernelSetupError, HostFileError) as error:
        print(f"rctlpolicy sim set: {error}", file=sys.stderr)
        return EXIT_USAGE
    for resource, before, after in edit.changed:
        print(f"{edit.container} {resource}={after} (was {before})")
    return EXIT_OK


def _cmd_sim_devd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rctlpolicy.kernel import KernelSetupError, open_simulator
    from rctlpolicy.simdevd import serve_sim_devd

    try:
        setup = open_simulator(args.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    directory = Path(args.directory) if args.directory else None
    return serve_sim_devd(setup, directory, args.interval)


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    sim = commands.add_parser(
        "sim",
        help="the simulated host: rctl(8) and devd on it, and changing its usage",
        description="Rehearse on the simulated FreeBSD host.",
    )
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SIMCOMMAND", required=True)
    sim_rctl = sim_commands.add_parser(
        "rctl",
        help="rctl(8) on the simulated host, same flags, output and exit status",
        description="rctl(8) on the simulated host: rctl [-h] [-n] [filter ...], "
        "rctl -a rule ..., rctl -l [-h] [-n] filter ..., rctl -r filter ..., "
        "rctl -u [-h] filter ...",
        prefix_chars="+",
    )
    sim_rctl.add_argument(
        "rctl_args",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="[--sim-host FILE] then rctl(8)'s own options and operands (--help: its usage)",
    )
    sim_rctl.set_defaults(handler=_cmd_sim_rctl, sim_host=os.environ.get("RCTLPOLICY_SIM_HOST"))
    sim_set = sim_commands.add_parser(
        "set",
        help="change what a subject uses in the simulated host file",
        description="Set usage values of one subject in the simulated host file, in rctl -u "
        "units (amounts take rctl's suffixes: 1g, 512m). Only those values change: the rest of "
        "the file, comments included, stays as it is. A jail's usage is what its own "
        "processes use; rctl -u of a jail adds its child jails'.",
        epilog="Example: rctlpolicy sim set jail:db1 swapuse=1g memoryuse=3g. "
        "Exit status: 0 changed, 2 unknown subject or resource, bad amount, or I/O error.",
    )
    sim_host_option(sim_set)
    sim_set.add_argument(
        "subject",
        metavar="SUBJECT",
        help="jail:NAME, user:NAME or uid, loginclass:NAME, process:PID",
    )
    sim_set.add_argument(
        "changes", nargs="+", metavar="RESOURCE=AMOUNT", help="e.g. swapuse=1g or maxproc=40"
    )
    sim_set.set_defaults(handler=_cmd_sim_set)
    sim_devd = sim_commands.add_parser(
        "devd",
        help="serve devd's sockets, sending the RCTL events of the simulated host",
        description="Serve devd's SOCK_SEQPACKET and SOCK_STREAM sockets beside the host "
        "file and, as usage in the host file changes, send the notifications the kernel "
        "would for devctl rules (log rules print the kernel's log line).",
        epilog="Exit status: 0 after SIGINT or SIGTERM; 2 when the host file cannot be read "
        "or the sockets cannot be bound (another devd serving them included).",
    )
    sim_host_option(sim_devd)
    sim_devd.add_argument(
        "--directory",
        metavar="DIR",
        help="where to create the sockets (default: beside the host file)",
    )
    sim_devd.add_argument(
        "--interval",
        type=seconds,
        default=0.5,
        metavar="SECONDS",
        help="how often usage is re-read, in seconds (default: 0.5)",
    )
    sim_devd.set_defaults(handler=_cmd_sim_devd)
    from rctlpolicy.cli.simtimeline import add_timeline_parser

    add_timeline_parser(sim_commands)
