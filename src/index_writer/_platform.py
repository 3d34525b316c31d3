"""Everything that differs between POSIX and Windows, in one place.

The rest of the package calls these helpers and never tests ``os.name`` itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "O_BINARY",
    "O_NOFOLLOW",
    "copy_ownership",
    "fsync_directory",
    "kill_cannot_tear",
    "lock_holder",
    "mark_superseded",
    "name_max",
    "pread",
    "pwrite",
    "register_after_fork",
    "same_file",
    "touch",
    "try_lock",
    "unlock",
]

#: Extra flag for :func:`os.open` so Windows does no newline translation.
O_BINARY: int = getattr(os, "O_BINARY", 0)
#: Extra flag for :func:`os.open` refusing a symbolic link as the last
#: component (POSIX; Windows has none, and there only administrators make links).
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)


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


#: Writes lying within one page of this size, at this alignment, are never
#: left half done by a kill, on Linux: the kernel copies a write into the file
#: page by page and stops for a fatal signal (SIGKILL) only between pages
#: (4096 bytes divides every page size Linux uses). 0 where that is not known
#: (macOS, Windows): there every append is journaled first.
_UNTORN_PAGE = 4096 if sys.platform.startswith("linux") else 0


def kill_cannot_tear(offset: int, length: int) -> bool:
    """Whether a kill cannot leave part of a ``length``-byte write at ``offset``.

    True on Linux for a write within one 4 KiB page of the file: the kill
    lands before or after it, not inside. (A power cut gives no such
    promise, for any write; ``durable`` writers journal every append.)
    """
    return _UNTORN_PAGE > 0 and length > 0 and offset // _UNTORN_PAGE == (
        offset + length - 1
    ) // _UNTORN_PAGE


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Return whether two stat results describe the same file (not just path)."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def name_max(directory: str) -> int:
    """The longest file name (in bytes) ``directory``'s filesystem accepts."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - Windows, odd mounts
        return 255


def touch(fd: int, path: str) -> None:
    """Set the modification time of the file open as ``fd`` (at ``path``) to now.

    Through the descriptor where the platform can (POSIX); by path otherwise
    (Windows, where :func:`os.utime` takes no descriptor).
    """
    if os.utime in os.supports_fd:
        os.utime(fd)
    else:  # pragma: no cover - not run on Linux CI
        os.utime(path)


def mark_superseded(fd: int) -> None:
    """Set the modification time of the file open as ``fd``, just renamed over, to 0.

    Another process may still have that file open and think it current: an
    NFS client renames a file that was open on it to a hidden ``.nfs...``
    name instead of dropping it, so its last link never goes. A time no
    current index has tells that process to look again (at the path).
    Best effort (the owner, or root, may set a time; others leave it): POSIX
    only, since Windows sets times by path, which now names the new file.
    """
    if os.utime in os.supports_fd:
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(0, 0))


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
    import msvcrt

    def try_lock(fd: int, exclusive: bool) -> bool:
        """Lock the first byte of the file, as fasteners does on Windows.

        Windows has no shared locks here: a reader locks exclusively too.
        """
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]

    def lock_holder(fd: int) -> int | None:
        return None

else:
    import fcntl

    def try_lock(fd: int, exclusive: bool) -> bool:
        """Take the ``lockf`` lock on the whole file if it is free.

        Exclusive needs ``fd`` open for writing, shared for reading. It is
        the lock fasteners (and so med-imagetools) takes, so they exclude
        each other. Returns False when another process holds it.
        """
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.lockf(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def unlock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN)

    #: ``struct flock`` on Linux (64-bit offsets: CPython builds with large
    #: file support); other systems order its fields differently.
    _FLOCK = "hhqqi4x"

    def lock_holder(fd: int) -> int | None:
        """The pid of a process holding a conflicting lock on ``fd``'s file.

        As the kernel reports it (``F_GETLK``, Linux only); None if the lock
        is free or the system does not say. Over NFS the pid may belong to
        another host.
        """
        if not sys.platform.startswith("linux"):  # pragma: no cover - not run on Linux CI
            return None
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        except OSError:
            return None
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
        return int(pid) if kind != fcntl.F_UNLCK and pid > 0 else None


def register_after_fork(callback: Any) -> None:
    """Run ``callback`` in the child after :func:`os.fork` (no-op on Windows)."""
    register = getattr(os, "register_at_fork", None)
    if register is not None:
        register(after_in_child=callback)


def copy_ownership(fd: int, like: os.stat_result) -> None:
    """Give the open file ``fd`` the permission bits, owner and group of ``like``.

    A rewrite replaces the index with a new file; without this a group-shared
    index on a cluster would come back readable by its owner only, and one
    rewritten by root would belong to root. Owner and group are copied where
    the platform and our privileges allow (root may give a file to anyone;
    an owner may change its group to one of its own), silently skipped
    otherwise: a rewrite never fails for lack of that permission.
    """
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, stat.S_IMODE(like.st_mode))
    fchown = getattr(os, "fchown", None)
    if fchown is not None:
        with contextlib.suppress(OSError):
            fchown(fd, like.st_uid, like.st_gid)
        with contextlib.suppress(OSError):
            fchown(fd, -1, like.st_gid)
