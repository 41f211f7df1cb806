"""What a check reports: a problem with one field of a rule, under a registered code."""

from __future__ import annotations

from collections.abc import Sequence

from rctlpolicy.codes import DiagnosticCode
from rctlpolicy.model import Severity
from rctlpolicy.records import NamedTuple

RULE_TEXT_MAX = 4095  # RCTL_MAX_INBUFSIZE - 1 (the NUL)


class Problem(NamedTuple):
    """One finding about one field (`field` is a grammar field index, None for the whole rule)."""

    field: int | None
    code: DiagnosticCode
    message: str
    suggestion: str | None = None
    #: The errno FreeBSD's kernel returns, or "RCTL8" when rctl(8) refuses before sending.
    errno: str | None = None
    #: Offset of the caret inside the field, and how much to underline (None: the field).
    offset: int = 0
    width: int | None = None

    @property
    def severity(self) -> Severity:
        return self.code.severity


_ERROR = Severity.ERROR


def first_error(problems: Sequence[Problem]) -> Problem | None:
    """The first error, which is the one FreeBSD reports (problems are in its order)."""
    for problem in problems:
        if problem.code.severity is _ERROR:
            return problem
    return None


def has_error(problems: Sequence[Problem]) -> bool:
    for problem in problems:  # noqa: SIM110 (a plain loop: this runs for every rule)
        if problem.code.severity is _ERROR:
            return True
    return False


def byte_length_over(text: str, limit: int) -> bool:
    """len(text.encode()) > limit, without encoding the common short text (UTF-8 needs at
    most 4 bytes a character)."""
    return len(text) * 4 > limit and len(text.encode()) > limit
