"""Many seqpacket records per system call: recvmmsg(2) through ctypes, recvmsg(2) otherwise.

The devd reader must drain its socket faster than devd fills it (devd drops a client on its
first failed send). In CPython every receive call gives up the GIL and must win it back from the
threads that parse events and start actions; one recvmmsg(2) call takes up to ``count`` records
for one such round trip instead of one each. Linux has recvmmsg(2) in the kernel; FreeBSD's libc
has it (lib/libc/gen/recvmmsg.c, a loop over recvmsg(2) with MSG_DONTWAIT after the first), with
its own struct layouts, which is why they are spelled out per system below. Where the call is
missing (or ctypes is), :class:`BatchReceiver` receives one record per call with
``socket.recvmsg``, with the same results.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from typing import Any, NamedTuple


class Record(NamedTuple):
    """One received record: its bytes, whether the kernel cut it to the buffer's size, and
    whether the kernel said it ends a record (MSG_EOR; FreeBSD sets it, Linux never does)."""

    data: bytes
    cut: bool
    eor: bool = False


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


def _layout() -> tuple[type[ctypes.Structure], Any, list[Any]] | None:
    """(struct mmsghdr, recvmmsg's return type, its argtypes) for this system, or None."""
    if sys.platform.startswith("linux"):
        # <sys/socket.h> (glibc): int recvmmsg(int, struct mmsghdr *, unsigned int, int,
        # struct timespec *); size_t msg_iovlen and msg_controllen; unsigned int msg_len.
        iovlen: Any = ctypes.c_size_t
        controllen: Any = ctypes.c_size_t
        msg_len: Any = ctypes.c_uint
        vlen: Any = ctypes.c_uint
        result: Any = ctypes.c_int
    elif sys.platform.startswith("freebsd"):
        # sys/sys/socket.h: ssize_t recvmmsg(int, struct mmsghdr *, size_t, int,
        # const struct timespec *); int msg_iovlen, socklen_t msg_controllen, ssize_t msg_len.
        iovlen = ctypes.c_int
        controllen = ctypes.c_uint32
        msg_len = ctypes.c_ssize_t
        vlen = ctypes.c_size_t
        result = ctypes.c_ssize_t
    else:
        return None

    class MsgHdr(ctypes.Structure):
        _fields_ = (
            ("msg_name", ctypes.c_void_p),
            ("msg_namelen", ctypes.c_uint32),
            ("msg_iov", ctypes.POINTER(_IOVec)),
            ("msg_iovlen", iovlen),
            ("msg_control", ctypes.c_void_p),
            ("msg_controllen", controllen),
            ("msg_flags", ctypes.c_int),
        )

    class MMsgHdr(ctypes.Structure):
        _fields_ = (("msg_hdr", MsgHdr), ("msg_len", msg_len))

    argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), vlen, ctypes.c_int, ctypes.c_void_p]
    return MMsgHdr, result, argtypes


def _recvmmsg() -> tuple[type[ctypes.Structure], Any] | None:
    layout = _layout()
    if layout is None:
        return None
    mmsghdr, result, argtypes = layout
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = result
    return mmsghdr, function


class BatchReceiver:
    """Receives up to ``count`` records of at most ``size`` bytes from a non-blocking socket.

    :meth:`receive` returns the records waiting (at least one), raises BlockingIOError when
    none is, and returns an empty list at EOF. ``batched`` tells whether recvmmsg(2) is used.
    """

    def __init__(self, sock: socket.socket, size: int, count: int = 64, *, batch: bool = True):
        self._sock = sock
        self._size = size
        self._count = count
        found = _recvmmsg() if batch and count > 1 else None
        self.batched = found is not None
        if found is None:
            return
        mmsghdr, self._call = found
        self._buffer = bytearray(size * count)
        self._view = memoryview(self._buffer)
        base = ctypes.addressof((ctypes.c_char * len(self._buffer)).from_buffer(self._buffer))
        self._iovecs = (_IOVec * count)()
        self._vector = (mmsghdr * count)()
        for index in range(count):
            self._iovecs[index].iov_base = base + index * size
            self._iovecs[index].iov_len = size
            header = self._vector[index].msg_hdr
            header.msg_iov = ctypes.pointer(self._iovecs[index])
            header.msg_iovlen = 1
        # Views of the entries and their headers, made once: indexing a ctypes array builds a
        # new view each time, a cost on the path of every event.
        self._entries = [self._vector[index] for index in range(count)]
        self._headers = [entry.msg_hdr for entry in self._entries]
        self._used = count  # entries whose flags the kernel may have set

    def receive(self) -> list[Record]:
        """The records waiting now, in order; [] at EOF."""
        if not self.batched:
            data, _, flags, _ = self._sock.recvmsg(self._size)
            if not data:
                return []
            return [Record(data, bool(flags & socket.MSG_TRUNC), bool(flags & socket.MSG_EOR))]
        headers = self._headers
        for index in range(self._used):
            headers[index].msg_flags = 0
        received = self._call(
            self._sock.fileno(), self._vector, self._count, socket.MSG_DONTWAIT, None
        )
        if received < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(code, os.strerror(code))
            if code == errno.EINTR:
                raise InterruptedError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        self._used = max(received, 1)
        records: list[Record] = []
        view, size, entries = self._view, self._size, self._entries
        for index in range(received):
            length = entries[index].msg_len
            if length <= 0:
                break  # EOF (a zero-length read; devd never sends an empty record)
            start = index * size
            flags = headers[index].msg_flags
            data = bytes(view[start : start + length])
            records.append(
                Record(data, bool(flags & socket.MSG_TRUNC), bool(flags & socket.MSG_EOR))
            )
        return records
