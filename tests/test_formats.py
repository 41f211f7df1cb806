"""The streaming formatter (formats.render) and the collector that keeps what it shows."""

from __future__ import annotations

import json

import pytest

from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector
from rctlpolicy.formats import Style, format_json, format_text, render, render_json
from rctlpolicy.model import Action, Resource, Rule, Severity, SubjectType
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation


def finding(path: str, line: int, column: int = 1, **changes: object) -> Diagnostic:
    values: dict[str, object] = {
        "severity": Severity.ERROR,
        "code": "invalid-amount",
        "message": f"problem on line {line}",
        "suggestion": None,
        "source_line": None,
        "width": 1,
    }
    values.update(changes)
    return Diagnostic(path, line, column, **values)  # type: ignore[arg-type]


def test_at_most_per_file_then_how_many_more() -> None:
    findings = [finding("a.conf", n) for n in range(1, 6)] + [finding("b.conf", 1)]
    chunks = list(render(findings, Style.PARSABLE, per_file=2))
    assert chunks == [
        "a.conf:1:1: [error] problem on line 1 (invalid-amount)\n",
        "a.conf:2:1: [error] problem on line 2 (invalid-amount)\n",
        "... and 3 more in a.conf\n",
        "b.conf:1:1: [error] problem on line 1 (invalid-amount)\n",
    ]


@pytest.mark.parametrize("style", list(Style))
def test_every_style_says_how_many_more(style: Style) -> None:
    findings = [finding("a.conf", n) for n in range(1, 4)]
    chunks = list(render(findings, style, per_file=1, omitted={"a.conf": 10}))
    assert len(chunks) == 2
    assert chunks[-1] == "... and 12 more in a.conf\n"


def test_render_is_lazy() -> None:
    def endless() -> object:
        line = 0
        while True:
            line += 1
            yield finding("a.conf", line)

    chunks = render(endless(), Style.TEXT, per_file=5)  # type: ignore[arg-type]
    assert next(chunks).startswith("a.conf:1:1: error[invalid-amount]")


def test_without_a_place_the_path_is_said_alone() -> None:
    unreadable = finding("rules/a.conf", 0, 0, code="io-error", message="Permission denied")
    assert format_text([unreadable]) == "rules/a.conf: error[io-error]: Permission denied\n"
    parsable = "".join(render([unreadable], Style.PARSABLE))
    assert parsable == "rules/a.conf: [error] Permission denied (io-error)\n"
    github = "".join(render([unreadable], Style.GITHUB))
    assert github == "::error file=rules/a.conf,title=io-error::Permission denied\n"
    no_column = finding("a.conf", 3, 0)
    assert format_text([no_column]).startswith("a.conf:3: error")


LONG = "x" * 300 + "jail:db1:memoryuze:deny=8g" + "y" * 300


@pytest.mark.parametrize("width", [40, 80, 200])
def test_quoted_source_lines_are_cut_around_the_caret(width: int) -> None:
    column = LONG.index("memoryuze") + 1
    d = finding("a.conf", 7, column, source_line=LONG, width=len("memoryuze"))
    _, quoted, caret = "".join(render([d], source_width=width)).splitlines()[:3]
    shown = quoted[len(" 7 | ") :]
    assert shown.startswith("...") and shown.endswith("...")
    assert len(shown) == width + len("......")
    at = caret[len(" 7 | ") :].index("^")
    assert shown[at : at + len("memoryuze")] == "memoryuze"
    assert caret[len(" 7 | ") :].strip() == "^" + "~" * (len("memoryuze") - 1)
    assert LONG in format_text([d])  # no limit: the whole line


def test_a_short_line_is_quoted_whole() -> None:
    d = finding("a.conf", 1, 6, source_line="jail:db1:x", width=3)
    assert "".join(render([d], source_width=200)) == format_text([d])


def test_a_caret_near_either_end_stays_on_the_line() -> None:
    for column in (1, len(LONG)):
        d = finding("a.conf", 1, column, source_line=LONG)
        _, quoted, caret = "".join(render([d], source_width=50)).splitlines()[:3]
        assert quoted[5:][caret[5:].index("^")] == LONG[column - 1]


# --- the collector ---------------------------------------------------------------------------


def test_the_collector_keeps_the_first_per_file_in_sorted_order_whatever_the_arrival() -> None:
    collected = DiagnosticCollector(per_file=3)
    for line in (9, 2, 7, 1, 8, 3, 5):
        collected.add(finding("b.conf", line))
    collected.add(finding("a.conf", 4, severity=Severity.WARNING))
    assert [(d.path, d.line) for d in collected.diagnostics()] == [
        ("a.conf", 4),
        ("b.conf", 1),
        ("b.conf", 2),
        ("b.conf", 3),
    ]
    assert collected.omitted == {"b.conf": 4}
    assert collected.failed() and collected.failed(strict=True)


def test_the_collector_counts_what_it_does_not_show() -> None:
    collected = DiagnosticCollector(per_file=5, shown=lambda d: d.severity is Severity.INFO)
    collected.add(finding("a.conf", 1, severity=Severity.WARNING))
    collected.add(finding("a.conf", 2, severity=Severity.INFO))
    assert [d.line for d in collected.diagnostics()] == [2]
    assert not collected.failed()
    assert collected.failed(strict=True)


def test_the_collector_drops_duplicates() -> None:
    for per_file in (None, 10):
        collected = DiagnosticCollector(per_file)
        for _ in range(3):
            collected.add(finding("a.conf", 1))
        assert len(list(collected.diagnostics())) == 1


def test_json_is_written_piece_by_piece_as_json_dumps_would() -> None:
    rule = Rule(SubjectType.JAIL, "a", Resource.MAXPROC, Action.DENY, 1, SubjectType.JAIL)
    policy = Policy((PolicyRule(rule, SourceLocation("a.conf", 2, 1), "j:a:maxproc:deny=1"),))
    findings = [finding("a.conf", 1, suggestion='é "quoted"'), finding("a.conf", 2)]
    for diagnostics, rules in (
        (findings, policy),
        ([], policy),
        (findings, Policy(())),
        ([], Policy(())),
    ):
        expected = {
            "diagnostics": [d.as_dict() for d in diagnostics],
            "rules": [
                {
                    "path": r.source.path,
                    "line": r.source.line,
                    "rule": r.text,
                    "canonical": r.canonical,
                }
                for r in rules.rules
            ],
        }
        assert format_json(diagnostics, rules) == json.dumps(expected, indent=2) + "\n"
        assert "".join(render_json(iter(diagnostics), rules)) == format_json(diagnostics, rules)
