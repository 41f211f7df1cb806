"""The simulated host's devd: RCTL notifications as usage in the host file changes.

The simulated kernel decides which devctl/log rules fire (once per episode, rate-limited, as
kern_rctl.c does); this module sends the devctl ones to devd's sockets in the kernel's exact
format and logs the log ones with the kernel's line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from rctlpolicy.devd.message import format_rctl_event
from rctlpolicy.devdserver import SEQPACKET_NAME, DevdServer
from rctlpolicy.kernel import KernelSetup
from rctlpolicy.kernel.hostfile import HostFileError
from rctlpolicy.kernel.simulator import SimulatedSyscalls, format_log_line

log = logging.getLogger("rctlpolicy.simdevd")

#: sun_path holds 104 bytes on FreeBSD, 108 on Linux: deep directories fall back to /tmp.
_SUN_PATH_MAX = 100


def socket_directory(host_path: Path) -> tuple[Path, bool]:
    """Where the simulated devd's sockets go: beside the host file (`<host>.devd/`), or a new
    directory under the temporary directory when that path is too long for a socket.

    Returns the directory and whether it is a temporary one (to be removed after use).
    """
    directory = host_path.with_name(host_path.name + ".devd")
    if len(str(directory / SEQPACKET_NAME).encode()) < _SUN_PATH_MAX:
        directory.mkdir(parents=True, exist_ok=True)
        return directory, False
    return Path(tempfile.mkdtemp(prefix="rctlpolicy-devd-")), True


class SimDevd:
    """A DevdServer fed by the simulated kernel's event evaluation, on its own thread."""

    def __init__(
        self, setup: KernelSetup, directory: Path | None = None, interval: float = 0.5
    ) -> None:
        if setup.simulator is None or setup.sim_host is None:
            raise ValueError("the simulated devd needs the simulated host")
        self.simulator: SimulatedSyscalls = setup.simulator
        self._temporary = False
        if directory is None:
            directory, self._temporary = socket_directory(setup.sim_host)
        self.server = DevdServer(directory)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rctlpolicy-sim-devd", daemon=True)
        self.sent = 0
        self._host_error: str | None = None

    def start(self) -> None:
        """Bind the sockets and start evaluating every `interval` seconds.

        Raises OSError (EADDRINUSE) when a devd already serves the directory: its sockets are
        not ours to replace (devd's own start-up would unlink them)."""
        path = self.server.seqpacket_path
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(os.fspath(path))
            except OSError:
                pass  # nobody serves it: a stale file, or none
            else:
                raise OSError(errno.EADDRINUSE, f"another devd is serving {path}")
        self.server.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop evaluating and serving; the sockets go (devd's own files stay, ours need not)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)
        self.server.stop(remove_files=True)
        if self._temporary:
            with contextlib.suppress(OSError):
                self.server.directory.rmdir()

    def tick(self) -> int:
        """Evaluate once; returns how many devctl messages were sent."""
        try:
            events = self.simulator.evaluate_events(time.time())
        except HostFileError as error:
            # Once per distinct problem: the host file is read every interval.
            if str(error) != self._host_error:
                log.error("simulated host: %s", error)
            self._host_error = str(error)
            return 0
        if self._host_error is not None:
            log.info("simulated host: the host file is readable again")
            self._host_error = None
        sent = 0
        for event in events:
            if event.kind == "devctl":
                line = format_rctl_event(event.rule.canonical, event.pid, event.ruid, event.jail)
                self.server.send(line)
                log.info("devctl: %s", line.decode(errors="replace").rstrip("\n"))
                sent += 1
            else:
                log.warning("%s", format_log_line(event))
        self.sent += sent
        return sent

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # the simulated devd must outlive a bad moment
                log.exception("simulated devd: evaluation failed")


def serve_sim_devd(setup: KernelSetup, directory: Path | None, interval: float) -> int:
    """`rctlpolicy sim devd`: serve in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sim = SimDevd(setup, directory, interval)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        sim.start()
    except OSError as error:
        print(f"rctlpolicy sim devd: {error}", file=sys.stderr)
        return 2
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"simulated devd: {sim.server.seqpacket_path} (and {sim.server.stream_path})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
