"""The index lock: one writer at a time, across threads and processes.

Two layers, always taken in this order and released in reverse:

1. a :class:`threading.Lock` per lock file, shared by every writer in this
   process, because POSIX record locks belong to the *process*: two threads
   would both "get" the file lock, and a thread closing its descriptor
   would silently release the lock another thread holds;
2. a fasteners :class:`~fasteners.InterProcessLock` on the lock file, the same
   ``lockf`` lock med-imagetools takes, so the two implementations exclude each
   other.

The lock file stays open in this process between writes (reopening it would
cost more than the write itself). After each acquisition the lock file on disk
is checked to still be the file we locked: med-imagetools deletes
``<index>.lock`` when a pipeline finishes, and a writer that locked the
deleted file would otherwise run beside one that locked its replacement.

While held, the lock file's content is the crash journal (:mod:`._journal`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import fasteners

from . import _platform
from ._errors import IndexLockTimeoutError
from ._journal import Journal

__all__ = ["IndexLock", "open_index", "poll"]

logger = logging.getLogger(__name__)

#: How a busy lock is polled when a timeout is set (or the platform cannot
#: wait in the kernel): first retry after 1 ms, backing off to 10 ms.
POLL_DELAY = 0.001
POLL_MAX_DELAY = 0.01


def poll(attempt: Callable[[], bool], deadline: float | None) -> bool:
    """Call ``attempt()`` until it returns True, backing off between calls.

    Returns False if ``deadline`` (a :func:`time.monotonic` value) passes
    first; None waits forever.
    """
    delay = POLL_DELAY
    while True:
        if attempt():
            return True
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = min(delay, remaining)
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_DELAY)


def _busy(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EAGAIN)


class _LockFile:
    """This process's handle on one lock file: the thread layer and the file lock."""

    __slots__ = ("_ipl", "journal_fd", "path", "thread_lock")

    def __init__(self, path: str) -> None:
        self.path = path
        self.thread_lock = threading.Lock()
        self._ipl = fasteners.InterProcessLock(path)
        self.journal_fd = -1  # read-write descriptor of the same file, for the journal

    def is_open(self) -> bool:
        lockfile = self._ipl.lockfile
        return lockfile is not None and not lockfile.closed

    def reopen(self) -> bool:
        """Open (creating the file and its directory) and try the lock once."""
        got = bool(self._ipl.acquire(blocking=False))
        self.journal_fd = _platform.open_journal(self.path, self._ipl.lockfile)
        return got

    def try_lock(self) -> bool:
        """Take the file lock if it is free; False if another process holds it."""
        try:
            self._ipl.trylock()
        except OSError as e:
            if not _busy(e):
                raise
            return False
        return True

    def wait(self, deadline: float | None) -> bool:
        """Wait for the file lock and take it; False if ``deadline`` passed."""
        if deadline is None and _platform.lock_blocking(self._ipl.lockfile):
            return True
        return poll(self.try_lock, deadline)

    def unlock(self) -> None:
        self._ipl.unlock()

    def still_at_path(self) -> bool:
        """Whether the file we hold is still the one at our path."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        return _platform.same_file(on_disk, os.fstat(self._ipl.lockfile.fileno()))

    def close(self) -> None:
        """Close our descriptors of the lock file (only while not locked)."""
        if self.journal_fd >= 0:
            os.close(self.journal_fd)
            self.journal_fd = -1
        if self.is_open():
            self._ipl.lockfile.close()
        self._ipl.lockfile = None
        self._ipl.acquired = False


_registry_guard = threading.Lock()
_registry: dict[str, _LockFile] = {}


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


def _lock_file(path: str) -> _LockFile:
    entry = _registry.get(path)
    if entry is None:
        with _registry_guard:
            entry = _registry.setdefault(path, _LockFile(path))
    return entry


class IndexLock:
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
        entry = _lock_file(self.path)
        if timeout is None:
            entry.thread_lock.acquire()
        elif not entry.thread_lock.acquire(timeout=timeout):
            raise IndexLockTimeoutError(self.display_path, timeout)
        try:
            self._lock_current_file(entry, deadline)
            try:
                return Journal(entry.journal_fd, deadline)
            except BaseException:
                entry.unlock()
                raise
        except BaseException:
            entry.thread_lock.release()
            raise

    def release(self) -> None:
        """Release both layers (the caller holds them)."""
        entry = _registry[self.path]
        try:
            entry.unlock()
        finally:
            entry.thread_lock.release()

    def _lock_current_file(self, entry: _LockFile, deadline: float | None) -> None:
        """Take the file lock on the file that *currently* has our path."""
        while True:
            got = entry.try_lock() if entry.is_open() else entry.reopen()
            if not got and not entry.wait(deadline):
                assert self.timeout is not None
                raise IndexLockTimeoutError(self.display_path, self.timeout)
            try:
                current = entry.still_at_path()
            except BaseException:
                entry.unlock()
                raise
            if current:
                return
            # The lock file was deleted (and maybe recreated) since we opened
            # it: our lock guards nothing. Start again on the current file.
            logger.debug("lock file %s was replaced; locking the new one", self.path)
            entry.unlock()
            entry.close()


def open_index(
    path: str, *, write: bool, create: bool, deadline: float | None
) -> tuple[int, os.stat_result, bool] | None:
    """Open the index file and lock it too; None if it does not exist.

    The lock file alone keeps writers apart only while it stays in place: if
    it is deleted while a writer holds it, the next writer creates and locks
    a new one. So every writer (and reader) also locks the index file itself,
    exclusively (shared for reading), through the descriptor it uses, until
    it closes it. That lock is always free in normal operation and costs one
    uncontended system call. As with the lock file, the locked file must
    still be the one at the path: a rewrite may have replaced it while we
    waited.

    Returns ``(fd, stat, created)``; ``created`` says the file was created
    here (``create=True``), with its directory if needed.

    Raises
    ------
    TimeoutError
        The index file stayed locked until ``deadline``.
    """
    flags = (os.O_RDWR | os.O_APPEND if write else os.O_RDONLY) | _platform.O_BINARY
    while True:
        created = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                return None
            created = True
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                continue
        try:
            if not _lock_index(fd, write, deadline):
                raise TimeoutError(f"the index file {path} stayed locked")
            st = os.fstat(fd)
            same = _platform.same_file(st, os.stat(path))
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd, st, created
        os.close(fd)


def _lock_index(fd: int, exclusive: bool, deadline: float | None) -> bool:
    if deadline is None:
        _platform.lock_index_blocking(fd, exclusive)
        return True
    return poll(lambda: _platform.try_lock_index(fd, exclusive), deadline)
