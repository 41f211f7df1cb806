"""How many processes are in a process group: the one question the action runner asks the OS.

An action runs as the leader of its own process group. When the leader exits, whatever it left
in the group (`sleep 1000 &`) must be ended with it; the runner keeps the leader unreaped until
then, so the group id cannot name anything else. To know whether anything is left (and when it
is gone) it counts the group's processes, the unreaped leader included:

- Linux: /proc/<pid>/stat of every process (field `pgrp`);
- FreeBSD: sysctl kern.proc.pgrp.<pgid> (KERN_PROC_PGRP, sys/sys/sysctl.h), one kinfo_proc per
  process, zombies included; the size of one is its own first field, `ki_structsize`;
- elsewhere: unknown (None), and the runner assumes something may be left.
"""

from __future__ import annotations

import ctypes
import os
import sys

_CTL_KERN = 1
_KERN_PROC = 14
_KERN_PROC_PGRP = 2
#: Read at run time, not narrowed by the type checker to the platform it runs on.
_PLATFORM: str = sys.platform


def group_size(pgid: int) -> int | None:
    """The number of processes in process group `pgid` (zombies included), None if unknown."""
    if _PLATFORM.startswith("linux"):
        return _linux_group_size(pgid)
    if _PLATFORM.startswith("freebsd"):
        try:
            return _freebsd_group_size(pgid)
        except (OSError, AttributeError):
            return None
    return None


def _linux_group_size(pgid: int) -> int | None:
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    count = 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            count += 1
    return count


def _freebsd_group_size(pgid: int) -> int | None:
    libc = ctypes.CDLL(None, use_errno=True)
    mib = (ctypes.c_int * 4)(_CTL_KERN, _KERN_PROC, _KERN_PROC_PGRP, pgid)
    for _ in range(3):  # the group may grow between the size probe and the read
        size = ctypes.c_size_t(0)
        if libc.sysctl(mib, 4, None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            raise OSError(ctypes.get_errno(), "sysctl kern.proc.pgrp")
        if size.value == 0:
            return 0
        buffer = ctypes.create_string_buffer(size.value)
        if libc.sysctl(mib, 4, buffer, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            if ctypes.get_errno() == 12:  # ENOMEM: it grew; ask again
                continue
            raise OSError(ctypes.get_errno(), "sysctl kern.proc.pgrp")
        if size.value == 0:
            return 0
        structsize = ctypes.c_int.from_buffer(buffer).value
        return size.value // structsize if structsize > 0 else None
    return None
