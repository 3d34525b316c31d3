"""A write cut short when the lock file -- or even the journal -- is gone.

med-imagetools deletes ``NAME.lock`` at the end of a run, and people
``rm *.lock``. The crash journal lives in its own file next to the index, so
a writer killed in the middle of a big append after its lock file was
deleted is still rolled back by the next one. With no journal at all, the
rows the killed writer completed cannot be told from data and stay, but a
last record that is provably incomplete (no line end, and its quoted field
never closes) is never taken as data: readers leave it out, writers move
its bytes into ``NAME.incomplete-<time>`` next to the index (and log it),
and ``index-writer check`` reports both the record and that file.
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
    QUOTED_BLOB,
    check_index,
    context_for,
    entry_path,
    kill_inside_a_big_append,
    prepare_for_big_batch,
    quoted_batch_then_exit,
    quoted_path,
    write_range,
)
from index_writer import IndexWriter
from index_writer import check_index as check_report

FORK = multiprocessing.get_context("fork")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork are POSIX")


def _base(tmp_path: Path) -> tuple[Path, set[str]]:
    index = tmp_path / "index.csv"
    write_range(str(index), "base", 50)
    paths = {entry_path("base", i) for i in range(50)}
    paths.add(prepare_for_big_batch(index))  # so the batch is an append
    return index, paths


def _in_fresh_process(fn, *args):  # type: ignore[no-untyped-def]
    parent, kid = FORK.Pipe()

    def main() -> None:
        kid.send(fn(*args))

    child = FORK.Process(target=main)
    child.start()
    assert parent.poll(120)
    out = parent.recv()
    child.join(30)
    assert child.exitcode == 0
    return out


def _rows(index: str) -> list[dict[str, str]]:
    return IndexWriter(index).read_rows()


def _write_one(index: str, tag: str) -> None:
    write_range(index, tag, 1)


def test_lock_file_deleted_mid_append_then_sigkill(tmp_path: Path) -> None:
    index, paths = _base(tmp_path)
    lock = Path(str(index) + ".lock")
    journal = Path(_internals.journal_path(index))
    before = index.read_bytes()
    kill_inside_a_big_append(index, unlink=[lock])  # ~65 MB; the lock file deleted first
    torn = index.read_bytes()
    assert len(torn) > len(before)
    assert not lock.exists() and journal.exists()
    assert _internals.journal_pending(index)

    # Readers (a fresh process, the command line) leave the torn append out...
    rows = _in_fresh_process(_rows, str(index))
    assert {r["path"] for r in rows} == paths
    r = run("show", index, "--format", "json")
    assert r.returncode == 0 and r.stdout.count('"path"') == len(paths)
    r = run("check", index)
    assert r.returncode == 1
    assert f"{index}: 1 problem: {len(paths)} rows" in r.stdout
    assert f"the last {len(torn) - len(before)} bytes are an append that was cut short" in (
        r.stdout
    )
    assert index.read_bytes() == torn  # ...and change nothing

    # ...and the next writer, in a fresh process, rolls it back.
    _in_fresh_process(_write_one, str(index), "next")
    paths.add(entry_path("next", 0))
    data = index.read_bytes()
    assert data.startswith(before) and b"huge/" not in data
    check_index(index, exact=paths)
    assert run("check", index).returncode == 0


def _quoted_rows(data: bytes) -> int:
    """Complete rows of the quoted batch in ``data`` (the appended bytes)."""
    return data.count(b"\n")


def test_no_journal_at_all_the_incomplete_last_row_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index, paths = _base(tmp_path)
    # This process wrote the base: it keeps the journal open, and would read
    # the killed writer's record through it after the file is deleted.
    IndexWriter(index).close()
    lock = Path(str(index) + ".lock")
    journal = Path(_internals.journal_path(index))
    before = index.read_bytes()
    kill_inside_a_big_append(index, 1300, unlink=[lock, journal], target=quoted_batch_then_exit)
    torn = index.read_bytes()
    assert not lock.exists() and not journal.exists()
    cut = torn.rfind(b"\n") + 1
    tail = torn[cut:]
    assert tail.startswith(b"quoted/q") and tail.count(b'"') == 1  # cut inside the quotes
    done = _quoted_rows(torn[len(before) :])
    # The rows the writer completed cannot be told from data: they stay.
    kept = paths | {quoted_path(i) for i in range(done)}

    rows = _in_fresh_process(_rows, str(index))
    assert {r["path"] for r in rows} == kept
    assert all(r["blob"] == QUOTED_BLOB for r in rows if r["path"].startswith("quoted/"))
    r = run("check", index)
    assert r.returncode == 1
    assert (
        f"  problem: incomplete last record ({len(tail)} bytes from byte offset {cut}, no line "
        "end): its quoted field never closes, so a write was cut short there" in r.stdout
    )
    assert f": {len(kept)} rows" in r.stdout.splitlines()[0]
    assert index.read_bytes() == torn  # readers and check change nothing
    assert sorted(os.listdir(tmp_path)) == ["index.csv"]

    with caplog.at_level(logging.WARNING, logger="index_writer"):
        p = entry_path("next", 0)
        IndexWriter(index).write_entry(p, context_for(p))
    kept.add(p)
    moved = [n for n in os.listdir(tmp_path) if n.startswith("index.csv.incomplete-")]
    assert len(moved) == 1
    assert (tmp_path / moved[0]).read_bytes() == tail  # every byte kept
    assert f"ended with an incomplete row ({len(tail)} bytes" in caplog.text
    assert moved[0] in caplog.text
    assert index.read_bytes().startswith(torn[:cut])
    rows = IndexWriter(index).read_rows()
    assert {r["path"] for r in rows} == kept
    r = run("check", index)
    assert r.returncode == 1, r.stdout
    assert r.stdout.splitlines()[1:] == [
        f"  problem: 1 incomplete last record of this index (a write cut short) moved aside "
        f"by writers into {moved[0]}: look at them, then delete them"
    ]
    (tmp_path / moved[0]).unlink()
    assert run("check", index).returncode == 0


# ----------------------------------------------- check, on files made by hand


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b'c,"never closed', "its quoted field never closes"),
        (b'c,"spans\nlines', "its quoted field never closes"),
        (b"c,caf\xc3", "it ends inside a UTF-8 character"),
        (b"c,\xe2\x82", "it ends inside a UTF-8 character"),
    ],
)
def test_check_reports_an_incomplete_last_record(tmp_path: Path, tail: bytes, why: str) -> None:
    index = tmp_path / "index.csv"
    head = b"path,k\na,1\nb,2\n"
    index.write_bytes(head + tail)
    report = check_report(index)
    assert report.rows == 2
    assert report.problems == [
        f"incomplete last record ({len(tail)} bytes from byte offset {len(head)}, no line end): "
        f"{why}, so a write was cut short there; readers leave it out, and the next write "
        "moves it into a file next to the index"
    ]
    assert report.blocking == report.problems
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a", "b"]


@pytest.mark.parametrize(
    "content",
    [
        b'path,k\na,"never closed\nb,2\n',  # ends with a line end: malformed, not cut short
        b"path,k\na,1\nb,2",  # no line end, but a complete row
        b"path,k\na,1\nb,caf\xc3\xa9",
    ],
)
def test_check_does_not_call_other_files_cut_short(tmp_path: Path, content: bytes) -> None:
    index = tmp_path / "index.csv"
    index.write_bytes(content)
    report = check_report(index)
    assert not [p for p in report.problems if "cut short" in p], report.problems


def test_check_reports_an_append_the_journal_shows_cut_short(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    write_range(str(index), "base", 5)
    before = index.read_bytes()
    rows = "".join(f"{entry_path('tear', i)},{'y' * 40},a,b\n" for i in range(100)).encode()
    _internals.write_append_journal(str(index), len(before), rows)
    with index.open("ab") as f:
        f.write(rows[: len(rows) // 2])  # whole rows and half of one
    report = check_report(index)
    assert report.rows == 5
    assert report.problems == [
        f"the last {len(rows) // 2} bytes are an append that was cut short (the index's "
        "crash journal says so; unless a writer is adding them right now): readers leave "
        "them out and the next write removes them"
    ]
    assert len(IndexWriter(index).read_rows()) == 5


def test_check_reports_each_file_records_were_moved_into(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    write_range(str(index), "base", 3)
    for stamp in ("20250101T000000Z", "20250102T000000Z"):
        (tmp_path / f"index.csv.incomplete-{stamp}").write_bytes(b'x,"cut')
    (tmp_path / "index.csv.incomplete-notes.txt").write_text("not ours")
    (tmp_path / "other.csv.incomplete-20250101T000000Z").write_text("another index's")
    report = check_report(index)
    assert report.blocking == []
    assert report.problems == [
        "2 incomplete last records of this index (a write cut short) moved aside by writers "
        "into index.csv.incomplete-20250101T000000Z, index.csv.incomplete-20250102T000000Z: "
        "look at them, then delete them"
    ]


@pytest.mark.parametrize("argv", [["check"], ["check", "--dedupe"], ["show"]])
def test_show_and_check_refuse_what_is_not_a_regular_file(tmp_path: Path, argv: list[str]) -> None:
    """A FIFO is refused at once (opening it to read would wait for a writer of it)."""
    fifo = tmp_path / "index.csv"
    os.mkfifo(fifo)
    r = run(argv[0], fifo, *argv[1:], timeout=20)
    assert r.returncode == 1
    assert "not a regular file" in r.stdout + r.stderr
    assert os.listdir(tmp_path) == ["index.csv"]
