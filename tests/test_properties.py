"""Properties: every valid rule round-trips through its canonical form, and no text at all
makes the rule language raise (only diagnostics come back).
"""

from __future__ import annotations

from dataclasses import dataclass

from corpus_host import CORPUS_HOST
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rctlpolicy.grammar import parse_conf, parse_rule_syntax
from rctlpolicy.lint import lint_files
from rctlpolicy.model import (
    SUBJECT_ALIASES,
    Action,
    Resource,
    Severity,
    SubjectType,
)
from rctlpolicy.policy import PolicyFile, load_policy
from rctlpolicy.semantics.canonical import parse_canonical
from rctlpolicy.semantics.check import Layer, check_filter, check_rule, sent_text
from rctlpolicy.semantics.resolver import OFFLINE

# A few seconds for the whole file; raise max_examples locally to hunt for more.
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True, slots=True)
class AnyProcessHost:
    """The corpus host, except that every pid is running (so process rules can be made)."""

    checks_names: bool = True

    def uid_of(self, name: str) -> int | None:
        return CORPUS_HOST.uid_of(name)

    def gid_of(self, name: str) -> int | None:
        return CORPUS_HOST.gid_of(name)

    def process_exists(self, pid: int) -> bool | None:
        return True

    def jail_exists(self, name: str) -> bool | None:
        return None

    def loginclass_exists(self, name: str) -> bool | None:
        return None


HOST = AnyProcessHost()


def any_case(word: str) -> st.SearchStrategy[str]:
    """The kernel matches names case-insensitively: try them in every case."""
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    )


def name_of(limit: int) -> st.SearchStrategy[str]:
    """A loginclass or jail name: anything but ':' and NUL, at most `limit` bytes."""
    return st.text(
        st.characters(exclude_characters=":\0", exclude_categories=["Cs"]),
        min_size=1,
        max_size=limit,
    ).filter(lambda name: len(name.encode()) <= limit)


SUBJECT_WORDS = {
    "process": ["process", "p"],
    "user": ["user", "u"],
    "loginclass": ["loginclass", "l", "c", "class"],
    "jail": ["jail", "j"],
}
assert {alias for words in SUBJECT_WORDS.values() for alias in words[1:]} == set(
    SUBJECT_ALIASES
) - {"g"}


@st.composite
def subject_and_id(draw: st.DrawFn) -> str:
    subject = draw(st.sampled_from(list(SUBJECT_WORDS)))
    word = draw(any_case(draw(st.sampled_from(SUBJECT_WORDS[subject]))))
    if subject == "process":
        ident = str(draw(st.integers(1, 2**31 - 1)))
    elif subject == "user":
        ident = draw(
            st.one_of(
                st.integers(0, 2**32 - 1).map(str),
                st.sampled_from(["www", "root", "80.0", "1e2", "0x50"]),
            )
        )
    elif subject == "loginclass":
        ident = draw(name_of(32))
    else:
        ident = draw(name_of(255))
    return f"{word}:{ident}"


@st.composite
def amounts(draw: st.DrawFn) -> str:
    number = draw(st.integers(0, 2**40))
    suffix = draw(st.sampled_from(["", "", "k", "K", "m", "g", "t", "p", "e"]))
    byte = draw(st.sampled_from(["", "", "b", "B"]))
    return f"{number}{suffix}{byte}"


@st.composite
def valid_looking_rules(draw: st.DrawFn) -> str:
    resource = draw(any_case(draw(st.sampled_from(list(Resource))).value))
    action = draw(any_case(draw(st.sampled_from(list(Action))).value))
    text = f"{draw(subject_and_id())}:{resource}:{action}={draw(amounts())}"
    per = draw(st.none() | st.sampled_from(list(SubjectType)))
    if per is not None:
        text += "/" + draw(any_case(per.value))
    return text


@QUICK
@given(valid_looking_rules())
def test_valid_rules_round_trip_through_the_kernel(text: str) -> None:
    checked = check_rule(parse_rule_syntax(text), Layer.RCTL8, HOST)
    assume(checked.rule is not None)
    rule = checked.rule
    assert rule is not None
    again = check_rule(parse_rule_syntax(rule.canonical), Layer.KERNEL, HOST)
    assert again.rule == rule, again.problems
    assert again.error is None
    # The fast reader of kernel listings agrees, or leaves the rule to the grammar.
    assert parse_canonical(rule.canonical) in (rule, None)
    if not rule.subject_id.startswith("-"):
        assert parse_canonical(rule.canonical) == rule
    # What rctl(8) sends is a rule the kernel takes, and it is the same rule.
    sent = sent_text(checked.syntax, checked)
    assert sent is not None
    assert check_rule(parse_rule_syntax(sent), Layer.KERNEL, HOST).rule == rule


#: Text that looks like rules often enough to reach deep into the checks.
RULE_PIECES = st.sampled_from(
    [
        *(s.value for s in SubjectType), *SUBJECT_ALIASES, "group", "www", "root", "db1",
        *(r.value for r in Resource), *(a.value for a in Action), "sigcont", "nproc",
        ":", ":", ":", "=", "/", " ", "\t", "\r", "\n", "#", "'", '"', "\\", "*", "%",
        "0", "1", "010", "0x1e", "1.5", "-1", "99999", "9223372036855", "1k", "g", "h", "e",
        "rules:", "- ", "  ", "rule: ", "on_match:", "run: [", "]", "{jail}", "{", "}",
    ]
)  # fmt: skip
ANY_TEXT = st.one_of(st.text(), st.lists(RULE_PIECES, max_size=40).map("".join))


@QUICK
@given(ANY_TEXT)
def test_no_text_makes_the_rule_checks_raise(text: str) -> None:
    syntax = parse_rule_syntax(text)
    assert syntax.text == text
    for layer in Layer:
        for resolver in (OFFLINE, CORPUS_HOST):
            for resolve_users in (True, False):
                checked = check_rule(syntax, layer, resolver, resolve_users=resolve_users)
                # A rule or an error, never both, never neither.
                assert (checked.rule is None) is (checked.error is not None)
                sent_text(syntax, checked)
            filtered = check_filter(syntax, layer, resolver)
            assert (filtered.filter is None) is (filtered.error is not None)
            sent_text(syntax, filtered)


@QUICK
@given(ANY_TEXT)
def test_no_text_makes_the_policy_loaders_raise(text: str) -> None:
    lines = parse_conf(text)
    assert len(lines) <= text.count("\n") + 1
    for path in ("rctl.conf", "rules/p.yaml"):
        loaded = load_policy([PolicyFile(path, text)])
        for diagnostic in loaded.diagnostics:
            assert diagnostic.path == path
            assert diagnostic.line >= 1
            assert diagnostic.column >= 1
        assert loaded.ok is all(d.severity is not Severity.ERROR for d in loaded.diagnostics)
        lint_files([PolicyFile(path, text)])
