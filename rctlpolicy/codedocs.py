"""The registry of diagnostic codes, written out: `rctlpolicy lint --list-codes` (text or JSON)
and docs/lint-codes.md (Markdown). Generated, never written by hand, so the documentation of
a code cannot drift from the code: tests/test_codes.py compares docs/lint-codes.md with
`markdown()` (RCTLPOLICY_UPDATE_GOLDEN=1 rewrites it).
"""

from __future__ import annotations

import html
import importlib
import inspect
import json
import pkgutil

from rctlpolicy.codes import ALL_CODES, EXAMPLE_HOST, Checker, DiagnosticCode, Example

_HEADERS = ("CODE", "SEVERITY", "REPORTED BY", "SUMMARY")
#: Example lines longer than this are shortened in the Markdown table.
_LONGEST_LINE = 72


def text_table() -> str:
    """One line per code: code, severity, who reports it, summary (aligned columns)."""
    rows = [_HEADERS] + [(str(c), c.severity.value, c.checker.value, c.summary) for c in ALL_CODES]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}\n"
        for row in rows
    )


def _example_json(example: Example) -> dict[str, object]:
    return {
        "file": example.file,
        "text": example.text,
        "resolve": example.resolve,
        "mode": f"{example.mode:04o}",
    }


def json_document() -> str:
    """Every code with its severity, summary and both examples, as one JSON document."""
    codes = [
        {
            "code": str(code),
            "severity": code.severity.value,
            "reported_by": code.checker.value,
            "summary": code.summary,
            "fails": _example_json(code.fails),
            "passes": _example_json(code.passes),
        }
        for code in ALL_CODES
    ]
    return json.dumps({"codes": codes}, indent=2) + "\n"


def _visible(char: str) -> str:
    if char.isprintable():
        return char
    if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8, as surrogateescape holds it
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


def _shown_line(line: str) -> str:
    visible = "".join(_visible(c) for c in line)
    if len(visible) > _LONGEST_LINE:
        visible = f"{visible[:40]}… ({len(line)} characters)"
    return visible


def _cell(example: Example) -> str:
    """An example in a table cell: its file name, its lines (HTML, so line breaks survive)."""
    text = example.text
    lines = text.removesuffix("\n").split("\n") if text else [""]
    body = "<br>".join(html.escape(_shown_line(line), quote=False) for line in lines)
    body = body.replace("|", "&#124;")
    notes = []
    if example.file != "rctl.conf":
        notes.append(example.file)
    if example.resolve:
        notes.append("--resolve")
    if example.mode != 0o644:
        notes.append(f"mode {example.mode:04o}")
    if text and not text.endswith("\n"):
        notes.append("no newline at the end")
    prefix = f"<i>{html.escape(', '.join(notes))}</i><br>" if notes else ""
    return f"{prefix}<code>{body}</code>"


def _checks_documentation() -> list[str]:
    """Each cross-rule check's own documentation: its module's docstring."""
    import rctlpolicy.checks as package

    sections = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if not hasattr(module, "check"):
            continue  # checks.base: what the checks share, not a check
        doc = inspect.getdoc(module) or ""
        title, _, body = doc.partition("\n\n")
        sections.append(f"### {' '.join(title.split())}\n\n{body.strip()}\n")
    return sections


def _row(code: DiagnosticCode) -> str:
    return (
        f"| `{code}` | {code.severity.value} | {code.checker.value} | {code.summary} | "
        f"{_cell(code.fails)} | {_cell(code.passes)} |\n"
    )


def markdown() -> str:
    """docs/lint-codes.md."""
    head = (
        "# Lint codes\n\n"
        "Every diagnostic code rctlpolicy reports. This file is generated from the registry "
        "(`rctlpolicy/codes.py`); `rctlpolicy lint --list-codes` prints the same list. "
        "tests/test_codes.py lints each example and fails when this file is stale "
        "(`RCTLPOLICY_UPDATE_GOLDEN=1` rewrites it).\n\n"
        "Each example is a whole policy file, `rctl.conf` unless named. The first produces "
        "the code, the second does not. Examples marked --resolve are checked as "
        f"`rctlpolicy lint --resolve` would on a host with {EXAMPLE_HOST}. Codes reported "
        f"by *{Checker.DAEMON.value}* come from the daemon's reading of its rules directory "
        "(its examples are files there); the others from `rctlpolicy lint` and every "
        "command that loads a policy.\n\n"
        "| Code | Severity | Reported by | Meaning | Produces it | Does not |\n"
        "|---|---|---|---|---|---|\n"
    )
    checks = "\n".join(_checks_documentation())
    return (
        head
        + "".join(_row(code) for code in ALL_CODES)
        + "\n## Checks across the whole policy\n\n"
        + "Each is a module of `rctlpolicy/checks/`; this is its docstring.\n\n"
        + checks
    )
