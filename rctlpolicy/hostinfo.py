"""Look-ups on the machine rctlpolicy runs on: passwd, group, processes, jails, login classes.

What rctl(8) asks the system (getpwnam, getgrnam), plus the checks `lint --resolve` adds, and
`PolicyResolver`: the view of any host's look-ups a policy is checked with before it is applied.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rctlpolicy.kernel.base import Jail
    from rctlpolicy.semantics.resolver import Resolver

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
    """rctl(8)'s own look-ups: getpwnam(3), getgrnam(3); whether a pid exists; the running
    jails on FreeBSD (from `jail_lister`: the kernel's, or `kernel.jails.list_system_jails`);
    login classes from /etc/login.conf."""

    checks_names = True

    def __init__(self, jail_lister: Callable[[], Iterable[Jail]]) -> None:
        self._jail_lister = jail_lister
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
            try:
                self._jails = {jail.name for jail in self._list_jails()}
            except Exception:
                return None
        return self._jails

    def _list_jails(self) -> Iterable[Jail]:
        return self._jail_lister()

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


@dataclass(frozen=True, slots=True)
class PolicyResolver:
    """The host's look-ups for checking a policy that is about to be applied, except that
    whether a process exists is left to the kernel.

    A process can exit between `plan` and `apply` (or while the daemon runs): its rule is then
    one refusal the apply reports with the kernel's reason (ESRCH), the rest still applied,
    not a policy so invalid that nothing may change.

    Each name is looked up once per policy check: the policy is checked against one view of
    the host, and a host that answers by reading a file (the simulated one) is read once per
    name, not once per rule.
    """

    host: Resolver
    _ids: dict[tuple[str, str], int | None] = field(default_factory=dict)
    _known: dict[tuple[str, str], bool | None] = field(default_factory=dict)

    @property
    def checks_names(self) -> bool:
        return self.host.checks_names

    def uid_of(self, name: str) -> int | None:
        return _once(self._ids, ("user", name), self.host.uid_of)

    def gid_of(self, name: str) -> int | None:
        return _once(self._ids, ("group", name), self.host.gid_of)

    def process_exists(self, pid: int) -> bool | None:
        return None

    def jail_exists(self, name: str) -> bool | None:
        return _once(self._known, ("jail", name), self.host.jail_exists)

    def loginclass_exists(self, name: str) -> bool | None:
        return _once(self._known, ("loginclass", name), self.host.loginclass_exists)


_V = TypeVar("_V")


def _once(answers: dict[tuple[str, str], _V], key: tuple[str, str], ask: Callable[[str], _V]) -> _V:
    if key not in answers:
        answers[key] = ask(key[1])
    return answers[key]
