"""Taking and releasing the index lock, for writers and for readers.

Layers, always taken in this order and released in reverse:

1. the index's in-process mutex (:class:`._handles.IndexSlot`), shared by
   every writer and reader of that file in this process, whatever path
   spelling or lock file they use;
2. the lock file's in-process mutex (:class:`._handles.LockFile`), since
   several indexes may share a lock file;
3. the lock file's ``lockf`` lock, the one med-imagetools takes, so the two
   implementations exclude each other: exclusive for writers; shared for
   readers, through a read-only descriptor (readers need no write access);
4. a ``lockf`` lock on the index file itself, exclusive for writers, shared
   for readers. It is free in normal operation; it keeps writers apart when
   the lock file is deleted while held (med-imagetools deletes
   ``NAME.lock`` at the end of a run): the next writer creates and locks a
   new lock file, but still waits here.

:func:`run_locked` takes them, runs the caller's step, and releases them in
a ``finally`` that retries each (idempotent) release until done, so an
asynchronous exception -- Ctrl-C's :class:`KeyboardInterrupt` -- landing
anywhere between taking and releasing cannot leave a lock held.

Writers keep the lock file and the index open between calls; each call
checks that the open index is still the one at its path (a rewrite replaces
it by a rename), and at most every :data:`RECHECK` seconds -- and after every
wait -- that the lock file is still the one at its path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import _files, _handles, _platform
from ._handles import IndexSlot, LockFile
from ._journal import (
    Journal,
    cut_utf8_tail,
    journal_beside_lock,
    journal_path,
    open_journal,
    read_journal,
    torn_append_start,
)

__all__ = ["RECHECK", "LockTimeout", "Session", "hold_new_file", "poll", "run_locked"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often (seconds) a writer checks that the lock file it keeps open is
#: still the one at its path (deleted and recreated: it switches to the new
#: one). After waiting for the lock it always checks.
RECHECK = 0.1

#: How a busy lock is polled (:func:`_wait`): first retry after 1 ms,
#: backing off to 10 ms.
POLL_DELAY = 0.001
POLL_MAX_DELAY = 0.01


class LockTimeout(Exception):
    """A lock was not acquired by the deadline (turned into the public error)."""

    def __init__(self, holder: str | None) -> None:
        super().__init__(holder)
        self.holder = holder


class Session:
    """The locked index, as a step run by :func:`run_locked` sees it.

    Attributes
    ----------
    slot : IndexSlot
        The index's in-process handle (cached state and descriptors).
    path : str
        The index's real path, as this call spells it.
    fd : int
        The index, open (for appending, for writers).
    st : os.stat_result | None
        Its status after locking (from a ``stat`` of the path, which
        names the same file).
    created : bool
        This call created the (empty) index file.
    journal : Journal | None
        The crash journal, open read-write (writers only).
    end : int
        For readers: where the data ends (before an append a crash cut
        short, which only a writer may undo).
    deadline : float | None
        ``time.monotonic()`` value by which the caller's timeout runs out.
    after : Callable | None
        Set by a step: run once the file locks are released, before the
        in-process mutex is (bookkeeping that other processes need not wait
        for).
    """

    __slots__ = ("after", "created", "deadline", "end", "fd", "journal", "path", "slot", "st")

    def __init__(self, slot: IndexSlot, path: str, deadline: float | None) -> None:
        self.slot = slot
        self.path = path
        self.deadline = deadline
        self.fd = -1
        self.st: os.stat_result | None = None
        self.created = False
        self.journal: Journal | None = None
        self.end = 0
        self.after: Callable[[], object] | None = None


def poll(
    attempt: Callable[[], bool],
    deadline: float | None,
    idle: Callable[[], object] | None = None,
) -> bool:
    """Call ``attempt()`` until it returns True, backing off between calls.

    Returns False if ``deadline`` (a :func:`time.monotonic` value) passes
    first; None waits forever. ``idle``, if given, is work the caller can
    do while it waits: it is called before the first sleep and after each
    sleep, just before the next attempt, so that what it prepares is as fresh
    as it can be when the attempt succeeds.
    """
    delay = POLL_DELAY
    if attempt():
        return True
    first = True
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = min(delay, remaining)
        if first and idle is not None:
            idle()
        first = False
        time.sleep(delay)
        if idle is not None:
            idle()
        if attempt():
            return True
        delay = min(delay * 2, POLL_MAX_DELAY)


def _wait(
    fd: int, exclusive: bool, deadline: float | None, idle: Callable[[], object] | None = None
) -> bool:
    """Wait for the ``lockf`` lock on ``fd`` and take it; False at the deadline.

    The lock is polled (:func:`poll`), with or without a deadline, rather
    than waited for in the kernel (``F_SETLKW``): a waiter asleep is not
    woken by every unlock, so a busy lock passes from writer to writer after
    a run of writes rather than after each one, and many writers spend their
    time writing instead of waking each other up (see the contention
    benchmark in the performance guide). A waiter still gets its turn: the
    holder leaves the lock free between its calls while it does its
    bookkeeping and prepares the next rows. ``idle``: see :func:`poll`.
    """
    return poll(lambda: _platform.try_lock(fd, exclusive), deadline, idle)


def _take_mutex(mutex: Any, deadline: float | None) -> None:
    if deadline is None:
        mutex.acquire()
        return
    wait = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
    if not mutex.acquire(timeout=wait):
        raise LockTimeout("another thread of this process holds it")


def run_locked(
    index: str,
    lock_path: str,
    *,
    write: bool,
    create: bool,
    timeout: float | None,
    step: Callable[[Session | None], _T],
    idle: Callable[[IndexSlot], object] | None = None,
) -> _T:
    """Run ``step`` with the index locked; return what it returns.

    ``step`` gets None when the index does not exist and is not to be
    created (readers; writers with ``create=False``). Writers with
    ``create`` make the index's directory and the file if needed.
    ``idle(slot)`` is called while a writer waits for the lock file, with
    the index's in-process mutex held (see :func:`poll`).

    Raises
    ------
    LockTimeout
        A lock was not acquired within ``timeout`` seconds.
    OSError
        Opening or locking failed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        found = _handles.slot_for(index, create_directory=write and create)
        if found is None:
            return step(None)
        slot, real = found
        lock = _handles.lock_file_for(lock_path)
        s = Session(slot, real, deadline)
        reader_files: list[io.FileIO] = []
        try:
            if not slot.mutex.acquire(False):
                _take_mutex(slot.mutex, deadline)
            if not lock.mutex.acquire(False):
                _take_mutex(lock.mutex, deadline)
            if slot.evicted or lock.evicted:
                continue  # closed for good meanwhile: look them up again
            slot.last_used = lock.last_used = _handles.tick()
            try:
                if write:
                    tried = _platform.try_lock(lock.fd, True) if lock.fd >= 0 else None
                    if not (tried and time.monotonic() - lock.checked < RECHECK):
                        _lock_lock_file(lock, slot, deadline, tried, idle)
                    if not _open_for_write(s, lock, lock_path, create):
                        return step(None)
                elif not _open_for_read(s, lock_path, reader_files):
                    return step(None)
            except OSError as e:
                if e.errno in _NO_LOCKS:
                    raise _locks_unsupported(e, lock_path) from e
                raise
            return step(s)
        finally:
            # Every release is idempotent and retried until all are done: an
            # interrupt landing between taking and releasing must not leave a
            # lock behind.
            pending: BaseException | None = None
            while True:
                try:
                    _release(s, lock, write, reader_files)
                    break
                except BaseException as e:  # retried, then re-raised
                    pending = pending or e
            if pending is not None:
                raise pending


def _release(s: Session, lock: LockFile, write: bool, files: list[io.FileIO]) -> None:
    """Release what :func:`run_locked` took, in reverse order; safe to repeat."""
    slot = s.slot
    for f in files:
        f.close()  # a reader's descriptors (closing releases their locks)
    if slot.mutex._is_owned():  # type: ignore[attr-defined]
        if write and slot.index_fd >= 0:
            _unlock_quietly(slot.index_fd, slot.path)
        if write and lock.mutex._is_owned() and lock.fd >= 0:  # type: ignore[attr-defined]
            _unlock_quietly(lock.fd, lock.path)
        after, s.after = s.after, None
        if after is not None:
            try:
                after()
            except BaseException:
                slot.state = None  # half done: read the file afresh next time
                raise
    while lock.mutex._is_owned():  # type: ignore[attr-defined]
        lock.mutex.release()
    while slot.mutex._is_owned():  # type: ignore[attr-defined]
        slot.mutex.release()


def _unlock_quietly(fd: int, path: str) -> None:
    try:
        _platform.unlock(fd)
    except OSError as e:  # closing the descriptor later still releases it
        logger.warning("could not unlock %s: %s", path, e)


def _lock_lock_file(
    lock: LockFile,
    slot: IndexSlot,
    deadline: float | None,
    tried: bool | None = None,
    idle: Callable[[IndexSlot], object] | None = None,
) -> None:
    """Take the lock file's exclusive lock, on the file currently at its path.

    ``tried``: what the caller's own attempt on ``lock.fd`` gave (taken, or
    busy), so it is not repeated; None if it made none. ``idle(slot)`` is
    called between attempts while the lock is busy.
    """
    wait_idle = None if idle is None else (lambda: idle(slot))
    while True:
        if lock.fd < 0:
            got = lock.open_and_try()
            lock.checked = time.monotonic()
        elif tried is None:
            got = _platform.try_lock(lock.fd, True)
        else:
            got = tried
        tried = None
        if got:
            if time.monotonic() - lock.checked < RECHECK:
                return
        elif not _wait(lock.fd, True, deadline, wait_idle):
            raise LockTimeout(_holder(lock.fd, slot))
        lock.checked = time.monotonic()
        if lock.still_at_path():
            return
        # Deleted (and maybe recreated) since we opened it: our lock guards
        # nothing. Start again on the current file.
        logger.debug("lock file %s was replaced; locking the new one", lock.path)
        _platform.unlock(lock.fd)
        lock.close()


def _open_for_write(s: Session, lock: LockFile, lock_path: str, create: bool) -> bool:
    """Open (or reuse) the index for appending and lock it; False if missing.

    Also opens the journal. The descriptor kept open is reused while the
    file at the path is still the one it holds: a rewrite renames a new file
    over it, and the index may be deleted, or renamed away (med-imagetools
    moves an index aside to start afresh); then the path is opened again.
    """
    slot, state = s.slot, s.slot.state
    fd = slot.index_fd
    if (
        fd >= 0
        and state is not None
        and slot.journal is not None
        and slot.opened_via == s.path
        and _platform.try_lock(fd, True)
    ):
        # The usual case costs one status call, on the path: it tells whether
        # the file there is the one held open (the state describes that one),
        # and, being that file's status, what changed in it.
        st = _files.stat_or_none(s.path)
        if st is not None and (st.st_dev, st.st_ino) == (state.dev, state.ino):
            s.fd, s.st, s.journal = fd, st, slot.journal
            return True
        _platform.unlock(fd)
    if slot.opened_via != s.path and not _reopen_via(slot, s, create):
        return False
    while True:
        if slot.index_fd < 0:
            fd, s.created = _files.open_index(s.path, create)
            if fd < 0:
                slot.state = None
                return False
            slot.index_fd = fd
            slot.opened_via = s.path
        fd = slot.index_fd
        if not _platform.try_lock(fd, True) and not _wait(fd, True, s.deadline):
            raise LockTimeout(_holder(fd, slot))
        try:
            st = os.fstat(fd)
        except OSError as e:  # ESTALE: replaced on a network filesystem
            if e.errno not in (errno.ENOENT, errno.ESTALE):
                raise
        else:
            at_path = _files.stat_or_none(s.path)
            if at_path is not None and _platform.same_file(st, at_path):
                break
        _platform.unlock(fd)
        _handles.close_index(slot)
    _handles.note_file(slot, st)
    if lock.created and stat.S_ISREG(st.st_mode):
        # We made the lock file: every user who may write the index must be
        # able to lock it (root running a maintenance job, say).
        lock.created = False
        with contextlib.suppress(OSError):
            _platform.copy_ownership(lock.fd, st)
    if not stat.S_ISREG(st.st_mode):  # a FIFO, a device: no index can live there
        _platform.unlock(fd)
        _handles.close_index(slot)
        raise OSError(errno.EINVAL, "not a regular file: an index must be a file", s.path)
    s.fd, s.st = fd, st
    if slot.journal is None:
        journal_fd, path = open_journal(s.path, lock_path, st)
        slot.journal_path = path
        slot.journal = Journal(journal_fd, path)
        others = {journal_path(s.path), journal_beside_lock(lock_path, s.path)} - {path}
        slot.other_journal = others.pop() if others else ""
    s.journal = slot.journal
    return True


def hold_new_file(s: Session) -> None:
    """Hold open the file this session's rewrite just renamed over the index.

    The slot's state then describes the file the slot holds open, as it
    always must: a file held open keeps its inode number, whereas one no
    longer held may be deleted (by other writers' rewrites) and its number
    given to a new file, which a state kept for it would take for the same
    file. The state is dropped if the file at the path is not the one it
    describes, or cannot be opened. The new file is also locked, as the
    session's index lock (normally free: the lock file is held).
    """
    slot, state = s.slot, s.slot.state
    fd = -1
    try:
        fd, _ = _files.open_index(s.path, create=False)
        st = os.fstat(fd) if fd >= 0 else None
    except OSError:
        st = None
    if st is None or state is None or (st.st_dev, st.st_ino) != (state.dev, state.ino):
        slot.state = None
        if fd >= 0:
            os.close(fd)
        return
    old, slot.index_fd = slot.index_fd, fd
    s.fd, s.st = fd, st
    # The rewrite is done: nothing below may fail the call.
    with contextlib.suppress(OSError):
        _platform.try_lock(fd, True)
    _handles.note_file(slot, st)
    if old >= 0:
        with contextlib.suppress(OSError):
            os.close(old)  # also releases our lock on the old file, now superseded


def _reopen_via(slot: IndexSlot, s: Session, create: bool) -> bool:
    """Open the slot's index through ``s.path``, another name of it; False if missing.

    Through the writer's own name (a bind mount, a hard link), so that a
    read-only mount stays read-only. While the name still leads to the file
    the slot holds, the new descriptor takes the old one's place, and the
    slot stays filed under the file and keeps its state: no other thread
    looking a name of the file up meanwhile may find it without a file and
    make a second slot for it.
    """
    fd, s.created = _files.open_index(s.path, create)
    if fd < 0:
        _handles.close_index(slot)
        return False
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if slot.index_fd >= 0 and slot.identity == (st.st_dev, st.st_ino):
        old, slot.index_fd = slot.index_fd, fd
        journal, slot.journal = slot.journal, None  # each name keeps its own journal
        for stale in (old, journal.fd if journal is not None else -1):
            if stale >= 0:
                with contextlib.suppress(OSError):
                    os.close(stale)
    else:
        _handles.close_index(slot)
        slot.index_fd = fd
    slot.opened_via = s.path
    return True


def _open_for_read(s: Session, lock_path: str, files: list[io.FileIO]) -> bool:
    """Open the index read-only under shared locks; False if it does not exist.

    Nothing is created: a missing lock file is simply not locked (no writer
    can be active without one, unless it was deleted -- the index lock
    covers that), a missing index reads as no rows. Sets ``s.end`` before
    an append a crash cut short.
    """
    slot = s.slot
    try:
        lockfile = io.FileIO(_files.open_regular(lock_path), "r")
    except OSError as e:
        # Missing, unreadable, a directory, or a name too long for any writer
        # to have created: nothing to lock.
        if e.errno not in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENAMETOOLONG,
                           errno.ENOTDIR, errno.EINVAL):
            raise
    else:
        files.append(lockfile)
        if not _platform.try_lock(lockfile.fileno(), False) and not _wait(
            lockfile.fileno(), False, s.deadline
        ):
            raise LockTimeout(_holder(lockfile.fileno(), slot))
    while True:
        try:
            index = io.FileIO(_files.open_regular(s.path), "r")
        except FileNotFoundError:
            return False
        files.append(index)
        fd = index.fileno()
        if not _platform.try_lock(fd, False) and not _wait(fd, False, s.deadline):
            raise LockTimeout(_holder(fd, slot))
        try:
            current = _platform.same_file(os.fstat(fd), os.stat(s.path))
        except FileNotFoundError:
            current = False
        if current:
            break
        files.pop().close()  # replaced while we waited: read the new file
    st = os.fstat(fd)
    s.fd, s.st = fd, st
    s.end = st.st_size
    records = [read_journal(journal)
               for journal in {journal_path(s.path), journal_beside_lock(lock_path, s.path)}]
    for record in records:
        start = torn_append_start(record, fd, st, records)
        if start is not None:
            s.end = min(s.end, start)
    cut = cut_utf8_tail(fd, s.end)  # a character cut by a crash, and no journal said so
    if cut is not None:
        s.end = cut
    return True


#: What locking fails with where the filesystem does not lock (NFS without
#: lockd, Lustre mounted noflock, some FUSE filesystems).
_NO_LOCKS = frozenset(
    getattr(errno, name) for name in ("ENOLCK", "ENOSYS", "EOPNOTSUPP", "ENOTSUP")
    if hasattr(errno, name)
)


def _locks_unsupported(e: OSError, lock_path: str) -> OSError:
    """The error for a filesystem that refuses file locks: which one, and what to do."""
    directory = os.path.dirname(lock_path) or "."
    where = ""
    with contextlib.suppress(Exception):  # only a detail of the message
        from ._doctor.mounts import find_mount

        mount = find_mount(directory)
        if mount is not None:
            where = f" ({mount.fstype} mounted at {mount.mount_point})"
    return OSError(
        e.errno,
        f"file locks are not supported here{where}: {e.strerror}; writers could not "
        f"exclude each other. Run 'index-writer doctor {directory}' to check the "
        "filesystem, or give lock_path on a filesystem that locks",
        lock_path,
    )


def _holder(fd: int, slot: IndexSlot) -> str | None:
    """Who holds the lock, as far as can be known, for a timeout message."""
    parts = []
    pid = _platform.lock_holder(fd)
    if pid is not None:
        parts.append(f"held by process {pid}")
    record = read_journal(slot.journal_path)
    if record is not None:
        info = record.info
        when = info.get("time")
        since = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
            if isinstance(when, (int, float))
            else "?"
        )
        what = "last change by" if record.finished else "change begun by"
        parts.append(
            f"{what} process {info.get('pid', '?')} on host {info.get('host', '?')} at {since}"
        )
    return "; ".join(parts) or None
