"""The crash journal: what a writer is in the middle of doing to an index.

A writer records each change before it touches the index, so that the next
writer (or reader) can tell a change a crash cut short from data:

- an **append** is recorded with the index's identity (device and inode), the
  offset where it starts, its length, its first :data:`HEAD` bytes and a
  CRC-32 of each later chunk, the chunks ending where the file's offsets
  are multiples of :data:`HEAD` (``crc_pages``). If the file is later found
  longer than that offset but shorter than the whole append, and the extra
  bytes are provably the start of that append, they are not data: writers
  truncate them (:func:`recover`), readers stop before them
  (:func:`torn_append_start`). Provably: the head matches byte for byte and
  every chunk up to the file's end by its CRC, so the end must fall within
  the head or at a chunk's end -- where a write cut short by a kill stops
  (the kernel copies a write page by page). Anything else means another
  program has written since (or the end cannot be proven ours), and nothing
  is cut. Once an append is done, while the lock is still held, its record
  is replaced by a finished one, which also carries the file's modification
  time before and after the append: the file's size alone cannot show that
  an append finished, as another program may rewrite the file in place later
  (pandas, med-imagetools) and leave it shorter, with our append's first
  bytes where they were; and the times let the next writer see that the
  file's growth since it last looked is that one append and nothing else.
  An append that a kill cannot leave half done (one within a page of the
  file, on Linux: :func:`._platform.kill_cannot_tear`) gets only the
  finished record. An active record found by a writer holding the lock is
  voided once recovery is done (:func:`recover`): its writer is gone, and
  it must not be matched against rows appended later.
- a **rewrite** is recorded with the name of its temporary file, which is
  removed if a crash left it; the index itself is only ever replaced by an
  atomic rename. A finished rewrite is marked done.

The journal lives in its own small file next to the index (``.NAME.journal``,
see :func:`journal_name`; next to the lock file for a writer that
may not create files in the index's directory: :func:`open_journal`), not in
the lock file, so it survives the lock file being deleted -- med-imagetools
deletes ``NAME.lock`` at the end of a run, and people ``rm *.lock``. Do not
delete the journal while writers run.

Format: :data:`MAGIC`, then ``A`` (a record follows), ``F`` (the append
recorded finished) or ``D`` (done), then the record as one line of JSON and
the append's head bytes (none for a finished record). Each step is one
``pwrite`` in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import stat
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from . import _files, _platform

__all__ = [
    "HEAD",
    "MAGIC",
    "Journal",
    "Record",
    "append_record",
    "cut_utf8_tail",
    "finished_at_end",
    "finished_record",
    "journal_beside_lock",
    "journal_name",
    "journal_path",
    "open_journal",
    "read_journal",
    "recover",
    "rewrite_record",
    "superseded",
    "torn_append_start",
    "void_journal_file",
]

logger = logging.getLogger(__name__)

MAGIC = b"index-writer journal 2\n"
_ACTIVE = b"A"
_FINISHED = b"F"
_DONE = b"D"

#: An append's record carries its first bytes, and a CRC-32 of each later chunk
#: of this size, so a rollback can prove the bytes it removes are ours. (The
#: writes of one append end on multiples of it: :func:`._files.append`.)
HEAD = _files.PIECE_ALIGN

#: How much of the journal is read at once; larger records (big appends) are
#: read whole when this is not enough.
_READ = 1 << 13

_WHO = [""]  # who writes records: host and pid (getpid() is a system call)


def _renew_who() -> None:
    _WHO[0] = f'"host":{json.dumps(socket.gethostname())},"pid":{os.getpid()}'


_renew_who()
_platform.register_after_fork(_renew_who)


class Record:
    """An operation found in the journal.

    Attributes
    ----------
    info : dict
        The record's fields: ``op`` ("append" or "rewrite"), and for an
        append ``dev``, ``ino``, ``offset``, ``length``, ``head`` (how many
        head bytes follow) and ``crc_pages`` (a finished append instead
        ``mtime_before`` and ``mtime``, the file's modification times in
        nanoseconds); for a rewrite ``temp``; and who wrote it: ``host``,
        ``pid``, ``time``.
    head : bytes
        The append's first bytes.
    finished : bool
        The append is known to have finished (nothing to undo).
    """

    __slots__ = ("finished", "head", "info")

    def __init__(self, info: dict[str, Any], head: bytes, finished: bool = False) -> None:
        self.info = info
        self.head = head
        self.finished = finished

    @property
    def op(self) -> str:
        return str(self.info.get("op", ""))

    def of_file(self, st: os.stat_result) -> bool:
        """Whether the record is about the file ``st`` describes (device and inode)."""
        return (self.info.get("dev"), self.info.get("ino")) == (st.st_dev, st.st_ino)


def _parse(data: bytes, where: str) -> Record | None:
    flag = data[len(MAGIC) : len(MAGIC) + 1]
    if not data.startswith(MAGIC) or flag not in (_ACTIVE, _FINISHED):
        if data and not data.startswith(MAGIC):
            logger.warning("ignoring %s: not an index-writer journal", where)
        return None
    line, _, rest = data[len(MAGIC) + 1 :].partition(b"\n")
    try:
        info = json.loads(line)
        if not _well_formed(info):
            raise ValueError(info)
    except ValueError:
        logger.warning("ignoring an unreadable crash journal in %s", where)
        return None
    return Record(info, rest[: info.get("head", 0)], flag == _FINISHED and info["op"] == "append")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _well_formed(info: object) -> bool:
    """Whether ``info`` is a record as :func:`append_record` or :func:`rewrite_record` makes."""
    if not isinstance(info, dict):
        return False
    if info.get("op") == "append":
        crcs = info.get("crc_pages", [])
        return (
            all(_whole(info.get(k)) for k in ("dev", "ino", "offset", "length"))
            and _whole(info.get("head", 0))
            and isinstance(crcs, list)
            and all(_whole(c) for c in crcs)
        )
    return info.get("op") == "rewrite" and isinstance(info.get("temp"), str)


def _read(fd: int) -> bytes:
    data = _platform.pread(fd, _READ, 0)
    if len(data) == _READ:  # a large record: read all of it
        data = _files.pread_all(fd, os.fstat(fd).st_size, 0)
    return data


class Journal:
    """The journal of one index, open for reading and writing.

    Parameters
    ----------
    fd : int
        Read-write descriptor of the journal file.
    path : str
        Its path, for messages.

    Attributes
    ----------
    fine_times_dev : int or None
        The device on which the journal found that two quick changes to a
        file get different modification times
        (:func:`._files.times_tell_changes`, checked when it is opened);
        None if they may not.
    """

    __slots__ = ("fd", "fine_times_dev", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.fine_times_dev = os.fstat(fd).st_dev if _files.times_tell_changes(fd) else None

    def read(self) -> Record | None:
        """The operation recorded last (an append also once finished), unless marked done."""
        return _parse(_read(self.fd), self.path)

    def write(self, record: bytes, durable: bool, payload: bytes = b"") -> None:
        """Record an operation about to start (one line, no newline, then data)."""
        self._write(MAGIC + _ACTIVE + record + b"\n" + payload)
        if durable:
            os.fsync(self.fd)

    def write_finished(self, record: bytes) -> None:
        """Record an append just made (:func:`finished_record`), replacing its active record.

        Not synced to disk even for durable writers: after a power cut, an
        active record for an append the file holds whole undoes nothing.
        """
        self._write(MAGIC + _FINISHED + record + b"\n")

    def mark_done(self) -> None:
        """Mark the recorded operation over: finished and nothing more to know, or undone."""
        self._write(MAGIC + _DONE)

    def _write(self, data: bytes) -> None:
        """Write ``data`` at the start; an error names the journal (not the index)."""
        try:
            _files.write_all(self.fd, data, 0)
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, self.path) from e

    def mark_done_quietly(self) -> None:
        """:meth:`mark_done`, logging instead of raising: the operation itself is over."""
        try:
            self.mark_done()
        except OSError as e:  # pragma: no cover - needs a failing pwrite
            logger.warning("could not update the crash journal %s: %s", self.path, e)


def read_journal(path: str) -> Record | None:
    """The unfinished operation in the journal at ``path``, read-only; None if none."""
    try:
        fd = os.open(path, os.O_RDONLY | _platform.O_BINARY)
    except OSError:
        return None
    try:
        return _parse(_read(fd), path)
    finally:
        os.close(fd)


def append_record(dev: int, ino: int, start: int, data: bytes) -> tuple[bytes, bytes]:
    """The record and payload for appending ``data`` at ``start`` to the file (dev, ino)."""
    crcs = ""
    if len(data) > HEAD:
        view = memoryview(data)
        cuts = [*_page_ends(start + HEAD, start + len(data)), start + len(data)]
        bounds = zip([start + HEAD, *cuts], cuts, strict=False)  # one start more than ends
        chunks = (view[a - start : b - start] for a, b in bounds)
        crcs = ',"crc_pages":[' + ",".join(str(zlib.crc32(c)) for c in chunks) + "]"
    head = data[:HEAD]
    record = (
        f'{{"op":"append","dev":{dev},"ino":{ino},"offset":{start},"length":{len(data)},'
        f'"head":{len(head)}{crcs},{_who()}}}'
    )
    return record.encode(), head


def finished_record(
    dev: int, ino: int, start: int, length: int, mtime_before: int, mtime: int
) -> bytes:
    """The record of an append of ``length`` bytes at ``start`` just finished.

    ``mtime_before`` and ``mtime``: the file's modification times (ns) just
    before and just after the append.
    """
    return (
        f'{{"op":"append","dev":{dev},"ino":{ino},"offset":{start},"length":{length},'
        f'"mtime_before":{mtime_before},"mtime":{mtime},{_who()}}}'
    ).encode()


def rewrite_record(temp: str) -> bytes:
    """The record for rewriting the index through the temporary file ``temp``."""
    return (f'{{"op":"rewrite","temp":{json.dumps(temp)},{_who()}}}').encode()


def _who() -> str:
    return f'{_WHO[0]},"time":{time.time():.3f}'


def torn_append_start(
    record: Record | None,
    fd: int,
    st: os.stat_result,
    others: Iterable[Record | None] = (),
) -> int | None:
    """Where the append a crash cut short starts, if the file open as ``fd`` shows one.

    Only when ``record`` is an append to this very file (``st``), the file has
    grown past its offset but not by its whole length, and those bytes are
    provably the start of it. None otherwise, and also when ``others`` (what
    the index's journal in its other place holds) shows the record stale
    (:func:`superseded`).
    """
    if record is None or record.op != "append" or record.finished:
        return None
    info = record.info
    start, length = info.get("offset", -1), info.get("length", 0)
    if not record.of_file(st):
        return None
    if not (isinstance(start, int) and start < st.st_size < start + length):
        return None
    if superseded(record, others, st):
        return None
    if not _is_ours(fd, start, st.st_size, record.head, info.get("crc_pages", [])):
        logger.warning(
            "not undoing the write cut short by a crash at byte %d: "
            "another program has changed the file since",
            start,
        )
        return None
    return start


def finished_at_end(record: Record | None, st: os.stat_result) -> bool:
    """Whether ``record`` is a finished append to the file ``st`` describes, ending it."""
    if record is None or not record.finished or not record.of_file(st):
        return False
    return bool(record.info.get("offset", -1) + record.info.get("length", 0) == st.st_size)


def superseded(record: Record, others: Iterable[Record | None], st: os.stat_result) -> bool:
    """Whether a finished append among ``others`` shows the active ``record`` stale.

    An index's journal may be kept in two places (next to the index, and
    next to the lock file for a writer that may not write the first), so a
    record in one may be older than one in the other. An append to the file
    that finished where the file ends, or that started at or after the
    record's offset, came after it: the next lock holder undoes a torn
    append before it appends. The record's writer is gone and what it left
    was dealt with, and the bytes at its offset are now rows that were
    acknowledged.
    """
    offset = record.info.get("offset", -1)
    for other in others:
        if other is not None and other.finished and other.of_file(st) and (
            finished_at_end(other, st) or other.info.get("offset", -1) >= offset
        ):
            return True
    return False


def _is_ours(fd: int, start: int, size: int, head: bytes, crcs: list[int]) -> bool:
    """Whether the bytes from ``start`` to ``size`` are provably the start of our append.

    They are checked against the record: the first :data:`HEAD` bytes
    exactly, each later chunk (ending at a multiple of :data:`HEAD`) by its
    CRC-32, and the end must be within the head or at a chunk's end: bytes
    after the last whole chunk cannot be checked, and may be another
    program's (a row appended after the crash). Anything else means another
    program (med-imagetools rewrites the index in place, ignoring the
    journal) has written since, and nothing may be cut.
    """
    k = min(size - start, len(head))
    if not head or _files.pread_all(fd, k, start) != head[:k]:
        return False
    pos = start + len(head)
    for crc, end in zip(crcs, _page_ends(pos, size + 1), strict=False):
        if pos >= size:
            break
        if zlib.crc32(_files.pread_all(fd, end - pos, pos)) != crc:
            return False
        pos = end
    return pos >= size


def _page_ends(begin: int, stop: int) -> range:
    """The multiples of :data:`HEAD` after ``begin`` and before ``stop``."""
    return range((begin // HEAD + 1) * HEAD, stop, HEAD)


def recover(
    void: Callable[[], object],
    record: Record | None,
    index_fd: int,
    st: os.stat_result,
    where: str,
    others: Iterable[Record | None] = (),
) -> bool:
    """Undo what a writer that died with the lock left unfinished.

    ``record`` is what a journal of the index holds, ``void`` marks it done
    there, ``others`` is what the index's journal in its other place holds
    (see :func:`torn_append_start`), ``index_fd`` the index, open for
    writing, and ``st`` its ``fstat``. A torn append is truncated away; a
    rewrite's temporary file is removed. Returns whether the index itself
    changed.
    """
    if record is None:
        return False
    changed = False
    start = torn_append_start(record, index_fd, st, others)
    if start is not None:
        os.ftruncate(index_fd, start)
        changed = True
        logger.warning(
            "rolled back a write to %s cut short by a crash (%d of %d bytes had been written)",
            where,
            st.st_size - start,
            record.info["length"],
        )
    elif record.op == "rewrite":
        temp = record.info["temp"]
        if not _is_temp_of(temp, where):
            logger.warning(
                "not removing %r, named by the crash journal of %s: not a temporary "
                "file of that index",
                temp,
                where,
            )
            temp = ""
        try:
            if temp:
                os.unlink(temp)
                logger.warning(
                    "removed %s, left by a rewrite of %s cut short by a crash", temp, where
                )
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("could not remove %s, left by a crashed rewrite: %s", temp, e)
    if record.op == "rewrite" or changed or (record.of_file(st) and not record.finished):
        # Seen by the lock's holder, an active record of an append to this
        # file has lost its writer: the append was undone here, or is whole,
        # or wrote nothing, or is stale, or cannot be told from what others
        # wrote since. Void it, so that it is not matched against rows
        # appended later. (A record for another file stays: a journal kept
        # next to a shared lock file may be another index's.)
        void()
    return changed


def void_journal_file(path: str) -> None:
    """Mark the record in the journal file at ``path`` done, if this process may write it.

    For the index's journal in its other place (:func:`open_journal`),
    which may be another user's: one this process may not write keeps its
    record (:func:`superseded` tells it stale once it is).
    """
    try:
        fd = _open_existing(path)
    except OSError as e:
        logger.debug("cannot void the crash journal %s: %s", path, e)
        return
    try:
        _files.write_all(fd, MAGIC + _DONE, 0)
    except OSError as e:  # pragma: no cover - needs a failing pwrite
        logger.warning("could not update the crash journal %s: %s", path, e)
    finally:
        os.close(fd)


def _is_temp_of(temp: str, index: str) -> bool:
    """Whether ``temp`` can be a temporary file of a rewrite of ``index``.

    Recovery removes the file a rewrite's record names; a record is only
    trusted that far if the name is one :func:`._files.new_temp_name` gives:
    hidden, ending in ``.tmp``, in the index's own directory (by identity:
    another writer may spell it differently, through a bind mount, say).
    """
    head, name = os.path.split(temp)
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    try:
        return os.path.samefile(head or ".", os.path.dirname(index) or ".")
    except OSError:
        return False


def cut_utf8_tail(fd: int, size: int) -> int | None:
    """Where the last line starts, if the file ends in the middle of a UTF-8 character.

    Only a lead byte followed by fewer continuation bytes than it announces,
    at the very end of a last line that has no terminator, counts: what a
    write cut inside a character leaves. None otherwise.

    Examples
    --------
    >>> import os, tempfile
    >>> fd, path = tempfile.mkstemp()
    >>> _ = os.write(fd, "path\\na,\\u00e9\\nb,\\u00e9".encode()[:-1])
    >>> cut_utf8_tail(fd, os.fstat(fd).st_size)
    10
    >>> os.close(fd); os.unlink(path)
    """
    if size == 0:
        return None
    tail = _files.pread_all(fd, min(size, 4), size - min(size, 4))
    for back in range(1, min(len(tail), 3) + 1):
        lead = tail[-back]
        if 0x80 <= lead < 0xC0:
            continue  # a continuation byte: look further back for its lead byte
        need = 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead < 0xF5 else 0
        if not (0xC2 <= lead < 0xF5) or back >= need:
            return None  # ASCII, an invalid lead, or a complete character
        lo = max(0, size - back - (1 << 16))
        data = _files.pread_all(fd, size - back - lo, lo)
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        return lo + cut + 1 if cut >= 0 or lo == 0 else None
    return None


def open_journal(index: str, lock_path: str, st: os.stat_result) -> tuple[int, str]:
    """Open the index's crash journal: next to the index, else next to the lock file.

    The journal belongs next to the index, where every writer finds it
    whatever lock file it uses; a writer that may not create files in the
    index's directory keeps it next to its lock file instead. An existing
    journal in either place wins, so all writers converge on one. A new one
    gets the index's permission bits (and, made by root, its owner), so every
    user who may write the index may write its journal.
    """
    places = (journal_path(index), journal_beside_lock(lock_path, index))
    for path in places:
        try:
            return _open_existing(path), path
        except FileNotFoundError:
            continue
        except PermissionError:
            # Made by a user whose journal we may not write (the index's mode
            # changed since): keep ours in the other place; recovery reads both.
            if path == places[-1]:
                raise
            logger.debug("cannot open %s for writing; trying next to the lock file", path)
    for path in places:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _platform.O_BINARY, 0o600)
        except FileExistsError:
            if path == places[0]:
                continue  # there, but not ours to write (see above): the other place
            return _open_existing(path), path
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or path == places[-1]:
                raise
            logger.debug("cannot create %s (%s); trying next to the lock file", path, e)
            continue
        _platform.copy_ownership(fd, st)
        return fd, path
    raise AssertionError("unreachable")  # pragma: no cover


def _open_existing(path: str) -> int:
    """Open the existing journal at ``path`` for writing, if it is one.

    Only a regular file that is empty or starts as a journal does: records
    are written over the start of the file, so anything else at that name --
    a symbolic link planted in a shared directory, a user's file -- is left
    alone and reported, never overwritten.
    """
    try:
        fd = os.open(path, os.O_RDWR | _platform.O_BINARY | _platform.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.EEXIST, "a symbolic link is where the crash journal belongs; "
                          "remove it", path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        start = _platform.pread(fd, len(MAGIC), 0) if stat.S_ISREG(mode) else b"?"
    except BaseException:
        os.close(fd)
        raise
    family = MAGIC[: MAGIC.index(b"journal ") + len(b"journal ")]  # any version
    if start and not (start.startswith(family) or family.startswith(start)):
        os.close(fd)
        raise OSError(errno.EEXIST, "a file that is not an index-writer crash journal is "
                      "where the journal belongs; move it away", path)
    return fd


def journal_name(index_path: str) -> str:
    """The crash journal's file name for the index at ``index_path``.

    ``.NAME.journal``, hidden next to the index (shortened for a name too long
    for the filesystem).

    Examples
    --------
    >>> journal_name("/data/out/index.csv")
    '.index.csv.journal'
    """
    directory, name = os.path.split(index_path)
    return _files.sidecar_name(name, "journal", hidden=True, directory=directory)


def journal_beside_lock(lock_path: str, index: str) -> str:
    """The journal a writer keeps next to its lock file for ``index`` (see :func:`open_journal`).

    One per index, since indexes may share a lock file: the lock file's
    name, a tag made from the index's resolved path, ``.journal``.

    Examples
    --------
    >>> name = os.path.basename(journal_beside_lock("/locks/shared.lock", "/data/a/index.csv"))
    >>> name.startswith(".shared.lock.") and name.endswith(".journal"), len(name)
    (True, 33)
    """
    tag = hashlib.blake2b(os.fsencode(os.path.realpath(index)), digest_size=6).hexdigest()
    directory, name = os.path.split(os.path.realpath(lock_path))
    return os.path.join(
        directory, _files.sidecar_name(f"{name}.{tag}", "journal", hidden=True, directory=directory)
    )


def journal_path(path: str) -> str:
    """The journal file that belongs next to ``path`` (an index or a lock file).

    Next to the file itself: symbolic links in ``path`` are resolved.
    """
    real = os.path.realpath(path)
    return os.path.join(os.path.dirname(real), journal_name(real))
