"""What this process knows about an index file, and keeping it up to date cheaply.

An :class:`IndexState` holds an index's identity (device and inode), size,
modification time, header, line count, whether it ends with a line
terminator, its first and last bytes, and -- once ``replace_existing`` needs
it -- where each path's row starts (:class:`._paths.PathOffsets`). States are
kept per process between calls (:func:`refresh` finds and updates them), so
a write costs the same at a million rows as at a thousand:

- unchanged file (same inode, size and mtime): nothing to read;
- longer file with the same first and last known bytes: another writer
  appended; only the new bytes are read and checked;
- anything else (a new inode, a shorter file, changed bytes, a same-size
  file with a new mtime): the whole file is read and checked again.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import BinaryIO

from . import _files, _platform
from ._paths import PathOffsets
from ._rows import Row
from ._table import Header, Scanner, TableError, read_header, skim, too_wide

__all__ = ["IndexState", "count_lines", "forget_all", "read_rows", "refresh"]

#: How many bytes at the start and the end of the file are compared to detect
#: a rewrite by another program before trusting what we know about the file.
HEAD_BYTES = 256
TAIL_BYTES = 64


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
    """

    __slots__ = (
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
        self.lines = lines
        self.ends_clean = ends_clean
        self.head = head
        self.tail = tail
        self.paths_column = paths_column
        self.paths = paths

    def set_columns(self, columns: list[str]) -> None:
        """The header's columns are now ``columns``."""
        self.header.columns = list(columns)
        self.colpos = {c: i for i, c in enumerate(columns)}

    def note_append(self, data: bytes, text: str, mtime_ns: int) -> None:
        """Advance past ``data`` (``text`` encoded), just appended by us."""
        self.size += len(data)
        self.mtime_ns = mtime_ns
        self.lines += count_lines(text)
        self.ends_clean = True
        self._note_bytes(data)

    def _note_bytes(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-TAIL_BYTES:]
        if len(self.head) < HEAD_BYTES:
            self.head = (self.head + data)[:HEAD_BYTES]


_states: dict[tuple[str, str], IndexState] = {}


def _forget_after_fork() -> None:
    # Another thread may have been half-way through updating an entry at fork.
    global _states
    _states = {}


_platform.register_after_fork(_forget_after_fork)


def forget_all() -> None:
    """Forget every index, as a new process would."""
    _states.clear()


def forget(key: tuple[str, str]) -> None:
    """Forget one index (it was replaced by other means)."""
    _states.pop(key, None)


def remember(key: tuple[str, str], state: IndexState) -> None:
    """Keep ``state`` as what is known about the index ``key``."""
    _states[key] = state


def refresh(
    key: tuple[str, str], fd: int, st: os.stat_result, paths_column: str | None
) -> IndexState:
    """Bring what we know about the index open as ``fd`` up to date, cheaply.

    ``st`` is the file's current ``fstat``. With ``paths_column``, the state
    also maps the paths of that column.

    Raises
    ------
    TableError
        The file (or what was appended to it) is not a well-formed index.
    OSError
        Reading failed.
    """
    state = _states.pop(key, None)  # kept again only once up to date
    if state is not None and not _still_valid(state, fd, st):
        state = None
    if state is None or (paths_column is not None and state.paths_column != paths_column):
        state = _load(fd, st, paths_column)
    _states[key] = state
    return state


def _still_valid(state: IndexState, fd: int, st: os.stat_result) -> bool:
    """Whether ``state`` still describes the file, after reading what was appended."""
    if (state.dev, state.ino) != (st.st_dev, st.st_ino):
        return False
    if st.st_size == state.size and st.st_mtime_ns == state.mtime_ns:
        return True
    if not (
        st.st_size > state.size
        and state.ends_clean
        and state.header.columns
        and _platform.pread(fd, len(state.head), 0) == state.head
        and _platform.pread(fd, len(state.tail), state.size - len(state.tail)) == state.tail
    ):
        return False
    _read_appended(fd, state, st)
    return True


def _read_appended(fd: int, state: IndexState, st: os.stat_result) -> None:
    """Take in the rows other writers appended since we last looked."""
    data = _files.pread_all(fd, st.st_size - state.size, state.size)
    scanner = Scanner(io.BytesIO(data), state.size, state.lines)
    column = state.colpos.get(state.paths_column or "") if state.paths is not None else None
    _take_records(scanner.records(), len(state.header.columns), state.paths, column)
    state.size = scanner.offset
    state.lines = scanner.line
    state.ends_clean = scanner.last_eol != ""
    state.mtime_ns = st.st_mtime_ns
    state._note_bytes(data)


def _load(fd: int, st: os.stat_result, paths_column: str | None) -> IndexState:
    """Read and check the whole file."""
    f = open(fd, "rb", buffering=1 << 16, closefd=False)  # noqa: SIM115
    f.seek(0)
    header, scanner, records = read_header(f)
    columns = header.columns
    n = len(columns)
    paths = PathOffsets() if paths_column is not None else None
    column = columns.index(paths_column) if paths_column in columns else None
    if n:
        # Check the plain rows in bulk (and map their paths if asked).
        records.close()
        f.seek(scanner.offset)
        each = None
        if paths is not None and column is not None:
            mapped, at = paths, column

            def each(block: bytes, offset: int) -> None:
                mapped.add_plain_lines(block, offset, at)

        offset, line, eol = skim(f, scanner.offset, scanner.line, n, each)
        if offset == scanner.offset:
            eol = scanner.last_eol  # nothing skimmed: still after the header
        scanner = Scanner(f, offset, line)
        scanner.last_eol, scanner.consumed_any = eol, True
        records = scanner.records()
    _take_records(records, n, paths, column)
    size = scanner.offset
    head, tail = head_and_tail(fd, size)
    return IndexState(
        st,
        header,
        size=size,
        lines=scanner.line,
        ends_clean=scanner.last_eol != "" or not scanner.consumed_any,
        head=head,
        tail=tail,
        paths_column=paths_column,
        paths=paths,
    )


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


def stored_equals(fd: int, state: IndexState, offset: int, row: Row) -> bool:
    """Whether the row stored at ``offset`` already holds exactly ``row``."""
    want = 4096
    while True:
        data = _platform.pread(fd, want, offset)
        complete = offset + len(data) >= state.size
        try:
            scanner = Scanner(io.BytesIO(data), offset, 0)
            rec = next(scanner.records(), None)
            if rec is not None and (scanner.last_eol or complete):
                break
        except TableError:
            if complete:
                raise
        want *= 4
    assert rec is not None
    fields = rec[2]
    columns = state.header.columns
    fields += [""] * (len(columns) - len(fields))
    return fields == [row.get(c, "") for c in columns]


def read_rows(stream: BinaryIO) -> list[dict[str, str]]:
    """Every row of the index read from ``stream``, with every column.

    Raises
    ------
    TableError
        The file is not a well-formed index.
    """
    header, _, records = read_header(stream)
    columns = header.columns
    n = len(columns)
    out: list[dict[str, str]] = []
    for line, _, fields in records:
        if len(fields) > n:
            raise too_wide(line, len(fields), n)
        if len(fields) < n:
            fields += [""] * (n - len(fields))
        out.append(dict(zip(columns, fields, strict=True)))
    return out


def count_lines(text: str) -> int:
    """Physical lines in ``text`` as a ``newline=""`` stream splits them: CR LF, LF, CR."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")
