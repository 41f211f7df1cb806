"""The FreeBSD kernel backend: the Kernel protocol over the rctl_*(2) system calls.

`FreeBSDKernel` speaks to any `RctlSyscalls` layer: `libc.LibcSyscalls` (ctypes, the normal
case), `RctlCommandSyscalls` (running rctl(8) when libc lacks the calls) or the simulated
host's. It does what rctl(8) does around the calls - inbuf = text + NUL, an output buffer that
starts at 128 KiB and grows x4 on ERANGE, ENOSYS explained with kern.racct.enable - and reads
the kernel's canonical text back into `Rule` values (spec rctl.md sections 6 to 8).
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager

from rctlpolicy.amounts import kernel_strtoul
from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.grammar import parse_rule_syntax
from rctlpolicy.kernel.base import (
    STRERROR,
    Jail,
    JailLister,
    KernelError,
    RacctDisabledError,
    RacctProbe,
    RacctStatus,
    RctlCall,
    RctlSyscalls,
    SyscallError,
)
from rctlpolicy.kernel.commands import CommandRunner, SubprocessCommandRunner
from rctlpolicy.model import EVERYTHING, SUBJECT_ALIASES, Filter, Resource, Rule
from rctlpolicy.semantics.canonical import parse_canonical
from rctlpolicy.semantics.check import Layer, check_rule
from rctlpolicy.semantics.resolver import OFFLINE

#: rctl(8)'s first output buffer (RCTL_DEFAULT_BUFSIZE) and its growth factor on ERANGE.
RCTL_DEFAULT_BUFSIZE = 128 * 1024
BUFFER_GROWTH = 4
#: rctl(8) grows without bound (the kernel's maxbufsize, 16 MiB by default, stops it with
#: E2BIG); a layer that answers ERANGE forever is stopped here instead of exhausting memory.
BUFFER_LIMIT = 1 << 30

#: The kernel's limit on inbuflen (RCTL_MAX_INBUFSIZE): the rule text plus its NUL.
RCTL_MAX_INBUFSIZE = 4096

#: rctl(8)'s messages when a call fails with ENOSYS (usr.bin/rctl/rctl.c:enosys).
RACCT_DISABLED = "RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable"
RACCT_MISSING = "RACCT/RCTL support not present in kernel; see rctl(8) for details"
ENABLE_ADVICE = (
    "add kern.racct.enable=1 to /boot/loader.conf and reboot "
    "(the tunable is read-only while the system runs)"
)
MISSING_ADVICE = (
    "boot a kernel built with options RACCT and options RCTL (GENERIC has both) "
    "and add kern.racct.enable=1 to /boot/loader.conf"
)
NO_RCTL_ADVICE = "this kernel has RACCT but not RCTL: boot a kernel built with options RCTL"

#: errno_name of a KernelError for output the kernel (or rctl(8)) gave that we cannot read.
UNREADABLE = "UNREADABLE"


# --- reading the kernel's output ----------------------------------------------------------


# A rule's text always reads the same (OFFLINE consults no host), and a listing repeats the
# rules of the last one: memoized, a no-op plan of 10,000 rules does not parse them again.
@functools.lru_cache(maxsize=1 << 16)
def _kernel_rule(text: str) -> Rule | None:
    fast = parse_canonical(text)
    if fast is not None:
        return fast
    check = check_rule(parse_rule_syntax(text), Layer.KERNEL, OFFLINE, notes=False)
    return check.rule


def parse_rules(output: str) -> list[Rule]:
    """The comma-joined canonical rules of rctl_get_rules/rctl_get_limits, as Rules.

    Loginclass and jail names may contain ',' (but never ':'), which the kernel does not
    escape: a piece with fewer than the three ':' of a complete rule is the start of such a
    name and is joined with the next piece. Text that still is no rule raises KernelError.
    """
    with no_cyclic_gc():  # thousands of small objects that stay alive; see policy.py
        return _parse_rules(output)


def _parse_rules(output: str) -> list[Rule]:
    rules: list[Rule] = []
    if not output:
        return rules
    pending: str | None = None
    for piece in output.split(","):
        if pending is None and not piece:
            continue  # rctl(8) ignores empty pieces too (print_rules stops at one)
        text = piece if pending is None else f"{pending},{piece}"
        if text.count(":") < 3:
            pending = text
            continue
        pending = None
        rule = _kernel_rule(text)
        if rule is None:
            raise KernelError(UNREADABLE, text, "the kernel listed a rule rctlpolicy cannot read")
        rules.append(rule)
    if pending is not None:
        raise KernelError(UNREADABLE, pending, "the kernel listed a rule rctlpolicy cannot read")
    return rules


USAGE_PAIR = re.compile(r"([a-z0-9]+)=(-?[0-9]+)\Z")
_RESOURCES = {resource.value: resource for resource in Resource}


def parse_usage(output: str) -> dict[Resource, int]:
    """rctl_get_racct's `name=value,...` as a dict; values are in user units already.

    Names this version does not know (a newer kernel's resources) are skipped; anything that
    is not `name=integer` raises KernelError.
    """
    usage: dict[Resource, int] = {}
    for pair in output.split(","):
        if not pair:
            continue
        match = USAGE_PAIR.match(pair)
        if match is None:
            raise KernelError(UNREADABLE, pair, "the kernel reported usage rctlpolicy cannot read")
        resource = _RESOURCES.get(match.group(1))
        if resource is not None:
            usage[resource] = int(match.group(2))
    return usage


# --- the kernel -----------------------------------------------------------------------------


def racct_status_of(enabled: bool | None) -> RacctStatus:
    """What a kern.racct.enable reading means, in words an administrator can act on."""
    if enabled:
        return RacctStatus(True)
    if enabled is None:
        return RacctStatus(False, f"{RACCT_MISSING}: {MISSING_ADVICE}")
    return RacctStatus(False, f"{RACCT_DISABLED}: {ENABLE_ADVICE}")


class FreeBSDKernel:
    """The Kernel protocol over an RctlSyscalls layer (libc, rctl(8), or the simulator)."""

    def __init__(
        self, syscalls: RctlSyscalls, jail_lister: JailLister, racct_probe: RacctProbe
    ) -> None:
        self._syscalls = syscalls
        self._jail_lister = jail_lister
        self._racct_probe = racct_probe

    @property
    def syscalls(self) -> RctlSyscalls:
        """The system-call layer this kernel calls (rctl(8) runs over the same one)."""
        return self._syscalls

    def add_rule(self, rule: Rule) -> None:
        """rctl -a: raises KernelError (EOPNOTSUPP, ESRCH, ...)."""
        self._call(RctlCall.ADD_RULE, rule.canonical, 0)

    def remove_rules(self, rule_filter: Filter) -> None:
        """rctl -r: every rule matching the filter; KernelError ESRCH when none did."""
        self._call(RctlCall.REMOVE_RULE, rule_filter.text, 0)

    def rules(self, rule_filter: Filter = EVERYTHING) -> list[Rule]:
        """rctl -n [filter]: the rules in force that match."""
        return parse_rules(self._call_growing(RctlCall.GET_RULES, rule_filter.text))

    def usage(self, rule_filter: Filter) -> dict[Resource, int]:
        """rctl -u: the usage of the filter's subject (subject and id must be set)."""
        return parse_usage(self.usage_text(rule_filter))

    def usage_text(self, rule_filter: Filter) -> str:
        """rctl -u as the kernel answers it, `name=value,...` (`parse_usage` reads it): for
        the exporter, which writes a scrape straight from these strings."""
        return self._call_growing(RctlCall.GET_RACCT, rule_filter.text)

    def limits(self, pid: int) -> list[Rule]:
        """rctl -l process:<pid>: every rule that applies to the process."""
        return parse_rules(self._call_growing(RctlCall.GET_LIMITS, f"process:{pid}"))

    def jails(self) -> Sequence[Jail]:
        """The running jails, from the jail lister given."""
        return self._jail_lister()

    def batch(self) -> AbstractContextManager[None]:
        """Calls that belong together (a scrape's), answered as at one instant where the
        system-call layer can: the simulator reads its host file once for all of them. On
        FreeBSD each call is its own, as each rctl_*(2) call is."""
        batch = getattr(self._syscalls, "batch", None)
        if batch is None:
            return contextlib.nullcontext()
        context: AbstractContextManager[None] = batch()
        return context

    def racct_status(self) -> RacctStatus:
        """Whether RACCT/RCTL is usable, from kern.racct.enable."""
        try:
            enabled = self._racct_probe()
        except OSError as error:
            return RacctStatus(False, f"cannot read kern.racct.enable: {error}")
        return racct_status_of(enabled)

    def _call_growing(self, call: RctlCall, text: str) -> str:
        """A listing call with rctl(8)'s buffer growth: 128 KiB, then x4 on each ERANGE."""
        outbuflen = RCTL_DEFAULT_BUFSIZE
        while True:
            try:
                return self._call(call, text, outbuflen)
            except KernelError as error:
                if error.errno_name != "ERANGE" or outbuflen * BUFFER_GROWTH > BUFFER_LIMIT:
                    raise
            outbuflen *= BUFFER_GROWTH

    def _call(self, call: RctlCall, text: str, outbuflen: int) -> str:
        inbuf = text.encode("utf-8", "surrogateescape") + b"\0"
        try:
            output = self._syscalls.call(call, inbuf, outbuflen)
        except SyscallError as error:
            if error.errno_name == "ENOSYS":
                raise self._enosys(text) from error
            raise KernelError(error.errno_name, text) from error
        return output.decode("utf-8", "surrogateescape")

    def _enosys(self, text: str) -> KernelError:
        """rctl(8)'s reading of ENOSYS: RACCT missing, disabled, or present without RCTL."""
        try:
            enabled = self._racct_probe()
        except OSError as error:
            return KernelError(
                "ENOSYS", text, f"{STRERROR['ENOSYS']} (cannot read kern.racct.enable: {error})"
            )
        if enabled is None:
            return RacctDisabledError("ENOSYS", text, f"{RACCT_MISSING}: {MISSING_ADVICE}")
        if not enabled:
            return RacctDisabledError("ENOSYS", text, f"{RACCT_DISABLED}: {ENABLE_ADVICE}")
        return KernelError("ENOSYS", text, f"{STRERROR['ENOSYS']} ({NO_RCTL_ADVICE})")


# --- the rctl(8) fallback -------------------------------------------------------------------

_STRERROR_NAMES = {text: name for name, text in STRERROR.items()}

#: How each call is asked of rctl(8). -n keeps uids numeric in listings, and with -a sends
#: the subject id as given (the kernel layer takes no user names).
_RCTL8_FLAGS: dict[RctlCall, tuple[str, ...]] = {
    RctlCall.ADD_RULE: ("-n", "-a"),
    RctlCall.REMOVE_RULE: ("-r",),
    RctlCall.GET_RULES: ("-n",),
    RctlCall.GET_LIMITS: ("-n", "-l"),
    RctlCall.GET_RACCT: ("-u",),
}
_RACCT_MESSAGES = (RACCT_DISABLED, RACCT_MISSING)


def _kernel_text(inbuf: bytes) -> str:
    """The string the kernel would read from inbuf (its prologue checks, spec section 8)."""
    if not inbuf:
        raise SyscallError("EINVAL")
    if len(inbuf) > RCTL_MAX_INBUFSIZE:
        raise SyscallError("E2BIG")
    end = inbuf.find(b"\0")
    if end < 0:
        raise SyscallError("ENAMETOOLONG")
    return inbuf[:end].decode("utf-8", "surrogateescape")


def rctl8_operand(text: str, call: RctlCall) -> str:
    """The rctl(8) operand that makes the kernel see what `text` (a raw syscall string) means.

    rctl(8) rewrites its operands (aliases, user names, expand_number(3) amounts) where the
    system call takes the text as it is; undo what would change the kernel's verdict. A
    subject alias, a user name or an amount the kernel cannot read is refused here with the
    kernel's EINVAL; kernel numbers are re-written as plain decimal, so `010` stays ten and
    `-5` stays out of range (ERANGE).
    """
    syntax = parse_rule_syntax(text)
    subject, subject_id, resource, action, amount, per = syntax.fields
    if subject_id is None:
        # rctl(8) insists on a ':'; for the kernel "user" and "user:" are the same filter.
        return text + ":"
    subject = subject or ""
    if subject.lower() in SUBJECT_ALIASES:
        raise SyscallError("EINVAL")
    # -a runs with -n, which sends the id as given; the other operations resolve names.
    if subject.lower() == "user" and subject_id and call is not RctlCall.ADD_RULE:
        uid = kernel_strtoul(subject_id)
        if uid is None:
            raise SyscallError("EINVAL")
        # The kernel keeps 32 bits of the number; as plain digits rctl(8) reads the same uid.
        subject_id = str(uid & 0xFFFFFFFF)
    head = f"{subject}:{subject_id}:"
    if not amount:
        parts = text.split(":", 2)
        return head + (parts[2] if len(parts) == 3 else "")
    number = kernel_strtoul(amount)
    if number is None:
        raise SyscallError("EINVAL")
    operand = f"{head}{resource or ''}:{action or ''}={number}"
    if syntax.per_present:
        operand += "/" + (per or "")
    return operand


class RctlCommandSyscalls:
    """The RctlSyscalls layer over the rctl(8) command, for systems whose libc lacks the calls.

    Each call runs `rctl` once (argv, no shell) and reads its output and messages back into
    results and errno names, so FreeBSDKernel works unchanged over it. Output larger than
    `outbuflen` is refused with ERANGE, like the kernel does, and the caller grows its buffer.
    """

    def __init__(
        self, rctl_path: str = "/usr/bin/rctl", runner: CommandRunner | None = None
    ) -> None:
        self._rctl_path = rctl_path
        self._runner: CommandRunner = runner if runner is not None else SubprocessCommandRunner()

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        """One rctl(8) run standing in for one system call; raises SyscallError."""
        operand = rctl8_operand(_kernel_text(inbuf), call)
        # "--": an operand starting with '-' must not be read as options.
        argv = [self._rctl_path, *_RCTL8_FLAGS[call], "--", operand]
        try:
            result = self._runner.run(argv)
        except (OSError, subprocess.SubprocessError) as error:  # not started, or timed out
            raise KernelError(
                UNREADABLE, operand, f"cannot run {self._rctl_path}: {error}"
            ) from error
        if result.returncode != 0:
            raise SyscallError(_errno_of_messages(result.stderr, operand))
        if call in (RctlCall.ADD_RULE, RctlCall.REMOVE_RULE):
            return b""
        # rctl(8) printed the kernel's comma-joined output one piece per line.
        lines = result.stdout.split("\n")
        if lines[-1] == "":
            lines.pop()
        output = ",".join(lines).encode("utf-8", "surrogateescape")
        # The kernel's sbuf keeps a byte for a trailing ',' in rule listings, one for the NUL.
        needed = len(output) + (1 if call is RctlCall.GET_RACCT else 2)
        if output and needed > outbuflen:
            raise SyscallError("ERANGE")
        return output


def _errno_of_messages(stderr: str, operand: str) -> str:
    """The errno behind rctl(8)'s messages ("rctl: failed to ...: <strerror>")."""
    for line in stderr.splitlines():
        message = line.removeprefix("rctl: ")
        if message.startswith(_RACCT_MESSAGES):
            return "ENOSYS"
        if message.startswith("malformed rule "):
            # rctl(8) refused the operand itself: the kernel would have said EINVAL.
            return "EINVAL"
        if message.startswith("failed to "):
            name = _STRERROR_NAMES.get(message.rpartition("': ")[2])
            if name is not None:
                return name
    raise KernelError(UNREADABLE, operand, f"rctl(8) failed: {stderr.strip() or 'no message'}")


def sysctl_command_probe(runner: CommandRunner, sysctl_path: str = "/sbin/sysctl") -> RacctProbe:
    """kern.racct.enable read with sysctl(8) (None when the oid is unknown)."""

    def probe() -> bool | None:
        result = runner.run([sysctl_path, "-n", "kern.racct.enable"])
        if result.returncode != 0:
            if "unknown oid" in result.stderr:
                return None
            raise OSError(f"sysctl kern.racct.enable failed: {result.stderr.strip()}")
        return result.stdout.strip() not in ("", "0")

    return probe


def open_freebsd_kernel(
    *,
    libc: object | None = None,
    runner: CommandRunner | None = None,
    jail_lister: JailLister | None = None,
) -> FreeBSDKernel:
    """The kernel of the running FreeBSD host.

    The system calls through libc when it has `rctl_get_rules`, else rctl(8); kern.racct.enable
    through sysctlbyname(3) (sysctl(8) without it); jails through jail_get(2) (`jls --libxo
    json` without it) unless a lister is given.
    """
    # ctypes only when FreeBSD's own kernel is opened: the simulator's commands start faster.
    from rctlpolicy.kernel.jails import system_jail_lister
    from rctlpolicy.kernel.libc import LibcSyscalls, load_libc, sysctl_racct_enable

    if libc is None:
        libc = load_libc()
    command_runner: CommandRunner = runner if runner is not None else SubprocessCommandRunner()
    syscalls: RctlSyscalls
    if hasattr(libc, RctlCall.GET_RULES.value):
        syscalls = LibcSyscalls(libc)
    else:
        syscalls = RctlCommandSyscalls(runner=command_runner)
    probe: RacctProbe
    if hasattr(libc, "sysctlbyname"):
        libc_handle = libc

        def probe() -> bool | None:
            return sysctl_racct_enable(libc_handle)

    else:
        probe = sysctl_command_probe(command_runner)
    lister = jail_lister if jail_lister is not None else system_jail_lister(libc, command_runner)
    return FreeBSDKernel(syscalls, lister, probe)
