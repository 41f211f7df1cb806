"""Lint a policy: load it (every rule checked as FreeBSD would), then run the checks across
the whole policy (`rctlpolicy.checks`, one module per check). Every code either step can
report is in the registry, `rctlpolicy.codes`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rctlpolicy.checks import all_checks
from rctlpolicy.checks.base import Context, Finding
from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector, Report, fails
from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.policy import PolicyFile, read_policy
from rctlpolicy.policy_model import Policy
from rctlpolicy.records import NamedTuple
from rctlpolicy.semantics.resolver import OFFLINE, Resolver


class LintResult(NamedTuple):
    policy: Policy
    diagnostics: tuple[Diagnostic, ...]

    def failed(self, strict: bool = False) -> bool:
        return any(fails(d.severity, strict) for d in self.diagnostics)


def lint_files(
    files: Sequence[PolicyFile],
    resolver: Resolver = OFFLINE,
    running_jails: Collection[str] | None = None,
) -> LintResult:
    """Load the policy and run every cross-rule check over it."""
    collected = DiagnosticCollector()
    policy = lint_into(files, collected.add, resolver, running_jails)
    return LintResult(policy, tuple(collected.diagnostics()))


def lint_into(
    files: Sequence[PolicyFile],
    report: Report,
    resolver: Resolver = OFFLINE,
    running_jails: Collection[str] | None = None,
) -> Policy:
    """`lint_files`, streaming: each diagnostic goes to `report` as it is found (in no
    particular order; a `DiagnosticCollector` sorts them), and the policy is returned.

    `running_jails`: the jails running now (lint --resolve), for the checks that compare the
    policy with them; None when not known.
    """
    with no_cyclic_gc():
        policy = read_policy(files, report, resolver)
        sources = SourceLines({f.path: f.text for f in files})
        context = Context(running_jails)
        for check in all_checks():
            for finding in check(policy.rules, context):
                report(sources.diagnostic(finding))
        return policy


class SourceLines:
    """The policy files' lines, split only when a finding quotes one of them."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts
        self._lines: dict[str, list[str]] = {}

    def line(self, path: str, number: int) -> str | None:
        lines = self._lines.get(path)
        if lines is None:
            lines = self._lines[path] = self._texts.get(path, "").splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else None

    def diagnostic(self, finding: Finding) -> Diagnostic:
        """A check's finding placed at its rule, the rule underlined."""
        source = finding.rule.source
        return Diagnostic.of(
            finding.code,
            source.path,
            source.line,
            source.column,
            finding.message,
            finding.suggestion,
            self.line(source.path, source.line),
            max(1, len(finding.rule.text)),
        )
