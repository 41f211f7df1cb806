"""Listing the running jails: jail_get(2) through ctypes, or `jls --libxo json jid name`.

Both return `Jail(jid, name)` for every jail but the host (spec freebsd-integration.md 6.3).
RCTL names jails by name only; the jid is for people and for `ps -o jid`. jail_get(2) is the
default (a scrape lists the jails without starting a process); jls(8) is the fallback for a
libc without it.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from collections.abc import Sequence
from typing import Any

from rctlpolicy.kernel.base import Jail, JailLister, KernelError
from rctlpolicy.kernel.commands import CommandRunner
from rctlpolicy.kernel.libc import FREEBSD_ENOENT, CFunction, IoVec, errno_name

JLS_PATH = "/usr/sbin/jls"
#: jail_get(2) flag: include dying jails.
JAIL_DYING = 0x08
#: MAXHOSTNAMELEN: the size of a jail name including its NUL; errmsg gets the same.
NAME_BUFFER_SIZE = 256


class JailListError(KernelError):
    """The jails could not be listed (jls failed or printed something unreadable)."""


def parse_jls_json(text: str) -> list[Jail]:
    """jls's libxo JSON: `{"jail-information": {"jail": [{"jid": ..., "name": ...}]}}`.

    Tolerant where jls versions differ (spec U5): jid as a number or a string, a missing
    "jail" key (no jails), a single object instead of a list, a missing name (an unnamed
    jail is named after its jid).
    """
    try:
        document = json.loads(text)
    except ValueError as error:
        raise JailListError("JLS", "jls", f"jls printed no JSON: {error}") from error
    information = document.get("jail-information") if isinstance(document, dict) else None
    if not isinstance(information, dict):
        raise JailListError("JLS", "jls", "jls JSON has no jail-information object")
    entries: Any = information.get("jail", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise JailListError("JLS", "jls", "jls JSON: 'jail' is not a list")
    return [_jail_of(entry) for entry in entries]


def _jail_of(entry: object) -> Jail:
    if not isinstance(entry, dict):
        raise JailListError("JLS", "jls", f"jls JSON: not a jail object: {entry!r}")
    raw_jid = entry.get("jid")
    jid: int | None = None
    if isinstance(raw_jid, int) and not isinstance(raw_jid, bool):
        jid = raw_jid
    elif isinstance(raw_jid, str) and raw_jid.strip().isdigit():
        jid = int(raw_jid)
    if jid is None:
        raise JailListError("JLS", "jls", f"jls JSON: jail without a readable jid: {entry!r}")
    name = entry.get("name")
    return Jail(jid, str(name) if name not in (None, "") else str(jid))


def list_jails_jls(runner: CommandRunner, jls_path: str = JLS_PATH) -> list[Jail]:
    """The running jails from `jls --libxo json jid name` (needs no privilege)."""
    try:
        result = runner.run([jls_path, "--libxo", "json", "jid", "name"])
    except (OSError, subprocess.SubprocessError) as error:  # not started, or timed out
        raise JailListError("JLS", "jls", f"cannot run {jls_path}: {error}") from error
    if result.returncode != 0:
        message = result.stderr.strip() or f"exit status {result.returncode}"
        raise JailListError("JLS", "jls", f"jls failed: {message}")
    return parse_jls_json(result.stdout)


def jls_lister(runner: CommandRunner, jls_path: str = JLS_PATH) -> JailLister:
    """A JailLister running jls each time it is called."""

    def lister() -> Sequence[Jail]:
        return list_jails_jls(runner, jls_path)

    return lister


def list_jails_jail_get(libc: object, *, include_dying: bool = False) -> list[Jail]:
    """The running jails from jail_get(2), one call per jail.

    Each call is given "lastjid" (in) and returns the next jail above it with its "jid" and
    "name" (out); -1 with ENOENT ends the walk.
    """
    jail_get: CFunction = libc.jail_get  # type: ignore[attr-defined]
    # The iovecs hold raw addresses: these buffers must stay referenced until the walk ends.
    keys = [ctypes.create_string_buffer(key) for key in (b"lastjid", b"jid", b"name", b"errmsg")]
    lastjid = ctypes.c_int(0)
    jid = ctypes.c_int(0)
    name = ctypes.create_string_buffer(NAME_BUFFER_SIZE)
    errmsg = ctypes.create_string_buffer(NAME_BUFFER_SIZE)
    iov = (IoVec * 8)()
    values: list[ctypes.c_int | ctypes.Array[ctypes.c_char]] = [lastjid, jid, name, errmsg]
    for index, (key, value) in enumerate(zip(keys, values, strict=True)):
        # A name's iov_len counts its NUL; a value's is the size of its buffer.
        iov[2 * index] = IoVec(ctypes.addressof(key), len(key))
        iov[2 * index + 1] = IoVec(ctypes.addressof(value), ctypes.sizeof(value))
    flags = JAIL_DYING if include_dying else 0
    jails: list[Jail] = []
    while True:
        ctypes.set_errno(0)
        ctypes.memset(errmsg, 0, NAME_BUFFER_SIZE)
        found = jail_get(iov, len(iov), flags)
        if found < 0:
            number = ctypes.get_errno()
            if number == FREEBSD_ENOENT:
                return jails
            detail = errmsg.value.decode("utf-8", "replace") or errno_name(number)
            raise JailListError(errno_name(number), "jail_get", f"jail_get failed: {detail}")
        jails.append(Jail(found, name.value.decode("utf-8", "surrogateescape")))
        lastjid.value = found


def jail_get_lister(libc: object, *, include_dying: bool = False) -> JailLister:
    """A JailLister calling jail_get(2) through libc."""

    def lister() -> Sequence[Jail]:
        return list_jails_jail_get(libc, include_dying=include_dying)

    return lister


def system_jail_lister(libc: object, runner: CommandRunner) -> JailLister:
    """How this system lists its jails: jail_get(2) when libc has it, else jls(8)."""
    if hasattr(libc, "jail_get"):
        return jail_get_lister(libc)
    return jls_lister(runner)


def list_system_jails() -> list[Jail]:
    """The jails running on this FreeBSD host, listed as `system_jail_lister` would (for a
    caller with no kernel open: `rctlpolicy lint --resolve`)."""
    from rctlpolicy.kernel.commands import SubprocessCommandRunner
    from rctlpolicy.kernel.libc import load_libc

    return list(system_jail_lister(load_libc(), SubprocessCommandRunner())())
