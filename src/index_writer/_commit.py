"""Carrying out a plan (:mod:`._plan`) on the locked index, crash-safe.

Each change a crash could leave half done is recorded in the crash journal
(:mod:`._journal`) before the index is touched:

- :func:`append` adds the plan's bytes with one write (undone on failure by
  :func:`._files.append`) and advances the process's
  :class:`._state.IndexState` past them. A finished append is recorded
  finished in the journal before the lock is released (an append a kill
  cannot tear is recorded only then).
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

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterable, Iterator

from . import _files, _platform
from ._journal import Journal, append_record, finished_record, rewrite_record
from ._paths import PathOffsets
from ._plan import Append, Rewrite
from ._rows import encode
from ._state import IndexState, count_lines, head_and_tail, stored_record
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
    journaled = durable or not _platform.kill_cannot_tear(start, len(plan.data))
    if journaled:
        record, payload = append_record(state.dev, state.ino, start, plan.data)
        journal.write(record, durable, payload)
    try:
        _files.append(fd, plan.data, start, durable)
        try:
            mtime_ns = os.fstat(fd).st_mtime_ns
            journal.write_finished(
                finished_record(
                    state.dev, state.ino, start, len(plan.data), state.mtime_ns, mtime_ns
                )
            )
        except BaseException:
            # Not recorded finished, the append could later be taken for one
            # cut short: undo it, and the call fails as a whole.
            os.ftruncate(fd, start)
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            if journaled and os.fstat(fd).st_size == start:  # undone: the record is void
                journal.mark_done_quietly()
        raise
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
    A rewrite that only replaces rows copies the bytes around them as they
    are (:class:`_Splice`); any other is parsed and formatted row by row
    (:class:`_RewriteStream`).
    """
    stream = _Splice.of(fd, state, plan, filepath_column) or _RewriteStream(
        fd, state, plan, filepath_column
    )
    st = _replace(fd, journal, index, stream.chunks(), durable)
    new_fd = os.open(index, os.O_RDONLY | _platform.O_BINARY)
    try:
        head, tail = head_and_tail(new_fd, st.st_size)
    finally:
        os.close(new_fd)
    paths_column, paths = stream.mapped_paths()
    return IndexState(
        st,
        Header(list(plan.columns), state.header.bom, state.header.eol),
        size=st.st_size,
        lines=stream.lines,
        ends_clean=True,
        head=head,
        tail=tail,
        paths_column=paths_column,
        paths=paths,
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
    except BaseException:
        if not os.path.lexists(temp):  # else the next writer's recovery removes it
            journal.mark_done_quietly()
        raise
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

    def mapped_paths(self) -> tuple[str | None, PathOffsets | None]:
        """The new file's path map (once :meth:`chunks` is exhausted), and its column."""
        return self.paths_column, self.paths

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


class _Splice:
    """A rewrite that only replaces rows: the bytes around them are copied as they are.

    Possible when the header stays, each replaced path is held by a single
    row, the file ends with a line terminator and ``state`` maps the paths:
    then each replaced row's extent is known, the rest of the file is
    copied in large blocks instead of being parsed and formatted again, and
    the path map is kept, its offsets shifted (:meth:`PathOffsets.shift`).
    """

    #: Bytes copied from the old file per read.
    BLOCK = 1 << 20

    def __init__(
        self,
        fd: int,
        state: IndexState,
        cuts: list[tuple[int, int, bytes]],
        appends: list[tuple[str, bytes]],
        lines: int,
    ) -> None:
        self._fd = fd
        self._state = state
        self._cuts = cuts  # (start, end, new bytes) in file order
        self._appends = appends  # (path, bytes) added at the end
        self.lines = lines

    @classmethod
    def of(
        cls, fd: int, state: IndexState, plan: Rewrite, filepath_column: str
    ) -> _Splice | None:
        """The splice doing ``plan``, or None where it cannot."""
        columns = plan.columns
        if (
            state.paths is None
            or state.paths_column != filepath_column
            or not state.ends_clean
            or columns != state.header.columns
            or any(len(plan.stored_at.get(path, ())) != 1 for path in plan.replacements)
        ):
            return None
        eol = state.header.eol
        rows = [*plan.replacements.values(), *plan.appends]
        lines = state.lines
        cuts = []
        for path, row in plan.replacements.items():
            start = plan.stored_at[path][0]
            _, old = stored_record(fd, state, start)
            if not old:
                return None
            text = format_row([row.get(c, "") for c in columns], eol)
            cuts.append((start, start + len(old), encode(text, rows)))
            lines += count_lines(text) - count_lines(old.decode("utf-8"))
        cuts.sort()
        appends = []
        for row in plan.appends:
            text = format_row([row.get(c, "") for c in columns], eol)
            appends.append((row.get(filepath_column, ""), encode(text, rows)))
            lines += count_lines(text)
        return cls(fd, state, cuts, appends, lines)

    def chunks(self) -> Iterator[bytes]:
        at = 0
        for start, end, data in [*self._cuts, (self._state.size, self._state.size, b"")]:
            while at < start:
                block = _files.pread_all(self._fd, min(self.BLOCK, start - at), at)
                if not block:  # cut short by a program that ignores the lock
                    raise OSError(errno.EIO, "the index shrank while it was being rewritten")
                at += len(block)
                yield block
            yield data
            at = end
        for _, data in self._appends:
            yield data

    def mapped_paths(self) -> tuple[str | None, PathOffsets | None]:
        """The path map, moved to the new file's offsets; None if that failed."""
        state, paths = self._state, self._state.paths
        assert paths is not None
        moves = [(start, len(data) - (end - start)) for start, end, data in self._cuts]
        if not paths.shift(moves):
            return None, None  # not as expected: map the file afresh when needed
        offset = state.size + sum(delta for _, delta in moves)
        for path, data in self._appends:
            paths.add(path, offset)
            offset += len(data)
        return state.paths_column, paths


def _bytes_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))
