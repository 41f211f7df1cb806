"""The grammar: FreeBSD's strsep cuts of a rule (spec 1.1) and rc.d/rctl's reading of
rctl.conf (spec 10), with the offsets the carets are placed by.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from corpus_host import corpus_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from rctlpolicy.grammar import (
    ACTION,
    AMOUNT,
    CONF_FILE,
    CONF_LINE,
    FIELD_NAMES,
    PER,
    RESOURCE,
    RULE,
    SUBJECT,
    SUBJECT_ID,
    parse_conf,
    parse_rule_syntax,
    pyparsing_grammar,
)

Fields = tuple[str | None, str | None, str | None, str | None, str | None, str | None]

CUTS: list[tuple[str, Fields]] = [
    ("user:80:maxproc:deny=10/user", ("user", "80", "maxproc", "deny", "10", "user")),
    # Missing trailing fields are absent, empty ones are empty: both mean "undefined".
    ("user", ("user", None, None, None, None, None)),
    ("user:", ("user", "", None, None, None, None)),
    ("user::", ("user", "", "", None, None, None)),
    ("user:::", ("user", "", "", "", None, None)),
    ("user:::=/", ("user", "", "", "", "", "")),
    ("", ("", None, None, None, None, None)),
    # Once the resource is cut, further colons stay inside the next field.
    ("a:b:c:x:deny=1", ("a", "b", "c", "x:deny", "1", None)),
    ("u:80:maxproc:deny=1:2", ("u", "80", "maxproc", "deny", "1:2", None)),
    ("u:80:maxproc:deny=1/user:x", ("u", "80", "maxproc", "deny", "1", "user:x")),
    ("u:80:maxproc:deny=1/user/x", ("u", "80", "maxproc", "deny", "1", "user/x")),
    ("u:80:maxproc:deny==10", ("u", "80", "maxproc", "deny", "=10", None)),
    # The action is cut at "=" or "/", whichever comes first.
    ("u:80:maxproc:deny/10", ("u", "80", "maxproc", "deny", "10", None)),
    ("u:80:maxproc:deny/user", ("u", "80", "maxproc", "deny", "user", None)),
    (":::=10", ("", "", "", "", "10", None)),
    # Nothing is trimmed.
    (" user :80: maxproc:deny =10 ", (" user ", "80", " maxproc", "deny ", "10 ", None)),
    ("a\nb:c\td", ("a\nb", "c\td", None, None, None, None)),
]


@pytest.mark.parametrize(("text", "fields"), CUTS, ids=[c[0] or "<empty>" for c in CUTS])
def test_cuts_like_strsep(text: str, fields: Fields) -> None:
    syntax = parse_rule_syntax(text)
    assert syntax.text == text
    assert syntax.fields == fields
    assert syntax.has_colon is (fields[SUBJECT_ID] is not None)
    for index in range(6):
        assert syntax.field(index) == fields[index]


def test_field_offsets() -> None:
    syntax = parse_rule_syntax("jail:db1:memoryuse:deny=8g/user")
    assert syntax.starts == (0, 5, 9, 19, 24, 27)
    for index, value in enumerate(syntax.fields):
        assert value is not None
        assert syntax.text[syntax.starts[index] :].startswith(value)


def test_absent_fields_start_where_the_text_ends() -> None:
    # That is where "missing resource" puts its caret.
    assert parse_rule_syntax("jail:db1").starts == (0, 5, 8, 8, 8, 8)
    assert parse_rule_syntax("jail").starts == (0, 4, 4, 4, 4, 4)


def test_tabs_count_as_one_column() -> None:
    # pyparsing would expand tabs before parsing unless told not to.
    syntax = parse_rule_syntax("a\tb:c\td:x")
    assert syntax.starts[:3] == (0, 4, 8)


@pytest.mark.parametrize(
    ("text", "separator", "per_present"),
    [
        ("u:80:maxproc:deny=10", "=", False),
        ("u:80:maxproc:deny/10", "/", False),
        ("u:80:maxproc:deny=10/", "=", True),
        ("u:80:maxproc:deny=/user", "=", True),
        ("u:80:maxproc:deny", None, False),
    ],
)
def test_separator_and_per_presence(text: str, separator: str | None, per_present: bool) -> None:
    syntax = parse_rule_syntax(text)
    assert syntax.separator == separator
    assert syntax.per_present is per_present


@pytest.mark.parametrize("text", ["\0", "::::::::", "====", "////", "\r\n", "é:ü:ß", "a" * 5000])
def test_never_fails(text: str) -> None:
    assert parse_rule_syntax(text).text == text


def test_grammar_elements_are_named() -> None:
    assert RULE.name == "rule"
    assert CONF_LINE.name == "rctl.conf line"
    assert CONF_FILE.name == "rctl.conf"
    indexes = (SUBJECT, SUBJECT_ID, RESOURCE, ACTION, AMOUNT, PER)
    assert [FIELD_NAMES[i] for i in indexes] == [
        "subject",
        "subject-id",
        "resource",
        "action",
        "amount",
        "per",
    ]


# --- rctl.conf ------------------------------------------------------------------------------


def test_conf_lines_numbers_comments_and_blanks() -> None:
    lines = parse_conf("# a comment\n\n   \njail:db1:maxproc:deny=10\n")
    assert [line.number for line in lines] == [1, 2, 3, 4]
    assert [line.rule is None for line in lines] == [True, True, True, False]
    assert lines[0].text == "# a comment"
    rule = lines[3].rule
    assert rule is not None
    assert rule.text == "jail:db1:maxproc:deny=10"


def test_conf_only_the_first_word_is_the_rule() -> None:
    (line,) = parse_conf("  jail:db1:maxproc:deny=10   # the web jail  \n")
    assert line.rule is not None
    assert line.rule.text == "jail:db1:maxproc:deny=10"
    assert line.column == 2
    assert line.rest == "# the web jail"
    assert line.rest_column == 29
    assert line.text == "  jail:db1:maxproc:deny=10   # the web jail  "


def test_conf_a_blank_inside_a_rule_cuts_it() -> None:
    (line,) = parse_conf("jail:db1:maxproc:deny= 10\n")
    assert line.rule is not None
    assert line.rule.fields[AMOUNT] == ""
    assert line.rest == "10"
    assert line.rest_column == 23


def test_conf_tabs_keep_their_columns() -> None:
    (line,) = parse_conf("\t\tjail:db1:maxproc:deny=10\t#x\n")
    assert line.column == 2
    assert line.rest == "#x"
    assert line.rest_column == 27
    assert line.rule is not None
    assert line.rule.starts[RESOURCE] == 9


def test_conf_a_hash_inside_a_word_is_not_a_comment() -> None:
    (line,) = parse_conf("jail:db1:maxproc:deny=10#x\n")
    assert line.rule is not None
    assert line.rule.fields[AMOUNT] == "10#x"
    assert line.rest is None


def test_conf_a_first_word_starting_with_hash_is_a_comment() -> None:
    (line,) = parse_conf("   #jail:db1:maxproc:deny=10\n")
    assert line.rule is None


def test_conf_carriage_returns_stay_in_the_word() -> None:
    # rc.d/rctl splits on blanks, tabs and newlines only.
    lines = parse_conf("jail:db1:maxproc:deny=10\r\nuser:80:nthr:deny=5\r\n")
    assert [line.rule.text if line.rule else None for line in lines] == [
        "jail:db1:maxproc:deny=10\r",
        "user:80:nthr:deny=5\r",
    ]


def test_conf_last_line_without_newline_and_empty_text() -> None:
    lines = parse_conf("a:b\nc:d")
    assert [line.number for line in lines] == [1, 2]
    assert parse_conf("") == []
    assert [line.rule for line in parse_conf("\n")] == [None]


def test_conf_rule_offsets_are_relative_to_the_word() -> None:
    (line,) = parse_conf("    jail:db1:memoryuze:deny=8g\n")
    assert line.rule is not None
    assert line.column + line.rule.starts[RESOURCE] + 1 == 14


# --- the hot path cuts every string as the grammar of record (pyparsing) does --------------

#: Strings made mostly of what the grammar cares about: separators, blanks, newlines, '#'.
SEPARATORS = st.lists(
    st.sampled_from([*":=/ \t\n\r#\0ab1é", "user", "jail", "deny", "10"]), max_size=30
).map("".join)
SAME_CUT = settings(max_examples=400, deadline=None)


def _corpus_texts() -> list[str]:
    return [case["rule"] for case in corpus_cases()]


@pytest.mark.parametrize("text", [text for text, _ in CUTS] + _corpus_texts())
def test_the_hot_path_cuts_rules_like_pyparsing(text: str) -> None:
    assert parse_rule_syntax(text) == pyparsing_grammar().rule_syntax(text)


def test_the_hot_path_reads_rctl_conf_like_pyparsing() -> None:
    corpus = "\n".join(_corpus_texts())
    for text in (corpus, corpus + "\n", "  " + corpus.replace("\n", "  # x\n\t")):
        assert parse_conf(text) == pyparsing_grammar().conf(text)


@SAME_CUT
@given(st.one_of(SEPARATORS, st.text(max_size=40)))
def test_any_string_is_cut_the_same_way(text: str) -> None:
    assert parse_rule_syntax(text) == pyparsing_grammar().rule_syntax(text)
    assert parse_conf(text) == pyparsing_grammar().conf(text)


def test_lint_does_not_import_pyparsing() -> None:
    """The grammar of record is built on first use: the hot path never needs it."""
    code = (
        "import sys; from rctlpolicy.lint import lint_files; from rctlpolicy.policy import "
        "PolicyFile; lint_files([PolicyFile('a.conf', 'jail:a:maxproc:deny=1\\n')]); "
        "print('pyparsing' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False\n"
