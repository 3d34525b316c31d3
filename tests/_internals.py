"""The one place where tests reach into index-writer's internals.

Some guarantees can only be tested by putting a writer into a state no public
call leaves it in: holding the lock while another thread or process tries to
write, forgetting what this process knows (as a brand-new process would), or
leaving the crash journal a killed writer leaves. Those hooks live here, so
the rest of the suite uses the public API and a change of internals is
mended in one file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from index_writer import IndexWriter, _journal, _lock, _state

#: The first bytes of a crash journal.
JOURNAL_MAGIC = _journal.Journal.MAGIC


@contextmanager
def holding_lock(writer: IndexWriter, *, index_too: bool = False) -> Iterator[None]:
    """Hold ``writer``'s lock exactly as a write does, until the block ends.

    With ``index_too``, also hold the index file itself opened and locked,
    as a write in progress does (creating it if needed).
    """
    journal = writer._lock.acquire()
    fd = -1
    try:
        if index_too:
            opened = _lock.open_index(
                writer._index, write=True, create=True, deadline=journal.deadline
            )
            assert opened is not None
            fd = opened[0]
        yield
    finally:
        if fd >= 0:
            os.close(fd)
        writer._lock.release()


def forget_all() -> None:
    """Drop this process's cached knowledge of every index, as a new process has none."""
    _state.forget_all()


def path_offsets(writer: IndexWriter, paths: Iterable[str]) -> tuple[dict[str, int | None], int]:
    """Where this process's map of ``writer``'s index puts each of ``paths``.

    Returns ``{path: offset, or -1 for several rows, or None}`` and how many
    distinct paths the map holds in all.
    """
    state = _state._states[writer._key]
    assert state.paths is not None
    return {p: state.paths.where(p) for p in paths}, len(state.paths)


def journal_path(index: str | os.PathLike[str]) -> str:
    """The file holding ``index``'s crash journal."""
    return os.fspath(index) + ".lock"


def journal_record(index: str | os.PathLike[str]) -> dict[str, object] | None:
    """The operation ``index``'s journal shows in progress, or None."""
    try:
        with open(journal_path(index), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    marker = len(JOURNAL_MAGIC)
    if not data.startswith(JOURNAL_MAGIC) or data[marker : marker + 1] != b"A":
        return None
    record: dict[str, object] = json.loads(data[marker + 1 :].split(b"\n")[0])
    return record


def write_journal(index: str, record: bytes, payload: bytes = b"") -> None:
    """Leave ``record`` active in ``index``'s journal, as a killed writer does."""
    fd = os.open(journal_path(index), os.O_RDWR | os.O_CREAT)
    try:
        # Overwritten in place, as writers do: a longer earlier record's tail stays.
        _journal.Journal(fd).write(record, False, payload)
    finally:
        os.close(fd)


def write_append_journal(index: str, offset: int, data: bytes) -> None:
    """The journal a writer leaves when killed while appending ``data`` at ``offset``."""
    st = os.stat(index)
    record, payload = _journal.append_record(
        os.path.abspath(index), st.st_dev, st.st_ino, offset, data
    )
    write_journal(index, record, payload)
