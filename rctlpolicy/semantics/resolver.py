"""The host look-ups rctl(8) and the kernel make; lint without --resolve makes none."""

from __future__ import annotations

from rctlpolicy.records import NamedTuple, Protocol


class Resolver(Protocol):
    """Host look-ups rctl(8) and the kernel make; tests and the simulator pass their own."""

    @property
    def checks_names(self) -> bool:
        """False: accept any well-formed user name as it is (lint without --resolve)."""
        ...

    def uid_of(self, name: str) -> int | None: ...

    def gid_of(self, name: str) -> int | None: ...

    def process_exists(self, pid: int) -> bool | None:
        """True/False when known, None when this resolver cannot tell."""
        ...

    def jail_exists(self, name: str) -> bool | None:
        """Whether a jail of that name runs now (None: cannot tell). Advice only: the kernel
        accepts rules for any jail name and applies them when such a jail starts."""
        ...

    def loginclass_exists(self, name: str) -> bool | None:
        """Whether login.conf(5) defines the class (None: cannot tell). Advice only."""
        ...


class OfflineResolver(NamedTuple):
    """Resolves nothing and accepts every well-formed name: lint's default."""

    checks_names: bool = False

    def uid_of(self, name: str) -> int | None:
        return None

    def gid_of(self, name: str) -> int | None:
        return None

    def process_exists(self, pid: int) -> bool | None:
        return None

    def jail_exists(self, name: str) -> bool | None:
        return None

    def loginclass_exists(self, name: str) -> bool | None:
        return None


OFFLINE = OfflineResolver()
