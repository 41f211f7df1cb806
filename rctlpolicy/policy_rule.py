"""One rule of a policy file, whatever its format: where its problems go in the file, and
whether its subject is a jail pattern."""

from __future__ import annotations

from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.grammar import SUBJECT, SUBJECT_ID, RuleSyntax
from rctlpolicy.model import SUBJECT_ALIASES
from rctlpolicy.semantics.problems import Problem

_GLOB_CHARS = frozenset("*?[")


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
