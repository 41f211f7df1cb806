"""The conformance corpus (tests/data/rctl-corpus.jsonl): worked cases, each checked through
the grammar and FreeBSD's semantics exactly as the spec describes the two layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from corpus_host import CORPUS_HOST, corpus_cases

from rctlpolicy.grammar import parse_rule_syntax
from rctlpolicy.model import SubjectType
from rctlpolicy.semantics.check import FilterCheck, Layer, check_filter, check_rule, sent_text

CORPUS_SIZE = 282


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    errno: str | None
    canonical: str | None
    sent: str | None


def _case_id(number: int, case: dict[str, Any]) -> str:
    what = case["mode"] if case["op"] is None else case["op"]
    flags = "-n" if case.get("flags") else ""
    text = re.sub(r"[^\x21-\x7e]", "?", case["rule"])[:48]
    return f"{number:03d}-{case['layer']}-{what}{flags}-{text}"


CASES = [pytest.param(case, id=_case_id(n, case)) for n, case in enumerate(corpus_cases(), 1)]


def _operation_errno(op: str, check: FilterCheck) -> str | None:
    """What rctl_get_racct / rctl_get_limits add to the parse (spec table 1.3, section 8)."""
    found = check.filter
    assert found is not None
    if op == "usage" and (found.subject is None or found.subject_id is None):
        return "EINVAL"
    if op == "limits":
        if found.subject is None:
            return "EINVAL"
        if found.subject is not SubjectType.PROCESS:
            return "EOPNOTSUPP"
        if found.subject_id is None:
            return "EINVAL"
    return None


def run_case(case: dict[str, Any]) -> Verdict:
    """One corpus case through parse_rule_syntax and check_rule/check_filter."""
    layer = Layer(case["layer"])
    text: str = case["rule"]
    if layer is Layer.KERNEL:
        # copyinstr(9): the kernel sees the string up to the first NUL.
        text = text.split("\0", 1)[0]
    syntax = parse_rule_syntax(text)
    check: Any
    if case["mode"] == "add":
        check = check_rule(
            syntax, layer, CORPUS_HOST, resolve_users=case.get("flags") != "-n", notes=False
        )
        errno = check.error.errno if check.error else None
        canonical = check.rule.canonical if check.rule else None
    else:
        check = check_filter(syntax, layer, CORPUS_HOST)
        errno = check.error.errno if check.error else None
        if errno is None:
            errno = _operation_errno(case["op"], check)
        canonical = None
    sent = sent_text(syntax, check) if layer is Layer.RCTL8 else None
    return Verdict(errno is None, errno, canonical, sent)


def test_corpus_is_complete() -> None:
    assert len(CASES) == CORPUS_SIZE


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(case: dict[str, Any]) -> None:
    got = run_case(case)
    expected = Verdict(case["valid"], case["errno"], case["canonical"], case["sent"])
    assert got == expected, case["why"]


def test_the_suite_reads_no_data_from_beside_the_repository() -> None:
    """A bare clone has no ../shared: conformance data lives in tests/data (issue 11.10)."""
    # The spellings the tests used: the spec directory beside the checkout, by any path.
    outside = re.compile("shared[\"']?\\s*/\\s*[\"']?spec|parents\\[2\\]")
    tests = Path(__file__).resolve().parent
    readers = [p.name for p in sorted(tests.glob("*.py")) if outside.search(p.read_text())]
    assert readers == []
