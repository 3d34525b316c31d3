"""The exception hierarchy.

Names, constructor signatures, attributes and messages match
``imgtools.io.writers.index_writer`` (med-imagetools 2.16), so code that catches
the original's exceptions keeps working after the one-line import change.
:class:`IndexLockTimeoutError` is new.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "IndexLockTimeoutError",
    "IndexReadError",
    "IndexSchemaMismatchError",
    "IndexWriteError",
    "IndexWriterError",
]


class IndexWriterError(Exception):
    """
    Base exception for all IndexWriter-related errors.

    This should be used to catch any general IndexWriter failure
    that does not fall under a more specific error type.

    Examples
    --------
    >>> issubclass(IndexReadError, IndexWriterError)
    True
    """


class IndexSchemaMismatchError(IndexWriterError):
    """
    Raised when an entry has columns the index lacks and merging is disabled.

    Raised by ``write_entry``/``write_entries`` with ``merge_columns=False``;
    the index is left untouched.

    Parameters
    ----------
    missing_fields : set[str]
        The entry's columns that the index does not have.
    index_path : Path
        The index file.

    Examples
    --------
    >>> err = IndexSchemaMismatchError({"b", "a"}, Path("index.csv"))
    >>> print(err)
    Schema mismatch in index file 'index.csv'. Missing fields: ['a', 'b']. \
Set merge_columns=True to allow schema evolution.
    """

    def __init__(self, missing_fields: set[str], index_path: Path) -> None:
        self.missing_fields = missing_fields
        self.index_path = index_path
        msg = (
            f"Schema mismatch in index file '{index_path}'. "
            f"Missing fields: {sorted(missing_fields)}. "
            "Set merge_columns=True to allow schema evolution."
        )
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[IndexSchemaMismatchError], tuple[object, ...]]:
        return (type(self), (self.missing_fields, self.index_path))


class IndexReadError(IndexWriterError):
    """
    Raised when the index file cannot be read or is not a well-formed CSV.

    The index is left untouched. For a malformed file the message names the
    line (``line 7: ...``) and ``original_exception`` is a :class:`csv.Error`.

    Parameters
    ----------
    index_path : Path
        The index file.
    original_exception : Exception
        What went wrong: an :class:`OSError` or a :class:`csv.Error`.

    Examples
    --------
    >>> err = IndexReadError(Path("index.csv"), OSError("disk on fire"))
    >>> print(err)
    Failed to read index file 'index.csv': disk on fire
    """

    def __init__(self, index_path: Path, original_exception: Exception) -> None:
        self.index_path = index_path
        self.original_exception = original_exception
        msg = f"Failed to read index file '{index_path}': {original_exception}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[IndexReadError], tuple[object, ...]]:
        return (type(self), (self.index_path, self.original_exception))


class IndexWriteError(IndexWriterError):
    """
    Raised when writing to the index file fails.

    The index is byte-identical to what it was before the call: no half row,
    no truncated file, no stray temporary file.

    Parameters
    ----------
    index_path : Path
        The index file.
    original_exception : Exception
        What went wrong, usually an :class:`OSError` (``ENOSPC``, ``EFBIG``,
        ``EIO``, ``EACCES`` ...).

    Examples
    --------
    >>> import errno, os
    >>> err = IndexWriteError(Path("index.csv"), OSError(errno.ENOSPC, "No space left"))
    >>> err.original_exception.errno == errno.ENOSPC
    True
    """

    def __init__(self, index_path: Path, original_exception: Exception) -> None:
        self.index_path = index_path
        self.original_exception = original_exception
        msg = f"Failed to write to index file '{index_path}': {original_exception}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[IndexWriteError], tuple[object, ...]]:
        return (type(self), (self.index_path, self.original_exception))


class IndexLockTimeoutError(IndexWriterError):
    """
    Raised when the index lock could not be acquired within ``timeout`` seconds.

    Nothing was read or written. Another writer holds the lock: wait and
    retry, or raise the writer's ``timeout``. The message says who holds it
    where that can be known.

    Parameters
    ----------
    lock_path : Path
        The lock file.
    timeout : float
        The timeout that expired, in seconds.
    holder : str, optional
        Who holds the lock, as far as known: the process the kernel names,
        and the process and host that made the last change to the index (or
        began it, if it is not finished).

    Examples
    --------
    >>> print(IndexLockTimeoutError(Path("index.csv.lock"), 2.5))
    Timed out after 2.5 s waiting for lock file 'index.csv.lock'; another \
writer holds it. Retry later or pass a larger timeout.
    >>> print(IndexLockTimeoutError(Path("i.lock"), 1, "held by process 4242"))
    Timed out after 1 s waiting for lock file 'i.lock'; another writer holds \
it (held by process 4242). Retry later or pass a larger timeout.
    """

    def __init__(self, lock_path: Path, timeout: float, holder: str | None = None) -> None:
        self.lock_path = lock_path
        self.timeout = timeout
        self.holder = holder
        who = f" ({holder})" if holder else ""
        msg = (
            f"Timed out after {timeout} s waiting for lock file '{lock_path}'; "
            f"another writer holds it{who}. Retry later or pass a larger timeout."
        )
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[IndexLockTimeoutError], tuple[object, ...]]:
        return (type(self), (self.lock_path, self.timeout, self.holder))
