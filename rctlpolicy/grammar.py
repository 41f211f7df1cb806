"""The RCTL rule grammar (pyparsing), and rctl.conf's line grammar.

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

One pyparsing `Regex` per rule (and per rctl.conf line) with named groups keeps the grammar
exact and fast: a file of 20,000 rules is read in one `parse_string` call.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pyparsing as pp

#: Field indexes, in rule order.
SUBJECT, SUBJECT_ID, RESOURCE, ACTION, AMOUNT, PER = range(6)
FIELD_NAMES = ("subject", "subject-id", "resource", "action", "amount", "per")


def _rule_pattern(blank: str) -> str:
    """The strsep cut as a regular expression; `blank` is what may not occur in a field."""
    per_chars = f"[^{blank}]" if blank else "."
    return (
        rf"(?P<subject>[^:{blank}]*)"
        rf"(?::(?P<subject_id>[^:{blank}]*)"
        rf"(?::(?P<resource>[^:{blank}]*)"
        rf"(?::(?P<action>[^=/{blank}]*)"
        rf"(?:(?P<sep>[=/])(?P<amount>[^/{blank}]*)"
        rf"(?:(?P<slash>/)(?P<per>{per_chars}*))?)?)?)?)?"
    )


_GROUPS = ("subject", "subject_id", "resource", "action", "amount", "per")

_RULE_PATTERN = "(?s)" + _rule_pattern("")
_CONF_LINE_PATTERN = (
    r"(?!\Z)[ \t]*(?:(?P<comment>\#[^\n]*)|(?P<word>"
    + _rule_pattern(r" \t\n")
    + r")(?:[ \t]+(?P<rest>[^\n]*?))?[ \t]*)?(?:\n|\Z)"
)

RULE = pp.Regex(_RULE_PATTERN, as_match=True).leave_whitespace().set_name("rule")
RULE.parse_with_tabs()
CONF_LINE = (
    pp.Regex(_CONF_LINE_PATTERN, as_match=True).leave_whitespace().set_name("rctl.conf line")
)
CONF_FILE = pp.ZeroOrMore(CONF_LINE).leave_whitespace().set_name("rctl.conf")
CONF_FILE.parse_with_tabs()


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


def _group_numbers(pattern: str, *names: str) -> tuple[int, ...]:
    index = re.compile(pattern).groupindex
    return tuple(index[name] for name in names)


_FIELD_GROUPS = (*_GROUPS, "sep", "slash")
_RULE_GROUPS = _group_numbers(_RULE_PATTERN, *_FIELD_GROUPS)
_CONF_GROUPS = _group_numbers(_CONF_LINE_PATTERN, *_FIELD_GROUPS)
_CONF_WORD_GROUP, _CONF_REST_GROUP = _group_numbers(_CONF_LINE_PATTERN, "word", "rest")


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
    match: re.Match[str] = RULE.parse_string(text)[0]
    return _syntax_from_match(match, text, 0, _RULE_GROUPS)


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


def parse_conf(text: str) -> list[ConfLine]:
    """Read rctl.conf text into lines; every line is accepted here, checks come later."""
    lines: list[ConfLine] = []
    number = 0
    for match in CONF_FILE.parse_string(text, parse_all=True):
        number += 1
        line_start = match.start()
        line_text = match.group(0).rstrip("\n")
        word = match.group(_CONF_WORD_GROUP)
        if not word:
            lines.append(ConfLine(number, line_text, None, 0, None, 0))
            continue
        word_start = match.start(_CONF_WORD_GROUP)
        syntax = _syntax_from_match(match, word, word_start, _CONF_GROUPS)
        rest = match.group(_CONF_REST_GROUP) or None
        rest_column = match.start(_CONF_REST_GROUP) - line_start if rest else 0
        lines.append(
            ConfLine(number, line_text, syntax, word_start - line_start, rest, rest_column)
        )
    return lines
