"""The RCTL rule grammar, and rctl.conf's line grammar.

Both layers of FreeBSD cut a rule into fields the same way (kern_rctl.c:rctl_string_to_rule,
strsep(3) cuts), so the grammar is exactly that cut; what the fields may contain is checked by
`rctlpolicy.semantics`, which can then say what was meant ("did you mean 'memoryuse'?")::

    rule      ::= subject [ ":" subject_id [ ":" resource [ ":" action
                  [ ("=" | "/") amount [ "/" per ] ] ] ] ]
    subject    ::= { any character but ":" }
    subject_id ::= { any character but ":" }
    resource   ::= { any character but ":" }
    action     ::= { any character but "=" and "/" }
    amount     ::= { any character but "/" }
    per        ::= { any character }              (further "/" or ":" stay inside per)

A missing trailing field and an empty one both mean "undefined" (a wildcard in filters).

rctl.conf, as rc.d/rctl reads it (`read var comments` with the default IFS)::

    line    ::= [blanks] ( comment | word [blanks rest] | ) [blanks] newline
    comment ::= "#" { any character }           (only when the first word starts with "#")
    word    ::= rule without blanks              (only the first word is used)

The grammar is written once, as the pieces below (what each field may hold, the separators,
blanks, comments), and assembled two ways:

- `pyparsing_grammar()`: the grammar of record, in pyparsing, one named element per field.
  It is built on first use: importing pyparsing alone would be a third of the start-up that
  pre-commit pays for `rctlpolicy lint` on every commit.
- `parse_rule_syntax` and `iter_conf`, the hot path: the same pieces joined into one compiled
  regular expression, read through the match's group offsets (a policy of 20,000 rules is one
  `finditer`). tests/test_grammar.py proves, over the corpus and generated strings, that both
  cut every string identically.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

from rctlpolicy.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import pyparsing as pp

#: Field indexes, in rule order.
SUBJECT, SUBJECT_ID, RESOURCE, ACTION, AMOUNT, PER = range(6)
FIELD_NAMES = ("subject", "subject-id", "resource", "action", "amount", "per")

# --- the pieces ------------------------------------------------------------------------------

#: Result names of the fields (FIELD_NAMES as identifiers), in rule order.
_GROUPS = ("subject", "subject_id", "resource", "action", "amount", "per")
#: What ends each field (strsep's delimiters); per runs to the end.
_STOPS = {"subject": ":", "subject_id": ":", "resource": ":", "action": "=/", "amount": "/"}
_FIELD_SEPARATOR = ":"
_AMOUNT_SEPARATOR = "[=/]"  # action "=" amount, or action "/" amount (rctl(8) accepts both)
_PER_SEPARATOR = "/"
#: rctl.conf: what IFS splits words on, and the other parts of a line.
_BLANK = " \t"
_BLANKS = "[ \t]+"
_OPTIONAL_BLANKS = "[ \t]*"
_COMMENT = r"\#[^\n]*"
_REST = r"[^\n]*?(?=[ \t]*(?:\n|\Z))"  # what follows the word, less trailing blanks
_END_OF_LINE = r"(?:\n|\Z)"


def _field_pattern(group: str, blank: str) -> str:
    """What one field may hold: anything up to its delimiter, or (in an rctl.conf word) up to
    a blank or the end of the line."""
    stops = _STOPS.get(group, "")
    if not stops and not blank:
        return "(?s:.)*"
    return f"[^{re.escape(stops + blank)}]*"


# --- the hot path: the pieces as one regular expression -----------------------------------


def _rule_regex(blank: str) -> str:
    def field(group: str) -> str:
        return f"(?P<{group}>{_field_pattern(group, blank)})"

    return (
        field("subject")
        + f"(?:{_FIELD_SEPARATOR}{field('subject_id')}"
        + f"(?:{_FIELD_SEPARATOR}{field('resource')}"
        + f"(?:{_FIELD_SEPARATOR}{field('action')}"
        + f"(?:(?P<sep>{_AMOUNT_SEPARATOR}){field('amount')}"
        + f"(?:(?P<slash>{_PER_SEPARATOR}){field('per')})?)?)?)?)?"
    )


_WORD_BLANKS = _BLANK + "\n"
_CONF_LINE_RE = re.compile(
    rf"(?!\Z){_OPTIONAL_BLANKS}(?:(?P<comment>{_COMMENT})|(?P<word>{_rule_regex(_WORD_BLANKS)})"
    rf"(?:{_BLANKS}(?P<rest>{_REST}))?{_OPTIONAL_BLANKS})?{_END_OF_LINE}"
)


class RuleSyntax(NamedTuple):
    """A rule cut into its six fields; None for a field that is absent.

    `starts[i]` is field i's 0-based offset in `text` (where it would start when absent).
    """

    text: str
    fields: tuple[str | None, str | None, str | None, str | None, str | None, str | None]
    starts: tuple[int, int, int, int, int, int]
    #: The character between action and amount ("=" or "/"), None when absent.
    separator: str | None
    #: Whether a "/" introduced a per part (rctl(8) re-emits it even when empty).
    per_present: bool

    @property
    def has_colon(self) -> bool:
        return self.fields[SUBJECT_ID] is not None

    def field(self, index: int) -> str | None:
        return self.fields[index]


def _group_numbers(pattern: re.Pattern[str], *names: str) -> tuple[int, ...]:
    return tuple(pattern.groupindex[name] for name in names)


_FIELD_GROUPS = (*_GROUPS, "sep", "slash")


@cache
def _rule_re() -> tuple[re.Pattern[str], tuple[int, ...]]:
    """The rule pattern and its group numbers, compiled on first use (rctl.conf lines have
    their own pattern: `rctlpolicy lint rctl.conf` never needs this one)."""
    pattern = re.compile(_rule_regex(""))
    return pattern, _group_numbers(pattern, *_FIELD_GROUPS)


_CONF_GROUPS = _group_numbers(_CONF_LINE_RE, *_FIELD_GROUPS)
_CONF_WORD_GROUP, _CONF_REST_GROUP = _group_numbers(_CONF_LINE_RE, "word", "rest")


def _syntax_from_match(
    match: re.Match[str], text: str, base: int, numbers: tuple[int, ...]
) -> RuleSyntax:
    # Group numbers and `regs` instead of names and start()/end() calls: this runs once per
    # rule of a policy file, the hot path of lint.
    n0, n1, n2, n3, n4, n5, n_sep, n_slash = numbers
    regs = match.regs
    group = match.group
    # An absent field "starts" where the previous one ended: where a caret should point.
    start, end = regs[n0]
    s0 = start - base
    last = end - base
    starts = [s0]
    for number in (n1, n2, n3, n4, n5):
        start, end = regs[number]
        if start < 0:
            starts.append(last)
        else:
            starts.append(start - base)
            last = end - base
    return RuleSyntax(
        text=text,
        fields=(group(n0), group(n1), group(n2), group(n3), group(n4), group(n5)),
        starts=(s0, starts[1], starts[2], starts[3], starts[4], starts[5]),
        separator=group(n_sep),
        per_present=regs[n_slash][0] >= 0,
    )


def parse_rule_syntax(text: str) -> RuleSyntax:
    """Cut any string into rule fields exactly as kern_rctl.c does (this never fails)."""
    pattern, groups = _rule_re()
    match = pattern.match(text)
    assert match is not None  # every field may be empty: the pattern matches any string
    return _syntax_from_match(match, text, 0, groups)


class ConfLine(NamedTuple):
    """One line of an rctl.conf file as rc.d/rctl reads it."""

    number: int
    text: str
    #: The rule word (None for blank and comment lines) and its 0-based column.
    rule: RuleSyntax | None
    column: int
    #: Text after the rule word, which rc.d/rctl silently drops (None when there is none).
    rest: str | None
    rest_column: int


def conf_line_at(text: str, start: int, number: int) -> tuple[ConfLine, int]:
    """The rctl.conf line that starts at `start` (its number is `number`; `start` is before
    the end of the text), and where the next line starts."""
    match = _CONF_LINE_RE.match(text, start)
    assert match is not None  # every line matches: each part of a line may be empty
    end = match.end()
    line_text = text[start:end].rstrip("\n")
    word = match.group(_CONF_WORD_GROUP)
    if not word:
        return ConfLine(number, line_text, None, 0, None, 0), end
    word_start = match.start(_CONF_WORD_GROUP)
    syntax = _syntax_from_match(match, word, word_start, _CONF_GROUPS)
    rest = match.group(_CONF_REST_GROUP) or None
    rest_column = match.start(_CONF_REST_GROUP) - start if rest else 0
    return ConfLine(number, line_text, syntax, word_start - start, rest, rest_column), end


def iter_conf(text: str) -> Iterator[ConfLine]:
    """Read rctl.conf text line by line; every line is accepted here, checks come later."""
    start, number, size = 0, 0, len(text)
    while start < size:
        number += 1
        line, start = conf_line_at(text, start, number)
        yield line


def parse_conf(text: str) -> list[ConfLine]:
    """All the lines of rctl.conf text (`iter_conf`, as a list)."""
    return list(iter_conf(text))


# --- the grammar of record: the pieces in pyparsing --------------------------------------------


class PyparsingGrammar:
    """The pyparsing elements, and the readings the hot path must agree with."""

    __slots__ = ("conf_file", "conf_line", "rule")

    def __init__(
        self, rule: pp.ParserElement, conf_line: pp.ParserElement, conf_file: pp.ParserElement
    ) -> None:
        self.rule = rule
        self.conf_line = conf_line
        self.conf_file = conf_file

    def rule_syntax(self, text: str) -> RuleSyntax:
        """`parse_rule_syntax`, through pyparsing."""
        return _syntax_from_results(self.rule.parse_string(text), text, 0)

    def conf(self, text: str) -> list[ConfLine]:
        """`parse_conf`, through pyparsing."""
        lines: list[ConfLine] = []
        for number, line in enumerate(self.conf_file.parse_string(text, parse_all=True), 1):
            line_start = line["start"]
            line_text = text[line_start : line["end"]].rstrip("\n")
            word = line.get("word")
            if word is None or word.locn_start == word.locn_end:
                lines.append(ConfLine(number, line_text, None, 0, None, 0))
                continue
            syntax = _syntax_from_results(
                word.value, text[word.locn_start : word.locn_end], word.locn_start
            )
            rest = line.get("rest")
            rest_text = rest.value[0] if rest is not None and rest.value[0] else None
            lines.append(
                ConfLine(
                    number,
                    line_text,
                    syntax,
                    word.locn_start - line_start,
                    rest_text,
                    rest.locn_start - line_start if rest_text else 0,
                )
            )
        return lines


def _named(results: pp.ParseResults, name: str) -> Any:
    """The result of that name, None when absent (ParseResults.get is not typed)."""
    return results.get(name)  # type: ignore[no-untyped-call]


def _syntax_from_results(results: pp.ParseResults, text: str, base: int) -> RuleSyntax:
    values: list[str | None] = []
    starts: list[int] = []
    last = 0
    for group in _GROUPS:
        located = _named(results, group)
        if located is None:
            values.append(None)
            starts.append(last)
        else:
            values.append(located.value[0])
            starts.append(located.locn_start - base)
            last = located.locn_end - base
    f0, f1, f2, f3, f4, f5 = values
    s0, s1, s2, s3, s4, s5 = starts
    fields = (f0, f1, f2, f3, f4, f5)
    return RuleSyntax(
        text,
        fields,
        (s0, s1, s2, s3, s4, s5),
        _named(results, "sep"),
        "slash" in results,
    )


@cache
def pyparsing_grammar() -> PyparsingGrammar:
    """The grammar of record, built (and pyparsing imported) on first use."""
    import pyparsing as pp

    def rule(blank: str, name: str) -> pp.ParserElement:
        def field(group: str, index: int) -> pp.ParserElement:
            element = pp.Regex(_field_pattern(group, blank)).set_name(FIELD_NAMES[index])
            return pp.Located(element)(group)

        per = pp.Opt(pp.Literal(_PER_SEPARATOR)("slash") + field("per", PER))
        amount = pp.Opt(pp.Regex(_AMOUNT_SEPARATOR)("sep") + field("amount", AMOUNT) + per)
        action = pp.Opt(pp.Suppress(_FIELD_SEPARATOR) + field("action", ACTION) + amount)
        resource = pp.Opt(pp.Suppress(_FIELD_SEPARATOR) + field("resource", RESOURCE) + action)
        subject_id = pp.Opt(
            pp.Suppress(_FIELD_SEPARATOR) + field("subject_id", SUBJECT_ID) + resource
        )
        return (field("subject", SUBJECT) + subject_id).set_name(name)

    rule_element = rule("", "rule").leave_whitespace()
    rule_element.parse_with_tabs()

    optional_blanks = pp.Suppress(pp.Regex(_OPTIONAL_BLANKS)).set_name("blanks")
    word = pp.Located(rule(_WORD_BLANKS, "word"))("word")
    comment = pp.Regex(_COMMENT).set_name("comment")("comment")
    rest = pp.Located(pp.Regex(_REST).set_name("rest"))("rest")
    after_word = pp.Opt(pp.Suppress(pp.Regex(_BLANKS)) + rest) + optional_blanks
    end_of_line = (pp.Literal("\n") | pp.StringEnd()).set_name("end of line")
    conf_line = (
        pp.Located(
            ~pp.StringEnd() + optional_blanks + pp.Opt(comment | word + after_word) + end_of_line
        )
        .set_name("rctl.conf line")
        .leave_whitespace()
    )
    # Each line as one group: its start, its parts by name, its end.
    conf_line_named = conf_line.copy().add_parse_action(_line_results)
    conf_file = pp.ZeroOrMore(conf_line_named).set_name("rctl.conf").leave_whitespace()
    conf_file.parse_with_tabs()
    return PyparsingGrammar(rule_element, conf_line, conf_file)


def _line_results(tokens: pp.ParseResults) -> list[dict[str, object]]:
    parts = tokens.value
    line: dict[str, object] = {"start": tokens.locn_start, "end": tokens.locn_end}
    for group in ("word", "rest", "comment"):
        if group in parts:
            line[group] = parts[group]
    return [line]


def __getattr__(name: str) -> pp.ParserElement:
    """RULE, CONF_LINE and CONF_FILE: the grammar of record's elements (built on first use)."""
    elements = {"RULE": "rule", "CONF_LINE": "conf_line", "CONF_FILE": "conf_file"}
    if name in elements:
        element: pp.ParserElement = getattr(pyparsing_grammar(), elements[name])
        return element
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
