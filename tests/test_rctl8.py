"""rctl(8)'s command line (rctlpolicy.kernel.rctl8): the corpus's rctl8-layer cases (what is
sent, messages, exit status), output formats, flags, ENOSYS, buffer growth, and the
`python -m rctlpolicy.kernel.rctl8` entry point."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from corpus_host import CORPUS_HOST, corpus_cases
from test_freebsd_backend import REPO, Recording, raw, seed_rules, write_host

from rctlpolicy.kernel.base import RctlCall, RctlSyscalls, SyscallError
from rctlpolicy.kernel.freebsd import RACCT_DISABLED, RACCT_MISSING
from rctlpolicy.kernel.hostfile import HostSpec, load_host
from rctlpolicy.kernel.rctl8 import USAGE, NameLookup, run_rctl
from rctlpolicy.kernel.simulator import SimulatedSyscalls
from rctlpolicy.model import PROCESS_USAGE_RESOURCES, Resource

MiB = 1024 * 1024


def _corpus() -> list[dict[str, Any]]:
    return [case for case in corpus_cases() if case["layer"] == "rctl8"]


RCTL8_CASES = _corpus()
_OP_FLAG = {None: ["-a"], "list": [], "remove": ["-r"], "usage": ["-u"], "limits": ["-l"]}
_MESSAGE = re.compile(r"(rctl: (?:malformed|failed)[^\n]*?)(?:\. expand_number generations.*)?$")


def argv_of(case: dict[str, Any]) -> list[str]:
    flags = [case["flags"]] if case.get("flags") else []
    return [*flags, *_OP_FLAG[case["op"]], case["rule"]]


def expected_message(case: dict[str, Any]) -> str | None:
    match = _MESSAGE.search(case["why"])
    return match.group(1) if match else None


def case_id(case: dict[str, Any]) -> str:
    return f"{case['op'] or 'add'}{case.get('flags') or ''}:{case['rule']!r}"


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


if TYPE_CHECKING:  # Resolver is a protocol for type checkers only (rctlpolicy.records)
    from rctlpolicy.semantics.resolver import Resolver

    class Lookups(Resolver, NameLookup, Protocol):
        """What rctl(8) looks names up with: getpwnam & co., and getpwuid for listings."""


def rctl(
    argv: Sequence[str],
    syscalls: RctlSyscalls,
    host: Lookups = CORPUS_HOST,
    racct_enable: Callable[[], bool | None] = lambda: True,
) -> Run:
    out, err = io.StringIO(), io.StringIO()
    status = run_rctl(list(argv), syscalls, host, host, out, err, racct_enable=racct_enable)
    return Run(status, out.getvalue(), err.getvalue())


@dataclass
class Oracle:
    """Answers every call with one verdict (and output) and records what was sent."""

    errno_name: str | None
    output: bytes = b""
    sent: list[tuple[RctlCall, bytes, int]] = field(default_factory=list)

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        self.sent.append((call, inbuf, outbuflen))
        if self.errno_name is not None:
            raise SyscallError(self.errno_name)
        return self.output


@dataclass
class SimHost:
    """rctl(8) over a simulated host (the corpus's: www=80, root=0, pid 1, jail db1)."""

    sim: SimulatedSyscalls
    recording: Recording
    host: HostSpec

    def run(self, *argv: str, racct_enable: Callable[[], bool | None] | None = None) -> Run:
        return rctl(argv, self.recording, self.host, racct_enable or self.sim.racct_enabled)

    def add(self, *texts: str) -> None:
        """Kernel-layer adds, straight to the simulated system call."""
        for text in texts:
            self.sim.call(RctlCall.ADD_RULE, text.encode() + b"\0", 0)


def sim_host(directory: Path, **changes: Any) -> SimHost:
    path = write_host(directory, **changes)
    sim = SimulatedSyscalls(path)
    return SimHost(sim, Recording(sim), load_host(path))


# --- the conformance corpus ----------------------------------------------------------------


@pytest.mark.parametrize("case", RCTL8_CASES, ids=case_id)
def test_corpus_sent_text_messages_and_status(case: dict[str, Any]) -> None:
    kernel_errno = case["errno"] if case["errno"] not in (None, "RCTL8") else None
    oracle = Oracle(kernel_errno)
    run = rctl(argv_of(case), oracle)
    if case["sent"] is None:
        assert oracle.sent == []
    else:
        assert [inbuf for _, inbuf, _ in oracle.sent] == [case["sent"].encode() + b"\0"]
    assert run.status == (0 if case["valid"] else 1)
    if case["valid"]:
        assert run.stderr == ""
    else:
        assert run.stderr == f"{expected_message(case)}\n"


@pytest.mark.parametrize("case", RCTL8_CASES, ids=case_id)
def test_corpus_against_the_simulated_kernel(case: dict[str, Any], tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    host.add("user:80:maxproc:deny=1")  # remove cases assume a non-empty rule database
    run = host.run(*argv_of(case))
    assert run.status == (0 if case["valid"] else 1), run.stderr
    assert run.stderr == ("" if case["valid"] else f"{expected_message(case)}\n")
    if case["op"] is None and case["valid"]:
        assert case["canonical"] in host.run("-n").stdout.splitlines()
        assert case["display"] in host.run().stdout.splitlines()


# --- output formats -------------------------------------------------------------------------


def test_listing_names_uids_unless_n(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    host.add(
        "user:80:maxproc:deny=100",
        "user:1000:maxproc:deny=5",
        "user:4294967294:openfiles:log=7",
        "jail:db1:memoryuse:deny=536870912",
    )
    assert sorted(host.run().stdout.splitlines()) == [
        "jail:db1:memoryuse:deny=536870912",
        "user:-2:openfiles:log=7",
        "user:1000:maxproc:deny=5",
        "user:www:maxproc:deny=100",
    ]
    assert sorted(host.run("-n").stdout.splitlines()) == [
        "jail:db1:memoryuse:deny=536870912",
        "user:-2:openfiles:log=7",
        "user:1000:maxproc:deny=5",
        "user:80:maxproc:deny=100",
    ]
    # -n leaves the operand's user name resolved (only -n -a sends names as typed)
    assert host.run("-n", "u:www").stdout == "user:80:maxproc:deny=100\n"


def test_uid_names_come_from_the_host(tmp_path: Path) -> None:
    host = sim_host(tmp_path, users={"root": 0, "www": 80, "nobody": 4294967294})
    host.add("user:4294967294:openfiles:log=7")
    assert host.run().stdout == "user:nobody:openfiles:log=7\n"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0, "0"),
        (3600, "3600"),
        (9999, "9999"),
        (10000, "9.8K"),
        (10500, "10K"),
        (1234567, "1206K"),
        (1048576, "1024K"),
        (10239576, "9.8M"),
        (104857600, "100M"),
        (1073741824, "1024M"),
        (10737418240, "10G"),
        (9223372036854775807, "8192P"),
    ],
)
def test_h_humanizes_rule_amounts(tmp_path: Path, amount: int, shown: str) -> None:
    host = sim_host(tmp_path)
    host.add(f"user:80:vmemoryuse:deny={amount}")
    assert host.run("-h").stdout == f"user:www:vmemoryuse:deny={shown}\n"
    assert host.run("-hn").stdout == f"user:80:vmemoryuse:deny={shown}\n"


def test_h_keeps_per_and_applies_to_limits(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    host.add("user:80:vmemoryuse:deny=1073741824", "user:80:datasize:deny=20000/process")
    expected = ["user:www:datasize:deny=20K/process", "user:www:vmemoryuse:deny=1024M"]
    assert sorted(host.run("-h", "user:").stdout.splitlines()) == expected
    assert sorted(host.run("-l", "-h", "process:4242").stdout.splitlines()) == expected
    # in-millions resources are shown in seconds or percent; -h scales those too
    host.add("user:80:cputime:log=36000")
    assert host.run("-h", "::cputime").stdout == "user:www:cputime:log=35K\n"


USAGE_DOCUMENT = {
    "jail:db1": {"memoryuse": 123456789, "swapuse": 10737418240, "pcpu": 250},
    "process:4242": {"memoryuse": 20000},
}


def test_u_lines_for_process_and_jail(tmp_path: Path) -> None:
    host = sim_host(tmp_path, usage=USAGE_DOCUMENT)
    jail = host.run("-u", "jail:db1")
    assert (jail.status, jail.stderr) == (0, "")
    lines = jail.stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == [r.value for r in Resource]
    assert "memoryuse=123456789" in lines and "pcpu=250" in lines
    process = host.run("-u", "p:4242").stdout.splitlines()
    assert [line.split("=")[0] for line in process] == [r.value for r in PROCESS_USAGE_RESOURCES]
    assert len(process) == 17
    humanized = host.run("-hu", "j:db1").stdout.splitlines()
    assert len(humanized) == 25
    assert "memoryuse=118M" in humanized
    assert "swapuse=10G" in humanized
    assert "pcpu=250" in humanized
    assert "cputime=0" in humanized
    assert host.run("-uh", "process:4242").stdout.splitlines()[4] == "memoryuse=20K"


# --- flags ------------------------------------------------------------------------------------

EXCLUSIVE = "rctl: at most one of -a, -l, -r, or -u may be specified\n"


@pytest.mark.parametrize(
    ("argv", "stderr"),
    [
        (["-x"], f"rctl: illegal option -- x\n{USAGE}\n"),
        (["-ax", "user:80:maxproc:deny=1"], f"rctl: illegal option -- x\n{USAGE}\n"),
        (["--help"], f"rctl: illegal option -- -\n{USAGE}\n"),
        (["-a", "-r", "user:80"], EXCLUSIVE),
        (["-ul", "process:1"], EXCLUSIVE),
        (["-u", "-r"], EXCLUSIVE),
        (["-a"], f"{USAGE}\n"),
        (["-u"], f"{USAGE}\n"),
        (["-l", "-h"], f"{USAGE}\n"),
        (["-r", "--"], f"{USAGE}\n"),
    ],
)
def test_flag_errors(tmp_path: Path, argv: list[str], stderr: str) -> None:
    host = sim_host(tmp_path)
    run = host.run(*argv)
    assert (run.status, run.stdout, run.stderr) == (1, "", stderr)
    assert host.recording.calls == []


def test_operands_end_the_options(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    host.add("user:80:maxproc:deny=1")
    # BSD getopt stops at the first operand: a later "-h" is an operand, not a flag.
    run = host.run("user:80", "-h")
    assert run.status == 1
    assert run.stdout == "user:www:maxproc:deny=1\n"
    assert run.stderr == "rctl: malformed rule '-h': missing subject\n"
    # "--" ends the options; "-" alone is an operand
    run = host.run("-n", "--", "-", "user:80")
    assert run.stderr == "rctl: malformed rule '-': missing subject\n"
    assert run.stdout == "user:80:maxproc:deny=1\n"
    assert run.status == 1


def test_combined_and_repeated_flags(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    run = host.run("-nna", "user:www:maxproc:deny=1")  # -n with -a: the name goes as typed
    assert run.stderr == "rctl: failed to add rule 'user:www:maxproc:deny=1': Invalid argument\n"
    assert host.run("-an", "user:80:maxproc:deny=1").status == 0
    assert host.run("-hn").stdout == "user:80:maxproc:deny=1\n"
    assert host.run("-h", "-n", "-h").stdout == "user:80:maxproc:deny=1\n"


# --- exit status ------------------------------------------------------------------------------


def test_exit_status_counts_failed_operands_in_order(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    run = host.run(
        "-a",
        "user:www:maxproc:deny=10",
        "user:nobody:maxproc:deny=1",
        "user:80:cputime:deny=1",
        "jail:db1:maxproc:deny=1k",
        "",
    )
    assert run.status == 3
    assert run.stderr == (
        "rctl: malformed rule 'user:nobody:maxproc:deny=1': unknown user 'nobody'\n"
        "rctl: failed to add rule 'user:80:cputime:deny=1': Operation not supported\n"
        "rctl: malformed rule '': missing subject\n"
    )
    assert sorted(host.run("-n").stdout.splitlines()) == [
        "jail:db1:maxproc:deny=1024",
        "user:80:maxproc:deny=10",
    ]


def test_exit_status_is_kept_modulo_256() -> None:
    oracle = Oracle(None)
    assert rctl([""] * 256, oracle).status == 0
    assert rctl([""] * 257, oracle).status == 1
    assert oracle.sent == []


def test_remove_nothing_is_esrch(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    run = host.run("-r", "user:80:maxproc")
    assert run.status == 1
    assert run.stderr == "rctl: failed to remove rule 'user:80:maxproc': No such process\n"
    run = host.run("-r", ":")
    assert run.stderr == "rctl: failed to remove rule ':': No such process\n"


def test_plain_rctl_exits_0_even_when_listing_fails(tmp_path: Path) -> None:
    host = sim_host(tmp_path, privileged=False)
    run = host.run()
    assert run.status == 0
    assert run.stderr == "rctl: failed to show rules for '::': Operation not permitted\n"
    # with an operand the failure counts
    assert host.run(":").status == 1


@pytest.mark.parametrize(
    ("probe", "stderr", "status"),
    [
        (lambda: False, f"rctl: {RACCT_DISABLED}\n", 1),
        (lambda: None, f"rctl: {RACCT_MISSING}\n", 1),
        (lambda: True, "rctl: failed to show rules for '::': Function not implemented\n", 0),
    ],
)
def test_enosys_without_operands(
    tmp_path: Path, probe: Callable[[], bool | None], stderr: str, status: int
) -> None:
    run = sim_host(tmp_path, racct_enable=False).run(racct_enable=probe)
    assert (run.status, run.stderr) == (status, stderr)


def test_enosys_stops_at_the_first_operand(tmp_path: Path) -> None:
    host = sim_host(tmp_path, racct_enable=False)
    run = host.run("-a", "user:80:maxproc:deny=1", "user:80:nthr:deny=1")
    assert (run.status, run.stderr) == (1, f"rctl: {RACCT_DISABLED}\n")
    assert len(host.recording.calls) == 1
    # RACCT without RCTL: each operand fails with "Function not implemented" and counts
    run = host.run("-a", "user:80:maxproc:deny=1", "user:80:nthr:deny=1", racct_enable=lambda: True)
    assert run.status == 2
    assert run.stderr.count("Function not implemented") == 2


def test_sysctl_failure_after_enosys(tmp_path: Path) -> None:
    def probe() -> bool | None:
        raise OSError(12, "Cannot allocate memory")

    run = sim_host(tmp_path, racct_enable=False).run(racct_enable=probe)
    assert (run.status, run.stderr) == (1, "rctl: sysctlbyname: Cannot allocate memory\n")


# --- buffers and the kernel's text ------------------------------------------------------------


def test_listing_grows_the_buffer_128k_x4(tmp_path: Path) -> None:
    host = sim_host(tmp_path)
    seed_rules(
        host.sim, [raw("jail", f"j{n:05d}", "memoryuse", "deny", 10**9) for n in range(20000)]
    )
    run = host.run("-n")
    assert run.status == 0
    assert len(run.stdout.splitlines()) == 20000
    assert host.recording.calls == [
        (RctlCall.GET_RULES, 128 * 1024),
        (RctlCall.GET_RULES, 512 * 1024),
        (RctlCall.GET_RULES, 2 * MiB),
    ]


def test_listing_past_maxbufsize_fails_with_e2big(tmp_path: Path) -> None:
    host = sim_host(tmp_path, maxbufsize=512 * 1024)
    seed_rules(
        host.sim, [raw("jail", f"j{n:05d}", "memoryuse", "deny", 10**9) for n in range(20000)]
    )
    run = host.run("jail:")
    assert (run.status, run.stdout) == (1, "")
    assert run.stderr == "rctl: failed to show rules for 'jail:': Argument list too long\n"


def test_kernel_rule_without_subject_stops_rctl() -> None:
    run = rctl([], Oracle(None, b"nonsense,user:80:maxproc:deny=1"))
    assert run.status == 1
    assert run.stderr == "rctl: rule passed from the kernel didn't contain subject\n"
    run = rctl([], Oracle(None, b"user:eighty:maxproc:deny=1"))
    assert (run.status, run.stderr) == (1, "rctl: malformed uid 'eighty'\n")
    # -n prints without looking at the ids; output stops at an empty piece
    oracle = Oracle(None, b"nonsense,user:80:maxproc:deny=1,,jail:x:maxproc:deny=1")
    run = rctl(["-n"], oracle)
    assert (run.status, run.stdout) == (0, "nonsense\nuser:80:maxproc:deny=1\n")


def test_add_and_remove_pass_no_output_buffer() -> None:
    oracle = Oracle(None)
    rctl(["-a", "user:80:maxproc:deny=1"], oracle)
    rctl(["-r", "user:80:maxproc:deny=1"], oracle)
    assert oracle.sent == [
        (RctlCall.ADD_RULE, b"user:80:maxproc:deny=1\0", 0),
        (RctlCall.REMOVE_RULE, b"user:80:maxproc:deny=1\0", 0),
    ]


# --- python -m rctlpolicy.kernel.rctl8 ---------------------------------------------------------


def _module_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RCTLPOLICY_SIM_HOST"}
    # the child imports this checkout's rctlpolicy, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_module_without_a_simulated_host_on_linux() -> None:
    if sys.platform.startswith("freebsd"):
        pytest.skip("runs the real rctl_*(2) on FreeBSD")
    completed = subprocess.run(
        [sys.executable, "-m", "rctlpolicy.kernel.rctl8", "-n"],
        capture_output=True,
        text=True,
        env=_module_env(),
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert "RCTLPOLICY_SIM_HOST" in completed.stderr


def run_module(argv: Sequence[str], host: Path | None) -> subprocess.CompletedProcess[str]:
    env = _module_env() if host is None else _module_env(RCTLPOLICY_SIM_HOST=str(host))
    return subprocess.run(
        [sys.executable, "-m", "rctlpolicy.kernel.rctl8", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_module_over_the_simulated_host(tmp_path: Path) -> None:
    host = write_host(tmp_path, usage=USAGE_DOCUMENT)
    added = run_module(["-a", "u:www:maxproc:deny=100", "j:db1:memoryuse:deny=1g", "x"], host)
    assert added.returncode == 1
    assert added.stderr == "rctl: malformed rule 'x': missing subject\n"
    listed = run_module(["-h"], host)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert sorted(listed.stdout.splitlines()) == [
        "jail:db1:memoryuse:deny=1024M",
        "user:www:maxproc:deny=100",
    ]
    usage = run_module(["-u", "jail:db1"], host)
    assert "memoryuse=123456789" in usage.stdout.splitlines()
    removed = run_module(["-r", "user:www", "user:www"], host)
    assert removed.returncode == 1
    assert removed.stderr == "rctl: failed to remove rule 'user:www': No such process\n"


def test_module_racct_disabled_and_broken_host(tmp_path: Path) -> None:
    disabled = run_module([], write_host(tmp_path, racct_enable=False))
    assert (disabled.returncode, disabled.stderr) == (1, f"rctl: {RACCT_DISABLED}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("users: [", encoding="utf-8")
    failed = run_module(["-n"], broken)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"rctl: {broken}: not valid YAML")
