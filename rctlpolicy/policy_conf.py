"""rctl.conf files as rc.d/rctl loads them at boot: each line's first word is a rule given to
rctl(8), so every rule is checked as rctl(8) and the kernel would, plus what rc.d/rctl itself
does to a line (blanks cut it, quotes and backslashes are removed, a CR stays in the rule, a
last line without its newline is never read).

Most lines of a real policy are plain: a lowercase subject and a name or number, a resource,
an action, a decimal amount, perhaps a per and a comment. Those take a fast lane: one regular
expression reads the whole line, and the rule is built from what it matched, with the same
tables, the same kernel add checks and the same advice the full checks use. Any line the fast
lane is not sure of (another shape, a name that needs looking up, a rule the kernel would
refuse) goes through the full checks. tests/test_policy_conf.py proves, over the conformance
corpus and generated text, that both give the same rules and the same diagnostics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from rctlpolicy.amounts import INT64_MAX, SUFFIX_SHIFT, ExpandedNumber
from rctlpolicy.codes import Code
from rctlpolicy.diagnostics import Diagnostic, Report
from rctlpolicy.grammar import SUBJECT_ID, ConfLine, RuleSyntax, conf_line_at, parse_rule_syntax
from rctlpolicy.model import (
    IN_MILLIONS_MAX,
    JAIL_NAME_MAX,
    LOGINCLASS_NAME_MAX,
    SUBJECT_ALIASES,
    Action,
    Resource,
    Rule,
    SubjectType,
)
from rctlpolicy.policy_model import PolicyRule, SourceLocation
from rctlpolicy.policy_rule import glob_subject, problem_diagnostic
from rctlpolicy.semantics.advice import advice
from rctlpolicy.semantics.check import Layer, check_rule
from rctlpolicy.semantics.kernel import KernelFields, add_checks
from rctlpolicy.semantics.problems import RULE_TEXT_MAX, Problem
from rctlpolicy.semantics.resolver import Resolver
from rctlpolicy.semantics.rewrite import USER_NAME
from rctlpolicy.semantics.suggest import ACTIONS, RESOURCES, SUBJECTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rctlpolicy.policy import PolicyFile

_QUOTING = re.compile(r"[\"'\\\\]")
#: Files with fewer lines go through the full checks only (building the fast lane's regular
#: expression would cost a one-line file more than it saves).
FAST_LANE_LINES = 64


def load_conf(
    policy_file: PolicyFile, resolver: Resolver, report: Report, fast_lane: bool | None = None
) -> list[PolicyRule]:
    """The rules of an rctl.conf file; each diagnostic goes to `report`. `fast_lane`: plain
    lines take the fast lane (None: when the file has FAST_LANE_LINES lines or more)."""
    rules: list[PolicyRule] = []
    path = policy_file.path
    text = policy_file.text
    newlines = text.count("\n")
    # The number of a last line that lacks its newline (rc.d/rctl never reads it), else 0.
    unterminated = newlines + 1 if text and not text.endswith("\n") else 0
    if fast_lane is None:
        fast_lane = newlines >= FAST_LANE_LINES
    plain = plain_line_pattern() if fast_lane else None
    start, number, size = 0, 0, len(text)
    while start < size:
        number += 1
        if plain is not None:
            match = plain.match(text, start)
            if match is not None:
                rule = _plain_rule(match, start, number, path, resolver, report)
                if rule is not None:
                    rules.append(rule)
                    start = match.end()
                    continue
        line, start = conf_line_at(text, start, number)
        if line.rule is not None:
            rule = _conf_rule(line, path, resolver, report, unterminated)
            if rule is not None:
                rules.append(rule)
    return rules


# --- the fast lane ------------------------------------------------------------------------

#: The subject words of plain lines, aliases included (process rules need the process table,
#: and group is refused by the kernel: those take the full checks).
_PLAIN_SUBJECTS = {
    word: SubjectType(name)
    for word, name in [*((s, s) for s in SUBJECTS), *SUBJECT_ALIASES.items()]
    if name in ("user", "jail", "loginclass")
}
#: expand_number(3)'s suffixes in either case, and none.
_SUFFIX_SHIFT = {"": 0, **SUFFIX_SHIFT, **{s.upper(): shift for s, shift in SUFFIX_SHIFT.items()}}
_UID = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")


def _either(words: Iterable[str]) -> str:
    """An alternation of the words, longest first."""
    return "|".join(sorted(words, key=len, reverse=True))


@cache
def plain_line_pattern() -> re.Pattern[str]:
    """A plain rctl.conf line: the whole line, its newline included."""
    return re.compile(
        rf"[ \t]*(?P<word>(?P<subject>{_either(_PLAIN_SUBJECTS)}):(?P<id>[A-Za-z0-9_.-]+)"
        rf":(?P<resource>{_either(RESOURCES)}):(?P<action>{_either(ACTIONS)})"
        r"=(?P<amount>(?P<digits>0|[1-9][0-9]{0,17})(?P<suffix>[kmgtpeKMGTPE]?)[bB]?)"
        rf"(?:/(?P<per>{_either(SUBJECTS)}))?)"
        r"(?:[ \t]+(?P<rest>\#[^\n]*?))?[ \t]*\n"
    )


def _plain_rule(
    match: re.Match[str], start: int, number: int, path: str, resolver: Resolver, report: Report
) -> PolicyRule | None:
    """The rule of a plain line, as the full checks would find it; None when the line needs
    them (its diagnostics are then theirs to report)."""
    # One call for all the groups: this runs for nearly every line of a big policy.
    word, subject_word, subject_id, resource_word, action_word, amount_text, digits, suffix = (
        match.groups()[:8]
    )
    subject = _PLAIN_SUBJECTS[subject_word]
    if len(word) > RULE_TEXT_MAX:
        return None
    if subject is SubjectType.USER:
        # rctl(8): getpwnam first, then a number (strtod) or, unresolved, the name as it is.
        if resolver.uid_of(subject_id) is not None:
            return None
        if subject_id[0].isdigit():
            if not _UID.match(subject_id) or int(subject_id) > 2**31 - 1:
                return None
        elif resolver.checks_names or not USER_NAME.match(subject_id):
            return None
    elif len(subject_id) > (JAIL_NAME_MAX if subject is SubjectType.JAIL else LOGINCLASS_NAME_MAX):
        return None
    per_word = match.group("per")
    combination = _combinations.get((subject_word, resource_word, action_word, per_word))
    if combination is None:
        combination = _combination(subject_word, resource_word, action_word, per_word)
    resource, action, per, largest = combination
    amount = int(digits) << _SUFFIX_SHIFT[suffix]
    if amount > largest:  # out of range, or the kernel refuses the combination (-1)
        return None
    rule = Rule(subject, subject_id, resource, action, amount, per)
    notes = advice(amount_text, rule, ExpandedNumber(amount, 10, suffix, ""), None, resolver)
    column = match.start("word") - start
    rest = match.group("rest")
    if notes or rest is not None:
        line_text = _line_text(match, start)
        if notes:
            syntax = _plain_syntax(match, word)
            for note in notes:
                report(problem_diagnostic(note, syntax, path, number, column, line_text))
        if rest is not None:
            rest_column = match.start("rest") - start
            report(_trailing_text(line_text, rest, rest_column, path, number, False))
    return PolicyRule(rule, SourceLocation(path, number, column + 1), word)


#: (subject, resource, action, per) as written -> what `_combination` made of them.
_combinations: dict[tuple[str, str, str, str | None], tuple[Resource, Action, SubjectType, int]]
_combinations = {}


def _combination(
    subject_word: str, resource_word: str, action_word: str, per_word: str | None
) -> tuple[Resource, Action, SubjectType, int]:
    """The resource, action and per of a plain line's words, and the largest amount the
    kernel takes for them (-1 when its add checks refuse the combination, `add_checks`).
    Remembered: a policy has a few dozen combinations among thousands of rules."""
    subject = _PLAIN_SUBJECTS[subject_word]
    resource, action = RESOURCES[resource_word], ACTIONS[action_word]
    per = SUBJECTS[per_word] if per_word else subject
    refusals: list[Problem] = []
    add_checks(KernelFields(subject, None, resource, action, 0, per), refusals, bool(per_word))
    largest = -1 if refusals else IN_MILLIONS_MAX if resource.in_millions else INT64_MAX
    combination = _combinations[(subject_word, resource_word, action_word, per_word)] = (
        resource,
        action,
        per,
        largest,
    )
    return combination


def _line_text(match: re.Match[str], start: int) -> str:
    """The line's text, without its newline."""
    return match.string[start : match.end() - 1]


def _plain_syntax(match: re.Match[str], word: str) -> RuleSyntax:
    """The plain line's rule cut into fields, as the grammar would cut it."""
    base = match.start("word")
    per = match.group("per")
    amount_end = match.end("amount") - base
    starts = (
        0,
        match.start("id") - base,
        match.start("resource") - base,
        match.start("action") - base,
        match.start("amount") - base,
        match.start("per") - base if per is not None else amount_end,
    )
    fields = (
        match.group("subject"),
        match.group("id"),
        match.group("resource"),
        match.group("action"),
        match.group("amount"),
        per,
    )
    return RuleSyntax(word, fields, starts, "=", per is not None)


# --- the full checks ------------------------------------------------------------------------


def _conf_rule(
    line: ConfLine, path: str, resolver: Resolver, report: Report, unterminated: int
) -> PolicyRule | None:
    """One line through the full checks: its rule, None when it has none that loads."""
    syntax = line.rule
    if syntax is None:
        return None
    if line.number == unterminated:
        report(_no_final_newline(line.text, path, line.number))
    checked, precise, loads = syntax, True, True
    if syntax.text.endswith("\r"):
        # IFS has no carriage return: rc.d/rctl hands it to rctl(8) inside the rule.
        report(
            Diagnostic.of(
                Code.CARRIAGE_RETURN,
                path,
                line.number,
                line.column + len(syntax.text),
                "the line ends with a carriage return, which "
                "becomes part of the rule and makes FreeBSD refuse it",
                "convert the file to Unix line endings",
                _printable(line.text),
            )
        )
        checked, loads = parse_rule_syntax(syntax.text.rstrip("\r")), False
    if _QUOTING.search(checked.text):
        unquoted = _rc_unquote(checked.text)
        if unquoted is None:
            report(
                Diagnostic.of(
                    Code.CONF_UNBALANCED_QUOTE,
                    path,
                    line.number,
                    line.column + 1,
                    "unbalanced quote: xargs(1) in "
                    "rc.d/rctl stops here, so this rule and every rule after it "
                    "fail to load at boot",
                    "remove the quote",
                    _printable(line.text),
                    len(syntax.text),
                )
            )
            return None
        report(
            Diagnostic.of(
                Code.CONF_QUOTING,
                path,
                line.number,
                line.column + 1,
                "rc.d/rctl removes quotes and backslashes (read "
                "and xargs) before rctl(8) sees the rule; FreeBSD versions that "
                "ran rctl -a on each line kept them",
                "write the rule without quotes or backslashes",
                _printable(line.text),
                len(syntax.text),
            )
        )
        checked, precise = parse_rule_syntax(unquoted), False
    check = check_rule(checked, Layer.RCTL8, resolver)
    for problem in check.problems:
        if precise:
            report(problem_diagnostic(problem, checked, path, line.number, line.column, line.text))
        else:
            report(
                Diagnostic(
                    path,
                    line.number,
                    line.column + 1,
                    problem.severity,
                    problem.code,
                    f"{problem.message} (in '{checked.text}')",
                    problem.suggestion,
                    _printable(line.text),
                    len(syntax.text),
                )
            )
    if line.rest is not None:
        cut = check.error is not None and check.error.code == Code.MISSING_FIELD
        report(_trailing_text(line.text, line.rest, line.rest_column, path, line.number, cut))
    if not loads:
        return None
    if check.rule is None:
        return None
    if glob_subject(syntax):
        report(
            Diagnostic.of(
                Code.GLOB_IN_CONF,
                path,
                line.number,
                line.column + syntax.starts[SUBJECT_ID] + 1,
                f"rctl.conf has no patterns: this names a jail literally called "
                f"'{check.rule.subject_id}'",
                "put jail patterns in a YAML policy file, where rctlpolicy expands "
                "them per running jail",
                line.text,
                len(syntax.fields[SUBJECT_ID] or ""),
            )
        )
    return PolicyRule(check.rule, SourceLocation(path, line.number, line.column + 1), syntax.text)


def _no_final_newline(text: str, path: str, number: int) -> Diagnostic:
    # sh's `read` returns non-zero at the end of the file even when it assigned a last line
    # that lacks its newline, so rc.d/rctl's `while read var comments` loop ends before it.
    return Diagnostic.of(
        Code.CONF_NO_FINAL_NEWLINE,
        path,
        number,
        len(text) + 1,
        "the last line has no newline: rc.d/rctl's `while read` loop stops before it, so "
        "this rule is never applied at boot",
        "end the file with a newline",
        _printable(text),
    )


def _rc_unquote(word: str) -> str | None:
    """What rc.d/rctl's `read` (no -r: backslashes removed) and xargs (quotes) make of a word;
    None for an unbalanced quote, where xargs gives up."""
    after_read = re.sub(r"\\(.?)", r"\1", word)
    out: list[str] = []
    quote: str | None = None
    escaped = False
    for char in after_read:
        if escaped:
            out.append(char)
            escaped = False
        elif quote is not None:
            if char == quote:
                quote = None
            else:
                out.append(char)
        elif char in "\"'":
            quote = char
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return None if quote is not None else "".join(out)


def _printable(text: str) -> str:
    """A source line safe to print: control characters shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _trailing_text(
    text: str, rest: str, rest_column: int, path: str, number: int, rule_cut_short: bool
) -> Diagnostic:
    if rest.startswith("#"):
        # A comment after the rule is fine: that is how rc.d/rctl's `read var comments` works.
        return Diagnostic.of(
            Code.TRAILING_COMMENT,
            path,
            number,
            rest_column + 1,
            "text after the rule is ignored by rc.d/rctl",
            None,
            text,
            len(rest),
        )
    if rule_cut_short:
        return Diagnostic.of(
            Code.CONF_CUT_AT_BLANK,
            path,
            number,
            rest_column + 1,
            "rc.d/rctl reads only up to the first blank: this part of the rule is dropped",
            "remove the blanks inside the rule",
            text,
            len(rest),
        )
    return Diagnostic.of(
        Code.CONF_TRAILING_TEXT,
        path,
        number,
        rest_column + 1,
        "text after the rule is silently dropped by rc.d/rctl",
        "start a comment with '#', or put one rule per line",
        text,
        len(rest),
    )
