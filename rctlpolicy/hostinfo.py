"""Look-ups on the machine rctlpolicy runs on: passwd, group, processes, jails, login classes.

What rctl(8) asks the system (getpwnam, getgrnam), plus the checks `lint --resolve` adds.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys
from pathlib import Path

LOGIN_CONF = Path("/etc/login.conf")
_ON_FREEBSD = sys.platform.startswith("freebsd")
_CAPABILITY_NAMES = re.compile(r"^([^#:\s][^:]*):", re.MULTILINE)


def login_classes(path: Path = LOGIN_CONF) -> set[str] | None:
    """The class names (and aliases) login.conf(5) defines; None without the file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    names: set[str] = set()
    for match in _CAPABILITY_NAMES.finditer(text):
        names.update(part for part in match.group(1).split("|") if part)
    return names


class SystemResolver:
    """rctl(8)'s own look-ups: getpwnam(3), getgrnam(3); whether a pid exists; jails from
    jls(8) on FreeBSD; login classes from /etc/login.conf."""

    checks_names = True

    def __init__(self) -> None:
        self._jails: set[str] | None = None
        self._classes: set[str] | None = None
        self._classes_read = False

    def uid_of(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def gid_of(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None

    def process_exists(self, pid: int) -> bool | None:
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def jail_exists(self, name: str) -> bool | None:
        jails = self.running_jails()
        return None if jails is None else name in jails

    def running_jails(self) -> set[str] | None:
        """The names of the jails running now (jls(8)); None where they cannot be listed."""
        if not _ON_FREEBSD:
            return None  # no jails to ask about
        if self._jails is None:
            from rctlpolicy.kernel.freebsd import SubprocessRunner
            from rctlpolicy.kernel.jails import list_jails_jls

            try:
                self._jails = {jail.name for jail in list_jails_jls(SubprocessRunner())}
            except Exception:
                return None
        return self._jails

    def loginclass_exists(self, name: str) -> bool | None:
        if not self._classes_read:
            self._classes = login_classes()
            self._classes_read = True
        return None if self._classes is None else name in self._classes

    def name_of_uid(self, uid: int) -> str | None:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None
