"""The index lock: one writer at a time, across threads and processes.

Two layers, always taken in this order and released in reverse:

1. a :class:`threading.Lock` per lock file, shared by every writer in this
   process, because POSIX record locks belong to the *process*: two threads
   would both "get" the fasteners lock, and a thread closing its descriptor
   would silently release the lock another thread holds;
2. a fasteners :class:`~fasteners.InterProcessLock` on the lock file, the same
   ``lockf`` lock med-imagetools takes, so the two implementations exclude each
   other.

After acquiring, the lock file on disk is checked to still be the file we
locked: med-imagetools deletes ``<index>.lock`` when a pipeline finishes, and a
writer that locked the deleted file would otherwise run beside one that
locked its replacement.

While held, the lock file's content is a small journal slot (see
:class:`Journal`): empty when no write is in flight.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

#: Upper bound on the journal record size read back.
_JOURNAL_MAX = 1 << 16


class _ProcessLock:
    """This process's state for one lock file: the thread layer and fasteners."""

    __slots__ = ("ipl", "thread_lock")

    def __init__(self, path: str) -> None:
        self.thread_lock = threading.Lock()
        self.ipl = fasteners.InterProcessLock(path)


_registry_guard = threading.Lock()
_registry: dict[str, _ProcessLock] = {}


def _reset_after_fork() -> None:
    # A thread of the parent may have held any of these at fork time; that
    # thread does not exist in the child, and POSIX locks are not inherited.
    global _registry_guard, _registry
    _registry_guard = threading.Lock()
    _registry = {}


_platform.register_after_fork(_reset_after_fork)


def _process_lock(path: str) -> _ProcessLock:
    entry = _registry.get(path)
    if entry is None:
        with _registry_guard:
            entry = _registry.setdefault(path, _ProcessLock(path))
    return entry


class Journal:
    """The lock file's content, readable and writable while the lock is held.

    A writer records what it is about to do before it touches the index and
    clears the record when done, so the next holder can roll back a write
    that was cut short by a crash. A lock file that holds something else (a
    user pointed ``lock_path`` at a file with content) is never written.
    """

    MAGIC = b"index-writer journal 1\n"

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._dirty = False
        data = os.pread(fd, _JOURNAL_MAX, _platform.JOURNAL_OFFSET)
        self.foreign = bool(data) and not data.startswith(self.MAGIC)
        self.record: bytes | None = (
            data[len(self.MAGIC) :] if data and not self.foreign else None
        )
        if self.foreign:
            logger.debug("lock file holds foreign content; crash journal disabled")

    def write(self, record: bytes, durable: bool) -> None:
        """Record an operation about to start (replacing any previous record)."""
        if self.foreign:
            return
        data = self.MAGIC + record
        os.pwrite(self._fd, data, _platform.JOURNAL_OFFSET)
        os.ftruncate(self._fd, _platform.JOURNAL_OFFSET + len(data))
        self._dirty = True
        if durable:
            os.fsync(self._fd)

    def clear(self) -> None:
        """Mark the recorded operation finished (or rolled back)."""
        if self.foreign or not (self._dirty or self.record is not None):
            return
        os.ftruncate(self._fd, _platform.JOURNAL_OFFSET)
        self._dirty = False
        self.record = None


class LockFile:
    """Exclusive access to an index, keyed by its lock file.

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

    @contextmanager
    def hold(self) -> Iterator[Journal]:
        """Hold the lock for the duration of the ``with`` block.

        Raises
        ------
        IndexLockTimeoutError
            The lock was not acquired within ``timeout`` seconds.
        OSError
            The lock file could not be created or opened.
        """
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = _process_lock(self.path)
        if timeout is None:
            proc.thread_lock.acquire()
        elif not proc.thread_lock.acquire(timeout=timeout):
            raise IndexLockTimeoutError(self.display_path, timeout)
        try:
            fd = self._acquire_file(proc.ipl, deadline)
            try:
                yield Journal(fd)
            finally:
                # Closing our descriptor drops the process's lockf lock; the
                # release below then unlocks (a no-op) and closes fasteners' one.
                os.close(fd)
                proc.ipl.release()
        finally:
            proc.thread_lock.release()

    def _acquire_file(
        self, ipl: fasteners.InterProcessLock, deadline: float | None
    ) -> int:
        """Take the fasteners lock on the file that *currently* has our path.

        Returns a read-write descriptor of the locked lock file, for the journal.
        """
        while True:
            if deadline is None:
                got = ipl.acquire(blocking=False)
                if not got and _platform.lock_blocking(ipl.lockfile):
                    ipl.acquired = got = True
                if not got:  # pragma: no cover - platforms without lock_blocking
                    got = ipl.acquire(delay=_POLL_DELAY, max_delay=_POLL_MAX_DELAY)
            else:
                remaining = max(0.0, deadline - time.monotonic())
                got = ipl.acquire(
                    delay=_POLL_DELAY, max_delay=_POLL_MAX_DELAY, timeout=remaining
                )
                if not got:
                    assert self.timeout is not None
                    raise IndexLockTimeoutError(self.display_path, self.timeout)
            try:
                fd = os.open(self.path, os.O_RDWR | _platform.O_BINARY)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                if _platform.same_file(os.fstat(fd), os.fstat(ipl.lockfile.fileno())):
                    return fd
                os.close(fd)
            # The lock file was deleted (and maybe recreated) after fasteners
            # opened it: our lock guards nothing. Start again on the new file.
            logger.debug("lock file %s was replaced while locking; retrying", self.path)
            ipl.release()
