"""Interoperation with the original: med-imagetools 2.16.0's IndexWriter.

The original is downloaded at test time (``pip download --no-deps
med-imagetools==2.16.0``, cached under ``~/.cache/index-writer-tests`` or
``$INDEX_WRITER_TEST_CACHE``), and its ``imgtools/io/writers/index_writer.py``
is loaded from the wheel by file path (it needs only fasteners) by
``_original.py``, the loader the benchmarks use too. None of its code is part
of this repository. Without network access the tests are skipped.

The original locks ``<index>.lock`` with fasteners (as we do), but re-sorts
the columns alphabetically and rewrites the whole file in place with CR LF
on every write: ours must notice such a foreign rewrite and lose nothing.
"""

from __future__ import annotations

import csv
import itertools
import multiprocessing
import threading
from pathlib import Path

import pytest

from _original import OriginalUnavailable, load, source_path
from _workers import (
    ROUNDS,
    check_index,
    context_for,
    entry_path,
    fake_append_journal,
    original_write_range,
    read_csv,
    round_of,
    thread_paths,
    write_threads,
)
from index_writer import IndexLockTimeoutError, IndexWriter

FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="session")
def original_file() -> str:
    """Path of the original ``index_writer.py``, extracted from the cached wheel."""
    try:
        return str(source_path())
    except OriginalUnavailable as e:
        pytest.skip(str(e))


def test_original_loads(original_file: str) -> None:
    mod = load(original_file)
    assert {"IndexWriter", "IndexWriteError", "IndexSchemaMismatchError"} <= set(vars(mod))


def test_original_and_ours_write_concurrently(tmp_path: Path, original_file: str) -> None:
    """2 processes with the original, 2 with ours (2 threads each), released at once.

    Every write of the original re-sorts the columns and rewrites the file
    with CR LF in place; our writers must notice and still lose nothing (nor
    may the original lose ours: both take the same fasteners lock). Our
    threads pause 2 ms between writes, as a pipeline does between files:
    the original polls for the lock and would otherwise hardly ever get it
    while ours run. All four processes write in rounds and meet at a barrier
    after each, so the two writers meet in each round: whatever the
    scheduling, the file must then hold every round's rows after the rows
    of the rounds before it, with rows of both writers in each.
    """
    index = str(tmp_path / "index.csv")
    go = FORK.Event()
    rounds = FORK.Barrier(4)
    n_orig, n_ours = 80, 150
    procs = [
        FORK.Process(
            target=original_write_range,
            args=(original_file, index, f"plain-o{k}", n_orig, go, rounds),
        )
        for k in range(2)
    ] + [
        FORK.Process(
            target=write_threads, args=(index, f"plain-w{k}", 2, n_ours, go, 0.002, rounds)
        )
        for k in range(2)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    want = {entry_path(f"plain-o{k}", i) for k in range(2) for i in range(n_orig)}
    for k in range(2):
        want |= thread_paths(f"plain-w{k}", 2, n_ours)
    check_index(index, exact=want)
    data = Path(index).read_bytes()
    # The original (CR LF) had the file last or ours kept its line ending.
    assert data.count(b"\n") == data.count(b"\r\n")
    # Rows stay in the order they were written in: round by round.
    header, records = read_csv(index)
    col = header.index("path")
    paths = [r[col] for r in records]
    who = [p.startswith("plain-o") for p in paths]
    in_round = [
        round_of(int(p.rsplit("/e", 1)[1][:6]), n_orig if o else n_ours, ROUNDS)
        for p, o in zip(paths, who, strict=True)
    ]
    assert in_round == sorted(in_round)
    for k in range(ROUNDS):
        assert {o for o, r in zip(who, in_round, strict=True) if r == k} == {True, False}
    turns = sum(1 for a, b in itertools.pairwise(who) if a != b)
    print(f"\n{turns} turns between the original and ours")


def test_ours_reads_and_extends_files_written_by_original(
    tmp_path: Path, original_file: str
) -> None:
    orig = load(original_file)
    index = tmp_path / "index.csv"
    ow = orig.IndexWriter(index)
    tricky = {"note": 'a, "quoted" value, é ✓', "score": 0.5, "n": 3}
    ow.write_entry(Path("plain/x.nii.gz"), tricky)
    for i in range(20):
        p = entry_path("plain-o", i)
        ow.write_entry(Path(p), context_for(p))
    original_bytes = index.read_bytes()
    assert original_bytes.startswith(b"digest,")  # sorted columns
    assert b"\r\n" in original_bytes

    with open(index, newline="", encoding="utf-8") as f:
        theirs = list(csv.DictReader(f))
    ours = IndexWriter(index)
    assert ours.read_rows() == theirs
    assert index.read_bytes() == original_bytes  # reading changes nothing

    # Our appends keep the original's header and CR LF.
    for i in range(10):
        p = entry_path("plain-w", i)
        ours.write_entry(p, context_for(p))
    data = index.read_bytes()
    assert data.startswith(original_bytes)
    assert data.count(b"\n") == data.count(b"\r\n")
    # A replacement through ours; then the original writes again over our rows.
    ours.write_entry("plain/x.nii.gz", {**tricky, "score": 0.75}, replace_existing=True)
    p = entry_path("plain-o", 20)
    ow.write_entry(Path(p), context_for(p))
    q = entry_path("plain-w", 10)
    ours.write_entry(q, context_for(q))  # ours again, after the original's rewrite

    rows = ours.read_rows()
    x = [r for r in rows if r["path"] == "plain/x.nii.gz"]
    assert x == [
        {
            **dict.fromkeys(rows[0], ""),
            "path": "plain/x.nii.gz",
            "note": tricky["note"],
            "score": "0.75",
            "n": "3",
        }
    ]
    rest = [r for r in rows if r["path"] != "plain/x.nii.gz"]
    assert sorted(r["path"] for r in rest) == sorted(
        [entry_path("plain-o", i) for i in range(21)]
        + [entry_path("plain-w", i) for i in range(11)]
    )
    for r in rest:
        want = {k: str(v) for k, v in context_for(r["path"]).items()}
        assert {k: v for k, v in r.items() if k in want} == want
        assert all(r[k] == "" for k in r if k not in want and k != "path")


def test_original_waits_for_our_lock(tmp_path: Path, original_file: str) -> None:
    """The original blocks while one of our writers (another process) holds the lock."""
    from _workers import hold_writer_lock_until_told

    orig = load(original_file)
    index = tmp_path / "index.csv"
    IndexWriter(index).write_entry("ours.nii", {"a": 1})
    parent, kid = FORK.Pipe()
    child = FORK.Process(target=hold_writer_lock_until_told, args=(str(index), kid))
    child.start()
    assert parent.poll(30) and parent.recv() == "held"
    done = threading.Event()

    def original_write() -> None:
        orig.IndexWriter(index).write_entry(Path("theirs.nii"), {"a": 2})
        done.set()

    t = threading.Thread(target=original_write)
    t.start()
    try:
        assert not done.wait(0.5)  # the lock is held: the original must wait
        with pytest.raises(IndexLockTimeoutError):  # (and so must we)
            IndexWriter(index, timeout=0.1).read_rows()
    finally:
        parent.send("release")
        assert parent.poll(30) and parent.recv() == "released"
        child.join(30)
    t.join(30)
    assert done.is_set()
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["ours.nii", "theirs.nii"]




@pytest.mark.parametrize("first", ["ours", "original"])
def test_our_torn_append_then_original_writes(
    tmp_path: Path, original_file: str, first: str
) -> None:
    """One of our writers is killed mid-append; the original takes the lock next.

    Made deterministically: the torn state (half of a real batch appended,
    the journal record still active) is exactly what a SIGKILL inside
    ``os.write`` leaves. The original then records an entry and returns. Our
    next writer must not lose that entry, nor cut any older row.
    """


    orig = load(original_file)
    index = tmp_path / "index.csv"
    base = [entry_path("plain-b", i) for i in range(5)]
    if first == "original":
        for p in base:
            orig.IndexWriter(index).write_entry(Path(p), context_for(p))
    else:
        IndexWriter(index).write_entries((p, context_for(p)) for p in base)
    IndexWriter(index).read_rows()  # the lock file now holds a (finished) journal
    before = index.read_bytes()
    # The bytes our writer appends for a 40-entry batch (made on a copy).
    copy = tmp_path / "copy" / "index.csv"
    copy.parent.mkdir()
    copy.write_bytes(before)
    torn = [entry_path("plain-torn", i) for i in range(40)]
    IndexWriter(copy).write_entries((p, context_for(p)) for p in torn)
    data = copy.read_bytes()[len(before) :]
    fake_append_journal(str(index), len(before), data)
    with open(index, "ab") as f:
        f.write(data[: len(data) // 3])  # killed here

    acked = entry_path("plain-o", 0)
    orig.IndexWriter(index).write_entry(Path(acked), context_for(acked))  # returned

    rows = IndexWriter(index).read_rows()
    by_path = {r["path"]: r for r in rows}
    for p in [*base, acked]:
        assert p in by_path, f"acknowledged entry {p} lost"
        want = {k: str(v) for k, v in context_for(p).items()}
        assert {k: v for k, v in by_path[p].items() if k in want} == want
    # Anything else can only come from the unacknowledged batch.
    # Anything else can only come from the unacknowledged batch. The original
    # read our torn last row (csv is lenient) and wrote it back as a whole row,
    # padded and with its columns re-sorted: from then on it is the original's
    # data, which we must not cut, so at most that one row is odd.
    extra = by_path.keys() - {*base, acked}
    odd = [p for p in extra if not p.startswith("plain-torn/")]
    assert len(odd) <= 1, odd
    assert index.read_bytes().endswith(b"\r\n")  # and no partial row remains
