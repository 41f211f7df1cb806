"""Policy files -> Policy: FreeBSD's rctl.conf format (`policy_conf`) and rctlpolicy's YAML
(`policy_yaml`), whichever each file is.

Pure: the caller reads the files (`rctlpolicy.files`) and passes their text in. Every problem is
returned as a Diagnostic with the file, line and column it is at; nothing raises on bad input.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector, Report
from rctlpolicy.gcpause import no_cyclic_gc
from rctlpolicy.model import Rule, Severity
from rctlpolicy.policy_conf import load_conf
from rctlpolicy.policy_model import Policy, PolicyRule
from rctlpolicy.records import NamedTuple
from rctlpolicy.semantics.resolver import OFFLINE, Resolver

CONF_SUFFIXES = (".conf", ".rules")
YAML_SUFFIXES = (".yaml", ".yml")


class PolicyFile(NamedTuple):
    """A policy file's path (as shown to the user) and its text."""

    path: str
    text: str

    @property
    def is_yaml(self) -> bool:
        return self.path.endswith(YAML_SUFFIXES)


class LoadedPolicy(NamedTuple):
    policy: Policy
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def load_policy(
    files: Sequence[PolicyFile], resolver: Resolver = OFFLINE, *, fast_lane: bool | None = None
) -> LoadedPolicy:
    """Parse and validate every file; the policy holds the rules that are valid."""
    collected = DiagnosticCollector()
    policy = read_policy(files, collected.add, resolver, fast_lane=fast_lane)
    return LoadedPolicy(policy, tuple(collected.diagnostics()))


def read_policy(
    files: Sequence[PolicyFile],
    report: Report,
    resolver: Resolver = OFFLINE,
    *,
    fast_lane: bool | None = None,
) -> Policy:
    """Parse and validate every file, sending each diagnostic to `report` as it is found (in
    no particular order); the policy holds the rules that are valid. `fast_lane`: whether
    plain rctl.conf lines take the fast lane (`policy_conf.load_conf`; None: in big files)."""
    with no_cyclic_gc():
        rules: list[PolicyRule] = []
        for policy_file in files:
            if policy_file.is_yaml:
                # Imported on demand: PyYAML is a good part of a start-up that pre-commit
                # pays on every commit, and many policies are rctl.conf files only.
                from rctlpolicy.policy_yaml import load_yaml

                file_rules, file_diagnostics = load_yaml(policy_file, resolver)
                for diagnostic in file_diagnostics:
                    report(diagnostic)
            else:
                file_rules = load_conf(policy_file, resolver, report, fast_lane)
            rules.extend(file_rules)
        return Policy(tuple(rules), tuple(f.path for f in files))


def jail_pattern_matches(pattern: str, jail_name: str) -> bool:
    """Whether a YAML jail glob (`web-*`) matches a running jail's name (case-sensitive)."""
    return fnmatch.fnmatchcase(jail_name, pattern)


def expand_jail_patterns(policy: Policy, jail_names: Iterable[str]) -> list[PolicyRule]:
    """The policy's rules for the kernel: concrete rules, plus one rule per matching jail."""
    with no_cyclic_gc():
        return _expand_jail_patterns(policy, jail_names)


def _expand_jail_patterns(policy: Policy, jail_names: Iterable[str]) -> list[PolicyRule]:
    names = sorted(set(jail_names))
    result: list[PolicyRule] = []
    for policy_rule in policy.rules:
        if policy_rule.jail_pattern is None:
            result.append(policy_rule)
            continue
        for name in names:
            if jail_pattern_matches(policy_rule.jail_pattern, name):
                rule = policy_rule.rule
                concrete = Rule(
                    rule.subject, name, rule.resource, rule.action, rule.amount, rule.per
                )
                result.append(
                    PolicyRule(
                        concrete,
                        policy_rule.source,
                        policy_rule.text,
                        policy_rule.on_match,
                        policy_rule.comment,
                        policy_rule.jail_pattern,
                    )
                )
    return result
