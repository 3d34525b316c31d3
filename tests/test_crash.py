"""Writers killed with SIGKILL, and the crash journal that rolls their writes back.

A writer killed at any instant must leave an index that reads (with
``read_rows`` and with the csv module), holds every entry whose
``write_entry``/``write_entries`` had returned, and has no partial row.

The crash journal (``index_writer._journal``): before an append the writer
records ``{"op": "append", "dev", "ino", "offset", "length"}`` after
``MAGIC + b"A"``; afterwards it overwrites ``A`` with ``D``. The next lock
holder truncates an append that is still marked active and is cut short.
Tests find the journal through ``_internals``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import fasteners
import pytest

import _internals
import _system
from _workers import (
    big_path,
    check_index,
    context_for,
    entry_path,
    fake_append_journal,
    fake_journal_record,
    kill_worker,
    read_acks,
    read_csv,
    stray_temp_files,
    write_range,
)
from index_writer import IndexWriter, _files

FORK = multiprocessing.get_context("fork")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork are POSIX")


# ------------------------------------------------------- random SIGKILLs


def _lock_holder(lock_path: str) -> int | None:
    """The pid holding the POSIX lock on ``lock_path``, from /proc/locks."""
    try:
        ino = os.stat(lock_path).st_ino
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: POSIX  ADVISORY  WRITE 4242 00:1f:1234 0 EOF"
        if len(parts) >= 6 and parts[1] == "POSIX" and parts[5].endswith(f":{ino}"):
            return int(parts[4])
    return None


def _wait_for_active_journal(index: str, seconds: float, big_append: bool) -> bool:
    """Poll ``index``'s journal until it shows an operation in progress.

    With ``big_append``, only an append of more than 1 MB counts (the only
    appends long enough for a kill to land inside them).
    """
    marker = len(_internals.JOURNAL_MAGIC)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(_internals.journal_path(index), "rb") as f:
                data = f.read(4096)
        except OSError:
            continue
        if data[marker : marker + 1] != b"A":
            continue
        if not big_append:
            return True
        try:
            record = json.loads(data[marker + 1 :].split(b"\n")[0])
        except ValueError:
            continue
        if record.get("op") == "append" and record.get("length", 0) > 1_000_000:
            return True
    return False


def test_sigkill_writers_at_random_moments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """3 writers at a time, one SIGKILLed and replaced every 20-300 ms, ~7 s.

    The writers mix single entries, small batches, ~2 MB batches (so kills
    land inside a long write) and real replacements (rewrites: kills land
    between the temp file and the rename). Each acknowledges its entries in a
    side file only after the write call returned. 40% of the kills come at
    a uniformly random moment; the others wait until the crash journal shows
    a write in progress and kill the process holding the lock (found in
    /proc/locks), or, half of them, wait for an append of more than 1 MB to
    start and kill all writers at once, to land inside appends and rewrites
    far more often than chance would.
    """
    index = str(tmp_path / "index.csv")
    lock = index + ".lock"
    seed = os.getpid() ^ time.time_ns()
    print(f"random seed {seed}")  # shown if the test fails
    rng = random.Random(seed)
    acks: list[str] = []
    logs: list[str] = []
    gen = 0

    def spawn() -> multiprocessing.process.BaseProcess:
        nonlocal gen
        gen += 1
        ack, log = str(tmp_path / f"ack{gen}"), str(tmp_path / f"log{gen}")
        acks.append(ack)
        logs.append(log)
        p = FORK.Process(target=kill_worker, args=(index, f"k{gen}", ack, log, rng.random()))
        p.start()
        return p

    live = [spawn() for _ in range(3)]
    kills = targeted = 0
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.02, 0.3))  # let time pass: the kill lands anywhere
        k = rng.randrange(len(live))
        aim = rng.random()
        if aim < 0.3 and _wait_for_active_journal(index, 0.5, big_append=True):
            # Kill every writer at once: no time lost finding the holder.
            for p in live:
                os.kill(p.pid, signal.SIGKILL)
            for k, p in enumerate(live):
                p.join()
                assert p.exitcode == -signal.SIGKILL
                live[k] = spawn()
            kills += len(live)
            targeted += 1
            continue
        k = rng.randrange(len(live))
        if aim < 0.6 and _wait_for_active_journal(index, 0.5, big_append=False):
            holder = _lock_holder(lock)
            pids = [p.pid for p in live]
            if holder in pids:
                k = pids.index(holder)
                targeted += 1
        assert live[k].is_alive(), f"a writer died by itself (exit code {live[k].exitcode})"
        os.kill(live[k].pid, signal.SIGKILL)
        live[k].join()
        kills += 1
        live[k] = spawn()
    for p in live:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    kills += len(live)

    acked = read_acks(acks)
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        found = check_index(index, acked=acked)
    # Everything in the index was written by one of the workers.
    assert all(p.startswith("k") for p in found)
    # A rewrite cut short leaves a temp file; the next holder removes it.
    assert stray_temp_files(tmp_path) == []
    log = _read_all(logs) + caplog.text
    assert "could not" not in log  # no failed roll-back
    print(
        f"\n{kills} kills ({targeted} aimed at a write in progress), {len(acked)} acknowledged, "
        f"{len(found)} rows, {os.path.getsize(index) / 1e6:.1f} MB; appends rolled back: "
        f"{log.count('rolled back')}, rewrite temp files removed: {log.count('removed')}"
    )


def _read_all(files: list[str]) -> str:
    """The text of those of ``files`` that exist, one after another."""
    return "".join(Path(f).read_text() for f in files if os.path.exists(f))


def _one_row_writer(index: str, tag: str, ack_path: str, log_path: str) -> None:
    """Append one row per call forever (until SIGKILLed), acknowledging each."""
    logging.basicConfig(filename=log_path, level=logging.WARNING, force=True)
    w = IndexWriter(index)
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(10**9):
        p = entry_path(tag, i)
        w.write_entry(p, context_for(p))
        os.write(fd, f"{p}\t0\n".encode())


def test_sigkill_lock_holders_appending_one_row_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """3 writers of one row per call; the lock holder SIGKILLed 60 times.

    Most of these appends lie within one page of the file and are not
    journaled before they are written (a kill cannot tear them); every kill
    lands while its victim holds the lock: before, during or after its
    append, or before the journal records it finished. No row may be left
    partial or moved aside, no acknowledged row lost, and no torn write left
    unundone. (Only an append that crosses a page is journaled before it is
    made, so only such an append can be rolled back.)
    """
    index = str(tmp_path / "index.csv")
    lock = index + ".lock"
    acks: list[str] = []
    logs: list[str] = []

    def spawn() -> multiprocessing.process.BaseProcess:
        n = len(acks)
        acks.append(str(tmp_path / f"ack{n}"))
        logs.append(str(tmp_path / f"log{n}"))
        p = FORK.Process(target=_one_row_writer, args=(index, f"w{n}", acks[-1], logs[-1]))
        p.start()
        return p

    live = [spawn() for _ in range(3)]
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 60 and time.monotonic() < deadline:
        holder = _lock_holder(lock) if os.path.exists(lock) else None
        pids = [p.pid for p in live]
        if holder not in pids:
            continue
        k = pids.index(holder)
        os.kill(holder, signal.SIGKILL)
        live[k].join()
        assert live[k].exitcode == -signal.SIGKILL
        live[k] = spawn()
        kills += 1
        # Between kills, the file ends with a whole row, or the append the
        # journal shows active (the next writer undoes it). Looked at under
        # the lock: the live writers may be mid-append, or undoing it. Until
        # a first row is written, the index may be missing or empty: the
        # first writer makes the file before its first append, and a kill
        # often lands in between.
        with fasteners.InterProcessLock(lock):
            data = Path(index).read_bytes() if os.path.exists(index) else b""
            if data and not data.endswith(b"\n"):
                assert _internals.journal_pending(index), (
                    f"after kill {kills}: {len(data)} bytes ending {data[-300:]!r}, "
                    f"journal {_internals.journal_record(index)}, logs: {_read_all(logs)}"
                )
    for p in live:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert kills == 60, f"only {kills} kills in a minute"
    acked = read_acks(acks)
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        check_index(index, acked=acked)
    log = _read_all(logs) + caplog.text
    for bad in ("could not", "incomplete row", "not undoing"):
        assert bad not in log, log
    assert not [f for f in os.listdir(tmp_path) if "incomplete" in f]
    print(f"\n{kills} kills, {len(acked)} acknowledged, rolled back: {log.count('rolled back')}")


def test_a_writer_killed_between_making_the_index_and_its_first_row_leaves_an_empty_index(
    tmp_path: Path,
) -> None:
    """The first writer makes the file, then appends: a kill in between leaves it empty.

    An empty index is a valid one: it reads as no rows, and the next writer
    writes the header and its row as if the file were new.
    """
    index = tmp_path / "index.csv"

    def first_write() -> None:
        _internals.exit_after_making_the_index()
        IndexWriter(index).write_entry("a.nii.gz", {"subject": "s1"})

    child = FORK.Process(target=first_write)
    child.start()
    child.join(30)
    assert child.exitcode == 9
    assert index.read_bytes() == b""
    assert IndexWriter(index).read_rows() == []
    IndexWriter(index).write_entry("b.nii.gz", {"subject": "s2"})
    assert read_csv(index) == (["path", "subject"], [["b.nii.gz", "s2"]])


def _always_present_columns(path: str) -> dict[str, object]:
    """``path``'s context, without the columns only some paths get (so: an append)."""
    always = ("subject", "digest", "rev", "length")
    return {k: v for k, v in context_for(path).items() if k in always}


def _append_and_die_before_recording_it_finished(index: str, path: str) -> None:
    """Write ``path`` in a child that ends at once, as if killed, before the finished record."""

    def write() -> None:
        _internals.exit_before_recording_appends_finished()
        IndexWriter(index).write_entry(path, _always_present_columns(path))

    child = FORK.Process(target=write)
    child.start()
    child.join(30)
    assert child.exitcode == 9


@pytest.mark.parametrize("crosses_a_page", [False, True])
def test_a_writer_killed_before_recording_its_append_finished_leaves_a_whole_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, crosses_a_page: bool
) -> None:
    """The append is on disk, its finished record is not: the row is data, kept whole.

    Within a page, no record of it was written at all (the journal still
    holds the previous append's); across a page, its active record shows it
    whole.
    """
    index, before = _index_with_rows(tmp_path)
    pad = 4096 - len(before) % 4096  # bytes left in the file's last page
    assert pad > 300, "the index's rows happened to end near a page's end"
    p = entry_path("killed", 0) + ("/" + "x" * pad if crosses_a_page else "")
    _append_and_die_before_recording_it_finished(index, p)
    data = Path(index).read_bytes()
    assert data.startswith(before) and data.endswith(b"\n") and len(data) > len(before)
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        _recover_in_fresh_process(index, "next")
        _internals.recover(index)
    assert Path(index).read_bytes().startswith(data)
    assert "rolled back" not in caplog.text
    rows = IndexWriter(index).read_rows()
    assert [r["path"] for r in rows][-2:] == [p, entry_path("next", 0)]


def test_a_stale_record_is_not_matched_against_a_later_whole_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch's record, left by a writer killed before it wrote a byte, is voided.

    The retried task appends the batch's first row alone (within a page: no
    record before it) and is killed before recording it finished. The row
    matches the stale record's first bytes, and the file ends inside that
    batch's length; still the row is whole, and kept.
    """
    index, before = _index_with_rows(tmp_path)
    p = entry_path("retried", 0)
    ctx = _always_present_columns(p)
    buf = io.StringIO()
    eol = "\r\n" if before.endswith(b"\r\n") else "\n"
    csv.writer(buf, lineterminator=eol).writerow(
        [ctx.get(c, "") if c != "path" else p for c in read_csv(index)[0]]
    )
    row = buf.getvalue().encode()
    _internals.write_append_journal(index, len(before), row + b"x" * 10_000)
    _append_and_die_before_recording_it_finished(index, p)
    assert Path(index).read_bytes() == before + row
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        _recover_in_fresh_process(index, "next")
    assert "rolled back" not in caplog.text
    assert Path(index).read_bytes().startswith(before + row)


def _write_in(index: str, lock: str, path: str, replace: bool) -> None:
    IndexWriter(index, lock_path=lock).write_entry(path, {"v": "1"}, replace_existing=replace)


@pytest.mark.parametrize("other", ["changes nothing", "appends"])
def test_indexes_sharing_a_lock_file_keep_their_crash_records_apart(other: str) -> None:
    """Two indexes whose writers may not create files beside them share a lock file.

    Each keeps its journal next to the lock file. A torn append to the first
    stays recorded while a writer of the second runs (and changes nothing, or
    appends); the first's next writer rolls it back.
    """
    _system.need_root()
    with _system.shared_directory() as d:
        for sub in ("a", "b"):
            (d / sub).mkdir(mode=0o755)  # not writable by the writers
        (d / "locks").mkdir()
        (d / "locks").chmod(0o777)
        a, b, lock = str(d / "a" / "index.csv"), str(d / "b" / "index.csv"), str(d / "locks" / "l")
        for index in (a, b):
            Path(index).touch(mode=0o666)
            os.chmod(index, 0o666)
            _system.in_child(_write_in, index, lock, "first", False, uid=_system.NOBODY)
        journals = sorted(f for f in os.listdir(d / "locks") if f.endswith(".journal"))
        assert len(journals) == 2, journals  # one per index
        journal = _internals.journal_beside_lock(lock, a)
        assert os.path.basename(journal) in journals
        before = Path(a).read_bytes()
        row = b"torn/row/that/a/crash/cut,1\n"
        st = os.stat(a)
        _internals.write_journal_file(
            journal, *_internals.append_record(st.st_dev, st.st_ino, len(before), row)
        )
        with open(a, "ab") as f:
            f.write(row[:10])  # what the killed writer wrote
        if other == "appends":
            _system.in_child(_write_in, b, lock, "second", False, uid=_system.NOBODY)
        else:  # the row is stored as it is
            _system.in_child(_write_in, b, lock, "first", True, uid=_system.NOBODY)
        _system.in_child(_write_in, a, lock, "next", False, uid=_system.NOBODY)
        assert Path(a).read_bytes() == before + b"next,1\n"


def _index_with_two_journals(d: Path) -> tuple[str, str]:
    """An index whose first writer (root) keeps its journal next to it; then shared.

    Made writable by everyone afterwards (as on a shared cluster), the index
    is written by users who may not write that journal: they keep theirs
    next to the lock file. Returns the index and the lock file.
    """
    (d / "a").mkdir(mode=0o755)  # not writable by the other users
    (d / "locks").mkdir()
    (d / "locks").chmod(0o777)
    index, lock = str(d / "a" / "index.csv"), str(d / "locks" / "l")
    _system.in_child(_write_in, index, lock, "first", False)
    for f in (index, lock):
        os.chmod(f, 0o666)
    assert os.path.exists(_internals.journal_path(index))
    return index, lock


def _record_in_journal_beside_lock(index: str, lock: str, offset: int, data: bytes) -> None:
    """As a user's writer killed after recording an append (and before writing) leaves it."""
    st = os.stat(index)
    _internals.write_journal_file(
        _internals.journal_beside_lock(lock, index),
        *_internals.append_record(st.st_dev, st.st_ino, offset, data),
    )


def test_a_stale_record_in_the_other_journal_spares_a_row_acknowledged_since() -> None:
    """A record beside the lock file, left by a user's writer killed before it wrote a byte.

    The task is retried by root (whose journal is next to the index) entry by
    entry: its first row, acknowledged, starts where the stale record's batch
    would have, with the same bytes. Neither a reader nor the user's next
    writer may take that row for the start of the torn batch.
    """
    _system.need_root()
    with _system.shared_directory() as d:
        index, lock = _index_with_two_journals(d)
        before = Path(index).read_bytes()
        batch = b"".join(b"task/%04d,1\n" % i for i in range(500))  # crosses a page
        _system.in_child(_record_in_journal_beside_lock, index, lock, len(before), batch,
                         uid=_system.NOBODY)
        _system.in_child(_write_in, index, lock, "task/0000", False)  # the retry, root
        acknowledged = before + b"task/0000,1\n"
        assert Path(index).read_bytes() == acknowledged
        rows = IndexWriter(index, lock_path=lock).read_rows()
        assert [r["path"] for r in rows] == ["first", "task/0000"]
        _system.in_child(_write_in, index, lock, "other", False, uid=_system.NOBODY)
        assert Path(index).read_bytes() == acknowledged + b"other,1\n"


def test_a_torn_append_in_the_other_journal_is_undone_when_ours_is_stale() -> None:
    """Root's journal holds a stale record whose append would end where the file now ends.

    A user's writer (journal beside the lock file) was killed in the middle
    of a batch at the same offset, exactly there. Root's next writer must
    not take the file's end for its own record's doing: it rolls the torn
    batch back.
    """
    _system.need_root()
    with _system.shared_directory() as d:
        index, lock = _index_with_two_journals(d)
        before = Path(index).read_bytes()
        page_end = 4096 * (len(before) // 4096 + 2)
        st = os.stat(index)
        stale = b"x" * (page_end - len(before))
        _internals.write_journal_file(
            _internals.journal_path(index),
            *_internals.append_record(st.st_dev, st.st_ino, len(before), stale),
        )
        batch = b"".join(b"user/%04d,1\n" % i for i in range(1000))
        _system.in_child(_record_in_journal_beside_lock, index, lock, len(before), batch,
                         uid=_system.NOBODY)
        with open(index, "ab") as f:
            f.write(batch[: page_end - len(before)])  # where the kill stopped the write
        _system.in_child(_write_in, index, lock, "next", False)
        assert Path(index).read_bytes() == before + b"next,1\n"


# --------------------------------------------- SIGKILL inside one big write


def _big_batch(index: str, n: int) -> None:
    rows = [(big_path("huge", i), context_for(big_path("huge", i))) for i in range(n)]
    IndexWriter(index).write_entries(rows)
    os._exit(3)  # the write returned: the test wanted to kill it before


def test_sigkill_inside_a_large_append_is_rolled_back(tmp_path: Path) -> None:
    """Kill a writer while its 65 MB append is half on disk; the next one rolls it back.

    The parent watches the index grow and sends SIGKILL as soon as the first
    bytes of the batch appear, which lands inside the ``os.write`` (the
    kernel stops a write between pages for a fatal signal). Retried a few
    times in the unlikely case the write completes first.
    """
    index = str(tmp_path / "index.csv")
    write_range(index, "base", 50)
    big = big_path("base", 0)
    IndexWriter(index).write_entry(big, context_for(big))  # so the batch adds no column
    base = {entry_path("base", i) for i in range(50)} | {big}
    before = Path(index).read_bytes()
    torn_seen = False
    for _ in range(4):
        child = FORK.Process(target=_big_batch, args=(index, 1300))
        child.start()
        while os.stat(index).st_size == len(before) and child.exitcode is None:
            pass
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        if child.exitcode == 3:  # the write completed before the kill: undo it
            continue
        size = os.stat(index).st_size
        if size > len(before):
            torn_seen = True
            record = _internals.journal_record(index)
            assert record is not None
            assert record["op"] == "append"
            assert record["offset"] == len(before) < size < len(before) + record["length"]
        # A reader leaves the torn bytes out of its snapshot without writing;
        # the next writer rolls them back.
        assert len(IndexWriter(index).read_rows()) == len(base)
        assert os.stat(index).st_size == size
        check_index(index, exact=base)
        assert Path(index).read_bytes() == before
        if torn_seen:
            break
    assert torn_seen, "never managed to kill the writer inside its write"
    # And writing goes on normally.
    write_range(index, "after", 5)
    check_index(index, exact=base | {entry_path("after", i) for i in range(5)})


# -------------------------------------- journal states, made deterministically


def _index_with_rows(tmp_path: Path, n: int = 5) -> tuple[str, bytes]:
    index = str(tmp_path / "index.csv")
    write_range(index, "base", n)
    return index, Path(index).read_bytes()


def _fake_crash_journal(index: str, record: dict[str, object], payload: bytes = b"") -> None:
    """Leave the lock file as a writer killed between journal and commit does."""
    fake_journal_record(index, json.dumps(record).encode(), payload)


def _torn_append(index: str, before: bytes, fraction: float) -> bytes:
    """Append a fraction of a real row, and the journal record for the whole row."""
    p = entry_path("torn", 0)
    row = f"{p},{','.join('x' * 40 for _ in range(4))}\n".encode()
    fake_append_journal(index, len(before), row)
    part = row[: max(1, int(len(row) * fraction))]
    with open(index, "ab") as f:
        f.write(part)
    return row


def _page_end_within(start: int, length: int) -> int:
    """How many bytes of an append of ``length`` at ``start`` end at the last page end in it.

    A write cut short by a kill stops where the file's offset is a multiple
    of the page size (4096): the kernel copies a write page by page.
    """
    cut = (start + length - 1) // 4096 * 4096 - start
    assert 4096 < cut < length
    return cut


def _recover_in_fresh_process(index: str, tag: str) -> None:
    """A brand-new process (no cached knowledge) writes one entry."""
    child = FORK.Process(target=write_range, args=(index, tag, 1))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _append_in_capped_writes_and_die_after_the_first(index: str, cap: int) -> None:
    """Append a batch as the kernel would with ``cap`` bytes per write; end before the second.

    Linux takes at most :data:`._files.MAX_WRITE` bytes (2 GiB) per ``write``:
    here the cap, and so the size of the batch, is made small.
    """
    _files.MAX_WRITE = cap
    real_write, calls = os.write, []

    def capped(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 2:
            os._exit(9)  # as a kill between the two writes would
        return real_write(fd, memoryview(data)[:cap])

    os.write = capped  # type: ignore[assignment]
    rows = [(entry_path("big", i), {"subject": "x" * 1000}) for i in range(3 * cap // 1000)]
    IndexWriter(index).write_entries(rows)


def test_an_append_larger_than_one_write_killed_between_its_writes_is_rolled_back(
    tmp_path: Path,
) -> None:
    """The first write of a 2 GiB append ends on a 4 KiB boundary, so a kill after it is undone."""
    index, before = _index_with_rows(tmp_path)
    assert len(before) % 4096, "the append must not start on a page boundary"
    child = FORK.Process(target=_append_in_capped_writes_and_die_after_the_first,
                         args=(index, 3 * 4096))
    child.start()
    child.join(30)
    assert child.exitcode == 9
    torn = Path(index).read_bytes()
    assert len(before) < len(torn) <= len(before) + 3 * 4096
    _recover_in_fresh_process(index, "next")
    after = Path(index).read_bytes()
    assert after.startswith(before + entry_path("next", 0).encode())
    assert after.endswith(b"\n") and after.count(b"\n") == before.count(b"\n") + 1


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_torn_append_is_truncated_by_the_next_writer(tmp_path: Path, fraction: float) -> None:
    index, before = _index_with_rows(tmp_path)
    _torn_append(index, before, fraction)
    assert len(Path(index).read_bytes()) > len(before)
    _recover_in_fresh_process(index, "next")
    after = Path(index).read_bytes()
    assert after.startswith(before)
    assert b"torn" not in after
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {entry_path("next", 0)})
    assert not _internals.journal_pending(index)


def test_torn_append_is_truncated_in_the_process_that_knows_the_file(tmp_path: Path) -> None:
    """This process wrote the rows (its cached knowledge ends where the tear starts)."""
    index, before = _index_with_rows(tmp_path)
    torn = _torn_append(index, before, 0.5)
    rows = IndexWriter(index).read_rows()  # a reader leaves the torn bytes out...
    assert [r["path"] for r in rows] == [entry_path("base", i) for i in range(5)]
    assert Path(index).read_bytes() == before + torn[: int(len(torn) * 0.5)]  # ...untouched
    p = entry_path("next", 0)
    IndexWriter(index).write_entry(p, context_for(p))
    assert b"torn" not in Path(index).read_bytes()
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {p})


def test_completed_append_with_uncleared_journal_is_kept(tmp_path: Path) -> None:
    """Killed after the write but before marking it done: the row stays."""
    index, before = _index_with_rows(tmp_path)
    p = entry_path("done", 0)
    IndexWriter(index).write_entry(p, context_for(p))
    full = Path(index).read_bytes()
    st = os.stat(index)
    _fake_crash_journal(
        index,
        {
            "op": "append",
            "index": os.path.abspath(index),
            "dev": st.st_dev,
            "ino": st.st_ino,
            "offset": len(before),
            "length": len(full) - len(before),
        },
    )
    _recover_in_fresh_process(index, "next")
    assert Path(index).read_bytes().startswith(full)
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {p, entry_path("next", 0)})


def _drop_last_row_in_place(index: str, last: str) -> None:
    """Rewrite the index in place without its last row (``last``'s), under its lock.

    As pandas' ``to_csv`` over the same file would.
    """
    import fasteners

    with fasteners.InterProcessLock(index + ".lock"), open(index, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: data.rindex(b"\n" + last.encode() + b",") + 1])


@pytest.mark.parametrize("batch", [3, 2_000])
def test_a_finished_append_is_not_undone_after_an_in_place_rewrite(
    tmp_path: Path, batch: int
) -> None:
    """Another program drops the last row of our last batch, in place: the rest is data.

    The file is then shorter than our last append and starts with its bytes,
    as a torn append would; but the append finished, and the rows the other
    program kept were acknowledged.
    """
    index = str(tmp_path / "index.csv")
    paths = [entry_path("batch", i) for i in range(batch)]
    setup = entry_path("setup", 0)
    ctx = context_for(setup)
    for p in paths:  # every column of the batch, so that it is an append
        for key in context_for(p):
            ctx.setdefault(key, "")
    IndexWriter(index).write_entry(setup, ctx)
    before = Path(index).read_bytes()
    IndexWriter(index).write_entries([(p, context_for(p)) for p in paths])
    assert Path(index).read_bytes().startswith(before)
    child = FORK.Process(target=_drop_last_row_in_place, args=(index, paths[-1]))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    _recover_in_fresh_process(index, "next")
    check_index(index, exact={setup, *paths[:-1], entry_path("next", 0)})
    assert Path(index).read_bytes().startswith(before)


def test_file_without_final_newline_and_no_journal_keeps_its_last_row(tmp_path: Path) -> None:
    """A file made elsewhere may end without a newline: that row is data, not a torn write."""
    index = str(tmp_path / "index.csv")
    p0, p1 = entry_path("made", 0), entry_path("made", 1)
    IndexWriter(index).write_entries([(p0, context_for(p0)), (p1, context_for(p1))])
    data = Path(index).read_bytes()
    assert data.endswith(b"\n")
    Path(index).write_bytes(data[:-1])  # as if saved by an editor
    os.unlink(_internals.journal_path(index))  # no journal at all
    _recover_in_fresh_process(index, "next")
    assert Path(index).read_bytes().startswith(data)
    check_index(index, exact={p0, p1, entry_path("next", 0)})


def test_stale_journal_for_another_file_truncates_nothing(tmp_path: Path) -> None:
    """An active record for a file that has since been replaced is ignored.

    The index was rewritten (new inode) by someone else and now ends without
    a newline: a journal naming the old inode must not cut its last row.
    """
    index, before = _index_with_rows(tmp_path)
    st = os.stat(index)
    _fake_crash_journal(
        index,
        {
            "op": "append",
            "index": os.path.abspath(index),
            "dev": st.st_dev,
            "ino": st.st_ino,
            "offset": len(before) - 10,
            "length": 1000,
        },
    )
    tmp = index + ".new"
    Path(tmp).write_bytes(before[:-1])  # same content, no final newline
    os.replace(tmp, index)
    assert os.stat(index).st_ino != st.st_ino
    _recover_in_fresh_process(index, "next")
    assert Path(index).read_bytes().startswith(before)
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {entry_path("next", 0)})


def test_interrupted_rewrite_leaves_old_index_and_temp_is_removed(tmp_path: Path) -> None:
    """A writer killed during a rewrite leaves its temp file; the next holder deletes it."""
    index, before = _index_with_rows(tmp_path)
    temp = str(tmp_path / ".index.csv.12345.deadbeef.tmp")
    Path(temp).write_bytes(before[: len(before) // 2])  # half-written new version
    _fake_crash_journal(index, {"op": "rewrite", "index": os.path.abspath(index), "temp": temp})
    _recover_in_fresh_process(index, "next")
    assert not os.path.exists(temp)
    assert Path(index).read_bytes().startswith(before)
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {entry_path("next", 0)})


@pytest.mark.parametrize("where", ["elsewhere", "same-dir-not-temp", "relative"])
def test_a_rewrite_record_never_removes_a_file_that_is_no_temp_file_of_the_index(
    tmp_path: Path, where: str
) -> None:
    """Recovery removes only what a rewrite of this index can have left.

    A journal is a file others may write (it has the index's permissions): a
    record naming any other file must not make the next writer delete it.
    """
    index, before = _index_with_rows(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    victim = {
        "elsewhere": other_dir / ".precious.tmp",  # a temp-like name, another directory
        "same-dir-not-temp": tmp_path / "results.csv",
        "relative": Path("precious.txt"),
    }[where]
    target = victim if victim.is_absolute() else tmp_path / victim
    target.write_text("keep me\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative name would resolve here
    try:
        _fake_crash_journal(index, {"op": "rewrite", "temp": str(victim)})
        _recover_in_fresh_process(index, "next")
    finally:
        os.chdir(cwd)
    assert target.read_text() == "keep me\n"
    assert Path(index).read_bytes().startswith(before)
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {entry_path("next", 0)})


@pytest.mark.parametrize(
    "record",
    [
        {"op": "append", "dev": 1, "ino": 1, "offset": 0, "length": 9, "head": "x"},
        {"op": "append", "dev": "1", "ino": 1, "offset": "0", "length": "9"},
        {"op": "append", "dev": 1, "ino": 1, "offset": 0, "length": 9, "crc_pages": "abc"},
        {"op": "rewrite", "temp": None},
        {"op": "rewrite", "temp": ["a"]},
        {"op": "unknown"},
        ["not", "a", "record"],
    ],
)
def test_a_malformed_journal_record_is_ignored_with_a_warning(
    tmp_path: Path, record: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong-typed fields make the record unreadable, not the index."""
    index, before = _index_with_rows(tmp_path)
    if isinstance(record, dict) and record.get("op") == "append":
        st = os.stat(index)  # aimed at this very file, where types matter
        record = {**record, **{k: v for k, v in (("dev", st.st_dev), ("ino", st.st_ino))
                               if isinstance(record[k], int)}}
    fake_journal_record(index, json.dumps(record).encode())
    with caplog.at_level(logging.WARNING, logger="index_writer"):
        rows = IndexWriter(index).read_rows()
        IndexWriter(index).write_entry("new.nii", {"subject": "s"})
    assert len(rows) == 5
    assert "ignoring an unreadable crash journal" in caplog.text
    assert Path(index).read_bytes().startswith(before)  # nothing cut
    assert [r["path"] for r in IndexWriter(index).read_rows()][5:] == ["new.nii"]


def _rewrite_then_die(index: str, conn) -> None:  # type: ignore[no-untyped-def]
    """Start a real rewrite and get SIGKILLed once the temp file is being written."""
    p = entry_path("base", 1)
    conn.send("go")
    IndexWriter(index).write_entry(p, {**context_for(p), "blob": "x" * 50_000_000})


def test_sigkill_during_a_real_rewrite(tmp_path: Path) -> None:
    """SIGKILL while a schema change writes its 50 MB temp file: old index intact.

    The parent kills the writer as soon as its temp file appears (retried in
    the unlikely case the rewrite completes first).
    """
    index, before = _index_with_rows(tmp_path, 200)
    temp = None
    for _ in range(3):
        parent, kid = multiprocessing.Pipe()
        child = FORK.Process(target=_rewrite_then_die, args=(index, kid))
        child.start()
        assert parent.recv() == "go"
        while temp is None and child.exitcode is None:
            temp = next(iter(stray_temp_files(tmp_path)), None)
        if temp is not None:
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        if temp is not None:
            break
        Path(index).write_bytes(before)  # the rewrite completed: undo it, retry
    assert temp is not None, "the rewrite always finished before it could be killed"
    assert Path(index).read_bytes() == before
    _recover_in_fresh_process(index, "next")
    assert stray_temp_files(tmp_path) == []
    check_index(index, exact={entry_path("base", i) for i in range(200)} | {entry_path("next", 0)})


def test_torn_append_after_a_longer_earlier_record(tmp_path: Path) -> None:
    """The lock file is overwritten in place: leftovers of a longer record stay behind it."""
    index, before = _index_with_rows(tmp_path)
    fake_append_journal(index, 0, b"x" * 200_000)  # a big earlier record...
    rows = "".join(f"{entry_path('torn', i)},{'y' * 40},a,b,c\n" for i in range(200))
    data = rows.encode()
    assert len(data) > 8192
    fake_append_journal(index, len(before), data)  # ...then a shorter one, torn
    with open(index, "ab") as f:  # where a kill stops a write: at a page's end
        f.write(data[: _page_end_within(len(before), len(data))])
    _recover_in_fresh_process(index, "next")
    assert b"torn" not in Path(index).read_bytes()
    check_index(index, exact={entry_path("base", i) for i in range(5)} | {entry_path("next", 0)})


@pytest.mark.parametrize("foreign", ["rewrites it in place with a row added", "appends a row"])
def test_a_row_another_program_adds_after_a_torn_append_is_kept(
    tmp_path: Path, foreign: str
) -> None:
    """A writer was killed in a big append; then another program wrote before ours.

    The bytes after the tear are that program's, in the part of the file no
    chunk check covers: nothing may be cut (the killed writer's rows stay,
    and ``check`` would show them), least of all the other program's row.
    """
    index, before = _index_with_rows(tmp_path)
    rows = "".join(f"{entry_path('torn', i)},{'y' * 40},a,b,c\n" for i in range(400))
    data = rows.encode()
    fake_append_journal(index, len(before), data)
    with open(index, "ab") as f:  # killed at a page's end, as the kernel stops a write
        f.write(data[: _page_end_within(len(before), len(data))])
    lock = index + ".lock"
    child = FORK.Process(target=_foreign_adds_a_row, args=(index, lock, foreign))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    written = Path(index).read_bytes()
    assert b"foreign.nii" in written
    _recover_in_fresh_process(index, "next")
    after = Path(index).read_bytes()
    assert after.startswith(written)  # nothing cut
    assert after.endswith(b"\n") and entry_path("next", 0).encode() in after


def _foreign_adds_a_row(index: str, lock: str, how: str) -> None:
    """What med-imagetools' writer (locked, in place) or a shell's ``>>`` does."""
    import fasteners

    if how == "appends a row":
        with open(index, "ab") as f:
            f.write(b"\nforeign.nii,x\n")
        return
    with fasteners.InterProcessLock(lock):
        with open(index, newline="") as f:
            records = list(csv.reader(f))
        records.append(["foreign.nii", "x"])
        with open(index, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(records)


@pytest.mark.parametrize("what", ["a symbolic link", "another file"])
def test_what_is_not_a_journal_at_its_name_is_never_written(tmp_path: Path, what: str) -> None:
    # Records are written over the start of the journal: a link planted at
    # its name (in a directory a group shares) or a user's file there must be
    # refused, not overwritten.
    from index_writer import IndexWriteError

    index = tmp_path / "index.csv"
    index.write_text("path,v\na,1\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    journal = Path(_internals.journal_path(index))
    if what == "a symbolic link":
        journal.symlink_to(victim)
    else:
        journal.write_text("not a journal, keep me\n")
    before = journal.read_bytes()
    with pytest.raises(IndexWriteError, match="journal belongs") as info:
        IndexWriter(index).write_entry("b", {"v": 2})
    assert str(journal) in str(info.value)
    assert journal.read_bytes() == before and victim.read_text() == "precious\n"
    assert index.read_text() == "path,v\na,1\n"
    journal.unlink()
    IndexWriter(index).write_entry("b", {"v": 2})
    assert index.read_text() == "path,v\na,1\nb,2\n"
