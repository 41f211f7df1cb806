"""The floor of the event path, for bench/events.py: a devd client as the daemon reads devd
(the same reader thread, `rctlpolicy.devd.DevdClient`, handing raw records to another thread)
whose other thread parses each record and spawns the action as the engine does, and nothing
else: no policy, no matching, no cooldowns, no state, no logging.

    python bench/_floor.py SEQPACKET_PATH

Prints "ready", then one line per action: "floor[PID]: <the action's output>".
"""

from __future__ import annotations

import queue
import subprocess
import sys

from rctlpolicy.actions.runner import ACTION_ENVIRONMENT
from rctlpolicy.daemon import SWITCH_INTERVAL
from rctlpolicy.devd import DevdClient, DevdItem, RctlEvent, parse_rctl_event

DATE = "/usr/bin/date"


def main() -> int:
    items: queue.SimpleQueue[DevdItem] = queue.SimpleQueue()
    client = DevdClient(items, seqpacket_path=sys.argv[1], stream_path=None)
    client.start()
    sys.setswitchinterval(SWITCH_INTERVAL)  # as the daemon process does
    env = dict(ACTION_ENVIRONMENT)
    print("ready", flush=True)
    while True:
        item = items.get()
        if not isinstance(item, bytes):
            continue
        event = parse_rctl_event(item)
        if not isinstance(event, RctlEvent):
            continue
        proc = subprocess.Popen(
            [DATE, f"+%s.%N {event.jail}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd="/",
        )
        output, _ = proc.communicate()
        print(f"floor[{proc.pid}]: {output.decode().strip()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
