"""Choosing the kernel: FreeBSD's own, or the simulated host (the default elsewhere).

Both are the same `FreeBSDKernel` class: over libc's rctl_*(2) system calls (or rctl(8)) on
FreeBSD, over the simulator's system-call layer otherwise, so every code path above the system
calls is the one that runs on FreeBSD.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rctlpolicy.kernel.base import Kernel, RctlSyscalls, RuleStoreWatch
from rctlpolicy.model import Rule, SubjectType

if TYPE_CHECKING:
    from rctlpolicy.kernel.hostfile import HostSpec

    # rctl8 is also run with `python -m`: importing it here at run time would warn.
    from rctlpolicy.kernel.rctl8 import NameLookup
    from rctlpolicy.kernel.simulator import SimulatedSyscalls
    from rctlpolicy.semantics.resolver import Resolver

FREEBSD_STATE_DIR = Path("/var/db/rctlpolicy")
FREEBSD_RULES_DIR = Path("/usr/local/etc/rctlpolicy/rules")


class KernelSetupError(Exception):
    """The kernel asked for cannot be opened (not on FreeBSD, a bad host file, ...)."""


@dataclass(frozen=True, slots=True)
class KernelSetup:
    kernel: Kernel
    syscalls: RctlSyscalls
    #: rctl(8)'s look-ups on this host: user names, groups, processes.
    resolver: Resolver
    #: getpwuid(3) on this host, for listings.
    names: NameLookup
    state_dir: Path
    simulated: bool
    #: The simulated host's file and system calls (None on FreeBSD).
    sim_host: Path | None = None
    simulator: SimulatedSyscalls | None = None
    #: Where a daemon learns that the kernel lost its rules (the simulator's state file was
    #: removed or damaged); None on FreeBSD, whose kernel keeps them until it reboots.
    rule_store: RuleStoreWatch | None = None
    default_rules_dir: Path = FREEBSD_RULES_DIR

    def policy_resolver(self) -> Resolver:
        """The look-ups a policy is checked with before it is applied: the host's names as
        they are now, one view for the whole policy (the simulated host's file is read once,
        not once per name), and whether a process exists left to the kernel."""
        from rctlpolicy.hostinfo import PolicyResolver

        host = self.resolver
        if isinstance(host, _SimulatedHostResolver):
            return PolicyResolver(host.current())
        return PolicyResolver(host)

    def display(self, rule: Rule, numeric: bool = False) -> str:
        """A rule as plain rctl(8) lists it: uid replaced by the user name it knows."""
        if numeric or rule.subject is not SubjectType.USER:
            return rule.canonical
        try:
            name = self.names.name_of_uid(int(rule.subject_id))
        except ValueError:
            name = None
        if name is None:
            return rule.canonical
        return rule.canonical.replace(f"user:{rule.subject_id}:", f"user:{name}:", 1)


class _SimulatedHostResolver:
    """The simulated host's passwd, group and process table, read afresh on every look-up
    (edits to the host file take effect at once, as on a real host)."""

    def __init__(self, simulator: SimulatedSyscalls) -> None:
        self._simulator = simulator

    def current(self) -> HostSpec:
        """The host as its file says now (itself a Resolver that stays as it is)."""
        return self._simulator.host()

    @property
    def checks_names(self) -> bool:
        return True

    def uid_of(self, name: str) -> int | None:
        return self._simulator.host().uid_of(name)

    def gid_of(self, name: str) -> int | None:
        return self._simulator.host().gid_of(name)

    def process_exists(self, pid: int) -> bool | None:
        return self._simulator.host().process_exists(pid)

    def name_of_uid(self, uid: int) -> str | None:
        return self._simulator.host().name_of_uid(uid)

    def jail_exists(self, name: str) -> bool | None:
        return self._simulator.host().jail_exists(name)

    def loginclass_exists(self, name: str) -> bool | None:
        return self._simulator.host().loginclass_exists(name)


def user_state_dir() -> Path:
    """$XDG_STATE_HOME/rctlpolicy, or ~/.local/state/rctlpolicy (a relative XDG_STATE_HOME is
    ignored, as the XDG base directory specification says)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".local" / "state")
    return Path(base) / "rctlpolicy"


def resolve_sim_host(sim_host: str | Path | None) -> Path:
    """The host file to use: given, $RCTLPOLICY_SIM_HOST, or a private copy of the bundled
    example (the package directory may not be writable, and the state lives beside it)."""
    from rctlpolicy import safeio
    from rctlpolicy.kernel.hostfile import default_host_path

    chosen = sim_host or os.environ.get("RCTLPOLICY_SIM_HOST")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise KernelSetupError(f"simulated host file {path} does not exist")
        return path
    copy = user_state_dir() / "sim" / "host.yaml"
    if not copy.exists():
        try:
            safeio.make_directory(copy.parent)
            # Written whole and renamed: a command started at the same moment reads the whole
            # file or makes its own copy, never half a host.
            safeio.write_atomic(copy, default_host_path().read_bytes(), mode=safeio.PUBLIC_MODE)
        except OSError as error:
            raise KernelSetupError(
                f"cannot create the simulated host {copy}: {error.strerror or error}; "
                "give one with --sim-host or RCTLPOLICY_SIM_HOST"
            ) from error
    return copy


def open_simulator(sim_host: str | Path | None = None) -> KernelSetup:
    from rctlpolicy.kernel.freebsd import FreeBSDKernel
    from rctlpolicy.kernel.hostfile import HostFileError
    from rctlpolicy.kernel.simulator import SimulatedSyscalls

    path = resolve_sim_host(sim_host)
    simulator = SimulatedSyscalls(path)
    try:
        simulator.host()
    except HostFileError as error:
        raise KernelSetupError(str(error)) from error
    resolver = _SimulatedHostResolver(simulator)
    kernel = FreeBSDKernel(simulator, simulator.jails, simulator.racct_enabled)
    return KernelSetup(
        kernel=kernel,
        syscalls=simulator,
        resolver=resolver,
        names=resolver,
        state_dir=path.with_name(path.name + ".rctlpolicy"),
        simulated=True,
        sim_host=path,
        simulator=simulator,
        rule_store=simulator,
        default_rules_dir=Path("rules"),
    )


def open_kernel(kind: str = "auto", sim_host: str | Path | None = None) -> KernelSetup:
    """`--kernel auto|freebsd|sim`: auto is FreeBSD's kernel on FreeBSD, the simulator else."""
    on_freebsd = sys.platform.startswith("freebsd")
    if kind == "sim" or (kind == "auto" and not on_freebsd):
        return open_simulator(sim_host)
    if kind not in ("auto", "freebsd"):
        raise KernelSetupError(f"unknown kernel '{kind}': use auto, freebsd or sim")
    if not on_freebsd:
        raise KernelSetupError(
            "--kernel freebsd needs FreeBSD; use --kernel sim to rehearse on the simulated host"
        )
    from rctlpolicy.hostinfo import SystemResolver
    from rctlpolicy.kernel.freebsd import open_freebsd_kernel

    kernel = open_freebsd_kernel()
    resolver = SystemResolver(kernel.jails)
    return KernelSetup(
        kernel=kernel,
        syscalls=kernel.syscalls,
        resolver=resolver,
        names=resolver,
        state_dir=FREEBSD_STATE_DIR,
        simulated=False,
    )
