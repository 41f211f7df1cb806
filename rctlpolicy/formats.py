"""Text renderings of diagnostics for people and machines (cli.py prints them, the daemon logs
them).

`render` is the streaming formatter: it takes diagnostics sorted by file and yields one chunk
of text per diagnostic, never holding more than one, so printing a million findings costs no
more memory than printing one. It caps how many are shown per file (then `... and N more in
FILE`) and how long a quoted source line may be. `format_text` & co. join its chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum

from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.model import Severity
from rctlpolicy.policy_model import Policy

#: What `rctlpolicy lint` prints per file before `... and N more in FILE` (JSON keeps all).
LINT_PER_FILE = 200


class Style(StrEnum):
    TEXT = "text"  # compiler style, with the source line and a caret
    PARSABLE = "parsable"  # yamllint's `file:line:col: [level] message (code)`
    GITHUB = "github"  # GitHub Actions workflow commands


_COLOURS = {
    Severity.ERROR: "\033[1;31m",
    Severity.WARNING: "\033[1;33m",
    Severity.INFO: "\033[1;36m",
}
_BOLD, _BLUE, _RESET = "\033[1m", "\033[1;34m", "\033[0m"
_CUT = "..."


def clean(text: str) -> str:
    """Control characters from a policy file never reach the terminal (or split a line)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def where(d: Diagnostic) -> str:
    """`path:line:col`, or less when the place is not known (line or column 0)."""
    if d.line <= 0:
        return d.path
    if d.column <= 0:
        return f"{d.path}:{d.line}"
    return f"{d.path}:{d.line}:{d.column}"


def _window(source: str, column: int, width: int, limit: int | None) -> tuple[str, int, int]:
    """The part of a source line to quote, where the caret goes in it (0-based) and how wide:
    at most `limit` characters of the line, around the caret, `...` where it was cut."""
    caret = max(0, column - 1)
    if limit is None or len(source) <= limit:
        return source, caret, width
    start = max(0, min(caret - limit // 3, len(source) - limit))
    end = start + limit
    shown = (_CUT if start else "") + source[start:end] + (_CUT if end < len(source) else "")
    at = caret - start + (len(_CUT) if start else 0)
    return shown, at, max(1, min(width, end - caret))


def _text(d: Diagnostic, colour: bool, source_width: int | None) -> str:
    level = d.severity.value
    message = clean(d.message)
    if colour:
        out = [
            f"{_BOLD}{where(d)}:{_RESET} "
            f"{_COLOURS[d.severity]}{level}[{d.code}]{_RESET}{_BOLD}: {message}{_RESET}"
        ]
    else:
        out = [f"{where(d)}: {level}[{d.code}]: {message}"]
    gutter = " " * len(str(d.line))
    if d.source_line is not None:
        source, at, width = _window(
            d.source_line.replace("\t", " "), d.column, d.width, source_width
        )
        caret = " " * at + "^" + "~" * max(0, width - 1)
        bar = f"{_BLUE}|{_RESET}" if colour else "|"
        if colour:
            caret = f"{_COLOURS[d.severity]}{caret}{_RESET}"
        out.append(f" {d.line} {bar} {clean(source)}")
        out.append(f" {gutter} {bar} {caret}")
    if d.suggestion:
        help_word = f"{_BOLD}help{_RESET}" if colour else "help"
        out.append(f" {gutter} = {help_word}: {clean(d.suggestion)}")
    return "\n".join(out) + "\n"


def _parsable(d: Diagnostic) -> str:
    return f"{where(d)}: [{d.severity.value}] {clean(d.message)} ({d.code})\n"


def _github_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


_GITHUB_KINDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _github(d: Diagnostic) -> str:
    message = d.message + (f" ({d.suggestion})" if d.suggestion else "")
    place = f"file={_github_escape(d.path, True)}"
    if d.line > 0:
        place += f",line={d.line}"
        if d.column > 0:
            place += f",col={d.column}"
    return (
        f"::{_GITHUB_KINDS[d.severity]} {place},"
        f"title={_github_escape(d.code, True)}::{_github_escape(message)}\n"
    )


def _more(count: int, path: str) -> str:
    return f"... and {count} more in {clean(path)}\n"


def render(
    diagnostics: Iterable[Diagnostic],
    style: Style = Style.TEXT,
    *,
    per_file: int | None = None,
    source_width: int | None = None,
    colour: bool = False,
    omitted: Mapping[str, int] | None = None,
) -> Iterator[str]:
    """Render diagnostics sorted by file, one chunk (one or more whole lines) at a time.

    `per_file`: show at most this many diagnostics of a file, then `... and N more in FILE`.
    `source_width`: quote at most this many characters of a source line (text style), cut
    around the caret. `omitted`: diagnostics per path known to exist beyond those given (a
    `DiagnosticCollector` that kept only `per_file`), counted in the `... and N more` line.
    """
    extra = omitted or {}
    path: str | None = None
    shown = hidden = 0
    for d in diagnostics:
        if d.path != path:
            if path is not None and hidden + extra.get(path, 0):
                yield _more(hidden + extra.get(path, 0), path)
            path, shown, hidden = d.path, 0, 0
        if per_file is not None and shown >= per_file:
            hidden += 1
            continue
        shown += 1
        if style is Style.TEXT:
            yield _text(d, colour, source_width)
        elif style is Style.PARSABLE:
            yield _parsable(d)
        else:
            yield _github(d)
    if path is not None and hidden + extra.get(path, 0):
        yield _more(hidden + extra.get(path, 0), path)


def format_text(diagnostics: Iterable[Diagnostic], colour: bool = False) -> str:
    """Compiler style: `path:line:col: error[code]: message`, the line, a caret, `help:`."""
    return "".join(render(diagnostics, Style.TEXT, colour=colour))


def format_parsable(diagnostics: Iterable[Diagnostic]) -> str:
    """yamllint's parsable format: `file:line:col: [level] message (code)`."""
    return "".join(render(diagnostics, Style.PARSABLE))


def format_github(diagnostics: Iterable[Diagnostic]) -> str:
    """GitHub Actions workflow commands (annotations)."""
    return "".join(render(diagnostics, Style.GITHUB))


def _json_list(key: str, items: Iterable[Mapping[str, object]]) -> Iterator[str]:
    """`"key": [...]` exactly as json.dumps(..., indent=2) writes it one level down, an item
    at a time."""
    import json  # only this format needs it: `rctlpolicy lint` starts without it

    first = True
    for item in items:
        body = json.dumps(item, indent=2).replace("\n", "\n    ")
        yield (f'  "{key}": [\n    ' if first else ",\n    ") + body
        first = False
    yield f'  "{key}": []' if first else "\n  ]"


def render_json(diagnostics: Iterable[Diagnostic], policy: Policy) -> Iterator[str]:
    """The JSON document (every diagnostic and the rules read), written piece by piece: the
    same text as json.dumps(document, indent=2)."""
    yield "{\n"
    yield from _json_list("diagnostics", (d.as_dict() for d in diagnostics))
    yield ",\n"
    yield from _json_list(
        "rules",
        (
            {"path": r.source.path, "line": r.source.line, "rule": r.text, "canonical": r.canonical}
            for r in policy.rules
        ),
    )
    yield "\n}\n"


def format_json(diagnostics: Iterable[Diagnostic], policy: Policy) -> str:
    return "".join(render_json(diagnostics, policy))
