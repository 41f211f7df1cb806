"""Loading the policy in a child process, so that a large or hostile policy never holds the
daemon: its signals, its event path, its memory.

Measured before this existed (10 MB rctl.conf, 316,529 rules, this project's CI machine):
linting took 17 s in the daemon's process, and on a thread it still starved every other thread
of the interpreter lock (a socket reader woke ~120 times a second, with gaps up to 0.5 s), so
devd would have dropped the daemon. In a child the parse costs the daemon nothing; SIGTERM kills
the child and drops its result at once.

`ChildLoader.load` runs `python -m rctlpolicy.loadworker`, which opens the same kernel setup
(for its name look-ups), calls `policyload.load_rules` and writes the result back in a compact
form: pickling the policy's frozen dataclasses took 10 s each way for that policy, these rows
take 2. The child exits when its standard input closes, so it never outlives the daemon by
more than its own parse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rctlpolicy.codes import Code, code_named
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.loops import Wakeup
from rctlpolicy.model import Action, Resource, Rule, Severity, SubjectType
from rctlpolicy.onmatch import OnMatch
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation
from rctlpolicy.policyload import DEFAULT_MAX_FILE_BYTES, PolicyLoad, load_rules

log = logging.getLogger("rctlpolicy")

#: Rows per frame: each frame is decoded by one short C call, so the parent's other threads
#: get the interpreter between frames.
_CHUNK = 4096
_LENGTH = struct.Struct(">I")
#: What the child may say on stderr that the parent keeps (a traceback's last line matters).
_STDERR_LIMIT = 64 * 1024

#: The fields the rows carry, in order. A record that gains a field fails loudly here
#: (`_check_fields`) instead of losing the field on the way back.
_FIELDS: dict[type, tuple[str, ...]] = {
    PolicyRule: ("rule", "source", "text", "on_match", "comment", "jail_pattern"),
    Rule: ("subject", "subject_id", "resource", "action", "amount", "per"),
    SourceLocation: ("path", "line", "column"),
    Diagnostic: (
        "path", "line", "column", "severity", "code", "message", "suggestion", "source_line",
        "width",
    ),
}  # fmt: skip


def _check_fields() -> None:
    for cls, names in _FIELDS.items():
        actual = tuple(cls._fields)  # type: ignore[attr-defined]
        if actual != names:
            raise RuntimeError(f"loadworker: {cls.__name__} has fields {actual}, not {names}")


# --- the result, as frames -----------------------------------------------------------------------


def _frames(parts: Iterator[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(part)) + part for part in parts)


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[bytes]:
    for start in range(0, len(rows), _CHUNK):
        yield marshal.dumps(rows[start : start + _CHUNK])


def encode_load(load: PolicyLoad) -> bytes:
    """The load as frames: a small pickled header, then marshalled rows of rules and
    diagnostics (plain strings and numbers: fast to write and to read back)."""
    _check_fields()
    paths: dict[str, int] = {}
    actions: dict[OnMatch, int] = {}

    def path_index(path: str) -> int:
        return paths.setdefault(path, len(paths))

    rule_rows = []
    rules = load.policy.rules if load.policy is not None else ()
    for p in rules:
        r = p.rule
        action = -1 if p.on_match is None else actions.setdefault(p.on_match, len(actions))
        rule_rows.append(
            (path_index(p.source.path), p.source.line, p.source.column, p.text,
             r.subject.value, r.subject_id, r.resource.value, r.action.value, r.amount,
             r.per.value, action, p.comment, p.jail_pattern)
        )  # fmt: skip
    diagnostic_rows = [
        (path_index(d.path), d.line, d.column, d.severity.value, str(d.code), d.message,
         d.suggestion, d.source_line, d.width)
        for d in load.diagnostics
    ]  # fmt: skip
    header = {
        "policy_files": None if load.policy is None else load.policy.files,
        "paths": list(paths),
        "actions": list(actions),
        "rule_frames": -(-len(rule_rows) // _CHUNK),
        "file_sizes": dict(load.file_sizes),
        "fingerprint": load.fingerprint,
        "private": load.private,
    }
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    return _frames(iter([head, *_chunks(rule_rows), *_chunks(diagnostic_rows)]))


def _split_frames(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    frames = []
    while view:
        (size,) = _LENGTH.unpack_from(view)
        frames.append(view[_LENGTH.size : _LENGTH.size + size])
        if len(frames[-1]) != size:
            raise ValueError("cut short")
        view = view[_LENGTH.size + size :]
    return frames


def decode_load(data: bytes) -> PolicyLoad:
    """The PolicyLoad `encode_load` wrote; raises ValueError on anything else."""
    try:
        frames = _split_frames(data)
        header = pickle.loads(frames[0])  # noqa: S301 (our own child's output)
    except (ValueError, IndexError, struct.error, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"unreadable result: {error}") from error
    paths: list[str] = header["paths"]
    actions: list[OnMatch] = header["actions"]
    subjects = {m.value: m for m in SubjectType}
    resources = {m.value: m for m in Resource}
    verbs = {m.value: m for m in Action}
    severities = {m.value: m for m in Severity}
    rules: list[PolicyRule] = []
    diagnostics: list[Diagnostic] = []
    for index, frame in enumerate(frames[1:]):
        rows = marshal.loads(frame)  # noqa: S302 (our own child's output)
        if index < header["rule_frames"]:
            rules.extend(
                PolicyRule(
                    Rule(subjects[s], sid, resources[res], verbs[a], amount, subjects[per]),
                    SourceLocation(paths[path], line, column),
                    text,
                    None if action < 0 else actions[action],
                    comment,
                    pattern,
                )
                for (path, line, column, text, s, sid, res, a, amount, per, action, comment,
                     pattern) in rows
            )  # fmt: skip
        else:
            diagnostics.extend(
                Diagnostic(paths[p], line, column, severities[sev], code_named(code) or code, msg,
                           hint, src, width)
                for (p, line, column, sev, code, msg, hint, src, width) in rows
            )  # fmt: skip
    files = header["policy_files"]
    policy = None if files is None else Policy(tuple(rules), files)
    return PolicyLoad(
        policy, tuple(diagnostics), header["file_sizes"], header["fingerprint"], header["private"]
    )


# --- the parent's side -------------------------------------------------------------------------


class ChildLoader:
    """Loads the rules directory in a child process that a stop request kills."""

    def __init__(
        self,
        kernel: str,
        sim_host: Path | None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.request = {
            "kernel": kernel,
            "sim_host": None if sim_host is None else str(sim_host),
            "max_file_bytes": max_file_bytes,
        }

    def load(self, rules_dir: Path, cancel: Wakeup, stop: bytes) -> PolicyLoad | None:
        """The directory loaded, or None when `stop` was posted to `cancel` meanwhile (the
        child is then killed and its result dropped)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "rctlpolicy.loadworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        log.debug("loading the policy of %s in process %d", rules_dir, proc.pid)
        try:
            request = dict(self.request, rules_dir=str(rules_dir))
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
            output = bytearray()
            errors = bytearray()
            open_fds = {proc.stdout.fileno(): output, proc.stderr.fileno(): errors}
            while open_fds:
                ready, _, _ = select.select([*open_fds, cancel.fileno()], [], [])
                if cancel.fileno() in ready and cancel.peek(stop):
                    log.info("policy load abandoned: stopping")
                    return None
                for fd in ready:
                    if fd not in open_fds:
                        continue
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        del open_fds[fd]
                    elif fd != proc.stderr.fileno() or len(errors) < _STDERR_LIMIT:
                        open_fds[fd] += chunk
            status = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            if status != 0:
                raise ValueError(f"exit status {status}")
            return decode_load(bytes(output))
        except (ValueError, KeyError, TypeError, EOFError, IndexError) as error:
            last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or [str(error)]
            reason = f"the policy loader (process {proc.pid}) failed: {last[0]}"
            failure = Diagnostic(str(rules_dir), 0, 0, Severity.ERROR, Code.IO_ERROR, reason)
            return PolicyLoad(None, (failure,))


# --- the child's side ----------------------------------------------------------------------------


def _exit_when_orphaned() -> None:
    """The parent closes our stdin when it no longer wants the result (or dies): stop then."""
    with contextlib.suppress(OSError):
        # os.read, not sys.stdin: a daemon thread blocked holding a buffered file's lock
        # would stop the interpreter's exit.
        while os.read(0, 4096):
            pass
    os._exit(1)


def main() -> None:
    """The child: one request on stdin (JSON), the encoded PolicyLoad on stdout."""
    from rctlpolicy.kernel import KernelSetupError, open_kernel

    request = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()
    rules_dir = Path(request["rules_dir"])
    try:
        resolver = open_kernel(request["kernel"], request["sim_host"]).resolver
    except KernelSetupError as error:
        failure = Diagnostic(str(rules_dir), 0, 0, Severity.ERROR, Code.IO_ERROR, str(error))
        load = PolicyLoad(None, (failure,))
    else:
        load = load_rules(rules_dir, resolver, max_file_bytes=request["max_file_bytes"])
    sys.stdout.buffer.write(encode_load(load))
    sys.stdout.buffer.flush()
    # Nothing left to do: skip tearing down a large policy object by object.
    os._exit(0)


if __name__ == "__main__":
    main()
