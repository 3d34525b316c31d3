"""The lock file may be deleted at any moment, even while a writer holds it."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
from pathlib import Path

import pytest

import _internals
from _system import in_child
from index_writer import IndexLockTimeoutError, IndexWriter


def _write(index: str, path: str) -> None:
    IndexWriter(index).write_entry(path, {"by": "child"})


def test_deleting_a_held_lock_file_does_not_let_a_second_writer_in(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    holder = IndexWriter(index)
    holder.write_entry("first", {"by": "parent"})
    ctx = mp.get_context("spawn")

    # A writer in its critical section holds the lock file and the index.
    with _internals.holding_lock(holder):
        os.unlink(holder.lock_path)  # as med-imagetools does at the end of a run
        child = ctx.Process(target=_write, args=(str(index), "second"))
        child.start()
        # The child creates and locks a new lock file, but must wait for us.
        child.join(timeout=3)
        assert child.is_alive(), "a second writer got in while the index was held"
        assert [r.split(",")[0] for r in index.read_text().splitlines()] == [
            "path",
            "first",
        ]
    child.join(timeout=60)
    assert child.exitcode == 0
    assert [r["path"] for r in holder.read_rows()] == ["first", "second"]


def test_the_lock_file_alone_would_not_have_been_enough(tmp_path: Path) -> None:
    """The counterfactual: holding only the (deleted) lock file lets a writer in."""
    index = tmp_path / "index.csv"
    holder = IndexWriter(index)
    holder.write_entry("first", {"by": "parent"})
    with _internals.holding_lock_file_only(holder):
        os.unlink(holder.lock_path)
        child = mp.get_context("spawn").Process(target=_write, args=(str(index), "second"))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0  # it wrote while we "held the lock"
    assert [r["path"] for r in holder.read_rows()] == ["first", "second"]


def _lock_file_descriptor(lock_path: str) -> int:
    """The descriptor this process has open on ``lock_path``."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == lock_path:
                return int(fd)
        except OSError:  # the descriptor listdir used, gone
            continue
    raise AssertionError(f"{lock_path} is not open")


def _reuse_then_drop(number: int, sentinel: str, keep: list[object]) -> str:
    """In the child: put a file of its own at ``number``, then drop the inherited objects."""
    fd = os.open(sentinel, os.O_RDONLY)
    if fd != number:
        os.dup2(fd, number)  # the number the parent's lock file had (closed at the fork)
        os.close(fd)
    keep.clear()  # the last reference to the parent's objects goes
    gc.collect()
    return os.readlink(f"/proc/self/fd/{number}")  # still the child's file?


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_forked_child_keeps_its_descriptors_when_inherited_objects_are_collected(
    tmp_path: Path,
) -> None:
    """Objects a child inherits close nothing of the child's when they go.

    The parent's lock file handle stays reachable after the fork -- here from
    a lock timeout's traceback, kept by the caller -- and is collected in the
    child after the child opened a file of its own under the same number.
    """
    index = str(tmp_path / "index.csv")
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("mine")
    w = IndexWriter(index)
    w.write_entry("a", {"k": 1})  # the lock file is open in this process
    number = _lock_file_descriptor(os.path.realpath(index + ".lock"))
    keep: list[object] = []
    with _internals.holding_lock(w):
        try:
            IndexWriter(index, timeout=0.01).write_entry("x", {"k": 0})
        except IndexLockTimeoutError as e:
            keep.append(e)  # its traceback holds the lock file's handle
    assert keep
    assert in_child(_reuse_then_drop, number, str(sentinel), keep) == str(sentinel)
    w.write_entry("b", {"k": 2})  # and the parent's own handle still works
    assert [r["path"] for r in w.read_rows()] == ["a", "b"]


def _hold_with_fasteners(lock_path: str, conn: object) -> None:
    """Hold ``lock_path`` as med-imagetools' own writer does, until told."""
    import fasteners

    with fasteners.InterProcessLock(lock_path):
        conn.send("held")  # type: ignore[attr-defined]
        conn.recv()  # type: ignore[attr-defined]


@pytest.mark.parametrize("index_was", ["written", "closed"])
def test_a_directory_renamed_away_leaves_its_lock_file_behind(
    tmp_path: Path, index_was: str
) -> None:
    # run1/ was written to, then renamed run2/: same directory, same inode
    # number (as when a deleted directory's number goes to a new one).
    # Writing run2/index.csv must lock run2/index.csv.lock, which another
    # program may hold, not the lock file the process knew under run1/ (it
    # once did, and made run1/ again to do it).
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    w = IndexWriter(run1 / "index.csv")
    w.write_entry("a.nii", {"v": 1})
    if index_was == "closed":
        w.close()
    run1.rename(run2)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=_hold_with_fasteners, args=(str(run2 / "index.csv.lock"), child))
    holder.start()
    try:
        assert parent.recv() == "held"
        with pytest.raises(IndexLockTimeoutError) as info:
            IndexWriter(run2 / "index.csv", timeout=0.3).write_entry("b.nii", {"v": 2})
        assert Path(info.value.lock_path) == run2 / "index.csv.lock"
    finally:
        parent.send("release")
        holder.join(30)
    assert not run1.exists()
    IndexWriter(run2 / "index.csv").write_entry("b.nii", {"v": 2})
    assert [r["path"] for r in IndexWriter(run2 / "index.csv").read_rows()] == ["a.nii", "b.nii"]
    assert not run1.exists()
