"""Checks across a whole policy (lint.py), and when a lint run counts as failed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from corpus_host import emitted_codes

import rctlpolicy.checks
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.lint import LintResult, lint_files
from rctlpolicy.model import Severity
from rctlpolicy.policy import PolicyFile


def lint(*files: tuple[str, str]) -> LintResult:
    return lint_files([PolicyFile(path, text) for path, text in files])


def with_code(result: LintResult, code: str) -> list[Diagnostic]:
    return [d for d in result.diagnostics if d.code == code]


def test_duplicate_rule_across_two_files() -> None:
    result = lint(
        ("rules/a.conf", "# web\njail:web:maxproc:deny=100\n"),
        ("rules/b.yaml", "rules:\n  - j:web:maxproc:deny=100/jail\n"),
    )
    (duplicate,) = with_code(result, "duplicate-rule")
    assert (duplicate.path, duplicate.line, duplicate.column) == ("rules/b.yaml", 2, 5)
    assert duplicate.severity is Severity.WARNING
    assert "jail:web:maxproc:deny=100" in duplicate.message
    assert "rules/a.conf:2" in duplicate.message
    assert duplicate.source_line == "  - j:web:maxproc:deny=100/jail"
    assert duplicate.width == len("j:web:maxproc:deny=100/jail")


def test_duplicate_rule_in_one_file() -> None:
    result = lint(("a.conf", "jail:a:nthr:log=1\njail:a:nthr:log=1\njail:a:nthr:log=1\n"))
    assert [(d.line, d.column) for d in with_code(result, "duplicate-rule")] == [(2, 1), (3, 1)]
    assert all("a.conf:1" in d.message for d in with_code(result, "duplicate-rule"))


def test_different_per_is_not_a_duplicate() -> None:
    result = lint(("a.conf", "user:80:maxproc:deny=10\nuser:80:maxproc:deny=10/process\n"))
    assert result.diagnostics == ()


def test_conflicting_deny_amounts() -> None:
    result = lint(
        ("a.conf", "jail:db:vmemoryuse:deny=1g\n"),
        ("b.conf", "\n\njail:db:vmemoryuse:deny=2g\n"),
    )
    (conflict,) = with_code(result, "conflicting-amounts")
    assert (conflict.path, conflict.line, conflict.column) == ("b.conf", 3, 1)
    assert conflict.severity is Severity.WARNING
    assert "1073741824 at a.conf:1" in conflict.message
    assert "keeps only the last" in conflict.message


def test_conflicting_throttle_amounts() -> None:
    result = lint(("a.conf", "jail:db:readbps:throttle=1m\njail:db:readbps:throttle=2m\n"))
    (conflict,) = with_code(result, "conflicting-amounts")
    assert conflict.line == 2
    assert "strictest" in conflict.message


@pytest.mark.parametrize(
    "text",
    [
        # Other actions may coexist at several amounts: each one acts.
        "jail:db:maxproc:log=10\njail:db:maxproc:log=20\n",
        "jail:db:maxproc:devctl=10\njail:db:maxproc:devctl=20\n",
        # Different per, subject or resource: different limits.
        "jail:db:maxproc:deny=10\njail:db:maxproc:deny=20/process\n",
        "jail:db:maxproc:deny=10\njail:db2:maxproc:deny=20\n",
        "jail:db:maxproc:deny=10\njail:db:nthr:deny=20\n",
    ],
)
def test_no_conflict(text: str) -> None:
    assert with_code(lint(("a.conf", text)), "conflicting-amounts") == []


def test_devctl_without_on_match() -> None:
    result = lint(("a.conf", "jail:pg:swapuse:devctl=1g\n"))
    (warning,) = with_code(result, "devctl-without-on-match")
    assert (warning.line, warning.column) == (1, 1)
    assert warning.severity is Severity.WARNING
    assert "on_match" in (warning.suggestion or "")


def test_devctl_with_on_match_is_fine() -> None:
    text = "rules:\n  - rule: jail:pg:swapuse:devctl=1g\n    on_match: {signal: TERM}\n"
    assert lint(("p.yaml", text)).diagnostics == ()


@dataclass(frozen=True, slots=True)
class Failing:
    text: str
    failed: bool
    failed_strict: bool


@pytest.mark.parametrize(
    "case",
    [
        Failing("jail:db:maxproc:deny=10\n", False, False),
        # Notes never fail a run.
        Failing("jail:db:memoryuse:deny=1g\n", False, False),
        Failing("jail:3:maxproc:deny=10\n", False, True),
        Failing("jail:db:bogus:deny=10\n", True, True),
        Failing("", False, False),
    ],
    ids=["clean", "info", "warning", "error", "empty"],
)
def test_failed_with_and_without_strict(case: Failing) -> None:
    result = lint(("a.conf", case.text))
    assert result.failed() is case.failed
    assert result.failed(strict=False) is case.failed
    assert result.failed(strict=True) is case.failed_strict


def test_diagnostics_are_sorted_and_unique() -> None:
    result = lint(
        ("b.conf", "jail:db:bogus:deny=1\njail:3:maxproc:deny=1\n"),
        ("a.conf", "jail:3:maxproc:deny=1\njail:3:maxproc:deny=1\n"),
    )
    keys = [d.sort_key for d in result.diagnostics]
    assert keys == sorted(keys)
    assert len(set(result.diagnostics)) == len(result.diagnostics)
    assert result.diagnostics[0].path == "a.conf"


def test_the_policy_holds_the_valid_rules() -> None:
    result = lint(("a.conf", "jail:a:maxproc:deny=1\njail:a:bogus:deny=1\n"))
    assert [r.canonical for r in result.policy.rules] == ["jail:a:maxproc:deny=1"]


#: One policy per code the checks emit (the tests above look at each in detail).
EXAMPLES = {
    "duplicate-rule": ("a.conf", "jail:a:nthr:log=1\njail:a:nthr:log=1\n"),
    "conflicting-amounts": ("a.conf", "jail:a:nthr:deny=1\njail:a:nthr:deny=2\n"),
    "devctl-without-on-match": ("a.conf", "jail:a:nthr:devctl=1\n"),
    "jail-pattern-unmatched": ("p.yaml", "rules:\n  - jail:mail-*:maxproc:deny=10\n"),
}


@pytest.mark.parametrize("code", EXAMPLES)
def test_example(code: str) -> None:
    path, text = EXAMPLES[code]
    result = lint_files([PolicyFile(path, text)], running_jails={"db1"})
    (diagnostic,) = with_code(result, code)
    assert diagnostic.severity is Severity.WARNING
    assert diagnostic.line == len(EXAMPLES[code][1].splitlines())


def test_every_lint_code_has_an_example() -> None:
    assert set(EXAMPLES) == emitted_codes(rctlpolicy.checks)


# --- jail patterns against the running jails (lint --resolve) ----------------------------------

PATTERNS = "rules:\n  - jail:mail-*:maxproc:deny=10\n  - jail:db*:maxproc:deny=10\n"


def test_a_pattern_matching_no_running_jail_names_the_pattern_and_the_jails() -> None:
    result = lint_files([PolicyFile("p.yaml", PATTERNS)], running_jails={"db1", "web1"})
    (warning,) = with_code(result, "jail-pattern-unmatched")
    assert (warning.line, warning.column) == (2, 5)
    assert "'mail-*'" in warning.message
    assert "running: db1, web1" in warning.message
    assert not result.failed() and result.failed(strict=True)


def test_no_running_jail_at_all_is_said() -> None:
    result = lint_files([PolicyFile("p.yaml", PATTERNS)], running_jails=())
    messages = [d.message for d in with_code(result, "jail-pattern-unmatched")]
    assert len(messages) == 2
    assert all("no jail is running" in m for m in messages)


def test_many_running_jails_are_named_up_to_ten() -> None:
    jails = {f"web{n:02d}" for n in range(25)}
    result = lint_files([PolicyFile("p.yaml", PATTERNS)], running_jails=jails)
    (first, _) = with_code(result, "jail-pattern-unmatched")
    assert "web00, web01" in first.message and "web09 and 15 more" in first.message


def test_without_the_running_jails_patterns_are_not_judged() -> None:
    assert with_code(lint(("p.yaml", PATTERNS)), "jail-pattern-unmatched") == []
