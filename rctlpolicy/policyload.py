"""The rules directory as the daemon and `rctlpolicy handle` load it: read, linted, expanded.

The daemon runs as root and logs what it reads, so reading is stricter than `rctlpolicy lint`'s:

- a symbolic link in the rules directory is followed only to a regular file owned by root (or
  the daemon's user) and not writable by group or others; anything else (a link to a directory,
  a FIFO, a file someone else controls) is an error naming the path, and is never read;
- a file over the size limit (16 MiB unless configured) is refused before it is read or parsed;
- every file read is recorded in a `Fingerprint` (size, mtime, content hash, whether an
  rctl.conf file ends with its newline), so a reload can tell a policy that has settled from
  one still being written;
- a file others cannot read is marked private: `for_the_log` never quotes it (the log is
  often world-readable); what is quoted from the others is capped (`LOG_*`).

`expand` turns a policy into the rules for the jails that run now, indexed by canonical form
for the events; `save_in_progress` recognises the moments of an editor's save that would load
half a policy.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rctlpolicy.codes import Code, DiagnosticCode
from rctlpolicy.config import DEFAULT_MAX_POLICY_FILE_SIZE
from rctlpolicy.diagnostics import Diagnostic, sorted_diagnostics
from rctlpolicy.files import (
    POLICY_SUFFIXES,
    UnsafeFileError,
    check_safe_ownership,
    is_editor_droppings,
)
from rctlpolicy.lint import lint_files
from rctlpolicy.model import Severity
from rctlpolicy.policy import YAML_SUFFIXES, PolicyFile, expand_jail_patterns
from rctlpolicy.policy_model import Policy, PolicyRule
from rctlpolicy.safeio import O_CLOEXEC, O_NOFOLLOW
from rctlpolicy.semantics.resolver import Resolver

#: Editor backups whose presence beside a vanished policy file means a save is under way
#: (vim and emacs rename the file to NAME~ and write NAME anew).
BACKUP_SUFFIXES = ("~", ".bak")
DEFAULT_MAX_FILE_BYTES = DEFAULT_MAX_POLICY_FILE_SIZE
#: What the log quotes of a policy: diagnostics per file, characters of a source line (and of
#: a message or suggestion, which may quote a token of the line).
LOG_DIAGNOSTICS_PER_FILE = 20
LOG_SOURCE_CHARS = 200

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted under a policy name never blocks us


# --- reading the directory -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileMark:
    """What a policy file held when it was read: enough to tell that it changed since."""

    size: int
    mtime_ns: int
    #: A hash of the content ("" for a file refused without reading it).
    digest: str
    #: False for an rctl.conf file whose last line has no newline yet: rc.d/rctl's
    #: `while read` never applies such a line, so the file is taken as still being written.
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The rules directory as read: each policy file's mark, or why it could not be listed."""

    files: tuple[tuple[str, FileMark], ...] = ()
    problem: str | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes of each file read."""
        return {path: mark.size for path, mark in self.files if mark.digest}

    def unfinished(self) -> str | None:
        """Why the policy looks half-written (an rctl.conf without its final newline), or None."""
        for path, mark in self.files:
            if not mark.complete:
                return f"the last line of {path} has no newline yet (still being written?)"
        return None


@dataclass(frozen=True, slots=True)
class RulesRead:
    """The policy files of a rules directory, read, and the ones refused."""

    files: tuple[PolicyFile, ...]
    #: An error naming each path that was refused or could not be read (never its content).
    problems: tuple[Diagnostic, ...]
    fingerprint: Fingerprint
    #: Files that others cannot read: their content is never quoted in the log.
    private: frozenset[str] = frozenset()


def _problem(path: Path | str, code: DiagnosticCode, message: str) -> Diagnostic:
    return Diagnostic.of(code, str(path), 0, 0, message)


def _symlink_refusal(info: os.stat_result, uids: set[int]) -> tuple[DiagnosticCode, str] | None:
    """(code, what the target is) when a symlink's target must not be read."""
    if stat.S_ISDIR(info.st_mode):
        return Code.IO_ERROR, "a directory"
    if not stat.S_ISREG(info.st_mode):
        return Code.IO_ERROR, "not a regular file"
    if info.st_uid not in uids:
        return Code.UNSAFE_FILE, f"owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Code.UNSAFE_FILE, "writable by group or others"
    return None


def _mark(info: os.stat_result, digest: str = "", complete: bool = True) -> FileMark:
    return FileMark(info.st_size, info.st_mtime_ns, digest, complete)


def _read_one(
    path: Path, uids: set[int], max_bytes: int
) -> tuple[PolicyFile | Diagnostic, FileMark, bool] | None:
    """(the file or why it is refused, its mark, whether it is private); None if it is not a
    policy file after all (a directory) or vanished."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None  # removed since the listing: the next look sees the directory as it is
    except OSError as error:
        return (
            _problem(path, Code.IO_ERROR, error.strerror or str(error)),
            FileMark(0, 0, ""),
            False,
        )
    if stat.S_ISDIR(info.st_mode):
        return None
    linked = stat.S_ISLNK(info.st_mode)
    flags = os.O_RDONLY | O_CLOEXEC | _NONBLOCK | (0 if linked else O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        reason = error.strerror or str(error)
        if linked:
            reason = (
                f"a symbolic link to {os.path.realpath(path)}, which cannot be opened: {reason}"
            )
        return _problem(path, Code.IO_ERROR, reason), _mark(info), False
    try:
        # Checked on what was opened, not on a name that could be swapped in between.
        opened = os.fstat(fd)
        if linked and (refusal := _symlink_refusal(opened, uids)) is not None:
            code, what = refusal
            message = (
                f"a symbolic link to {os.path.realpath(path)}, which is {what}: a policy "
                "file reached through a link must be a regular file owned by root (or the "
                "daemon's user) and not writable by group or others; it was not read"
            )
            return _problem(path, code, message), _mark(opened), False
        if not stat.S_ISREG(opened.st_mode):
            return (
                _problem(path, Code.IO_ERROR, "not a regular file; not read"),
                _mark(opened),
                False,
            )
        data = b"" if opened.st_size > max_bytes else _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if opened.st_size > max_bytes or len(data) > max_bytes:
        message = (
            f"{max(opened.st_size, len(data)):,} bytes, over the limit of {max_bytes:,} "
            "(max-policy-file-size); not read"
        )
        return _problem(path, Code.IO_ERROR, message), _mark(opened), False
    private = not opened.st_mode & stat.S_IROTH
    complete = path.name.endswith(YAML_SUFFIXES) or not data or data.endswith(b"\n")
    mark = _mark(opened, hashlib.blake2b(data, digest_size=16).hexdigest(), complete)
    try:
        # Bytes, not universal newlines: the CR of a CRLF file stays in the rule, as rc.d/rctl
        # keeps it (and FreeBSD then refuses the rule).
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return _problem(path, Code.IO_ERROR, f"not UTF-8 text ({error.reason})"), mark, private
    return PolicyFile(str(path), text), mark, private


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_rules_dir(
    directory: Path,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    allowed_uids: Sequence[int] | None = None,
) -> RulesRead:
    """Read the policy files of `directory` (sorted by name), refusing what must not be read."""
    uids = set(allowed_uids if allowed_uids is not None else (0, os.geteuid()))
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        reason = error.strerror or str(error)
        return RulesRead((), (_problem(directory, Code.IO_ERROR, reason),), Fingerprint((), reason))
    files: list[PolicyFile] = []
    problems: list[Diagnostic] = []
    marks: list[tuple[str, FileMark]] = []
    private: set[str] = set()
    for name in names:
        if not name.endswith(POLICY_SUFFIXES) or is_editor_droppings(name):
            continue
        path = directory / name
        outcome = _read_one(path, uids, max_file_bytes)
        if outcome is None:
            continue
        read, mark, secret = outcome
        marks.append((str(path), mark))
        if isinstance(read, Diagnostic):
            problems.append(read)
            continue
        files.append(read)
        if secret:
            private.add(read.path)
    return RulesRead(tuple(files), tuple(problems), Fingerprint(tuple(marks)), frozenset(private))


# --- loading the policy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyLoad:
    """The rules directory read and linted: the policy (None when it has errors)."""

    policy: Policy | None
    diagnostics: tuple[Diagnostic, ...]
    #: Bytes of each file read, to recognise an editor's save half-way through next time.
    file_sizes: Mapping[str, int] = field(default_factory=dict)
    #: What was read, to compare with what had settled before the load.
    fingerprint: Fingerprint | None = None
    #: Files whose content the log must not quote (see `for_the_log`).
    private: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """A policy that passed lint, with its rules expanded for the running jails."""

    policy: Policy
    expanded: tuple[PolicyRule, ...]
    by_canonical: Mapping[str, PolicyRule] = field(hash=False, compare=False)
    jail_names: frozenset[str]
    file_sizes: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)


def unsafe_command_files(files: Iterable[PolicyFile], policy: Policy) -> list[Diagnostic]:
    """An error for each YAML file that makes the daemon run commands but that others could
    write (`check_safe_ownership`): the daemon refuses the policy, and so do plan and apply."""
    commanding = {r.source.path for r in policy.rules if r.on_match is not None}
    diagnostics = []
    for policy_file in files:
        if policy_file.is_yaml and policy_file.path in commanding:
            try:
                check_safe_ownership(Path(policy_file.path))
            except UnsafeFileError as error:
                diagnostics.append(_problem(policy_file.path, Code.UNSAFE_FILE, str(error)))
    return diagnostics


def load_rules(
    rules_dir: Path, resolver: Resolver, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> PolicyLoad:
    """Read and lint the rules directory; the policy is None when it has errors.

    A YAML file that makes the daemon run commands must be safe from other users
    (`check_safe_ownership`); an unsafe one is an error like any lint error, and so is every
    file `read_rules_dir` refused.
    """
    read = read_rules_dir(rules_dir, max_file_bytes=max_file_bytes)
    found = read.fingerprint
    if found.problem is not None:
        return PolicyLoad(None, read.problems, fingerprint=found)
    try:
        result = lint_files(read.files, resolver)
    except OSError as error:  # the resolver's data source (the simulated host file) broke
        problem = _problem(rules_dir, Code.IO_ERROR, str(error))
        return PolicyLoad(None, (problem,), found.sizes, found, read.private)
    diagnostics = [
        *read.problems,
        *result.diagnostics,
        *unsafe_command_files(read.files, result.policy),
    ]
    policy = None if any(d.severity is Severity.ERROR for d in diagnostics) else result.policy
    return PolicyLoad(policy, tuple(diagnostics), found.sizes, found, read.private)


def for_the_log(
    diagnostics: Iterable[Diagnostic], private: frozenset[str] = frozenset()
) -> list[Diagnostic]:
    """The diagnostics as the daemon may log them, in file order (for `formats.render`, which
    caps them per file and cuts long source lines: `LOG_DIAGNOSTICS_PER_FILE`,
    `LOG_SOURCE_CHARS`).

    For a file others cannot read, a diagnostic placed in its content keeps only its place and
    code: its message, source line and suggestion may quote the file (a secret one, say, that a
    symlink or a hard link put under a policy name), and the log is often world-readable.
    """
    return [_unquoted(d) if d.path in private and d.line > 0 else _shortened(d)
            for d in sorted_diagnostics(diagnostics)]  # fmt: skip


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= LOG_SOURCE_CHARS:
        return text
    return text[:LOG_SOURCE_CHARS] + "..."


def _shortened(diagnostic: Diagnostic) -> Diagnostic:
    """The message and suggestion cut like a source line: they may quote a long token."""
    message, suggestion = _cut(diagnostic.message), _cut(diagnostic.suggestion)
    if message is diagnostic.message and suggestion is diagnostic.suggestion:
        return diagnostic
    assert message is not None
    return diagnostic._replace(message=message, suggestion=suggestion)


def _unquoted(diagnostic: Diagnostic) -> Diagnostic:
    path = diagnostic.path
    return diagnostic._replace(
        message=f"not quoted: {path} is not readable by everyone, and the log may be "
        f"(`rctlpolicy lint {path}` shows it)",
        suggestion=None,
        source_line=None,
    )


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
