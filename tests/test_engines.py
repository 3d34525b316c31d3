"""Real parallel engines: multiprocessing (fork, spawn, forkserver),
concurrent.futures, joblib (loky) and dask.distributed.

Each engine runs tasks in both styles users write:

- the seed's style: every task makes its own ``IndexWriter(index_path)``;
- a writer made in the parent, pickled into the workers by the engine.

Also: pickle, cloudpickle and dill round-trips used in a spawned process,
and fork safety (a child forked while another thread of the parent holds the
lock, and a child forked after the parent used the writer).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import threading
from pathlib import Path

import pytest

import _internals
from _workers import (
    check_index,
    context_for,
    entry_path,
    task_from_blob,
    task_new_writer,
    task_shared_writer,
)
from index_writer import IndexLockTimeoutError, IndexWriter

N_TASKS = 120


def _want(n: int = N_TASKS) -> set[str]:
    return {entry_path("task", i) for i in range(n)} | {entry_path("shared", i) for i in range(n)}


def _run_both_styles(index: Path, mapper) -> list[int]:  # type: ignore[no-untyped-def]
    """Run both task styles through ``mapper(fn, iterable_of_args)``; return pids."""
    writer = IndexWriter(index)
    pids = list(mapper(task_new_writer, [(str(index), i) for i in range(N_TASKS)]))
    pids += list(mapper(task_shared_writer, [(writer, i) for i in range(N_TASKS)]))
    return pids


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool(tmp_path: Path, method: str) -> None:
    index = tmp_path / "index.csv"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        pids = _run_both_styles(index, pool.starmap)
    assert os.getpid() not in pids
    check_index(index, exact=_want())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_process_per_writer(tmp_path: Path, method: str) -> None:
    """A writer passed to ``Process(args=...)``: pickled for spawn/forkserver."""
    index = tmp_path / "index.csv"
    ctx = multiprocessing.get_context(method)
    writer = IndexWriter(index)
    writer.write_entry(entry_path("shared", 0), context_for(entry_path("shared", 0)))
    procs = [ctx.Process(target=task_shared_writer, args=(writer, i)) for i in range(1, 4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    check_index(index, exact={entry_path("shared", i) for i in range(4)})


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(tmp_path: Path, method: str) -> None:
    index = tmp_path / "index.csv"
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=multiprocessing.get_context(method)
    ) as ex:
        pids = _run_both_styles(index, lambda fn, args: ex.map(fn, *zip(*args, strict=True)))
    assert os.getpid() not in pids
    check_index(index, exact=_want())


def test_thread_pool_executor(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        pids = _run_both_styles(index, lambda fn, args: ex.map(fn, *zip(*args, strict=True)))
    assert set(pids) == {os.getpid()}
    check_index(index, exact=_want())


def test_joblib_loky(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    index = tmp_path / "index.csv"

    def mapper(fn, args):  # type: ignore[no-untyped-def]
        return joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(fn)(*a) for a in args)

    pids = _run_both_styles(index, mapper)
    assert os.getpid() not in pids
    check_index(index, exact=_want())


def test_dask_distributed_local_cluster(tmp_path: Path) -> None:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:  # pragma: no cover - dask is in the test extra
        pytest.skip(f"dask.distributed cannot be imported: {e}")
    index = tmp_path / "index.csv"
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):

        def mapper(fn, args):  # type: ignore[no-untyped-def]
            cols = list(zip(*args, strict=True))
            return client.gather(client.map(fn, *cols, pure=False))

        pids = _run_both_styles(index, mapper)
    assert os.getpid() not in pids
    check_index(index, exact=_want())


@pytest.mark.parametrize("serializer", ["pickle", "cloudpickle", "dill"])
def test_serializer_round_trip_in_spawned_process(tmp_path: Path, serializer: str) -> None:
    mod = pytest.importorskip(serializer)
    index = tmp_path / "index.csv"
    lock = tmp_path / "locks" / "my.lock"
    writer = IndexWriter(str(index), lock_path=lock, timeout=30.0, durable=True)
    writer.write_entry(entry_path("blob", 99), context_for(entry_path("blob", 99)))
    blob = mod.dumps(writer)
    back = mod.loads(blob)
    assert (back.index_path, back.lock_path, back.timeout, back.durable) == (
        writer.index_path,
        writer.lock_path,
        30.0,
        True,
    )
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pid, rep = pool.apply(task_from_blob, (serializer, blob, "blob", 25))
    assert pid != os.getpid()
    assert rep == repr(writer)
    check_index(index, exact={entry_path("blob", i) for i in [*range(25), 99]})


# ------------------------------------------------------------------ fork


def _child_write_after_timeout(index: str, conn) -> None:  # type: ignore[no-untyped-def]
    """In a child forked while the parent holds the lock.

    First a write with a short timeout must time out (the parent's lock is a
    real process lock), and it must not hang on the parent thread's copy of
    the in-process lock; then, once the parent releases, a write succeeds.
    """
    try:
        p = entry_path("child", 0)
        try:
            IndexWriter(index, timeout=0.2).write_entry(p, context_for(p))
            conn.send("wrote while the parent held the lock")
            return
        except IndexLockTimeoutError:
            conn.send("timed out")
        conn.recv()  # the parent released
        IndexWriter(index).write_entry(p, context_for(p))
        q = entry_path("child", 1)
        IndexWriter(index).write_entries([(q, context_for(q))])
        conn.send("ok")
    except BaseException as e:
        conn.send(f"error: {e!r}")


def test_fork_while_another_thread_holds_the_lock(tmp_path: Path) -> None:
    index = str(tmp_path / "index.csv")
    writer = IndexWriter(index)
    writer.write_entry(entry_path("parent", 0), context_for(entry_path("parent", 0)))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _internals.holding_lock(writer):  # exactly as a write holds it
            held.set()
            release.wait()

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    parent_conn, child_conn = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_child_write_after_timeout, args=(index, child_conn)
    )
    child.start()  # fork while `holder` holds the lock
    try:
        assert parent_conn.poll(30), "child hung: inherited a held in-process lock?"
        assert parent_conn.recv() == "timed out"
    finally:
        release.set()
        t.join()
    parent_conn.send("go")
    assert parent_conn.poll(30), "child hung after the parent released the lock"
    assert parent_conn.recv() == "ok"
    child.join(30)
    assert child.exitcode == 0
    # The parent keeps working too.
    writer.write_entry(entry_path("parent", 1), context_for(entry_path("parent", 1)))
    want = {entry_path("parent", i) for i in range(2)} | {entry_path("child", i) for i in range(2)}
    check_index(index, exact=want)


def _child_writes(index: str, writer: IndexWriter, n: int) -> None:
    for i in range(n):
        p = entry_path(f"kid{os.getpid()}", i)
        (writer if i % 2 else IndexWriter(index)).write_entry(p, context_for(p))


def test_fork_after_parent_used_the_writer(tmp_path: Path) -> None:
    """Children inherit the parent's open lock file and cached knowledge."""
    index = str(tmp_path / "index.csv")
    writer = IndexWriter(index)
    for i in range(5):
        writer.write_entry(entry_path("parent", i), context_for(entry_path("parent", i)))
    writer.read_rows()
    ctx = multiprocessing.get_context("fork")
    kids = [ctx.Process(target=_child_writes, args=(index, writer, 60)) for _ in range(3)]
    for k in kids:
        k.start()
    # The parent writes while its children do (its cached view goes stale).
    for i in range(5, 65):
        writer.write_entry(entry_path("parent", i), context_for(entry_path("parent", i)))
    for k in kids:
        k.join(60)
    assert [k.exitcode for k in kids] == [0, 0, 0]
    want = {entry_path("parent", i) for i in range(65)}
    want |= {entry_path(f"kid{k.pid}", i) for k in kids for i in range(60)}
    check_index(index, exact=want)


def test_fork_in_the_middle_of_many_writing_threads(tmp_path: Path) -> None:
    """Fork repeatedly while 4 threads of the parent write without pause.

    Whatever each thread was doing at fork time (holding the lock, updating
    the cached knowledge), the child must be able to write and exit.
    """
    index = str(tmp_path / "index.csv")
    stop = threading.Event()
    counts = [0] * 4
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            w = IndexWriter(index)
            while not stop.is_set():
                p = entry_path(f"bg{t}", counts[t])
                w.write_entry(p, context_for(p))
                counts[t] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    ctx = multiprocessing.get_context("fork")
    kids = []
    try:
        for _ in range(8):
            k = ctx.Process(target=_child_writes, args=(index, IndexWriter(index), 10))
            k.start()
            kids.append(k)
            k.join(60)
            assert k.exitcode == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    want = {entry_path(f"bg{t}", i) for t in range(4) for i in range(counts[t])}
    want |= {entry_path(f"kid{k.pid}", i) for k in kids for i in range(10)}
    check_index(index, exact=want)


def test_pickled_writer_is_independent_of_parent_state(tmp_path: Path) -> None:
    """A pickled writer carries configuration only, not locks or descriptors."""
    index = tmp_path / "index.csv"
    writer = IndexWriter(index)
    writer.write_entry("a", {"x": 1})
    data = pickle.dumps(writer)
    assert len(data) < 2000
    assert b"fasteners" not in data
