"""Text renderings of diagnostics for people and machines (cli.py prints them)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.model import Severity
from rctlpolicy.policy_model import Policy

_COLOURS = {
    Severity.ERROR: "\033[1;31m",
    Severity.WARNING: "\033[1;33m",
    Severity.INFO: "\033[1;36m",
}
_BOLD, _BLUE, _RESET = "\033[1m", "\033[1;34m", "\033[0m"


def _clean(text: str) -> str:
    """Control characters from a policy file never reach the terminal (or split a line)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_text(diagnostics: Sequence[Diagnostic], colour: bool = False) -> str:
    """Compiler style: `path:line:col: error[code]: message`, the line, a caret, `help:`."""
    out: list[str] = []
    for d in diagnostics:
        level = d.severity.value
        message = _clean(d.message)
        if colour:
            head = (
                f"{_BOLD}{d.path}:{d.line}:{d.column}:{_RESET} "
                f"{_COLOURS[d.severity]}{level}[{d.code}]{_RESET}{_BOLD}: {message}{_RESET}"
            )
        else:
            head = f"{d.path}:{d.line}:{d.column}: {level}[{d.code}]: {message}"
        out.append(head)
        gutter = " " * len(str(d.line))
        if d.source_line is not None:
            source = _clean(d.source_line.replace("\t", " "))
            caret = " " * max(0, d.column - 1) + "^" + "~" * max(0, d.width - 1)
            bar = f"{_BLUE}|{_RESET}" if colour else "|"
            if colour:
                caret = f"{_COLOURS[d.severity]}{caret}{_RESET}"
            out.append(f" {d.line} {bar} {source}")
            out.append(f" {gutter} {bar} {caret}")
        if d.suggestion:
            help_word = f"{_BOLD}help{_RESET}" if colour else "help"
            out.append(f" {gutter} = {help_word}: {_clean(d.suggestion)}")
    return "\n".join(out) + ("\n" if out else "")


def format_parsable(diagnostics: Sequence[Diagnostic]) -> str:
    """yamllint's parsable format: `file:line:col: [level] message (code)`."""
    return "".join(
        f"{d.path}:{d.line}:{d.column}: [{d.severity.value}] {_clean(d.message)} ({d.code})\n"
        for d in diagnostics
    )


def _github_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def format_github(diagnostics: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands (annotations)."""
    kinds = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = []
    for d in diagnostics:
        message = d.message + (f" ({d.suggestion})" if d.suggestion else "")
        lines.append(
            f"::{kinds[d.severity]} file={_github_escape(d.path, True)},line={d.line},"
            f"col={d.column},title={_github_escape(d.code, True)}::{_github_escape(message)}\n"
        )
    return "".join(lines)


def format_json(diagnostics: Sequence[Diagnostic], policy: Policy) -> str:
    document = {
        "diagnostics": [d.as_dict() for d in diagnostics],
        "rules": [
            {"path": r.source.path, "line": r.source.line, "rule": r.text, "canonical": r.canonical}
            for r in policy.rules
        ],
    }
    return json.dumps(document, indent=2) + "\n"
