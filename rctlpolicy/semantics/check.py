"""The entry points: a rule or filter through rctl(8)'s rewrite and the kernel's checks, in
FreeBSD's order, with advice for people after FreeBSD's verdict."""

from __future__ import annotations

from enum import StrEnum

from rctlpolicy.codes import Code
from rctlpolicy.grammar import (
    ACTION,
    AMOUNT,
    FIELD_NAMES,
    PER,
    RESOURCE,
    SUBJECT,
    SUBJECT_ID,
    RuleSyntax,
)
from rctlpolicy.model import Filter, Rule
from rctlpolicy.records import NamedTuple
from rctlpolicy.semantics.advice import advice
from rctlpolicy.semantics.kernel import add_checks, first_missing, kernel_parse, missing
from rctlpolicy.semantics.problems import (
    RULE_TEXT_MAX,
    Problem,
    byte_length_over,
    first_error,
    has_error,
)
from rctlpolicy.semantics.resolver import OFFLINE, Resolver
from rctlpolicy.semantics.rewrite import rctl8_rewrite, unchanged


class Layer(StrEnum):
    RCTL8 = "rctl8"
    KERNEL = "kernel"


class RuleCheck(NamedTuple):
    syntax: RuleSyntax
    rule: Rule | None
    problems: tuple[Problem, ...]
    #: The fields as rctl(8) sends them to the kernel (aliases expanded, uid, amount).
    sent_fields: tuple[str | None, ...] = ()

    @property
    def error(self) -> Problem | None:
        """The problem FreeBSD reports (the first error in its processing order)."""
        return first_error(self.problems)

    @property
    def ok(self) -> bool:
        return self.rule is not None


class FilterCheck(NamedTuple):
    syntax: RuleSyntax
    filter: Filter | None
    problems: tuple[Problem, ...]
    sent_fields: tuple[str | None, ...] = ()

    @property
    def error(self) -> Problem | None:
        return first_error(self.problems)


def _too_long(syntax: RuleSyntax, what: str) -> Problem:
    return Problem(
        None,
        Code.RULE_TOO_LONG,
        f"{what} is {len(syntax.text.encode())} bytes long",
        f"the kernel takes at most {RULE_TEXT_MAX} bytes",
        "E2BIG",
    )


def check_rule(
    syntax: RuleSyntax,
    layer: Layer = Layer.RCTL8,
    resolver: Resolver = OFFLINE,
    *,
    resolve_users: bool = True,
    notes: bool = True,
) -> RuleCheck:
    """Validate a rule for adding (rctl -a / rctl_add_rule).

    `resolve_users=False` is `rctl -n -a` (names sent as typed). `notes=False` skips the
    advisory warnings and notes (the simulator wants only FreeBSD's verdict).
    """
    if layer is Layer.RCTL8:
        rewrite = rctl8_rewrite(syntax, resolver, resolve_users)
    else:
        rewrite = unchanged(syntax)
    problems = rewrite.problems
    bad = rewrite.bad_fields
    values = rewrite.fields
    if SUBJECT_ID in bad and not syntax.has_colon:
        return RuleCheck(syntax, None, tuple(problems), tuple(values))
    if byte_length_over(syntax.text, RULE_TEXT_MAX):
        problems.append(_too_long(syntax, "rule"))
        return RuleCheck(syntax, None, tuple(problems), tuple(values))
    parsed = kernel_parse(values, syntax, resolver, problems, bad, rewrite.user_name)
    if parsed.per is None and parsed.subject is not None:
        parsed.per = parsed.subject
    if not problems or not has_error(problems):
        absent = first_missing(parsed)
        if absent is not None:
            problems.append(missing(absent, FIELD_NAMES[absent]))
    rule = None
    if not problems or not has_error(problems):
        add_checks(parsed, problems, bool(syntax.fields[PER]))
    if not problems or not has_error(problems):
        assert parsed.subject and parsed.subject_id is not None and parsed.resource
        assert parsed.action and parsed.amount is not None and parsed.per
        rule = Rule(
            parsed.subject,
            parsed.subject_id,
            parsed.resource,
            parsed.action,
            parsed.amount,
            parsed.per,
        )
        if notes:
            amount_text = syntax.fields[AMOUNT]
            problems.extend(advice(amount_text, rule, rewrite.amount, rewrite.uid_note, resolver))
    return RuleCheck(syntax, rule, tuple(problems), tuple(values))


def check_filter(
    syntax: RuleSyntax,
    layer: Layer = Layer.RCTL8,
    resolver: Resolver = OFFLINE,
) -> FilterCheck:
    """Validate a filter (rctl, rctl -r/-u/-l operands; rctl_get_rules & co. input)."""
    rewrite = rctl8_rewrite(syntax, resolver, True) if layer is Layer.RCTL8 else unchanged(syntax)
    problems = rewrite.problems
    values = rewrite.fields
    if SUBJECT_ID in rewrite.bad_fields and not syntax.has_colon:
        return FilterCheck(syntax, None, tuple(problems), tuple(values))
    if byte_length_over(syntax.text, RULE_TEXT_MAX):
        problems.append(_too_long(syntax, "filter"))
        return FilterCheck(syntax, None, tuple(problems), tuple(values))
    parsed = kernel_parse(values, syntax, resolver, problems, rewrite.bad_fields, rewrite.user_name)
    if has_error(problems):
        return FilterCheck(syntax, None, tuple(problems), tuple(values))
    # A Filter keeps user units (Filter.matches scales in-millions amounts as the kernel does).
    result = Filter(
        parsed.subject, parsed.subject_id, parsed.resource, parsed.action, parsed.amount, parsed.per
    )
    return FilterCheck(syntax, result, tuple(problems), tuple(values))


def sent_text(syntax: RuleSyntax, check: RuleCheck | FilterCheck) -> str | None:
    """The exact string rctl(8) passes to the kernel for this operand (None: rctl(8) refused)."""
    if any(p.errno == "RCTL8" for p in check.problems):
        return None
    fields = check.sent_fields or syntax.fields
    text = syntax.text
    second_colon = text.find(":", text.find(":") + 1)
    rest = text[second_colon + 1 :] if second_colon >= 0 else ""
    head = f"{fields[SUBJECT] or ''}:{fields[SUBJECT_ID] or ''}:"
    if not syntax.fields[AMOUNT]:
        return head + rest
    sent = f"{head}{syntax.fields[RESOURCE] or ''}:{syntax.fields[ACTION] or ''}={fields[AMOUNT]}"
    if syntax.per_present:
        sent += "/" + (syntax.fields[PER] or "")
    return sent
