"""`rctlpolicy sim timeline`: fast-forward the simulated host's usage along a script."""

from __future__ import annotations

import argparse
import sys

from rctlpolicy.cli.common import EXIT_OK, EXIT_USAGE, sim_host_option
from rctlpolicy.cli.history import rfc3339, timestamp

TYPE_CHECKING = False  # not typing's: see rctlpolicy.records
if TYPE_CHECKING:
    from typing import Any


def _cmd_sim_timeline(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rctlpolicy import yamlload
    from rctlpolicy.history import HISTORY_FILE_NAME
    from rctlpolicy.history.scripted import ScriptError, parse_script
    from rctlpolicy.history.store import HistoryError, HistoryStore
    from rctlpolicy.kernel import KernelSetupError, open_simulator
    from rctlpolicy.kernel.base import KernelError
    from rctlpolicy.kernel.hostedit import HostEditError, UsageChange, set_usage
    from rctlpolicy.kernel.hostfile import HostFileError
    from rctlpolicy.model import Filter, SubjectType

    try:
        script = parse_script(yamlload.load(Path(args.script).read_bytes().decode("utf-8")))
    except OSError as error:
        print(f"rctlpolicy sim timeline: {args.script}: {error.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError:
        print(f"rctlpolicy sim timeline: {args.script}: not UTF-8", file=sys.stderr)
        return EXIT_USAGE
    except (yamlload.YamlError, ScriptError) as error:
        print(f"rctlpolicy sim timeline: {args.script}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup = open_simulator(args.sim_host)
        running = {jail.name for jail in setup.kernel.jails()}
        missing = sorted(set(script.jails) - running)
        if missing:
            print(
                f"rctlpolicy sim timeline: the simulated host has no jail {', '.join(missing)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        current = {
            jail: setup.kernel.usage(Filter(SubjectType.JAIL, jail)) for jail in script.jails
        }
    except (KernelSetupError, KernelError, OSError) as error:
        print(f"rctlpolicy sim timeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    state_dir = Path(args.state_dir) if args.state_dir else Path(setup.state_dir)
    path = state_dir / HISTORY_FILE_NAME
    end = args.end if args.end is not None else time.time()
    store = HistoryStore(path)
    count = 0
    last: dict[str, Any] = {}
    try:
        for when, usage in script.samples(end, current):
            store.write(when, usage)
            count += 1
            last = usage
    except HistoryError as error:
        print(f"rctlpolicy sim timeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    assert setup.sim_host is not None
    try:
        for jail, shapes in script.jails.items():
            changes = [UsageChange(resource, last[jail][resource]) for resource in shapes]
            set_usage(Path(setup.sim_host), f"jail:{jail}", changes)
    except (HostEditError, HostFileError) as error:
        print(f"rctlpolicy sim timeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{count} samples of {len(script.jails)} jail(s), every {script.interval:g}s from "
        f"{rfc3339(end - script.duration)} to {rfc3339(end)}, written to {path}; the host "
        f"file {setup.sim_host} now holds the last sample."
    )
    return EXIT_OK


def add_timeline_parser(sim_commands: argparse._SubParsersAction[Any]) -> None:
    sub = sim_commands.add_parser(
        "timeline",
        help="fast-forward the simulated host's usage along a scripted timeline",
        description="Write the samples a daemon would have taken over a scripted window (its "
        "duration, ending now) into the usage history, then leave the host file at the last "
        "sample, so history, suggest and replay have something to read at once. The script "
        "is YAML: duration, interval, and per jail and resource a shape (base, daily, noise, "
        "spikes: {every, for, add}); see demo/timeline.yaml.",
        epilog="Exit status: 0, or 2 for a wrong script, a jail the host lacks, or I/O errors.",
    )
    sub.add_argument("script", metavar="SCRIPT", help="the timeline script (YAML)")
    sim_host_option(sub)
    sub.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where history.sqlite is written (default: beside the host file, as the "
        "daemon's default)",
    )
    sub.add_argument(
        "--end", type=timestamp, metavar="TIME", help="the window's end (default: now)"
    )
    sub.set_defaults(handler=_cmd_sim_timeline)
