"""Policy files -> Policy: rctl.conf as rc.d/rctl reads it, rctlpolicy's YAML, and the files
on disk. Every finding is checked at its line and column in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from corpus_host import emitted_codes

import rctlpolicy.onmatch
import rctlpolicy.policy_conf
import rctlpolicy.policy_yaml
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.files import (
    PolicyReadError,
    UnsafeFileError,
    check_safe_ownership,
    is_editor_droppings,
    policy_paths,
    read_policy_files,
)
from rctlpolicy.model import Action, Resource, Rule, Severity, SubjectType
from rctlpolicy.onmatch import PLACEHOLDERS, OnMatch, RunLimit
from rctlpolicy.policy import (
    LoadedPolicy,
    PolicyFile,
    expand_jail_patterns,
    jail_pattern_matches,
    load_policy,
)
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation


def load(path: str, text: str) -> LoadedPolicy:
    return load_policy([PolicyFile(path, text)])


def found(loaded: LoadedPolicy, code: str) -> Diagnostic:
    matches = [d for d in loaded.diagnostics if d.code == code]
    assert len(matches) == 1, loaded.diagnostics
    return matches[0]


def at(diagnostic: Diagnostic) -> tuple[int, int]:
    return diagnostic.line, diagnostic.column


# --- rctl.conf ------------------------------------------------------------------------------

CONF = """\
# /etc/rctl.conf for the database host

jail:db1:memoryuse:deny=8g
\tuser:www:maxproc:deny=100   # the web server
  loginclass:daemon:openfiles:deny=4096
"""


def test_conf_rules_and_where_they_are() -> None:
    loaded = load("rctl.conf", CONF)
    assert loaded.ok
    assert [r.canonical for r in loaded.policy.rules] == [
        "jail:db1:memoryuse:deny=8589934592",
        "user:www:maxproc:deny=100",
        "loginclass:daemon:openfiles:deny=4096",
    ]
    assert [r.source for r in loaded.policy.rules] == [
        SourceLocation("rctl.conf", 3, 1),
        SourceLocation("rctl.conf", 4, 2),
        SourceLocation("rctl.conf", 5, 3),
    ]
    assert [r.text for r in loaded.policy.rules][1] == "user:www:maxproc:deny=100"
    assert loaded.policy.files == ("rctl.conf",)
    # Only notes: the memoryuse:deny remark and the comment after a rule.
    assert {d.severity for d in loaded.diagnostics} == {Severity.INFO}


def test_conf_error_column_after_tabs_and_blanks() -> None:
    loaded = load("a.conf", "\t  jail:db1:memoryuze:deny=8g\n")
    error = found(loaded, "unknown-resource")
    assert at(error) == (1, 13)
    assert error.source_line == "\t  jail:db1:memoryuze:deny=8g"
    assert error.width == len("memoryuze")
    assert error.suggestion == "did you mean 'memoryuse'?"
    assert not loaded.ok
    assert loaded.policy.rules == ()


def test_conf_comment_after_a_rule_is_a_note() -> None:
    loaded = load("a.conf", "jail:db1:maxproc:deny=10 # ten\n")
    note = found(loaded, "trailing-comment")
    assert note.severity is Severity.INFO
    assert at(note) == (1, 26)
    assert note.width == len("# ten")


def test_conf_text_after_a_rule_is_dropped() -> None:
    loaded = load("a.conf", "jail:db1:maxproc:deny=10 jail:db2:maxproc:deny=10\n")
    warning = found(loaded, "conf-trailing-text")
    assert warning.severity is Severity.WARNING
    assert at(warning) == (1, 26)
    # rc.d/rctl loads the first word, so the policy does too.
    assert [r.canonical for r in loaded.policy.rules] == ["jail:db1:maxproc:deny=10"]


def test_conf_a_blank_inside_a_rule_cuts_it() -> None:
    loaded = load("a.conf", "jail:db1:maxproc:deny= 10\n")
    assert at(found(loaded, "missing-field")) == (1, 23)
    cut = found(loaded, "conf-cut-at-blank")
    assert at(cut) == (1, 24)
    assert cut.suggestion is not None
    assert "remove the blanks" in cut.suggestion


def test_conf_crlf() -> None:
    loaded = load("a.conf", "jail:db1:maxproc:deny=10\r\n")
    error = found(loaded, "carriage-return")
    assert error.severity is Severity.ERROR
    assert at(error) == (1, 25)
    assert error.suggestion == "convert the file to Unix line endings"
    assert not loaded.ok


def test_conf_quotes_and_backslashes() -> None:
    loaded = load("a.conf", 'jail:db1:openfiles:deny="10"\n')
    warning = found(loaded, "conf-quoting")
    assert at(warning) == (1, 1)
    assert warning.width == len('jail:db1:openfiles:deny="10"')
    loaded = load("a.conf", "jail:db1:maxproc:deny=1\\0\n")
    assert at(found(loaded, "conf-quoting")) == (1, 1)


def test_conf_jail_glob_is_literal() -> None:
    loaded = load("a.conf", "jail:web-*:maxproc:deny=10\n")
    warning = found(loaded, "glob-in-conf")
    assert warning.severity is Severity.WARNING
    assert at(warning) == (1, 6)
    assert "YAML" in (warning.suggestion or "")
    (rule,) = loaded.policy.rules
    assert rule.rule.subject_id == "web-*"
    assert rule.jail_pattern is None


def test_conf_lines_are_counted_across_comments_and_blanks() -> None:
    text = "# one\n\n# three\n   \njail:db1:bogus:deny=1\n"
    assert at(found(load("a.conf", text), "unknown-resource")) == (5, 10)


def test_rules_suffix_is_rctl_conf_format() -> None:
    loaded = load("db.rules", "jail:db1:maxproc:deny=10\n")
    assert [r.canonical for r in loaded.policy.rules] == ["jail:db1:maxproc:deny=10"]


# --- YAML -----------------------------------------------------------------------------------

YAML = """\
rules:
  - jail:db1:maxproc:deny=100
  - "j:db1:vmemoryuse:deny=16g"
  - rule: jail:pgdb:swapuse:devctl=512m
    comment: PostgreSQL leaks; restart it before the host swaps
    on_match:
      service: {name: postgresql, command: restart}
      cooldown: 10m
      max_runs: {count: 3, within: 1d}
      timeout: 2m
  - rule: jail:pgdb:memoryuse:devctl=12g
    on_match:
      run: [/usr/bin/logger, -t, rctlpolicy, "{jail} over {resource}: pid {pid}"]
  - rule: jail:web-*:maxproc:devctl=500
    on_match:
      signal: term
"""


def test_yaml_rules() -> None:
    loaded = load("rules/db.yaml", YAML)
    assert loaded.diagnostics == ()
    rules = loaded.policy.rules
    assert [r.canonical for r in rules] == [
        "jail:db1:maxproc:deny=100",
        "jail:db1:vmemoryuse:deny=17179869184",
        "jail:pgdb:swapuse:devctl=536870912",
        "jail:pgdb:memoryuse:devctl=12884901888",
        "jail:web-*:maxproc:devctl=500",
    ]
    assert [(r.source.line, r.source.column) for r in rules] == [
        (2, 5),
        (3, 6),
        (4, 11),
        (11, 11),
        (14, 11),
    ]
    assert rules[2].comment == "PostgreSQL leaks; restart it before the host swaps"
    assert rules[2].on_match == OnMatch(
        service=("postgresql", "restart"),
        cooldown=600.0,
        max_runs=RunLimit(3, 86400.0),
        timeout=120.0,
    )
    assert rules[3].on_match == OnMatch(
        run=("/usr/bin/logger", "-t", "rctlpolicy", "{jail} over {resource}: pid {pid}")
    )
    assert rules[4].on_match == OnMatch(signal="TERM")
    assert rules[4].jail_pattern == "web-*"
    assert loaded.policy.concrete_rules == rules[:4]


@pytest.mark.parametrize("name", PLACEHOLDERS)
def test_every_placeholder_is_accepted(name: str) -> None:
    text = _rule_with(f"      run: [/bin/echo, '{{{name}}}', 'x{{{name}}}y']\n")
    loaded = load("p.yaml", text)
    assert loaded.diagnostics == ()
    (rule,) = loaded.policy.rules
    assert rule.on_match is not None
    assert rule.on_match.run == ("/bin/echo", f"{{{name}}}", f"x{{{name}}}y")


def test_literal_braces_are_not_placeholders() -> None:
    loaded = load("p.yaml", _rule_with("      run: [/bin/echo, '{{jail}}']\n"))
    assert loaded.diagnostics == ()


@pytest.mark.parametrize("given", ["TERM", "term", "SIGTERM", "sigterm", "SigTerm"])
def test_yaml_signal_names(given: str) -> None:
    text = f"rules:\n  - rule: jail:a:maxproc:devctl=1\n    on_match: {{signal: {given}}}\n"
    (rule,) = load("p.yaml", text).policy.rules
    assert rule.on_match == OnMatch(signal="TERM")


@pytest.mark.parametrize(
    ("given", "seconds"), [("30", 30.0), ("90s", 90.0), ("1.5h", 5400.0), ("1w", 604800.0)]
)
def test_yaml_durations(given: str, seconds: float) -> None:
    text = (
        "rules:\n  - rule: jail:a:maxproc:devctl=1\n"
        f"    on_match: {{signal: TERM, cooldown: {given}}}\n"
    )
    (rule,) = load("p.yaml", text).policy.rules
    assert rule.on_match is not None
    assert rule.on_match.cooldown == seconds


def test_yaml_error_inside_a_double_quoted_rule() -> None:
    loaded = load("p.yaml", 'rules:\n  - "jail:db1:memoryuze:deny=8g"\n')
    assert at(found(loaded, "unknown-resource")) == (2, 15)


def test_yaml_error_inside_a_mapping_rule() -> None:
    loaded = load("p.yaml", "rules:\n  - rule:   jail:db1:nproc:deny=8\n")
    error = found(loaded, "unknown-resource")
    assert at(error) == (2, 22)
    assert error.source_line == "  - rule:   jail:db1:nproc:deny=8"


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "rules:\n", "rules: []\n", "rules: ~\n"])
def test_yaml_empty_policies(text: str) -> None:
    loaded = load("p.yaml", text)
    assert loaded.diagnostics == ()
    assert loaded.policy.rules == ()


def test_yaml_on_match_is_kept_even_when_the_rule_is_bad() -> None:
    # The rule error is reported; the on_match is still checked, so both show at once.
    text = "rules:\n  - rule: jail:a:maxprok:devctl=1\n    on_match: {signal: TREM}\n"
    codes = [d.code for d in load("p.yaml", text).diagnostics]
    assert codes == ["unknown-resource", "invalid-signal"]


# --- jail globs -------------------------------------------------------------------------------


def test_yaml_jail_glob_rules_are_validated_with_a_stand_in_name() -> None:
    loaded = load("p.yaml", "rules:\n  - jail:web-*:memoryuze:deny=1g\n")
    assert at(found(loaded, "unknown-resource")) == (2, 16)
    loaded = load("p.yaml", "rules:\n  - jail:web-[0-9]*:maxproc:deny=10\n")
    assert loaded.diagnostics == ()
    (rule,) = loaded.policy.rules
    assert rule.jail_pattern == "web-[0-9]*"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("web-*", "web-1", True),
        ("web-*", "web-", True),
        ("web-*", "db-1", False),
        ("web-*", "WEB-1", False),  # jail names are case-sensitive
        ("web-?", "web-12", False),
        ("web-[12]", "web-2", True),
        ("*", "anything", True),
    ],
)
def test_jail_pattern_matches(pattern: str, name: str, matches: bool) -> None:
    assert jail_pattern_matches(pattern, name) is matches


def test_expand_jail_patterns() -> None:
    text = (
        "rules:\n"
        "  - jail:db1:maxproc:deny=10\n"
        "  - rule: jail:web-*:maxproc:devctl=50\n"
        "    on_match: {signal: TERM}\n"
    )
    policy = load("p.yaml", text).policy
    expanded = expand_jail_patterns(policy, ["web-2", "db1", "web-1", "web-1", "mail"])
    assert [r.canonical for r in expanded] == [
        "jail:db1:maxproc:deny=10",
        "jail:web-1:maxproc:devctl=50",
        "jail:web-2:maxproc:devctl=50",
    ]
    # Expanded rules keep where they came from and what to do.
    assert {r.source for r in expanded[1:]} == {policy.rules[1].source}
    assert {r.on_match for r in expanded[1:]} == {OnMatch(signal="TERM")}
    assert expand_jail_patterns(policy, []) == [policy.rules[0]]


def test_expand_keeps_concrete_rules_as_they_are() -> None:
    rule = Rule(SubjectType.JAIL, "db1", Resource.MAXPROC, Action.DENY, 10, SubjectType.JAIL)
    concrete = PolicyRule(rule, SourceLocation("a.conf", 1, 1), rule.canonical)
    assert expand_jail_patterns(Policy((concrete,)), ["db1", "db2"]) == [concrete]


# --- every finding of policy.py, at its line and column ---------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    text: str
    line: int
    column: int
    code: str
    severity: Severity
    says: str = ""


def _rule_with(on_match: str) -> str:
    return f"rules:\n  - rule: jail:pg:swapuse:devctl=1g\n    on_match:\n{on_match}"


FINDINGS = [
    # rctl.conf
    Finding("a.conf", "jail:db1:maxproc:deny=1 # x\n", 1, 25, "trailing-comment", Severity.INFO),
    Finding(
        "a.conf", "jail:a:maxproc:deny=1 x\n", 1, 23, "conf-trailing-text", Severity.WARNING, "'#'"
    ),
    Finding("a.conf", "jail:a:maxproc:deny= 1\n", 1, 22, "conf-cut-at-blank", Severity.WARNING),
    Finding("a.conf", "jail:a:maxproc:deny='1'\n", 1, 1, "conf-quoting", Severity.WARNING),
    Finding("a.conf", "jail:a:maxproc:deny=1\r\n", 1, 22, "carriage-return", Severity.ERROR),
    Finding("a.conf", "jail:w*:maxproc:deny=1\n", 1, 6, "glob-in-conf", Severity.WARNING, "YAML"),
    Finding(
        "a.conf",
        "# x\njail:a:maxproc:deny=1",
        2,
        22,
        "conf-no-final-newline",
        Severity.ERROR,
        "boot",
    ),
    # YAML structure
    Finding("p.yaml", "rules:\n  - [unclosed\n", 3, 1, "yaml-syntax", Severity.ERROR),
    Finding("p.yaml", "rules:\n  - a\n   b: c\n", 3, 5, "yaml-syntax", Severity.ERROR),
    Finding("p.yaml", "- jail:a:maxproc:deny=1\n", 1, 1, "yaml-structure", Severity.ERROR),
    Finding("p.yaml", "rules: 5\n", 1, 8, "yaml-structure", Severity.ERROR, "list"),
    Finding("p.yaml", "rulez: []\n", 1, 1, "unknown-key", Severity.ERROR, "did you mean 'rules'?"),
    Finding("p.yaml", "rules:\n  - comment: x\n", 2, 5, "missing-key", Severity.ERROR, "rule:"),
    Finding(
        "p.yaml",
        "rules:\n  - rule: jail:a:maxproc:deny=1\n    comentt: x\n",
        3,
        5,
        "unknown-key",
        Severity.ERROR,
        "did you mean 'comment'?",
    ),
    # on_match
    Finding(
        "p.yaml",
        "rules:\n  - rule: jail:a:maxproc:deny=1\n    on_match: {signal: TERM}\n",
        3,
        15,
        "on-match-not-devctl",
        Severity.ERROR,
        "maxproc:devctl=1",
    ),
    Finding("p.yaml", _rule_with("      cooldown: 5m\n"), 4, 7, "on-match-command", Severity.ERROR),
    Finding(
        "p.yaml",
        _rule_with("      signal: TERM\n      cooldwn: 5m\n"),
        5,
        7,
        "unknown-key",
        Severity.ERROR,
        "did you mean 'cooldown'?",
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: service postgresql restart\n"),
        4,
        12,
        "run-not-argv",
        Severity.ERROR,
        "run: [/usr/sbin/service",
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: ['{jail}', restart]\n"),
        4,
        13,
        "placeholder-in-program",
        Severity.ERROR,
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: [service, -j, '{jail}', postgresql, restart]\n"),
        4,
        13,
        "run-relative-program",
        Severity.WARNING,
        "/usr/sbin/service",
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: [bin/notify, '{jail}']\n"),
        4,
        13,
        "run-relative-path",
        Severity.ERROR,
        "absolute path",
    ),
    Finding(
        "p.yaml",
        _rule_with("      name: restart db1\n      signal: TERM\n"),
        4,
        13,
        "invalid-action-name",
        Severity.ERROR,
        "restart-db1-postgres",
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: [/bin/echo, '{jale}']\n"),
        4,
        24,
        "unknown-placeholder",
        Severity.ERROR,
        "did you mean '{jail}'?",
    ),
    Finding(
        "p.yaml",
        _rule_with("      run: [/bin/echo, '{pid']\n"),
        4,
        24,
        "bad-placeholder",
        Severity.ERROR,
        "{{",
    ),
    Finding(
        "p.yaml",
        _rule_with("      service: {name: postgresql, command: '-rf'}\n"),
        4,
        44,
        "invalid-service",
        Severity.ERROR,
    ),
    Finding(
        "r.conf",
        'jail:db1:maxproc:deny="10\n',
        1,
        1,
        "conf-unbalanced-quote",
        Severity.ERROR,
        "every rule after it",
    ),
    Finding(
        "p.yaml",
        "rules:\n  - jail:a:maxproc:deny=1\nrules: []\n",
        3,
        1,
        "duplicate-key",
        Severity.ERROR,
        "given twice",
    ),
    Finding(
        "p.yaml",
        _rule_with("      signal: TREM\n"),
        4,
        15,
        "invalid-signal",
        Severity.ERROR,
        "did you mean 'TERM'?",
    ),
    Finding(
        "p.yaml",
        _rule_with("      signal: TERM\n      cooldown: 5 parsecs\n"),
        5,
        17,
        "invalid-duration",
        Severity.ERROR,
        "",
    ),
    Finding(
        "p.yaml",
        _rule_with("      signal: TERM\n      max_runs: {count: 0, within: 1h}\n"),
        5,
        25,
        "invalid-count",
        Severity.ERROR,
    ),
]


@pytest.mark.parametrize("case", FINDINGS, ids=[f"{f.code}-{f.path}" for f in FINDINGS])
def test_finding(case: Finding) -> None:
    diagnostic = found(load(case.path, case.text), case.code)
    assert (diagnostic.path, diagnostic.line, diagnostic.column) == (
        case.path,
        case.line,
        case.column,
    )
    assert diagnostic.severity is case.severity
    assert case.says in f"{diagnostic.message} {diagnostic.suggestion}"


def test_every_policy_code_has_an_example() -> None:
    shown = {f.code for f in FINDINGS}
    emitted = (
        emitted_codes(rctlpolicy.policy_conf)
        | emitted_codes(rctlpolicy.policy_yaml)
        | emitted_codes(rctlpolicy.onmatch)
    )
    assert emitted - shown == set()
    assert shown - emitted == set()


BAD_ON_MATCH = [
    ("      run: []\n", "non-empty list"),
    ("      run: [/bin/echo, '']\n", "non-empty string"),
    ("      run: [/bin/echo, [a]]\n", "non-empty string"),
    ("      run: [/bin/echo, '{pid!r}']\n", "no format or conversion"),
    ("      run: [/bin/echo, '{pid:>5}']\n", "no format or conversion"),
    ("      service: postgresql\n", "'service' must be a mapping"),
    ("      service: {name: postgresql}\n", "needs 'command'"),
    ("      service: {name: pg sql, command: restart}\n", "one word"),
    ("      service: {name: '{jail}', command: restart}\n", "one word"),
    ("      signal: [TERM]\n", "signal name such as TERM"),
    ("      signal: TERM\n      run: [/bin/true]\n", "found run, signal"),
    ("      signal: TERM\n      timeout: 0\n", "timeout must be positive"),
    ("      signal: TERM\n      timeout: [1]\n", "duration like 30s"),
    ("      signal: TERM\n      cooldown: -5\n", "invalid cooldown"),
    ("      signal: TERM\n      max_runs: 3\n", "'max_runs' must be a mapping"),
    ("      signal: TERM\n      max_runs: {count: 3}\n", "needs 'count' and 'within'"),
    ("      signal: TERM\n      max_runs: {count: x, within: 1h}\n", "whole number"),
    ("      signal: TERM\n      max_runs: {count: 1, within: 0}\n", "'within' must be"),
]


@pytest.mark.parametrize(("on_match", "says"), BAD_ON_MATCH, ids=[s for _, s in BAD_ON_MATCH])
def test_bad_on_match(on_match: str, says: str) -> None:
    loaded = load("p.yaml", _rule_with(on_match))
    errors = [d for d in loaded.diagnostics if d.severity is Severity.ERROR]
    assert errors, loaded.diagnostics
    assert any(says in f"{d.message} {d.suggestion}" for d in errors), errors
    # A bad on_match is never half-kept.
    for rule in loaded.policy.rules:
        assert rule.on_match is None


@pytest.mark.parametrize(
    "on_match",
    [
        "      signal: TERM\n      cooldwn: 1h\n",
        "      service: {name: pg, command: restart, flags: x}\n",
        "      signal: TERM\n      max_runs: {count: 1, within: 1h, per: 2}\n",
    ],
    ids=["on_match", "service", "max_runs"],
)
def test_on_match_with_an_unknown_key_is_not_kept(on_match: str) -> None:
    loaded = load("p.yaml", _rule_with(on_match))
    assert found(loaded, "unknown-key").severity is Severity.ERROR
    # The rule is not loaded with half its action: the policy has an error and is never applied.
    assert all(rule.on_match is None for rule in loaded.policy.rules)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rules:\n  - [a]\n", "string or a mapping"),
        ("rules:\n  - rule: [a]\n", "'rule' must be a string"),
        ("rules:\n  - rule: jail:a:maxproc:devctl=1\n    comment: [x]\n", "'comment' must be"),
        ("rules:\n  - rule: jail:a:maxproc:devctl=1\n    on_match: [x]\n", "must be a mapping"),
        ("rules:\n  - {}\n", "needs a 'rule' key"),
    ],
)
def test_bad_yaml_structure(text: str, says: str) -> None:
    loaded = load("p.yaml", text)
    assert not loaded.ok
    assert any(says in d.message for d in loaded.diagnostics), loaded.diagnostics


def test_yaml_syntax_error_shows_the_line() -> None:
    loaded = load("p.yaml", "rules:\n  - jail:a:maxproc:deny=1\n   bad: indent\n")
    error = found(loaded, "yaml-syntax")
    assert at(error) == (3, 7)
    assert error.source_line == "   bad: indent"
    assert error.message.startswith("YAML syntax error: ")


@pytest.mark.parametrize(
    "text",
    ["jail:a:maxproc:deny=1\n", "jail:a:maxproc:deny=1\n# no rule on the last line", "\n  ", ""],
)
def test_a_last_line_without_newline_matters_only_when_it_holds_a_rule(text: str) -> None:
    assert [d for d in load("a.conf", text).diagnostics if d.code == "conf-no-final-newline"] == []


def test_a_rule_on_a_last_line_without_newline_stays_in_the_policy() -> None:
    loaded = load("a.conf", "jail:a:maxproc:deny=1  # x")
    assert [r.canonical for r in loaded.policy.rules] == ["jail:a:maxproc:deny=1"]
    assert not loaded.ok  # the error: rc.d/rctl would never apply it


def test_yaml_reader_error_is_a_diagnostic() -> None:
    # PyYAML refuses some control characters before parsing at all.
    loaded = load("p.yaml", "rules:\n  - jail:a:maxproc:deny=1\x07\n")
    assert found(loaded, "yaml-syntax").severity is Severity.ERROR


@pytest.mark.parametrize("text", ["[" * 2000, "rules:\n  - " + "[" * 2000], ids=["top", "in-rules"])
def test_deeply_nested_yaml_is_a_diagnostic(text: str) -> None:
    loaded = load("p.yaml", text)
    assert found(loaded, "yaml-syntax").severity is Severity.ERROR


@pytest.mark.parametrize(
    "text",
    [
        "rules:\n  - jail:a:maxproc:deny=1\nrules:\n  - jail:b:maxproc:deny=1\n",
        "rules:\n  - rule: jail:a:maxproc:deny=1\n    rule: jail:b:maxproc:deny=1\n",
    ],
    ids=["rules-twice", "rule-twice"],
)
def test_duplicate_yaml_keys_are_reported(text: str) -> None:
    loaded = load("p.yaml", text)
    assert not loaded.ok, "a rule was dropped silently"
    assert found(loaded, "duplicate-key").line == 3


def test_several_files_keep_their_own_positions() -> None:
    loaded = load_policy(
        [
            PolicyFile("b.conf", "jail:b:maxproc:deny=1\njail:b:bogus:deny=1\n"),
            PolicyFile("a.yaml", "rules:\n  - jail:a:bogus:deny=1\n"),
        ]
    )
    assert [(d.path, d.line, d.column) for d in loaded.diagnostics] == [
        ("a.yaml", 2, 12),
        ("b.conf", 2, 8),
    ]
    assert loaded.policy.files == ("b.conf", "a.yaml")
    assert [r.canonical for r in loaded.policy.rules] == ["jail:b:maxproc:deny=1"]


# --- files on disk ----------------------------------------------------------------------------

DROPPINGS = [".#x.conf", "x.conf~", ".x.swp", ".x.conf.swp", "x.tmp", ".hidden.conf", "#x.conf#"]


@pytest.mark.parametrize("name", DROPPINGS)
def test_editor_droppings(name: str) -> None:
    assert is_editor_droppings(name)


@pytest.mark.parametrize("name", ["rctl.conf", "db.rules", "pg.yaml", "web.yml"])
def test_not_editor_droppings(name: str) -> None:
    assert not is_editor_droppings(name)


def test_directory_reading_skips_droppings_and_other_files(tmp_path: Path) -> None:
    for name in [*DROPPINGS, "README", "notes.txt", "b.yml", "a.conf", "c.rules", "d.yaml"]:
        (tmp_path / name).write_text("jail:a:maxproc:deny=1\n")
    (tmp_path / "sub.conf").mkdir()
    assert [p.name for p in policy_paths(tmp_path)] == ["a.conf", "b.yml", "c.rules", "d.yaml"]
    files = read_policy_files([tmp_path])
    assert [Path(f.path).name for f in files] == ["a.conf", "b.yml", "c.rules", "d.yaml"]
    assert files[0].text == "jail:a:maxproc:deny=1\n"
    assert [f.is_yaml for f in files] == [False, True, False, True]


def test_files_named_explicitly_are_read_whatever_their_name(tmp_path: Path) -> None:
    path = tmp_path / "x.conf~"
    path.write_text("jail:a:maxproc:deny=1\n")
    assert [f.path for f in read_policy_files([path])] == [str(path)]


def test_reading_keeps_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "dos.conf"
    path.write_bytes(b"jail:a:maxproc:deny=1\r\n")
    (policy_file,) = read_policy_files([path])
    assert policy_file.text == "jail:a:maxproc:deny=1\r\n"


def test_read_errors_say_which_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyReadError) as caught:
        read_policy_files([tmp_path / "missing.conf"])
    assert caught.value.path == str(tmp_path / "missing.conf")
    binary = tmp_path / "latin1.conf"
    binary.write_bytes(b"jail:caf\xe9:maxproc:deny=1\n")
    with pytest.raises(PolicyReadError, match="not UTF-8"):
        read_policy_files([binary])


def test_safe_ownership(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: []\n")
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    check_safe_ownership(path)
    check_safe_ownership(path, [os.geteuid()])


def test_group_writable_file_is_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: []\n")
    path.chmod(0o664)
    with pytest.raises(UnsafeFileError) as caught:
        check_safe_ownership(path)
    assert caught.value.path == str(path)
    assert "writable by group or others" in str(caught.value)
    assert "chmod go-w" in str(caught.value)


def test_world_writable_directory_is_unsafe(tmp_path: Path) -> None:
    directory = tmp_path / "rules"
    directory.mkdir()
    path = directory / "policy.yaml"
    path.write_text("rules: []\n")
    path.chmod(0o644)
    directory.chmod(0o777)
    with pytest.raises(UnsafeFileError) as caught:
        check_safe_ownership(path)
    assert caught.value.path == str(directory)


def test_file_owned_by_someone_else_is_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: []\n")
    path.chmod(0o644)
    not_me = os.geteuid() + 1
    with pytest.raises(UnsafeFileError, match="owned by uid"):
        check_safe_ownership(path, [not_me])
    with pytest.raises(UnsafeFileError, match=r"cannot stat|No such file"):
        check_safe_ownership(tmp_path / "missing.yaml")
