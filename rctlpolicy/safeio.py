"""Every file rctlpolicy writes goes through here, and state files are read back through here.

The daemon runs as root and some of the directories it writes into (a pidfile's, a textfile
collector's, a state directory an administrator pointed somewhere odd) can be writable by other
users. Whoever can write such a directory can plant a symlink or a file under the name we are
about to use, or guess our temporary name. So every write:

- creates its temporary file with O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name in the
  target's own directory (never following or reusing anything already there), relative to a
  descriptor of that directory, so the temporary file and the rename name the same directory
  even if the path is swapped meanwhile;
- sets the mode with fchmod, so the umask cannot loosen or tighten it;
- fsyncs the file, renames it over the target (rename(2) replaces a planted symlink itself, never
  what it points at), then fsyncs the directory: a reader sees the old file or the new one,
  whole, even after a crash.

Lock files and append-only journals are opened with O_NOFOLLOW and must be regular files.
Directories rctlpolicy creates get 0700 whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

#: The daemon's pidfile and the textfile collector's output: readable by monitoring tools.
PUBLIC_MODE = 0o644
#: Ownership ledger, action state, the simulated kernel's state: root's business only.
STATE_MODE = 0o600
#: Directories rctlpolicy creates for its state.
DIRECTORY_MODE = 0o700

#: open(2) flags where the platform has them (0 where not): every no-follow open uses these.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class UnsafeStateFileError(OSError):
    """A file we would write or lock is not a regular file (a planted symlink, a FIFO, ...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; refusing to use it")
        self.path = str(path)
        self.reason = reason


def _open_directory(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | _DIRECTORY | O_CLOEXEC)


def _temporary_name(target: str) -> str:
    # Unpredictable, so a user who can write the directory cannot create it first; O_EXCL
    # catches the astronomically unlikely collision anyway.
    return f".{target}.{secrets.token_hex(8)}.tmp"


def write_atomic(path: Path | str, data: bytes | str, *, mode: int) -> None:
    """Replace `path` with `data`: exclusive no-follow temporary file, fsync, rename, fsync.

    `mode` is the file's permission bits exactly (PUBLIC_MODE or STATE_MODE). The directory
    must exist. Raises OSError; on failure the target is unchanged and no temporary file stays.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    dir_fd = _open_directory(target.parent)
    try:
        temp = _temporary_name(target.name)
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
            mode,
            dir_fd=dir_fd,
        )
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        # The rename is durable only once the directory is on disk too.
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _regular_or_refuse(fd: int, path: Path | str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeStateFileError(path, "not a regular file")


def _open_no_follow(path: Path | str, flags: int, mode: int) -> int:
    try:
        return os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode)
    except OSError as error:
        # FreeBSD says EMLINK, Linux ELOOP, when O_NOFOLLOW meets a symlink.
        if Path(path).is_symlink():
            raise UnsafeStateFileError(path, "is a symbolic link") from error
        raise


def open_lock_file(path: Path | str, *, mode: int = STATE_MODE, ours: bool = False) -> int:
    """Open (creating) a lock file for flock/fcntl locks: never through a symlink, and only a
    regular file. Returns the descriptor; the caller closes it (which drops its locks).

    `ours`: also refuse a file with another name (a hard link, which O_NOFOLLOW cannot see:
    whoever can write the directory can link any file of the filesystem there) or another
    owner, before it is locked: for a lock file whose content the caller then writes."""
    fd = _open_no_follow(path, os.O_RDWR | os.O_CREAT, mode)
    _regular_or_refuse(fd, path)
    if ours:
        info = os.fstat(fd)
        reason = None
        if info.st_nlink != 1:
            reason = f"has {info.st_nlink} hard links"
        elif info.st_uid != os.geteuid():
            reason = f"is owned by uid {info.st_uid}"
        if reason is not None:
            os.close(fd)
            raise UnsafeStateFileError(path, reason)
    return fd


def open_append(path: Path | str, *, mode: int = STATE_MODE) -> int:
    """Open (creating with `mode`) a file to append to, never through a symlink."""
    fd = _open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    _regular_or_refuse(fd, path)
    return fd


def read_bytes(
    path: Path | str, *, limit: int | None = None, follow_symlinks: bool = False
) -> bytes:
    """Read a state file we wrote, never through a symlink. Raises FileNotFoundError when it is
    missing, UnsafeStateFileError when it is not a regular file, OSError (EFBIG) past `limit`.

    `follow_symlinks` is for a file the administrator wrote (a symlink to it is theirs); it
    must still be a regular file, so a FIFO or a device is refused rather than waited on."""
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before the check below.
    flags = os.O_RDONLY | os.O_NONBLOCK
    fd = os.open(path, flags | O_CLOEXEC) if follow_symlinks else _open_no_follow(path, flags, 0)
    _regular_or_refuse(fd, path)
    with os.fdopen(fd, "rb") as handle:
        if limit is None:
            return handle.read()
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(27, f"{path}: larger than {limit} bytes")  # EFBIG
    return data


def make_directory(path: Path | str, *, mode: int = DIRECTORY_MODE) -> Path:
    """Create `path` and any missing parents with exactly `mode` (not umask-reduced); an
    existing directory is left as it is. Raises NotADirectoryError when something else is there."""
    directory = Path(path)
    missing: list[Path] = []
    current = directory
    while not current.exists():
        if current.is_symlink():  # a dangling symlink: not ours to follow or create through
            raise UnsafeStateFileError(current, "is a dangling symbolic link")
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process created it meanwhile
            os.mkdir(created, mode)
            os.chmod(created, mode, follow_symlinks=False)
    if not directory.is_dir():
        raise NotADirectoryError(20, "not a directory", str(directory))
    return directory


@contextlib.contextmanager
def locked(path: Path | str) -> Iterator[int]:
    """Hold an exclusive flock(2) on the lock file `path` for the block."""
    import fcntl

    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing drops the lock
