"""Everything that differs between POSIX and Windows, in one place.

The rest of the package calls these helpers and never tests ``os.name`` itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = [
    "JOURNAL",
    "O_BINARY",
    "copy_permissions",
    "fsync_directory",
    "lock_blocking",
    "lock_index_blocking",
    "open_journal",
    "pread",
    "pwrite",
    "register_after_fork",
    "same_file",
    "try_lock_index",
]

#: Extra flag for :func:`os.open` so Windows does no newline translation.
O_BINARY: int = getattr(os, "O_BINARY", 0)

#: Whether the crash journal is kept in the lock file. On Windows fasteners
#: locks one byte at the lock file's current end, so the file must stay empty
#: for every process to lock the same byte: no journal there, and an append
#: cut short by a crash is not rolled back automatically.
JOURNAL: bool = os.name != "nt"


def open_journal(path: str, lockfile: IO[Any]) -> int:
    """Open ``path`` read-write for the journal, or return -1 for none.

    Returns -1 where :data:`JOURNAL` is off, and when ``path`` no longer names
    the file ``lockfile`` has open (the caller then notices and retries).
    The descriptor must stay open while the lock is held: closing any
    descriptor of the lock file releases a POSIX lock.
    """
    if not JOURNAL:  # pragma: no cover - not run on Linux CI
        return -1
    try:
        fd = os.open(path, os.O_RDWR | O_BINARY)
    except FileNotFoundError:
        return -1
    if same_file(os.fstat(fd), os.fstat(lockfile.fileno())):
        return fd
    os.close(fd)
    return -1


def _seek_read(fd: int, size: int, offset: int) -> bytes:  # pragma: no cover
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _seek_write(fd: int, data: bytes | memoryview, offset: int) -> int:  # pragma: no cover
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, data)


#: ``os.pread``/``os.pwrite`` where they exist (POSIX); on Windows a seek and a
#: read or write, which is equivalent for us since callers hold the lock.
pread: Callable[[int, int, int], bytes] = getattr(os, "pread", _seek_read)
pwrite: Callable[[int, bytes | memoryview, int], int] = getattr(os, "pwrite", _seek_write)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Return whether two stat results describe the same file (not just path)."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def fsync_directory(path: str) -> None:
    """Make a rename inside ``path`` durable.

    POSIX needs the directory itself fsynced after :func:`os.replace`; Windows
    cannot open directories and commits renames with the metadata, so there it
    is a no-op.
    """
    if os.name == "nt":  # pragma: no cover - not run on Linux CI
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if os.name == "nt":  # pragma: no cover - not run on Linux CI

    def lock_blocking(lockfile: IO[Any]) -> bool:
        """Windows has no blocking byte-range lock here: poll fasteners-style."""
        return False

else:
    import fcntl

    def lock_blocking(lockfile: IO[Any]) -> bool:
        """Wait in the kernel for the same ``lockf`` lock fasteners takes.

        fasteners polls with sleeps of 10 to 100 ms when the lock is busy, which
        caps a contended index at a few hundred writes per second. ``F_SETLKW``
        wakes the waiter as soon as the holder unlocks, and it is the very lock
        fasteners (and so med-imagetools) uses, so the two still exclude each
        other. Returns True once the lock is held.
        """
        while True:
            try:
                fcntl.lockf(lockfile, fcntl.LOCK_EX)
                return True
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError as e:
                # EDEADLK: the kernel sees a cycle through *processes*, but our
                # threads never hold two index locks at once, so it is a false
                # alarm from another thread's lock; back off briefly and retry.
                if e.errno != errno.EDEADLK:
                    raise
                time.sleep(0.001)


if os.name == "nt":  # pragma: no cover - not run on Linux CI

    def try_lock_index(fd: int, exclusive: bool) -> bool:
        """No second lock on Windows: its locks are mandatory and would block
        every other program (pandas, Excel) from reading the index."""
        return True

    def lock_index_blocking(fd: int, exclusive: bool) -> None:
        """See :func:`try_lock_index`."""

else:

    def try_lock_index(fd: int, exclusive: bool) -> bool:
        """Lock the open index file itself until ``fd`` is closed, if free.

        Exclusive for writers (``fd`` must be open for writing), shared for
        readers. The lock is only ever held by a writer that also holds the
        lock file, so it is free unless the lock file was deleted while held.
        Returns False when another process holds it.
        """
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.lockf(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN, errno.EDEADLK):
                return False
            raise
        return True

    def lock_index_blocking(fd: int, exclusive: bool) -> None:
        """Like :func:`try_lock_index`, waiting in the kernel while it is busy."""
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.lockf(fd, mode)
                return
            except OSError as e:
                # EDEADLK: see lock_blocking; retry shortly.
                if e.errno != errno.EDEADLK:
                    raise
                time.sleep(0.001)


def register_after_fork(callback: Any) -> None:
    """Run ``callback`` in the child after :func:`os.fork` (no-op on Windows)."""
    register = getattr(os, "register_at_fork", None)
    if register is not None:
        register(after_in_child=callback)


def copy_permissions(fd: int, like: os.stat_result) -> None:
    """Give the open file ``fd`` the permission bits (and group) of ``like``.

    A rewrite replaces the index with a new file; without this a group-shared
    index on a cluster would come back readable by its owner only. The group
    is copied where the platform and our privileges allow, silently skipped
    otherwise (only the owner or root may change it).
    """
    import stat

    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, stat.S_IMODE(like.st_mode))
    fchown = getattr(os, "fchown", None)
    if fchown is not None:
        with contextlib.suppress(OSError):
            fchown(fd, -1, like.st_gid)
