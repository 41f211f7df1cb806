"""Advice on rules FreeBSD accepts: valid rules that surprise (octal amounts, jail ids that are
names, memoryuse:deny that refuses nothing...), and names the host does not know yet."""

from __future__ import annotations

from rctlpolicy.amounts import ExpandedNumber
from rctlpolicy.codes import Code
from rctlpolicy.grammar import ACTION, AMOUNT, SUBJECT, SUBJECT_ID
from rctlpolicy.model import Action, Resource, Rule, SubjectType, Unit
from rctlpolicy.semantics.problems import Problem
from rctlpolicy.semantics.resolver import Resolver


def advice(
    amount_text: str | None,
    rule: Rule,
    amount: ExpandedNumber | None,
    uid_note: str | None,
    resolver: Resolver,
) -> list[Problem]:
    """Warnings and notes for a rule FreeBSD accepts, in field order: `amount_text` as
    written, `amount` as rctl(8) read it, `uid_note` what rctl(8) made of a numeric uid."""
    notes: list[Problem] = []
    if amount is not None:
        if amount.base == 8 and amount.value != 0:
            octal = (amount_text or "").strip()
            notes.append(
                Problem(
                    AMOUNT,
                    Code.OCTAL_AMOUNT,
                    f"'{octal}' is octal: rctl(8) reads a leading 0 as base 8, so this is "
                    f"{rule.amount}",
                    f"drop the leading zero if you meant {octal.lstrip('+-0') or '0'}",
                )
            )
        elif amount.base == 16:
            notes.append(
                Problem(
                    AMOUNT,
                    Code.HEX_AMOUNT,
                    f"hexadecimal amount: this is {rule.amount}",
                    f"write {rule.amount} so readers and other tools agree",
                )
            )
        if amount.suffix and rule.resource.info.unit not in (Unit.BYTES, Unit.BYTES_PER_SECOND):
            notes.append(
                Problem(
                    AMOUNT,
                    Code.BINARY_SUFFIX,
                    f"suffixes are powers of 1024 for every resource: "
                    f"{amount_text} is {rule.amount} {rule.resource.info.unit}",
                )
            )
    if uid_note:
        notes.append(
            Problem(SUBJECT_ID, Code.NUMERIC_ID_FORMAT, uid_note, f"write {rule.subject_id}")
        )
    if rule.subject is SubjectType.JAIL and rule.subject_id.isdigit():
        notes.append(
            Problem(
                SUBJECT_ID,
                Code.JAIL_ID_NOT_JID,
                f"jail subjects are names: jail:{rule.subject_id} means the jail named "
                f"'{rule.subject_id}', not the jail with jid {rule.subject_id}",
                "use the jail's name (jls name); only unnamed jails are named after their jid"
                + ("; jail:0 is the host and every jail in it" if rule.subject_id == "0" else ""),
            )
        )
    if rule.action is Action.DENY and rule.resource is Resource.MEMORYUSE:
        notes.append(
            Problem(
                ACTION,
                Code.MEMORYUSE_DENY_PAGES_OUT,
                "memoryuse:deny does not refuse memory: the VM pages the processes' memory "
                "out once they are over the limit",
                "use vmemoryuse:deny to make allocations fail, or swapuse to bound what is "
                "paged out",
            )
        )
    if rule.action is Action.DENY and rule.resource is Resource.PCPU:
        notes.append(
            Problem(
                ACTION,
                Code.PCPU_DENY_THROTTLES,
                "pcpu:deny throttles: processes over the limit are put to sleep, nothing is "
                "refused",
            )
        )
    if rule.subject is SubjectType.PROCESS:
        notes.append(
            Problem(
                SUBJECT,
                Code.PROCESS_RULE_TRANSIENT,
                f"process rules die with process {rule.subject_id} (and are copied to its "
                "children); they cannot be kept in a policy across reboots",
                "limit the user, login class or jail instead",
            )
        )
    if rule.subject is SubjectType.JAIL and resolver.jail_exists(rule.subject_id) is False:
        notes.append(
            Problem(
                SUBJECT_ID,
                Code.UNKNOWN_JAIL,
                f"no jail named '{rule.subject_id}' is running on this host",
                "the kernel keeps the rule and applies it when a jail of that name starts; "
                "check the name with jls name",
            )
        )
    if rule.subject is SubjectType.LOGINCLASS and (
        resolver.loginclass_exists(rule.subject_id) is False
    ):
        notes.append(
            Problem(
                SUBJECT_ID,
                Code.UNKNOWN_LOGINCLASS,
                f"login.conf has no class '{rule.subject_id}'",
                "the kernel accepts any class name; no login gets this one until "
                "login.conf(5) defines it (and cap_mkdb is run)",
            )
        )
    return notes
