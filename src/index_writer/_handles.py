"""What this process holds open for each index, keyed by file identity.

POSIX record locks belong to a *process*, and closing *any* descriptor of a
file releases every lock the process holds on it. So within a process, all
users of one index must share one gatekeeper, and a descriptor may only be
closed while nobody in the process holds a lock through it. This module
keeps those gatekeepers:

- an :class:`IndexSlot` per index file, keyed by identity -- the device and
  inode of its directory and its name, after resolving symbolic links, and
  the file's own device and inode once it exists -- so every spelling of one
  index (symlinked directories, ``..``, relative or absolute, bind mounts,
  hard links) shares one mutex, one cached :class:`._state.IndexState` and
  one set of descriptors: the index, open for appending, and its crash
  journal;
- a :class:`LockFile` per lock file, keyed by device and inode once open,
  with its own mutex, since several indexes may share a lock file.

Descriptors stay open between calls (reopening would cost more than a write)
but are bounded: beyond :func:`open_limit` slots or lock files, the least
recently used idle ones are closed. :func:`close_slot` closes one index's on
request (``IndexWriter.close``). After :func:`os.fork` the child starts with
empty registries (see :func:`_reset_after_fork`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import threading
from typing import TYPE_CHECKING, Any

import fasteners

from . import _journal, _platform

if TYPE_CHECKING:
    from ._journal import Journal
    from ._state import IndexState

__all__ = [
    "IndexSlot",
    "LockFile",
    "close_index",
    "close_slot",
    "known_state",
    "lock_file_for",
    "note_file",
    "open_limit",
    "slot_for",
    "tick",
]

logger = logging.getLogger(__name__)

_clock = itertools.count()
#: A new, larger number each call: when a slot or lock file was last used.
tick = _clock.__next__


class IndexSlot:
    """This process's gatekeeper for one index file.

    Attributes
    ----------
    mutex : RLock
        Held by the one thread at a time that reads or writes the index.
    path : str
        The index's real path (symbolic links resolved) as first seen; other
        spellings of the same file (bind mounts) may differ.
    opened_via : str
        The real path ``index_fd`` and the journal were opened through (a
        writer using another spelling reopens them through its own, so that
        a read-only mount stays read-only).
    journal_path : str
        The crash journal in use, a hidden file next to the index (or next
        to the lock file where the index's directory is not writable).
    index_fd : int
        The index, open for appending (-1 when closed); used, like
        ``journal``, only while holding ``mutex``.
    journal : Journal | None
        The crash journal, open (None when closed).
    other_journal : str
        The other place a journal of this index may be kept ("" if none):
        recovery reads it when ours does not explain the file's end.
    state : IndexState | None
        What is known about the file (:mod:`._state`).
    identity : tuple[int, int] | None
        The (device, inode) of the index file it was last filed under, so
        that every name of a hard-linked index finds this slot.
    last_used : int
        When it was last used (:func:`tick`), for closing the least recently
        used.
    evicted : bool
        Closed for good and dropped from the registry: look it up again.
    reads_ahead : bool
        Whether a writer waiting for the lock reads the rows others append
        meanwhile (:func:`._state.read_ahead`); turned off for good the first
        time what it read turns out not to be what the file holds.
    """

    __slots__ = (
        "evicted",
        "identity",
        "index_fd",
        "journal",
        "journal_path",
        "last_used",
        "mutex",
        "opened_via",
        "other_journal",
        "path",
        "reads_ahead",
        "state",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.reads_ahead = True
        self.opened_via = path
        self.journal_path = _journal.journal_path(path)
        self.mutex = threading.RLock()
        self.index_fd = -1
        self.journal: Journal | None = None
        self.other_journal = ""  # where a journal of this index may be kept, if not ours
        self.state: IndexState | None = None
        self.identity: tuple[int, int] | None = None  # the file it is filed under, if any
        self.last_used = next(_clock)
        self.evicted = False

    def close_files(self) -> None:
        """Close the cached descriptors (the caller holds ``mutex``)."""
        while self.journal is not None or self.index_fd >= 0:
            if self.journal is not None:  # forgotten first, then closed: never twice
                fd, self.journal = self.journal.fd, None
            else:
                fd, self.index_fd = self.index_fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


class LockFile:
    """This process's handle on one lock file: a mutex and the fasteners lock.

    The lock is fasteners' :class:`~fasteners.InterProcessLock`, the very
    ``lockf`` lock med-imagetools takes, so the two exclude each other.
    """

    __slots__ = (
        "_ipl",
        "checked",
        "created",
        "evicted",
        "fd",
        "identity",
        "keys",
        "last_used",
        "mutex",
        "path",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.mutex = threading.RLock()
        self._ipl = fasteners.InterProcessLock(path)
        self.fd = -1  # the open lock file's descriptor, -1 when closed
        self.created = False  # this process made the file (its owner is set once known)
        self.identity: tuple[int, int] | None = None
        self.keys: set[_LockKey] = set()  # what it is registered under in _lock_files
        self.checked = 0.0  # time.monotonic() of the last check that it is still at its path
        self.last_used = next(_clock)
        self.evicted = False

    def open_and_try(self) -> bool:
        """Open (creating the file and its directory) and try the lock once."""
        self.created = not os.path.lexists(self.path)
        try:
            got = bool(self._ipl.acquire(blocking=False))
        except threading.ThreadError as e:  # fasteners wraps what is not "busy"
            if isinstance(e.__context__, OSError):
                raise self._named(e.__context__) from None
            raise
        except OSError as e:
            raise self._named(e) from None
        self.fd = int(self._ipl.lockfile.fileno())
        st = os.fstat(self.fd)
        self._note_identity((st.st_dev, st.st_ino))
        return got

    def _named(self, e: OSError) -> OSError:
        """``e`` naming our path as text (fasteners names it as bytes)."""
        if isinstance(e.filename, bytes):
            return type(e)(e.errno, e.strerror, os.fsdecode(e.filename))
        return e

    def still_at_path(self) -> bool:
        """Whether the file we have open is still the one at our path."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == self.identity

    def close(self) -> None:
        """Close our descriptor (the caller holds ``mutex`` and no lock)."""
        lockfile = self._ipl.lockfile
        if lockfile is not None and not lockfile.closed:
            with contextlib.suppress(OSError):
                lockfile.close()
        self._ipl.lockfile = None
        self._ipl.acquired = False
        self.fd = -1
        with _guard:
            if self.identity is not None and _lock_files.get(self.identity) is self:
                del _lock_files[self.identity]  # the file may go; its directory entry stays
            self.keys.discard(self.identity)
        self.identity = None

    def close_after_fork(self) -> None:
        """Close the descriptor a forked child inherited (no mutex or registry lock used).

        Closed through fasteners' file object, which then knows: were only
        the number closed, the object -- kept alive by, say, a traceback in
        a reference cycle -- would close it again when collected, by then
        maybe a file the child opened since under the same number.
        """
        lockfile, self._ipl.lockfile = self._ipl.lockfile, None
        self._ipl.acquired = False
        self.fd = -1
        self.evicted = True
        if lockfile is not None:
            with contextlib.suppress(OSError):
                lockfile.close()

    def _note_identity(self, identity: tuple[int, int]) -> None:
        self.identity = identity
        with _guard:
            # Another name of the same file (a link) may have opened it first;
            # both keep working (each excludes through its own mutex and the
            # index's).
            _register(identity, self)


#: What a lock file's handle is found under: the file's (device, inode), or
#: its directory's (device, inode) and its name (see :func:`lock_file_for`).
_LockKey = tuple[int, ...] | tuple[int, int, str]

_guard = threading.Lock()
_slots: dict[tuple[int, int, str], IndexSlot] = {}
_resolved: dict[str, tuple[IndexSlot, str]] = {}  # path as given -> (slot, real path)
#: The index file's (device, inode) -> its slot: every name of a hard-linked
#: index shares one slot (see :func:`slot_for`).
_by_file: dict[tuple[int, int], IndexSlot] = {}
_lock_files: dict[_LockKey, LockFile] = {}
_lock_paths: dict[str, LockFile] = {}


def _register(key: _LockKey, lock: LockFile) -> None:
    """File ``lock`` under ``key`` unless a live handle is there (caller holds ``_guard``)."""
    current = _lock_files.get(key)
    if current is None or current.evicted:
        _lock_files[key] = lock
        lock.keys.add(key)


def _reset_after_fork() -> None:
    # A thread of the parent may have held any mutex at fork time; that thread
    # does not exist in the child, and POSIX locks are not inherited. The
    # inherited descriptors are closed now, while the child holds no lock:
    # closing them later would release a lock the child had taken meanwhile
    # through a new descriptor.
    global _guard, _slots, _resolved, _by_file, _lock_files, _lock_paths
    for slot in _slots.values():
        slot.close_files()
    for lock in {*_lock_files.values(), *_lock_paths.values()}:
        lock.close_after_fork()
    _guard = threading.Lock()
    _slots, _resolved, _by_file, _lock_files, _lock_paths = {}, {}, {}, {}, {}


_platform.register_after_fork(_reset_after_fork)


def slot_for(index: str, *, create_directory: bool) -> tuple[IndexSlot, str] | None:
    """The slot of the index at absolute path ``index``, and its real path.

    Symbolic links are resolved, so a link to an index writes the file it
    points to and stays a link. The index's directory is created if missing
    and ``create_directory`` is set; otherwise a missing directory returns
    None (the index cannot exist). The answer is remembered for ``index``
    (resolving costs a system call per path component) while its slot holds
    the file open: a link changed meanwhile is not followed by this process.
    A name whose file another slot holds open (a hard link, a name the file
    was renamed to) gets that slot.
    """
    hit = _resolved.get(index)
    if hit is not None and not hit[0].evicted and hit[0].index_fd >= 0:
        return hit
    # Resolved afresh while its slot holds no file: the file found now may be
    # one another slot holds (a hard link made since).
    real = os.path.realpath(index)
    directory = os.path.dirname(real)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if not create_directory:
            return None
        os.makedirs(directory, exist_ok=True)
        st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):  # a file where the index's directory should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)
    key = (st.st_dev, st.st_ino, os.path.basename(real))
    try:
        file = os.stat(real)
    except OSError:
        file = None  # not there yet: its first writer files it by identity (note_file)
    with _guard:  # atomic, as another thread may resolve another name of the file
        slot = _slots.get(key)
        if slot is not None and slot.path != real and not _still_named(slot.path, key):
            slot = None  # its directory is gone, and another has its number
        new = slot is None
        if file is not None:
            identity = (file.st_dev, file.st_ino)
            known = _by_file.get(identity)
            if known is not None and known.evicted:
                known = None
            if known is not None and (file.st_nlink > 1 or _holds(known, identity)):
                # Another name of a file in a slot: a hard link, or the name
                # the file a slot holds open was renamed to.
                slot, new = known, False
            if slot is None:
                slot = _slots[key] = IndexSlot(real)
            if known is None and slot.identity is None:  # never instead of a file it holds
                _file_under(identity, slot)
        elif slot is None:
            slot = _slots[key] = IndexSlot(real)
        _resolved[index] = (slot, real)
    if new:
        _evict(_slots)
    return slot, real


def note_file(slot: IndexSlot, st: os.stat_result) -> None:
    """File ``slot`` under the identity of the index it has just opened (``st``).

    So that another name of that file (a hard link made later) finds it.
    """
    identity = (st.st_dev, st.st_ino)
    with _guard:
        known = _by_file.get(identity)
        if known is None or known.evicted or not _holds(known, identity):
            _file_under(identity, slot)


def _holds(slot: IndexSlot, identity: tuple[int, int]) -> bool:
    """Whether ``slot`` has the file ``identity`` open (as far as can be seen unlocked)."""
    return slot.index_fd >= 0 and slot.identity == identity


def close_index(slot: IndexSlot) -> None:
    """Close the slot's files and forget what described them (the caller holds its mutex).

    Its state and the file it is filed under go too: once closed, that file
    may be deleted and its inode number given to a new file, which they
    would take for the same one.
    """
    slot.close_files()
    slot.state = None
    _forget_file(slot)


def _forget_file(slot: IndexSlot) -> None:
    """``slot`` no longer holds its file: another slot may be filed under it."""
    with _guard:
        if slot.identity is not None and _by_file.get(slot.identity) is slot:
            del _by_file[slot.identity]
        slot.identity = None


def _file_under(identity: tuple[int, int], slot: IndexSlot) -> None:
    """Map ``identity`` to ``slot``, instead of the file it had (caller holds ``_guard``).

    A slot is filed under one identity at a time: a rewrite gives the index
    a new one, and the old must not stay (the map would grow with every
    rewrite, and a new file given the old number would find this slot).
    """
    old = slot.identity
    if old is not None and old != identity and _by_file.get(old) is slot:
        del _by_file[old]
    _by_file[identity] = slot
    slot.identity = identity


def known_state(index: str) -> IndexState | None:
    """What this process last knew about the index at ``index``, if anything.

    Read without the lock, as a hint (see :func:`._plan.guess_append`).
    """
    hit = _resolved.get(index)
    return None if hit is None else hit[0].state


def lock_file_for(path: str) -> LockFile:
    """The handle for the lock file at absolute path ``path``.

    Every spelling of one lock file shares a handle: found by the file's
    identity (device and inode) where it exists, and by its directory's
    identity and its name, which also holds before the file is created (two
    handles on one file would let one thread's unlock release the lock
    another thread holds: POSIX locks belong to the process).
    """
    lock = _lock_paths.get(path)
    if lock is not None and not lock.evicted:
        return lock
    keys: list[_LockKey] = []
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.append((st.st_dev, st.st_ino))
    directory, name = os.path.split(path)
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        keys.append((st.st_dev, st.st_ino, name))
    with _guard:
        lock = None
        for key in keys:
            found = _lock_files.get(key)
            if found is None or found.evicted:
                continue
            if found.path != path and not _still_named(found.path, key):
                # The file or directory it was found by is gone, and another
                # has its number: that handle would lock a file elsewhere.
                del _lock_files[key]
                found.keys.discard(key)
                continue
            lock = found
            break
        if lock is None:
            lock = LockFile(path)
        for key in keys:
            _register(key, lock)
        current = _lock_paths.get(path)
        if current is None or current.evicted:
            _lock_paths[path] = lock
        lock = _lock_paths[path]
    _evict(_lock_paths)
    return lock


def _still_named(path: str, key: _LockKey) -> bool:
    """Whether ``path`` still leads to what ``key`` was made from.

    A key holds a file's (device, inode), or its directory's and its name.
    Once that file or directory is deleted, a new one may get its number;
    renamed, the old path leads nowhere. Either way a handle found by the
    key under another path must not be used for this one.
    """
    target = path if len(key) == 2 else os.path.dirname(path)
    try:
        st = os.stat(target)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key[:2]


def open_limit() -> int:
    """How many indexes (and lock files) a process keeps open between calls.

    At most 64, and at most a sixteenth of the descriptor limit
    (``ulimit -n``), so a process touching thousands of indexes stays well
    within it: an index keeps two descriptors, a lock file one.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - Windows
        return 64
    if soft == resource.RLIM_INFINITY:
        return 64
    return max(4, min(64, soft // 16))


def _evict(registry: dict[Any, Any]) -> None:
    """Close the least recently used idle entries beyond :func:`open_limit`."""
    limit = open_limit()
    if len(registry) <= limit:
        return
    with _guard:  # other threads add entries meanwhile
        victims = sorted(registry.items(), key=lambda kv: kv[1].last_used)
    for key, item in victims[: len(registry) - limit]:
        if not item.mutex.acquire(blocking=False):
            continue  # in use: never close a descriptor that may hold a lock
        try:
            if isinstance(item, IndexSlot):
                item.close_files()
            else:
                item.close()
            item.evicted = True  # a caller holding a reference resolves it again
            with _guard:
                if isinstance(item, IndexSlot):
                    if registry.get(key) is item:
                        del registry[key]
                    for path in [p for p, (slot, _) in _resolved.items() if slot is item]:
                        del _resolved[path]
                    for identity in [i for i, slot in _by_file.items() if slot is item]:
                        del _by_file[identity]
                else:  # one lock file may be registered under several spellings
                    for path in [p for p, lock in _lock_paths.items() if lock is item]:
                        del _lock_paths[path]
                    for lock_key in [k for k in item.keys if _lock_files.get(k) is item]:
                        del _lock_files[lock_key]
        finally:
            item.mutex.release()


def close_slot(index: str, lock_path: str) -> None:
    """Close what this process keeps open for one index and its lock file.

    Waits for a call in progress in another thread to finish. The next call
    opens them again.
    """
    hit = _resolved.get(index)  # found even if its directory was removed or renamed
    slot = hit[0] if hit is not None else None
    if slot is None:
        real = os.path.realpath(index)
        with contextlib.suppress(OSError):
            st = os.stat(os.path.dirname(real))
            slot = _slots.get((st.st_dev, st.st_ino, os.path.basename(real)))
    if slot is not None:
        with slot.mutex:
            close_index(slot)
    lock = _lock_paths.get(lock_path)
    if lock is not None:
        with lock.mutex:
            lock.close()
