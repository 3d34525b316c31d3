"""The lock file may be deleted at any moment, even while a writer holds it."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import _internals
from index_writer import IndexWriter


def _write(index: str, path: str) -> None:
    IndexWriter(index).write_entry(path, {"by": "child"})


def test_deleting_a_held_lock_file_does_not_let_a_second_writer_in(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    holder = IndexWriter(index)
    holder.write_entry("first", {"by": "parent"})
    ctx = mp.get_context("spawn")

    # A writer in its critical section holds the lock file and the index.
    with _internals.holding_lock(holder, index_too=True):
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
    with _internals.holding_lock(holder):
        os.unlink(holder.lock_path)
        child = mp.get_context("spawn").Process(target=_write, args=(str(index), "second"))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0  # it wrote while we "held the lock"
    assert [r["path"] for r in holder.read_rows()] == ["first", "second"]
