"""Carrying out a plan (:mod:`._plan`) on the locked index, crash-safe.

Each change is recorded in the crash journal (:mod:`._journal`) before the
index is touched:

- :func:`append` adds the plan's bytes with one write (undone on failure by
  :func:`._files.append`) and advances the process's
  :class:`._state.IndexState` past them. A finished append needs no mark in
  the journal: the file's size shows it finished.
- :func:`rewrite` streams the whole new file to a temporary file that
  replaces the index atomically (:func:`._files.replace`) and returns the
  state of the new file;
- :func:`replace_contents` is the same atomic replacement for maintenance
  tools that produce the new bytes themselves.

Before a rewrite starts, the index's modification time is bumped, so every
other writer sees a change and reads the journal on its next call: if the
rewrite is cut short, the next writer removes its temporary file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator

from . import _files, _platform
from ._journal import Journal, append_record, rewrite_record
from ._paths import PathOffsets
from ._plan import Append, Rewrite
from ._rows import encode
from ._state import IndexState, count_lines, head_and_tail
from ._table import BOM, Header, format_row, read_header

__all__ = ["append", "replace_contents", "rewrite"]


def append(
    fd: int, state: IndexState, journal: Journal, plan: Append, durable: bool
) -> Callable[[], None]:
    """Append ``plan.data`` to the index open as ``fd``, journaled.

    Returns the bookkeeping that advances ``state`` past the new rows: it
    needs no lock on the file, so the caller runs it once the file locks
    are released (:attr:`._lock.Session.after`).
    """
    start = state.size
    record, payload = append_record(state.dev, state.ino, start, plan.data)
    journal.write(record, durable, payload)
    _files.append(fd, plan.data, start, durable)
    mtime_ns = os.fstat(fd).st_mtime_ns
    return lambda: _note_append(state, plan, start, mtime_ns)


def _note_append(state: IndexState, plan: Append, start: int, mtime_ns: int) -> None:
    if not state.header.columns:
        state.set_columns(plan.columns)
    paths, column = state.paths, state.paths_column
    if paths is not None and column is not None and column in state.colpos:
        offset = start + _bytes_len(plan.lead)
        for row, text in zip(plan.rows, plan.texts, strict=True):
            paths.add(row.get(column, ""), offset)
            offset += _bytes_len(text)
    state.note_append(plan.data, plan.text, mtime_ns)


def rewrite(
    fd: int,
    state: IndexState,
    journal: Journal,
    plan: Rewrite,
    index: str,
    filepath_column: str,
    durable: bool,
) -> IndexState:
    """Replace the index open as ``fd`` (at path ``index``) by the file ``plan`` describes.

    Returns the state of the new file (its paths mapped if ``state``'s were).
    """
    stream = _RewriteStream(fd, state, plan, filepath_column)
    st = _replace(fd, journal, index, stream.chunks(), durable)
    new_fd = os.open(index, os.O_RDONLY | _platform.O_BINARY)
    try:
        head, tail = head_and_tail(new_fd, st.st_size)
    finally:
        os.close(new_fd)
    return IndexState(
        st,
        Header(list(plan.columns), state.header.bom, state.header.eol),
        size=st.st_size,
        lines=stream.lines,
        ends_clean=True,
        head=head,
        tail=tail,
        paths_column=stream.paths_column,
        paths=stream.paths,
    )


def replace_contents(
    fd: int,
    size: int,
    journal: Journal,
    index: str,
    produce: Callable[[int, int], Iterable[bytes] | None],
    durable: bool,
) -> bool:
    """Replace the index open as ``fd`` by what ``produce(fd, size)`` yields, atomically.

    ``produce`` reads the old file (``size`` bytes, with ``pread``) and
    returns the new file's bytes as an iterable of chunks, streamed to the
    new file as they come, or None to leave the file alone. Returns whether
    the file was replaced.
    """
    chunks = produce(fd, size)
    if chunks is None:
        return False
    _replace(fd, journal, index, chunks, durable)
    return True


def _replace(
    fd: int, journal: Journal, index: str, chunks: Iterable[bytes], durable: bool
) -> os.stat_result:
    """Journal, bump the old file's time, write the new one and rename it over."""
    like = os.fstat(fd)
    temp = _files.new_temp_name(index)
    journal.write(rewrite_record(temp), durable)
    _platform.touch(fd, index)  # others see a change, and so read the journal
    try:
        st = _files.replace(index, temp, chunks, like, durable)
    finally:
        journal.mark_done_quietly()
    _platform.mark_superseded(fd)  # a writer holding it open must look again
    return st


class _RewriteStream:
    """The new file's bytes, produced while reading the old one.

    Also counts its lines and, if the old state mapped paths, maps the new
    file's paths on the way.
    """

    def __init__(self, fd: int, state: IndexState, plan: Rewrite, filepath_column: str) -> None:
        self._fd = fd
        self._size = state.size
        self._plan = plan
        self._eol = state.header.eol
        self._bom = state.header.bom
        self._old_column = state.colpos.get(filepath_column)
        self._rows_in = [*plan.replacements.values(), *plan.appends]
        self.paths_column = state.paths_column if state.paths is not None else None
        self.paths = PathOffsets() if self.paths_column is not None else None
        cols = plan.columns
        self._paths_at = cols.index(self.paths_column) if self.paths_column in cols else None
        self.offset = 0
        self.lines = 0

    def _emit(self, fields: list[str]) -> bytes:
        text = format_row(fields, self._eol)
        data = encode(text, self._rows_in)
        if self.paths is not None and self._paths_at is not None:
            self.paths.add(fields[self._paths_at], self.offset)
        self.offset += len(data)
        self.lines += count_lines(text)
        return data

    def chunks(self) -> Iterator[bytes]:
        columns = self._plan.columns
        replacements = self._plan.replacements
        n = len(columns)
        head_text = format_row(columns, self._eol)
        head = (BOM if self._bom else b"") + head_text.encode("utf-8")
        self.offset = len(head)
        self.lines = count_lines(head_text)
        yield head
        f = io.BufferedReader(_files.BoundedReader(self._fd, self._size), 1 << 16)
        _, _, records = read_header(f)
        done: set[str] = set()
        old = self._old_column
        for _, _, fields in records:
            if old is not None and old < len(fields) and fields[old] in replacements:
                path = fields[old]
                if path not in done:
                    done.add(path)
                    yield self._emit([replacements[path].get(c, "") for c in columns])
                continue
            if len(fields) < n:
                fields += [""] * (n - len(fields))
            yield self._emit(fields)
        for row in self._plan.appends:
            yield self._emit([row.get(c, "") for c in columns])


def _bytes_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))
