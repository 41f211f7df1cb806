"""rctl.conf's fast lane (policy_conf): plain lines read in one step give exactly the rules and
diagnostics the full checks give, over the corpus, generated rules and arbitrary text."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from corpus_host import CORPUS_HOST, corpus_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from rctlpolicy.model import Resource
from rctlpolicy.policy import LoadedPolicy, PolicyFile, load_policy
from rctlpolicy.policy_conf import FAST_LANE_LINES, plain_line_pattern
from rctlpolicy.semantics.resolver import OFFLINE, Resolver


@dataclass(frozen=True, slots=True)
class NamesWithoutChecks:
    """A host that resolves some names, a numeric one among them, but accepts unknown ones."""

    checks_names: bool = False

    def uid_of(self, name: str) -> int | None:
        return {"www": 80, "1000": 5, "u1": 4294967295}.get(name)

    def gid_of(self, name: str) -> int | None:
        return None

    def process_exists(self, pid: int) -> bool | None:
        return None

    def jail_exists(self, name: str) -> bool | None:
        return name != "db1"

    def loginclass_exists(self, name: str) -> bool | None:
        return None


RESOLVERS = [OFFLINE, CORPUS_HOST, NamesWithoutChecks()]


def both_lanes(text: str, resolver: Resolver) -> tuple[LoadedPolicy, LoadedPolicy]:
    files = [PolicyFile("rctl.conf", text)]
    return (
        load_policy(files, resolver, fast_lane=True),
        load_policy(files, resolver, fast_lane=False),
    )


def plain_lines(text: str) -> int:
    """How many lines of `text` are plain enough for the fast lane to try."""
    return sum(plain_line_pattern().fullmatch(line + "\n") is not None for line in text.split("\n"))


def _corpus_lines() -> list[str]:
    return [
        case["rule"]
        for case in corpus_cases()
        if case["mode"] == "add" and not any(c.isspace() or c == "\0" for c in case["rule"])
    ]


@pytest.mark.parametrize("resolver", RESOLVERS, ids=["offline", "corpus-host", "names"])
def test_the_corpus_reads_the_same_in_both_lanes(resolver: Resolver) -> None:
    lines = _corpus_lines()
    text = "".join(f"{line}\n" for line in lines)
    text += "".join(f"  {line}   # note {n}\n\n" for n, line in enumerate(lines))
    fast, full = both_lanes(text, resolver)
    assert fast == full
    assert plain_lines(text) > 100  # the fast lane had work to do
    assert len(fast.policy.rules) > 100


# --- generated rules: plain ones, and every near miss -------------------------------------------

SUBJECTS = ["jail", "j", "user", "u", "loginclass", "class", "l", "c", "process", "p", "g", "Jail"]
IDS = [
    "db1", "web-01.x", "3", "0", "u1", "www", "root", "80", "1000", "0123", "2147483647",
    "2147483648", "4294967296", "1e3", "bad!name", "web*", "x" * 255, "x" * 256, "c" * 32,
    "c" * 33, "nosuch", "daemon", "-dash", "a$",
]  # fmt: skip
RESOURCES = [r.value for r in Resource] + ["memoryuze", "MEMORYUSE"]
ACTIONS = ["deny", "log", "devctl", "throttle", "sigterm", "sigkill", "warn", "Deny", "sig9"]
AMOUNTS = [
    "0", "10", "010", "0x10", "1k", "512m", "1G", "8gb", "7e", "8e", "16e", "1.5g", "-1",
    "9223372036854775807", "9223372036854775808", "9223372036854", "9223372036855", "",
]  # fmt: skip
PERS = ["", "/user", "/process", "/jail", "/loginclass", "/", "/User", "/user/x"]
AFTER = ["", " # a note", "\t#x", " trailing", "  ", "\r"]
BEFORE = ["", "  ", "\t"]

RULE_LINES = st.builds(
    lambda before, s, i, r, a, n, p, after: f"{before}{s}:{i}:{r}:{a}={n}{p}{after}",
    st.sampled_from(BEFORE),
    st.sampled_from(SUBJECTS),
    st.sampled_from(IDS),
    st.sampled_from(RESOURCES),
    st.sampled_from(ACTIONS),
    st.sampled_from(AMOUNTS),
    st.sampled_from(PERS),
    st.sampled_from(AFTER),
)
OTHER_LINES = st.sampled_from(["", "# comment", "   ", "jail:db1", "jail:a:maxproc:deny=1 x y"])
FILES = st.lists(st.one_of(RULE_LINES, RULE_LINES, OTHER_LINES), min_size=1, max_size=40).map(
    "\n".join
)
SAME = settings(max_examples=150, deadline=None)


@SAME
@given(FILES, st.sampled_from(["\n", ""]), st.sampled_from(RESOLVERS))
def test_generated_rules_read_the_same_in_both_lanes(
    text: str, end: str, resolver: Resolver
) -> None:
    fast, full = both_lanes(text + end, resolver)
    assert fast == full


@SAME
@given(st.text(alphabet=st.sampled_from(list(":=/ \t\n\r#0123456789abjlmuxy.-*'\"")), max_size=80))
def test_any_text_reads_the_same_in_both_lanes(text: str) -> None:
    fast, full = both_lanes(text, OFFLINE)
    assert fast == full


def test_plain_lines_do_take_the_fast_lane() -> None:
    assert plain_lines("jail:db1:maxproc:deny=10\nu:www:openfiles:deny=1k/process  # x") == 2
    assert plain_lines("jail:db1:maxproc:deny=10 x\nJail:db1:maxproc:deny=10\n# c") == 0


def test_small_files_skip_the_fast_lane_and_big_ones_take_it() -> None:
    small = "jail:a:maxproc:deny=1\n" * (FAST_LANE_LINES - 1)
    big = "jail:a:maxproc:deny=1\n" * FAST_LANE_LINES
    assert load_policy([PolicyFile("a.conf", small)]) == load_policy(
        [PolicyFile("a.conf", small)], fast_lane=False
    )
    assert load_policy([PolicyFile("a.conf", big)]) == load_policy(
        [PolicyFile("a.conf", big)], fast_lane=True
    )
