"""Many writers at once: index-writer against SQLite in WAL mode and the floor.

    python benchmarks/contention.py [--quick] [--json OUT] [--plot OUT.png]

Each measurement forks ``P`` writer processes (each with ``T`` threads) that
start together, each making one long-lived writer and then ``N`` writes of
one entry with the four context fields of the many-workers demo; the figure
is all entries divided by the wall time from the start signal to the last
exit (entries/s). Implementations, interleaved, each on fresh files every
repeat, medians over repeats:

* ``index-writer append`` -- ``write_entry(path, context)``;
* ``index-writer replace`` -- ``write_entry(..., replace_existing=True)``,
  what med-imagetools' writers call;
* ``SQLite WAL insert`` / ``insert or replace`` -- one connection per
  process (per thread with threads), ``journal_mode=WAL``,
  ``synchronous=NORMAL``, one autocommitted ``INSERT`` (``INSERT OR
  REPLACE`` into a table whose primary key is the path) per entry;
* ``floor`` -- a ``fasteners.InterProcessLock`` around one ``os.write`` of
  the row to a file opened once with ``O_APPEND``;
* ``lockf`` -- a blocking ``lockf`` on a lock file kept open around one
  ``os.write``: what the kernel allows, for reference.

It also reports the CPU time (user and system, from the children's
``getrusage``) each implementation spends per entry at the largest process
count: with 2 cores and one lock, the holder's CPU time per write is what
bounds the rate.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fasteners

from index_writer import IndexWriter

#: (processes, threads per process) measured.
SHAPES = ((2, 1), (4, 1), (12, 1), (4, 4))
IMPLS = ("index-writer append", "index-writer replace", "SQLite WAL insert",
         "SQLite WAL insert or replace", "floor", "lockf")


@dataclass(frozen=True)
class Config:
    """How much to measure."""

    writes: int  # per process (split among its threads)
    repeats: int
    shapes: tuple[tuple[int, int], ...] = SHAPES


FULL = Config(writes=2000, repeats=5)
QUICK = Config(writes=300, repeats=2, shapes=((2, 1), (12, 1), (4, 4)))


def context(i: int) -> dict[str, Any]:
    """The demo's four context fields."""
    return {
        "subject_id": f"subject_{i % 50}",
        "modality": ("CT", "MR", "SEG")[i % 3],
        "timestamp": "2024-01-01 12:00:00",
        "quality_score": 0.93,
    }


def _row(path: str, ctx: dict[str, Any]) -> bytes:
    values = (path, ctx["subject_id"], ctx["modality"], ctx["timestamp"], ctx["quality_score"])
    return (",".join(map(str, values)) + "\n").encode()


# --------------------------------------------------------------- writers
# Each returns a function writing entry i (one per thread) and a closer.

#: Excludes the threads of one process for the file-lock references: POSIX
#: locks belong to the process, so they do not (index-writer has its own).
_THREADS = threading.Lock()


def _ours(path: str, replace: bool) -> Callable[[], tuple[Callable[[str, int], None], Any]]:
    def make() -> tuple[Callable[[str, int], None], Any]:
        w = IndexWriter(path)
        return (lambda p, i: w.write_entry(p, context(i), replace_existing=replace)), w.close
    return make


def _sqlite(path: str, replace: bool) -> Callable[[], tuple[Callable[[str, int], None], Any]]:
    verb = "INSERT OR REPLACE" if replace else "INSERT"

    def make() -> tuple[Callable[[str, int], None], Any]:
        con = sqlite3.connect(path, timeout=600, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA synchronous=NORMAL")
        query = f"{verb} INTO idx VALUES (?, ?, ?, ?, ?)"

        def write(p: str, i: int) -> None:
            c = context(i)
            con.execute(query, (p, c["subject_id"], c["modality"], c["timestamp"],
                                str(c["quality_score"])))
        return write, con.close
    return make


def _floor(path: str, replace: bool) -> Callable[[], tuple[Callable[[str, int], None], Any]]:
    def make() -> tuple[Callable[[str, int], None], Any]:
        lock = fasteners.InterProcessLock(path + ".lock")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def write(p: str, i: int) -> None:
            row = _row(p, context(i))
            with _THREADS, lock:
                os.write(fd, row)
        return write, lambda: os.close(fd)
    return make


def _lockf(path: str, replace: bool) -> Callable[[], tuple[Callable[[str, int], None], Any]]:
    def make() -> tuple[Callable[[str, int], None], Any]:
        lfd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def write(p: str, i: int) -> None:
            row = _row(p, context(i))
            with _THREADS:
                fcntl.lockf(lfd, fcntl.LOCK_EX)
                try:
                    os.write(fd, row)
                finally:
                    fcntl.lockf(lfd, fcntl.LOCK_UN)
        return write, lambda: (os.close(fd), os.close(lfd))
    return make


MAKERS = {
    "index-writer append": lambda p: _ours(p, False),
    "index-writer replace": lambda p: _ours(p, True),
    "SQLite WAL insert": lambda p: _sqlite(p, False),
    "SQLite WAL insert or replace": lambda p: _sqlite(p, True),
    "floor": lambda p: _floor(p, False),
    "lockf": lambda p: _lockf(p, False),
}


def _prepare(impl: str, directory: str) -> str:
    """A fresh index (or database) for ``impl``; returns its path."""
    if impl.startswith("SQLite"):
        path = os.path.join(directory, "index.db")
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE idx (path TEXT PRIMARY KEY, subject_id, modality, "
                    "timestamp, quality_score)")
        con.commit()
        con.close()
        return path
    path = os.path.join(directory, "index.csv")
    if impl.startswith("index-writer"):
        IndexWriter(path).write_entry("first", context(0))  # every process finds a header
    return path


def _worker(impl: str, path: str, proc: int, threads: int, writes: int, ready: Any,
            go: Any) -> None:
    make = MAKERS[impl](path)
    per_thread = writes // threads

    failed: list[BaseException] = []

    def run(t: int) -> None:
        try:
            write, close = make()
            for i in range(per_thread):
                write(f"out/p{proc}t{t}/file_{i}.nii.gz", i)
            close()
        except BaseException as e:
            failed.append(e)
            raise

    ready.release()
    go.wait()
    if threads == 1:
        run(0)
        return
    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if failed:
        os._exit(1)  # a thread failed: the measurement is void


def measure(impl: str, procs: int, threads: int, writes: int) -> tuple[float, float, float]:
    """Entries/s, and user and system CPU microseconds per entry."""
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="iw-contention-") as d:
        path = _prepare(impl, d)
        ready, go = ctx.Semaphore(0), ctx.Event()
        workers = [ctx.Process(target=_worker, args=(impl, path, k, threads, writes, ready, go))
                   for k in range(procs)]
        for w in workers:
            w.start()
        for _ in workers:
            ready.acquire()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        go.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if any(w.exitcode != 0 for w in workers):
            raise RuntimeError(f"{impl}: a writer failed ({[w.exitcode for w in workers]})")
    entries = procs * (writes // threads) * threads
    user = (after.ru_utime - before.ru_utime) / entries * 1e6
    system = (after.ru_stime - before.ru_stime) / entries * 1e6
    return entries / elapsed, user, system


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every shape and implementation; return the results as plain data."""
    samples: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for rep in range(cfg.repeats):
        for procs, threads in cfg.shapes:
            shape = f"{procs}x{threads}"
            for impl in IMPLS:
                rate, user, system = measure(impl, procs, threads, cfg.writes)
                samples.setdefault(shape, {}).setdefault(impl, []).append((rate, user, system))
                log(f"  [{rep + 1}/{cfg.repeats}] {shape:5s} {impl:30s} {rate:10,.0f}/s")
    results: dict[str, Any] = {"writes_per_process": cfg.writes, "repeats": cfg.repeats,
                               "shapes": {}}
    for shape, by_impl in samples.items():
        results["shapes"][shape] = {
            impl: {
                "entries_per_s": statistics.median(s[0] for s in runs),
                "all": [round(s[0]) for s in runs],
                "user_us": statistics.median(s[1] for s in runs),
                "system_us": statistics.median(s[2] for s in runs),
            }
            for impl, runs in by_impl.items()
        }
    return results


def table(results: dict[str, Any]) -> str:
    """A markdown table: entries/s per shape and implementation, with ratios."""
    head = ["writers", *IMPLS, "append vs SQLite", "replace vs SQLite", "append vs floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, by_impl in results["shapes"].items():
        procs, threads = shape.split("x")
        label = f"{procs} processes" + (f" × {threads} threads" if threads != "1" else "")
        rate = {impl: by_impl[impl]["entries_per_s"] for impl in IMPLS}
        ratios = [
            rate["index-writer append"] / rate["SQLite WAL insert"],
            rate["index-writer replace"] / rate["SQLite WAL insert or replace"],
            rate["index-writer append"] / rate["floor"],
        ]
        cells = [label, *(f"{rate[i]:,.0f}" for i in IMPLS), *(f"{r:.2f}×" for r in ratios)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(results: dict[str, Any], shape: str) -> str:
    """CPU microseconds per entry (user + system) at one shape."""
    lines = ["| implementation | user µs | system µs | total µs |", "|---|---:|---:|---:|"]
    for impl in IMPLS:
        r = results["shapes"][shape][impl]
        lines.append(f"| {impl} | {r['user_us']:.1f} | {r['system_us']:.1f} | "
                     f"{r['user_us'] + r['system_us']:.1f} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    """Entries/s against the number of writer processes (single-threaded shapes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [s for s in results["shapes"] if s.endswith("x1")]
    xs = [int(s.split("x")[0]) for s in shapes]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for impl, style in (("index-writer append", "o-"), ("index-writer replace", "s-"),
                        ("SQLite WAL insert", "^--"), ("SQLite WAL insert or replace", "v--"),
                        ("floor", "x:")):
        ys = [results["shapes"][s][impl]["entries_per_s"] for s in shapes]
        ax.plot(xs, ys, style, label=impl)
    ax.set_xlabel("writer processes (one index, 2 CPU cores)")
    ax.set_ylabel("entries per second")
    ax.set_xticks(xs)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Many writers at once: entries/s")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes and repeats")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL, log=lambda m: print(m, file=sys.stderr))
    print(table(results))
    largest = max(results["shapes"], key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    print()
    print(cpu_table(results, largest))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
