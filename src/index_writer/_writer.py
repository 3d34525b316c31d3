"""The public :class:`IndexWriter`: the lock, the plan and the commit, combined.

Every call runs one step under the index lock (:func:`._lock.run_locked`,
which also opens the index and releases everything, even when interrupted)
and :meth:`IndexWriter._run` is the one place where ``OSError``,
``csv.Error`` and lock timeouts become this package's exceptions. A write:

1. brings what this process knows about the file up to date
   (:func:`._state.refresh`: nothing to read when the file is unchanged, the
   crash journal and the appended bytes when another writer appended);
2. decides what to do (:func:`._plan.plan`: append, rewrite, or nothing);
3. does it, crash-safe (:mod:`._commit`).

So an append costs the same at a million rows as at a thousand, and the only
whole-file rewrites are schema changes and real replacements.
"""

from __future__ import annotations

import csv
import decimal
import errno
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import _commit, _files, _handles, _state
from ._errors import IndexLockTimeoutError, IndexReadError, IndexWriteError
from ._lock import LockTimeout, Session, hold_new_file, run_locked
from ._plan import Append, guess_append, plan
from ._rows import Row, as_path_str, prepare

__all__ = ["IndexWriter", "copy_snapshot", "replace_contents"]

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
        The lock file that serializes writers. Defaults (None or ``""``) to
        the index path with ``.lock`` appended (``index.csv.lock``), as in the
        original, so both implementations exclude each other. Must differ
        from ``index_path``.
        Deleting it while writers run is safe (see the concurrency guide).
    timeout : float | None, optional
        Seconds to wait for the lock before raising
        :class:`IndexLockTimeoutError`: any finite real number >= 0 (numpy
        numbers too); ``None`` (default) or ``inf`` waits forever.
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
        A path is empty, ``lock_path`` is the index itself, or ``timeout``
        is negative or NaN.
    TypeError
        A path is not a str or os.PathLike, or ``timeout`` is not a number.

    Notes
    -----
    A writer keeps the index, its lock file and its crash journal open
    between calls (a process keeps at most a few dozen indexes open, closing
    the least recently used). :meth:`close`, or leaving a ``with`` block,
    closes them at once; the writer stays usable and reopens them when
    needed. Writing through a symbolic link writes the file it points to.

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
    >>> with IndexWriter(index) as w:
    ...     w.write_entry("out/sub-02_CT.nii.gz", {"subject": "sub-02", "modality": "CT"})
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        lock_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        durable: bool = False,
    ) -> None:
        self._set_paths(index_path, lock_path)
        self.timeout: float | None = _check_timeout(timeout)
        self.durable: bool = bool(durable)

    def _set_paths(
        self, index_path: str | os.PathLike[str], lock_path: str | os.PathLike[str] | None
    ) -> None:
        """Check and set both paths (relative ones resolved against the working directory)."""
        if isinstance(lock_path, str) and not lock_path:
            lock_path = None  # as the original takes it: ``lock_path or <default>``
        for what, value in (("index_path", index_path), ("lock_path", lock_path)):
            if value is not None and not as_path_str(value, what):
                raise ValueError(f"{what} must not be empty")
        index = Path(as_path_str(index_path, "index_path"))
        lock = (
            Path(as_path_str(lock_path, "lock_path"))
            if lock_path is not None
            else index.with_suffix(index.suffix + ".lock")
        )
        index_abs, lock_abs = os.path.abspath(index), os.path.abspath(lock)
        if os.path.normcase(lock_abs) == os.path.normcase(index_abs) or _same_existing(
            lock_abs, index_abs
        ):
            raise ValueError(
                f"lock_path must not be the index itself ({index}): "
                "closing the index would release the lock"
            )
        self._index_path, self._lock_path = index, lock
        self._index, self._lock_abs = index_abs, lock_abs

    @property
    def index_path(self) -> Path:
        """The index file, as given.

        May be set, as with the original: later calls use the new file (the
        lock file stays the same). A relative path is resolved when set.
        """
        return self._index_path

    @index_path.setter
    def index_path(self, value: str | os.PathLike[str]) -> None:
        self._set_paths(value, self._lock_path)

    @property
    def lock_path(self) -> Path:
        """The lock file. May be set (None or ``""``: the index's default)."""
        return self._lock_path

    @lock_path.setter
    def lock_path(self, value: str | os.PathLike[str] | None) -> None:
        self._set_paths(self._index_path, value)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(index_path={str(self.index_path)!r}, "
            f"lock_path={str(self.lock_path)!r}, timeout={self.timeout!r}, "
            f"durable={self.durable!r})"
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled writer, also one med-imagetools' own class pickled.

        Pickles name a class by where it lives, so a med-imagetools writer
        sent to a process where index-writer stands in for it (see
        :func:`install_as_imgtools`) is restored as this class, with only
        the original's attributes: it becomes a writer of the same index and
        lock file, set up as if created there.
        """
        if "_index_path" in state:
            self.__dict__.update(state)
        else:
            IndexWriter.__init__(
                self,
                state["index_path"],
                state.get("lock_path"),
                timeout=state.get("timeout"),
                durable=state.get("durable", False),
            )

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files this process keeps open for this index.

        The index, its lock file and its crash journal stay open between
        calls, so that a write costs a few system calls; this closes them
        (waiting for a call in progress in another thread), so that, for
        instance, the filesystem can be unmounted. The writer stays usable:
        its next call opens them again.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> writer = IndexWriter(Path(tempfile.mkdtemp()) / "index.csv")
        >>> writer.write_entry("a.nii", {"subject": "s1"})
        >>> writer.close()
        >>> len(writer.read_rows())
        1
        """
        _handles.close_slot(self._index, self._lock_abs)

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
            ``str(value)``, and ``None`` as an empty field. Anything else
            with an ``items()`` method is taken too, as the original takes
            it: a pandas ``Series`` (a row from ``DataFrame.iterrows()``).
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
        # Format the rows now, for the header known now: the lock is then held
        # only for the system calls, unless the header changed meanwhile.
        known = _handles.known_state(self._index)
        guess = guess_append(known, rows) if known is not None else None
        self._run(
            True,
            lambda s, phase: self._write(
                s, phase, rows, filepath_column, replace_existing, merge_columns, guess
            ),
        )

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
        return self._run(False, _read_all)

    def _write(
        self,
        s: Session | None,
        phase: _Phase,
        rows: list[Row],
        filepath_column: str,
        replace_existing: bool,
        merge_columns: bool,
        guess: Append | None,
    ) -> None:
        assert s is not None and s.journal is not None
        committed = False
        try:
            phase.reading = True
            state = _state.refresh(s, filepath_column if replace_existing else None)
            todo = plan(
                state,
                rows,
                filepath_column,
                replace_existing=replace_existing,
                merge_columns=merge_columns,
                stored_row=lambda offset: _state.stored_row(s.fd, state, offset),
                index_path=self.index_path,
                guess=guess,
            )
            phase.reading = False
            try:
                if isinstance(todo, Append):
                    s.after = _commit.append(s.fd, state, s.journal, todo, self.durable)
                elif todo is not None:
                    _refuse_hard_links(s)
                    s.slot.state = _commit.rewrite(
                        s.fd, state, s.journal, todo, s.path, filepath_column, self.durable
                    )
                    hold_new_file(s)
            except BaseException:
                s.slot.state = None  # whatever happened, read the file afresh next time
                raise
            committed = True
        finally:
            if s.created and not committed:
                _remove_if_empty(s)

    def _run(
        self, write: bool, step: Callable[[Session | None, _Phase], _T], *, create: bool = True
    ) -> _T:
        """Run ``step`` under the lock; the one place errors become ours.

        A writer (``write``) creates a missing index unless ``create`` is
        False (then ``step`` gets None, as a reader of a missing index does).

        ``OSError`` becomes :class:`IndexWriteError` for writes, or
        :class:`IndexReadError` for reads and while ``step`` says it is
        reading (``phase.reading``); ``csv.Error`` becomes
        :class:`IndexReadError`; a lock not taken in time,
        :class:`IndexLockTimeoutError`.
        """
        phase = _Phase(reading=not write)
        try:
            return run_locked(
                self._index,
                self._lock_abs,
                write=write,
                create=write and create,
                timeout=self.timeout,
                step=lambda s: step(s, phase),
                idle=_state.read_ahead if write else None,
            )
        except LockTimeout as e:
            assert self.timeout is not None
            raise IndexLockTimeoutError(self.lock_path, self.timeout, e.holder) from None
        except csv.Error as e:
            raise IndexReadError(self.index_path, e) from e
        except OSError as e:
            error = IndexReadError if phase.reading else IndexWriteError
            raise error(self.index_path, e) from e


class _Phase:
    """Whether a step is reading (its OSErrors are read errors) or writing."""

    __slots__ = ("reading",)

    def __init__(self, reading: bool) -> None:
        self.reading = reading


def _read_all(s: Session | None, phase: _Phase) -> list[dict[str, str]]:
    if s is None:
        return []
    _, rows = _state.iter_rows(s.fd, s.end)
    return list(rows)


def replace_contents(
    writer: IndexWriter, produce: Callable[[int, int], Iterable[bytes] | None]
) -> bool:
    """Rewrite a writer's whole index under its lock, atomically (for maintenance).

    ``produce(fd, size)`` reads the index (open as ``fd``, ``size`` bytes,
    with ``os.pread``) and returns the new file's bytes as an iterable of
    chunks, written to the new file as they come, or None to leave the file
    alone. It runs under the lock after crash recovery, so no writer changes
    the file in between. The new file replaces the old one as every rewrite
    does (temporary file, same permission bits and owner, ``os.replace``,
    journaled, fsynced if the writer is ``durable``).

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

    def step(s: Session | None, phase: _Phase) -> bool:
        if s is None:
            phase.reading = True
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), writer._index)
        assert s.journal is not None and s.st is not None
        phase.reading = True
        _state.refresh(s, None)  # undo what a crash left, and check the file as writers do
        phase.reading = False
        _refuse_hard_links(s)
        try:
            return _commit.replace_contents(
                s.fd, s.st.st_size, s.journal, s.path, produce, writer.durable
            )
        finally:
            s.slot.state = None

    return writer._run(True, step, create=False)


def copy_snapshot(writer: IndexWriter, out: int) -> bool:
    """Copy a consistent snapshot of a writer's index to the open file ``out``.

    The bytes are copied under the shared lock, as :meth:`IndexWriter.read_rows`
    reads them (an append a crash cut short is left out); the lock is held
    only for the copy, so a slow consumer of the copy never holds up
    writers. Returns False (copying nothing) if the index does not exist.

    Raises
    ------
    IndexReadError, IndexLockTimeoutError
        As for :meth:`IndexWriter.read_rows`.
    """

    def step(s: Session | None, phase: _Phase) -> bool:
        if s is None:
            return False
        offset = 0
        while offset < s.end:
            chunk = _files.pread_all(s.fd, min(1 << 20, s.end - offset), offset)
            if not chunk:
                break
            _files.write_all(out, chunk)
            offset += len(chunk)
        return True

    return writer._run(False, step)


def _check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds (None: forever); TypeError/ValueError if it is not one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (numbers.Real, decimal.Decimal)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an integer beyond any float: longer than forever
        seconds = math.inf
    except ValueError:  # a signalling Decimal NaN
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
    return None if math.isinf(seconds) else seconds


def _refuse_hard_links(s: Session) -> None:
    """A rewrite replaces one name: refuse it when the index has several."""
    assert s.st is not None
    if s.st.st_nlink > 1:
        raise OSError(
            errno.EMLINK,
            f"the index has {s.st.st_nlink} hard links; rewriting it would leave "
            "the other names holding the old rows (keep one name, or copy the file)",
            s.path,
        )


def _same_existing(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _remove_if_empty(s: Session) -> None:
    """Remove an index this call created but did not write to."""
    try:
        if os.fstat(s.fd).st_size == 0:
            os.unlink(s.path)
    except OSError as e:
        if e.errno != errno.ENOENT:  # pragma: no cover
            logger.warning("could not remove empty index %s: %s", s.path, e)
