"""FreeBSD's verdict on a rule, field by field: tables of examples from the spec.

Every subject (and rctl(8) alias), resource, action and per value has a valid example, and
every code semantics.py can emit has an example that names its column (1-based, in the rule
text) and what the help says; the meta-tests at the end fail when a table misses one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from corpus_host import CORPUS_HOST, corpus_cases, emitted_codes

import rctlpolicy.semantics
from rctlpolicy.grammar import SUBJECT, parse_rule_syntax
from rctlpolicy.model import (
    SUBJECT_ALIASES,
    Action,
    Filter,
    Resource,
    Rule,
    Severity,
    SubjectType,
)
from rctlpolicy.semantics.canonical import parse_canonical
from rctlpolicy.semantics.check import Layer, RuleCheck, check_filter, check_rule, sent_text
from rctlpolicy.semantics.problems import Problem
from rctlpolicy.semantics.resolver import OFFLINE, Resolver

K, R8 = Layer.KERNEL, Layer.RCTL8


def check(text: str, layer: Layer = R8, resolver: Resolver = CORPUS_HOST) -> RuleCheck:
    return check_rule(parse_rule_syntax(text), layer, resolver)


def column(result: RuleCheck, problem: Problem) -> int:
    """Where a caret goes for this problem: 1-based, in the rule text."""
    if problem.field is None:
        return 1
    return result.syntax.starts[problem.field] + problem.offset + 1


# --- valid rules: every subject, alias, resource, action and per -----------------------------

SUBJECTS = [
    ("process:1:maxproc:deny=10", R8, "process:1:maxproc:deny=10"),
    ("p:1:maxproc:deny=10", R8, "process:1:maxproc:deny=10"),
    ("P:1:maxproc:deny=10", R8, "process:1:maxproc:deny=10"),
    ("user:80:maxproc:deny=10", K, "user:80:maxproc:deny=10"),
    ("user:www:maxproc:deny=10", R8, "user:80:maxproc:deny=10"),
    ("u:root:maxproc:deny=10", R8, "user:0:maxproc:deny=10"),
    # A full name in another case is not an alias: sent as typed, the kernel accepts it.
    ("USER:www:maxproc:deny=10", R8, "user:80:maxproc:deny=10"),
    ("loginclass:daemon:maxproc:deny=10", K, "loginclass:daemon:maxproc:deny=10"),
    ("l:daemon:maxproc:deny=10", R8, "loginclass:daemon:maxproc:deny=10"),
    ("c:Staff:maxproc:deny=10", R8, "loginclass:Staff:maxproc:deny=10"),
    ("class:staff:maxproc:deny=10", R8, "loginclass:staff:maxproc:deny=10"),
    ("CLASS:staff:maxproc:deny=10", R8, "loginclass:staff:maxproc:deny=10"),
    ("jail:db1:maxproc:deny=10", K, "jail:db1:maxproc:deny=10"),
    ("j:db1:maxproc:deny=10", R8, "jail:db1:maxproc:deny=10"),
    ("Jail:DB1:maxproc:deny=10", K, "jail:DB1:maxproc:deny=10"),
    ("jail:web.www:maxproc:deny=10", R8, "jail:web.www:maxproc:deny=10"),
    ("user:4294967295:maxproc:deny=10", K, "user:-1:maxproc:deny=10"),
    ("user:80.7:maxproc:deny=10", R8, "user:80:maxproc:deny=10"),
]

RESOURCES = [
    ("jail:db1:cputime:sigxcpu=3600", "jail:db1:cputime:sigxcpu=3600"),
    ("jail:db1:datasize:deny=1g", "jail:db1:datasize:deny=1073741824"),
    ("user:www:stacksize:deny=8m", "user:80:stacksize:deny=8388608"),
    ("loginclass:daemon:coredumpsize:deny=0", "loginclass:daemon:coredumpsize:deny=0"),
    ("jail:db1:memoryuse:log=4g", "jail:db1:memoryuse:log=4294967296"),
    ("jail:db1:memorylocked:deny=64m", "jail:db1:memorylocked:deny=67108864"),
    ("user:www:maxproc:deny=100", "user:80:maxproc:deny=100"),
    ("jail:db1:openfiles:deny=65536", "jail:db1:openfiles:deny=65536"),
    ("u:www:vmemoryuse:deny=1g/process", "user:80:vmemoryuse:deny=1073741824/process"),
    ("jail:db1:pseudoterminals:deny=32", "jail:db1:pseudoterminals:deny=32"),
    ("jail:db1:swapuse:devctl=512m", "jail:db1:swapuse:devctl=536870912"),
    ("jail:db1:nthr:deny=2048", "jail:db1:nthr:deny=2048"),
    ("jail:db1:msgqqueued:deny=1024", "jail:db1:msgqqueued:deny=1024"),
    ("jail:db1:msgqsize:deny=1m", "jail:db1:msgqsize:deny=1048576"),
    ("jail:db1:nmsgq:deny=16", "jail:db1:nmsgq:deny=16"),
    ("jail:db1:nsem:deny=128", "jail:db1:nsem:deny=128"),
    ("jail:db1:nsemop:deny=64", "jail:db1:nsemop:deny=64"),
    ("jail:db1:nshm:deny=32", "jail:db1:nshm:deny=32"),
    ("jail:db1:shmsize:deny=256m", "jail:db1:shmsize:deny=268435456"),
    ("jail:db1:wallclock:sigterm=86400", "jail:db1:wallclock:sigterm=86400"),
    ("jail:db1:pcpu:deny=150", "jail:db1:pcpu:deny=150"),
    ("jail:db1:readbps:throttle=10m", "jail:db1:readbps:throttle=10485760"),
    ("jail:db1:writebps:throttle=5m", "jail:db1:writebps:throttle=5242880"),
    ("jail:db1:readiops:throttle=1000", "jail:db1:readiops:throttle=1000"),
    ("JAIL:db1:WriteIOPS:log=500", "jail:db1:writeiops:log=500"),
]

ACTIONS = [
    ("jail:db1:maxproc:sighup=100", "jail:db1:maxproc:sighup=100"),
    ("jail:db1:maxproc:sigint=100", "jail:db1:maxproc:sigint=100"),
    ("jail:db1:maxproc:sigquit=100", "jail:db1:maxproc:sigquit=100"),
    ("jail:db1:maxproc:sigill=100", "jail:db1:maxproc:sigill=100"),
    ("jail:db1:maxproc:sigtrap=100", "jail:db1:maxproc:sigtrap=100"),
    ("jail:db1:maxproc:sigabrt=100", "jail:db1:maxproc:sigabrt=100"),
    ("jail:db1:maxproc:sigemt=100", "jail:db1:maxproc:sigemt=100"),
    ("jail:db1:maxproc:sigfpe=100", "jail:db1:maxproc:sigfpe=100"),
    ("jail:db1:maxproc:SIGKILL=100", "jail:db1:maxproc:sigkill=100"),
    ("jail:db1:maxproc:sigbus=100", "jail:db1:maxproc:sigbus=100"),
    ("jail:db1:maxproc:sigsegv=100", "jail:db1:maxproc:sigsegv=100"),
    ("jail:db1:maxproc:sigsys=100", "jail:db1:maxproc:sigsys=100"),
    ("jail:db1:maxproc:sigpipe=100", "jail:db1:maxproc:sigpipe=100"),
    ("jail:db1:maxproc:sigalrm=100", "jail:db1:maxproc:sigalrm=100"),
    ("jail:db1:maxproc:SigTerm=100", "jail:db1:maxproc:sigterm=100"),
    ("jail:db1:maxproc:sigurg=100", "jail:db1:maxproc:sigurg=100"),
    ("jail:db1:maxproc:sigstop=100", "jail:db1:maxproc:sigstop=100"),
    ("jail:db1:maxproc:sigtstp=100", "jail:db1:maxproc:sigtstp=100"),
    ("jail:db1:maxproc:sigchld=100", "jail:db1:maxproc:sigchld=100"),
    ("jail:db1:maxproc:sigttin=100", "jail:db1:maxproc:sigttin=100"),
    ("jail:db1:maxproc:sigttou=100", "jail:db1:maxproc:sigttou=100"),
    ("jail:db1:maxproc:sigio=100", "jail:db1:maxproc:sigio=100"),
    ("jail:db1:cputime:sigxcpu=3600", "jail:db1:cputime:sigxcpu=3600"),
    ("jail:db1:maxproc:sigxfsz=100", "jail:db1:maxproc:sigxfsz=100"),
    ("jail:db1:maxproc:sigvtalrm=100", "jail:db1:maxproc:sigvtalrm=100"),
    ("jail:db1:maxproc:sigprof=100", "jail:db1:maxproc:sigprof=100"),
    ("jail:db1:maxproc:sigwinch=100", "jail:db1:maxproc:sigwinch=100"),
    ("jail:db1:maxproc:siginfo=100", "jail:db1:maxproc:siginfo=100"),
    ("jail:db1:maxproc:sigusr1=100", "jail:db1:maxproc:sigusr1=100"),
    ("jail:db1:maxproc:sigusr2=100", "jail:db1:maxproc:sigusr2=100"),
    ("jail:db1:maxproc:sigthr=100", "jail:db1:maxproc:sigthr=100"),
    ("jail:db1:maxproc:deny=100", "jail:db1:maxproc:deny=100"),
    ("jail:db1:maxproc:log=100", "jail:db1:maxproc:log=100"),
    ("jail:db1:maxproc:devctl=100", "jail:db1:maxproc:devctl=100"),
    ("jail:db1:readbps:Throttle=1m", "jail:db1:readbps:throttle=1048576"),
    # rctl(8) always writes "=": "deny/10" is action deny, amount 10.
    ("jail:db1:maxproc:deny/100", "jail:db1:maxproc:deny=100"),
]

PERS = [
    ("jail:db1:maxproc:deny=10/process", "jail:db1:maxproc:deny=10/process"),
    ("jail:db1:maxproc:deny=10/user", "jail:db1:maxproc:deny=10/user"),
    ("jail:db1:maxproc:deny=10/loginclass", "jail:db1:maxproc:deny=10/loginclass"),
    # /per is printed only when it differs from the subject.
    ("jail:db1:maxproc:deny=10/jail", "jail:db1:maxproc:deny=10"),
    ("user:80:maxproc:deny=10/JAIL", "user:80:maxproc:deny=10/jail"),
    ("jail:db1:maxproc:deny=10/", "jail:db1:maxproc:deny=10"),
]

AMOUNTS = [
    ("jail:db1:vmemoryuse:deny=7e", R8, "jail:db1:vmemoryuse:deny=8070450532247928832"),
    ("jail:db1:vmemoryuse:deny=10kb", R8, "jail:db1:vmemoryuse:deny=10240"),
    ("jail:db1:vmemoryuse:deny=+1G", R8, "jail:db1:vmemoryuse:deny=1073741824"),
    ("jail:db1:vmemoryuse:deny= 10", R8, "jail:db1:vmemoryuse:deny=10"),
    ("jail:db1:vmemoryuse:deny=-0", R8, "jail:db1:vmemoryuse:deny=0"),
    ("user:80:maxproc:deny=9223372036854775807", K, "user:80:maxproc:deny=9223372036854775807"),
    ("user:80:cputime:log=9223372036854", K, "user:80:cputime:log=9223372036854"),
    ("jail:db1:cputime:log=8t", R8, "jail:db1:cputime:log=8796093022208"),
    # The kernel's strtoul: leading blanks and a sign, and wrap-around.
    ("user:80:maxproc:deny= +10", K, "user:80:maxproc:deny=10"),
    ("user:80:maxproc:deny=010", K, "user:80:maxproc:deny=10"),
    ("user:80:maxproc:deny=-18446744073709551615", K, "user:80:maxproc:deny=1"),
    ("user:80:maxproc:deny=0", K, "user:80:maxproc:deny=0"),
    ("user:80:readbps:throttle=0", K, "user:80:readbps:throttle=0"),
]

VALID = [
    *SUBJECTS,
    *((text, R8, canonical) for text, canonical in RESOURCES),
    *((text, R8, canonical) for text, canonical in ACTIONS),
    *((text, R8, canonical) for text, canonical in PERS),
    *AMOUNTS,
]


@pytest.mark.parametrize(("text", "layer", "canonical"), VALID, ids=[v[0] for v in VALID])
def test_valid_rule(text: str, layer: Layer, canonical: str) -> None:
    result = check(text, layer)
    assert result.error is None, result.problems
    assert result.rule is not None
    assert result.ok
    assert result.rule.canonical == canonical
    # The canonical form is what the kernel reads back unchanged.
    again = check(canonical, K)
    assert again.rule == result.rule


def test_offline_lint_keeps_user_names() -> None:
    result = check("user:www:maxproc:deny=10", R8, OFFLINE)
    assert result.rule is not None
    assert result.rule.subject_id == "www"
    assert result.error is None


def test_rctl_n_sends_user_names_as_typed() -> None:
    syntax = parse_rule_syntax("user:www:maxproc:deny=10")
    result = check_rule(syntax, R8, CORPUS_HOST, resolve_users=False)
    assert result.error is not None
    assert (result.error.code, result.error.errno) == ("invalid-id", "EINVAL")


# --- errors: FreeBSD's verdict, where the caret goes, and what the help says ---------------


@dataclass(frozen=True, slots=True)
class Bad:
    text: str
    column: int
    code: str
    errno: str
    help: str
    layer: Layer = R8
    resolver: Resolver = CORPUS_HOST


LOGINCLASS_33 = "c" * 33
JAIL_256 = "j" * 256

ERRORS = [
    # Unknown words, with the name people borrow from elsewhere.
    Bad("jail:db1:memoryuze:deny=8g", 10, "unknown-resource", "EINVAL", "'memoryuse'"),
    Bad("jail:db1:nproc:deny=100", 10, "unknown-resource", "EINVAL", "'maxproc'"),
    Bad("jail:db1:vmem:deny=1g", 10, "unknown-resource", "EINVAL", "'vmemoryuse'"),
    Bad("jail:db1:nofile:deny=1024", 10, "unknown-resource", "EINVAL", "'openfiles'"),
    Bad("jail:db1: maxproc:deny=1", 10, "unknown-resource", "EINVAL", "remove the blanks", K),
    Bad("pid:1:maxproc:deny=10", 1, "unknown-subject", "EINVAL", "'process'"),
    Bad(" jail:db1:maxproc:deny=1", 1, "unknown-subject", "EINVAL", "remove the blanks"),
    Bad("group:wheel:maxproc:deny=10", 1, "unknown-subject", "EINVAL", "no group subject"),
    Bad("g:wheel:maxproc:deny=10", 1, "unknown-subject", "EINVAL", "no group subject"),
    Bad("jail:db1:maxproc:sigcont=1", 18, "unknown-action", "EINVAL", "sigcont (19)"),
    Bad("jail:db1:maxproc:sig9=1", 18, "unknown-action", "EINVAL", "'sigkill'"),
    Bad("jail:db1:maxproc:sig99=1", 18, "unknown-action", "EINVAL", "by name, e.g. sigterm"),
    Bad("jail:db1:maxproc:kill=1", 18, "unknown-action", "EINVAL", "'sigkill'"),
    Bad("jail:db1:maxproc:warn=1", 18, "unknown-action", "EINVAL", "'log'"),
    Bad("jail:db1:maxproc:x:deny=1", 18, "unknown-action", "EINVAL", "four ':'-separated"),
    Bad("jail:db1:maxproc:deny=10/db1", 26, "unknown-per", "EINVAL", "not an id"),
    Bad("jail:db1:maxproc:deny=10/u", 26, "unknown-per", "EINVAL", "write 'user'"),
    Bad("jail:db1:maxproc:deny=10/g", 26, "unknown-per", "EINVAL", "no group subject"),
    Bad("jail:db1:maxproc:deny=10/user/x", 26, "unknown-per", "EINVAL", "last field"),
    Bad("jail:db1:maxproc:deny=10/usr", 26, "unknown-per", "EINVAL", "'user'"),
    # What the kernel cannot do, with the alternative.
    Bad("jail:db1:cputime:deny=3600", 18, "deny-not-supported", "EOPNOTSUPP", "sigxcpu"),
    Bad("jail:db1:wallclock:deny=3600", 20, "deny-not-supported", "EOPNOTSUPP", "sigterm"),
    Bad("jail:db1:readbps:deny=10m", 18, "deny-not-supported", "EOPNOTSUPP", "use throttle"),
    Bad("jail:db1:maxproc:throttle=10", 18, "throttle-not-supported", "EOPNOTSUPP", "readbps"),
    Bad("jail:db1:pcpu:throttle=50", 15, "throttle-not-supported", "EOPNOTSUPP", "pcpu:deny"),
    Bad("jail:db1:swapuse:deny=1g/process", 26, "per-process-not-supported", "EOPNOTSUPP", "/jail"),
    # Without a per the subject's own type is the per: the caret goes to the subject.
    Bad("process:1:swapuse:deny=1g", 1, "per-process-not-supported", "EOPNOTSUPP", "/user"),
    # Amounts as people write them.
    Bad("jail:db1:memoryuse:deny=1.5g", 25, "invalid-amount", "RCTL8", "write 1536m"),
    Bad("jail:db1:maxproc:deny=2.5", 23, "invalid-amount", "RCTL8", "whole numbers"),
    Bad("jail:db1:cputime:log=1h", 22, "invalid-amount", "RCTL8", "plain seconds: write 3600"),
    Bad("jail:db1:wallclock:log=2days", 24, "invalid-amount", "RCTL8", "write 172800"),
    Bad("jail:db1:maxproc:log=30s", 22, "invalid-amount", "RCTL8", "no time units"),
    Bad("jail:db1:pcpu:deny=50%", 20, "invalid-amount", "RCTL8", "without '%': 50"),
    Bad("jail:db1:maxproc:deny=50%", 23, "invalid-amount", "RCTL8", "without '%': 50"),
    Bad("jail:db1:maxproc:deny=-1", 23, "invalid-amount", "RCTL8", "use 0"),
    Bad("jail:db1:maxproc:deny=10 ", 25, "invalid-amount", "RCTL8", "remove the blank"),
    Bad("jail:db1:maxproc:deny=1x", 24, "invalid-amount", "RCTL8", "optional suffix k"),
    Bad("jail:db1:maxproc:deny=08", 24, "invalid-amount", "RCTL8", "optional suffix k"),
    Bad("jail:db1:maxproc:deny=16e", 23, "amount-out-of-range", "RCTL8", "7e"),
    Bad("jail:db1:cputime:log=9t", 22, "amount-out-of-range", "ERANGE", "9223372036854"),
    Bad("user:80:maxproc:deny=1k", 22, "invalid-amount", "EINVAL", "rctl(8) feature", K),
    Bad("user:80:maxproc:deny=10 ", 22, "invalid-amount", "EINVAL", "plain decimal", K),
    Bad("user:80:maxproc:deny=-1", 22, "amount-out-of-range", "ERANGE", "0 to", K),
    Bad("user:80:cputime:log=9223372036855", 21, "amount-out-of-range", "ERANGE", "x10^6", K),
    # Missing fields, each named.
    Bad("jail", 5, "missing-field", "RCTL8", "subject:subject-id:resource"),
    Bad("", 1, "missing-field", "RCTL8", "subject:subject-id:resource"),
    Bad("::maxproc:deny=10", 1, "missing-field", "EINVAL", "start with process"),
    Bad(":db1:maxproc:deny=10", 1, "missing-field", "EINVAL", "e.g. jail:db1"),
    Bad("jail::maxproc:deny=10", 6, "missing-field", "EINVAL", "give the pid"),
    Bad("jail:db1", 9, "missing-field", "EINVAL", "name a resource"),
    Bad("jail:db1:maxproc", 17, "missing-field", "EINVAL", "name an action"),
    Bad("jail:db1:maxproc:deny", 22, "missing-field", "EINVAL", "deny=512m"),
    Bad("jail:db1:maxproc:deny=", 23, "missing-field", "EINVAL", "deny=512m"),
    # Subject ids.
    Bad("user:nosuch:maxproc:deny=1", 6, "unknown-user", "RCTL8", "numeric uid"),
    Bad("g:nosuch:maxproc:deny=1", 3, "unknown-group", "RCTL8", "numeric gid"),
    Bad("user:in valid:maxproc:deny=1", 6, "invalid-user", "RCTL8", "letters, digits", R8, OFFLINE),
    Bad("g:in valid:maxproc:deny=1", 3, "invalid-group", "RCTL8", "letters, digits", R8, OFFLINE),
    Bad("user:80x:maxproc:deny=1", 6, "invalid-id", "RCTL8", "plain decimal number"),
    Bad("user:www:maxproc:deny=1", 6, "invalid-id", "EINVAL", "rctl(8) resolves names", K),
    Bad("process:abc:maxproc:deny=1", 9, "invalid-id", "EINVAL", "take a pid"),
    Bad("process:99999:maxproc:deny=1", 9, "no-such-process", "ESRCH", "running process"),
    # Lengths: the caret goes to the first byte over the limit.
    Bad(f"loginclass:{LOGINCLASS_33}:maxproc:deny=1", 44, "name-too-long", "ENAMETOOLONG", "32"),
    Bad(f"jail:{JAIL_256}:maxproc:deny=1", 261, "name-too-long", "ENAMETOOLONG", "255 bytes"),
    Bad("jail:" + "x" * 4100 + ":maxproc:deny=1", 1, "rule-too-long", "E2BIG", "4095 bytes"),
]


@pytest.mark.parametrize("bad", ERRORS, ids=[b.text[:60] or "<empty>" for b in ERRORS])
def test_error(bad: Bad) -> None:
    result = check(bad.text, bad.layer, bad.resolver)
    assert result.rule is None
    error = result.error
    assert error is not None
    assert error.severity is Severity.ERROR
    assert (error.code, error.errno) == (bad.code, bad.errno), error
    assert column(result, error) == bad.column
    assert error.suggestion is not None
    assert bad.help in error.suggestion
    assert error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::maxproc:deny=10", "missing subject"),
        ("jail::maxproc:deny=10", "missing subject-id"),
        ("jail:db1", "missing resource"),
        ("jail:db1::deny=10", "missing resource"),
        ("jail:db1:maxproc", "missing action"),
        ("jail:db1:maxproc:=10", "missing action"),
        ("jail:db1:maxproc:deny", "missing amount"),
        ("jail:db1:maxproc:deny=/user", "missing amount"),
    ],
)
def test_missing_fields_are_named(text: str, message: str) -> None:
    error = check(text).error
    assert error is not None
    assert (error.code, error.message) == ("missing-field", message)


def test_first_error_is_freebsds_and_the_other_fields_are_reported_too() -> None:
    result = check("process:99999:bogus:deny=1", K)
    assert result.error is not None
    assert (result.error.code, result.error.errno) == ("no-such-process", "ESRCH")
    result = check("user:80:nosuch:deny=-1", K)
    codes = [p.code for p in result.problems]
    assert codes == ["unknown-resource", "amount-out-of-range"]
    assert result.error is not None
    assert result.error.errno == "EINVAL"


# --- warnings and notes on valid rules ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    column: int
    code: str
    severity: Severity
    says: str


NOTES = [
    Note("jail:db1:maxproc:deny=010", 23, "octal-amount", Severity.WARNING, "meant 10"),
    Note("jail:db1:maxproc:deny=0x1e", 23, "hex-amount", Severity.WARNING, "write 30"),
    Note("jail:db1:cputime:log=1k", 22, "binary-suffix", Severity.INFO, "1024 seconds"),
    Note("jail:db1:maxproc:deny=1k", 23, "binary-suffix", Severity.INFO, "1024 count"),
    Note("user:80.5:maxproc:deny=1", 6, "numeric-id-format", Severity.WARNING, "write 80"),
    Note("user:0x50:maxproc:deny=1", 6, "numeric-id-format", Severity.WARNING, "means user 80"),
    Note("user:4294967296:maxproc:deny=1", 6, "numeric-id-format", Severity.WARNING, "user 0"),
    Note("u:4294967295:maxproc:deny=1", 3, "numeric-id-format", Severity.WARNING, "user -1"),
    Note("jail:3:maxproc:deny=10", 6, "jail-id-not-jid", Severity.WARNING, "jls"),
    Note("jail:0:maxproc:deny=10", 6, "jail-id-not-jid", Severity.WARNING, "jail:0 is the host"),
    Note("jail:db1:memoryuse:deny=8g", 20, "memoryuse-deny-pages-out", Severity.INFO, "vmemoryuse"),
    Note("jail:db1:pcpu:deny=50", 15, "pcpu-deny-throttles", Severity.INFO, "put to sleep"),
    Note("process:1:maxproc:deny=10", 1, "process-rule-transient", Severity.INFO, "jail instead"),
    Note("jail:web9:maxproc:deny=10", 6, "unknown-jail", Severity.WARNING, "jls name"),
    Note("loginclass:staf:maxproc:deny=10", 12, "unknown-loginclass", Severity.WARNING, "cap_mkdb"),
]


@pytest.mark.parametrize("note", NOTES, ids=[n.text for n in NOTES])
def test_note(note: Note) -> None:
    result = check(note.text)
    assert result.rule is not None
    assert result.error is None
    (found,) = [p for p in result.problems if p.code == note.code]
    assert found.severity is note.severity
    assert column(result, found) == note.column
    assert note.says in f"{found.message} {found.suggestion}"
    assert found.errno is None


def test_notes_can_be_left_out() -> None:
    syntax = parse_rule_syntax("process:1:memoryuse:deny=010")
    assert check_rule(syntax, R8, CORPUS_HOST).problems
    assert check_rule(syntax, R8, CORPUS_HOST, notes=False).problems == ()


def test_no_amount_warnings_at_the_kernel_layer() -> None:
    # The kernel reads 010 as ten: nothing surprising to say.
    assert check("user:80:maxproc:deny=010", K).problems == ()


@pytest.mark.parametrize(
    "text", ["jail:db1:maxproc:deny=10", "user:www:vmemoryuse:deny=1g", "jail:db1:readbps:log=1m"]
)
def test_plain_rules_get_no_notes(text: str) -> None:
    assert check(text).problems == ()


# --- filters and what rctl(8) sends ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "layer", "expected"),
    [
        (":", K, Filter()),
        ("user:www", R8, Filter(SubjectType.USER, "80")),
        ("u:80:maxproc", R8, Filter(SubjectType.USER, "80", Resource.MAXPROC)),
        ("user:::=/user", K, Filter(SubjectType.USER, per=SubjectType.USER)),
        ("::cputime:log=10", K, Filter(resource=Resource.CPUTIME, action=Action.LOG, amount=10)),
        (
            "jail:db1:maxproc:deny=1k/process",
            R8,
            Filter(
                SubjectType.JAIL,
                "db1",
                Resource.MAXPROC,
                Action.DENY,
                1024,
                SubjectType.PROCESS,
            ),
        ),
    ],
)
def test_filter(text: str, layer: Layer, expected: Filter) -> None:
    result = check_filter(parse_rule_syntax(text), layer, CORPUS_HOST)
    assert result.error is None
    assert result.filter == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [("user:80:nosuch", "unknown-resource"), (":80", "missing-field"), ("user", "missing-field")],
)
def test_bad_filter(text: str, code: str) -> None:
    result = check_filter(parse_rule_syntax(text), R8, CORPUS_HOST)
    assert result.filter is None
    assert result.error is not None
    assert result.error.code == code


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("u:www:maxproc:deny=1k", "user:80:maxproc:deny=1024"),
        ("u:www:maxproc:deny=1k/", "user:80:maxproc:deny=1024/"),
        ("j:db1:maxproc:deny/10", "jail:db1:maxproc:deny=10"),
        ("user:www", "user:80:"),
        ("loginclass:", "loginclass::"),
        ("user:nosuch:maxproc:deny=1", None),
    ],
)
def test_sent_text(text: str, sent: str | None) -> None:
    syntax = parse_rule_syntax(text)
    assert sent_text(syntax, check_rule(syntax, R8, CORPUS_HOST)) == sent


# --- the tables cover everything --------------------------------------------------------------

#: What the f-string codes in semantics.py expand to.
CODE_TEMPLATES = {
    "unknown-{}": {"unknown-resource", "unknown-action", "unknown-user", "unknown-group"},
    "invalid-{}": {"invalid-user", "invalid-group"},
}


def _possible_codes() -> set[str]:
    codes: set[str] = set()
    for code in emitted_codes(rctlpolicy.semantics):
        if "{}" in code:
            assert code in CODE_TEMPLATES, f"say what {code!r} expands to in CODE_TEMPLATES"
            codes |= CODE_TEMPLATES[code]
        else:
            codes.add(code)
    return codes


def _valid_rules() -> list[tuple[str, Rule]]:
    rules = []
    for text, layer, _ in VALID:
        result = check(text, layer)
        assert result.rule is not None
        rules.append((text, result.rule))
    return rules


def test_every_subject_alias_resource_action_and_per_has_an_example() -> None:
    rules = _valid_rules()
    typed_subjects = {parse_rule_syntax(text).fields[SUBJECT] or "" for text, _ in rules}
    typed_pers = {parse_rule_syntax(text).fields[5] for text, _ in rules}
    assert set(SubjectType) <= {rule.subject for _, rule in rules}
    assert set(SubjectType) <= {SubjectType(p.lower()) for p in typed_pers if p}
    assert set(SUBJECT_ALIASES) - {"g"} <= {s.lower() for s in typed_subjects}
    assert set(Resource) == {rule.resource for _, rule in rules}
    assert set(Action) == {rule.action for _, rule in rules}
    # "g" (group) is an alias too: the kernel refuses what it expands to.
    assert any(bad.text.startswith("g:") for bad in ERRORS)


def test_every_code_has_an_example() -> None:
    possible = _possible_codes()
    shown = {bad.code for bad in ERRORS} | {note.code for note in NOTES}
    assert possible - shown == set(), "codes without an example"
    assert shown - possible == set(), "examples of codes semantics.py never emits"


def test_every_errno_has_an_example() -> None:
    documented = {"EINVAL", "ESRCH", "ENAMETOOLONG", "ERANGE", "EOPNOTSUPP", "E2BIG", "RCTL8"}
    assert {bad.errno for bad in ERRORS} == documented


def test_codes_are_kebab_case() -> None:
    for code in _possible_codes():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", code), code


# --- the fast reader of kernel listings ---------------------------------------------------------


def test_parse_canonical_agrees_with_the_kernel_layer_on_the_corpus() -> None:
    canonicals = {case["canonical"] for case in corpus_cases()}
    hits = 0
    for text in sorted(c for c in canonicals if c):
        slow = check_rule(parse_rule_syntax(text), Layer.KERNEL, OFFLINE, notes=False).rule
        fast = parse_canonical(text)
        assert fast in (slow, None), text
        hits += fast is not None
    # Only negative uids (printed for uids >= 2^31) take the long way.
    long_way = {c for c in canonicals if c and c.startswith("user:-")}
    assert long_way == {"user:-1:maxproc:deny=1", "user:-2147483648:maxproc:deny=1"}
    assert hits == len([c for c in canonicals if c]) - len(long_way)


@pytest.mark.parametrize(
    "text",
    [
        "USER:80:maxproc:deny=1",  # the kernel prints names in lowercase
        "user:80:maxproc:deny=01",  # no leading zeros
        "user:080:maxproc:deny=1",
        "user:-1:maxproc:deny=1",  # a uid >= 2^31: the grammar handles it
        "user:80:maxproc:deny=1/user",  # /per equal to the subject is never printed
        "user:80:cputime:deny=1",  # never held by the kernel (EOPNOTSUPP)
        "user:80:maxproc:throttle=1",
        "jail:a:swapuse:deny=1/process",
        "user:80:cputime:log=9223372036855",  # out of range (ERANGE)
        "user:80:bogus:deny=1",
        "jail:" + "j" * 256 + ":maxproc:deny=1",
    ],
)
def test_parse_canonical_leaves_everything_else_to_the_grammar(text: str) -> None:
    assert parse_canonical(text) is None
