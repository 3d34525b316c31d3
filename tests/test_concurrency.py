"""Threads, processes, and processes x threads writing one index at once.

Nothing may be lost (every path exactly once), no value may land in the wrong
column (rows are self-checking, see ``_workers.context_for``: writers disagree
on column order and new columns appear mid-run, forcing rewrites while others
append), and the index must parse with the csv module and ``read_rows``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import _internals
from _workers import (
    check_index,
    context_for,
    entry_path,
    read_csv,
    run_in_threads,
    thread_paths,
    write_range,
    write_threads,
    write_until_told,
)
from index_writer import IndexWriter

FORK = multiprocessing.get_context("fork")


def _run_processes(targets: list[tuple[object, tuple[object, ...]]], timeout: float = 90) -> None:
    procs = [FORK.Process(target=t, args=a) for t, a in targets]  # type: ignore[arg-type]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_threads_8x500(tmp_path: Path) -> None:
    """8 threads x 500 entries in one process (the original kept 4 of 8000)."""
    index = str(tmp_path / "index.csv")
    write_threads(index, "thr", 8, 500)
    check_index(index, exact=thread_paths("thr", 8, 500))


def test_threads_on_many_writer_objects_with_new_columns(tmp_path: Path) -> None:
    """Threads each making a fresh writer per entry (the seed's pattern)."""
    index = tmp_path / "sub" / "index.csv"  # the directory does not exist yet
    barrier = threading.Barrier(6)
    def run(t: int) -> None:
        barrier.wait()
        for i in range(150):
            p = entry_path(f"fresh{t}", i)
            IndexWriter(index).write_entry(p, context_for(p))

    run_in_threads(run, 6)
    check_index(index, exact={entry_path(f"fresh{t}", i) for t in range(6) for i in range(150)})


def test_processes_6xN(tmp_path: Path) -> None:
    """6 processes x 300 entries, released at once; some write in batches."""
    index = str(tmp_path / "index.csv")
    go = FORK.Event()
    targets = [(write_range, (index, f"proc{k}", 300, 1 if k % 2 else 9, go)) for k in range(6)]
    procs = [FORK.Process(target=t, args=a) for t, a in targets]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * 6
    check_index(index, exact={entry_path(f"proc{k}", i) for k in range(6) for i in range(300)})


def test_processes_x_threads(tmp_path: Path) -> None:
    """3 processes x 4 threads x 150 entries (the original kept 140 of 2160)."""
    index = str(tmp_path / "index.csv")
    go = FORK.Event()
    procs = [
        FORK.Process(target=write_threads, args=(index, f"px{k}", 4, 150, go)) for k in range(3)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * 3
    want = set().union(*(thread_paths(f"px{k}", 4, 150) for k in range(3)))
    check_index(index, exact=want)


def test_processes_x_threads_with_replacements(tmp_path: Path) -> None:
    """Processes append and replace (whole-file rewrites) at once; threads too.

    Every fifth entry replaces an earlier one with revision 1, so rewrites
    (temp file + rename) race with appends from the other processes and
    threads: a rewrite built from a stale view would drop their rows.
    """
    from _workers import replace_worker, replace_worker_revs

    index = str(tmp_path / "index.csv")

    def threads_of(k: int) -> None:
        ts = [
            threading.Thread(target=replace_worker, args=(index, f"r{k}-{t}", 100))
            for t in range(3)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    _run_processes([(threads_of, (k,)) for k in range(3)])
    revs: dict[str, int] = {}
    for k in range(3):
        for t in range(3):
            revs.update(replace_worker_revs(f"r{k}-{t}", 100))
    check_index(index, exact=set(revs), revs=revs)


def _rewrite_the_latest_rows_of_the_next_writer(
    index: str, k: int, n: int, counts: Any, start: Any
) -> None:
    """Append ``n`` rows; before each, write the next process's latest row again, unchanged."""
    w = IndexWriter(index)
    w.write_entry(f"start{k}", {}, replace_existing=True)  # the whole file read
    following = (k + 1) % len(counts)
    start.wait()
    for i in range(n):
        latest = counts[following] - 1
        if latest >= 0:
            q = entry_path(f"plain{following}", latest)
            w.write_entry(q, context_for(q), replace_existing=True)
        p = entry_path(f"plain{k}", i)
        w.write_entry(p, context_for(p), replace_existing=True)
        counts[k] = i + 1


def test_processes_find_the_rows_others_appended_just_before(tmp_path: Path) -> None:
    """A path another process appended since this one's last write is found, not added twice.

    Each of 3 processes, before each of its appends, writes the row the next
    process appended last once more, unchanged (``replace_existing``): that
    row was often appended since this process last held the lock, so the
    writer takes it in just before looking the path up. If the lookup missed
    it, the row would be appended a second time.
    """
    index = str(tmp_path / "index.csv")
    IndexWriter(index).write_entry("first", context_for("first"))  # every column, once
    for c in range(3):
        IndexWriter(index).write_entry(f"first{c}", {f"extra_{c}": "x"})
    counts, start = FORK.Array("i", 3), FORK.Barrier(3)
    _run_processes([(_rewrite_the_latest_rows_of_the_next_writer, (index, k, 1000, counts, start))
                    for k in range(3)])
    rows = IndexWriter(index).read_rows()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 3 * 1000 + 4 + 3


def test_processes_and_parent_threads_share_the_index(tmp_path: Path) -> None:
    """Children forked from a parent that keeps writing from its own threads."""
    index = str(tmp_path / "index.csv")
    # The parent has used the index before forking: the children inherit its
    # open lock file and cached knowledge, and must not be misled by them.
    IndexWriter(index).write_entry(entry_path("pre", 0), context_for(entry_path("pre", 0)))
    go = FORK.Event()
    procs = [FORK.Process(target=write_range, args=(index, f"ch{k}", 200, 3, go)) for k in range(2)]
    for p in procs:
        p.start()
    thread = threading.Thread(target=write_threads, args=(index, "parent", 3, 200, go))
    thread.start()
    go.set()
    thread.join()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0, 0]
    want = {entry_path("pre", 0)} | thread_paths("parent", 3, 200)
    want |= {entry_path(f"ch{k}", i) for k in range(2) for i in range(200)}
    check_index(index, exact=want)


@pytest.mark.parametrize("durable", [False, True])
def test_durable_flag_under_contention(tmp_path: Path, durable: bool) -> None:
    """durable=True (fsync) changes nothing about what is written."""
    index = str(tmp_path / "index.csv")
    def run(t: int) -> None:
        w = IndexWriter(index, durable=durable)
        for i in range(40):
            p = entry_path(f"d{t}", i)
            w.write_entry(p, context_for(p))

    run_in_threads(run, 3)
    check_index(index, exact={entry_path(f"d{t}", i) for t in range(3) for i in range(40)})
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ----------------------------------------------------------- lock deletion


def _short_lived_writers(index: str, first: int, count: int) -> None:
    """Start ``count`` writer processes one after another, 3 at a time."""
    from _workers import replace_worker

    live: list[multiprocessing.process.BaseProcess] = []
    for k in range(first, first + count):
        if len(live) == 3:
            live[0].join(60)
            assert live.pop(0).exitcode == 0
        p = FORK.Process(target=replace_worker, args=(index, f"del{k}", 40))
        p.start()
        live.append(p)
    for p in live:
        p.join(60)
        assert p.exitcode == 0


@pytest.mark.parametrize("deleter", ["holding-the-lock", "without-the-lock"])
def test_lock_file_deleted_while_writers_run(tmp_path: Path, deleter: str) -> None:
    """Another process deletes ``<index>.lock`` over and over while writer
    processes come and go; each appends and replaces (rewrites), so two
    writers in the file at once lose rows.

    ``without-the-lock`` is what med-imagetools does (its writers unlink the
    lock file on exit while other workers still write); ``holding-the-lock``
    deletes it only while holding the lock.
    """
    from _workers import locked_unlink_loop, replace_worker, replace_worker_revs, unlink_loop

    index = str(tmp_path / "index.csv")
    stop = FORK.Event()
    deleted = FORK.Value("i", 0)
    if deleter == "holding-the-lock":
        target, arg = locked_unlink_loop, index
    else:
        target, arg = unlink_loop, index + ".lock"
    proc = FORK.Process(target=target, args=(arg, stop, deleted))
    proc.start()
    try:
        long_lived = [
            FORK.Process(target=write_threads, args=(index, f"long{k}", 2, 150)) for k in range(2)
        ]
        for p in long_lived:
            p.start()
        _short_lived_writers(index, 0, 18)
        replace_worker(index, "parent", 40)
        for p in long_lived:
            p.join(90)
        assert [p.exitcode for p in long_lived] == [0, 0]
    finally:
        stop.set()
        proc.join(30)
    assert deleted.value > 0, "the lock file was never deleted"
    revs = replace_worker_revs("parent", 40)
    for k in range(18):
        revs.update(replace_worker_revs(f"del{k}", 40))
    for k in range(2):
        revs.update(dict.fromkeys(thread_paths(f"long{k}", 2, 150), 0))
    check_index(index, exact=set(revs), revs=revs)


def _hold_in_child(index: str, mid_write: bool = False):  # type: ignore[no-untyped-def]
    """Start a child holding an IndexWriter's lock on ``index``; return (child, conn)."""
    from _workers import hold_writer_lock_until_told

    parent, kid = FORK.Pipe()
    child = FORK.Process(target=hold_writer_lock_until_told, args=(index, kid, mid_write))
    child.start()
    assert parent.poll(30) and parent.recv() == "held"
    return child, parent


def _release_child(child, conn) -> None:  # type: ignore[no-untyped-def]
    conn.send("release")
    assert conn.poll(30) and conn.recv() == "released"
    child.join(30)
    assert child.exitcode == 0


def test_lock_file_deleted_between_writes_still_excludes(tmp_path: Path) -> None:
    """This process keeps the old lock file open; another locks the new one.

    Deleted while nobody held it, then recreated by a process that now holds
    it: our next write gets the (free) old file's lock, must notice it is no
    longer the file at that path, and wait for the new one.
    """
    from index_writer import IndexLockTimeoutError

    index = str(tmp_path / "index.csv")
    w = IndexWriter(index, timeout=0.3)
    w.write_entry("a.nii", {"x": 1})  # opens (and keeps open) the lock file
    os.unlink(index + ".lock")
    child, conn = _hold_in_child(index)  # creates and holds a new lock file
    try:
        with pytest.raises(IndexLockTimeoutError):
            w.write_entry("b.nii", {"x": 2})
    finally:
        _release_child(child, conn)
    w.write_entry("b.nii", {"x": 2})
    assert [r["path"] for r in w.read_rows()] == ["a.nii", "b.nii"]


def _write_in_thread(index: str, timeout: float | None):  # type: ignore[no-untyped-def]
    """Start ``write_entry("b.nii")`` in a thread; return (thread, done event, outcome)."""
    done = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        try:
            IndexWriter(index, timeout=timeout).write_entry("b.nii", {"x": 2})
            outcome.append("written")
        except BaseException as e:
            outcome.append(e)
        done.set()

    t = threading.Thread(target=run)
    t.start()
    return t, done, outcome


def test_lock_file_deleted_while_held_still_excludes(tmp_path: Path) -> None:
    """med-imagetools deletes the lock file without taking the lock.

    Another process is in the middle of a write (lock file and index held as
    a write holds them) when the lock file is deleted: a new writer creates
    a new lock file, and must still wait for the first one to finish.
    """
    index = str(tmp_path / "index.csv")
    # Made without a writer: this process must open the lock path afresh
    # (a process that still has the deleted file open waits on that one).
    Path(index).write_bytes(b"path,x\na.nii,1\n")
    before = Path(index).read_bytes()
    child, conn = _hold_in_child(index, mid_write=True)
    try:
        os.unlink(index + ".lock")
        t, done, outcome = _write_in_thread(index, None)
        assert not done.wait(0.5), f"wrote while another writer held the index: {outcome}"
        assert Path(index).read_bytes() == before
    finally:
        _release_child(child, conn)
    t.join(30)
    assert outcome == ["written"]
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a.nii", "b.nii"]


def test_lock_file_deleted_while_held_timeout_is_honoured(tmp_path: Path) -> None:
    index = str(tmp_path / "index.csv")
    # Made without a writer: this process must open the lock path afresh
    # (a process that still has the deleted file open waits on that one).
    Path(index).write_bytes(b"path,x\na.nii,1\n")
    before = Path(index).read_bytes()
    child, conn = _hold_in_child(index, mid_write=True)
    try:
        os.unlink(index + ".lock")
        t, done, outcome = _write_in_thread(index, 0.3)
        finished_in_time = done.wait(5)
        assert Path(index).read_bytes() == before
    finally:
        _release_child(child, conn)
    t.join(30)
    from index_writer import IndexLockTimeoutError

    assert finished_in_time, f"timeout=0.3 ignored: still waiting after 5 s, then {outcome}"
    assert len(outcome) == 1 and isinstance(outcome[0], IndexLockTimeoutError), outcome
    assert Path(index).read_bytes() == before


# ------------------------------------------------------------- lock timeout


@pytest.fixture
def lock_held_by_other_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The index's lock held by a child, through fasteners as med-imagetools takes it."""
    from _workers import hold_lock_until_told

    index = tmp_path / "index.csv"
    parent, kid = FORK.Pipe()
    child = FORK.Process(target=hold_lock_until_told, args=(str(index) + ".lock", kid))
    child.start()
    assert parent.poll(30) and parent.recv() == "held"

    def release() -> None:
        if child.is_alive():
            parent.send("release")
            assert parent.poll(30) and parent.recv() == "released"
            child.join(30)

    try:
        yield index, release
    finally:
        release()


@pytest.mark.parametrize("timeout", [0.2, 0.0])
def test_lock_timeout_across_processes(lock_held_by_other_process, timeout: float) -> None:  # type: ignore[no-untyped-def]
    import time

    from index_writer import IndexLockTimeoutError

    index, release = lock_held_by_other_process
    w = IndexWriter(index, timeout=timeout)
    for attempt in (
        lambda: w.write_entry("a.nii", {"x": 1}),
        lambda: w.write_entries([("b.nii", {"x": 2})], replace_existing=True),
        w.read_rows,
    ):
        t0 = time.monotonic()
        with pytest.raises(IndexLockTimeoutError) as info:
            attempt()
        elapsed = time.monotonic() - t0
        assert timeout <= elapsed < timeout + 1.0
        assert info.value.timeout == timeout
        assert Path(info.value.lock_path) == w.lock_path
        assert not index.exists()  # nothing written, not even an empty file
    # A writer without timeout waits until the lock is free, then writes.
    done = threading.Event()
    waiter = threading.Thread(
        target=lambda: (IndexWriter(index).write_entry("c.nii", {"x": 3}), done.set())
    )
    waiter.start()
    assert not done.wait(0.3)  # held by the other process: it must still wait
    release()
    waiter.join(30)
    assert done.is_set()
    w.write_entry("a.nii", {"x": 1})
    assert [r["path"] for r in w.read_rows()] == ["c.nii", "a.nii"]


def test_lock_timeout_across_threads(tmp_path: Path) -> None:
    import time

    from index_writer import IndexLockTimeoutError

    index = tmp_path / "index.csv"
    holder_writer = IndexWriter(index)
    holder_writer.write_entry("first.nii", {"x": 0})
    before = index.read_bytes()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _internals.holding_lock(holder_writer):  # exactly as a write takes it
            held.set()
            release.wait()

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        errors: list[BaseException] = []
        elapsed: list[float] = []

        def contender() -> None:
            t0 = time.monotonic()
            try:
                IndexWriter(index, timeout=0.2).write_entry("late.nii", {"x": 1})
            except BaseException as e:
                errors.append(e)
            elapsed.append(time.monotonic() - t0)

        threads = [threading.Thread(target=contender) for _ in range(3)]
        for c in threads:
            c.start()
        for c in threads:
            c.join(30)
        assert len(errors) == 3
        assert all(isinstance(e, IndexLockTimeoutError) for e in errors), errors
        assert all(0.2 <= s < 1.2 for s in elapsed), elapsed
        assert index.read_bytes() == before
    finally:
        release.set()
        t.join()
    IndexWriter(index, timeout=0.2).write_entry("late.nii", {"x": 1})
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["first.nii", "late.nii"]


def test_a_waiter_gets_its_turn_while_others_write_back_to_back(tmp_path: Path) -> None:
    # Waiting writers poll the lock; one that starts waiting while two other
    # processes write as fast as they can must still get the lock soon, not
    # only once they stop.
    index = str(tmp_path / "index.csv")
    started, stop = FORK.Semaphore(0), FORK.Event()
    hogs = [FORK.Process(target=write_until_told, args=(index, f"hog{k}", started, stop))
            for k in range(2)]
    for p in hogs:
        p.start()
    try:
        for _ in hogs:
            assert started.acquire(timeout=60)
        waits = []
        for i in range(5):
            t0 = time.monotonic()
            IndexWriter(index).write_entry(f"waiter/{i}.nii", {"i": i})
            waits.append(time.monotonic() - t0)
        # The others were still writing when the waiter got its turn: they
        # go on adding rows after its last one.
        deadline = time.monotonic() + 60
        while True:
            paths = [r[0] for r in read_csv(index)[1]]
            if len(paths) - paths.index("waiter/4.nii") > 50 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(paths) - paths.index("waiter/4.nii") > 50
    finally:
        stop.set()
        for p in hogs:
            p.join(60)
    assert [p.exitcode for p in hogs] == [0, 0]
    assert max(waits) < 5, waits


# ------------------------------------------------- reading ahead while waiting


def _slot_of(index: str) -> Any:
    from index_writer import _handles

    hit = _handles._resolved.get(os.path.realpath(index))
    assert hit is not None
    return hit[0]


def _wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


@pytest.fixture
def waiting_writer(lock_held_by_other_process):  # type: ignore[no-untyped-def]
    """A writer that knows the index, then waits for a lock another process holds.

    Yields the index, a function starting ``write_entry(path, {"v": value},
    replace_existing=True)`` in a thread (returning a join function), the
    writer's slot, and the function releasing the lock.
    """
    index, release = lock_held_by_other_process
    index = str(index)
    w = IndexWriter(index, lock_path=index + ".mine")
    w.write_entry("first.nii", {"v": "0"}, replace_existing=True)  # maps the paths
    w.lock_path = index + ".lock"  # the lock the other process holds

    def start(path: str, value: str) -> Any:
        failed: list[BaseException] = []

        def run() -> None:
            try:
                w.write_entry(path, {"v": value}, replace_existing=True)
            except BaseException as e:  # reported by join()
                failed.append(e)

        t = threading.Thread(target=run)
        t.start()

        def join() -> None:
            t.join(60)
            assert not t.is_alive() and not failed, failed

        return join

    yield index, w, start, _slot_of(index), release
    w.close()


def test_a_waiting_writer_maps_the_rows_appended_meanwhile(waiting_writer) -> None:  # type: ignore[no-untyped-def]
    """Rows appended while a writer waits are read ahead, and their paths found later.

    The lock holder appends two rows and part of a third; the waiting writer
    reads the two whole rows ahead (only whole lines), the holder finishes
    the third row and lets go. The waiter's own write then replaces the
    third row, and a later write replaces a row it only read ahead: were the
    rows read ahead not mapped, each would be stored twice.
    """
    index, w, start, slot, release = waiting_writer
    with open(index, "ab") as f:
        f.write(b"a.nii,1\nb.nii,2\nc.ni")
    join = start("c.nii", "9")
    _wait_until(lambda: slot.state is not None and slot.state.ahead is not None,
                "the waiting writer to read ahead")
    assert slot.state.ahead.size == len(b"a.nii,1\nb.nii,2\n")
    with open(index, "ab") as f:
        f.write(b"i,3\n")
    release()
    join()
    assert slot.reads_ahead and slot.state.ahead is None
    w.write_entry("a.nii", {"v": "7"}, replace_existing=True)
    assert read_csv(index) == (
        ["path", "v"], [["first.nii", "0"], ["a.nii", "7"], ["b.nii", "2"], ["c.nii", "9"]]
    )


def test_rows_read_ahead_then_changed_are_read_again(waiting_writer) -> None:  # type: ignore[no-untyped-def]
    """Bytes read ahead that the file no longer holds under the lock are not trusted.

    The holder appends a row, the waiter reads it ahead, then the holder
    takes it back (as a failed write is rolled back) and appends another of
    the same length. The waiter must find the new row, not the one it read
    ahead: its replacement of the new row's path replaces it. It then stops
    reading ahead for this index.
    """
    index, w, start, slot, release = waiting_writer
    size = os.path.getsize(index)
    with open(index, "ab") as f:
        f.write(b"a.nii,1\n")
    join = start("z.nii", "9")
    _wait_until(lambda: slot.state is not None and slot.state.ahead is not None,
                "the waiting writer to read ahead")
    with open(index, "r+b") as f:
        f.truncate(size)
        f.seek(size)
        f.write(b"q.nii,1\n")
    release()
    join()
    assert not slot.reads_ahead
    w.write_entry("q.nii", {"v": "5"}, replace_existing=True)
    w.write_entry("a.nii", {"v": "6"}, replace_existing=True)
    assert read_csv(index) == (
        ["path", "v"], [["first.nii", "0"], ["q.nii", "5"], ["z.nii", "9"], ["a.nii", "6"]]
    )
