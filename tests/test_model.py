"""The RCTL vocabulary against FreeBSD's tables (spec sections 2 to 6)."""

from __future__ import annotations

import pytest

from rctlpolicy.model import (
    EVERYTHING,
    IN_MILLIONS_MAX,
    INT64_MAX,
    PROCESS_USAGE_RESOURCES,
    SIGNAL_MAX,
    SIGNAL_NUMBERS,
    SUBJECT_ALIASES,
    Action,
    Filter,
    Resource,
    ResourceFlag,
    Rule,
    Severity,
    SubjectType,
    Unit,
    format_subject_id,
)

R = ResourceFlag

# Spec table 3.1, written out again so that a change to model.py's table shows here:
# (id, name, flags, deny allowed, throttle allowed, per=process allowed).
RESOURCE_TABLE = [
    (0, "cputime", R.IN_MILLIONS, False, False, True),
    (1, "datasize", R.RECLAIMABLE | R.INHERITABLE | R.DENIABLE, True, False, True),
    (2, "stacksize", R.RECLAIMABLE | R.INHERITABLE | R.DENIABLE, True, False, True),
    (3, "coredumpsize", R.DENIABLE, True, False, True),
    (4, "memoryuse", R.RECLAIMABLE, True, False, True),
    (5, "memorylocked", R.RECLAIMABLE | R.DENIABLE, True, False, True),
    (6, "maxproc", R.RECLAIMABLE | R.DENIABLE, True, False, True),
    (7, "openfiles", R.RECLAIMABLE | R.INHERITABLE | R.DENIABLE, True, False, True),
    (8, "vmemoryuse", R.RECLAIMABLE | R.INHERITABLE | R.DENIABLE, True, False, True),
    (9, "pseudoterminals", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (10, "swapuse", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (11, "nthr", R.RECLAIMABLE | R.DENIABLE, True, False, True),
    (12, "msgqqueued", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (13, "msgqsize", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (14, "nmsgq", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (15, "nsem", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (16, "nsemop", R.RECLAIMABLE | R.INHERITABLE | R.DENIABLE, True, False, True),
    (17, "nshm", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (18, "shmsize", R.RECLAIMABLE | R.DENIABLE | R.SLOPPY, True, False, False),
    (19, "wallclock", R.IN_MILLIONS, False, False, True),
    (20, "pcpu", R.DECAYING | R.DENIABLE | R.IN_MILLIONS, True, False, True),
    (21, "readbps", R.DECAYING, False, True, True),
    (22, "writebps", R.DECAYING, False, True, True),
    (23, "readiops", R.DECAYING, False, True, True),
    (24, "writeiops", R.DECAYING, False, True, True),
]

# Spec table 4.1: the kernel's actionnames[] in order, with their numbers.
ACTION_TABLE = [
    ("sighup", 1), ("sigint", 2), ("sigquit", 3), ("sigill", 4), ("sigtrap", 5),
    ("sigabrt", 6), ("sigemt", 7), ("sigfpe", 8), ("sigkill", 9), ("sigbus", 10),
    ("sigsegv", 11), ("sigsys", 12), ("sigpipe", 13), ("sigalrm", 14), ("sigterm", 15),
    ("sigurg", 16), ("sigstop", 17), ("sigtstp", 18), ("sigchld", 20), ("sigttin", 21),
    ("sigttou", 22), ("sigio", 23), ("sigxcpu", 24), ("sigxfsz", 25), ("sigvtalrm", 26),
    ("sigprof", 27), ("sigwinch", 28), ("siginfo", 29), ("sigusr1", 30), ("sigusr2", 31),
    ("sigthr", 32), ("deny", 33), ("log", 34), ("devctl", 35), ("throttle", 36),
]  # fmt: skip


def test_subjects_and_their_kernel_ids() -> None:
    assert [(s.value, s.kernel_id) for s in SubjectType] == [
        ("process", 0),
        ("user", 1),
        ("loginclass", 3),
        ("jail", 4),
    ]


def test_subject_aliases_are_rctl8s() -> None:
    assert SUBJECT_ALIASES == {
        "u": "user",
        "p": "process",
        "l": "loginclass",
        "c": "loginclass",
        "class": "loginclass",
        "j": "jail",
        "g": "group",
    }


@pytest.mark.parametrize(
    ("kernel_id", "name", "flags", "deny", "throttle", "per_process"),
    RESOURCE_TABLE,
    ids=[row[1] for row in RESOURCE_TABLE],
)
def test_resource_table(
    kernel_id: int, name: str, flags: ResourceFlag, deny: bool, throttle: bool, per_process: bool
) -> None:
    resource = Resource(name)
    assert resource.info.kernel_id == kernel_id
    assert resource.info.flags == flags
    assert resource.deny_allowed is deny
    assert resource.throttle_allowed is throttle
    assert resource.sloppy is not per_process
    assert resource.in_millions is (R.IN_MILLIONS in flags)


def test_resources_are_in_kernel_order_and_complete() -> None:
    assert [r.value for r in Resource] == [row[1] for row in RESOURCE_TABLE]
    assert [r.info.kernel_id for r in Resource] == list(range(25))


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("cputime", Unit.SECONDS),
        ("wallclock", Unit.SECONDS),
        ("pcpu", Unit.PERCENT),
        ("memoryuse", Unit.BYTES),
        ("maxproc", Unit.COUNT),
        ("readbps", Unit.BYTES_PER_SECOND),
        ("writeiops", Unit.OPS_PER_SECOND),
    ],
)
def test_resource_units(name: str, unit: Unit) -> None:
    assert Resource(name).info.unit is unit


def test_actions_and_their_kernel_ids() -> None:
    assert [(a.value, a.kernel_id) for a in Action] == ACTION_TABLE


def test_signal_actions() -> None:
    signals = [a for a in Action if a.is_signal]
    assert len(signals) == 31
    assert SIGNAL_MAX == 32
    assert {a.value: a.signal_number for a in signals} == SIGNAL_NUMBERS
    # SIGCONT (19) is missing from the kernel's table.
    assert 19 not in SIGNAL_NUMBERS.values()
    assert "sigcont" not in {a.value for a in Action}
    for action in (Action.DENY, Action.LOG, Action.DEVCTL, Action.THROTTLE):
        assert not action.is_signal
        assert action.signal_number is None


@pytest.mark.parametrize(
    ("subject", "given", "printed"),
    [
        (SubjectType.USER, "80", "80"),
        (SubjectType.USER, "2147483647", "2147483647"),
        # uids are printed with %d: from 2^31 up they come out negative.
        (SubjectType.USER, "2147483648", "-2147483648"),
        (SubjectType.USER, "4294967295", "-1"),
        # uid_t is 32 bits: the kernel truncates.
        (SubjectType.USER, "4294967376", "80"),
        (SubjectType.USER, "www", "www"),
        (SubjectType.JAIL, "4294967295", "4294967295"),
        (SubjectType.LOGINCLASS, "Staff", "Staff"),
        (SubjectType.PROCESS, "1", "1"),
    ],
)
def test_format_subject_id(subject: SubjectType, given: str, printed: str) -> None:
    assert format_subject_id(subject, given) == printed


@pytest.mark.parametrize(
    ("rule", "canonical"),
    [
        (
            Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.DENY, 10, SubjectType.USER),
            "user:80:maxproc:deny=10",
        ),
        (
            Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.DENY, 10, SubjectType.PROCESS),
            "user:80:maxproc:deny=10/process",
        ),
        (
            Rule(SubjectType.JAIL, "db1", Resource.PCPU, Action.DENY, 50, SubjectType.JAIL),
            "jail:db1:pcpu:deny=50",
        ),
        (
            Rule(
                SubjectType.LOGINCLASS,
                "Staff",
                Resource.CPUTIME,
                Action.SIGXCPU,
                3600,
                SubjectType.USER,
            ),
            "loginclass:Staff:cputime:sigxcpu=3600/user",
        ),
    ],
)
def test_rule_canonical(rule: Rule, canonical: str) -> None:
    assert rule.canonical == canonical
    assert str(rule) == canonical


def test_internal_amount_scales_in_millions_resources() -> None:
    cpu = Rule(SubjectType.USER, "80", Resource.CPUTIME, Action.LOG, 10, SubjectType.USER)
    procs = Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.LOG, 10, SubjectType.USER)
    assert cpu.internal_amount == 10_000_000
    assert procs.internal_amount == 10
    assert IN_MILLIONS_MAX == INT64_MAX // 1_000_000


def test_rules_are_frozen_hashable_and_ordered() -> None:
    a = Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.DENY, 10, SubjectType.USER)
    b = Rule(SubjectType.USER, "80", Resource.MAXPROC, Action.DENY, 20, SubjectType.USER)
    assert len({a, b, a}) == 2
    assert sorted([b, a]) == [a, b]
    with pytest.raises(AttributeError):
        a.amount = 5  # type: ignore[misc]


RULE = Rule(SubjectType.USER, "80", Resource.CPUTIME, Action.LOG, 10, SubjectType.USER)


@pytest.mark.parametrize(
    ("filter_", "matches"),
    [
        (EVERYTHING, True),
        (Filter(SubjectType.USER), True),
        (Filter(SubjectType.JAIL), False),
        (Filter(SubjectType.USER, "80"), True),
        (Filter(SubjectType.USER, "81"), False),
        (Filter(resource=Resource.CPUTIME), True),
        (Filter(resource=Resource.WALLCLOCK), False),
        (Filter(action=Action.LOG), True),
        (Filter(action=Action.DENY), False),
        # With a resource the amount is in user units...
        (Filter(resource=Resource.CPUTIME, amount=10), True),
        # ...without one the kernel compares the raw (x10^6) number.
        (Filter(amount=10), False),
        (Filter(amount=10_000_000), True),
        # per is a wildcard unless given.
        (Filter(per=SubjectType.USER), True),
        (Filter(per=SubjectType.PROCESS), False),
    ],
)
def test_filter_matches(filter_: Filter, matches: bool) -> None:
    assert filter_.matches(RULE) is matches


def test_a_rule_as_filter_matches_itself_only() -> None:
    other = Rule(SubjectType.USER, "80", Resource.CPUTIME, Action.LOG, 10, SubjectType.PROCESS)
    assert RULE.as_filter().matches(RULE)
    assert not RULE.as_filter().matches(other)


@pytest.mark.parametrize(
    ("filter_", "text"),
    [
        (EVERYTHING, "::"),
        (Filter(SubjectType.USER), "user::"),
        (Filter(SubjectType.USER, "80", Resource.MAXPROC), "user:80:maxproc"),
        (
            Filter(SubjectType.USER, "80", Resource.MAXPROC, Action.DENY, 10, SubjectType.USER),
            "user:80:maxproc:deny=10/user",
        ),
        (Filter(SubjectType.USER, per=SubjectType.USER), "user:::=/user"),
        (Filter(amount=5), ":::=5"),
    ],
)
def test_filter_text(filter_: Filter, text: str) -> None:
    assert filter_.text == text
    assert str(filter_) == text


def test_process_usage_omits_sloppy_resources() -> None:
    assert len(PROCESS_USAGE_RESOURCES) == 17
    assert Resource.SWAPUSE not in PROCESS_USAGE_RESOURCES


def test_severity_ranks() -> None:
    assert sorted(Severity, key=lambda s: s.rank) == [
        Severity.ERROR,
        Severity.WARNING,
        Severity.INFO,
    ]
