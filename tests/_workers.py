"""Picklable worker functions and index checks for the real-world safety tests.

Every row written here is *self-checking*: all its values are derived from its
path and a revision number (:func:`expected_values`), so a value that lands in
the wrong column, a row cut short, or two rows run together is caught without
knowing which process, thread or engine wrote it.

The functions live in an importable module (not in the test files) so that
``spawn``/``forkserver`` children, loky and dask workers can unpickle them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import itertools
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import _internals
from index_writer import IndexWriter

#: Rounds of :func:`write_threads` and :func:`original_write_range` given a barrier.
ROUNDS = 4

#: Length of the value in the ``blob`` column of "big" entries (``/big`` paths).
BLOB_CHARS = 50_000


# ---------------------------------------------------------------- the rows


def entry_path(tag: str, i: int) -> str:
    """The path recorded by entry ``i`` of the writer tagged ``tag``."""
    return f"{tag}/e{i:06d}.nii.gz"


def big_path(tag: str, i: int) -> str:
    """A path whose row carries a ``BLOB_CHARS``-character value."""
    return f"{tag}/big{i:06d}.nii.gz"


def _digest(path: str, rev: int) -> str:
    return hashlib.blake2b(f"{path}#{rev}".encode(), digest_size=8).hexdigest()


def context_for(path: str, rev: int = 0) -> dict[str, Any]:
    """The context written for ``path`` at revision ``rev``.

    Derived from the path alone: a few columns always, a tricky value (comma,
    quotes, CR LF, non-ASCII) for some paths, one of three extra columns for
    others (so new columns appear in the middle of a run and force
    rewrites), ``None`` for some, and the key order reversed for half of them
    (so writers disagree on column order). Paths starting with ``plain`` get
    no tricky value and no ``None``: med-imagetools' original writer would
    store ``"None"`` and turn CR LF inside a value into LF.
    """
    h = _digest(path, 0)
    k = int(h[:4], 16)
    plain = path.startswith("plain")
    ctx: dict[str, Any] = {
        "subject": f"sub-{h[:6]}",
        "digest": _digest(path, rev),
        "rev": rev,
        "length": len(path),
    }
    if not plain and k % 5 == 0:
        ctx["note"] = f'"{path}", said "x"\r\nline 2 é'
    if k % 11 == 0:
        ctx[f"extra_{k % 3}"] = path[::-1]
    if not plain and k % 13 == 0:
        ctx["empty"] = None
    if "/big" in path:
        ctx["blob"] = (h * (BLOB_CHARS // len(h) + 1))[:BLOB_CHARS]
    if k % 2:
        ctx = dict(reversed(list(ctx.items())))
    return ctx


def expected_values(path: str, rev: int) -> dict[str, str]:
    """What the index must hold for ``path`` at ``rev``: column -> stored text."""
    return {k: "" if v is None else str(v) for k, v in context_for(path, rev).items()}


# --------------------------------------------------------------- checking


def read_csv(index: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """Header and records of ``index`` as Python's csv module reads them."""
    with open(index, newline="", encoding="utf-8") as f:
        records = [r for r in csv.reader(f, strict=True) if r]
    if not records:
        return [], []
    return records[0], records[1:]


def check_index(
    index: str | os.PathLike[str],
    *,
    exact: Iterable[str] | None = None,
    acked: Mapping[str, int] | None = None,
    revs: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Check every row of ``index``; return ``{path: rev}``.

    - :meth:`IndexWriter.read_rows` runs first (its snapshot leaves out a
      write cut short by a crash), then the next writer's recovery runs (it
      undoes that write), then the raw file is parsed with the csv module and
      both must agree;
    - no duplicate column, every record has exactly one field per column;
    - every row is self-consistent (:func:`expected_values`) and no expected
      value is missing from the header;
    - every path appears once; with ``exact``, the paths are exactly those;
      with ``acked``, each acknowledged path is present at that revision or
      later; with ``revs``, each path is at exactly that revision.

    Raises AssertionError listing the first problems found.
    """
    rows = IndexWriter(index).read_rows()
    _internals.recover(index)
    header, records = read_csv(index)
    problems: list[str] = []
    if len(set(header)) != len(header):
        problems.append(f"duplicate columns in header {header}")
    if "path" not in header or "rev" not in header:
        problems.append(f"header lacks path/rev: {header}")
        raise AssertionError("\n".join(problems))
    counts: Counter[str] = Counter()
    found: dict[str, int] = {}
    for n, fields in enumerate(records, start=2):
        if len(fields) != len(header):
            problems.append(f"record {n}: {len(fields)} fields, header has {len(header)}")
            continue
        row = dict(zip(header, fields, strict=True))
        p = row["path"]
        counts[p] += 1
        if not row["rev"].isdigit():
            problems.append(f"record {n} ({p!r}): rev {row['rev']!r}")
            continue
        rev = int(row["rev"])
        found[p] = rev
        want = expected_values(p, rev)
        for col in header:
            if col != "path" and row[col] != want.get(col, ""):
                problems.append(
                    f"record {n} ({p!r}): column {col!r} = {row[col][:60]!r}, "
                    f"expected {want.get(col, '')[:60]!r}"
                )
        for col, value in want.items():
            if col not in header and value:
                problems.append(f"record {n} ({p!r}): column {col!r} missing from header")
    dups = sorted(p for p, c in counts.items() if c > 1)
    if dups:
        problems.append(f"{len(dups)} paths appear more than once, e.g. {dups[:5]}")
    if exact is not None:
        want_paths = set(exact)
        missing = sorted(want_paths - counts.keys())
        extra = sorted(counts.keys() - want_paths)
        if missing:
            problems.append(f"{len(missing)} entries lost, e.g. {missing[:5]}")
        if extra:
            problems.append(f"{len(extra)} unexpected entries, e.g. {extra[:5]}")
    if acked is not None:
        lost = sorted(p for p in acked if p not in found)
        stale = sorted(p for p, r in acked.items() if p in found and found[p] < r)
        if lost:
            problems.append(
                f"{len(lost)} acknowledged entries lost (of {len(acked)}), e.g. {lost[:5]}"
            )
        if stale:
            problems.append(f"{len(stale)} acknowledged replacements lost, e.g. {stale[:5]}")
    if revs is not None:
        wrong = sorted(p for p, r in revs.items() if found.get(p) != r)
        if wrong:
            problems.append(f"{len(wrong)} paths not at their last revision, e.g. {wrong[:5]}")
    as_dicts = [dict(zip(header, f, strict=True)) for f in records if len(f) == len(header)]
    if rows != as_dicts:
        problems.append(
            f"read_rows() ({len(rows)} rows) differs from the csv module ({len(as_dicts)} rows)"
        )
    if problems:
        raise AssertionError(f"{index}: {len(problems)} problems:\n" + "\n".join(problems[:25]))
    return found


def stray_temp_files(directory: str | os.PathLike[str]) -> list[str]:
    """Temporary files a rewrite left behind in ``directory``."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# --------------------------------------------------------------- workers


def write_range(
    index: str,
    tag: str,
    n: int,
    batch: int = 1,
    start_event: Any = None,
) -> int:
    """Write entries ``0..n-1`` of ``tag``, ``batch`` at a time; return the pid."""
    w = IndexWriter(index)
    if start_event is not None:
        start_event.wait()
    for lo in range(0, n, batch):
        paths = [entry_path(tag, i) for i in range(lo, min(n, lo + batch))]
        if batch == 1:
            w.write_entry(paths[0], context_for(paths[0]))
        else:
            w.write_entries((p, context_for(p)) for p in paths)
    return os.getpid()


def run_in_threads(target: Callable[[int], None], n: int) -> None:
    """Run ``target(0)`` ... ``target(n - 1)`` in ``n`` threads; re-raise the first error."""
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            target(t)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def round_bounds(n: int, n_rounds: int) -> list[range]:
    """Entries ``0 .. n - 1`` cut into ``n_rounds`` consecutive ranges."""
    cuts = [k * n // n_rounds for k in range(n_rounds + 1)]
    return [range(lo, hi) for lo, hi in itertools.pairwise(cuts)]


def round_of(i: int, n: int, n_rounds: int) -> int:
    """The round (of :func:`round_bounds`) in which entry ``i`` of ``n`` is written."""
    return next(k for k, r in enumerate(round_bounds(n, n_rounds)) if i in r)


def write_threads(
    index: str,
    tag: str,
    n_threads: int,
    n: int,
    start_event: Any = None,
    pause: float = 0.0,
    rounds: Any = None,
) -> int:
    """``n_threads`` threads each write ``n`` entries; raise if any thread failed.

    Even threads share one writer object, odd threads make their own, and
    every third thread writes in small batches. With ``pause``, each thread
    waits that long between writes, like a pipeline that records a file
    after processing it (it leaves the lock free some of the time). With
    ``rounds`` (a ``multiprocessing.Barrier``), the entries are written in
    :data:`ROUNDS` rounds (:func:`round_bounds`): once all threads have
    written a round's entries, the process waits at ``rounds`` for the other
    processes sharing it before the next round.
    """
    shared = IndexWriter(index)
    barrier = threading.Barrier(n_threads)
    n_rounds = 1 if rounds is None else ROUNDS
    between = threading.Barrier(
        n_threads, action=None if rounds is None else lambda: rounds.wait(60), timeout=120
    )

    def run(t: int) -> None:
        w = shared if t % 2 == 0 else IndexWriter(index)
        barrier.wait()
        sub = f"{tag}-t{t}"
        for part in round_bounds(n, n_rounds):
            if t % 3 == 2:
                for lo in range(part.start, part.stop, 7):
                    ps = [entry_path(sub, i) for i in range(lo, min(part.stop, lo + 7))]
                    w.write_entries([(p, context_for(p)) for p in ps])
                    if pause:
                        time.sleep(pause)
            else:
                for i in part:
                    p = entry_path(sub, i)
                    w.write_entry(p, context_for(p))
                    if pause:
                        time.sleep(pause)
            if rounds is not None:
                between.wait()

    if start_event is not None:
        start_event.wait()
    run_in_threads(run, n_threads)
    return os.getpid()


def thread_paths(tag: str, n_threads: int, n: int) -> set[str]:
    """The paths :func:`write_threads` writes."""
    return {entry_path(f"{tag}-t{t}", i) for t in range(n_threads) for i in range(n)}


def task_new_writer(index: str, i: int) -> int:
    """One task of the seed's example: a fresh writer, one entry."""
    p = entry_path("task", i)
    IndexWriter(index).write_entry(p, context_for(p))
    return os.getpid()


def task_shared_writer(writer: IndexWriter, i: int) -> int:
    """One task using a writer made in the parent and pickled into the worker."""
    p = entry_path("shared", i)
    writer.write_entry(p, context_for(p))
    return os.getpid()


def task_from_blob(serializer: str, blob: bytes, tag: str, n: int) -> tuple[int, str]:
    """Unpickle a writer with ``serializer`` (pickle, cloudpickle, dill) and use it."""
    writer = importlib.import_module(serializer).loads(blob)
    assert isinstance(writer, IndexWriter)
    for i in range(n):
        p = entry_path(tag, i)
        writer.write_entry(p, context_for(p))
    return os.getpid(), repr(writer)


# ------------------------------------------------------------ crash tests


def _ack(fd: int, items: Iterable[tuple[str, int]]) -> None:
    os.write(fd, "".join(f"{p}\t{r}\n" for p, r in items).encode())


class _Mix(NamedTuple):
    """Cumulative chances of each kind of write (the rest are replacements), and sizes."""

    single: float
    batch: float  # 2..batch_max rows
    many: float  # many_rows small rows
    huge: float  # huge_rows huge rows
    batch_max: int
    many_rows: int
    huge_rows: int


_KILL_MIX = _Mix(0.45, 0.8, 0.86, 0.92, batch_max=300, many_rows=15_000, huge_rows=40)
_SPELLINGS_MIX = _Mix(0.5, 0.8, 0.84, 0.88, batch_max=100, many_rows=10_000, huge_rows=30)


def _write_forever(
    pick: Callable[[], IndexWriter], rng: random.Random, tag: str, fd: int, mix: _Mix
) -> None:
    """Write ``mix`` with the writer ``pick()`` gives, acknowledging each write in ``fd``.

    Entries are tagged ``tag``; replacements rewrite this loop's own
    acknowledged rows with a new revision.
    """
    mine: dict[str, int] = {}
    i = 0
    while True:
        w = pick()
        r = rng.random()
        if r < mix.single:
            ps = [entry_path(tag, i)]
        elif r < mix.batch:
            ps = [entry_path(tag, j) for j in range(i, i + rng.randint(2, mix.batch_max))]
        elif r < mix.many:
            ps = [entry_path(tag, j) for j in range(i, i + mix.many_rows)]
        elif r < mix.huge:
            ps = [big_path(tag, j) for j in range(i, i + mix.huge_rows)]
        elif mine:
            p = rng.choice(list(mine))
            rev = mine[p] + 1
            w.write_entry(p, context_for(p, rev), replace_existing=True)
            _ack(fd, [(p, rev)])
            mine[p] = rev
            continue
        else:
            continue
        if len(ps) == 1:
            w.write_entry(ps[0], context_for(ps[0]))
        else:
            w.write_entries([(p, context_for(p)) for p in ps])
        i += len(ps)
        _ack(fd, [(p, 0) for p in ps])
        for p in ps:
            if "/big" not in p and rng.random() < 0.01:
                mine[p] = 0


def read_acks(ack_paths: Iterable[str | os.PathLike[str]]) -> dict[str, int]:
    """The acknowledged ``{path: rev}`` of killed workers (complete lines only)."""
    acked: dict[str, int] = {}
    for ack in ack_paths:
        with contextlib.suppress(FileNotFoundError):
            data = Path(ack).read_bytes()
            for line in data.split(b"\n")[:-1]:  # the last piece has no newline
                p, r = line.decode().split("\t")
                acked[p] = max(acked.get(p, 0), int(r))
    return acked


def kill_worker(index: str, tag: str, ack_path: str, log_path: str, seed: int) -> None:
    """Write to ``index`` forever (until SIGKILLed), acknowledging each write.

    A write is acknowledged by appending ``path<TAB>rev`` lines to
    ``ack_path`` *after* ``write_entry``/``write_entries`` returned. The mix:
    single entries, small batches, batches of many small rows (~2 MB), batches
    of a few huge rows (~2 MB), and real replacements of this worker's own
    acknowledged rows (``replace_existing`` with a new revision: a rewrite).
    Warnings of the library (roll-backs of torn writes) go to ``log_path``.
    """
    logging.basicConfig(
        filename=log_path,
        level=logging.WARNING,
        format="%(process)d %(name)s %(message)s",
        force=True,
    )
    rng = random.Random(seed)
    w = IndexWriter(index)
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _write_forever(lambda: w, rng, tag, fd, _KILL_MIX)


def kill_worker_spellings(
    spellings: list[str], tag: str, ack_path: str, log_path: str, seed: float, threads: int
) -> None:
    """:func:`kill_worker`'s mix in ``threads`` threads, each write through a random spelling.

    ``spellings`` are paths of one index (its real path, through a symlinked
    directory, with ``..``). Thread ``k`` tags its entries ``{tag}t{k}`` and
    acknowledges them in ``{ack_path}.t{k}`` after each call returned. The
    mix: single entries, small batches, batches of ~1.5 MB, of 30 huge rows,
    and replacements (rewrites) of the thread's own acknowledged rows.
    Writer objects are per thread and spelling, except that every thread
    shares the first spelling's.
    """
    logging.basicConfig(
        filename=log_path,
        level=logging.WARNING,
        format="%(process)d %(name)s %(message)s",
        force=True,
    )
    shared = IndexWriter(spellings[0])

    def run(k: int) -> None:
        rng = random.Random(f"{seed}-{k}")
        writers = [shared] + [IndexWriter(s) for s in spellings[1:]]
        fd = os.open(f"{ack_path}.t{k}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _write_forever(lambda: rng.choice(writers), rng, f"{tag}t{k}", fd, _SPELLINGS_MIX)

    run_in_threads(run, threads)


def hold_lock_until_told(lock_path: str, conn: Any) -> None:
    """Hold a fasteners lock on ``lock_path`` (as med-imagetools takes it).

    Sends ``"held"`` once locked, releases on any message, then sends
    ``"released"``.
    """
    import fasteners

    lock = fasteners.InterProcessLock(lock_path)
    lock.acquire()
    conn.send("held")
    conn.recv()
    lock.release()
    conn.send("released")


def unlink_loop(lock_path: str, stop: Any, count: Any) -> None:
    """Delete ``lock_path`` over and over, as med-imagetools does at the end of a run."""
    n = 0
    while not stop.is_set():
        try:
            os.unlink(lock_path)
            n += 1
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    count.value = n


def replace_worker(index: str, tag: str, n: int) -> int:
    """Append ``n`` entries, replacing (rewriting) every fifth with revision 1."""
    w = IndexWriter(index)
    for i in range(n):
        p = entry_path(tag, i)
        w.write_entry(p, context_for(p))
        if i % 5 == 4:
            q = entry_path(tag, i - 2)
            w.write_entry(q, context_for(q, 1), replace_existing=True)
    return os.getpid()


def replace_worker_revs(tag: str, n: int) -> dict[str, int]:
    """The final ``{path: rev}`` of :func:`replace_worker`."""
    revs = {entry_path(tag, i): 0 for i in range(n)}
    for i in range(n):
        if i % 5 == 4:
            revs[entry_path(tag, i - 2)] = 1
    return revs


# ----------------------------------------------------- the original writer


def original_write_range(
    module_file: str, index: str, tag: str, n: int, start_event: Any, rounds: Any = None
) -> int:
    """Write ``n`` entries with med-imagetools' original IndexWriter.

    With ``rounds``, in rounds as :func:`write_threads` writes them.
    """
    from _original import load

    w = load(module_file).IndexWriter(Path(index))
    start_event.wait()
    for part in round_bounds(n, 1 if rounds is None else ROUNDS):
        for i in part:
            p = entry_path(tag, i)
            w.write_entry(Path(p), context_for(p))
        if rounds is not None:
            rounds.wait(60)
    return os.getpid()


def hold_writer_lock_until_told(index: str, conn: Any, mid_write: bool = False) -> None:
    """Hold an IndexWriter's lock until told, as a writer does.

    The lock file's two layers (thread lock + fasteners) as every call takes
    them; with ``mid_write``, also the index file itself opened and locked
    as a write in progress holds it (see ``_internals.holding_lock``). Sends
    ``"held"`` once locked, releases on any message, then sends
    ``"released"``.
    """
    with _internals.holding_lock(IndexWriter(index)):
        conn.send("held")
        conn.recv()
    conn.send("released")


def locked_unlink_loop(index: str, stop: Any, count: Any) -> None:
    """Delete ``<index>.lock`` over and over, each time while holding the lock."""
    w = IndexWriter(index)
    n = 0
    while not stop.is_set():
        with _internals.holding_lock(w):
            try:
                os.unlink(index + ".lock")
                n += 1
            except FileNotFoundError:
                pass
        time.sleep(0.0005)
    count.value = n


def big_batch_then_exit(index: str, n: int, lock: str | None = None) -> None:
    """Append ``n`` rows of ``BLOB_CHARS`` characters in one batch, then exit with status 3."""
    rows = [(big_path("huge", i), context_for(big_path("huge", i))) for i in range(n)]
    IndexWriter(index, lock).write_entries(rows)
    os._exit(3)  # the write returned: the test wanted to kill it before


#: The value of every row :func:`quoted_batch_then_exit` writes: 50 kB with commas,
#: so it is written quoted and almost every byte of its row is inside the quotes.
QUOTED_BLOB = "x,y " * 12_500


def quoted_path(i: int) -> str:
    return f"quoted/q{i:06d}.nii.gz"


def quoted_batch_then_exit(index: str, n: int, lock: str | None = None) -> None:
    """Append ``n`` rows holding :data:`QUOTED_BLOB` in one batch, then exit with status 3."""
    rows = [(quoted_path(i), {"blob": QUOTED_BLOB}) for i in range(n)]
    IndexWriter(index, lock).write_entries(rows)
    os._exit(3)


def prepare_for_big_batch(
    index: str | os.PathLike[str], n: int = 1300, lock: str | os.PathLike[str] | None = None
) -> str:
    """Write one row giving the index every column :func:`big_batch_then_exit` uses.

    So that batch is an append (new columns would make it a rewrite). The
    row's extra columns are empty: it stays self-checking. Returns its path.
    """
    p = entry_path("setup", 0)
    ctx = context_for(p)
    for i in range(n):
        for key in context_for(big_path("huge", i)):
            ctx.setdefault(key, "")
    IndexWriter(index, lock).write_entry(p, ctx)
    return p


def kill_inside_a_big_append(
    index: str | os.PathLike[str],
    n: int = 1300,
    unlink: Iterable[str | os.PathLike[str]] = (),
    target: Callable[..., None] = big_batch_then_exit,
    journal: str | os.PathLike[str] | None = None,
) -> int:
    """SIGKILL a writer of ``n`` 50 kB rows as soon as its batch reaches the file.

    The index must already have the batch's columns (:func:`prepare_for_big_batch`).
    The files in ``unlink`` (the lock file, the journal) are deleted just
    before the kill. ``target(index, n)`` writes the batch
    (:func:`quoted_batch_then_exit` is the other one). Returns the file's
    size before the batch. Retried (the file restored) in the unlikely case
    the write completes first (with the journal kept, that is checked
    against its record; without, the file must not end with a line end).
    ``journal`` is the journal the writer keeps, if not the one next to the
    index.
    """
    import multiprocessing
    import signal

    fork = multiprocessing.get_context("fork")
    path = Path(index)
    before = path.read_bytes()
    for _ in range(5):
        child = fork.Process(target=target, args=(str(index), n))
        child.start()
        while path.stat().st_size == len(before) and child.exitcode is None:
            pass
        for name in unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        size = path.stat().st_size
        record = (
            _internals.journal_record(index)
            if journal is None
            else _internals.journal_file_record(journal)
        )
        if record is not None and record.get("op") != "append":
            raise AssertionError(f"the batch was not an append: {record}")
        if record is not None:
            complete = int(str(record["offset"])) + int(str(record["length"])) <= size
        else:  # no journal: a cut at a line end looks complete; try again
            with open(index, "rb") as f:
                complete = f.seek(-1, os.SEEK_END) >= 0 and f.read(1) == b"\n"
        if child.exitcode == -signal.SIGKILL and size > len(before) and not complete:
            return len(before)
        path.write_bytes(before)
    raise AssertionError("never managed to kill the writer inside its write")


fake_journal_record = _internals.write_journal
fake_append_journal = _internals.write_append_journal


def write_until_told(index: str, tag: str, started: Any, stop: Any) -> None:
    """Write entries one by one, as fast as possible, until ``stop`` is set."""
    writer = IndexWriter(index)
    i = 0
    while not stop.is_set():
        writer.write_entry(entry_path(tag, i), {"i": i})
        i += 1
        if i == 100:
            started.release()
