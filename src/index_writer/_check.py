"""Inspect an index file without changing it, and remove duplicate paths from it.

:func:`check_index` reads the file once, from start to end, never modifies it
and reports everything a person should know before trusting the index: rows,
columns, duplicate paths, rows with more fields than the header, a missing
final newline, and the first problem that stops reading the file: bytes that
are not UTF-8, a NUL byte, an unterminated quote or text after a closing
quote. It holds one row at a time plus 8 bytes per row (a hash of its path);
rows whose hash repeats are read a second time to compare their paths.

It also reports what a write cut short left: an append its crash journal
shows unfinished (counted out, as readers leave it out), a last record that
is provably incomplete (writers move it aside), and the files such records
were moved into (``NAME.incomplete-<time>``, next to the index).

:func:`dedupe` keeps the last row of each path, under the index lock, with an
atomic rewrite that keeps every other byte of the file: the kept rows, blank
lines, line endings and byte order mark.

``index-writer check`` and ``index-writer check --dedupe`` call these.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ._check_report import CheckReport, DedupeRefusedError, inspect, plural
from ._check_scan import Source
from ._errors import IndexReadError
from ._files import open_regular, pread_all, sidecar_name
from ._journal import journal_path, read_journal, torn_append_start
from ._table import BOM, read_header

__all__ = ["CheckReport", "DedupeRefusedError", "check_index", "dedupe"]

logger = logging.getLogger(__name__)

#: The most bytes :func:`index_columns` reads looking for the end of the header.
_HEADER_MAX = 1 << 20


def check_index(index_path: str | os.PathLike[str], filepath_column: str = "path") -> CheckReport:
    """Inspect an index file without modifying it (and without taking its lock).

    What ``index-writer check`` prints. Memory use is bounded by the largest
    row plus 8 bytes per row, whatever the size of the file.

    Parameters
    ----------
    index_path : str or os.PathLike
        The CSV index.
    filepath_column : str, optional
        The column holding the paths; duplicates are looked for in it.

    Returns
    -------
    CheckReport
        ``report.clean`` is ``True`` when nothing is wrong.

    Raises
    ------
    IndexReadError
        The file cannot be read (missing, a directory, no permission);
        ``original_exception`` is the :class:`OSError`.

    Notes
    -----
    The file is read as it is, without the lock: while writers append, the
    last row may be caught half-written and reported as a missing final
    newline, an unterminated quote or an unfinished append. Check a finished
    index, or run the check again.

    What a write cut short left is reported too: the end of an append the
    index's crash journal shows unfinished (left out of the counts, as
    readers leave it out; the next write removes it), a last record with no
    line end that cannot be a row (the next write moves it aside), and the
    files such records were moved into (``NAME.incomplete-<time>``).

    Examples
    --------
    >>> import tempfile
    >>> from index_writer import check_index
    >>> index = Path(tempfile.mkdtemp()) / "index.csv"
    >>> _ = index.write_text("path,a\\nx,1\\nx,2\\ny,3")
    >>> report = check_index(index)
    >>> report.clean, report.rows, report.duplicate_rows
    (False, 3, 1)
    >>> for problem in report.problems:
    ...     print(problem)
    no newline at the end of the file (after line 4)
    1 duplicate path (1 redundant row; 'check --dedupe' keeps the last of each): 'x' on lines 2, 3
    """
    path = Path(index_path)
    try:
        report = _inspect_file(path, filepath_column)
        _note_moved_aside(path, report)
    except OSError as e:
        raise IndexReadError(path, e) from e
    return report


def _inspect_file(path: Path, filepath_column: str) -> CheckReport:
    """Inspect the regular file at ``path``, up to an append a crash cut short."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        end = torn_append_start(read_journal(journal_path(os.fspath(path))), fd, st)
        report, _ = inspect(
            Source(path, fd=fd, size=st.st_size if end is None else end),
            filepath_column,
            keep_spans=False,
        )
    finally:
        os.close(fd)
    if end is not None:
        report.problems.append(
            f"the last {plural(st.st_size - end, 'byte')} are an append that was cut short "
            "(the index's crash journal says so; unless a writer is adding them right now): "
            "readers leave them out and the next write removes them"
        )
    return report


#: The time stamp in the name of a file an incomplete record was moved into.
_STAMP = "00000000T000000Z"
_STAMP_RE = re.compile(r"\d{8}T\d{6}Z")


def moved_aside(index_path: str | os.PathLike[str]) -> list[Path]:
    """The files next to the index holding incomplete last records moved aside.

    A writer that finds the index ending with a record that cannot be a row
    (a write cut short, with no journal to undo it) moves those bytes into
    ``NAME.incomplete-<UTC time>`` next to the index (a shortened name for a
    name too long).
    """
    real = os.path.realpath(index_path)
    directory, name = os.path.split(real)
    probe = sidecar_name(name, f"incomplete-{_STAMP}", hidden=False, directory=directory)
    prefix = probe[: -len(_STAMP)]
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    return sorted(
        Path(directory, n)
        for n in names
        if n.startswith(prefix) and _STAMP_RE.fullmatch(n[len(prefix) :])
    )


def _note_moved_aside(path: Path, report: CheckReport) -> None:
    found = moved_aside(path)
    if not found:
        return
    shown = ", ".join(p.name for p in found[:3])
    if len(found) > 3:
        shown += f" and {len(found) - 3} more"
    report.problems.append(
        f"{plural(len(found), 'incomplete last record')} of this index (a write cut short) "
        f"moved aside by writers into {shown}: look at them, then delete them"
    )


def index_columns(index_path: Path) -> list[str] | None:
    """The column names of an index file, from its first record alone, without the lock.

    Returns None for a file with no header yet (empty, or blank lines only).
    Reads no further than the end of the header's line (of its last line for
    a header with quoted line breaks), so rows being appended meanwhile do
    not matter.

    Raises
    ------
    TableError
        The first record is not a well-formed CSV header (the file is not an
        index).
    OSError
        The file cannot be read.
    """
    head = b""
    with open(open_regular(index_path), "rb") as f:
        while len(head) < _HEADER_MAX:
            line = f.readline(_HEADER_MAX)
            head += line
            if not line or (head.strip(b"\r\n" + BOM) and head.count(b'"') % 2 == 0):
                break
    header, _, _ = read_header(io.BytesIO(head))
    return header.columns or None


def _refuse_before_locking(path: Path, filepath_column: str) -> None:
    """Refuse a file that is no index, or malformed, before the lock creates files.

    Only what a write cut short left (an incomplete last record, which the
    writer's recovery under the lock moves aside) does not stop it here.
    """
    try:
        columns = index_columns(path)
    except csv.Error:
        columns = []
    except OSError as e:
        raise IndexReadError(path, e) from e
    if columns is not None and filepath_column not in columns:
        raise DedupeRefusedError(check_index(path, filepath_column))
    report = check_index(path, filepath_column)
    if any(not p.startswith("incomplete last record") for p in report.blocking):
        raise DedupeRefusedError(report)


def dedupe(
    index_path: str | os.PathLike[str],
    *,
    filepath_column: str = "path",
    lock_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> int:
    """Keep only the last row of each path; return how many rows were removed.

    What ``index-writer check --dedupe`` does. It runs under the index lock
    every :class:`~index_writer.IndexWriter` takes, after rolling back any
    write a crashed writer left half-done, so no writer appends in between.
    The header, a byte order mark, line endings, blank lines and every kept
    row stay byte-for-byte; the new file replaces the index atomically, as
    every rewrite by the writer does (same permission bits, fsynced).
    Rows with an empty path are no file's: they are always kept. Nothing is
    written when there are no duplicates.

    Parameters
    ----------
    index_path : str or os.PathLike
        The CSV index. It must exist.
    filepath_column : str, optional
        The column holding the paths.
    lock_path : str or os.PathLike, optional
        Defaults to ``<index_path>.lock``, like ``IndexWriter``.
    timeout : float, optional
        Seconds to wait for the lock; ``None`` waits forever.

    Returns
    -------
    int
        Rows removed.

    Raises
    ------
    DedupeRefusedError
        The file is malformed (see :attr:`CheckReport.blocking`); it is
        untouched. The exception's ``report`` says what is wrong.
    IndexReadError
        The file does not exist (``original_exception`` is a
        :class:`FileNotFoundError`; nothing is created) or cannot be read.
    IndexWriteError
        Replacing the file failed; it is untouched.
    IndexLockTimeoutError
        The lock was not acquired in time.

    Examples
    --------
    >>> import tempfile
    >>> from index_writer import dedupe
    >>> index = Path(tempfile.mkdtemp()) / "index.csv"
    >>> _ = index.write_text("path,a\\nx,1\\ny,2\\nx,3\\n")
    >>> dedupe(index)
    1
    >>> print(index.read_text(), end="")
    path,a
    y,2
    x,3
    """
    from ._writer import IndexWriter, replace_contents

    path = Path(index_path)
    if not path.exists():
        # Taking the lock would create files next to a path that is not there.
        missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        raise IndexReadError(path, missing)
    _refuse_before_locking(path, filepath_column)
    writer = IndexWriter(path, lock_path, timeout=timeout, durable=True)
    removed = 0

    def without_duplicates(fd: int, size: int) -> Iterator[bytes] | None:
        nonlocal removed
        report, groups = inspect(Source(path, fd=fd, size=size), filepath_column, keep_spans=True)
        if report.blocking:
            raise DedupeRefusedError(report)
        if not report.duplicate_rows:
            return None
        spans = list(groups.all_but_last())
        removed = len(spans)
        return _copy_except(fd, size, spans)

    if not replace_contents(writer, without_duplicates):
        return 0
    logger.info("removed %d duplicate rows from %s", removed, path)
    return removed


def _copy_except(fd: int, size: int, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    """The file's bytes without the ``(start, end)`` spans (sorted), in chunks of 1 MiB."""
    pos = 0
    for start, end in [*spans, (size, size)]:
        while pos < start:
            chunk = pread_all(fd, min(1 << 20, start - pos), pos)
            if not chunk:  # pragma: no cover - the file is locked and this long
                return
            yield chunk
            pos += len(chunk)
        pos = end
