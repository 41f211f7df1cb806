"""rctl(8)'s command line over any RctlSyscalls layer (spec rctl.md section 7).

`run_rctl` behaves like usr.bin/rctl: the same flags (getopt "ahlnru"), the same rewriting of
operands (subject aliases, user names, expand_number(3) amounts, via
`rctlpolicy.semantics.check.sent_text`), the same output and messages, and the same exit status.
Over the simulated host it is the rctl(8) that tests and the command fallback run::

    RCTLPOLICY_SIM_HOST=host.yaml python -m rctlpolicy.kernel.rctl8 -a user:www:maxproc:deny=10

Without RCTLPOLICY_SIM_HOST it runs over the real libc (on FreeBSD, a second rctl(8)).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from rctlpolicy.amounts import C_SPACE, as_int64, humanize_number, kernel_strtoul, strtod_id
from rctlpolicy.grammar import AMOUNT, SUBJECT_ID, RuleSyntax, parse_rule_syntax
from rctlpolicy.kernel.base import STRERROR, RacctProbe, RctlCall, RctlSyscalls, SyscallError
from rctlpolicy.kernel.freebsd import (
    BUFFER_GROWTH,
    BUFFER_LIMIT,
    RACCT_DISABLED,
    RACCT_MISSING,
    RCTL_DEFAULT_BUFSIZE,
)
from rctlpolicy.semantics.check import (
    FilterCheck,
    Layer,
    RuleCheck,
    check_filter,
    check_rule,
    sent_text,
)
from rctlpolicy.semantics.problems import Problem
from rctlpolicy.semantics.resolver import Resolver

PROGRAM = "rctl"
USAGE = "usage: rctl [ -h ] [-a rule | -l filter | -r filter | -u filter | filter]"
OPTIONS = "ahlnru"
EXCLUSIVE = "at most one of -a, -l, -r, or -u may be specified"
#: Host variable naming the simulated host file `python -m rctlpolicy.kernel.rctl8` runs on.
SIM_HOST_VARIABLE = "RCTLPOLICY_SIM_HOST"


class NameLookup(Protocol):
    """getpwuid(3) for rule listings: the user name of a uid, None when unknown."""

    def name_of_uid(self, uid: int) -> str | None: ...


class _Exit(Exception):
    """rctl(8)'s err(3)/errx(3)/usage(): stop now with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Options:
    add: bool
    humanize: bool
    limits: bool
    numeric: bool
    remove: bool
    usage: bool


def _generic_default() -> bool | None:
    # GENERIC is built with RACCT_DEFAULT_TO_DISABLED: kern.racct.enable is 0 unless set.
    return False


class _Rctl:
    """One invocation: flags, the layers it talks to, and where it writes."""

    def __init__(
        self,
        options: _Options,
        syscalls: RctlSyscalls,
        resolver: Resolver,
        names: NameLookup,
        stdout: TextIO,
        stderr: TextIO,
        racct_enable: RacctProbe,
    ) -> None:
        self.options = options
        self.syscalls = syscalls
        self.resolver = resolver
        self.names = names
        self.stdout = stdout
        self.stderr = stderr
        self.racct_enable = racct_enable

    # -- messages ------------------------------------------------------------------------

    def warnx(self, message: str) -> None:
        self.stderr.write(f"{PROGRAM}: {message}\n")

    def errx(self, message: str) -> _Exit:
        self.warnx(message)
        return _Exit(1)

    # -- one operand ---------------------------------------------------------------------

    def operand(self, argument: str) -> bool:
        """Process one operand; False when it failed (it then counts in the exit status)."""
        syntax = parse_rule_syntax(argument)
        check: RuleCheck | FilterCheck
        if self.options.add:
            # -n with -a sends user names as typed (rctl.c: "Skip resolving if passed -n _and_ -a").
            check = check_rule(
                syntax,
                Layer.RCTL8,
                self.resolver,
                resolve_users=not self.options.numeric,
                notes=False,
            )
        else:
            check = check_filter(syntax, Layer.RCTL8, self.resolver)
        sent = sent_text(syntax, check)
        if sent is None:
            self.warnx(f"malformed rule '{argument}': {_refusal(syntax, check.problems)}")
            return False
        if self.options.add:
            return self.simple(RctlCall.ADD_RULE, sent, f"failed to add rule '{argument}'")
        if self.options.remove:
            return self.simple(RctlCall.REMOVE_RULE, sent, f"failed to remove rule '{argument}'")
        if self.options.usage:
            return self.show_usage(sent, argument)
        if self.options.limits:
            output = self.growing(
                RctlCall.GET_LIMITS, sent, f"failed to get limits for '{argument}'"
            )
        else:
            output = self.growing(
                RctlCall.GET_RULES, sent, f"failed to show rules for '{argument}'"
            )
        if output is None:
            return False
        self.print_rules(output)
        return True

    def simple(self, call: RctlCall, sent: str, failure: str) -> bool:
        try:
            self.syscalls.call(call, _inbuf(sent), 0)
        except SyscallError as error:
            self.failed(error.errno_name, failure)
            return False
        return True

    def growing(self, call: RctlCall, sent: str, failure: str) -> str | None:
        """A listing call: 128 KiB, then four times more on each ERANGE."""
        outbuflen = RCTL_DEFAULT_BUFSIZE
        while True:
            try:
                output = self.syscalls.call(call, _inbuf(sent), outbuflen)
            except SyscallError as error:
                if error.errno_name == "ERANGE" and outbuflen * BUFFER_GROWTH <= BUFFER_LIMIT:
                    outbuflen *= BUFFER_GROWTH
                    continue
                self.failed(error.errno_name, failure)
                return None
            return output.decode("utf-8", "surrogateescape")

    def failed(self, errno_name: str, failure: str) -> None:
        """warn(3) for a failed call; ENOSYS first asks kern.racct.enable, like rctl.c:enosys."""
        if errno_name == "ENOSYS":
            try:
                enabled = self.racct_enable()
            except OSError as error:
                raise self.errx(f"sysctlbyname: {error.strerror or error}") from error
            if enabled is None:
                raise self.errx(RACCT_MISSING)
            if not enabled:
                raise self.errx(RACCT_DISABLED)
        self.warnx(f"{failure}: {STRERROR.get(errno_name, errno_name)}")

    # -- output --------------------------------------------------------------------------

    def print_rules(self, output: str) -> None:
        for piece in output.split(","):
            if not piece:
                break  # rctl.c stops at the first empty piece ("XXX")
            rule = piece if self.options.numeric else self.humanize_ids(piece)
            if self.options.humanize:
                rule = _humanize_amount(rule)
            self.stdout.write(rule + "\n")

    def humanize_ids(self, rule: str) -> str:
        """uid -> user name (getpwuid); other subjects as printed."""
        subject, colon, rest = rule.partition(":")
        if not colon:
            raise self.errx("rule passed from the kernel didn't contain subject")
        subject_id, colon, rest = rest.partition(":")
        if subject.lower() == "user":
            uid = _strtod_id(subject_id)
            if uid is None:
                raise self.errx(f"malformed uid '{subject_id}'")
            # getpwuid(3) takes a uid_t: the id_t's low 32 bits (the kernel prints uids
            # >= 2^31 as negative numbers).
            name = self.names.name_of_uid(uid & 0xFFFFFFFF)
            if name is not None:
                subject_id = name
        return f"{subject}:{subject_id}:{rest}"

    def show_usage(self, sent: str, argument: str) -> bool:
        output = self.growing(
            RctlCall.GET_RACCT, sent, f"failed to show resource consumption for '{argument}'"
        )
        if output is None:
            return False
        for pair in output.split(","):
            if not pair:
                break
            line = pair
            if self.options.humanize:
                resource, _, amount = pair.partition("=")
                number = kernel_strtoul(amount)
                if number is not None:
                    line = f"{resource}={humanize_number(as_int64(number))}"
            self.stdout.write(line + "\n")
        return True


def _inbuf(sent: str) -> bytes:
    # rctl(8) passes strlen + 1: the C string ends at its first NUL.
    return sent.encode("utf-8", "surrogateescape").split(b"\0", 1)[0] + b"\0"


def _strtod_id(text: str) -> int | None:
    """The id_t rctl.c:humanize_ids reads with strtod(3) from the kernel's `%d` of a uid."""
    if not text:
        return 0  # strtod converts nothing and consumes all of "": rctl.c accepts it as 0
    return strtod_id(text.lstrip(C_SPACE))


def _humanize_amount(rule: str) -> str:
    """rctl.c:humanize_amount: the amount through humanize_number(3), when it is a number."""
    syntax = parse_rule_syntax(rule)
    subject, subject_id, resource, action, amount, per = syntax.fields
    if not amount:
        return rule
    number = kernel_strtoul(amount)
    if number is None:
        return rule
    text = f"{subject}:{subject_id}:{resource}:{action}={humanize_number(as_int64(number))}"
    if syntax.per_present:
        text += f"/{per or ''}"
    return text


def _refusal(syntax: RuleSyntax, problems: Sequence[Problem]) -> str:
    """The words rctl(8) uses for the problem it refused an operand for."""
    problem = next(p for p in problems if p.errno == "RCTL8")
    subject_id = syntax.fields[SUBJECT_ID] or ""
    if problem.field == SUBJECT_ID and not syntax.has_colon:
        return "missing subject"
    if problem.field == SUBJECT_ID and problem.code == "invalid-id":
        return "trailing characters after numerical id"
    if problem.field == SUBJECT_ID:
        kind = "group" if problem.code.endswith("group") else "user"
        return f"unknown {kind} '{subject_id}'"
    return f"invalid numeric value '{syntax.fields[AMOUNT] or ''}'"


def _getopt(argv: Sequence[str]) -> tuple[str, list[str]]:
    """BSD getopt(3) with "ahlnru": combined flags, "--", stops at the first operand.

    Raises _BadOption for an unknown letter.
    """
    flags = ""
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            index += 1
            break
        if not argument.startswith("-") or argument == "-":
            break
        for letter in argument[1:]:
            if letter not in OPTIONS:
                raise _BadOption(letter)
            flags += letter
        index += 1
    return flags, list(argv[index:])


class _BadOption(Exception):
    def __init__(self, letter: str) -> None:
        super().__init__(letter)
        self.letter = letter


def run_rctl(
    argv: Sequence[str],
    syscalls: RctlSyscalls,
    resolver: Resolver,
    names: NameLookup,
    stdout: TextIO,
    stderr: TextIO,
    *,
    racct_enable: RacctProbe = _generic_default,
) -> int:
    """Run rctl(8) with `argv` (without the program name); returns its exit status.

    The status is the number of operands that failed (modulo 256, as the OS keeps it), 1 for
    usage errors and when RACCT/RCTL is missing or disabled. Plain `rctl` without operands
    exits 0 even when listing failed, except for those. `racct_enable` is rctl(8)'s
    kern.racct.enable read after ENOSYS (None: oid missing); GENERIC's default is disabled.
    """
    try:
        flags, operands = _getopt(argv)
    except _BadOption as error:
        stderr.write(f"{PROGRAM}: illegal option -- {error.letter}\n{USAGE}\n")
        return 1
    options = _Options(
        add="a" in flags,
        humanize="h" in flags,
        limits="l" in flags,
        numeric="n" in flags,
        remove="r" in flags,
        usage="u" in flags,
    )
    rctl = _Rctl(options, syscalls, resolver, names, stdout, stderr, racct_enable)
    actions = sum((options.add, options.limits, options.remove, options.usage))
    if actions > 1:
        stderr.write(f"{PROGRAM}: {EXCLUSIVE}\n")
        return 1
    try:
        if not operands:
            if actions:
                stderr.write(USAGE + "\n")
                return 1
            rctl.operand("::")
            return 0
        failed = 0
        for operand in operands:
            # A C string ends at its first NUL (only possible when called in-process).
            if not rctl.operand(operand.split("\0", 1)[0]):
                failed += 1
        return failed & 0xFF
    except _Exit as stop:
        return stop.status


# --- python -m rctlpolicy.kernel.rctl8 -------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """rctl(8) over the simulated host named by $RCTLPOLICY_SIM_HOST, else over libc."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    host_path = os.environ.get(SIM_HOST_VARIABLE)
    try:
        status = _main_simulated(arguments, host_path) if host_path else _main_libc(arguments)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`rctl | head`): rctl(8) would die of SIGPIPE, quietly.
        # Point stdout at /dev/null so that the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main_simulated(arguments: list[str], host_path: str) -> int:
    from rctlpolicy.kernel.hostfile import HostFileError
    from rctlpolicy.kernel.simulator import SimulatedSyscalls

    simulator = SimulatedSyscalls(host_path)
    try:
        host = simulator.host()
        return run_rctl(
            arguments,
            simulator,
            host,
            host,
            sys.stdout,
            sys.stderr,
            # The simulated kernel always has RACCT and RCTL compiled in; only the tunable varies.
            racct_enable=simulator.racct_enabled,
        )
    except HostFileError as error:  # also when the file breaks between two calls
        sys.stderr.write(f"{PROGRAM}: {error}\n")
        return 1


def _main_libc(arguments: list[str]) -> int:
    from rctlpolicy.hostinfo import SystemResolver
    from rctlpolicy.kernel.jails import list_system_jails
    from rctlpolicy.kernel.libc import LibcSyscalls, load_libc, sysctl_racct_enable

    libc = load_libc()
    if not hasattr(libc, RctlCall.GET_RULES.value):
        sys.stderr.write(
            f"{PROGRAM}: this system has no rctl_get_rules(2); "
            f"set {SIM_HOST_VARIABLE} to a simulated host file\n"
        )
        return 1

    def probe() -> bool | None:
        return sysctl_racct_enable(libc)

    resolver = SystemResolver(list_system_jails)
    return run_rctl(
        arguments,
        LibcSyscalls(libc),
        resolver,
        resolver,
        sys.stdout,
        sys.stderr,
        racct_enable=probe,
    )


if __name__ == "__main__":
    raise SystemExit(main())
