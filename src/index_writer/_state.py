"""What this process knows about an index file, and keeping it up to date cheaply.

An :class:`IndexState` holds an index's identity (device and inode), size,
modification time, header, line count, whether it ends with a line
terminator, its first and last bytes, and -- once ``replace_existing`` needs
it -- where each path's row starts (:class:`._paths.PathOffsets`). It lives
on the index's :class:`._handles.IndexSlot` between calls, and
:func:`refresh` brings it up to date at the start of each write:

- unchanged file (same inode, size and modification time): nothing is read;
- otherwise the crash journal is consulted first (:func:`._journal.recover`
  undoes an append a crash cut short); then, for a longer file whose last
  known bytes are unchanged, only the appended bytes are read and checked
  (plus the first bytes, unless the journal's finished record shows that
  the growth is exactly one append by one of our writers, to the file as
  this process knew it, with nothing changed since, and the filesystem's
  times are fine enough to show it; if it shows the file changed in place
  around that append, the whole file is read);
- anything else (a new inode, a shorter file, changed bytes, a same-size
  file with a new time): the whole file is read and checked again.

A file whose last record has no line terminator and cannot be a row (an
unclosed quote, a cut UTF-8 character) holds a write cut short with no
journal to undo it: writers move those bytes aside into a file next to the
index, readers stop before them (:func:`incomplete_tail`).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from . import _files, _journal, _platform
from ._handles import IndexSlot
from ._lock import Session
from ._paths import PathOffsets
from ._table import Header, Scanner, TableError, read_header, skim, too_wide

__all__ = [
    "IndexState",
    "count_lines",
    "incomplete_tail",
    "iter_rows",
    "read_ahead",
    "recover",
    "refresh",
    "stored_record",
    "stored_row",
]

logger = logging.getLogger(__name__)

#: How many bytes at the start and the end of the file are compared to detect
#: a rewrite by another program before trusting what we know about the file.
HEAD_BYTES = 256
TAIL_BYTES = 64
#: Where a file's times move with a clock tick, a change in the tick of the
#: last one seen goes unseen; once its time is this much older than the
#: clock, a later change would show (ticks are at most a second, even for
#: NFS servers with whole-second times).
_SETTLED_NS = 2_000_000_000
#: A writer waiting for the lock reads at most this many bytes ahead per
#: attempt (:func:`read_ahead`), and keeps at most :data:`AHEAD_MAX` unverified.
AHEAD_STEP = 1 << 18
AHEAD_MAX = 1 << 24


class Ahead:
    """Rows read ahead, without the lock, after the end of an :class:`IndexState`.

    Attributes
    ----------
    blocks : list[bytes]
        The bytes read, in order: whole lines, starting at the state's size.
    size : int
        Their total length.
    lines : int
        The physical lines they hold.
    mismatched : bool
        Under the lock, the file turned out not to hold these bytes.
    """

    __slots__ = ("blocks", "lines", "mismatched", "size")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.size = 0
        self.lines = 0
        self.mismatched = False


class IndexState:
    """What this process knows about one index file, valid while it is unchanged.

    Attributes
    ----------
    dev, ino : int
        The file's identity.
    size, mtime_ns : int
        Its size and modification time when last seen.
    header : Header
        Columns, byte-order mark and line terminator.
    colpos : dict[str, int]
        Column name to position.
    lines : int
        Physical lines up to ``size``.
    ends_clean : bool
        The file ends with a line terminator (or is empty).
    head, tail : bytes
        Its first :data:`HEAD_BYTES` and last :data:`TAIL_BYTES` bytes.
    paths_column : str | None
        The column ``paths`` maps, if any.
    paths : PathOffsets | None
        Where each path's row starts; built once ``replace_existing`` needs it.
    schema : tuple
        ``(columns, line terminator)`` as an immutable pair, replaced (never
        changed) when the header changes: what a write planned before taking
        the lock checks it planned for.
    settled : bool
        The file was last seen unchanged, with its first bytes as known, long
        enough after its modification time that a change since would show in
        the time even where times move with a clock tick.
    ahead : Ahead | None
        Rows read (and their paths mapped) while waiting for the lock, not
        yet found in the file under the lock (:func:`read_ahead`).
    """

    __slots__ = (
        "ahead",
        "colpos",
        "dev",
        "ends_clean",
        "head",
        "header",
        "ino",
        "lines",
        "mtime_ns",
        "paths",
        "paths_column",
        "schema",
        "settled",
        "size",
        "tail",
    )

    def __init__(
        self,
        st: os.stat_result,
        header: Header,
        *,
        size: int,
        lines: int,
        ends_clean: bool,
        head: bytes,
        tail: bytes,
        paths_column: str | None = None,
        paths: PathOffsets | None = None,
    ) -> None:
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.mtime_ns = st.st_mtime_ns
        self.size = size
        self.header = header
        self.colpos = {c: i for i, c in enumerate(header.columns)}
        self.schema = (tuple(header.columns), header.eol)
        self.lines = lines
        self.ends_clean = ends_clean
        self.head = head
        self.tail = tail
        self.paths_column = paths_column
        self.paths = paths
        self.settled = False
        self.ahead: Ahead | None = None

    def unchanged(self, st: os.stat_result) -> bool:
        """Whether ``st`` shows the very file this state describes, untouched."""
        return (
            st.st_size == self.size
            and st.st_mtime_ns == self.mtime_ns
            and st.st_ino == self.ino
            and st.st_dev == self.dev
        )

    def set_columns(self, columns: list[str]) -> None:
        """The header's columns are now ``columns``."""
        self.header.columns = list(columns)
        self.colpos = {c: i for i, c in enumerate(columns)}
        self.schema = (tuple(columns), self.header.eol)

    def note_append(self, data: bytes, text: str, mtime_ns: int) -> None:
        """Advance past ``data`` (``text`` encoded), just appended by us."""
        self.size += len(data)
        self.mtime_ns = mtime_ns
        self.settled = False
        self.lines += count_lines(text)
        self.ends_clean = True
        self._note_bytes(data)

    def _note_bytes(self, data: bytes) -> None:
        if len(data) >= TAIL_BYTES:
            self.tail = data[-TAIL_BYTES:]
        else:
            self.tail = (self.tail + data)[-TAIL_BYTES:]
        if len(self.head) < HEAD_BYTES:
            self.head = (self.head + data)[:HEAD_BYTES]


def refresh(s: Session, paths_column: str | None) -> IndexState:
    """Bring what is known about the locked index up to date, cheaply (writers).

    With ``paths_column``, the state also maps the paths of that column.
    Updates ``s.st`` if the file had to be changed (a torn write undone or
    moved aside).

    Raises
    ------
    TableError
        The file (or what was appended to it) is not a well-formed index.
    OSError
        Reading failed.
    """
    slot = s.slot
    state = slot.state
    assert s.st is not None and s.journal is not None
    if (
        state is not None
        and state.unchanged(s.st)
        and state.ahead is None
        and (paths_column is None or state.paths_column == paths_column)
        and (s.st.st_dev == s.journal.fine_times_dev or _first_bytes_unchanged(s.fd, state))
    ):
        return state
    slot.state = None  # kept again only once up to date
    record = recover(s)
    if s.st.st_size < (state.size if state is not None else 0):
        state = None
    for _ in range(2):
        try:
            if (
                state is not None
                and paths_column in (None, state.paths_column)
                and _read_appended(s.fd, state, s.st, record, s.journal.fine_times_dev)
            ):
                break
            if state is not None and state.ahead is not None and state.ahead.mismatched:
                slot.reads_ahead = False  # what it read was not what the file holds
            state = _load(s.fd, s.st, paths_column)
            break
        except TableError as e:
            start = incomplete_tail(e, s.fd, s.st.st_size)
            if start is None:
                raise
            _move_aside(s.fd, start, s.st.st_size, s.path)
            s.st = os.fstat(s.fd)
            state = None
    assert state is not None
    slot.state = state
    return state


def _first_bytes_unchanged(fd: int, state: IndexState) -> bool:
    """Whether the file's first bytes are still as ``state`` knows them (coarse times).

    Where times move with a clock tick, another program's rewrite to the same
    size within the tick of the last change seen (med-imagetools' writer,
    sorting the columns) leaves size and time as they were: the header is
    read again, unless the state is settled (see :attr:`IndexState.settled`).
    """
    if state.settled:
        return True
    if _platform.pread(fd, len(state.head), 0) != state.head:
        return False
    state.settled = time.time_ns() - state.mtime_ns > _SETTLED_NS
    return True


def recover(s: Session) -> _journal.Record | None:
    """Undo what a writer killed with the lock held left unfinished (writers).

    Returns the record our journal held. Updates ``s.st`` if the file changed.
    """
    assert s.journal is not None and s.st is not None
    record = s.journal.read()
    other_path = s.slot.other_journal
    other = None
    if other_path and not _journal.finished_at_end(record, s.st):
        # The end of the file is not known to be our journal's doing: a writer
        # that could not use ours may have kept its journal in the other place.
        other = _journal.read_journal(other_path)
    changed = _journal.recover(s.journal.mark_done, record, s.fd, s.st, s.path, (other,))
    if not changed and other is not None:
        changed = _journal.recover(
            lambda: _journal.void_journal_file(other_path), other, s.fd, s.st, s.path, (record,)
        )
    if changed:
        s.st = os.fstat(s.fd)
        s.slot.state = None
        return None
    return record


def _read_appended(
    fd: int,
    state: IndexState,
    st: os.stat_result,
    record: _journal.Record | None,
    fine_times_dev: int | None,
) -> bool:
    """Take in the rows appended since ``state``; False if the file changed otherwise.

    The appended bytes are read together with the last known ones, which
    must be unchanged. The file's first bytes must be unchanged too, unless
    ``record`` (the journal's) shows that the growth is exactly one append by
    one of our writers, made to the file as ``state`` knows it and the last
    change since (:func:`_one_append_since`), on a filesystem whose times are
    known to be finer than a clock tick (``fine_times_dev``, the journal's
    finding). If the record shows that another program rewrote the file in
    place, to the same size, before or after that append, the file is read
    afresh.
    """
    if not (
        (state.dev, state.ino) == (st.st_dev, st.st_ino)
        and st.st_size > state.size
        and state.ends_clean
        and state.header.columns
    ):
        return False
    one_append = _one_append_since(record, state, st)
    if one_append is False:
        return False
    if st.st_dev != fine_times_dev:
        one_append = None  # equal times may hide a change made in the same clock tick
    known = len(state.tail)
    data = _files.pread_all(fd, st.st_size - state.size + known, state.size - known)
    if data[:known] != state.tail:
        return False
    if one_append is None and _platform.pread(fd, len(state.head), 0) != state.head:
        return False
    data = data[known:]
    start, lines, ahead = state.size, state.lines, state.ahead
    if ahead is not None:
        if data[: ahead.size] != b"".join(ahead.blocks):
            ahead.mismatched = True
            return False
        start += ahead.size
        lines += ahead.lines
    column = state.colpos.get(state.paths_column or "") if state.paths is not None else None
    size, lines, eol = _check_rows(
        io.BytesIO(data[start - state.size :]), start, lines, len(state.header.columns),
        state.paths, column, "\n", st.st_size,
    )
    state.ahead = None
    state.size = size
    state.lines = lines
    state.ends_clean = eol != ""
    state.mtime_ns = st.st_mtime_ns
    state.settled = False
    state._note_bytes(data)
    return True


def read_ahead(slot: IndexSlot) -> None:
    """Check the rows other writers append while this one waits for the lock.

    Called between attempts to take the lock file (the ``idle`` of
    :func:`._lock.run_locked`), with the index's in-process mutex held. On a
    busy index the lock holder keeps one core busy and the waiters sleep; a
    waiter uses that time to read what was appended since its state, check
    it and map its paths, so that once it holds the lock only the bytes are
    compared (:func:`_read_appended`) instead of checked and mapped again.

    Only whole plain lines are taken (see :func:`._table.skim`); nothing is
    trusted until found unchanged under the lock. If the bytes differ (a
    write rolled back, another program's change), the whole file is read
    again, and the slot reads ahead no more. Errors reading leave things as
    they were: the locked path reads and reports them.
    """
    state, fd = slot.state, slot.index_fd
    if state is None or fd < 0 or not slot.reads_ahead:
        return
    if not state.ends_clean or not state.header.columns:
        return
    ahead = state.ahead or Ahead()
    if ahead.size >= AHEAD_MAX:
        return
    start = state.size + ahead.size
    try:
        size = os.fstat(fd).st_size
        if size <= start:
            return
        data = _platform.pread(fd, min(size - start, AHEAD_STEP), start)
    except OSError:
        return
    data = data[: data.rfind(b"\n") + 1]
    if not data:
        return
    column = state.colpos.get(state.paths_column or "") if state.paths is not None else None
    try:
        end, lines, _ = skim(
            io.BytesIO(data), start, state.lines + ahead.lines, len(state.header.columns),
            _mapper(state.paths, column),
        )
    except BaseException:
        slot.state = None  # paths may be mapped for part of it: read afresh
        raise
    if end > start:
        ahead.blocks.append(data[: end - start])
        ahead.size += end - start
        ahead.lines = lines - state.lines
        state.ahead = ahead


def _one_append_since(
    record: _journal.Record | None, state: IndexState, st: os.stat_result
) -> bool | None:
    """Whether the file's growth since ``state`` is exactly the append ``record`` finished.

    None when the record cannot tell: it is not a finished append that
    starts where ``state`` ends and ends where the file ends (several appends
    since), or it keeps no times (written by an older version). Otherwise
    True if the append was made to the file as ``state`` knows it (same
    modification time) and the file is still as it left it; False if
    another program changed the file in place, to the same size, before or
    after the append.
    """
    if record is None or not record.finished:
        return None
    info = record.info
    before, after = info.get("mtime_before"), info.get("mtime")
    if not (
        isinstance(before, int)
        and isinstance(after, int)
        and record.of_file(st)
        and info.get("offset") == state.size
        and info.get("offset", 0) + info.get("length", 0) == st.st_size
    ):
        return None
    return before == state.mtime_ns and after == st.st_mtime_ns


def _load(fd: int, st: os.stat_result, paths_column: str | None) -> IndexState:
    """Read and check the whole file."""
    f = io.BufferedReader(_files.BoundedReader(fd, st.st_size), 1 << 16)
    header, scanner, records = read_header(f)
    columns = header.columns
    n = len(columns)
    paths = PathOffsets() if paths_column is not None else None
    column = columns.index(paths_column) if paths_column in columns else None
    if n:
        records.close()
        f.seek(scanner.offset)
        size, lines, eol = _check_rows(
            f, scanner.offset, scanner.line, n, paths, column, scanner.last_eol, st.st_size
        )
        ends_clean = eol != "" or not scanner.consumed_any
    else:
        _take_records(records, n, paths, column)
        size, lines = scanner.offset, scanner.line
        ends_clean = scanner.last_eol != "" or not scanner.consumed_any
    head, tail = head_and_tail(fd, size)
    return IndexState(
        st,
        header,
        size=size,
        lines=lines,
        ends_clean=ends_clean,
        head=head,
        tail=tail,
        paths_column=paths_column,
        paths=paths,
    )


def _check_rows(
    stream: BinaryIO,
    offset: int,
    line: int,
    ncols: int,
    paths: PathOffsets | None,
    column: int | None,
    eol: str,
    end: int,
) -> tuple[int, int, str]:
    """Check the records from ``stream`` (at ``offset``, after ``line`` lines) to ``end``.

    Plain rows are checked in bulk (:func:`._table.skim`, C speed), the rest
    parsed; their paths are mapped if asked. ``eol`` ends the line before
    ``offset``. Returns the end's offset and line count, and the last line's
    terminator ("" if it has none).
    """
    start = offset
    offset, line, skimmed_eol = skim(stream, offset, line, ncols, _mapper(paths, column))
    if offset > start:
        eol = skimmed_eol
    if offset >= end:
        return offset, line, eol
    scanner = Scanner(stream, offset, line)
    _take_records(scanner.records(), ncols, paths, column)
    if scanner.consumed_any:
        eol = scanner.last_eol
    return scanner.offset, scanner.line, eol


def _mapper(
    paths: PathOffsets | None, column: int | None
) -> Callable[[bytes, int], None] | None:
    """What files the paths of :func:`._table.skim`'s blocks in ``paths``, if any."""
    if paths is None or column is None:
        return None
    mapped, at = paths, column

    def each(block: bytes, offset: int) -> None:
        mapped.add_plain_lines(block, offset, at)

    return each


def _take_records(
    records: Iterable[tuple[int, int, list[str]]],
    ncols: int,
    paths: PathOffsets | None,
    column: int | None,
) -> None:
    """Check parsed records against the header; map their paths if asked."""
    for line, start, fields in records:
        if len(fields) > ncols:
            raise too_wide(line, len(fields), ncols)
        if paths is not None and column is not None and column < len(fields):
            paths.add(fields[column], start)


def head_and_tail(fd: int, size: int) -> tuple[bytes, bytes]:
    """The first and last bytes of a file of ``size`` bytes, as a state keeps them."""
    head = _files.pread_all(fd, min(size, HEAD_BYTES), 0)
    tail = _files.pread_all(fd, min(size, TAIL_BYTES), max(0, size - TAIL_BYTES))
    return head, tail


def incomplete_tail(error: TableError, fd: int, size: int) -> int | None:
    """Where a provably incomplete last record starts, if ``error`` is about one.

    Provably incomplete: the file does not end with a line terminator, and
    the last record cannot be a row -- its quote never closes, or the file
    ends in the middle of a UTF-8 character. Such bytes are what a write cut
    short leaves; no program writes them on purpose. None for any other
    error (a byte that is not UTF-8 before the last line is a malformed
    file, refused: moving the last line aside would change the file and
    still leave it refused).
    """
    if size == 0 or _platform.pread(fd, 1, size - 1) in (b"\n", b"\r"):
        return None
    if error.kind == "unclosed-quote" and error.start is not None:
        return error.start
    if error.kind == "not-utf8" and error.offset is not None:
        start = _journal.cut_utf8_tail(fd, size)
        return start if start is not None and start <= error.offset else None
    return None


def _move_aside(fd: int, start: int, size: int, index: str) -> None:
    """Keep the bytes from ``start`` to the end in a file next to the index, then cut them."""
    directory, name = os.path.split(index)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    keep = os.path.join(directory, _files.sidecar_name(name, f"incomplete-{stamp}",
                                                       hidden=False, directory=directory))
    data = _files.pread_all(fd, size - start, start)
    out = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _platform.O_BINARY
                  | _platform.O_NOFOLLOW, 0o666)
    try:
        _files.write_all(out, data)
        os.fsync(out)
    finally:
        os.close(out)
    os.ftruncate(fd, start)
    logger.warning(
        "%s ended with an incomplete row (%d bytes, no line end: a write cut short); "
        "moved it to %s",
        index,
        size - start,
        keep,
    )


def stored_row(fd: int, state: IndexState, offset: int) -> list[str]:
    """The fields of the row stored at ``offset`` of the index open as ``fd``."""
    return stored_record(fd, state, offset)[0]


def stored_record(fd: int, state: IndexState, offset: int) -> tuple[list[str], bytes]:
    """The fields of the row stored at ``offset``, and its bytes.

    The bytes run to just after its line terminator (or to the end of the
    data). A row that is not there reads as no fields; one that does not
    start right at ``offset`` (blank lines first) as no bytes.
    """
    want = 4096
    while True:
        data = _platform.pread(fd, want, offset)
        complete = offset + len(data) >= state.size
        try:
            scanner = Scanner(io.BytesIO(data), offset, 0)
            rec = next(scanner.records(), None)
            # A CR at the very end of what was read may be the first half of CR LF.
            cut = scanner.last_eol == "\r" and scanner.offset == offset + len(data)
            if rec is not None and ((scanner.last_eol and not cut) or complete):
                return rec[2], data[: scanner.offset - offset] if rec[1] == offset else b""
        except TableError:
            if complete:
                raise
        if complete:
            return [], b""
        want *= 4


def iter_rows(fd: int, end: int) -> tuple[list[str], Iterator[dict[str, str]]]:
    """The columns, and every row of the first ``end`` bytes of the index (readers).

    Rows have every column (missing values are ""). A provably incomplete
    last record (see :func:`incomplete_tail`) is left out.

    Raises
    ------
    TableError
        The file is not a well-formed index.
    """
    stream: BinaryIO = io.BufferedReader(_files.BoundedReader(fd, end), 1 << 16)
    header, _, records = read_header(stream)
    columns = header.columns
    return columns, _rows(columns, records, fd, end)


def _rows(
    columns: list[str], records: Iterator[tuple[int, int, list[str]]], fd: int, end: int
) -> Iterator[dict[str, str]]:
    n = len(columns)
    try:
        for line, _, fields in records:
            if len(fields) > n:
                raise too_wide(line, len(fields), n)
            if len(fields) < n:
                fields += [""] * (n - len(fields))
            yield dict(zip(columns, fields, strict=True))
    except TableError as e:
        if incomplete_tail(e, fd, end) is None:
            raise


def count_lines(text: str) -> int:
    """Physical lines in ``text`` as a ``newline=""`` stream splits them: CR LF, LF, CR."""
    if "\r" not in text:
        return text.count("\n")
    return text.count("\n") + text.count("\r") - text.count("\r\n")
