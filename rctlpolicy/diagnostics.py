"""Diagnostics: what lint and the policy loader report, as values, never exceptions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rctlpolicy.model import Severity


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding at a place in a file (line and column are 1-based; 0 means unknown)."""

    path: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str
    suggestion: str | None = None
    #: The source line the finding points into, for the caret display.
    source_line: str | None = None
    #: How many characters the caret underlines (at least 1).
    width: int = 1

    @property
    def sort_key(self) -> tuple[str, int, int, int, str]:
        return (self.path, self.line, self.column, self.severity.rank, self.code)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "suggestion": self.suggestion,
        }


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """One stream of problems, in file order, duplicates dropped."""
    return sorted(set(diagnostics), key=lambda d: d.sort_key)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diagnostics)
