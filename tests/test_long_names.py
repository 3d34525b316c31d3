"""Index names as long as the filesystem accepts, through every kind of write.

The lock file ``NAME.lock`` needs five bytes more than the index name, so
with the default lock file the longest usable name is NAME_MAX - 5 bytes
(250 on most filesystems). Every other file a writer makes next to the index
-- the journal, a rewrite's temporary file, the file an incomplete last row
is moved into -- must fit whatever the name, and nothing may be left behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import pytest

import _internals
from _cli_run import run
from _workers import (
    big_path,
    check_index,
    context_for,
    entry_path,
    kill_inside_a_big_append,
    prepare_for_big_batch,
    write_range,
)
from index_writer import IndexWriter, dedupe
from index_writer import check_index as check_report

FORK = multiprocessing.get_context("fork")


def _long_name(directory: Path, length: int, char: str) -> str:
    """A name of exactly ``length`` bytes, of ``char`` (1 or 2 bytes in UTF-8) then ``.csv``."""
    width = len(char.encode())
    body = char * ((length - 4) // width)
    body += "x" * (length - 4 - len(body.encode()))
    name = body + ".csv"
    assert len(name.encode()) == length
    return name


def _fresh_process_writes(index: str, tag: str) -> None:
    child = FORK.Process(target=write_range, args=(index, tag, 1))
    child.start()
    child.join(60)
    assert child.exitcode == 0


@pytest.mark.parametrize("char", ["i", "é"])
def test_longest_name_with_its_lock_file_through_every_write(
    tmp_path: Path, char: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = _long_name(tmp_path, limit - len(".lock"), char)
    index = tmp_path / name
    paths = {entry_path("base", i) for i in range(30)}
    write_range(str(index), "base", 30)  # appends (with some schema changes)
    w = IndexWriter(index)
    big = big_path("base", 0)
    w.write_entry(big, context_for(big))  # "blob" is a new column: a rewrite
    paths.add(big)
    p = entry_path("base", 3)
    w.write_entry(p, context_for(p, 1), replace_existing=True)  # a real replacement
    revs = dict.fromkeys(paths, 0) | {p: 1}
    w.write_entry(entry_path("base", 4), context_for(entry_path("base", 4)))  # a duplicate
    r = run("check", index, "--dedupe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{index}: removed 1 duplicate row\n")
    check_index(index, exact=paths, revs=revs)

    # A torn append (its journal says so), undone by a fresh process.
    before = index.read_bytes()
    row = f"{entry_path('tear', 0)},{'x' * 300}\n".encode()
    _internals.write_append_journal(str(index), len(before), row)
    with index.open("ab") as f:
        f.write(row[:100])
    _fresh_process_writes(str(index), "after-torn")
    paths.add(entry_path("after-torn", 0))
    revs[entry_path("after-torn", 0)] = 0
    assert b"tear/" not in index.read_bytes()

    # A rewrite cut short: its temporary file (a shortened name) is removed.
    temp = _internals.temp_name(index)
    assert len(os.path.basename(temp).encode()) <= limit
    Path(temp).write_bytes(before[:100])
    _internals.write_rewrite_journal(str(index), temp)
    _fresh_process_writes(str(index), "after-rewrite")
    paths.add(entry_path("after-rewrite", 0))
    revs[entry_path("after-rewrite", 0)] = 0
    assert not os.path.exists(temp)

    # A writer SIGKILLed inside a 65 MB append.
    setup = prepare_for_big_batch(index)
    paths.add(setup)
    revs[setup] = 0
    size = kill_inside_a_big_append(index)
    assert index.stat().st_size > size
    _fresh_process_writes(str(index), "after-kill")
    paths.add(entry_path("after-kill", 0))
    revs[entry_path("after-kill", 0)] = 0

    # No journal at all, and a last row cut inside its quoted value: moved aside.
    IndexWriter(index).close()  # this process keeps nothing open (nor a deleted journal)
    os.unlink(_internals.journal_path(index))
    cut = f'{entry_path("cut", 0)},"a,b'.encode()
    with index.open("ab") as f:
        f.write(cut)
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        IndexWriter(index).write_entry(entry_path("after-cut", 0), context_for(
            entry_path("after-cut", 0)))
    paths.add(entry_path("after-cut", 0))
    revs[entry_path("after-cut", 0)] = 0
    assert "incomplete row" in caplog.text

    check_index(index, exact=paths, revs=revs)
    names = sorted(os.listdir(tmp_path))
    assert all(len(n.encode()) <= limit for n in names)
    moved = [n for n in names if "incomplete-" in n]
    assert len(moved) == 1 and (tmp_path / moved[0]).read_bytes() == cut
    assert [p for p in check_report(index).problems if moved[0] in p]  # check finds it
    assert sorted(set(names) - {*moved}) == sorted(
        [name, name + ".lock", os.path.basename(_internals.journal_path(index))]
    )


@pytest.mark.parametrize("extra", [0, 5])
def test_names_too_long_for_a_lock_file_work_with_the_lock_elsewhere(
    tmp_path: Path, extra: int
) -> None:
    """NAME_MAX - 5 < len(name) <= NAME_MAX: the lock file lives elsewhere."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    index = tmp_path / "data" / _long_name(tmp_path, limit - 5 + extra, "n")
    w = IndexWriter(index, lock_path=tmp_path / "locks" / "index.lock")
    w.write_entry("a", {"k": 1})
    w.write_entry("b", {"k": 2, "new": "x"})
    w.write_entry("a", {"k": 3}, replace_existing=True)
    assert w.read_rows() == [
        {"path": "a", "k": "3", "new": ""},
        {"path": "b", "k": "2", "new": "x"},
    ]
    names = os.listdir(index.parent)
    assert len(names) == 2 and all(len(n.encode()) <= limit for n in names)
    assert not [n for n in names if n.endswith(".tmp")]


def test_reading_an_index_whose_lock_file_name_would_be_too_long(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    index = tmp_path / _long_name(tmp_path, limit, "n")
    IndexWriter(index, lock_path=tmp_path / "index.lock").write_entry("a", {"k": 1})
    assert IndexWriter(index).read_rows() == [{"path": "a", "k": "1"}]


@pytest.mark.parametrize("length", [8, 250])
def test_a_file_name_that_is_not_utf8_works_as_the_os_stores_it(
    tmp_path: Path, length: int
) -> None:
    # A Latin-1 file name (b"caf\xe9..."), as os.fsdecode gives it to Python:
    # the original writes it; so must every call, and the tool, which names
    # the journal and lock file after it (shortened when too long).
    raw = b"caf\xe9" + b"x" * (length - 8) + b".csv"
    index = tmp_path / os.fsdecode(raw)
    w = IndexWriter(index)
    w.write_entry("a.nii", {"s": 1})
    w.write_entry("b.nii", {"s": 2}, replace_existing=True)
    assert w.read_rows() == [{"path": "a.nii", "s": "1"}, {"path": "b.nii", "s": "2"}]
    assert check_report(index).clean and dedupe(index) == 0
    names = os.listdir(os.fsencode(tmp_path))
    assert raw in names and len(names) == 3  # the index, its lock file and its journal
    assert all(len(n) <= 255 for n in names)
