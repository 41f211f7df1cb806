"""apply.py over the simulated kernel: ownership, refusals, and convergence after interrupts.

The kernel is the real one off FreeBSD (`FreeBSDKernel` over `SimulatedSyscalls`); wrappers
around it refuse a rule or interrupt the apply at a chosen call, so every failure path runs
against the same rules engine as `rctlpolicy apply`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from corpus_host import corpus_cases, rule

from rctlpolicy.apply import (
    APPLIED_FILE,
    AppliedRules,
    apply_rules,
    plan_for,
)
from rctlpolicy.hostinfo import PolicyResolver
from rctlpolicy.kernel import KernelSetup, open_simulator
from rctlpolicy.kernel.base import Jail, Kernel, KernelError, RacctStatus
from rctlpolicy.lint import lint_files
from rctlpolicy.model import EVERYTHING, Filter, Resource, Rule
from rctlpolicy.policy import PolicyFile

T = TypeVar("T")


def rules(*texts: str) -> list[Rule]:
    return [rule(text) for text in texts]


@pytest.fixture
def setup(host: Path) -> KernelSetup:
    return open_simulator(host)


@pytest.fixture
def applied(tmp_path: Path) -> AppliedRules:
    return AppliedRules.in_dir(tmp_path / "state")


def in_force(setup: KernelSetup) -> list[str]:
    return [r.canonical for r in setup.kernel.rules(EVERYTHING)]


# --- kernel wrappers --------------------------------------------------------------------------


class Interrupted(BaseException):
    """Like KeyboardInterrupt: not an Exception, so nothing on the way catches it."""


@dataclass
class WrappedKernel:
    """A Kernel that passes every call to `inner`, counting them; subclasses meddle."""

    inner: Kernel
    calls: list[str] = field(default_factory=list)

    def _call(self, name: str, run: Callable[[], T]) -> T:
        self.calls.append(name)
        return run()

    def add_rule(self, rule: Rule) -> None:
        self._call(f"add {rule.canonical}", lambda: self.inner.add_rule(rule))

    def remove_rules(self, rule_filter: Filter) -> None:
        self._call(f"remove {rule_filter.text}", lambda: self.inner.remove_rules(rule_filter))

    def rules(self, rule_filter: Filter = EVERYTHING) -> list[Rule]:
        return self._call("rules", lambda: self.inner.rules(rule_filter))

    def usage(self, rule_filter: Filter) -> dict[Resource, int]:
        return self._call("usage", lambda: self.inner.usage(rule_filter))

    def limits(self, pid: int) -> list[Rule]:
        return self._call("limits", lambda: self.inner.limits(pid))

    def jails(self) -> Sequence[Jail]:
        return self.inner.jails()

    def racct_status(self) -> RacctStatus:
        return self.inner.racct_status()


@dataclass
class InterruptingKernel(WrappedKernel):
    """Interrupts call number `at` (1-based): before it reaches the kernel, or after (the
    kernel did it, the caller never learnt)."""

    at: int = 0
    after: bool = False

    def _call(self, name: str, run: Callable[[], T]) -> T:
        self.calls.append(name)
        if len(self.calls) == self.at and not self.after:
            raise Interrupted(name)
        result = run()
        if len(self.calls) == self.at:
            raise Interrupted(name)
        return result


@dataclass
class RefusingKernel(WrappedKernel):
    """Refuses to add the rules named in `refuse` with the given errno."""

    refuse: dict[str, str] = field(default_factory=dict)

    def add_rule(self, rule: Rule) -> None:
        self.calls.append(f"add {rule.canonical}")
        errno_name = self.refuse.get(rule.canonical)
        if errno_name is not None:
            raise KernelError(errno_name, rule.canonical)
        self.inner.add_rule(rule)


# --- ownership ----------------------------------------------------------------------------------


def test_first_apply_adds_everything_and_owns_it(setup: KernelSetup, applied: AppliedRules) -> None:
    desired = rules("jail:db1:memoryuse:deny=4294967296", "user:80:maxproc:deny=50")
    report = apply_rules(setup.kernel, desired, applied)
    assert report.ok
    assert [r.canonical for r in report.added] == [r.canonical for r in desired]
    assert report.kernel_calls == 3
    assert sorted(in_force(setup)) == sorted(r.canonical for r in desired)
    assert applied.owned() == {r.canonical for r in desired}
    assert json.loads(applied.path.read_text())["owned"] == sorted(r.canonical for r in desired)


def test_a_second_apply_makes_only_the_listing_call(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    desired = rules("jail:db1:memoryuse:deny=4294967296", "jail:db1:memoryuse:log=3221225472")
    apply_rules(setup.kernel, desired, applied)
    counting = WrappedKernel(setup.kernel)
    report = apply_rules(counting, desired, applied)
    assert report.plan.empty and report.ok
    assert counting.calls == ["rules"]
    assert report.kernel_calls == 1


def test_dropped_rules_are_removed_only_if_ours(setup: KernelSetup, applied: AppliedRules) -> None:
    apply_rules(
        setup.kernel, rules("jail:db1:maxproc:deny=100", "jail:web1:maxproc:deny=50"), applied
    )
    setup.kernel.add_rule(rule("jail:web2:maxproc:deny=7"))  # another tool's
    report = apply_rules(setup.kernel, rules("jail:db1:maxproc:deny=100"), applied)
    assert [r.canonical for r in report.removed] == ["jail:web1:maxproc:deny=50"]
    assert [r.canonical for r in report.plan.foreign] == ["jail:web2:maxproc:deny=7"]
    assert sorted(in_force(setup)) == ["jail:db1:maxproc:deny=100", "jail:web2:maxproc:deny=7"]
    assert applied.owned() == {"jail:db1:maxproc:deny=100"}


def test_prune_removes_other_tools_rules_too(setup: KernelSetup, applied: AppliedRules) -> None:
    setup.kernel.add_rule(rule("jail:web2:maxproc:deny=7"))
    report = apply_rules(setup.kernel, rules("jail:db1:maxproc:deny=100"), applied, prune=True)
    assert [r.canonical for r in report.removed] == ["jail:web2:maxproc:deny=7"]
    assert in_force(setup) == ["jail:db1:maxproc:deny=100"]


def test_a_rule_another_tool_already_added_is_not_claimed(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    setup.kernel.add_rule(rule("jail:web2:maxproc:deny=7"))
    report = apply_rules(setup.kernel, rules("jail:web2:maxproc:deny=7"), applied)
    assert report.plan.empty
    assert applied.owned() == set()
    apply_rules(setup.kernel, [], applied)  # the policy drops it: still not ours to remove
    assert in_force(setup) == ["jail:web2:maxproc:deny=7"]


def test_a_new_deny_amount_replaces_the_old_without_a_removal(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    apply_rules(setup.kernel, rules("jail:db1:memoryuse:deny=100"), applied)
    counting = WrappedKernel(setup.kernel)
    report = apply_rules(counting, rules("jail:db1:memoryuse:deny=200"), applied)
    assert counting.calls == ["rules", "add jail:db1:memoryuse:deny=200"]
    assert [(o.canonical, n.canonical) for o, n in report.replaced] == [
        ("jail:db1:memoryuse:deny=100", "jail:db1:memoryuse:deny=200")
    ]
    assert in_force(setup) == ["jail:db1:memoryuse:deny=200"]
    assert applied.owned() == {"jail:db1:memoryuse:deny=200"}


def test_rules_that_left_the_kernel_are_forgotten(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    desired = rules("jail:db1:maxproc:deny=100", "jail:web1:maxproc:deny=50")
    apply_rules(setup.kernel, desired, applied)
    setup.kernel.remove_rules(Filter())  # someone flushed the kernel (rctl -r :)
    report = apply_rules(setup.kernel, [], applied)
    assert report.plan.empty
    assert applied.owned() == set()


def test_plan_reads_the_state_without_creating_anything(setup: KernelSetup, tmp_path: Path) -> None:
    applied = AppliedRules.in_dir(tmp_path / "nowhere")
    plan = plan_for(setup.kernel, rules("jail:db1:maxproc:deny=100"), applied)
    assert [r.canonical for r in plan.to_add] == ["jail:db1:maxproc:deny=100"]
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("content", ["{not json", '{"owned": "jail:db1:maxproc:deny=1"}', "[]"])
def test_a_damaged_state_file_owns_nothing(
    setup: KernelSetup, tmp_path: Path, content: str
) -> None:
    applied = AppliedRules.in_dir(tmp_path)
    applied.path.write_text(content)
    setup.kernel.add_rule(rule("jail:db1:maxproc:deny=1"))
    report = apply_rules(setup.kernel, [], applied)
    assert report.plan.empty  # the rule is not known to be ours: left alone
    assert in_force(setup) == ["jail:db1:maxproc:deny=1"]


# --- refusals -----------------------------------------------------------------------------------


def test_a_refused_rule_is_reported_and_the_rest_applied(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    desired = rules(
        "jail:db1:maxproc:deny=100", "jail:db1:memoryuse:deny=4096", "jail:web1:nthr:deny=9"
    )
    refusing = RefusingKernel(setup.kernel, refuse={"jail:db1:memoryuse:deny=4096": "EOPNOTSUPP"})
    report = apply_rules(refusing, desired, applied)
    assert not report.ok
    [(refused, error)] = report.failures
    assert refused.canonical == "jail:db1:memoryuse:deny=4096"
    assert (error.errno_name, error.reason) == ("EOPNOTSUPP", "Operation not supported")
    assert sorted(in_force(setup)) == ["jail:db1:maxproc:deny=100", "jail:web1:nthr:deny=9"]
    assert applied.owned() == {"jail:db1:maxproc:deny=100", "jail:web1:nthr:deny=9"}
    # Once the kernel takes it, a second apply converges: just the missing rule.
    counting = WrappedKernel(setup.kernel)
    second = apply_rules(counting, desired, applied)
    assert second.ok
    assert counting.calls == ["rules", "add jail:db1:memoryuse:deny=4096"]
    assert plan_for(setup.kernel, desired, applied).empty
    assert applied.owned() == {r.canonical for r in desired}


def drop_process(host: Path, pid: int) -> None:
    """Edit the host file as if the process had exited (its usage goes with it)."""
    data = yaml.safe_load(host.read_text())
    del data["processes"][pid]
    data["usage"].pop(f"process:{pid}", None)
    host.write_text(yaml.safe_dump(data))


def test_a_process_that_exited_before_apply_is_one_refusal(
    setup: KernelSetup, applied: AppliedRules, host: Path
) -> None:
    policy = "process:4242:openfiles:deny=1000\njail:db1:maxproc:deny=100\n"
    desired = [
        r.rule
        for r in lint_files(
            [PolicyFile("p.conf", policy)], PolicyResolver(setup.resolver)
        ).policy.rules
    ]
    plan = plan_for(setup.kernel, desired, applied)
    assert [r.canonical for r in plan.to_add] == [
        "process:4242:openfiles:deny=1000",
        "jail:db1:maxproc:deny=100",
    ]
    saved = host.read_text()
    drop_process(host, 4242)  # postgres exited between plan and apply
    report = apply_rules(setup.kernel, desired, applied)
    [(refused, error)] = report.failures
    assert refused.canonical == "process:4242:openfiles:deny=1000"
    assert (error.errno_name, error.reason) == ("ESRCH", "No such process")
    assert in_force(setup) == ["jail:db1:maxproc:deny=100"]
    assert applied.owned() == {"jail:db1:maxproc:deny=100"}
    # It comes back: the next apply adds just its rule, and then all is in sync.
    host.write_text(saved)
    counting = WrappedKernel(setup.kernel)
    assert apply_rules(counting, desired, applied).ok
    assert counting.calls == ["rules", "add process:4242:openfiles:deny=1000"]
    assert plan_for(setup.kernel, desired, applied).empty


def test_a_process_rule_that_died_with_its_process_is_forgotten(
    setup: KernelSetup, applied: AppliedRules, host: Path
) -> None:
    desired = rules("process:4242:openfiles:deny=1000")
    apply_rules(setup.kernel, desired, applied)
    drop_process(host, 4242)  # the kernel drops a process's rules when it exits
    report = apply_rules(setup.kernel, [], applied)
    assert report.plan.empty and report.ok
    assert applied.owned() == set()


@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
def test_a_refusal_every_call_would_get_stops_the_apply(
    setup: KernelSetup, applied: AppliedRules, errno_name: str
) -> None:
    desired = rules("jail:db1:maxproc:deny=100", "jail:db1:nthr:deny=9", "jail:web1:nthr:deny=9")
    refusing = RefusingKernel(setup.kernel, refuse={"jail:db1:nthr:deny=9": errno_name})
    with pytest.raises(KernelError) as caught:
        apply_rules(refusing, desired, applied)
    assert caught.value.errno_name == errno_name
    assert refusing.calls == ["rules", "add jail:db1:maxproc:deny=100", "add jail:db1:nthr:deny=9"]
    assert applied.owned() == {"jail:db1:maxproc:deny=100"}  # what was done is recorded


def test_removing_a_rule_that_is_already_gone_counts_as_removed(
    setup: KernelSetup, applied: AppliedRules
) -> None:
    apply_rules(setup.kernel, rules("jail:db1:maxproc:deny=100"), applied)

    @dataclass
    class RacingKernel(WrappedKernel):
        def remove_rules(self, rule_filter: Filter) -> None:
            self.inner.remove_rules(rule_filter)  # someone else removes it first
            self.inner.remove_rules(rule_filter)  # ESRCH

    report = apply_rules(RacingKernel(setup.kernel), [], applied)
    assert report.ok
    assert [r.canonical for r in report.removed] == ["jail:db1:maxproc:deny=100"]
    assert applied.owned() == set()


# --- interrupted at every call -------------------------------------------------------------

POLICY_A = (
    "jail:db1:memoryuse:deny=4294967296",
    "jail:db1:memoryuse:log=3221225472",
    "jail:web1:maxproc:deny=100",
    "user:80:maxproc:deny=50",
)
FOREIGN = ("jail:web2:maxproc:deny=7", "jail:db1:openfiles:deny=5000", "jail:web2:nthr:deny=100")
POLICY_B = (
    "jail:db1:memoryuse:deny=8589934592",  # replaces A's deny
    "jail:web1:maxproc:deny=100",  # kept
    "jail:web2:memoryuse:deny=1073741824",  # new
    "loginclass:daemon:maxproc:deny=10",  # new
    "jail:web2:nthr:deny=100",  # already there, another tool's
)
#: B's apply over A: the listing, three additions, two removals.
CALLS_B = 6
OWNED_B = {
    "jail:db1:memoryuse:deny=8589934592",
    "jail:web1:maxproc:deny=100",
    "jail:web2:memoryuse:deny=1073741824",
    "loginclass:daemon:maxproc:deny=10",
}


def interrupt_cases() -> Iterator[tuple[int, bool]]:
    for at in range(1, CALLS_B + 2):  # one past the last: no interrupt at all
        yield at, False
        yield at, True


@pytest.mark.parametrize(("at", "after"), list(interrupt_cases()))
def test_an_apply_interrupted_at_any_call_converges_on_the_next(
    setup: KernelSetup, applied: AppliedRules, at: int, after: bool
) -> None:
    assert apply_rules(setup.kernel, rules(*POLICY_A), applied).ok
    for text in FOREIGN:
        setup.kernel.add_rule(rule(text))
    interrupting = InterruptingKernel(setup.kernel, at=at, after=after)
    if at <= CALLS_B:
        with pytest.raises(Interrupted):
            apply_rules(interrupting, rules(*POLICY_B), applied)
    else:
        apply_rules(interrupting, rules(*POLICY_B), applied)
        assert len(interrupting.calls) == CALLS_B

    report = apply_rules(setup.kernel, rules(*POLICY_B), applied)
    assert report.ok
    assert plan_for(setup.kernel, rules(*POLICY_B), applied).empty
    current = set(in_force(setup))
    assert set(FOREIGN) <= current  # nobody else's rule was touched
    assert current == set(FOREIGN) | OWNED_B
    assert applied.owned() == OWNED_B
    # And the policy's removal later takes out exactly what is ours.
    apply_rules(setup.kernel, [], applied)
    assert set(in_force(setup)) == set(FOREIGN)


# --- conformance: whatever rctl(8) accepts, apply converges on -------------------------------


def corpus_rules() -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    for case in corpus_cases():
        if case["layer"] != "rctl8" or case["mode"] != "add" or not case["valid"]:
            continue
        if any(ch.isspace() for ch in case["rule"]):
            continue  # rctl.conf splits words on white space
        cases.append((case["rule"], case["canonical"]))
    return cases


@pytest.fixture
def corpus_setup(tmp_path: Path) -> KernelSetup:
    path = tmp_path / "corpus-host.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "users": {"root": 0, "www": 80},
                "groups": {"wheel": 0},
                "loginclasses": ["default", "daemon"],
                "processes": {1: {"comm": "init", "uid": 0}},
                "jails": {"db1": {"jid": 3}},
            }
        )
    )
    return open_simulator(path)


def test_every_rule_rctl8_accepts_applies_to_its_canonical_form(
    corpus_setup: KernelSetup, tmp_path: Path
) -> None:
    applied = AppliedRules.in_dir(tmp_path / "state")
    cases = corpus_rules()
    assert len(cases) > 30
    for text, canonical in cases:
        result = lint_files([PolicyFile("p.conf", text + "\n")], corpus_setup.resolver)
        desired = [r.rule for r in result.policy.rules]
        report = apply_rules(corpus_setup.kernel, desired, applied)
        assert report.ok, (text, report.failures)
        assert in_force(corpus_setup) == [canonical], text
        assert plan_for(corpus_setup.kernel, desired, applied).empty, text
        assert applied.owned() == {canonical}, text
    apply_rules(corpus_setup.kernel, [], applied)
    assert in_force(corpus_setup) == []
    assert (tmp_path / "state" / APPLIED_FILE).exists()


def test_the_policy_resolver_answers_for_the_host_but_leaves_pids_to_the_kernel(
    setup: KernelSetup,
) -> None:
    resolver = setup.policy_resolver()
    assert resolver.checks_names
    assert resolver.uid_of("www") == 80
    assert resolver.uid_of("nobody-here") is None
    assert resolver.gid_of("wheel") == 0
    assert resolver.jail_exists("db1") is True
    assert resolver.jail_exists("db9") is False
    assert resolver.loginclass_exists("daemon") is True
    assert resolver.process_exists(4242) is None  # exists, but that is the kernel's to say
    assert resolver.process_exists(99999) is None
