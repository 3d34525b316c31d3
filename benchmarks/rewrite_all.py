"""The demo workload with index-writer and with the read-all/rewrite-all strategy.

    python benchmarks/rewrite_all.py [--workers N] [--entries M] [--engine threads]

Runs ``index-writer demo``'s workload (one ``write_entry`` per pool task) twice
in a new directory: once with index-writer, once with the strategy of the
original, re-implemented in ``_naive.py`` (take a file lock, read the whole
index, write it all back). Prints each run's time, how many entries each index
kept, and the ratio of the times. With ``--engine threads`` the baseline loses
entries: its file lock does not exclude threads of one process.

This is a quick illustration, not a measurement: ``compare.py`` measures
index-writer against the original itself and the bare file-append floor.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from pathlib import Path

from index_writer._check import check_index
from index_writer._demo import RunResult, Task, demo_path, run_workload
from index_writer._progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _naive import rewrite_all_task


def kept(index: Path, entries: int) -> str:
    """How many demo entries an index kept, read without trusting it."""
    expected = {demo_path(i) for i in range(entries)}
    found: set[str] = set()
    try:
        with index.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            col = header.index("path") if "path" in header else 0
            found.update(row[col] for row in reader if len(row) > col)
    except (OSError, csv.Error) as e:
        return f"unreadable: {e}"
    text = f"kept {len(found & expected)} of {entries} entries"
    report = check_index(index)
    if report.problems:
        text += f"; its index has problems: {report.problems[0]}"
    return text


def timed(label: str, index: Path, args: argparse.Namespace, task: Task | None = None) -> RunResult:
    """Run the workload on ``index``; print its time and what the index kept."""
    with Progress(args.entries, label, sys.stderr) as progress:
        result = run_workload(
            index,
            workers=args.workers,
            entries=args.entries,
            engine=args.engine,
            progress=progress,
            task=task,
        )
    print(f"{label}: {args.entries} entries in {result.elapsed:.2f} s")
    print(f"  {kept(index, args.entries)}")
    if result.errors:
        print(f"  {len(result.errors)} writes raised, e.g. {result.errors[0][:160]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=12, help="pool size (12)")
    parser.add_argument("--entries", type=int, default=1000, help="entries to write (1000)")
    parser.add_argument("--engine", choices=("processes", "threads"), default="processes")
    parser.add_argument("--dir", type=Path, help="where to write the two indexes (a new one)")
    args = parser.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="index-writer-rewrite-all-"))
    work.mkdir(parents=True, exist_ok=True)
    ours = timed("index-writer", work / "index-writer.csv", args)
    naive = timed("read-all/rewrite-all", work / "rewrite-all.csv", args, task=rewrite_all_task)
    ratio = naive.elapsed / ours.elapsed if ours.elapsed > 0 else math.inf
    print(
        f"index-writer was {ratio:.1f}x as fast as read-all/rewrite-all "
        f"({ours.elapsed:.2f} s vs {naive.elapsed:.2f} s)"
    )
    print(f"indexes: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
