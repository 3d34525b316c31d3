"""The public :class:`IndexWriter`: the lock, the plan and the commit, combined.

Every call holds the index lock (:mod:`._lock`) from start to end, through
:meth:`IndexWriter._session`, the one place where the lock is taken and
released, a crashed writer's leftovers are undone (:mod:`._journal`), the
index file is opened, and ``OSError``/``csv.Error`` become this package's
exceptions. A write then:

1. brings what this process knows about the file up to date (:mod:`._state`:
   nothing to read when the file is unchanged, only the appended bytes when
   another writer appended);
2. decides what to do (:mod:`._plan`: append, rewrite, or nothing);
3. does it, crash-safe (:mod:`._commit`).

So an append costs the same at a million rows as at a thousand, and the only
whole-file rewrites are schema changes and real replacements.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import _commit, _state
from ._errors import IndexLockTimeoutError, IndexReadError, IndexWriteError
from ._journal import Journal, recover
from ._lock import IndexLock, open_index
from ._plan import Append, plan
from ._rows import as_path_str, prepare

__all__ = ["IndexWriter", "replace_contents"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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
        self.index_path: Path = Path(as_path_str(index_path, "index_path"))
        self.lock_path: Path = (
            Path(as_path_str(lock_path, "lock_path"))
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
        self._lock = IndexLock(lock, self.lock_path, timeout)
        self._key = (self._index, lock)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(index_path={str(self.index_path)!r}, "
            f"lock_path={str(self.lock_path)!r}, timeout={self.timeout!r}, "
            f"durable={self.durable!r})"
        )

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
        self.write_entries([(path, context)], filepath_column, replace_existing, merge_columns)

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
        rows = prepare(entries, filepath_column)
        if not rows:
            return
        paths_column = filepath_column if replace_existing else None
        with self._session(write=True) as s:
            assert s is not None
            state = s.read(lambda: _state.refresh(self._key, s.fd, s.st, paths_column))
            todo = plan(
                state,
                rows,
                filepath_column,
                replace_existing=replace_existing,
                merge_columns=merge_columns,
                is_stored=lambda offset, row: _state.stored_equals(s.fd, state, offset, row),
                index_path=self.index_path,
            )
            if todo is None:
                s.committed = True  # every entry is already stored exactly so
            elif isinstance(todo, Append):
                _commit.append(s.fd, state, s.journal, todo, self._index, self.durable)
                s.committed = True
            else:
                new = _commit.rewrite(
                    s.fd, state, s.journal, todo, self._index, filepath_column, self.durable
                )
                _state.remember(self._key, new)
                s.committed = True

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
        with self._session(write=False) as s:
            if s is None:
                return []
            f = open(s.fd, "rb", closefd=False)  # noqa: SIM115 - closed by the session
            return s.read(lambda: _state.read_rows(f))

    @contextlib.contextmanager
    def _session(self, *, write: bool, create: bool = True) -> Iterator[_Session | None]:
        """Lock, recover, open the index; translate errors; close and release.

        Yields None when the index does not exist (and is not to be
        created). A write session creates the index (and its directory)
        unless ``create`` is False, and removes
        it again if it is still empty and the body did not set
        ``committed``. ``OSError`` raised inside becomes
        :class:`IndexWriteError` (writes) or :class:`IndexReadError` (reads,
        and any failure inside :meth:`_Session.read`), ``csv.Error``
        becomes :class:`IndexReadError`.
        """
        session: _Session | None = None
        try:
            journal = self._lock.acquire()
            try:
                recover(journal, self.lock_path)
                opened = open_index(
                    self._index, write=write, create=write and create, deadline=journal.deadline
                )
                if opened is None:
                    yield None
                    return
                session = _Session(*opened, journal)
                try:
                    yield session
                finally:
                    os.close(session.fd)
                    if session.created and not session.committed:
                        _remove_if_empty(self._index)
            finally:
                self._lock.release()
        except TimeoutError as e:  # the index file stayed locked (see open_index)
            assert self.timeout is not None
            raise IndexLockTimeoutError(self.lock_path, self.timeout) from e
        except csv.Error as e:
            raise IndexReadError(self.index_path, e) from e
        except (OSError, threading.ThreadError) as e:
            reading = not write or (session is not None and session.reading)
            error = IndexReadError if reading else IndexWriteError
            raise error(self.index_path, e) from e


class _Session:
    """An open, locked index during one call (see :meth:`IndexWriter._session`)."""

    __slots__ = ("committed", "created", "fd", "journal", "reading", "st")

    def __init__(self, fd: int, st: os.stat_result, created: bool, journal: Journal) -> None:
        self.fd = fd
        self.st = st
        self.created = created
        self.journal = journal
        self.committed = False
        self.reading = False

    def read(self, step: Callable[[], _T]) -> _T:
        """Run ``step``; an ``OSError`` it raises is a read error."""
        self.reading = True
        try:
            return step()
        finally:
            self.reading = False


def replace_contents(writer: IndexWriter, transform: Callable[[bytes], bytes | None]) -> bool:
    """Rewrite a writer's whole index under its lock, atomically (for maintenance).

    ``transform`` gets the file's bytes and returns the new bytes, or None to
    leave the file alone; it runs under the lock after crash recovery, so no
    writer changes the file in between. The new file replaces the old one
    as every rewrite does (temporary file, same permission bits,
    ``os.replace``, journaled, fsynced if the writer is ``durable``).

    Returns
    -------
    bool
        Whether the file was replaced.

    Raises
    ------
    IndexReadError
        The index does not exist (``original_exception`` is a
        :class:`FileNotFoundError`) or cannot be read.
    IndexWriteError
        Replacing it failed; it is untouched.
    IndexLockTimeoutError
        The lock was not acquired within the writer's ``timeout``.
    """
    with writer._session(write=True, create=False) as s:
        if s is None:
            raise IndexReadError(
                writer.index_path,
                FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), writer._index),
            )
        replaced = _commit.replace_contents(
            s.fd, s.st, s.journal, writer._index, transform, writer.durable
        )
        _state.forget(writer._key)
        s.committed = True
        return replaced


def _same_existing(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _remove_if_empty(path: str) -> None:
    """Remove an index this call created but did not write to."""
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:  # pragma: no cover
            logger.warning("could not remove empty index %s: %s", path, e)
