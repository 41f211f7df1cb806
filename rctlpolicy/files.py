"""Reading policy files from disk: directories, editor droppings, and safe ownership.

The I/O edge of `rctlpolicy.policy`: this module touches the filesystem, policy.py does not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from rctlpolicy.policy import CONF_SUFFIXES, YAML_SUFFIXES, PolicyFile

POLICY_SUFFIXES = CONF_SUFFIXES + YAML_SUFFIXES


class PolicyReadError(Exception):
    """A policy path could not be read; says which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsafeFileError(Exception):
    """A file that can make root run commands is writable by someone other than root."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}; it can make the daemon run commands as root, so it must be "
            "owned by root (or the daemon's user) and not writable by group or others "
            f"(chown root:wheel {path}; chmod go-w {path})"
        )
        self.path = path
        self.reason = reason


def is_editor_droppings(name: str) -> bool:
    """Editor temp and backup files, and dotfiles, that must never be read as policy."""
    return (
        name.startswith((".", "#"))
        or name.endswith(("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig", ".rej"))
        or name in ("4913",)  # vim's write-permission probe file
    )


def policy_paths(directory: Path) -> list[Path]:
    """The policy files of a rules directory, sorted by name (so the order is stable)."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        raise PolicyReadError(str(directory), error.strerror or str(error)) from error
    return [
        entry
        for entry in entries
        if entry.name.endswith(POLICY_SUFFIXES)
        and not is_editor_droppings(entry.name)
        and entry.is_file()
    ]


def read_policy_files(paths: Sequence[str | Path]) -> list[PolicyFile]:
    """Read files and directories (a directory: its policy files); `-` is stdin (rctl.conf)."""
    files: list[PolicyFile] = []
    for raw in paths:
        if str(raw) == "-":
            import sys

            files.append(PolicyFile("<stdin>", sys.stdin.read()))
            continue
        path = Path(raw)
        targets = policy_paths(path) if path.is_dir() else [path]
        for target in targets:
            try:
                # Bytes, not read_text(): universal newlines would hide the CR of a CRLF file,
                # which rc.d/rctl keeps in the rule (and FreeBSD then refuses it).
                text = target.read_bytes().decode("utf-8")
            except UnicodeDecodeError as error:
                raise PolicyReadError(str(target), f"not UTF-8 text ({error.reason})") from error
            except OSError as error:
                raise PolicyReadError(str(target), error.strerror or str(error)) from error
            files.append(PolicyFile(str(target), text))
    return files


def check_safe_ownership(path: Path, allowed_uids: Sequence[int] | None = None) -> None:
    """Refuse a file (and its directory) that others could write: raise UnsafeFileError."""
    uids = set(allowed_uids if allowed_uids is not None else (0, os.geteuid()))
    for target in (path, path.parent):
        try:
            info = target.stat()
        except OSError as error:
            raise UnsafeFileError(str(target), error.strerror or "cannot stat") from error
        if info.st_uid not in uids:
            raise UnsafeFileError(str(target), f"owned by uid {info.st_uid}")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeFileError(str(target), "writable by group or others")
