"""The rules directory as the daemon and `rctlpolicy handle` load it: read, linted, expanded.

`load_rules` reads and lints the directory (a policy with errors is None); `expand` turns a
policy into the rules for the jails that run now, indexed by canonical form for the events;
`save_in_progress` recognises the moments of an editor's save that would load half a policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rctlpolicy.codes import Code
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.files import (
    PolicyReadError,
    UnsafeFileError,
    check_safe_ownership,
    read_policy_files,
)
from rctlpolicy.lint import lint_files
from rctlpolicy.model import Severity
from rctlpolicy.policy import expand_jail_patterns
from rctlpolicy.policy_model import Policy, PolicyRule
from rctlpolicy.semantics.resolver import Resolver

#: Editor backups whose presence beside a vanished policy file means a save is under way
#: (vim and emacs rename the file to NAME~ and write NAME anew).
BACKUP_SUFFIXES = ("~", ".bak")


@dataclass(frozen=True, slots=True)
class PolicyLoad:
    """The rules directory read and linted: the policy (None when it has errors)."""

    policy: Policy | None
    diagnostics: tuple[Diagnostic, ...]
    #: Bytes of each file read, to recognise an editor's save half-way through next time.
    file_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """A policy that passed lint, with its rules expanded for the running jails."""

    policy: Policy
    expanded: tuple[PolicyRule, ...]
    by_canonical: Mapping[str, PolicyRule] = field(hash=False, compare=False)
    jail_names: frozenset[str]
    file_sizes: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)


def load_rules(rules_dir: Path, resolver: Resolver) -> PolicyLoad:
    """Read and lint the rules directory; the policy is None when it has errors.

    A YAML file that makes the daemon run commands must be safe from other users
    (`check_safe_ownership`); an unsafe one is an error like any lint error.
    """
    try:
        files = read_policy_files([rules_dir])
    except PolicyReadError as error:
        problem = Diagnostic.of(Code.IO_ERROR, error.path, 0, 0, error.reason)
        return PolicyLoad(None, (problem,))
    try:
        result = lint_files(files, resolver)
    except OSError as error:  # the resolver's data source (the simulated host file) broke
        problem = Diagnostic.of(Code.IO_ERROR, str(rules_dir), 0, 0, str(error))
        return PolicyLoad(None, (problem,))
    diagnostics = list(result.diagnostics)
    for policy_file in files:
        if not policy_file.is_yaml:
            continue
        runs_commands = any(
            r.on_match is not None and r.source.path == policy_file.path
            for r in result.policy.rules
        )
        if runs_commands:
            try:
                check_safe_ownership(Path(policy_file.path))
            except UnsafeFileError as error:
                diagnostics.append(
                    Diagnostic.of(Code.UNSAFE_FILE, policy_file.path, 0, 0, str(error))
                )
    sizes = {f.path: len(f.text.encode("utf-8")) for f in files}
    if any(d.severity is Severity.ERROR for d in diagnostics):
        return PolicyLoad(None, tuple(diagnostics), sizes)
    return PolicyLoad(result.policy, tuple(diagnostics), sizes)


def expand(
    policy: Policy, jail_names: Iterable[str], file_sizes: Mapping[str, int] | None = None
) -> LoadedRules:
    """The policy's rules for these running jails, indexed by their canonical form."""
    names = frozenset(jail_names)
    expanded = tuple(expand_jail_patterns(policy, names))
    by_canonical: dict[str, PolicyRule] = {}
    for policy_rule in expanded:
        # The first rule with on_match wins for a canonical form named twice.
        known = by_canonical.get(policy_rule.canonical)
        if known is None or (known.on_match is None and policy_rule.on_match is not None):
            by_canonical[policy_rule.canonical] = policy_rule
    return LoadedRules(policy, expanded, by_canonical, names, dict(file_sizes or {}))


def save_in_progress(previous_sizes: Mapping[str, int]) -> str | None:
    """Why the rules directory looks like an editor is half-way through saving, or None.

    Two moments of the common save patterns would otherwise load as a smaller policy and
    unload good rules: vim's backup dance (NAME renamed to NAME~, then NAME written anew) leaves
    a loaded file missing beside its backup, and truncate-and-write leaves it empty. An atomic
    rename has no such moment. Only files that held something at the last load count, so a
    file deliberately emptied is reloaded once the caller stops waiting.
    """
    for path_text, size in sorted(previous_sizes.items()):
        if size == 0:
            continue
        path = Path(path_text)
        try:
            now = path.stat().st_size
        except FileNotFoundError:
            for suffix in BACKUP_SUFFIXES:
                if path.with_name(path.name + suffix).exists():
                    return f"{path} is missing while its backup {path.name}{suffix} exists"
            continue
        except OSError:
            continue  # the load that follows reports it
        if now == 0:
            return f"{path} is empty"
    return None
