"""FreeBSDKernel over the simulated kernel by three paths: LibcSyscalls over a ctypes-level
libc double (buffers, errno), the rctl(8) fallback running rctl8.run_rctl in this process, and
the fallback running a real `python -m rctlpolicy.kernel.rctl8` child. Also: buffer growth,
every errno, ENOSYS advice, the fallback's translation, and jail listing (jls, jail_get)."""

from __future__ import annotations

import ctypes
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from corpus_host import rule

import rctlpolicy
from rctlpolicy.kernel.base import (
    FREEBSD_ERRNO,
    Jail,
    Kernel,
    KernelError,
    RacctDisabledError,
    RctlCall,
    RctlSyscalls,
    SyscallError,
)
from rctlpolicy.kernel.commands import CommandResult, SubprocessCommandRunner
from rctlpolicy.kernel.freebsd import (
    RACCT_DISABLED,
    RACCT_MISSING,
    UNREADABLE,
    FreeBSDKernel,
    RctlCommandSyscalls,
    open_freebsd_kernel,
    parse_rules,
    parse_usage,
    rctl8_operand,
    sysctl_command_probe,
)
from rctlpolicy.kernel.hostfile import HostSpec, load_host
from rctlpolicy.kernel.jails import (
    JAIL_DYING,
    JailListError,
    jail_get_lister,
    jls_lister,
    list_jails_jail_get,
    list_jails_jls,
    parse_jls_json,
)
from rctlpolicy.kernel.libc import LibcSyscalls, sysctl_racct_enable
from rctlpolicy.kernel.rctl8 import run_rctl
from rctlpolicy.kernel.ruletable import Add, StoredRule
from rctlpolicy.kernel.simulator import SimulatedSyscalls
from rctlpolicy.model import (
    PROCESS_USAGE_RESOURCES,
    Action,
    Filter,
    Resource,
    Rule,
    SubjectType,
)

FREEBSD_ENOENT = 2
MiB = 1024 * 1024
REPO = Path(rctlpolicy.__file__).resolve().parent.parent

#: The simulated host: the corpus's (www=80, root=0, wheel=0, pid 1, jail db1 with jid 3)
#: plus a postgres process in db1 and a second jail.
HOST_DOCUMENT: dict[str, Any] = {
    "users": {"root": 0, "www": 80},
    "groups": {"wheel": 0},
    "loginclasses": ["daemon"],
    "processes": {
        1: {"comm": "init", "uid": 0},
        4242: {"comm": "postgres", "uid": 80, "jail": "db1", "loginclass": "daemon"},
    },
    "jails": {"db1": {"jid": 3}, "web": {"jid": 7}},
    "usage": {
        "jail:db1": {"memoryuse": 123456789, "pcpu": 250},
        "process:4242": {"openfiles": 17},
    },
}


def write_host(directory: Path, **changes: Any) -> Path:
    """A host file in `directory` (the simulator keeps its rules beside it)."""
    path = directory / "host.yaml"
    path.write_text(yaml.safe_dump({**HOST_DOCUMENT, **changes}), encoding="utf-8")
    return path


class Recording:
    """An RctlSyscalls in front of another: records (call, outbuflen), can fail the next call."""

    def __init__(self, inner: RctlSyscalls) -> None:
        self.inner = inner
        self.calls: list[tuple[RctlCall, int]] = []
        self.fail_next: str | None = None

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        self.calls.append((call, outbuflen))
        if self.fail_next is not None:
            name, self.fail_next = self.fail_next, None
            raise SyscallError(name)
        return self.inner.call(call, inbuf, outbuflen)


def seed_rules(sim: SimulatedSyscalls, rules: Sequence[Rule]) -> None:
    """Put many rules in the simulated kernel at once (one change, not one call per rule)."""
    sim.store.change(
        lambda table: ([Add(StoredRule(r, table.next_seq + n)) for n, r in enumerate(rules)], None)
    )


# --- libc at the C level, over any RctlSyscalls ------------------------------------------


class FakeLibc:
    """rctl_*(2) and sysctlbyname(3) as C functions taking ctypes buffers, setting errno."""

    def __init__(
        self, syscalls: RctlSyscalls, racct_enable: bool | None, *, sysctl_width: int = 1
    ) -> None:
        self.syscalls = syscalls
        self.racct_enable = racct_enable
        self.sysctl_width = sysctl_width
        self.sysctl_errno: int | None = None

    def _rctl(
        self, call: RctlCall, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int
    ) -> int:
        inbuf = ctypes.string_at(inbufp, inbuflen) if inbuflen else b""
        try:
            output = self.syscalls.call(call, inbuf, outbuflen)
        except SyscallError as error:
            ctypes.set_errno(FREEBSD_ERRNO.get(error.errno_name, 99))
            return -1
        if outbuflen:
            assert len(output) < outbuflen
            ctypes.memmove(outbufp, output + b"\0", len(output) + 1)
        return 0

    def rctl_get_racct(self, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int) -> int:
        return self._rctl(RctlCall.GET_RACCT, inbufp, inbuflen, outbufp, outbuflen)

    def rctl_get_rules(self, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int) -> int:
        return self._rctl(RctlCall.GET_RULES, inbufp, inbuflen, outbufp, outbuflen)

    def rctl_get_limits(self, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int) -> int:
        return self._rctl(RctlCall.GET_LIMITS, inbufp, inbuflen, outbufp, outbuflen)

    def rctl_add_rule(self, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int) -> int:
        return self._rctl(RctlCall.ADD_RULE, inbufp, inbuflen, outbufp, outbuflen)

    def rctl_remove_rule(self, inbufp: Any, inbuflen: int, outbufp: Any, outbuflen: int) -> int:
        return self._rctl(RctlCall.REMOVE_RULE, inbufp, inbuflen, outbufp, outbuflen)

    def sysctlbyname(self, name: bytes, oldp: Any, oldlenp: Any, newp: Any, newlen: int) -> int:
        assert name == b"kern.racct.enable" and newp is None and newlen == 0
        if self.sysctl_errno is not None:
            ctypes.set_errno(self.sysctl_errno)
            return -1
        if self.racct_enable is None:
            ctypes.set_errno(FREEBSD_ENOENT)
            return -1
        data = int(self.racct_enable).to_bytes(self.sysctl_width, sys.byteorder)
        assert oldlenp.contents.value >= len(data)
        ctypes.memmove(oldp, data, len(data))
        oldlenp.contents.value = len(data)
        return 0


# --- the three ways to the kernel ---------------------------------------------------------------


class InProcessRctl:
    """A CommandRunner whose /usr/bin/rctl is rctl8.run_rctl, run in this process."""

    def __init__(
        self, syscalls: RctlSyscalls, host: HostSpec, racct_enable: Callable[[], bool | None]
    ) -> None:
        self.syscalls = syscalls
        self.host = host
        self.racct_enable = racct_enable
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> CommandResult:
        self.argvs.append(list(argv))
        assert argv[0] == "/usr/bin/rctl"
        out, err = io.StringIO(), io.StringIO()
        status = run_rctl(
            argv[1:], self.syscalls, self.host, self.host, out, err, racct_enable=self.racct_enable
        )
        return CommandResult(status, out.getvalue(), err.getvalue())


@dataclass
class Setup:
    kernel: FreeBSDKernel
    sim: SimulatedSyscalls
    #: Sees every system call (None when they happen in a child process).
    recording: Recording | None


def _probe_of(sim: SimulatedSyscalls, oid_missing: bool) -> Callable[[], bool | None]:
    def probe() -> bool | None:
        return None if oid_missing else sim.racct_enabled()

    return probe


def libc_setup(host: Path, *, oid_missing: bool = False) -> Setup:
    """FreeBSDKernel -> LibcSyscalls -> FakeLibc (ctypes buffers, errno) -> simulator."""
    sim = SimulatedSyscalls(host)
    recording = Recording(sim)
    libc = FakeLibc(recording, None if oid_missing else sim.racct_enabled())
    kernel = FreeBSDKernel(LibcSyscalls(libc), sim.jails, lambda: sysctl_racct_enable(libc))
    return Setup(kernel, sim, recording)


def rctl8_setup(host: Path, *, oid_missing: bool = False) -> Setup:
    """FreeBSDKernel -> RctlCommandSyscalls -> rctl8.run_rctl in-process -> simulator."""
    sim = SimulatedSyscalls(host)
    recording = Recording(sim)
    probe = _probe_of(sim, oid_missing)
    runner = InProcessRctl(recording, load_host(host), probe)
    return Setup(
        FreeBSDKernel(RctlCommandSyscalls(runner=runner), sim.jails, probe), sim, recording
    )


def rctl_script(directory: Path) -> Path:
    """An executable `rctl` that is `python -m rctlpolicy.kernel.rctl8`."""
    script = directory / "rctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import runpy\n"
        'runpy.run_module("rctlpolicy.kernel.rctl8", run_name="__main__", alter_sys=True)\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def sim_environment(host: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RCTLPOLICY_SIM_HOST"] = str(host)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def subprocess_setup(host: Path, *, oid_missing: bool = False) -> Setup:
    """FreeBSDKernel -> RctlCommandSyscalls -> a real `rctl` child process -> simulator."""
    sim = SimulatedSyscalls(host)
    runner = SubprocessCommandRunner(timeout=60, env=sim_environment(host))
    syscalls = RctlCommandSyscalls(rctl_path=str(rctl_script(host.parent)), runner=runner)
    return Setup(FreeBSDKernel(syscalls, sim.jails, _probe_of(sim, oid_missing)), sim, None)


SETUPS: dict[str, Callable[..., Setup]] = {
    "libc": libc_setup,
    "rctl8": rctl8_setup,
    "subprocess": subprocess_setup,
}


@pytest.fixture(params=["libc", "rctl8"])
def backend(request: pytest.FixtureRequest) -> Callable[..., Setup]:
    """The in-process paths: every behaviour test runs through both."""
    return SETUPS[request.param]


@pytest.fixture(params=["libc", "rctl8", "subprocess"])
def every_backend(request: pytest.FixtureRequest) -> Callable[..., Setup]:
    """Also through a real `python -m rctlpolicy.kernel.rctl8` child (about 0.15 s a call)."""
    return SETUPS[request.param]


def raw(subject: str, subject_id: str, resource: str, action: str, amount: int) -> Rule:
    """A Rule the kernel may refuse (no validation on this side)."""
    kind = SubjectType(subject)
    return Rule(kind, subject_id, Resource(resource), Action(action), amount, kind)


# --- round trips ----------------------------------------------------------------------------

RULES = [
    "user:80:maxproc:deny=100",
    "user:80:vmemoryuse:deny=1073741824/process",
    "jail:db1:readbps:throttle=10485760",
    "jail:db1:memoryuse:deny=536870912",
    "loginclass:daemon:openfiles:log=1000/user",
    "user:0:cputime:sigxcpu=3600",
    "process:4242:nthr:devctl=64",
    "jail:3:maxproc:deny=10",
]


def test_add_list_remove_round_trip(every_backend: Callable[..., Setup], tmp_path: Path) -> None:
    kernel = every_backend(write_host(tmp_path)).kernel
    for text in RULES:
        kernel.add_rule(rule(text))
    assert sorted(kernel.rules()) == sorted(rule(text) for text in RULES)
    db1 = Filter(SubjectType.JAIL, "db1")
    assert sorted(kernel.rules(db1)) == sorted(rule(t) for t in RULES if t.startswith("jail:db1"))
    kernel.remove_rules(db1)
    assert sorted(kernel.rules()) == sorted(rule(t) for t in RULES if "db1" not in t)
    with pytest.raises(KernelError) as caught:
        kernel.remove_rules(db1)
    assert caught.value.errno_name == "ESRCH"
    assert caught.value.text == "jail:db1:"
    assert caught.value.reason == "No such process"


def test_deny_readd_replaces_and_in_millions_amounts(
    backend: Callable[..., Setup], tmp_path: Path
) -> None:
    kernel = backend(write_host(tmp_path)).kernel
    kernel.add_rule(rule("user:80:maxproc:deny=10"))
    kernel.add_rule(rule("user:80:maxproc:deny=20"))
    kernel.add_rule(rule("user:80:pcpu:deny=9223372036854"))
    kernel.add_rule(rule("user:80:cputime:log=3600"))
    assert sorted(r.canonical for r in kernel.rules()) == [
        "user:80:cputime:log=3600",
        "user:80:maxproc:deny=20",
        "user:80:pcpu:deny=9223372036854",
    ]
    # a filter's amount is in user units when it names the resource
    cputime = Filter(SubjectType.USER, "80", Resource.CPUTIME, Action.LOG, 3600)
    assert [r.canonical for r in kernel.rules(cputime)] == ["user:80:cputime:log=3600"]


def test_empty_listing_is_no_rules(backend: Callable[..., Setup], tmp_path: Path) -> None:
    kernel = backend(write_host(tmp_path)).kernel
    assert kernel.rules() == []
    assert kernel.limits(1) == []


def test_names_with_commas_survive_the_comma_joined_listing(
    backend: Callable[..., Setup], tmp_path: Path
) -> None:
    kernel = backend(write_host(tmp_path)).kernel
    odd = [
        "jail:a,b:maxproc:deny=1",
        "loginclass:x,y,z:openfiles:deny=5",
        "jail:plain:maxproc:deny=2",
    ]
    for text in odd:
        kernel.add_rule(rule(text))
    assert sorted(r.canonical for r in kernel.rules()) == sorted(odd)


def test_usage_process_and_jail(every_backend: Callable[..., Setup], tmp_path: Path) -> None:
    kernel = every_backend(write_host(tmp_path)).kernel
    jail = kernel.usage(Filter(SubjectType.JAIL, "db1"))
    assert list(jail) == list(Resource)
    assert jail[Resource.MEMORYUSE] == 123456789
    assert jail[Resource.PCPU] == 250
    assert jail[Resource.SWAPUSE] == 0
    process = kernel.usage(Filter(SubjectType.PROCESS, "4242"))
    assert list(process) == list(PROCESS_USAGE_RESOURCES)
    assert len(process) == 17
    assert process[Resource.OPENFILES] == 17


def test_limits_of_a_process(backend: Callable[..., Setup], tmp_path: Path) -> None:
    kernel = backend(write_host(tmp_path)).kernel
    for text in RULES:
        kernel.add_rule(rule(text))
    assert {r.canonical for r in kernel.limits(4242)} == {
        "user:80:maxproc:deny=100",
        "user:80:vmemoryuse:deny=1073741824/process",
        "jail:db1:readbps:throttle=10485760",
        "jail:db1:memoryuse:deny=536870912",
        "loginclass:daemon:openfiles:log=1000/user",
        "process:4242:nthr:devctl=64",
    }
    with pytest.raises(KernelError) as caught:
        kernel.limits(99999)
    assert caught.value.errno_name == "ESRCH"


def test_jails_and_racct_status(backend: Callable[..., Setup], tmp_path: Path) -> None:
    kernel: Kernel = backend(write_host(tmp_path)).kernel  # mypy checks the protocol here
    assert list(kernel.jails()) == [Jail(3, "db1"), Jail(7, "web")]
    assert kernel.racct_status().enabled


# --- every errno of section 8 ----------------------------------------------------------------

ERRNO_CASES: list[tuple[str, Callable[[FreeBSDKernel], object]]] = [
    ("EINVAL", lambda k: k.add_rule(raw("user", "www", "maxproc", "deny", 1))),
    ("ESRCH", lambda k: k.add_rule(raw("process", "99999", "maxproc", "deny", 1))),
    ("ENAMETOOLONG", lambda k: k.add_rule(raw("loginclass", "c" * 40, "maxproc", "deny", 1))),
    ("ERANGE", lambda k: k.add_rule(raw("user", "80", "cputime", "log", 9223372036855))),
    ("EOPNOTSUPP", lambda k: k.add_rule(raw("user", "80", "cputime", "deny", 10))),
    ("EOPNOTSUPP", lambda k: k.add_rule(raw("process", "1", "swapuse", "deny", 1))),
    ("E2BIG", lambda k: k.add_rule(raw("jail", "j" * 5000, "maxproc", "deny", 1))),
    ("EINVAL", lambda k: k.usage(Filter(SubjectType.JAIL))),
    ("ESRCH", lambda k: k.remove_rules(Filter(SubjectType.JAIL, "nosuch"))),
]


@pytest.mark.parametrize(("errno_name", "operation"), ERRNO_CASES)
def test_kernel_errors_surface_as_kernel_error(
    every_backend: Callable[..., Setup],
    tmp_path: Path,
    errno_name: str,
    operation: Callable[[FreeBSDKernel], object],
) -> None:
    kernel = every_backend(write_host(tmp_path)).kernel
    with pytest.raises(KernelError) as caught:
        operation(kernel)
    assert caught.value.errno_name == errno_name
    assert type(caught.value) is KernelError


@pytest.mark.parametrize("errno_name", ["EPERM", "EFAULT", "EINVAL", "E2BIG", "ERANGE"])
def test_any_errno_of_the_call_is_named(
    backend: Callable[..., Setup], tmp_path: Path, errno_name: str
) -> None:
    # The simulator never says EFAULT (it has no user addresses): inject the failure.
    setup = backend(write_host(tmp_path))
    assert setup.recording is not None
    setup.recording.fail_next = errno_name
    with pytest.raises(KernelError) as caught:
        setup.kernel.add_rule(rule("user:80:maxproc:deny=1"))
    assert caught.value.errno_name == errno_name
    assert caught.value.text == "user:80:maxproc:deny=1"


def test_unprivileged_caller_gets_eperm(
    every_backend: Callable[..., Setup], tmp_path: Path
) -> None:
    kernel = every_backend(write_host(tmp_path, privileged=False)).kernel
    with pytest.raises(KernelError) as caught:
        kernel.rules()
    assert caught.value.errno_name == "EPERM"
    assert str(caught.value) == "::: Operation not permitted"


@pytest.mark.parametrize(("oid_missing", "text"), [(False, RACCT_DISABLED), (True, RACCT_MISSING)])
def test_enosys_says_how_to_enable_racct(
    every_backend: Callable[..., Setup], tmp_path: Path, oid_missing: bool, text: str
) -> None:
    kernel = every_backend(write_host(tmp_path, racct_enable=False), oid_missing=oid_missing).kernel
    with pytest.raises(RacctDisabledError) as caught:
        kernel.add_rule(rule("user:80:maxproc:deny=1"))
    assert caught.value.errno_name == "ENOSYS"
    assert text in caught.value.reason
    assert "kern.racct.enable=1" in caught.value.reason
    assert "/boot/loader.conf" in caught.value.reason
    status = kernel.racct_status()
    assert not status.enabled and status.reason is not None and text in status.reason


def test_enosys_with_racct_enabled_is_rctl_missing(
    backend: Callable[..., Setup], tmp_path: Path
) -> None:
    # RACCT without RCTL: rctl(8) falls through to "Function not implemented".
    setup = backend(write_host(tmp_path))
    assert setup.recording is not None
    setup.recording.fail_next = "ENOSYS"
    with pytest.raises(KernelError) as caught:
        setup.kernel.rules()
    assert type(caught.value) is KernelError
    assert caught.value.errno_name == "ENOSYS"
    assert "options RCTL" in caught.value.reason
    assert setup.kernel.racct_status().enabled


# --- buffer growth ----------------------------------------------------------------------------


def many_rules(count: int) -> list[Rule]:
    return [raw("jail", f"jail{n:05d}", "memoryuse", "deny", 10**9 + n) for n in range(count)]


def test_rules_grow_the_buffer_on_erange_like_rctl8(tmp_path: Path) -> None:
    setup = libc_setup(write_host(tmp_path))
    seed_rules(setup.sim, many_rules(20000))  # ~760 KiB: 128 KiB and 512 KiB are too small
    got = setup.kernel.rules()
    assert sorted(got) == many_rules(20000)
    assert setup.recording is not None
    assert setup.recording.calls == [
        (RctlCall.GET_RULES, 128 * 1024),
        (RctlCall.GET_RULES, 512 * 1024),
        (RctlCall.GET_RULES, 2 * MiB),
    ]


def test_output_past_maxbufsize_is_e2big(tmp_path: Path) -> None:
    setup = libc_setup(write_host(tmp_path, maxbufsize=512 * 1024))
    seed_rules(setup.sim, many_rules(20000))
    with pytest.raises(KernelError) as caught:
        setup.kernel.rules()
    assert caught.value.errno_name == "E2BIG"
    assert caught.value.reason == "Argument list too long"
    assert setup.recording is not None
    assert [size for _, size in setup.recording.calls] == [128 * 1024, 512 * 1024, 2 * MiB]


def test_big_listing_through_rctl8(tmp_path: Path) -> None:
    setup = rctl8_setup(write_host(tmp_path))
    seed_rules(setup.sim, many_rules(5000))  # ~190 KiB: rctl(8) and the fallback grow once
    assert sorted(setup.kernel.rules()) == many_rules(5000)


# --- reading the kernel's text --------------------------------------------------------------


def test_parse_rules_refuses_what_it_cannot_read() -> None:
    assert parse_rules("") == []
    assert parse_rules("user:-2:maxproc:deny=1") == [
        Rule(SubjectType.USER, "-2", Resource.MAXPROC, Action.DENY, 1, SubjectType.USER)
    ]
    for text in ("user:80:maxproc:deny=1,user:80:bogus:deny=1", "user:80", "jail:a,b"):
        with pytest.raises(KernelError) as caught:
            parse_rules(text)
        assert caught.value.errno_name == UNREADABLE


def test_parse_usage() -> None:
    assert parse_usage("cputime=12,pcpu=0,futureresource=3,") == {
        Resource.CPUTIME: 12,
        Resource.PCPU: 0,
    }
    with pytest.raises(KernelError):
        parse_usage("cputime")


@dataclass
class CannedSyscalls:
    output: bytes

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        return self.output


def test_unreadable_kernel_output_is_an_error_not_a_drop() -> None:
    kernel = FreeBSDKernel(CannedSyscalls(b"user:80:maxproc:deny=1,nonsense"), list, lambda: True)
    with pytest.raises(KernelError) as caught:
        kernel.rules()
    assert caught.value.text == "nonsense"


# --- libc details -----------------------------------------------------------------------------


def test_libc_passes_strlen_plus_one_and_maps_unknown_errnos() -> None:
    seen: list[tuple[RctlCall, bytes, int]] = []

    class Recorder:
        def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
            seen.append((call, inbuf, outbuflen))
            raise SyscallError("EWHATEVER")

    syscalls = LibcSyscalls(FakeLibc(Recorder(), True))
    with pytest.raises(SyscallError) as caught:
        syscalls.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
    assert caught.value.errno_name == "errno 99"
    assert seen == [(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)]


def test_libc_output_stops_at_the_nul() -> None:
    syscalls = LibcSyscalls(FakeLibc(CannedSyscalls(b"user:80:maxproc:deny=1"), True))
    assert syscalls.call(RctlCall.GET_RULES, b"::\0", 64) == b"user:80:maxproc:deny=1"


@pytest.mark.parametrize(
    ("value", "width", "expected"),
    [(True, 1, True), (False, 1, False), (True, 4, True), (False, 4, False), (None, 1, None)],
)
def test_sysctl_racct_enable(value: bool | None, width: int, expected: bool | None) -> None:
    assert sysctl_racct_enable(FakeLibc(CannedSyscalls(b""), value, sysctl_width=width)) is expected


def test_sysctl_racct_enable_other_errors_raise() -> None:
    libc = FakeLibc(CannedSyscalls(b""), True)
    libc.sysctl_errno = 12
    with pytest.raises(OSError):
        sysctl_racct_enable(libc)


# --- the rctl(8) fallback's translation --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "call", "operand"),
    [
        ("user:80:maxproc:deny=10", RctlCall.ADD_RULE, "user:80:maxproc:deny=10"),
        ("user:www:maxproc:deny=10", RctlCall.ADD_RULE, "user:www:maxproc:deny=10"),
        ("::", RctlCall.GET_RULES, "::"),
        ("user", RctlCall.GET_RULES, "user:"),
        ("user:80", RctlCall.REMOVE_RULE, "user:80:"),
        ("user:-2:maxproc", RctlCall.GET_RULES, "user:4294967294:maxproc"),
        ("USER:+80:", RctlCall.GET_RACCT, "USER:80:"),
        ("jail:db1:maxproc:deny=010", RctlCall.ADD_RULE, "jail:db1:maxproc:deny=10"),
        ("jail:db1:maxproc:deny/10", RctlCall.ADD_RULE, "jail:db1:maxproc:deny=10"),
        ("jail:j:maxproc:deny=-5", RctlCall.ADD_RULE, "jail:j:maxproc:deny=18446744073709551611"),
        ("jail:db1:maxproc:deny=/", RctlCall.REMOVE_RULE, "jail:db1:maxproc:deny=/"),
        ("jail:db1:maxproc:deny=1/user", RctlCall.REMOVE_RULE, "jail:db1:maxproc:deny=1/user"),
    ],
)  # fmt: skip
def test_rctl8_operand(text: str, call: RctlCall, operand: str) -> None:
    assert rctl8_operand(text, call) == operand


@pytest.mark.parametrize(
    ("text", "call"),
    [
        ("u:80:maxproc:deny=1", RctlCall.ADD_RULE),
        ("user:www:", RctlCall.GET_RULES),
        ("jail:db1:maxproc:deny=1k", RctlCall.ADD_RULE),
    ],
)
def test_rctl8_operand_refuses_what_the_kernel_refuses(text: str, call: RctlCall) -> None:
    with pytest.raises(SyscallError) as caught:
        rctl8_operand(text, call)
    assert caught.value.errno_name == "EINVAL"


def in_process_rctl(host: Path) -> InProcessRctl:
    sim = SimulatedSyscalls(host)
    return InProcessRctl(sim, load_host(host), sim.racct_enabled)


def test_rctl_command_argv_and_kernel_prologue(tmp_path: Path) -> None:
    runner = in_process_rctl(write_host(tmp_path))
    syscalls = RctlCommandSyscalls(runner=runner)
    syscalls.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
    syscalls.call(RctlCall.GET_RULES, b"::\0", 1 << 17)
    syscalls.call(RctlCall.GET_LIMITS, b"process:1\0", 1 << 17)
    syscalls.call(RctlCall.GET_RACCT, b"user:80\0", 1 << 17)
    syscalls.call(RctlCall.REMOVE_RULE, b"user:80\0", 0)
    assert runner.argvs == [
        ["/usr/bin/rctl", "-n", "-a", "--", "user:80:maxproc:deny=1"],
        ["/usr/bin/rctl", "-n", "--", "::"],
        ["/usr/bin/rctl", "-n", "-l", "--", "process:1:"],
        ["/usr/bin/rctl", "-u", "--", "user:80:"],
        ["/usr/bin/rctl", "-r", "--", "user:80:"],
    ]
    for inbuf, name in ((b"", "EINVAL"), (b"x" * 4097, "E2BIG"), (b"user:80", "ENAMETOOLONG")):
        with pytest.raises(SyscallError) as caught:
            syscalls.call(RctlCall.GET_RULES, inbuf, 1 << 17)
        assert caught.value.errno_name == name


def test_rctl_command_small_buffer_is_erange(tmp_path: Path) -> None:
    runner = in_process_rctl(write_host(tmp_path))
    runner.syscalls.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
    syscalls = RctlCommandSyscalls(runner=runner)
    with pytest.raises(SyscallError) as caught:
        syscalls.call(RctlCall.GET_RULES, b"::\0", 10)
    assert caught.value.errno_name == "ERANGE"
    assert syscalls.call(RctlCall.GET_RULES, b"::\0", 30) == b"user:80:maxproc:deny=1"


class ScriptedRunner:
    """A CommandRunner answering every argv with one canned result (or raising)."""

    def __init__(self, result: CommandResult | Exception) -> None:
        self.result = result
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> CommandResult:
        self.argvs.append(list(argv))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize(
    ("stderr", "errno_name"),
    [
        ("rctl: failed to add rule 'x:y': Operation not supported\n", "EOPNOTSUPP"),
        ("rctl: failed to show rules for 'a': b': No such process\n", "ESRCH"),
        (f"rctl: {RACCT_DISABLED}\n", "ENOSYS"),
        (f"rctl: {RACCT_MISSING}\n", "ENOSYS"),
        ("rctl: malformed rule 'x': unknown user 'x'\n", "EINVAL"),
    ],
)
def test_rctl_command_messages_map_back_to_errno(stderr: str, errno_name: str) -> None:
    syscalls = RctlCommandSyscalls(runner=ScriptedRunner(CommandResult(1, "", stderr)))
    with pytest.raises(SyscallError) as caught:
        syscalls.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
    assert caught.value.errno_name == errno_name


def test_rctl_command_unknown_failure_and_missing_program() -> None:
    syscalls = RctlCommandSyscalls(
        runner=ScriptedRunner(CommandResult(1, "", "Segmentation fault\n"))
    )
    with pytest.raises(KernelError) as caught:
        syscalls.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
    assert "Segmentation fault" in caught.value.reason
    for failure in (
        FileNotFoundError(2, "No such file"),
        subprocess.TimeoutExpired(["/usr/bin/rctl"], 30),
    ):
        stuck = RctlCommandSyscalls(runner=ScriptedRunner(failure))
        with pytest.raises(KernelError) as caught:
            stuck.call(RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0)
        assert "cannot run /usr/bin/rctl" in caught.value.reason


def test_unreadable_racct_enable(tmp_path: Path) -> None:
    def probe() -> bool | None:
        raise OSError(12, "Cannot allocate memory")

    sim = SimulatedSyscalls(write_host(tmp_path, racct_enable=False))
    kernel = FreeBSDKernel(sim, list, probe)
    status = kernel.racct_status()
    assert not status.enabled
    assert status.reason is not None and "Cannot allocate memory" in status.reason
    with pytest.raises(KernelError) as caught:
        kernel.rules()
    assert caught.value.errno_name == "ENOSYS"
    assert "kern.racct.enable" in caught.value.reason


def test_sysctl_command_probe() -> None:
    assert sysctl_command_probe(ScriptedRunner(CommandResult(0, "1\n", "")))() is True
    assert sysctl_command_probe(ScriptedRunner(CommandResult(0, "0\n", "")))() is False
    missing = CommandResult(1, "", "sysctl: unknown oid 'kern.racct.enable'\n")
    assert sysctl_command_probe(ScriptedRunner(missing))() is None


# --- choosing the backend -----------------------------------------------------------------


class LibcWithoutRctl:
    """A libc of a system without the rctl calls (and without sysctlbyname)."""


def test_open_freebsd_kernel_prefers_libc(tmp_path: Path) -> None:
    sim = SimulatedSyscalls(write_host(tmp_path))
    runner = ScriptedRunner(CommandResult(0, '{"jail-information": {"jail": []}}', ""))
    kernel = open_freebsd_kernel(libc=FakeLibc(sim, True), runner=runner)
    kernel.add_rule(rule("user:80:maxproc:deny=1"))
    assert sim.call(RctlCall.GET_RULES, b"::\0", 1024) == b"user:80:maxproc:deny=1"
    assert kernel.racct_status().enabled
    assert kernel.jails() == []
    assert runner.argvs == [["/usr/sbin/jls", "--libxo", "json", "jid", "name"]]


class FakeLibcWithJails(FakeLibc):
    """FreeBSD's libc: the rctl calls, sysctlbyname(3) and jail_get(2)."""

    def __init__(self, syscalls: RctlSyscalls, jails: dict[int, str]) -> None:
        super().__init__(syscalls, True)
        self.jail_table = FakeJailLibc(jails)

    def jail_get(self, iov: Any, niov: int, flags: int) -> int:
        return self.jail_table.jail_get(iov, niov, flags)


def test_open_freebsd_kernel_lists_jails_with_jail_get_not_jls(tmp_path: Path) -> None:
    sim = SimulatedSyscalls(write_host(tmp_path))
    runner = ScriptedRunner(CommandResult(0, '{"jail-information": {"jail": []}}', ""))
    libc = FakeLibcWithJails(sim, {3: "db1", 12: "db1.replica"})
    kernel = open_freebsd_kernel(libc=libc, runner=runner)
    for _ in range(3):  # one scrape after another: no process started for any of them
        assert kernel.jails() == [Jail(3, "db1"), Jail(12, "db1.replica")]
    assert runner.argvs == []
    assert len(libc.jail_table.calls) == 9  # two jails and the ENOENT that ends each walk


def test_the_systems_resolver_asks_the_kernels_jail_lister(tmp_path: Path) -> None:
    from rctlpolicy.hostinfo import SystemResolver

    listed: list[int] = []

    def lister() -> list[Jail]:
        listed.append(1)
        return [Jail(3, "db1")]

    resolver = SystemResolver(lister)
    if sys.platform.startswith("freebsd"):
        assert resolver.jail_exists("db1") and not resolver.jail_exists("web9")
        assert listed == [1]  # listed once, then remembered
    else:
        assert resolver.jail_exists("db1") is None  # no jails off FreeBSD
        assert listed == []


def test_open_freebsd_kernel_falls_back_to_rctl8(tmp_path: Path) -> None:
    runner = in_process_rctl(write_host(tmp_path))
    kernel = open_freebsd_kernel(libc=LibcWithoutRctl(), runner=runner, jail_lister=list)
    kernel.add_rule(rule("user:80:maxproc:deny=1"))
    assert kernel.rules() == [rule("user:80:maxproc:deny=1")]
    assert runner.argvs[0][:3] == ["/usr/bin/rctl", "-n", "-a"]


# --- jails: jls JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "jails"),
    [
        ({"__version": "2", "jail-information": {"jail": []}}, []),
        ({"__version": "2", "jail-information": {}}, []),
        (
            {"jail-information": {"jail": [{"jid": 3, "name": "db1"}, {"jid": "7", "name": "w"}]}},
            [Jail(3, "db1"), Jail(7, "w")],
        ),
        ({"jail-information": {"jail": {"jid": "4", "name": "one"}}}, [Jail(4, "one")]),
        ({"jail-information": {"jail": [{"jid": 9}]}}, [Jail(9, "9")]),
        ({"jail-information": {"jail": [{"jid": 5, "name": "a b,c"}]}}, [Jail(5, "a b,c")]),
    ],
)  # fmt: skip
def test_parse_jls_json(document: object, jails: list[Jail]) -> None:
    assert parse_jls_json(json.dumps(document)) == jails


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"jail-information": {"jail": [{"name": "x"}]}}',
     '{"jail-information": {"jail": [{"jid": true}]}}', '{"jail-information": {"jail": 3}}'],
)  # fmt: skip
def test_parse_jls_json_refuses_garbage(text: str) -> None:
    with pytest.raises(JailListError):
        parse_jls_json(text)


def test_jls_lister_failures() -> None:
    failing = ScriptedRunner(CommandResult(1, "", "jls: something\n"))
    with pytest.raises(JailListError) as caught:
        list_jails_jls(failing)
    assert "jls: something" in caught.value.reason
    with pytest.raises(JailListError):
        list_jails_jls(ScriptedRunner(FileNotFoundError(2, "No such file")))
    with pytest.raises(JailListError):
        list_jails_jls(ScriptedRunner(subprocess.TimeoutExpired(["jls"], 30)))


def test_jls_through_a_real_subprocess(tmp_path: Path) -> None:
    jls = tmp_path / "jls"
    document = {"__version": "2", "jail-information": {"jail": [{"jid": "3", "name": "db1"}]}}
    jls.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "assert sys.argv[1:] == ['--libxo', 'json', 'jid', 'name'], sys.argv\n"
        f"print(json.dumps({document!r}))\n"
    )
    jls.chmod(0o755)
    lister = jls_lister(SubprocessCommandRunner(timeout=20), str(jls))
    assert list(lister()) == [Jail(3, "db1")]


# --- jails: jail_get(2) --------------------------------------------------------------------


class FakeJailLibc:
    """jail_get(2) over a jail table, reading and writing the iovec as the kernel does."""

    def __init__(self, jails: dict[int, str], dying: dict[int, str] | None = None) -> None:
        self.jails = jails
        self.dying = dying or {}
        self.calls: list[tuple[int, int]] = []
        self.fail_with: int | None = None

    def jail_get(self, iov: Any, niov: int, flags: int) -> int:
        params: dict[str, tuple[int, int]] = {}
        for index in range(0, niov, 2):
            name_iov, value_iov = iov[index], iov[index + 1]
            name = ctypes.string_at(name_iov.iov_base, name_iov.iov_len)
            assert name.endswith(b"\0")  # iov_len counts the NUL
            params[name[:-1].decode()] = (value_iov.iov_base, value_iov.iov_len)
        lastjid = ctypes.c_int.from_address(params["lastjid"][0]).value
        self.calls.append((lastjid, flags))
        if self.fail_with is not None:
            message = b"jail_get: no permission\0"
            ctypes.memmove(params["errmsg"][0], message, len(message))
            ctypes.set_errno(self.fail_with)
            return -1
        table = dict(self.jails)
        if flags & JAIL_DYING:
            table |= self.dying
        following = sorted(jid for jid in table if jid > lastjid)
        if not following:
            ctypes.set_errno(FREEBSD_ENOENT)
            return -1
        jid = following[0]
        ctypes.c_int.from_address(params["jid"][0]).value = jid
        address, size = params["name"]
        encoded = table[jid].encode() + b"\0"
        assert len(encoded) <= size
        ctypes.memmove(address, encoded, len(encoded))
        return jid


def test_jail_get_walks_with_lastjid() -> None:
    libc = FakeJailLibc({3: "db1", 7: "web", 12: "web.child"}, dying={9: "old"})
    assert list_jails_jail_get(libc) == [Jail(3, "db1"), Jail(7, "web"), Jail(12, "web.child")]
    assert libc.calls == [(0, 0), (3, 0), (7, 0), (12, 0)]
    libc.calls.clear()
    assert [j.name for j in jail_get_lister(libc, include_dying=True)()] == [
        "db1",
        "web",
        "old",
        "web.child",
    ]
    assert {flags for _, flags in libc.calls} == {JAIL_DYING}
    assert list_jails_jail_get(FakeJailLibc({})) == []


def test_jail_get_failure_carries_errmsg() -> None:
    libc = FakeJailLibc({3: "db1"})
    libc.fail_with = FREEBSD_ERRNO["EPERM"]
    with pytest.raises(JailListError) as caught:
        list_jails_jail_get(libc)
    assert caught.value.errno_name == "EPERM"
    assert "no permission" in caught.value.reason
