"""Checks across a whole policy, beyond what one rule can tell: each check has a stable code.

- duplicate-rule (warning): the same canonical rule twice, in one file or across files.
- conflicting-amounts (warning): deny or throttle rules for the same subject, resource and per
  with different amounts; the kernel keeps only the last deny added, and only the strictest
  throttle ever acts.
- devctl-without-on-match (warning): a devctl rule whose events nothing in the policy handles.
- on-match-not-devctl (error, found while loading): on_match on a rule that never sends events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector, Report, fails
from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.model import Action, Severity
from rctlpolicy.policy import PolicyFile, read_policy
from rctlpolicy.policy_model import Policy, PolicyRule
from rctlpolicy.semantics.resolver import OFFLINE, Resolver


@dataclass(frozen=True, slots=True)
class LintResult:
    policy: Policy
    diagnostics: tuple[Diagnostic, ...]

    def failed(self, strict: bool = False) -> bool:
        return any(fails(d.severity, strict) for d in self.diagnostics)


def lint_files(files: Sequence[PolicyFile], resolver: Resolver = OFFLINE) -> LintResult:
    """Load the policy and run every cross-rule check over it."""
    collected = DiagnosticCollector()
    policy = lint_into(files, collected.add, resolver)
    return LintResult(policy, tuple(collected.diagnostics()))


def lint_into(files: Sequence[PolicyFile], report: Report, resolver: Resolver = OFFLINE) -> Policy:
    """`lint_files`, streaming: each diagnostic goes to `report` as it is found (in no
    particular order; a `DiagnosticCollector` sorts them), and the policy is returned."""
    with no_cyclic_gc():
        policy = read_policy(files, report, resolver)
        sources = SourceLines({f.path: f.text for f in files})
        for diagnostic in policy_checks(policy, sources):
            report(diagnostic)
        return policy


class SourceLines:
    """The policy files' lines, split only when a cross-rule finding quotes one of them."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts
        self._lines: dict[str, list[str]] = {}

    def line(self, path: str, number: int) -> str | None:
        lines = self._lines.get(path)
        if lines is None:
            lines = self._lines[path] = self._texts.get(path, "").splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else None


def _diagnostic(
    rule: PolicyRule,
    severity: Severity,
    code: str,
    message: str,
    suggestion: str | None,
    sources: SourceLines,
) -> Diagnostic:
    line = sources.line(rule.source.path, rule.source.line)
    return Diagnostic(
        rule.source.path,
        rule.source.line,
        rule.source.column,
        severity,
        code,
        message,
        suggestion,
        line,
        max(1, len(rule.text)),
    )


def _where(rule: PolicyRule) -> str:
    return f"{rule.source.path}:{rule.source.line}"


def policy_checks(policy: Policy, sources: SourceLines) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    first_by_canonical: dict[str, PolicyRule] = {}
    limit_by_key: dict[tuple[object, ...], PolicyRule] = {}
    for rule in policy.rules:
        canonical = rule.canonical
        first = first_by_canonical.get(canonical)
        if first is not None:
            diagnostics.append(
                _diagnostic(
                    rule,
                    Severity.WARNING,
                    "duplicate-rule",
                    f"duplicate rule: {canonical} is already defined at {_where(first)}",
                    "remove one of them",
                    sources,
                )
            )
        else:
            first_by_canonical[canonical] = rule
        model = rule.rule
        if model.action in (Action.DENY, Action.THROTTLE):
            key = (model.subject, model.subject_id, model.resource, model.action, model.per)
            other = limit_by_key.get(key)
            if other is not None and other.rule.amount != model.amount:
                if model.action is Action.DENY:
                    message = (
                        f"two deny amounts for {model.subject}:{model.subject_id} "
                        f"{model.resource} ({other.rule.amount} at {_where(other)} and "
                        f"{model.amount} here): the kernel keeps only the last one added"
                    )
                else:
                    message = (
                        f"two throttle amounts for {model.subject}:{model.subject_id} "
                        f"{model.resource} ({other.rule.amount} at {_where(other)} and "
                        f"{model.amount} here): only the strictest can ever act"
                    )
                diagnostics.append(
                    _diagnostic(
                        rule,
                        Severity.WARNING,
                        "conflicting-amounts",
                        message,
                        "keep one amount",
                        sources,
                    )
                )
            else:
                limit_by_key[key] = rule
        if model.action is Action.DEVCTL and rule.on_match is None:
            diagnostics.append(
                _diagnostic(
                    rule,
                    Severity.WARNING,
                    "devctl-without-on-match",
                    "nothing handles this devctl rule's events",
                    "add an on_match in a YAML policy, or use log if a log line is all you want",
                    sources,
                )
            )
    return diagnostics
