"""Diagnostics: what lint and the policy loader report, as values, never exceptions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from rctlpolicy.codes import DiagnosticCode
from rctlpolicy.model import Severity
from rctlpolicy.records import NamedTuple

_RANK = {severity: severity.rank for severity in Severity}

#: Where a producer of diagnostics sends each one as it is found.
Report = Callable[["Diagnostic"], object]


class Diagnostic(NamedTuple):
    """One finding at a place in a file (line and column are 1-based; 0 means unknown).

    (A NamedTuple rather than a frozen dataclass: as immutable, and a tenth of the cost to
    define and to build, which `rctlpolicy lint`'s start-up and big policies both feel.)"""

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

    @classmethod
    def of(
        cls,
        code: DiagnosticCode,
        path: str,
        line: int,
        column: int,
        message: str,
        suggestion: str | None = None,
        source_line: str | None = None,
        width: int = 1,
    ) -> Diagnostic:
        """A finding of a registered code, at the severity the registry gives it."""
        return cls(path, line, column, code.severity, code, message, suggestion, source_line, width)

    @property
    def sort_key(self) -> tuple[str, int, int, int, str]:
        return _sort_key(self)

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


def _sort_key(d: Diagnostic) -> tuple[str, int, int, int, str]:
    """File order: path, line, column, the most serious first, code (by position: this is
    called once per diagnostic of a big policy, and attribute names cost a lookup each)."""
    return (d[0], d[1], d[2], _RANK[d[3]], d[4])


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """One stream of problems, in file order, duplicates dropped."""
    return sorted(set(diagnostics), key=_sort_key)


def fails(severity: Severity, strict: bool = False) -> bool:
    """Whether a finding of this severity fails a lint run (warnings only with --strict)."""
    return severity is Severity.ERROR or (strict and severity is Severity.WARNING)


class DiagnosticCollector:
    """Receives diagnostics in any order (`add` is a `Report`) and keeps what will be shown.

    With `per_file`, only the first `per_file` of each file (in sorted order) that `shown`
    accepts are kept, and the others are only counted (`omitted`): memory stays flat however
    many problems a file has. Every diagnostic counts towards `severities`, shown or not.
    Duplicates are dropped from what is kept; one beyond the cap may be counted twice.
    """

    def __init__(
        self, per_file: int | None = None, shown: Callable[[Diagnostic], bool] | None = None
    ) -> None:
        self.per_file = per_file
        self._shown = shown
        self._kept: dict[str, list[Diagnostic]] = {}
        self._seen: dict[str, set[Diagnostic]] = {}
        #: Shown diagnostics not kept because their file already had `per_file`, by path.
        self.omitted: dict[str, int] = {}
        #: The severities found, shown or not.
        self.severities: set[Severity] = set()

    def add(self, diagnostic: Diagnostic) -> None:
        self.severities.add(diagnostic.severity)
        if self._shown is not None and not self._shown(diagnostic):
            return
        path = diagnostic.path
        kept = self._kept.get(path)
        if kept is None:
            kept = self._kept[path] = []
            self._seen[path] = set()
        if self.per_file is None:
            kept.append(diagnostic)  # sorted (and de-duplicated) once, at the end
            return
        seen = self._seen[path]
        if diagnostic in seen:
            return
        if len(kept) >= self.per_file:
            if self.per_file == 0 or diagnostic.sort_key >= kept[-1].sort_key:
                self.omitted[path] = self.omitted.get(path, 0) + 1
                return
            seen.discard(kept.pop())
            self.omitted[path] = self.omitted.get(path, 0) + 1
        from bisect import insort  # here: most runs never get this far

        insort(kept, diagnostic, key=_sort_key)
        seen.add(diagnostic)

    def failed(self, strict: bool = False) -> bool:
        return any(fails(severity, strict) for severity in self.severities)

    def diagnostics(self) -> Iterator[Diagnostic]:
        """What was kept, file by file in path order, each file's in sorted order."""
        for path in sorted(self._kept):
            kept = self._kept[path]
            yield from kept if self.per_file is not None else sorted_diagnostics(kept)
