"""The one place where tests reach into index-writer's internals.

Some guarantees can only be tested by putting a writer into a state no public
call leaves it in: holding the lock while another thread or process tries to
write, forgetting what this process knows (as a brand-new process would), or
leaving the crash journal a killed writer leaves. Those hooks live here, so
the rest of the suite uses the public API and a change of internals is
mended in one file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import fasteners

from index_writer import IndexWriter, _files, _handles, _journal, _lock, _writer

#: The first bytes of a crash journal.
JOURNAL_MAGIC = _journal.MAGIC


@contextmanager
def holding_lock(writer: IndexWriter) -> Iterator[None]:
    """Hold ``writer``'s lock exactly as a write in progress does, until the block ends.

    That is every layer: this process's mutexes, the lock file and the index
    file itself (created if needed). A helper thread holds them, so the block
    may run in any thread.
    """
    held, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def step(session: object) -> None:
        held.set()
        done.wait()

    def hold() -> None:
        try:
            _lock.run_locked(
                writer._index, writer._lock_abs, write=True, create=True, timeout=None, step=step
            )
        except BaseException as e:
            errors.append(e)
            held.set()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait()
    if errors:
        raise errors[0]
    try:
        yield
    finally:
        done.set()
        t.join()


@contextmanager
def holding_lock_file_only(writer: IndexWriter) -> Iterator[None]:
    """Hold only the lock file, as med-imagetools' writer does (no index lock)."""
    lock = fasteners.InterProcessLock(str(writer.lock_path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def recover(index: str | os.PathLike[str]) -> None:
    """Do what the next writer does first: undo a write a crash cut short.

    Nothing else is written (no entry); a missing index stays missing.
    """
    from index_writer import _state

    def step(session: _lock.Session | None) -> None:
        if session is not None:
            _state.refresh(session, None)

    absolute = os.path.abspath(index)
    _lock.run_locked(
        absolute, absolute + ".lock", write=True, create=False, timeout=None, step=step
    )


def forget_all() -> None:
    """Drop this process's knowledge and open files of every index, as a new process has none.

    As ``IndexWriter.close`` does for one index: each closed file's identity
    is forgotten too, since its inode number may be given to a new file.
    """
    for slot in list(_handles._slots.values()):
        with slot.mutex:
            _handles.close_index(slot)


def path_offsets(writer: IndexWriter, paths: Iterable[str]) -> tuple[dict[str, int | None], int]:
    """Where this process's map of ``writer``'s index puts each of ``paths``.

    Returns ``{path: offset of its row, or -1 for several rows, or None}``
    (candidates checked against the stored rows, as writes do) and how many
    rows the map holds in all.
    """
    from index_writer import _state

    found = _handles.slot_for(writer._index, create_directory=False)
    assert found is not None
    slot, real = found
    state = slot.state
    assert state is not None and state.paths is not None
    column = state.colpos[state.paths_column or ""]
    out: dict[str, int | None] = {}
    fd = os.open(real, os.O_RDONLY)
    try:
        for p in paths:
            hits = [
                offset
                for offset in state.paths.candidates(p)
                if _state.stored_row(fd, state, offset)[column] == p
            ]
            out[p] = None if not hits else hits[0] if len(hits) == 1 else -1
    finally:
        os.close(fd)
    return out, len(state.paths)


def journal_path(index: str | os.PathLike[str]) -> str:
    """The file holding ``index``'s crash journal."""
    return _journal.journal_path(os.fspath(index))


def journal_record(index: str | os.PathLike[str]) -> dict[str, object] | None:
    """The operation ``index``'s journal holds (finished or not), or None."""
    record = _journal.read_journal(journal_path(index))
    return None if record is None else record.info


def journal_file_record(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The operation the journal file at ``path`` holds (finished or not), or None."""
    record = _journal.read_journal(os.fspath(path))
    return None if record is None else record.info


def journal_pending(index: str | os.PathLike[str]) -> bool:
    """Whether ``index``'s journal shows a change the next writer would undo."""
    record = _journal.read_journal(journal_path(index))
    if record is None:
        return False
    if record.op == "rewrite":
        return True
    fd = os.open(index, os.O_RDONLY)
    try:
        return _journal.torn_append_start(record, fd, os.fstat(fd)) is not None
    finally:
        os.close(fd)


def exit_before_recording_appends_finished() -> None:
    """Make this process end at once, as a kill would, when it would record an append finished.

    For a forked child only: the append is on disk, its finished record not.
    """
    _journal.Journal.write_finished = lambda self, record: os._exit(9)  # type: ignore[method-assign]


def exit_after_making_the_index() -> None:
    """Make this process end at once, as a kill would, right after it creates an index file.

    For a forked child only: the file exists, empty, and nothing is written to it.
    """
    opening = _files.open_index

    def make_and_exit(name: str, create: bool) -> tuple[int, bool]:
        fd, created = opening(name, create)
        if created:
            os._exit(9)
        return fd, created

    _files.open_index = make_and_exit


def write_journal_file(path: str, record: bytes, payload: bytes = b"") -> None:
    """Leave ``record`` in the journal file at ``path``, as a writer killed mid-change does."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _journal.Journal(fd, path).write(record, False, payload)
    finally:
        os.close(fd)


def journal_beside_lock(lock_path: str, index: str) -> str:
    """The journal a writer that may not write beside ``index`` keeps beside its lock file."""
    return _journal.journal_beside_lock(lock_path, index)


def append_record(dev: int, ino: int, offset: int, data: bytes) -> tuple[bytes, bytes]:
    """The journal record (and payload) of an append of ``data`` at ``offset``."""
    return _journal.append_record(dev, ino, offset, data)


def write_journal(index: str, record: bytes, payload: bytes = b"") -> None:
    """Leave ``record`` in ``index``'s journal, as a writer killed mid-change does."""
    path = journal_path(index)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # Overwritten in place, as writers do: a longer earlier record's tail stays.
        _journal.Journal(fd, path).write(record, False, payload)
    finally:
        os.close(fd)


def write_append_journal(index: str, offset: int, data: bytes) -> None:
    """The journal a writer leaves when killed while appending ``data`` at ``offset``."""
    st = os.stat(index)
    record, payload = _journal.append_record(st.st_dev, st.st_ino, offset, data)
    write_journal(index, record, payload)


def write_rewrite_journal(index: str, temp: str) -> None:
    """The journal a writer leaves when killed while rewriting through ``temp``."""
    write_journal(index, _journal.rewrite_record(temp))


def close_all() -> None:
    """Close every file this process keeps open for any index or lock file.

    What ``IndexWriter.close()`` does for one index, for all of them at once
    (for a test that unmounts a filesystem after a failed write).
    """
    for slot in list(_handles._slots.values()):
        with slot.mutex:
            slot.close_files()
            slot.state = None
    for lock in {*_handles._lock_files.values(), *_handles._lock_paths.values()}:
        with lock.mutex:
            lock.close()


def temp_name(index: str | os.PathLike[str]) -> str:
    """A temporary file name a rewrite of ``index`` would use (shortened to fit)."""
    from index_writer import _files

    return _files.new_temp_name(os.path.realpath(index))


def replace_contents(writer: IndexWriter, new: bytes) -> bool:
    """Rewrite ``writer``'s whole index to ``new`` as ``dedupe`` does (maintenance)."""
    return _writer.replace_contents(writer, lambda fd, size: [new])


def registry_sizes() -> dict[str, int]:
    """How many entries this process's registries of open indexes and lock files hold."""
    return {
        "slots": len(_handles._slots),
        "names": len(_handles._resolved),
        "files": len(_handles._by_file),
        "lock files": len(_handles._lock_files),
    }


@contextmanager
def just_before_opening(path: str | os.PathLike[str], action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` whenever a writer is about to open the index at ``path``.

    The writer is then inside its call, holding this process's mutex for the
    index: ``action`` sees what another thread would see at that moment.
    """
    real = os.path.realpath(path)
    opening = _files.open_index

    def hooked(name: str, create: bool) -> tuple[int, bool]:
        if name == real:
            action()
        return opening(name, create)

    _files.open_index = hooked
    try:
        yield
    finally:
        _files.open_index = opening
