"""rctl(8)'s rewriting of an operand before it reaches the kernel (usr.bin/rctl/rctl.c:
expand_rule): subject aliases, user and group names to ids (parse_user, parse_group), and
amounts through expand_number(3) (expand_amount). `sent_text` is the string it then sends.
"""

from __future__ import annotations

import re

from rctlpolicy.amounts import (
    AmountError,
    AmountProblem,
    ExpandedNumber,
    as_c_int,
    expand_number,
    strtod_id,
)
from rctlpolicy.codes import Code
from rctlpolicy.grammar import AMOUNT, RESOURCE, SUBJECT, SUBJECT_ID, RuleSyntax
from rctlpolicy.model import SUBJECT_ALIASES, Resource, Unit
from rctlpolicy.semantics.problems import Problem
from rctlpolicy.semantics.resolver import Resolver
from rctlpolicy.semantics.suggest import RESOURCES

#: A user name rctl(8) keeps as it is when it cannot look it up (lint without --resolve).
USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?\Z")


class Rewrite:
    """rctl(8)'s output fields, plus what was learnt on the way (for lint's notes)."""

    __slots__ = ("amount", "bad_fields", "fields", "problems", "uid_note", "user_name")

    def __init__(self, fields: list[str | None]) -> None:
        self.fields = fields
        self.problems: list[Problem] = []
        self.bad_fields: set[int] = set()
        self.amount: ExpandedNumber | None = None
        self.uid_note: str | None = None
        #: The id is a user name left unresolved.
        self.user_name = False


def unchanged(syntax: RuleSyntax) -> Rewrite:
    """The fields as they are (the kernel layer: nothing rewrites them)."""
    return Rewrite(list(syntax.fields))


def rctl8_rewrite(syntax: RuleSyntax, resolver: Resolver, resolve_users: bool) -> Rewrite:
    fields: list[str | None] = list(syntax.fields)
    out = Rewrite(fields)
    if not syntax.has_colon:
        out.problems.append(
            Problem(
                SUBJECT_ID,
                Code.MISSING_FIELD,
                "incomplete rule: no ':' after the subject",
                "a rule is subject:subject-id:resource:action=amount[/per]",
                "RCTL8",
            )
        )
        out.bad_fields.add(SUBJECT_ID)
        return out
    subject = fields[SUBJECT] or ""
    alias = SUBJECT_ALIASES.get(subject.lower())
    if alias is not None:
        fields[SUBJECT] = alias
    subject_word = (fields[SUBJECT] or "").lower()
    subject_id = fields[SUBJECT_ID] or ""
    if subject_word in ("user", "group") and subject_id and resolve_users:
        _resolve_id(subject_word, subject_id, resolver, out)
    amount = fields[AMOUNT]
    if amount:
        try:
            out.amount = expand_number(amount)
        except AmountError as error:
            out.problems.append(_amount_problem(amount, error, syntax))
            out.bad_fields.add(AMOUNT)
        else:
            fields[AMOUNT] = str(out.amount.value)
    return out


def _resolve_id(subject: str, name: str, resolver: Resolver, out: Rewrite) -> None:
    user = subject == "user"
    lookup = resolver.uid_of if user else resolver.gid_of
    number = lookup(name)
    if number is not None:
        out.fields[SUBJECT_ID] = str(as_c_int(number))
        return
    if not name[0].isdigit():
        if resolver.checks_names:
            out.problems.append(
                Problem(
                    SUBJECT_ID,
                    Code.UNKNOWN_USER if user else Code.UNKNOWN_GROUP,
                    f"unknown {subject} '{name}'",
                    f"no such {subject} on this host; give a numeric "
                    f"{'uid' if user else 'gid'} or create the {subject} first",
                    "RCTL8",
                )
            )
            out.bad_fields.add(SUBJECT_ID)
        elif not USER_NAME.match(name):
            out.problems.append(
                Problem(
                    SUBJECT_ID,
                    Code.INVALID_USER if user else Code.INVALID_GROUP,
                    f"'{name}' is not a valid {subject} name",
                    "user names are letters, digits, '.', '_' and '-', at most 32 characters",
                    "RCTL8",
                )
            )
            out.bad_fields.add(SUBJECT_ID)
        else:
            out.user_name = user
        return
    # parse_user reads the id with strtod(3) into an id_t; expand_rule prints `(int)id`.
    id_t = strtod_id(name)
    if id_t is None:
        out.problems.append(
            Problem(
                SUBJECT_ID,
                Code.INVALID_ID,
                f"trailing characters after numerical id '{name}'",
                f"give the {subject} as a plain decimal number or a name",
                "RCTL8",
            )
        )
        out.bad_fields.add(SUBJECT_ID)
        return
    number = as_c_int(id_t)
    out.fields[SUBJECT_ID] = str(number)
    if not name.isdigit() or int(name) != number:
        out.uid_note = f"rctl(8) reads ids with strtod(3): '{name}' means {subject} {number}"


_TIME_WORD = r"\s*[0-9]+\s*(s|sec|secs|seconds?|min|mins|minutes?|h|hr|hours?|d|days?)\Z"


def _amount_problem(amount: str, error: AmountError, syntax: RuleSyntax) -> Problem:
    """rctl(8): "invalid numeric value", said so that the fix is obvious."""
    resource = (syntax.fields[RESOURCE] or "").lower()
    info = RESOURCES.get(resource)
    base = f"invalid amount '{amount}'"
    suggestion: str | None
    if error.problem is AmountProblem.NEGATIVE:
        message = f"{base}: amounts cannot be negative"
        return Problem(AMOUNT, Code.INVALID_AMOUNT, message, "use 0 to allow nothing", "RCTL8")
    if error.problem is AmountProblem.OVERFLOW:
        return Problem(
            AMOUNT,
            Code.AMOUNT_OUT_OF_RANGE,
            f"{base}: too large",
            "the largest amount is 7e (8070450532247928832)",
            "RCTL8",
        )
    stripped = amount.strip()
    if "%" in stripped and re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*%", stripped):
        number = stripped.rstrip("%").strip()
        suggestion = (
            f"pcpu amounts are percent of one core, written without '%': {number}"
            if info is Resource.PCPU
            else f"write the number without '%': {number}"
        )
        message = f"{base}: '%' is not part of an amount"
        return Problem(AMOUNT, Code.INVALID_AMOUNT, message, suggestion, "RCTL8")
    fraction = re.fullmatch(r"([0-9]+)\.([0-9]+)([kmgtpeKMGTPE]?)[bB]?", stripped)
    if fraction:
        suggestion = "amounts are whole numbers"
        unit = fraction.group(3).lower()
        if unit:
            units = "kmgtpe"
            value = float(f"{fraction.group(1)}.{fraction.group(2)}")
            smaller = units.index(unit)
            exact = value * 1024
            if smaller > 0 and exact.is_integer():
                suggestion = f"amounts are whole numbers: write {int(exact)}{units[smaller - 1]}"
            elif exact.is_integer():
                suggestion = f"amounts are whole numbers: write {int(exact)}"
        message = f"{base}: fractions are not accepted"
        return Problem(AMOUNT, Code.INVALID_AMOUNT, message, suggestion, "RCTL8")
    time_word = re.match(_TIME_WORD, stripped)
    if time_word:
        seconds = _seconds_of(stripped)
        if info is not None and info.info.unit is Unit.SECONDS:
            suggestion = f"{resource} amounts are plain seconds: write {seconds}"
        else:
            suggestion = "amounts take no time units; suffixes k, m, g, t, p, e are powers of 1024"
        message = f"{base}: time units are not accepted"
        return Problem(AMOUNT, Code.INVALID_AMOUNT, message, suggestion, "RCTL8")
    if stripped != amount and amount.rstrip() != amount:
        return Problem(
            AMOUNT,
            Code.INVALID_AMOUNT,
            f"{base}: trailing blank",
            "remove the blank after the number",
            "RCTL8",
            offset=len(amount.rstrip()),
        )
    return Problem(
        AMOUNT,
        Code.INVALID_AMOUNT,
        base,
        "an amount is a number with an optional suffix k, m, g, t, p or e "
        "(powers of 1024) and an optional b: 512m, 8g, 100",
        "RCTL8",
        offset=error.offset,
    )


def _seconds_of(text: str) -> int:
    match = re.match(r"\s*([0-9]+)\s*([a-z]*)", text)
    assert match is not None
    number = int(match.group(1))
    unit = match.group(2)
    factor = 1
    if unit.startswith("min") or unit == "m":
        factor = 60
    elif unit.startswith("h"):
        factor = 3600
    elif unit.startswith("d"):
        factor = 86400
    return number * factor
