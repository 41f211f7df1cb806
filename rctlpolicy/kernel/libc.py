"""FreeBSD's libc over ctypes: the five rctl_*(2) calls, sysctlbyname(3) and jail_get(2)'s iovec.

`LibcSyscalls` takes any ctypes-like libc object (the real one from `load_libc()`, or a test's
double exposing the same C-level functions) and does what rctl(8) does around each call: a
NUL-terminated input buffer passed with inbuflen = strlen + 1, a zeroed output buffer of the
requested size, and errno read with `ctypes.get_errno()` and named with FreeBSD's numbers
(which differ from Linux's: ENOSYS is 78, EOPNOTSUPP 45).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Protocol

from rctlpolicy.kernel.base import FREEBSD_ERRNO_NAMES, RctlCall, SyscallError

#: FreeBSD's ENOENT (sys/sys/errno.h): sysctlbyname's "no such oid", jail_get's "no more jails".
FREEBSD_ENOENT = 2

#: The oid whose value rctl(8) reads when a call fails with ENOSYS.
RACCT_ENABLE_OID = b"kern.racct.enable"


class CFunction(Protocol):
    """A C function as ctypes exposes it (argument conversion per its argtypes)."""

    def __call__(self, *args: Any) -> int: ...


class IoVec(ctypes.Structure):
    """struct iovec (sys/uio.h), the name/value pairs of jail_get(2)."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


def errno_name(number: int) -> str:
    """The name of a FreeBSD errno number (`errno N` for numbers the rctl calls never return)."""
    return FREEBSD_ERRNO_NAMES.get(number, f"errno {number}")


def _function(libc: object, name: str) -> CFunction:
    function: CFunction = getattr(libc, name)
    return function


class LibcSyscalls:
    """The RctlSyscalls layer over libc's rctl_get_racct(2) & co. (spec section 8)."""

    def __init__(self, libc: object) -> None:
        # Look every function up now: a libc without them fails here, not mid-reconcile.
        self._functions = {call: _function(libc, call.value) for call in RctlCall}

    def call(self, call: RctlCall, inbuf: bytes, outbuflen: int) -> bytes:
        """One system call; returns the output up to its NUL, raises SyscallError."""
        # The kernel reads exactly inbuflen bytes (copyinstr); hand it those bytes and no more.
        in_buffer = ctypes.create_string_buffer(inbuf, max(len(inbuf), 1))
        # rctl(8) passes NULL, 0 for the calls without output (add, remove).
        out_buffer = ctypes.create_string_buffer(outbuflen) if outbuflen > 0 else None
        ctypes.set_errno(0)
        result = self._functions[call](in_buffer, len(inbuf), out_buffer, outbuflen)
        if result != 0:
            raise SyscallError(errno_name(ctypes.get_errno()))
        return out_buffer.value if out_buffer is not None else b""


def sysctl_racct_enable(libc: object) -> bool | None:
    """kern.racct.enable through sysctlbyname(3): None when the oid is missing (no RACCT).

    Current kernels export a 1-byte bool, kernels before ~12.0 a 4-byte unsigned int: read
    into a zeroed 4-byte buffer and use only the length the kernel reports.
    """
    sysctlbyname = _function(libc, "sysctlbyname")
    buffer = ctypes.create_string_buffer(4)
    length = ctypes.c_size_t(len(buffer))
    ctypes.set_errno(0)
    if sysctlbyname(RACCT_ENABLE_OID, buffer, ctypes.pointer(length), None, 0) != 0:
        number = ctypes.get_errno()
        if number == FREEBSD_ENOENT:
            return None
        raise OSError(number, f"sysctlbyname(kern.racct.enable) failed: {errno_name(number)}")
    size = min(length.value, len(buffer))
    return int.from_bytes(buffer.raw[:size], sys.byteorder) != 0


def _declare(libc: object, name: str, argtypes: list[Any], restype: Any) -> None:
    function = getattr(libc, name, None)
    if function is not None:
        function.argtypes = argtypes
        function.restype = restype


def load_libc() -> ctypes.CDLL:
    """The running process's libc with errno capture and C signatures for what we call.

    Functions the platform lacks are left undeclared (on Linux none of them exist), so
    `hasattr(libc, "rctl_get_rules")` tells whether the system calls can be used.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    rctl_args = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    for call in RctlCall:
        _declare(libc, call.value, rctl_args, ctypes.c_int)
    _declare(
        libc,
        "sysctlbyname",
        [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p,
            ctypes.c_size_t,
        ],
        ctypes.c_int,
    )
    _declare(libc, "jail_get", [ctypes.POINTER(IoVec), ctypes.c_uint, ctypes.c_int], ctypes.c_int)
    return libc
