"""Policy files -> Policy: FreeBSD's rctl.conf format here, rctlpolicy's YAML in policy_yaml.

Pure: the caller reads the files (`rctlpolicy.files`) and passes their text in. Every problem is
returned as a Diagnostic with the file, line and column it is at; nothing raises on bad input.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rctlpolicy.codes import Code
from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector, Report
from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.grammar import (
    SUBJECT,
    SUBJECT_ID,
    RuleSyntax,
    iter_conf,
    parse_rule_syntax,
)
from rctlpolicy.model import SUBJECT_ALIASES, Rule, Severity
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation
from rctlpolicy.semantics.check import Layer, check_rule
from rctlpolicy.semantics.problems import Problem
from rctlpolicy.semantics.resolver import OFFLINE, Resolver

CONF_SUFFIXES = (".conf", ".rules")
YAML_SUFFIXES = (".yaml", ".yml")
_GLOB_CHARS = frozenset("*?[")
_QUOTING = re.compile(r"[\"'\\\\]")


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """A policy file's path (as shown to the user) and its text."""

    path: str
    text: str

    @property
    def is_yaml(self) -> bool:
        return self.path.endswith(YAML_SUFFIXES)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def load_policy(files: Sequence[PolicyFile], resolver: Resolver = OFFLINE) -> LoadedPolicy:
    """Parse and validate every file; the policy holds the rules that are valid."""
    collected = DiagnosticCollector()
    policy = read_policy(files, collected.add, resolver)
    return LoadedPolicy(policy, tuple(collected.diagnostics()))


def read_policy(
    files: Sequence[PolicyFile], report: Report, resolver: Resolver = OFFLINE
) -> Policy:
    """Parse and validate every file, sending each diagnostic to `report` as it is found (in
    no particular order); the policy holds the rules that are valid."""
    with no_cyclic_gc():
        rules: list[PolicyRule] = []
        for policy_file in files:
            if policy_file.is_yaml:
                # Imported on demand: PyYAML is a good part of a start-up that pre-commit
                # pays on every commit, and many policies are rctl.conf files only.
                from rctlpolicy.policy_yaml import load_yaml

                file_rules, file_diagnostics = load_yaml(policy_file, resolver)
                for diagnostic in file_diagnostics:
                    report(diagnostic)
            else:
                file_rules = _load_conf(policy_file, resolver, report)
            rules.extend(file_rules)
        return Policy(tuple(rules), tuple(f.path for f in files))


# --- rules -> diagnostics --------------------------------------------------------------------


def problem_diagnostic(
    problem: Problem, syntax: RuleSyntax, path: str, line: int, column: int, source_line: str
) -> Diagnostic:
    """Place a field-level problem at its column in the file (column: where the rule starts)."""
    if problem.field is None:
        offset, width = 0, max(1, len(syntax.text))
    else:
        offset = syntax.starts[problem.field] + problem.offset
        text = syntax.fields[problem.field]
        width = problem.width or max(1, len(text or "") - problem.offset)
    return Diagnostic(
        path=path,
        line=line,
        column=column + offset + 1,
        severity=problem.severity,
        code=problem.code,
        message=problem.message,
        suggestion=problem.suggestion,
        source_line=source_line,
        width=width,
    )


def glob_subject(syntax: RuleSyntax) -> bool:
    """Whether the rule's subject is a jail glob such as `web-*` (a pattern in YAML)."""
    subject_id = syntax.fields[SUBJECT_ID]
    if not subject_id or _GLOB_CHARS.isdisjoint(subject_id):
        return False
    subject = (syntax.fields[SUBJECT] or "").lower()
    return SUBJECT_ALIASES.get(subject, subject) == "jail"


# --- rctl.conf -------------------------------------------------------------------------------


def _load_conf(policy_file: PolicyFile, resolver: Resolver, report: Report) -> list[PolicyRule]:
    rules: list[PolicyRule] = []
    path = policy_file.path
    text = policy_file.text
    # The number of a last line that lacks its newline (rc.d/rctl never reads it), else 0.
    unterminated = text.count("\n") + 1 if text and not text.endswith("\n") else 0
    for line in iter_conf(text):
        syntax = line.rule
        if syntax is None:
            continue
        if line.number == unterminated:
            report(_no_final_newline(line.text, path, line.number))
        checked, precise, loads = syntax, True, True
        if syntax.text.endswith("\r"):
            # IFS has no carriage return: rc.d/rctl hands it to rctl(8) inside the rule.
            report(
                Diagnostic.of(
                    Code.CARRIAGE_RETURN,
                    path,
                    line.number,
                    line.column + len(syntax.text),
                    "the line ends with a carriage return, which "
                    "becomes part of the rule and makes FreeBSD refuse it",
                    "convert the file to Unix line endings",
                    _printable(line.text),
                )
            )
            checked, loads = parse_rule_syntax(syntax.text.rstrip("\r")), False
        if _QUOTING.search(checked.text):
            unquoted = _rc_unquote(checked.text)
            if unquoted is None:
                report(
                    Diagnostic.of(
                        Code.CONF_UNBALANCED_QUOTE,
                        path,
                        line.number,
                        line.column + 1,
                        "unbalanced quote: xargs(1) in "
                        "rc.d/rctl stops here, so this rule and every rule after it "
                        "fail to load at boot",
                        "remove the quote",
                        _printable(line.text),
                        len(syntax.text),
                    )
                )
                continue
            report(
                Diagnostic.of(
                    Code.CONF_QUOTING,
                    path,
                    line.number,
                    line.column + 1,
                    "rc.d/rctl removes quotes and backslashes (read "
                    "and xargs) before rctl(8) sees the rule; FreeBSD versions that "
                    "ran rctl -a on each line kept them",
                    "write the rule without quotes or backslashes",
                    _printable(line.text),
                    len(syntax.text),
                )
            )
            checked, precise = parse_rule_syntax(unquoted), False
        check = check_rule(checked, Layer.RCTL8, resolver)
        for problem in check.problems:
            if precise:
                report(
                    problem_diagnostic(problem, checked, path, line.number, line.column, line.text)
                )
            else:
                report(
                    Diagnostic(
                        path,
                        line.number,
                        line.column + 1,
                        problem.severity,
                        problem.code,
                        f"{problem.message} (in '{checked.text}')",
                        problem.suggestion,
                        _printable(line.text),
                        len(syntax.text),
                    )
                )
        if line.rest is not None:
            cut = check.error is not None and check.error.code == Code.MISSING_FIELD
            report(_trailing_text(line.text, line.rest, line.rest_column, path, line.number, cut))
        if not loads:
            continue
        if check.rule is None:
            continue
        if glob_subject(syntax):
            report(
                Diagnostic.of(
                    Code.GLOB_IN_CONF,
                    path,
                    line.number,
                    line.column + syntax.starts[SUBJECT_ID] + 1,
                    f"rctl.conf has no patterns: this names a jail literally called "
                    f"'{check.rule.subject_id}'",
                    "put jail patterns in a YAML policy file, where rctlpolicy expands "
                    "them per running jail",
                    line.text,
                    len(syntax.fields[SUBJECT_ID] or ""),
                )
            )
        rules.append(
            PolicyRule(check.rule, SourceLocation(path, line.number, line.column + 1), syntax.text)
        )
    return rules


def _no_final_newline(text: str, path: str, number: int) -> Diagnostic:
    # sh's `read` returns non-zero at the end of the file even when it assigned a last line
    # that lacks its newline, so rc.d/rctl's `while read var comments` loop ends before it.
    return Diagnostic.of(
        Code.CONF_NO_FINAL_NEWLINE,
        path,
        number,
        len(text) + 1,
        "the last line has no newline: rc.d/rctl's `while read` loop stops before it, so "
        "this rule is never applied at boot",
        "end the file with a newline",
        _printable(text),
    )


def _rc_unquote(word: str) -> str | None:
    """What rc.d/rctl's `read` (no -r: backslashes removed) and xargs (quotes) make of a word;
    None for an unbalanced quote, where xargs gives up."""
    after_read = re.sub(r"\\(.?)", r"\1", word)
    out: list[str] = []
    quote: str | None = None
    escaped = False
    for char in after_read:
        if escaped:
            out.append(char)
            escaped = False
        elif quote is not None:
            if char == quote:
                quote = None
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return None if quote is not None else "".join(out)


def _printable(text: str) -> str:
    """A source line safe to print: control characters shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _trailing_text(
    text: str, rest: str, rest_column: int, path: str, number: int, rule_cut_short: bool
) -> Diagnostic:
    if rest.startswith("#"):
        # A comment after the rule is fine: that is how rc.d/rctl's `read var comments` works.
        return Diagnostic.of(
            Code.TRAILING_COMMENT,
            path,
            number,
            rest_column + 1,
            "text after the rule is ignored by rc.d/rctl",
            None,
            text,
            len(rest),
        )
    if rule_cut_short:
        return Diagnostic.of(
            Code.CONF_CUT_AT_BLANK,
            path,
            number,
            rest_column + 1,
            "rc.d/rctl reads only up to the first blank: this part of the rule is dropped",
            "remove the blanks inside the rule",
            text,
            len(rest),
        )
    return Diagnostic.of(
        Code.CONF_TRAILING_TEXT,
        path,
        number,
        rest_column + 1,
        "text after the rule is silently dropped by rc.d/rctl",
        "start a comment with '#', or put one rule per line",
        text,
        len(rest),
    )


def jail_pattern_matches(pattern: str, jail_name: str) -> bool:
    """Whether a YAML jail glob (`web-*`) matches a running jail's name (case-sensitive)."""
    return fnmatch.fnmatchcase(jail_name, pattern)


def expand_jail_patterns(policy: Policy, jail_names: Iterable[str]) -> list[PolicyRule]:
    """The policy's rules for the kernel: concrete rules, plus one rule per matching jail."""
    with no_cyclic_gc():
        return _expand_jail_patterns(policy, jail_names)


def _expand_jail_patterns(policy: Policy, jail_names: Iterable[str]) -> list[PolicyRule]:
    names = sorted(set(jail_names))
    result: list[PolicyRule] = []
    for policy_rule in policy.rules:
        if policy_rule.jail_pattern is None:
            result.append(policy_rule)
            continue
        for name in names:
            if jail_pattern_matches(policy_rule.jail_pattern, name):
                rule = policy_rule.rule
                concrete = Rule(
                    rule.subject, name, rule.resource, rule.action, rule.amount, rule.per
                )
                result.append(
                    PolicyRule(
                        concrete,
                        policy_rule.source,
                        policy_rule.text,
                        policy_rule.on_match,
                        policy_rule.comment,
                        policy_rule.jail_pattern,
                    )
                )
    return result
