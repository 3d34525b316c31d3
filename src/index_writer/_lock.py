"""The index lock: one writer at a time, across threads and processes.

Two layers, always taken in this order and released in reverse:

1. a :class:`threading.Lock` per lock file, shared by every writer in this
   process, because POSIX record locks belong to the *process*: two threads
   would both "get" the fasteners lock, and a thread closing its descriptor
   would silently release the lock another thread holds;
2. a fasteners :class:`~fasteners.InterProcessLock` on the lock file, the same
   ``lockf`` lock med-imagetools takes, so the two implementations exclude each
   other.

The lock file stays open in this process between writes (reopening it would
cost more than the write itself). After each acquisition the lock file on disk
is checked to still be the file we locked: med-imagetools deletes
``<index>.lock`` when a pipeline finishes, and a writer that locked the
deleted file would otherwise run beside one that locked its replacement.

While held, the lock file's content is a small journal (see :class:`Journal`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path

import fasteners

from . import _platform
from ._errors import IndexLockTimeoutError

__all__ = ["Journal", "LockFile"]

logger = logging.getLogger(__name__)

#: How a busy lock is polled when a timeout is set (or the platform cannot
#: wait in the kernel): first retry after 1 ms, backing off to 10 ms.
_POLL_DELAY = 0.001
_POLL_MAX_DELAY = 0.01

#: How much of the lock file is read on each acquisition; larger journal
#: records (big appends) are read whole when this is not enough.
_JOURNAL_READ = 1 << 13


class Journal:
    """The lock file's content: what the lock holder is in the middle of doing.

    A writer records an operation before it touches the index and marks it
    done afterwards, so the next holder can roll back a write that was cut
    short by a crash. Each step is one ``pwrite`` in place. A record is one
    line of JSON followed by an optional binary payload. A lock file that
    holds anything else (a user pointed ``lock_path`` at a file with content)
    is never written, and neither is one on a platform where the lock file
    must stay empty (see :data:`._platform.JOURNAL`).

    Attributes
    ----------
    record : bytes | None
        The unfinished operation left by a previous holder, if any.
    payload : bytes
        The bytes stored after that record (possibly followed by leftovers
        of an earlier, longer record: the record says how many are its own).
    deadline : float | None
        ``time.monotonic()`` value by which the caller's timeout runs out, for
        any further waiting it does while holding the lock.
    """

    MAGIC = b"index-writer journal 1\n"
    _ACTIVE = b"A"
    _DONE = b"D"

    def __init__(self, fd: int, deadline: float | None = None) -> None:
        self._fd = fd
        self.deadline = deadline
        self.record: bytes | None = None
        self.payload = b""
        self.enabled = fd >= 0
        if not self.enabled:
            return
        data = _platform.pread(fd, _JOURNAL_READ, 0)
        if not data:
            return
        if not data.startswith(self.MAGIC):
            logger.debug("lock file holds foreign content; crash journal disabled")
            self.enabled = False
            return
        body = data[len(self.MAGIC) :]
        if body[:1] == self._ACTIVE:
            if len(data) == _JOURNAL_READ:  # a large record: read all of it
                data = _read_all(fd)
                body = data[len(self.MAGIC) :]
            self.record, _, rest = body[1:].partition(b"\n")
            self.payload = rest

    def write(self, record: bytes, durable: bool, payload: bytes = b"") -> None:
        """Record an operation about to start (one line, no newline, then data)."""
        if not self.enabled:
            return
        data = self.MAGIC + self._ACTIVE + record + b"\n" + payload
        done = 0
        while done < len(data):  # a short write is retried to get its real error
            n = _platform.pwrite(self._fd, data[done:], done)
            if n <= 0:  # pragma: no cover - pwrite reports failure by raising
                raise OSError(errno.EIO, "short write to the crash journal in the lock file")
            done += n
        if durable:
            os.fsync(self._fd)

    def clear(self) -> None:
        """Mark the recorded operation finished (or rolled back)."""
        if self.enabled:
            _platform.pwrite(self._fd, self._DONE, len(self.MAGIC))
            self.record = None
            self.payload = b""


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts = []
    offset = 0
    while offset < size:
        chunk = _platform.pread(fd, size - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


class _ProcessLock:
    """This process's state for one lock file: the thread layer and fasteners."""

    __slots__ = ("ipl", "jfd", "thread_lock")

    def __init__(self, path: str) -> None:
        self.thread_lock = threading.Lock()
        self.ipl = fasteners.InterProcessLock(path)
        self.jfd = -1  # read-write descriptor of the same lock file, for the journal

    def close(self) -> None:
        """Close our descriptors of the lock file (only while not locked)."""
        if self.jfd >= 0:
            os.close(self.jfd)
            self.jfd = -1
        lockfile = self.ipl.lockfile
        if lockfile is not None and not lockfile.closed:
            lockfile.close()
        self.ipl.lockfile = None
        self.ipl.acquired = False


_registry_guard = threading.Lock()
_registry: dict[str, _ProcessLock] = {}


def _reset_after_fork() -> None:
    # A thread of the parent may have held any of these at fork time; that
    # thread does not exist in the child, and POSIX locks are not inherited.
    # The inherited descriptors are closed now, while the child holds no lock:
    # closing them later (say, when garbage collected) would release a lock
    # the child had taken meanwhile through a new descriptor.
    global _registry_guard, _registry
    for entry in _registry.values():
        with contextlib.suppress(OSError):
            entry.close()
    _registry_guard = threading.Lock()
    _registry = {}


_platform.register_after_fork(_reset_after_fork)


def _process_lock(path: str) -> _ProcessLock:
    entry = _registry.get(path)
    if entry is None:
        with _registry_guard:
            entry = _registry.setdefault(path, _ProcessLock(path))
    return entry


def _busy(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EAGAIN)


class LockFile:
    """Exclusive access to an index, keyed by its lock file.

    Use as ``journal = lock.acquire()`` ... ``lock.release()`` in a
    ``try``/``finally``.

    Parameters
    ----------
    path : str
        Absolute path of the lock file. Created (with its directory) if needed.
    display_path : Path
        The path as the user gave it, for error messages.
    timeout : float | None
        Seconds to wait before :class:`IndexLockTimeoutError`; None waits forever.
    """

    def __init__(self, path: str, display_path: Path, timeout: float | None) -> None:
        self.path = path
        self.display_path = display_path
        self.timeout = timeout

    def acquire(self) -> Journal:
        """Take both layers of the lock and return the journal.

        Raises
        ------
        IndexLockTimeoutError
            The lock was not acquired within ``timeout`` seconds.
        OSError
            The lock file could not be created, opened or locked.
        """
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = _process_lock(self.path)
        if timeout is None:
            proc.thread_lock.acquire()
        elif not proc.thread_lock.acquire(timeout=timeout):
            raise IndexLockTimeoutError(self.display_path, timeout)
        try:
            self._acquire_file(proc, deadline)
            try:
                return Journal(proc.jfd, deadline)
            except BaseException:
                proc.ipl.unlock()
                proc.ipl.acquired = False
                raise
        except BaseException:
            proc.thread_lock.release()
            raise

    def release(self) -> None:
        """Release both layers (the caller holds them)."""
        proc = _registry[self.path]
        try:
            proc.ipl.unlock()
            proc.ipl.acquired = False
        finally:
            proc.thread_lock.release()

    def _acquire_file(self, proc: _ProcessLock, deadline: float | None) -> None:
        """Take the fasteners lock on the file that *currently* has our path."""
        ipl = proc.ipl
        while True:
            if ipl.lockfile is None or ipl.lockfile.closed:
                # First use (or the file was replaced): fasteners creates the
                # directory and the file, opens it, and tries the lock once.
                got = ipl.acquire(blocking=False)
                proc.jfd = _platform.open_journal(self.path, ipl.lockfile)
            else:
                try:
                    ipl.trylock()
                    got = True
                except OSError as e:
                    if not _busy(e):
                        raise
                    got = False
            if not got:
                self._wait(ipl, deadline)
            ipl.acquired = True
            try:
                on_disk: os.stat_result | None = os.stat(self.path)
                held = os.fstat(ipl.lockfile.fileno())
            except FileNotFoundError:
                on_disk = None
            except BaseException:
                ipl.unlock()
                ipl.acquired = False
                raise
            if on_disk is not None and _platform.same_file(on_disk, held):
                return
            # The lock file was deleted (and maybe recreated) since we opened
            # it: our lock guards nothing. Start again on the current file.
            logger.debug("lock file %s was replaced; locking the new one", self.path)
            ipl.unlock()
            proc.close()

    def _wait(self, ipl: fasteners.InterProcessLock, deadline: float | None) -> None:
        """Wait for the lock to be free and take it."""
        if deadline is None and _platform.lock_blocking(ipl.lockfile):
            return
        delay = _POLL_DELAY
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    assert self.timeout is not None
                    raise IndexLockTimeoutError(self.display_path, self.timeout)
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_DELAY)
            try:
                ipl.trylock()
                return
            except OSError as e:
                if not _busy(e):
                    raise
