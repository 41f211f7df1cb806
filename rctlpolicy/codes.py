"""Every diagnostic code rctlpolicy reports, in one table: the registry.

Each attribute of `Code` is a `DiagnosticCode`: the code's string itself
(`Code.UNKNOWN_RESOURCE == "unknown-resource"`), carrying, in the one place it is declared,
its severity, a one-line summary and two examples: a policy file that produces the code and
one that does not. Emitters name codes through `Code` and take the severity from it;
`rctlpolicy lint --list-codes` and docs/lint-codes.md are generated from it;
tests/test_codes.py lints every example and fails when one does not do what the table says.

Adding a code is one entry in `Code` (and the emitter that uses it). An example is a file:
its name picks the format (`.conf`/`.rules`: rctl.conf; `.yaml`: YAML), `resolve` checks it
as `lint --resolve` does on the example host, and a code reported by the daemon's load of its
rules directory (`Checker.DAEMON`) has its example written there, with `mode`.

(`Code` is a plain class of str constants rather than an Enum: building a 60-member Enum
costs about 2 ms at every start of `rctlpolicy lint`, a tenth of what it may spend.)
"""

from __future__ import annotations

from enum import StrEnum

from rctlpolicy.model import Severity
from rctlpolicy.records import NamedTuple

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

#: The host `resolve` examples are checked against (tests/corpus_host.py answers the same).
EXAMPLE_HOST = (
    "users www (uid 80) and root (0), group wheel, a running jail db1, login classes default "
    "and daemon, and process 1"
)


class Checker(StrEnum):
    """Who reports a code."""

    LINT = "lint"  # `rctlpolicy lint`, and every command or daemon that loads a policy
    DAEMON = "daemon"  # the daemon's reading of its rules directory (beyond lint)


class Example(NamedTuple):
    """A policy file that shows (or avoids) a code."""

    text: str
    file: str = "rctl.conf"
    #: Checked as `lint --resolve` on the example host (EXAMPLE_HOST).
    resolve: bool = False
    #: The file's permission bits (daemon examples are written to disk).
    mode: int = 0o644


def _conf(*lines: str, resolve: bool = False) -> Example:
    """An rctl.conf of these lines (each ends with its newline)."""
    return Example("".join(line + "\n" for line in lines), resolve=resolve)


def _yaml(text: str, file: str = "rules.yaml", mode: int = 0o644) -> Example:
    return Example(text, file, mode=mode)


def _on_match(on_match: str, action: str = "devctl") -> Example:
    """A YAML policy with one devctl rule and this on_match (a flow mapping)."""
    return _yaml(f"rules:\n  - rule: jail:pg:swapuse:{action}=1g\n    on_match: {on_match}\n")


#: YAML aliases nested `depth` levels deep, ten to a level: 10^depth nodes once expanded.
def _aliases(depth: int) -> Example:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, depth):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return _yaml("\n".join(lines) + "\nrules: []\n")


_LONG_CLASS = "c" * 33
_LONG_RULE = "jail:" + "x" * 4100 + ":maxproc:deny=1"


class DiagnosticCode(str):
    """A diagnostic code: the string is the code; severity, summary and examples ride along."""

    severity: Severity
    summary: str
    fails: Example
    passes: Example
    checker: Checker

    def __new__(
        cls,
        value: str,
        severity: Severity,
        summary: str,
        fails: Example,
        passes: Example,
        checker: Checker = Checker.LINT,
    ) -> DiagnosticCode:
        code = str.__new__(cls, value)
        code.severity = severity
        code.summary = summary
        code.fails = fails
        code.passes = passes
        code.checker = checker
        return code


C = DiagnosticCode


class Code:
    """The registry: every code, in documentation order."""

    # --- a rule's fields, as rctl(8) and the kernel read them (semantics) -----------------
    MISSING_FIELD = C(
        "missing-field",
        ERROR,
        "a rule needs subject, subject id, resource, action and amount",
        _conf("jail:db1:maxproc"),
        _conf("jail:db1:maxproc:deny=100"),
    )
    UNKNOWN_SUBJECT = C(
        "unknown-subject",
        ERROR,
        "the subject is not process, user, loginclass or jail (or an alias)",
        _conf("prison:db1:maxproc:deny=100"),
        _conf("jail:db1:maxproc:deny=100"),
    )
    UNKNOWN_RESOURCE = C(
        "unknown-resource",
        ERROR,
        "the resource is not in the kernel's table",
        _conf("jail:db1:memoryuze:deny=8g"),
        _conf("jail:db1:memoryuse:deny=8g"),
    )
    UNKNOWN_ACTION = C(
        "unknown-action",
        ERROR,
        "the action is not deny, log, devctl, throttle or a signal name",
        _conf("jail:db1:maxproc:warn=100"),
        _conf("jail:db1:maxproc:log=100"),
    )
    UNKNOWN_PER = C(
        "unknown-per",
        ERROR,
        "per is not process, user, loginclass or jail",
        _conf("jail:db1:maxproc:deny=10/usr"),
        _conf("jail:db1:maxproc:deny=10/user"),
    )
    UNKNOWN_USER = C(
        "unknown-user",
        ERROR,
        "no such user on this host (rctl(8) refuses the rule)",
        _conf("user:nosuch:maxproc:deny=10", resolve=True),
        _conf("user:www:maxproc:deny=10", resolve=True),
    )
    UNKNOWN_GROUP = C(
        "unknown-group",
        ERROR,
        "no such group on this host (rctl(8) refuses the rule)",
        _conf("g:nosuch:maxproc:deny=10", resolve=True),
        _conf("user:www:maxproc:deny=10", resolve=True),
    )
    INVALID_USER = C(
        "invalid-user",
        ERROR,
        "not a well-formed user name",
        _conf("user:bad!name:maxproc:deny=10"),
        _conf("user:www:maxproc:deny=10"),
    )
    INVALID_GROUP = C(
        "invalid-group",
        ERROR,
        "not a well-formed group name",
        _conf("g:bad!name:maxproc:deny=10"),
        _conf("user:www:maxproc:deny=10"),
    )
    INVALID_ID = C(
        "invalid-id",
        ERROR,
        "a numeric id with characters after the number, or a pid that is not a number",
        _conf("user:80x:maxproc:deny=10"),
        _conf("user:80:maxproc:deny=10"),
    )
    NO_SUCH_PROCESS = C(
        "no-such-process",
        ERROR,
        "a process rule for a pid that does not exist (ESRCH)",
        _conf("process:99999:maxproc:deny=10", resolve=True),
        _conf("process:1:maxproc:deny=10", resolve=True),
    )
    NAME_TOO_LONG = C(
        "name-too-long",
        ERROR,
        "a login class name over 32 bytes or a jail name over 255 (ENAMETOOLONG)",
        _conf(f"loginclass:{_LONG_CLASS}:maxproc:deny=10"),
        _conf("loginclass:daemon:maxproc:deny=10"),
    )
    RULE_TOO_LONG = C(
        "rule-too-long",
        ERROR,
        "a rule over 4095 bytes, the kernel's limit (E2BIG)",
        _conf(_LONG_RULE),
        _conf("jail:db1:maxproc:deny=10"),
    )
    INVALID_AMOUNT = C(
        "invalid-amount",
        ERROR,
        "an amount that is not a whole number with an optional k/m/g/t/p/e suffix",
        _conf("jail:db1:memoryuse:deny=1.5g"),
        _conf("jail:db1:memoryuse:deny=1536m"),
    )
    AMOUNT_OUT_OF_RANGE = C(
        "amount-out-of-range",
        ERROR,
        "an amount too large for the kernel (ERANGE)",
        _conf("jail:db1:maxproc:deny=16e"),
        _conf("jail:db1:maxproc:deny=7e"),
    )
    DENY_NOT_SUPPORTED = C(
        "deny-not-supported",
        ERROR,
        "the resource cannot be denied, only logged or signalled (EOPNOTSUPP)",
        _conf("jail:db1:cputime:deny=3600"),
        _conf("jail:db1:cputime:sigxcpu=3600"),
    )
    THROTTLE_NOT_SUPPORTED = C(
        "throttle-not-supported",
        ERROR,
        "throttle works only for readbps, writebps, readiops and writeiops (EOPNOTSUPP)",
        _conf("jail:db1:maxproc:throttle=10"),
        _conf("jail:db1:readbps:throttle=10m"),
    )
    PER_PROCESS_NOT_SUPPORTED = C(
        "per-process-not-supported",
        ERROR,
        "the resource is not accounted per process (EOPNOTSUPP)",
        _conf("jail:db1:swapuse:deny=1g/process"),
        _conf("jail:db1:swapuse:deny=1g"),
    )
    OCTAL_AMOUNT = C(
        "octal-amount",
        WARNING,
        "a leading 0 makes rctl(8) read the amount as octal",
        _conf("jail:db1:maxproc:deny=010"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    HEX_AMOUNT = C(
        "hex-amount",
        WARNING,
        "a hexadecimal amount",
        _conf("jail:db1:maxproc:deny=0x10"),
        _conf("jail:db1:maxproc:deny=16"),
    )
    BINARY_SUFFIX = C(
        "binary-suffix",
        INFO,
        "a k/m/g suffix is a power of 1024 even where the resource counts things",
        _conf("jail:db1:maxproc:deny=1k"),
        _conf("jail:db1:maxproc:deny=1024"),
    )
    NUMERIC_ID_FORMAT = C(
        "numeric-id-format",
        WARNING,
        "rctl(8) reads the uid with strtod(3): it means another number than it shows",
        _conf("user:1e3:maxproc:deny=10"),
        _conf("user:1000:maxproc:deny=10"),
    )
    JAIL_ID_NOT_JID = C(
        "jail-id-not-jid",
        WARNING,
        "jail subjects are names: jail:3 is the jail named 3, not jid 3",
        _conf("jail:3:maxproc:deny=10"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    MEMORYUSE_DENY_PAGES_OUT = C(
        "memoryuse-deny-pages-out",
        INFO,
        "memoryuse:deny refuses nothing: the VM pages memory out",
        _conf("jail:db1:memoryuse:deny=1g"),
        _conf("jail:db1:vmemoryuse:deny=1g"),
    )
    PCPU_DENY_THROTTLES = C(
        "pcpu-deny-throttles",
        INFO,
        "pcpu:deny puts processes to sleep; nothing is refused",
        _conf("jail:db1:pcpu:deny=50"),
        _conf("jail:db1:pcpu:log=50"),
    )
    PROCESS_RULE_TRANSIENT = C(
        "process-rule-transient",
        INFO,
        "a process rule dies with its process and cannot be kept in a policy",
        _conf("process:1:maxproc:deny=10"),
        _conf("user:www:maxproc:deny=10"),
    )
    UNKNOWN_JAIL = C(
        "unknown-jail",
        WARNING,
        "no jail of that name runs now (the kernel applies the rule when one starts)",
        _conf("jail:db9:maxproc:deny=10", resolve=True),
        _conf("jail:db1:maxproc:deny=10", resolve=True),
    )
    UNKNOWN_LOGINCLASS = C(
        "unknown-loginclass",
        WARNING,
        "login.conf(5) defines no such class",
        _conf("loginclass:nosuch:maxproc:deny=10", resolve=True),
        _conf("loginclass:daemon:maxproc:deny=10", resolve=True),
    )

    # --- rctl.conf as rc.d/rctl reads it (policy) -------------------------------------------
    CARRIAGE_RETURN = C(
        "carriage-return",
        ERROR,
        "a CRLF line: the carriage return becomes part of the rule",
        Example("jail:db1:maxproc:deny=10\r\n"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    CONF_NO_FINAL_NEWLINE = C(
        "conf-no-final-newline",
        ERROR,
        "the last line has no newline: rc.d/rctl's `while read` never applies it",
        Example("jail:db1:maxproc:deny=10"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    CONF_UNBALANCED_QUOTE = C(
        "conf-unbalanced-quote",
        ERROR,
        "an unbalanced quote stops xargs(1): no later rule is loaded at boot",
        _conf('jail:db1:maxproc:deny="10'),
        _conf("jail:db1:maxproc:deny=10"),
    )
    CONF_QUOTING = C(
        "conf-quoting",
        WARNING,
        "rc.d/rctl removes quotes and backslashes before rctl(8) sees the rule",
        _conf("jail:db1:maxproc:deny='10'"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    TRAILING_COMMENT = C(
        "trailing-comment",
        INFO,
        "text after the rule is ignored by rc.d/rctl (a comment is fine)",
        _conf("jail:db1:maxproc:deny=10 # web"),
        _conf("# web", "jail:db1:maxproc:deny=10"),
    )
    CONF_CUT_AT_BLANK = C(
        "conf-cut-at-blank",
        WARNING,
        "a blank inside the rule: rc.d/rctl reads only up to it",
        _conf("jail:db1:maxproc:deny= 10"),
        _conf("jail:db1:maxproc:deny=10"),
    )
    CONF_TRAILING_TEXT = C(
        "conf-trailing-text",
        WARNING,
        "text after the rule that is not a comment is silently dropped",
        _conf("jail:db1:maxproc:deny=10 jail:db2:maxproc:deny=10"),
        _conf("jail:db1:maxproc:deny=10", "jail:db2:maxproc:deny=10"),
    )
    GLOB_IN_CONF = C(
        "glob-in-conf",
        WARNING,
        "rctl.conf has no patterns: jail:web* names a jail called 'web*'",
        _conf("jail:web*:maxproc:deny=10"),
        _yaml("rules:\n  - jail:web*:maxproc:deny=10\n"),
    )

    # --- the YAML policy format (policy_yaml) ------------------------------------------------
    YAML_SYNTAX = C(
        "yaml-syntax",
        ERROR,
        "the file is not well-formed YAML",
        _yaml("rules:\n  - [unclosed\n"),
        _yaml("rules:\n  - jail:db1:maxproc:deny=10\n"),
    )
    YAML_TOO_LARGE = C(
        "yaml-too-large",
        ERROR,
        "more than 200,000 YAML nodes, counting what aliases expand to",
        _aliases(6),
        _aliases(4),
    )
    YAML_STRUCTURE = C(
        "yaml-structure",
        ERROR,
        "the document is not a mapping with a 'rules' list of rules",
        _yaml("- jail:db1:maxproc:deny=10\n"),
        _yaml("rules:\n  - jail:db1:maxproc:deny=10\n"),
    )
    UNKNOWN_KEY = C(
        "unknown-key",
        ERROR,
        "a key the policy format does not have",
        _yaml("rulez:\n  - jail:db1:maxproc:deny=10\n"),
        _yaml("rules:\n  - jail:db1:maxproc:deny=10\n"),
    )
    DUPLICATE_KEY = C(
        "duplicate-key",
        ERROR,
        "a key given twice in one mapping (YAML would keep only the last)",
        _yaml("rules:\n  - jail:a:maxproc:deny=1\nrules:\n  - jail:b:maxproc:deny=1\n"),
        _yaml("rules:\n  - jail:a:maxproc:deny=1\n  - jail:b:maxproc:deny=1\n"),
    )
    MISSING_KEY = C(
        "missing-key",
        ERROR,
        "a mapping without a key it needs ('rule', service 'name', max_runs 'within'...)",
        _yaml("rules:\n  - comment: web\n"),
        _yaml("rules:\n  - rule: jail:web:maxproc:deny=10\n    comment: web\n"),
    )
    ON_MATCH_NOT_DEVCTL = C(
        "on-match-not-devctl",
        ERROR,
        "on_match on a rule whose action sends no event (only devctl does)",
        _on_match("{signal: TERM}", action="log"),
        _on_match("{signal: TERM}"),
    )
    ON_MATCH_COMMAND = C(
        "on-match-command",
        ERROR,
        "on_match needs exactly one of run, service or signal",
        _on_match("{cooldown: 5m}"),
        _on_match("{signal: TERM, cooldown: 5m}"),
    )
    RUN_NOT_ARGV = C(
        "run-not-argv",
        ERROR,
        "run is a list of strings (an argv), never a shell string",
        _on_match("{run: service postgresql restart}"),
        _on_match("{run: [/usr/sbin/service, postgresql, restart]}"),
    )
    PLACEHOLDER_IN_PROGRAM = C(
        "placeholder-in-program",
        ERROR,
        "the program to run cannot come from an event",
        _on_match("{run: ['{jail}', restart]}"),
        _on_match("{run: [/bin/echo, '{jail}']}"),
    )
    RUN_RELATIVE_PROGRAM = C(
        "run-relative-program",
        WARNING,
        "the program is looked up in the daemon's PATH",
        _on_match("{run: [service, postgresql, restart]}"),
        _on_match("{run: [/usr/sbin/service, postgresql, restart]}"),
    )
    RUN_RELATIVE_PATH = C(
        "run-relative-path",
        ERROR,
        "the program is a relative path, which would depend on the daemon's directory",
        _on_match("{run: [bin/notify, '{jail}']}"),
        _on_match("{run: [/usr/local/bin/notify, '{jail}']}"),
    )
    BAD_PLACEHOLDER = C(
        "bad-placeholder",
        ERROR,
        "a malformed placeholder, or one with a format or conversion",
        _on_match("{run: [/bin/echo, '{pid']}"),
        _on_match("{run: [/bin/echo, '{pid}']}"),
    )
    UNKNOWN_PLACEHOLDER = C(
        "unknown-placeholder",
        ERROR,
        "a placeholder the event does not provide",
        _on_match("{run: [/bin/echo, '{jale}']}"),
        _on_match("{run: [/bin/echo, '{jail}']}"),
    )
    INVALID_SERVICE = C(
        "invalid-service",
        ERROR,
        "a service name or command that is not one word",
        _on_match("{service: {name: postgresql, command: '-rf'}}"),
        _on_match("{service: {name: postgresql, command: restart}}"),
    )
    INVALID_SIGNAL = C(
        "invalid-signal",
        ERROR,
        "not a signal name",
        _on_match("{signal: TREM}"),
        _on_match("{signal: TERM}"),
    )
    INVALID_DURATION = C(
        "invalid-duration",
        ERROR,
        "not a duration such as 30s, 10m, 1h (or not positive where it must be)",
        _on_match("{signal: TERM, cooldown: 5 parsecs}"),
        _on_match("{signal: TERM, cooldown: 5m}"),
    )
    INVALID_COUNT = C(
        "invalid-count",
        ERROR,
        "max_runs count is not a whole number >= 1",
        _on_match("{signal: TERM, max_runs: {count: 0, within: 1h}}"),
        _on_match("{signal: TERM, max_runs: {count: 3, within: 1h}}"),
    )
    INVALID_ACTION_NAME = C(
        "invalid-action-name",
        ERROR,
        "an on_match name that is not 1 to 64 letters, digits and _ . : -",
        _on_match("{name: restart db1, signal: TERM}"),
        _on_match("{name: restart-db1, signal: TERM}"),
    )

    # --- across the whole policy (lint's checks, rctlpolicy/checks/) -------------------------
    DUPLICATE_RULE = C(
        "duplicate-rule",
        WARNING,
        "the same rule twice, in one file or across files",
        _conf("jail:a:nthr:log=1", "jail:a:nthr:log=1"),
        _conf("jail:a:nthr:log=1", "jail:b:nthr:log=1"),
    )
    CONFLICTING_AMOUNTS = C(
        "conflicting-amounts",
        WARNING,
        "two deny (or throttle) amounts for one subject, resource and per",
        _conf("jail:a:nthr:deny=1", "jail:a:nthr:deny=2"),
        _conf("jail:a:nthr:deny=1", "jail:a:nthr:log=2"),
    )
    DEVCTL_WITHOUT_ON_MATCH = C(
        "devctl-without-on-match",
        WARNING,
        "nothing in the policy handles this devctl rule's events",
        _conf("jail:a:nthr:devctl=1"),
        _on_match("{signal: TERM}"),
    )
    JAIL_PATTERN_UNMATCHED = C(
        "jail-pattern-unmatched",
        WARNING,
        "a jail pattern that matches no running jail (lint --resolve)",
        Example("rules:\n  - jail:mail-*:maxproc:deny=10\n", "rules.yaml", resolve=True),
        Example("rules:\n  - jail:db*:maxproc:deny=10\n", "rules.yaml", resolve=True),
    )

    # --- the daemon's rules directory --------------------------------------------------------
    IO_ERROR = C(
        "io-error",
        ERROR,
        "a policy file or the rules directory could not be read",
        Example("jail:db1:maxproc:deny=\udcff10\n"),  # not UTF-8 on disk
        _conf("jail:db1:maxproc:deny=10"),
        Checker.DAEMON,
    )
    UNSAFE_FILE = C(
        "unsafe-file",
        ERROR,
        "a file that makes the daemon run commands is writable by others than root",
        _yaml("rules:\n  - rule: jail:a:nthr:devctl=1\n    on_match: {signal: TERM}\n", mode=0o666),
        _yaml("rules:\n  - rule: jail:a:nthr:devctl=1\n    on_match: {signal: TERM}\n"),
        Checker.DAEMON,
    )


#: Every registered code, in the order `Code` declares them.
ALL_CODES: tuple[DiagnosticCode, ...] = tuple(
    value for value in vars(Code).values() if isinstance(value, DiagnosticCode)
)
_BY_NAME = {str(code): code for code in ALL_CODES}


def code_named(text: str) -> DiagnosticCode | None:
    """The registered code of that name, None when there is none."""
    return _BY_NAME.get(text)
