"""IndexWriter: the lock, the table format and the file operations, combined.

Every call holds the index lock (:mod:`._lock`) from start to end. What this
process knows about an index (its header, its line ending, the byte offset
where it ends, and -- once ``replace_existing`` needs it -- where each path's
row starts) is kept between calls and checked cheaply each time: one
``fstat``, and when another writer appended, a few bytes at the known start
and end plus just the appended bytes. Anything unexpected (a new inode, a
shorter file, changed bytes, a same-size file with a new mtime) makes it read
the whole file again. So an append costs the same at a million rows as at a
thousand, and the only whole-file rewrites are schema changes and real
replacements.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import _files, _platform
from ._errors import (
    IndexLockTimeoutError,
    IndexReadError,
    IndexSchemaMismatchError,
    IndexWriteError,
)
from ._lock import Journal, LockFile
from ._table import BOM, Header, Scanner, format_row, read_header, skim, too_wide

__all__ = ["IndexWriter"]

logger = logging.getLogger(__name__)

#: How many bytes at the start and the end of the file are compared to detect
#: a rewrite by another program before trusting what we know about the file.
_HEAD_BYTES = 256
_TAIL_BYTES = 64

#: An append's journal record carries its first bytes, and a CRC-32 of each
#: later chunk of this size, so a rollback can prove the bytes it removes are
#: ours.
_JOURNAL_HEAD = 4096


class _Known:
    """What this process knows about one index file, valid while it is unchanged.

    ``paths`` maps each path (of column ``paths_column``) to the byte offset
    where its row starts, or -1 when several rows hold it; it is built only
    once ``replace_existing`` needs it.
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
        *,
        dev: int,
        ino: int,
        size: int,
        mtime_ns: int,
        header: Header,
        lines: int,
        ends_clean: bool,
        head: bytes,
        tail: bytes,
        paths_column: str | None = None,
        paths: dict[str, int] | None = None,
    ) -> None:
        self.dev = dev
        self.ino = ino
        self.size = size
        self.mtime_ns = mtime_ns
        self.header = header
        self.colpos = {c: i for i, c in enumerate(header.columns)}
        self.lines = lines
        self.ends_clean = ends_clean
        self.head = head
        self.tail = tail
        self.paths_column = paths_column
        self.paths = paths


_known: dict[tuple[str, str], _Known] = {}


def _forget_after_fork() -> None:
    # Another thread may have been half-way through updating an entry at fork.
    global _known
    _known = {}


_platform.register_after_fork(_forget_after_fork)

Row = dict[str, str]


def _as_path_str(path: object, what: str) -> str:
    if isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        p = os.fspath(path)
        if isinstance(p, str):
            return p
    raise TypeError(f"{what} must be a str or os.PathLike, not {type(path).__name__}")


def _make_row(path: object, context: object, filepath_column: str) -> Row:
    p = _as_path_str(path, "path")
    if not isinstance(context, Mapping):
        raise TypeError(
            "context must be a mapping of column name to value, "
            f"not {type(context).__name__}"
        )
    row = {filepath_column: p}
    for key, value in context.items():
        if not isinstance(key, str):
            raise TypeError(f"context keys are column names and must be str, got {key!r}")
        text = value if type(value) is str else ("" if value is None else str(value))
        if key == filepath_column:
            if text != p:
                raise ValueError(
                    f"context[{key!r}] = {text!r} conflicts with path {p!r}: "
                    f"{key!r} is the filepath_column; drop the key or use "
                    "another filepath_column"
                )
            continue
        row[key] = text
    return row


def _prepare(entries: Iterable[Any], filepath_column: object) -> list[Row]:
    if not isinstance(filepath_column, str):
        raise TypeError(
            f"filepath_column must be a str, not {type(filepath_column).__name__}"
        )
    if not filepath_column:
        raise ValueError("filepath_column must not be empty")
    rows = []
    for item in entries:
        try:
            path, context = item
        except (TypeError, ValueError):
            raise TypeError(
                f"entries must be (path, context) pairs, got {item!r}"
            ) from None
        rows.append(_make_row(path, context, filepath_column))
    return rows


def _encode(text: str, rows: list[Row]) -> bytes:
    """UTF-8 bytes of ``text``, refusing what the index could not read back."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = _first_bad(rows, lambda s: not _encodable(s))
        raise ValueError(
            f"{bad} cannot be written as UTF-8 ({e.reason}); "
            "decode it properly first"
        ) from None
    if b"\x00" in data:
        bad = _first_bad(rows, lambda s: "\x00" in s)
        raise ValueError(f"{bad} contains a NUL character, which CSV cannot hold")
    return data


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad(rows: list[Row], bad: Any) -> str:
    for row in rows:
        for key, value in row.items():
            if bad(key):
                return f"column name {key!r}"
            if bad(value):
                return f"the value of column {key!r}"
    return "the entry"  # pragma: no cover - the caller found one


def _count_lines(text: str) -> int:
    # Physical lines as a newline="" text stream splits them: CR LF, LF, CR.
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _bytes_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


class IndexWriter:
    """Safely record files in a CSV index shared by many threads and processes.

    A drop-in replacement for ``imgtools.io.writers.index_writer.IndexWriter``:
    same constructor, ``write_entry`` signature, exceptions and attributes.
    Unlike the original it excludes threads as well as processes, survives a
    writer killed at any instant, never leaves a half-written index after a
    failed write, rejects malformed files instead of guessing, and appends
    without reading or rewriting the whole file.

    Each row holds a file's path (in ``filepath_column``) and metadata
    columns. Writers are cheap to create, can be pickled into worker
    processes, and share what they know about an index within a process.

    Parameters
    ----------
    index_path : str | os.PathLike
        The CSV index file. Created, with its directory, on the first write.
        A relative path is resolved against the working directory when the
        writer is created.
    lock_path : str | os.PathLike | None, optional
        The lock file that serializes writers. Defaults to the index path with
        ``.lock`` appended (``index.csv.lock``), as in the original, so both
        implementations exclude each other. Must differ from ``index_path``.
        Deleting it while writers run is safe (see the concurrency guide).
    timeout : float | None, optional
        Seconds to wait for the lock before raising
        :class:`IndexLockTimeoutError`; ``None`` (default) waits forever.
    durable : bool, optional
        If True, fsync every change (and the directory after a rewrite)
        before returning, so it survives a power cut. The default, False,
        hands each change to the operating system before returning: it
        survives a crash or kill of the writing process, not of the machine.

    Attributes
    ----------
    index_path : Path
        The index file, as given.
    lock_path : Path
        The lock file.
    timeout : float | None
        The lock timeout in seconds.
    durable : bool
        Whether changes are fsynced.

    Raises
    ------
    ValueError
        ``lock_path`` is the index itself, or ``timeout`` is negative or NaN.
    TypeError
        A path is not a str or os.PathLike, or ``timeout`` is not a number.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from index_writer import IndexWriter
    >>> index = Path(tempfile.mkdtemp()) / "index.csv"
    >>> writer = IndexWriter(index)
    >>> writer.write_entry("out/sub-01_CT.nii.gz", {"subject": "sub-01", "modality": "CT"})
    >>> writer.write_entry("out/sub-01_MR.nii.gz", {"subject": "sub-01", "modality": "MR"})
    >>> print(index.read_text(), end="")
    path,subject,modality
    out/sub-01_CT.nii.gz,sub-01,CT
    out/sub-01_MR.nii.gz,sub-01,MR
    >>> writer.lock_path.name
    'index.csv.lock'
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        lock_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
    ) -> None:
        self.index_path: Path = Path(_as_path_str(index_path, "index_path"))
        self.lock_path: Path = (
            Path(_as_path_str(lock_path, "lock_path"))
            if lock_path is not None
            else self.index_path.with_suffix(self.index_path.suffix + ".lock")
        )
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(
                    f"timeout must be a number of seconds or None, not {timeout!r}"
                )
            if math.isnan(timeout) or timeout < 0:
                raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self.timeout: float | None = timeout
        self.durable: bool = bool(durable)
        self._index = os.path.abspath(self.index_path)
        lock = os.path.abspath(self.lock_path)
        if os.path.normcase(lock) == os.path.normcase(self._index) or _same_existing(
            lock, self._index
        ):
            raise ValueError(
                f"lock_path must not be the index itself ({self.index_path}): "
                "closing the index would release the lock"
            )
        self._lock = LockFile(lock, self.lock_path, timeout)
        self._key = (self._index, lock)
        self._index_json = json.dumps(self._index)  # for journal records

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(index_path={str(self.index_path)!r}, "
            f"lock_path={str(self.lock_path)!r}, timeout={self.timeout!r}, "
            f"durable={self.durable!r})"
        )

    # ------------------------------------------------------------------ API

    def write_entry(
        self,
        path: str | os.PathLike[str],
        context: Mapping[str, Any],
        filepath_column: str = "path",
        replace_existing: bool = False,
        merge_columns: bool = True,
    ) -> None:
        """Write one entry to the index file. Safe across threads and processes.

        You give this a path and a dictionary of info.
        → It takes the lock, so no other writer is in the file meanwhile.
        → If the path is already there and you want to replace it, it does
          (and writes nothing at all when the stored row is already equal).
        → If your info has new keys, it adds columns (if allowed).
        → Otherwise it appends one row, without rereading the file.

        Parameters
        ----------
        path : str | os.PathLike
            The file path that you want to record in the index.
        context : Mapping[str, Any]
            Extra metadata (e.g. subject ID, date, label) to log alongside the
            path. Keys are column names (str); values are written as
            ``str(value)``, and ``None`` as an empty field.
        filepath_column : str, default="path"
            Name of the column to store the file path.
        replace_existing : bool, default=False
            If True, afterwards exactly one row holds this path: an existing
            row is updated in place (duplicates removed), a missing one
            appended.
        merge_columns : bool, default=True
            If True, automatically add new columns (at the end) if the
            context has fields the index does not have yet.

        Raises
        ------
        IndexSchemaMismatchError
            The entry has columns the index lacks and ``merge_columns`` is
            False. Nothing is written.
        IndexReadError
            The index cannot be read or is not a well-formed CSV (the message
            names the line). Nothing is written.
        IndexWriteError
            Writing failed (disk full, file too large, I/O error, no
            permission). The index is byte-identical to before.
        IndexLockTimeoutError
            The lock was not acquired within ``timeout`` seconds.
        TypeError
            ``path`` is not a str/PathLike, ``context`` not a mapping, or a
            key not a str.
        ValueError
            ``context`` holds ``filepath_column`` with a different value, or a
            value holds a NUL character or cannot be encoded as UTF-8.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> index = Path(tempfile.mkdtemp()) / "index.csv"
        >>> writer = IndexWriter(index)
        >>> writer.write_entry("a.nii", {"score": 0.5})
        >>> writer.write_entry("a.nii", {"score": 0.75}, replace_existing=True)
        >>> writer.write_entry("b.nii", {"score": 1, "label": None})
        >>> print(index.read_text(), end="")
        path,score,label
        a.nii,0.75,
        b.nii,1,
        """
        self.write_entries(
            [(path, context)], filepath_column, replace_existing, merge_columns
        )

    def write_entries(
        self,
        entries: Iterable[tuple[str | os.PathLike[str], Mapping[str, Any]]],
        filepath_column: str = "path",
        replace_existing: bool = False,
        merge_columns: bool = True,
    ) -> None:
        """Write many entries under one lock: all of them, or none.

        The same as calling :meth:`write_entry` for each ``(path, context)``
        pair, in order, but in a single write, so it is much faster for
        batches. With ``replace_existing=True`` a path given more than once
        keeps its last context.

        Parameters
        ----------
        entries : Iterable[tuple[str | os.PathLike, Mapping[str, Any]]]
            ``(path, context)`` pairs. Consumed before the lock is taken.
        filepath_column : str, default="path"
            Name of the column to store the file paths.
        replace_existing : bool, default=False
            As for :meth:`write_entry`.
        merge_columns : bool, default=True
            As for :meth:`write_entry`; new columns are added in the order
            they first appear.

        Raises
        ------
        IndexSchemaMismatchError, IndexReadError, IndexWriteError
            As for :meth:`write_entry`; on any of them nothing is written.
        IndexLockTimeoutError, TypeError, ValueError
            As for :meth:`write_entry`.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> index = Path(tempfile.mkdtemp()) / "index.csv"
        >>> writer = IndexWriter(index)
        >>> writer.write_entries((f"img_{i}.png", {"label": i % 2}) for i in range(3))
        >>> [row["label"] for row in writer.read_rows()]
        ['0', '1', '0']
        """
        rows = _prepare(entries, filepath_column)
        if not rows:
            return
        try:
            journal = self._lock.acquire()
            try:
                self._recover(journal)
                self._write_locked(
                    journal, rows, filepath_column, replace_existing, merge_columns
                )
            finally:
                self._lock.release()
        except (OSError, threading.ThreadError) as e:
            raise IndexWriteError(self.index_path, e) from e

    def read_rows(self) -> list[dict[str, str]]:
        """Return every row of the index, as a consistent snapshot.

        Read under the lock, so no write is half-way through. Every row has
        every column (missing values are ``""``), in file order. A missing
        index reads as no rows.

        Returns
        -------
        list[dict[str, str]]
            One dict per row, keyed by column name in header order.

        Raises
        ------
        IndexReadError
            The index cannot be read or is not a well-formed CSV.
        IndexLockTimeoutError
            The lock was not acquired within ``timeout`` seconds.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> index = Path(tempfile.mkdtemp()) / "index.csv"
        >>> writer = IndexWriter(index)
        >>> writer.read_rows()
        []
        >>> writer.write_entry("a.nii", {"subject": "s1"})
        >>> writer.write_entry("b.nii", {"site": "x"})
        >>> for row in writer.read_rows():
        ...     print(row)
        {'path': 'a.nii', 'subject': 's1', 'site': ''}
        {'path': 'b.nii', 'subject': '', 'site': 'x'}
        """
        try:
            journal = self._lock.acquire()
            try:
                self._recover(journal)
                opened = self._open_index(journal, write=False)
                if opened is None:
                    return []
                try:
                    return self._read_all(opened[0])
                finally:
                    os.close(opened[0])
            finally:
                self._lock.release()
        except csv.Error as e:
            raise IndexReadError(self.index_path, e) from e
        except (OSError, threading.ThreadError) as e:
            raise IndexReadError(self.index_path, e) from e

    def _replace_contents(self, transform: Callable[[bytes], bytes | None]) -> bool:
        """Rewrite the whole index under the lock, atomically (for maintenance).

        ``transform`` gets the file's bytes and returns the new bytes, or
        None to leave the file alone; it runs under the lock after crash
        recovery, so no writer changes the file in between. The new file
        replaces the old one as every rewrite does (temporary file, same
        permission bits, ``os.replace``, journaled, fsynced if ``durable``).

        Returns
        -------
        bool
            Whether the file was replaced.

        Raises
        ------
        FileNotFoundError
            The index does not exist.
        OSError
            Reading or replacing failed; the index is untouched.
        """
        journal = self._lock.acquire()
        try:
            self._recover(journal)
            opened = self._open_index(journal, write=True)
            if opened is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._index)
            fd, like, _ = opened
            try:
                new = transform(_pread_all(fd, like.st_size, 0))
                if new is None:
                    return False
                temp = _files.new_temp_name(self._index)
                journal.write(self._rewrite_record(temp), self.durable)
                try:
                    _files.replace(self._index, temp, [new], like, self.durable)
                finally:
                    _clear_quietly(journal)
                _known.pop(self._key, None)
                return True
            finally:
                os.close(fd)
        finally:
            self._lock.release()

    def _rewrite_record(self, temp: str) -> bytes:
        return json.dumps({"op": "rewrite", "index": self._index, "temp": temp}).encode()

    # ------------------------------------------------------------ internals

    def _read_all(self, fd: int) -> list[dict[str, str]]:
        f = open(fd, "rb", closefd=False)  # noqa: SIM115 - fd closed by caller
        header, _, records = read_header(f)
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

    def _recover(self, journal: Journal) -> None:
        """Roll back the write of a holder that died with the lock held."""
        record = journal.record
        if not record:
            return
        try:
            info = json.loads(record)
            op, index = info["op"], info["index"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable crash journal in %s", self.lock_path)
            journal.clear()
            return
        if op == "append":
            _roll_back_append(index, info, journal.payload[: info.get("head", 0)])
        elif op == "rewrite":
            try:
                os.unlink(info["temp"])
                logger.warning(
                    "removed %s, left by a rewrite of %s cut short by a crash",
                    info["temp"],
                    index,
                )
            except FileNotFoundError:
                pass
        journal.clear()

    def _open_index(
        self, journal: Journal, *, write: bool, create: bool = False
    ) -> tuple[int, os.stat_result, bool] | None:
        """Open the index file and lock it too; None if it does not exist.

        The lock file alone keeps writers apart only while it stays in place:
        if it is deleted while a writer holds it, the next writer creates and
        locks a new one. So every writer (and reader) also locks the index
        file itself, exclusively (shared for reading), through the descriptor
        it uses, until it closes it. That lock is always free in normal
        operation and costs one uncontended system call. As with the lock
        file, the locked file must still be the one at the path: a rewrite
        may have replaced it while we waited.

        Returns ``(fd, stat, created)``.
        """
        flags = (os.O_RDWR | os.O_APPEND if write else os.O_RDONLY) | _platform.O_BINARY
        while True:
            created = False
            try:
                fd = os.open(self._index, flags)
            except FileNotFoundError:
                if not create:
                    return None
                created = True
                try:
                    fd = os.open(self._index, flags | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(self._index), exist_ok=True)
                    continue
            try:
                if not _platform.lock_index(fd, write, journal.deadline):
                    assert self.timeout is not None
                    raise IndexLockTimeoutError(self.lock_path, self.timeout)
                st = os.fstat(fd)
                same = _platform.same_file(st, os.stat(self._index))
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd, st, created
            os.close(fd)

    def _write_locked(
        self,
        journal: Journal,
        rows: list[Row],
        filepath_column: str,
        replace_existing: bool,
        merge_columns: bool,
    ) -> None:
        opened = self._open_index(journal, write=True, create=True)
        assert opened is not None
        fd, st, created = opened
        committed = False
        try:
            try:
                known = self._refresh(fd, st, filepath_column if replace_existing else None)
            except (csv.Error, OSError) as e:
                raise IndexReadError(self.index_path, e) from e

            columns = known.header.columns
            if columns:
                colpos = known.colpos
                new_columns = list(
                    dict.fromkeys(k for row in rows for k in row if k not in colpos)
                )
                if new_columns and not merge_columns:
                    raise IndexSchemaMismatchError(set(new_columns), self.index_path)
            else:
                new_columns = list(
                    dict.fromkeys([filepath_column, *(k for row in rows for k in row)])
                )
            if new_columns:
                _encode(format_row(new_columns, "\n"), rows)  # refuse unwritable names
            rewrite = bool(columns) and bool(new_columns)

            replacements: dict[str, Row] = {}
            if replace_existing:
                assert known.paths is not None
                latest: dict[str, Row] = {}
                for row in rows:
                    latest[row[filepath_column]] = row
                appends = []
                for path, row in latest.items():
                    where = known.paths.get(path)
                    if where is None:
                        appends.append(row)
                    elif rewrite or where < 0 or not self._stored_equals(
                        fd, known, where, row
                    ):
                        replacements[path] = row
                rewrite = rewrite or bool(replacements)
            else:
                appends = rows
            if not rewrite and not appends:
                return  # every entry is already stored exactly so

            try:
                if rewrite:
                    self._rewrite(
                        fd, known, journal, columns + new_columns, filepath_column,
                        replacements, appends,
                    )
                else:
                    self._append(fd, known, journal, new_columns, appends)
            except OSError as e:
                raise IndexWriteError(self.index_path, e) from e
            committed = True
        finally:
            os.close(fd)
            if created and not committed:
                _remove_quietly(self._index)

    # ---------------------------------------------------------- knowledge

    def _refresh(self, fd: int, st: os.stat_result, paths_column: str | None) -> _Known:
        """Bring what we know about the index up to date, as cheaply as possible."""
        known = _known.get(self._key)
        if known is not None:
            if (known.dev, known.ino) != (st.st_dev, st.st_ino):
                known = None
            elif st.st_size == known.size and st.st_mtime_ns == known.mtime_ns:
                pass
            elif (
                st.st_size > known.size
                and known.ends_clean
                and known.header.columns
                and self._prefix_unchanged(fd, known)
            ):
                self._read_appended(fd, known, st)
            else:
                known = None
        if known is None or (
            paths_column is not None and known.paths_column != paths_column
        ):
            _known.pop(self._key, None)
            known = self._load(fd, st, paths_column)
            _known[self._key] = known
        return known

    @staticmethod
    def _prefix_unchanged(fd: int, known: _Known) -> bool:
        if _platform.pread(fd, len(known.head), 0) != known.head:
            return False
        return _platform.pread(fd, len(known.tail), known.size - len(known.tail)) == known.tail

    def _read_appended(self, fd: int, known: _Known, st: os.stat_result) -> None:
        """Take in the rows other writers appended since we last looked."""
        data = _pread_all(fd, st.st_size - known.size, known.size)
        scanner = Scanner(io.BytesIO(data), known.size, known.lines)
        paths = known.paths
        pidx = known.colpos.get(known.paths_column or "") if paths is not None else None
        try:
            _take_records(scanner.records(), len(known.header.columns), paths, pidx)
        except BaseException:
            _known.pop(self._key, None)
            raise
        known.size = scanner.offset
        known.lines = scanner.line
        known.ends_clean = scanner.last_eol != ""
        known.mtime_ns = st.st_mtime_ns
        known.tail = (known.tail + data)[-_TAIL_BYTES:]
        if len(known.head) < _HEAD_BYTES:
            known.head = (known.head + data)[:_HEAD_BYTES]

    def _load(self, fd: int, st: os.stat_result, paths_column: str | None) -> _Known:
        """Read and check the whole file."""
        f = open(fd, "rb", buffering=1 << 16, closefd=False)  # noqa: SIM115
        f.seek(0)
        header, scanner, records = read_header(f)
        columns = header.columns
        n = len(columns)
        paths: dict[str, int] | None = None
        pidx = None
        if paths_column is not None:
            paths = {}
            pidx = columns.index(paths_column) if paths_column in columns else None
        if n:
            # Check the plain rows in bulk (and map their paths if asked).
            records.close()
            f.seek(scanner.offset)
            each = None
            if paths is not None and pidx is not None:
                each = _plain_path_mapper(paths, pidx)
            offset, line, eol = skim(f, scanner.offset, scanner.line, n, each)
            if offset == scanner.offset:
                eol = scanner.last_eol  # nothing skimmed: still after the header
            scanner = Scanner(f, offset, line)
            scanner.last_eol, scanner.consumed_any = eol, True
            records = scanner.records()
        _take_records(records, n, paths, pidx)
        size = scanner.offset
        return _Known(
            dev=st.st_dev,
            ino=st.st_ino,
            size=size,
            mtime_ns=st.st_mtime_ns,
            header=header,
            lines=scanner.line,
            ends_clean=scanner.last_eol != "" or not scanner.consumed_any,
            head=_platform.pread(fd, min(size, _HEAD_BYTES), 0),
            tail=_platform.pread(fd, min(size, _TAIL_BYTES), max(0, size - _TAIL_BYTES)),
            paths_column=paths_column,
            paths=paths,
        )

    @staticmethod
    def _stored_equals(fd: int, known: _Known, offset: int, row: Row) -> bool:
        """Whether the row stored at ``offset`` already holds exactly ``row``."""
        want = 4096
        while True:
            data = _platform.pread(fd, want, offset)
            complete = offset + len(data) >= known.size
            try:
                scanner = Scanner(io.BytesIO(data), offset, 0)
                rec = next(scanner.records(), None)
                if rec is not None and (scanner.last_eol or complete):
                    break
            except csv.Error:
                if complete:
                    raise
            want *= 4
        assert rec is not None
        fields = rec[2]
        columns = known.header.columns
        fields += [""] * (len(columns) - len(fields))
        return fields == [row.get(c, "") for c in columns]

    # ------------------------------------------------------------- writes

    def _append(
        self,
        fd: int,
        known: _Known,
        journal: Journal,
        new_columns: list[str],
        rows: list[Row],
    ) -> None:
        eol = known.header.eol
        if known.header.columns:
            columns = known.header.columns
            lead = "" if known.ends_clean else eol
        else:
            columns = new_columns
            lead = format_row(columns, eol)
        texts = [format_row([row.get(c, "") for c in columns], eol) for row in rows]
        text = lead + "".join(texts)
        data = _encode(text, rows)
        start = known.size
        record, payload = _append_record(self._index_json, known.dev, known.ino, start, data)
        journal.write(record, self.durable, payload)
        _files.append(fd, data, start, self.durable)
        _clear_quietly(journal)
        st = os.fstat(fd)

        if not known.header.columns:
            known.header.columns = list(columns)
            known.colpos = {c: i for i, c in enumerate(columns)}
        paths, col = known.paths, known.paths_column
        if paths is not None and col is not None and col in known.colpos:
            offset = start + _bytes_len(lead)
            for row, t in zip(rows, texts, strict=True):
                p = row.get(col, "")
                paths[p] = -1 if p in paths else offset
                offset += _bytes_len(t)
        known.size = start + len(data)
        known.mtime_ns = st.st_mtime_ns
        known.lines += _count_lines(text)
        known.ends_clean = True
        known.tail = (known.tail + data)[-_TAIL_BYTES:]
        if len(known.head) < _HEAD_BYTES:
            known.head = (known.head + data)[:_HEAD_BYTES]

    def _rewrite(
        self,
        fd: int,
        known: _Known,
        journal: Journal,
        columns: list[str],
        filepath_column: str,
        replacements: dict[str, Row],
        appends: list[Row],
    ) -> None:
        header = known.header
        eol = header.eol
        n = len(columns)
        old_pidx = known.colpos.get(filepath_column)
        track = known.paths_column if known.paths is not None else None
        track_idx = columns.index(track) if track in columns else None
        paths: dict[str, int] | None = {} if track is not None else None
        state = {"offset": 0, "lines": 0}
        rows_in = [*replacements.values(), *appends]

        def emit(fields: list[str]) -> bytes:
            text = format_row(fields, eol)
            data = _encode(text, rows_in)
            if paths is not None and track_idx is not None:
                p = fields[track_idx]
                paths[p] = -1 if p in paths else state["offset"]
            state["offset"] += len(data)
            state["lines"] += _count_lines(text)
            return data

        def chunks() -> Iterator[bytes]:
            head = format_row(columns, eol).encode("utf-8")
            if header.bom:
                head = BOM + head
            state["offset"] = len(head)
            state["lines"] = _count_lines(format_row(columns, eol))
            yield head
            f = open(fd, "rb", buffering=1 << 16, closefd=False)  # noqa: SIM115
            f.seek(0)
            _, _, records = read_header(f)
            done: set[str] = set()
            for _, _, fields in records:
                if old_pidx is not None and old_pidx < len(fields):
                    p = fields[old_pidx]
                    if p in replacements:
                        if p in done:
                            continue
                        done.add(p)
                        new = replacements[p]
                        yield emit([new.get(c, "") for c in columns])
                        continue
                if len(fields) < n:
                    fields += [""] * (n - len(fields))
                yield emit(fields)
            for row in appends:
                yield emit([row.get(c, "") for c in columns])

        like = os.fstat(fd)
        temp = _files.new_temp_name(self._index)
        journal.write(self._rewrite_record(temp), self.durable)
        try:
            st = _files.replace(self._index, temp, chunks(), like, self.durable)
        except csv.Error as e:  # pragma: no cover - the file was checked before
            raise IndexReadError(self.index_path, e) from e
        finally:
            _clear_quietly(journal)
        head, tail = _head_and_tail(self._index, st.st_size)
        _known[self._key] = _Known(
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            header=Header(list(columns), header.bom, eol),
            lines=state["lines"],
            ends_clean=True,
            head=head,
            tail=tail,
            paths_column=track,
            paths=paths,
        )


def replace_contents(writer: IndexWriter, transform: Callable[[bytes], bytes | None]) -> bool:
    """Rewrite a writer's whole index under its lock, atomically (for maintenance).

    See :meth:`IndexWriter._replace_contents`.
    """
    return writer._replace_contents(transform)


def _take_records(
    records: Iterable[tuple[int, int, list[str]]],
    ncols: int,
    paths: dict[str, int] | None,
    pidx: int | None,
) -> None:
    """Check parsed records against the header; map their paths if asked."""
    for line, start, fields in records:
        if len(fields) > ncols:
            raise too_wide(line, len(fields), ncols)
        if paths is not None and pidx is not None and pidx < len(fields):
            p = fields[pidx]
            paths[p] = -1 if p in paths else start


def _plain_path_mapper(paths: dict[str, int], pidx: int) -> Callable[[bytes, int], None]:
    """For :func:`._table.skim`: record where each plain line's path starts."""

    cut = pidx + 1

    def take(block: bytes, offset: int) -> None:
        crlf = b"\r" in block  # then every line but a last unended one ends in CR
        for line in block.split(b"\n"):
            size = len(line) + 1
            if crlf and line.endswith(b"\r"):
                line = line[:-1]
            if line:
                fields = line.split(b",", cut)
                if pidx < len(fields):
                    p = fields[pidx].decode()
                    paths[p] = -1 if p in paths else offset
            offset += size

    return take


def _roll_back_append(index: str, info: dict[str, Any], head: bytes) -> None:
    """Truncate an append that a crash cut short, if the file still shows it.

    Only when the file is the one appended to, has grown past the recorded
    offset but not by the whole length, and those bytes are provably ours.
    """
    try:
        fd = os.open(index, os.O_RDWR | _platform.O_BINARY)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        start, length = info["offset"], info["length"]
        if (st.st_dev, st.st_ino) != (info["dev"], info["ino"]) or not (
            start < st.st_size < start + length
        ):
            return
        if not _torn_append(fd, start, st.st_size, head, info):
            logger.warning(
                "not rolling back the write to %s cut short by a crash: "
                "another program has changed the file since",
                index,
            )
            return
        os.ftruncate(fd, start)
        logger.warning(
            "rolled back a write to %s cut short by a crash (%d of %d bytes had been written)",
            index,
            st.st_size - start,
            length,
        )
    finally:
        os.close(fd)


def _append_record(
    index_json: str, dev: int, ino: int, start: int, data: bytes
) -> tuple[bytes, bytes]:
    """The journal record and payload for appending ``data`` at ``start``."""
    crcs = ""
    if len(data) > _JOURNAL_HEAD:
        full = range(_JOURNAL_HEAD, len(data) - _JOURNAL_HEAD + 1, _JOURNAL_HEAD)
        crcs = ',"crc":[' + ",".join(str(zlib.crc32(data[i : i + _JOURNAL_HEAD])) for i in full)
        crcs += "]"
    head = data[:_JOURNAL_HEAD]
    record = (
        f'{{"op":"append","index":{index_json},"dev":{dev},"ino":{ino},'
        f'"offset":{start},"length":{len(data)},"head":{len(head)}{crcs}}}'
    )
    return record.encode(), head


def _torn_append(fd: int, start: int, size: int, head: bytes, info: dict[str, Any]) -> bool:
    """Whether the bytes from ``start`` to ``size`` are the start of our append.

    They are checked against the journal: the first :data:`_JOURNAL_HEAD`
    bytes exactly, each later whole chunk by its CRC-32. Anything else means
    another program (med-imagetools rewrites the index in place, ignoring
    the journal) has written since, and nothing may be truncated.
    """
    n = size - start
    k = min(n, len(head))
    if not head or _pread_all(fd, k, start) != head[:k]:
        return False
    pos = start + _JOURNAL_HEAD
    for crc in info.get("crc", []):
        if pos + _JOURNAL_HEAD > size:
            break
        if zlib.crc32(_pread_all(fd, _JOURNAL_HEAD, pos)) != crc:
            return False
        pos += _JOURNAL_HEAD
    return True


def _same_existing(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = _platform.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _head_and_tail(path: str, size: int) -> tuple[bytes, bytes]:
    """The first and last bytes of a file, as :class:`_Known` keeps them."""
    fd = os.open(path, os.O_RDONLY | _platform.O_BINARY)
    try:
        head = _pread_all(fd, min(size, _HEAD_BYTES), 0)
        tail = _pread_all(fd, min(size, _TAIL_BYTES), max(0, size - _TAIL_BYTES))
    finally:
        os.close(fd)
    return head, tail


def _clear_quietly(journal: Journal) -> None:
    try:
        journal.clear()
    except OSError as e:  # pragma: no cover - needs a failing ftruncate
        # The write itself is complete; the next holder sees a finished one.
        logger.warning("could not clear the crash journal: %s", e)


def _remove_quietly(path: str) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:  # pragma: no cover
            logger.warning("could not remove empty index %s: %s", path, e)
