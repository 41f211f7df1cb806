"""Benchmark plan/apply of a 10,000-rule policy and `usage` of 500 jails on the simulated host.

    .venv/bin/python bench/apply.py [--jails 500] [--runs 5] [--check] [--skip-linear]

The policy (16 rules for each of 500 jails, 8 for each of 200 users and 50 login classes:
10,000 rules with rctl(8) suffixes and user names) goes through the code path of
`rctlpolicy plan` / `apply` (read, lint against the host, expand, list the kernel's rules, plan,
carry out), with the simulated host's system-call layer wrapped to count every call. Figures:

* parse: read + lint of the policy alone, the baseline every other figure is divided by;
* first apply (empty kernel), a no-op plan and a no-op apply, and a 1% change (100 rule
  changes: 50 deny amounts, 25 new rules, 25 dropped), with the kernel calls each made;
* `usage` without a filter (the jail table) over the 500 jails, with the rules in force, and
  how many times it read the host file;
* the no-op plan and the usage table again through `main(argv)` (the console script's code,
  output discarded), and once in a fresh process of the bench's own virtualenv where every
  cache is cold;
* the simulated host's first apply of 2,500, 10,000 and 40,000 rules, each timed in a fresh
  process of the bench's own virtualenv (rctlpolicy installed as users install it, not
  editable, with bytecode: `bench/_venv.py`), median of --runs: it must grow linearly (judged
  on the process's CPU time, wall time beside it: the machine may be loaded).

Goals: a no-op plan costs at most 1.5x parsing; a 1% change makes exactly its 100 add or
remove calls (plus the listing); the usage table reads the host file at most once; the first
apply of 40,000 rules takes at most 4.4x that of 10,000. The exit status is 0 unless --check is
given and a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from rctlpolicy.apply import AppliedRules, ApplyReport, apply_rules, plan_for
from rctlpolicy.cli import main as cli_main
from rctlpolicy.files import read_policy_files
from rctlpolicy.hostinfo import PolicyResolver
from rctlpolicy.kernel.base import RctlCall, RctlSyscalls
from rctlpolicy.kernel.freebsd import FreeBSDKernel
from rctlpolicy.kernel.simulator import SimulatedSyscalls
from rctlpolicy.lint import LintResult, lint_files
from rctlpolicy.model import Rule
from rctlpolicy.plan import Plan
from rctlpolicy.policy import expand_jail_patterns
from rctlpolicy.usage import jail_usage_table

GOAL_NOOP_PLAN_RATIO = 1.5
#: First apply of 40,000 rules against that of 10,000 (4x the rules: 4.4x allows 10% drift).
GOAL_LINEAR_RATIO = 4.4
#: Rules of the policies timed for linearity, and the jails that give each (16 rules per jail
#: plus 2,000 for the users and login classes).
LINEAR_SIZES = {2_496: 31, 10_000: 500, 40_000: 2_375}
USERS = 200
CLASSES = 50
#: The 1% change: deny amounts changed, rules added, rules dropped.
CHANGED, ADDED, DROPPED = 50, 25, 25
T = TypeVar("T")

# (resource, action, amount, per): 16 per jail, 8 per user, 8 per login class; one deny per
# resource and per, so no rule of a subject replaces another.
_JAIL = [
    ("memoryuse", "deny", "4g", ""),
    ("memoryuse", "log", "3g", ""),
    ("memoryuse", "devctl", "3500m", ""),
    ("vmemoryuse", "deny", "16g", ""),
    ("vmemoryuse", "deny", "8g", "/process"),
    ("swapuse", "deny", "1g", ""),
    ("swapuse", "devctl", "512m", ""),
    ("maxproc", "deny", "512", ""),
    ("openfiles", "deny", "65536", ""),
    ("nthr", "deny", "4096", ""),
    ("pcpu", "deny", "400", ""),
    ("pcpu", "log", "300", ""),
    ("readbps", "throttle", "50m", ""),
    ("writebps", "throttle", "20m", ""),
    ("wallclock", "sigterm", "86400", ""),
    ("cputime", "sigxcpu", "36000", "/process"),
]
_USER = [
    ("maxproc", "deny", "200", ""),
    ("openfiles", "deny", "8192", "/process"),
    ("vmemoryuse", "deny", "4g", "/process"),
    ("cputime", "log", "3600", ""),
    ("pseudoterminals", "deny", "64", ""),
    ("nthr", "deny", "2048", ""),
    ("memoryuse", "log", "2g", ""),
    ("swapuse", "deny", "512m", ""),
]
_CLASS = [
    ("maxproc", "deny", "100", "/user"),
    ("vmemoryuse", "deny", "2g", "/process"),
    ("openfiles", "deny", "4096", "/process"),
    ("cputime", "sigxcpu", "7200", "/process"),
    ("nthr", "deny", "1024", "/user"),
    ("memoryuse", "log", "1g", "/user"),
    ("pseudoterminals", "deny", "32", "/user"),
    ("swapuse", "deny", "256m", "/user"),
]


def jail_names(count: int) -> list[str]:
    return [f"j{index:04d}" for index in range(count)]


def generate_host(jails: int) -> str:
    """A host with `jails` running jails, each using something, and the policy's users."""
    return yaml.safe_dump(
        {
            "users": {"root": 0, **{f"u{i:03d}": 2000 + i for i in range(USERS)}},
            "loginclasses": ["default", *(f"c{i:02d}" for i in range(CLASSES))],
            "jails": {name: {"jid": i + 1} for i, name in enumerate(jail_names(jails))},
            "usage": {
                f"jail:{name}": {
                    "memoryuse": (i % 7 + 1) << 29,
                    "maxproc": 10 + i % 90,
                    "pcpu": i % 350,
                    "cputime": 3600 * (i % 24),
                    "openfiles": 100 + 7 * i,
                }
                for i, name in enumerate(jail_names(jails))
            },
        }
    )


def write_host(path: Path, jails: int) -> None:
    """The host file, written an hour ago as far as its mtime says: a real host's file has
    settled long before an apply (one written a moment ago is read on every call, to be sure
    a quick same-size edit is seen)."""
    path.write_text(generate_host(jails))
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


def generate_policy(jails: int) -> list[str]:
    """The policy's lines (no comments): the jails' rules, then users', then classes'."""
    lines: list[str] = []
    subjects = (
        [(f"jail:{name}", _JAIL) for name in jail_names(jails)]
        + [(f"user:u{i:03d}", _USER) for i in range(USERS)]
        + [(f"loginclass:c{i:02d}", _CLASS) for i in range(CLASSES)]
    )
    for index, (subject, limits) in enumerate(subjects):
        scale = 1 + index % 4
        for resource, action, amount, per in limits:
            number, suffix = (amount[:-1], amount[-1]) if amount[-1].isalpha() else (amount, "")
            lines.append(f"{subject}:{resource}:{action}={int(number) * scale}{suffix}{per}")
    return lines


def one_percent_change(lines: list[str]) -> list[str]:
    """CHANGED deny amounts doubled, ADDED new rules, DROPPED rules gone: 100 changes."""
    changed = list(lines)
    denies = [i for i, line in enumerate(changed) if ":deny=" in line and "/" not in line]
    step = len(denies) // (CHANGED + DROPPED)
    picked = denies[::step][: CHANGED + DROPPED]
    for i in picked[:CHANGED]:
        head, _, amount = changed[i].partition("=")
        number, suffix = (amount[:-1], amount[-1]) if amount[-1].isalpha() else (amount, "")
        changed[i] = f"{head}={int(number) * 2}{suffix}"
    for i in sorted(picked[CHANGED:], reverse=True):
        del changed[i]
    changed.extend(f"jail:{name}:nsem:deny=128" for name in jail_names(ADDED))
    return changed


@dataclass
class CountingSyscalls:
    """The simulated host's system calls, each one counted."""

    inner: RctlSyscalls
    calls: Counter[RctlCall] = field(default_factory=Counter)

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        self.calls[call] += 1
        return self.inner.call(call, inbuf, outbuflen)

    def take(self) -> Counter[RctlCall]:
        taken, self.calls = self.calls, Counter()
        return taken


@dataclass
class Bench:
    """A host file, its simulated kernel behind a counting system-call layer, a policy."""

    host: Path
    policy: Path
    state: Path
    simulator: SimulatedSyscalls = field(init=False)
    syscalls: CountingSyscalls = field(init=False)
    kernel: FreeBSDKernel = field(init=False)

    def __post_init__(self) -> None:
        self.simulator = SimulatedSyscalls(self.host)
        self.syscalls = CountingSyscalls(self.simulator)
        self.kernel = FreeBSDKernel(
            self.syscalls, self.simulator.jails, self.simulator.racct_enabled
        )

    def parse(self) -> LintResult:
        """What plan and apply do before the kernel: read the files, lint against the host."""
        result = lint_files(read_policy_files([self.policy]), PolicyResolver(self.simulator.host()))
        assert not result.failed(), "the generated policy has errors"
        return result

    def desired(self) -> list[Rule]:
        result = self.parse()
        names = [jail.name for jail in self.kernel.jails()]
        return [r.rule for r in expand_jail_patterns(result.policy, names)]

    def plan(self) -> Plan:
        return plan_for(self.kernel, self.desired(), AppliedRules.in_dir(self.state))

    def apply(self) -> ApplyReport:
        return apply_rules(self.kernel, self.desired(), AppliedRules.in_dir(self.state))


def timed(work: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def median_seconds(work: Callable[[], object], runs: int) -> float:
    return statistics.median(timed(work)[0] for _ in range(runs))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def cli(*argv: str) -> int:
    with quiet():
        return cli_main(list(argv))


def calls_text(calls: Counter[RctlCall]) -> str:
    names = {
        RctlCall.ADD_RULE: "add",
        RctlCall.REMOVE_RULE: "remove",
        RctlCall.GET_RULES: "list",
        RctlCall.GET_RACCT: "usage",
        RctlCall.GET_LIMITS: "limits",
    }
    return ", ".join(f"{count:,} {names[call]}" for call, count in sorted(calls.items()))


def mutating(calls: Counter[RctlCall]) -> int:
    return calls[RctlCall.ADD_RULE] + calls[RctlCall.REMOVE_RULE]


def cold_child(directory: Path, what: str) -> int:
    """In a fresh process (every cache cold, as for the console script): time one parse or
    one no-op plan, which parses too; prints the seconds as JSON."""
    host = directory / "host.yaml"
    bench = Bench(host, directory / "rctl.conf", host.with_name(host.name + ".rctlpolicy"))
    bench.simulator.host()  # reading the host file is neither parsing nor planning
    if what == "parse":
        seconds, _ = timed(bench.parse)
    else:
        seconds, plan = timed(bench.plan)
        assert plan.empty
    print(json.dumps(seconds))
    return 0


def first_apply_child(directory: Path) -> int:
    """In a fresh process of the bench venv: time the first apply of the policy in `directory`
    to an empty simulated kernel; prints the seconds as JSON."""
    host = directory / "host.yaml"
    bench = Bench(host, directory / "rctl.conf", host.with_name(host.name + ".rctlpolicy"))
    bench.simulator.host()
    cpu = time.process_time()
    seconds, report = timed(bench.apply)
    cpu = time.process_time() - cpu
    assert report.ok and report.added, report.failures[:3]
    print(json.dumps([seconds, cpu]))
    return 0


def linear_first_apply(runs: int) -> dict[int, tuple[float, float]]:
    """Median first-apply (wall, CPU) seconds per policy size, each run in a fresh bench-venv
    process on a fresh simulated host."""
    from _venv import NEUTRAL_CWD, bench_env, bench_python

    python = bench_python()
    medians: dict[int, tuple[float, float]] = {}
    for rules, jails in LINEAR_SIZES.items():
        samples: list[tuple[float, float]] = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="rctlbench") as tmp:
                directory = Path(tmp)
                write_host(directory / "host.yaml", jails)
                lines = generate_policy(jails)
                assert len(lines) == rules, (len(lines), rules)
                (directory / "rctl.conf").write_text("\n".join(lines) + "\n")
                child = subprocess.run(
                    [str(python), str(Path(__file__).resolve()), "--first-apply-child", tmp],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=True,
                    cwd=NEUTRAL_CWD,
                    env=bench_env(),
                )
                wall, cpu = json.loads(child.stdout)
                samples.append((float(wall), float(cpu)))
        medians[rules] = (
            statistics.median(wall for wall, _ in samples),
            statistics.median(cpu for _, cpu in samples),
        )
    return medians


def fresh_process_seconds(directory: Path, what: str, runs: int) -> float:
    from _venv import NEUTRAL_CWD, bench_env, bench_python

    python = bench_python()

    def once() -> float:
        child = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--cold-child", str(directory), what],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            cwd=NEUTRAL_CWD,
            env=bench_env(),
        )
        return float(json.loads(child.stdout))

    return statistics.median(once() for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jails", type=int, default=500, help="jails (16 rules each)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--skip-linear", action="store_true", help="skip the 2,500/10,000/40,000-rule first applies"
    )
    parser.add_argument("--cold-child", nargs=2, metavar=("DIR", "WHAT"), help=argparse.SUPPRESS)
    parser.add_argument("--first-apply-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        return cold_child(Path(args.cold_child[0]), args.cold_child[1])
    if args.first_apply_child:
        return first_apply_child(Path(args.first_apply_child))

    with tempfile.TemporaryDirectory(prefix="rctlbench") as tmp:
        directory = Path(tmp)
        host = directory / "host.yaml"
        write_host(host, args.jails)
        lines = generate_policy(args.jails)
        policy = directory / "rctl.conf"
        policy.write_text("\n".join(lines) + "\n")
        # The state directory `rctlpolicy plan --sim-host` uses, so the CLI agrees.
        bench = Bench(host, policy, host.with_name(host.name + ".rctlpolicy"))
        count = len(bench.parse().policy.rules)

        def row(label: str, seconds: float, note: str = "") -> None:
            print(f"{label:<30} {seconds:>9.3f} s {seconds / parse:>7.2f}x  {note}".rstrip())

        parse = median_seconds(bench.parse, args.runs)
        print(f"policy: {count:,} rules; host: {args.jails} jails; median of {args.runs} runs")
        print(f"{'':<30} {'time':>11} {'/parse':>8}  kernel calls")
        row("parse (read + lint)", parse)

        bench.syscalls.take()
        first, report = timed(bench.apply)
        first_calls = bench.syscalls.take()
        assert report.ok and len(report.added) == count, report.failures[:3]
        row("first apply", first, calls_text(first_calls))

        noop_plan = median_seconds(bench.plan, args.runs)
        plan_calls = bench.syscalls.take()
        assert bench.plan().empty
        bench.syscalls.take()
        row(
            "no-op plan",
            noop_plan,
            calls_text(Counter({k: v // args.runs for k, v in plan_calls.items()})),
        )
        noop_apply = median_seconds(bench.apply, args.runs)
        noop_calls = bench.syscalls.take()
        row(
            "no-op apply",
            noop_apply,
            calls_text(Counter({k: v // args.runs for k, v in noop_calls.items()})),
        )

        changed_lines = one_percent_change(lines)
        original = policy.read_text()
        changed_text = "\n".join(changed_lines) + "\n"
        policy.write_text(changed_text)
        change_plan, plan_result = timed(bench.plan)
        change_plan_calls = bench.syscalls.take()
        planned = len(plan_result.to_add) + len(plan_result.to_remove)
        row("1% change: plan", change_plan, calls_text(change_plan_calls))
        change_times: list[float] = []
        change_calls: list[Counter[RctlCall]] = []
        for run in range(args.runs):
            # Alternate: the changed policy, then back to the original; both are 1% changes.
            policy.write_text(changed_text if run % 2 == 0 else original)
            seconds, change_report = timed(bench.apply)
            assert change_report.ok, change_report.failures[:3]
            change_times.append(seconds)
            change_calls.append(bench.syscalls.take())
        change_apply = statistics.median(change_times)
        policy.write_text(original)
        if args.runs % 2:
            assert bench.apply().ok  # back to the original policy
        bench.syscalls.take()
        row("1% change: apply", change_apply, calls_text(change_calls[0]))

        bench.syscalls.take()
        reads_before = bench.simulator.host_file.reads
        usage = median_seconds(lambda: jail_usage_table(bench.kernel).render(), args.runs)
        usage_calls = bench.syscalls.take()
        host_reads = (bench.simulator.host_file.reads - reads_before) / args.runs
        row(
            f"usage ({args.jails} jails)",
            usage,
            calls_text(Counter({k: v // args.runs for k, v in usage_calls.items()}))
            + f"; {host_reads:g} host file reads each",
        )

        sim = ["--sim-host", str(host)]
        assert cli("plan", str(policy), *sim, "--detailed-exitcode") == 0
        cli_plan = median_seconds(lambda: cli("plan", str(policy), *sim), args.runs)
        row("rctlpolicy plan (main, no-op)", cli_plan)
        cli_usage = median_seconds(lambda: cli("usage", *sim), args.runs)
        row("rctlpolicy usage (main)", cli_usage)
        # The same in fresh processes, as `rctlpolicy plan` runs: nothing cached.
        cold_parse = fresh_process_seconds(directory, "parse", args.runs)
        cold_plan = fresh_process_seconds(directory, "plan", args.runs)
        print(
            f"{'fresh process: parse':<30} {cold_parse:>9.3f} s; no-op plan {cold_plan:.3f} s"
            f" = {cold_plan / cold_parse:.2f}x (every cache cold)"
        )

    linear_ok = True
    if not args.skip_linear:
        print(
            f"simulated host, first apply in a fresh bench-venv process (median of {args.runs}); "
            "CPU time (the process's own) beside wall time: the verdict uses CPU time, which a "
            "loaded machine does not inflate"
        )
        firsts = linear_first_apply(args.runs)
        for rules, (wall, cpu) in firsts.items():
            print(
                f"  {rules:>6,} rules  CPU {cpu:>6.2f} s {1e6 * cpu / rules:>6.1f} us/rule   "
                f"wall {wall:>6.2f} s {1e6 * wall / rules:>6.1f} us/rule"
            )
        ratio = firsts[40_000][1] / firsts[10_000][1]
        wall_ratio = firsts[40_000][0] / firsts[10_000][0]
        linear_ok = ratio <= GOAL_LINEAR_RATIO
        print(
            f"goal: first apply of 40,000 rules <= {GOAL_LINEAR_RATIO}x that of 10,000: CPU "
            f"{ratio:.2f}x (wall {wall_ratio:.2f}x; 2,500 -> 10,000: CPU "
            f"{firsts[10_000][1] / firsts[2_496][1]:.2f}x) {'met' if linear_ok else 'NOT MET'}"
        )
    reads_ok = host_reads <= 1
    print(
        f"goal: the usage table reads the host file at most once: {host_reads:g} "
        f"{'met' if reads_ok else 'NOT MET'}"
    )
    noop_ok = noop_plan <= GOAL_NOOP_PLAN_RATIO * parse
    changes = [mutating(calls) for calls in change_calls]
    change_ok = planned == CHANGED + ADDED + DROPPED and all(n == planned for n in changes)
    print(
        f"goal: no-op plan <= {GOAL_NOOP_PLAN_RATIO}x parse: {noop_plan / parse:.2f}x "
        f"{'met' if noop_ok else 'NOT MET'}"
    )
    print(
        f"goal: a 1% change makes only its changes: {planned} planned, "
        f"{'/'.join(str(n) for n in changes)} add/remove calls per apply "
        f"({100 * changes[0] / mutating(first_calls):.2f}% of the first apply's) "
        f"{'met' if change_ok else 'NOT MET'}"
    )
    return 1 if args.check and not (noop_ok and change_ok and linear_ok and reads_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
