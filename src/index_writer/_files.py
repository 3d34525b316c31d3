"""Changing an index file without ever leaving it half-written.

Two operations, each with its commit and its rollback side by side:

- :func:`append` adds bytes at the end in one ``write``; if the write fails
  part-way, the file is truncated back to its old size.
- :func:`replace` writes a whole new file next to the old one, then renames it
  over the old one with :func:`os.replace`, which is atomic; if anything fails
  before the rename, the temporary file is removed and the old file is
  untouched.

With ``durable=True`` the data (and, after a rename, the directory) are
fsynced before returning, so they survive a power cut, not only a crash.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterable
from typing import Any

from . import _platform

__all__ = [
    "BoundedReader",
    "append",
    "new_temp_name",
    "open_index",
    "open_regular",
    "pread_all",
    "replace",
    "stat_or_none",
    "times_tell_changes",
    "write_all",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20

#: The most bytes one ``write`` takes on Linux; an append larger than this is
#: made of several writes.
MAX_WRITE = 0x7FFFF000
#: Those writes end where the file's offsets are multiples of this (the crash
#: journal's :data:`._journal.HEAD`): a kill between two of them then leaves
#: the file ending where a kill inside one write may leave it, an end the
#: journal can prove is part of the append (and the append is rolled back).
PIECE_ALIGN = 4096


def append(fd: int, data: bytes, size_before: int, durable: bool) -> None:
    """Append ``data`` to the file open as ``fd`` (``O_APPEND``), or nothing.

    Commit: one :func:`os.write` of all the bytes (looping only if the OS
    accepts part of them; beyond :data:`MAX_WRITE` bytes, several, each
    ending on a multiple of :data:`PIECE_ALIGN`), then ``fsync`` if ``durable``.
    Rollback: on any failure the file is truncated back to ``size_before`` and
    the exception re-raised, so no partial row is ever left behind.
    """
    try:
        if len(data) <= MAX_WRITE:
            written = os.write(fd, data)
            if written != len(data):  # the rest, or the reason it does not fit
                write_all(fd, memoryview(data)[written:])
        else:
            view, at = memoryview(data), size_before
            while view:
                piece = MAX_WRITE - at % PIECE_ALIGN  # ends on a multiple of PIECE_ALIGN
                write_all(fd, view[:piece])
                view, at = view[piece:], at + piece
        if durable:
            os.fsync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, size_before)
        except OSError as e:  # pragma: no cover - needs a failing truncate
            logger.error(
                "could not roll back a failed append (fd %d) to %d bytes: %s",
                fd,
                size_before,
                e,
            )
        raise


def times_tell_changes(fd: int) -> bool:
    """Whether quick changes to the file open as ``fd`` (ours to change) always get new times.

    Ten times, two changes that leave the contents alone (setting the times
    to now), a look after each: every second change must get a later time
    than the first. Linux 6.13 and later stamp a change made after a look
    with the fine clock on most local filesystems ("multigrain" times), so
    every try passes, however long the process pauses. Elsewhere (Linux
    before 6.13, ramfs, some NFS servers) times move with the clock's tick,
    at most every millisecond, and two changes microseconds apart almost
    always get the same time (unless other files' fine times move the clock
    they share in between: under heavy load, 1 try in 3 or so): ten new
    times in a row do not happen by chance.
    """
    if os.utime not in os.supports_fd:  # pragma: no cover - Windows
        return False
    try:
        for _ in range(10):
            os.utime(fd)
            first = os.fstat(fd).st_mtime_ns
            os.utime(fd)
            if os.fstat(fd).st_mtime_ns <= first:
                return False
    except OSError:
        return False
    return True


def open_regular(path: str | os.PathLike[str]) -> int:
    """Open ``path`` read-only, refusing at once what is not a regular file.

    Opened without blocking, so a FIFO at the path does not wait for a
    writer (or a device is read); a directory or anything else but a
    regular file raises with the path named, and the descriptor is closed.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _platform.O_BINARY)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(
                errno.EINVAL, "not a regular file: an index must be a file", os.fspath(path)
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def new_temp_name(path: str) -> str:
    """A fresh temporary file name in ``path``'s directory (hidden, ``.tmp``).

    It starts with ``path``'s name where that fits the filesystem's limit on
    name length, and is shortened otherwise, so any index name the
    filesystem accepts can be rewritten.
    """
    head, tail = os.path.split(path)
    return os.path.join(head, sidecar_name(tail, f"{os.getpid()}.{os.urandom(4).hex()}.tmp",
                                           hidden=True, directory=head))


def sidecar_name(name: str, suffix: str, *, hidden: bool, directory: str) -> str:
    """``NAME.SUFFIX`` (``.NAME.SUFFIX`` if ``hidden``), shortened to fit ``directory``.

    A name too long for the filesystem keeps the start of ``name`` and a
    digest of all of it, so it stays unique and recognisable.

    Examples
    --------
    >>> sidecar_name("index.csv", "journal", hidden=True, directory=".")
    '.index.csv.journal'
    >>> len(sidecar_name("x" * 250, "journal", hidden=False, directory=".").encode()) <= 255
    True
    """
    dot = "." if hidden else ""
    full = f"{dot}{name}.{suffix}"
    limit = _platform.name_max(directory or ".")
    if len(os.fsencode(full)) <= limit:  # as the OS stores it (a name not UTF-8 too)
        return full
    raw = os.fsencode(name)
    digest = hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]
    room = limit - len(f"{dot}~{digest}.{suffix}".encode())
    keep = os.fsdecode(raw[: max(0, room)].decode(errors="ignore").encode())
    return f"{dot}{keep}~{digest}.{suffix}"


class BoundedReader(io.RawIOBase):
    """The first ``end`` bytes of the file open as ``fd``, read with ``pread``.

    Reading never moves ``fd``'s own position, and stops at ``end`` even if
    the file is longer (another writer appending meanwhile, or an append a
    crash cut short that a reader must not see). Wrap it in
    :class:`io.BufferedReader`.
    """

    def __init__(self, fd: int, end: int) -> None:
        super().__init__()
        self._fd = fd
        self._end = end
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        data = _platform.pread(self._fd, want, self._pos)
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n


def replace(
    path: str,
    temp: str,
    chunks: Iterable[bytes],
    like: os.stat_result,
    durable: bool,
) -> os.stat_result:
    """Atomically replace ``path`` with the concatenation of ``chunks``.

    Commit: write everything to ``temp`` (created here, in the same directory),
    give it ``like``'s permission bits, owner and group (as far as allowed),
    fsync it if ``durable``, rename it over
    ``path``, and fsync the directory if ``durable``.
    Rollback: if anything fails before the rename, ``temp`` is removed and
    ``path`` is untouched; the exception is re-raised.

    Returns the stat of the new file.
    """
    fd = -1
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _platform.O_BINARY, 0o600)
        try:
            _platform.copy_ownership(fd, like)
            buf: list[bytes] = []
            size = 0
            for chunk in chunks:
                buf.append(chunk)
                size += len(chunk)
                if size >= _CHUNK:
                    write_all(fd, b"".join(buf))
                    buf, size = [], 0
            if buf:
                write_all(fd, b"".join(buf))
            if durable:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException as e:
        # Not when creating it failed (it may be another's file); but an
        # interrupt (Ctrl-C) may land once it is created, before ``fd`` is set.
        if fd >= 0 or not isinstance(e, OSError):
            _remove_temp(temp)
        raise
    if durable:
        _platform.fsync_directory(os.path.dirname(path) or ".")
    return st


def _remove_temp(temp: str) -> None:
    """Remove ``temp`` if it exists; retried if interrupted (Ctrl-C), then re-raised."""
    pending: BaseException | None = None
    while True:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass  # never created, or already renamed over the index
        except OSError as e:  # pragma: no cover - needs a failing unlink
            logger.error("could not remove temporary file %s: %s", temp, e)
        except BaseException as e:  # an interrupt: the file may still be there
            pending = pending or e
            continue
        break
    if pending is not None:
        raise pending


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` with ``pwrite`` if given).

    A write that accepts only part of the bytes is retried with the rest, so
    a full disk reports its real error (``ENOSPC``, ``EFBIG``) instead of a
    short count.
    """
    view = memoryview(data)
    while view:
        if offset is None:
            n = os.write(fd, view)
        else:
            n = _platform.pwrite(fd, view, offset)
            offset += n
        if n <= 0:  # pragma: no cover - write() reports failure by raising
            raise OSError(errno.EIO, "short write: no bytes accepted")
        view = view[n:]


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        chunk = _platform.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def open_index(path: str, create: bool) -> tuple[int, bool]:
    """Open the index for appending: ``(fd, created)``, or ``(-1, False)`` if missing."""
    flags = os.O_RDWR | os.O_APPEND | _platform.O_BINARY
    while True:
        try:
            return os.open(path, flags), False
        except FileNotFoundError:
            if not create:
                return -1, False
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            continue
        except FileNotFoundError:  # the directory was removed meanwhile
            os.makedirs(os.path.dirname(path), exist_ok=True)


def stat_or_none(path: str) -> os.stat_result | None:
    """``os.stat(path)``, or None if nothing is there (any more)."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ESTALE, errno.ENOTDIR):
            raise
        return None
