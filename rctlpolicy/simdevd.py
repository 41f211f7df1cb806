"""The simulated host's devd: RCTL notifications as usage in the host file changes.

The simulated kernel decides which devctl/log rules fire (once per episode, rate-limited, as
kern_rctl.c does); this module sends the devctl ones to devd's sockets in the kernel's exact
format and logs the log ones with the kernel's line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
#: How long the start-up probe of an existing socket may wait for its connect.
PROBE_TIMEOUT = 2.0


def socket_directory(host_path: Path) -> Path | None:
    """Where the simulated devd's sockets go beside the host file (`<host>.devd/`), or None
    when that path is too long for a socket (a new temporary directory is then used)."""
    directory = host_path.with_name(host_path.name + ".devd")
    if len(str(directory / SEQPACKET_NAME).encode()) < _SUN_PATH_MAX:
        return directory
    return None


def _refuse_a_served_socket(path: Path) -> None:
    """EADDRINUSE when something answers on `path`. devd's create_socket() unlinks whatever is
    there, but a second devd never gets that far: config::open_pidfile() (sbin/devd/devd.cc)
    exits with "devd already running, pid: N" when pidfile_open(3) finds the pidfile locked.
    The simulated devd has no pidfile, so it asks the socket; a server that listens but does
    not accept (its listen queue full) answers with a connect that would block, not a refusal:
    it is there too, and the probe gives up after PROBE_TIMEOUT instead of hanging start-up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except (TimeoutError, BlockingIOError):  # Linux: EAGAIN at once; else the timeout
            raise OSError(
                errno.EADDRINUSE, f"another devd is serving {path} (and not accepting)"
            ) from None
        except OSError:
            return  # nobody serves it: a stale file, or none
    raise OSError(errno.EADDRINUSE, f"another devd is serving {path}")


class SimDevd:
    """A DevdServer fed by the simulated kernel's event evaluation, on its own thread.

    One simulated devd per socket directory: :meth:`start` refuses a directory whose socket
    answers (EADDRINUSE) and takes an exclusive flock(2) on the directory (a second one fails
    with EBUSY instead of replacing the first one's sockets), and :meth:`stop` removes only
    what this one made: the sockets it bound (if they are still the same files) and the
    directory if it created it.
    """

    def __init__(
        self, setup: KernelSetup, directory: Path | None = None, interval: float = 0.5
    ) -> None:
        if setup.simulator is None or setup.sim_host is None:
            raise ValueError("the simulated devd needs the simulated host")
        self.simulator: SimulatedSyscalls = setup.simulator
        self._created_directory = False
        if directory is None:
            directory = socket_directory(setup.sim_host)
            if directory is None:
                directory = Path(tempfile.mkdtemp(prefix="rctlpolicy-devd-"))
                self._created_directory = True
        self.server = DevdServer(directory)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rctlpolicy-sim-devd", daemon=True)
        self.sent = 0
        self._host_error: str | None = None
        self._lock_fd = -1
        self._bound: dict[Path, tuple[int, int]] = {}

    def start(self) -> None:
        """Lock the directory, bind the sockets and start evaluating every `interval` s.

        Raises OSError: EBUSY when another simulated devd serves the directory, EADDRINUSE
        when some other devd serves its socket (its sockets are not ours to replace: devd's
        own start-up would unlink them).
        """
        directory = self.server.directory
        if not directory.exists():
            try:
                directory.mkdir(parents=True)
                self._created_directory = True
            except FileExistsError:
                pass
        _refuse_a_served_socket(self.server.seqpacket_path)
        self._lock()
        try:
            self.server.start()
        except OSError:
            self._unlock()
            raise
        for path in (self.server.seqpacket_path, self.server.stream_path):
            with contextlib.suppress(OSError):
                info = path.lstat()
                self._bound[path] = (info.st_dev, info.st_ino)
        self._thread.start()

    def stop(self) -> None:
        """Stop evaluating and serving; remove the sockets, lock and directory this one made."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)
        self.server.stop()
        for path, identity in self._bound.items():
            with contextlib.suppress(OSError):
                info = path.lstat()
                if (info.st_dev, info.st_ino) == identity:
                    path.unlink()
        self._bound.clear()
        self._unlock()

    def _lock(self) -> None:
        # flock(2) on the directory itself: no lock file among the sockets.
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.server.directory, flags)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(
                errno.EBUSY, f"another simulated devd serves {self.server.directory}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd < 0:
            return
        if self._created_directory:
            with contextlib.suppress(OSError):
                self.server.directory.rmdir()  # only if empty: never another's files
        os.close(self._lock_fd)
        self._lock_fd = -1

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
