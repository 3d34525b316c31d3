"""This checkout against another version of index-writer, in one run.

    python benchmarks/before_after.py --before OTHER_PYTHON [--repeats 3]

``OTHER_PYTHON`` is an interpreter whose environment has the other version
installed, for example an earlier commit::

    git worktree add /tmp/before <commit>
    python -m venv /tmp/before-venv
    /tmp/before-venv/bin/pip install /tmp/before

Measured, interleaved and each in a new process, medians over the repeats:

* sequential ``write_entry(..., replace_existing=True)`` into copies of an
  index of 1,000 to 1,000,000 rows, after two untimed writes, for both
  versions and for the floor (a fasteners lock around one ``os.write``), as
  in ``compare.py``;
* a new process's first ``replace_existing`` write into 1,000,000 rows;
* real replacements (``replace_existing=True`` with a changed value, which
  rewrites the file) in indexes of 100,000 and 1,000,000 rows, after two
  untimed ones.

Prints a Markdown table; nothing is written to the docs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = (1_000, 10_000, 100_000, 1_000_000)
WRITES = 2000
REPLACEMENTS = 5
REPLACE_SIZES = (100_000, 1_000_000)


def child(kind: str, master: str, work: str, n: int) -> None:
    """One measurement, in this process: print seconds (per write) as JSON."""
    sys.path.insert(0, str(HERE))
    from compare import floor_writer, fresh_copy, make_contexts

    contexts = make_contexts(max(n, 1))
    index = Path(work) / f"{kind}.csv"
    fresh_copy(Path(master), index)
    if kind == "first":
        from index_writer import IndexWriter

        t0 = time.perf_counter()
        IndexWriter(index).write_entry("output/first.nii.gz", contexts[0], replace_existing=True)
        print(json.dumps({"seconds": time.perf_counter() - t0}))
        return
    if kind == "replace":
        from index_writer import IndexWriter

        writer = IndexWriter(index)
        path = "output/prefill_7.nii.gz"  # a row prefill() wrote
        for i in range(2 + REPLACEMENTS):
            if i == 2:
                t0 = time.perf_counter()
            ctx = {**contexts[0], "quality_score": 2 + i}  # each a change
            writer.write_entry(path, ctx, replace_existing=True)
        print(json.dumps({"seconds": (time.perf_counter() - t0) / REPLACEMENTS}))
        return
    if kind == "floor":
        write, _ = floor_writer(index)
    else:
        from index_writer import IndexWriter

        writer = IndexWriter(index)

        def write(path: str, ctx: dict[str, Any]) -> None:
            writer.write_entry(path, ctx, replace_existing=True)

    write("output/warmup_1.nii.gz", contexts[0])
    write("output/warmup_2.nii.gz", contexts[0])
    t0 = time.perf_counter()
    for i in range(n):
        write(f"output/fake_file_{i}.nii.gz", contexts[i])
    print(json.dumps({"seconds": (time.perf_counter() - t0) / n}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, metavar="PYTHON",
                        help="an interpreter with the other version installed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, master, work, n = args.child
        child(kind, master, work, int(n))
        return 0

    sys.path.insert(0, str(HERE))
    from compare import prefill

    pythons = {"before": args.before, "now": sys.executable, "floor": sys.executable}
    work = Path(tempfile.mkdtemp(prefix="before-after-"))
    results: dict[tuple[str, str, int], list[float]] = {}
    try:
        masters = {size: work / f"master-{size}.csv" for size in SIZES}
        for size, master in masters.items():
            prefill(master, size)

        def one(impl: str, kind: str, size: int, n: int) -> None:
            cmd = [pythons[impl], __file__, "--before", args.before,
                   "--child", kind, str(masters[size]), str(work), str(n)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode:
                raise SystemExit(f"{impl} ({kind}, {size:,} rows) failed:\n{r.stderr}")
            results.setdefault((impl, kind, size), []).append(json.loads(r.stdout)["seconds"])

        impls = ["now", "before", "floor"]
        for rep in range(args.repeats):
            for size in SIZES:
                k = rep % len(impls)  # rotate the order: interleaved
                for impl in impls[k:] + impls[:k]:
                    one(impl, "floor" if impl == "floor" else "seq", size, WRITES)
            for impl in ("now", "before") if rep % 2 == 0 else ("before", "now"):
                one(impl, "first", SIZES[-1], 0)
                for size in REPLACE_SIZES:
                    one(impl, "replace", size, 0)
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(impl: str, kind: str, size: int) -> float:
        return statistics.median(results[(impl, kind, size)])

    print(f"Sequential `write_entry(replace_existing=True)`, {WRITES:,} writes, "
          f"medians of {args.repeats} (ms per write; % = floor's time / ours):\n")
    print("| rows | before | now | floor | before, % of floor | now, % of floor |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        b, n, f = (med(i, "floor" if i == "floor" else "seq", size) * 1e3
                   for i in ("before", "now", "floor"))
        print(f"| {size:,} | {b:.4f} | {n:.4f} | {f:.4f} | {f / b:.0%} | {f / n:.0%} |")
    b, n = med("before", "first", SIZES[-1]), med("now", "first", SIZES[-1])
    print(f"\nA new process's first replace_existing write into {SIZES[-1]:,} rows: "
          f"before {b:.3f} s, now {n:.3f} s")
    print(f"\nA real replacement (a changed value: the file is rewritten), "
          f"mean of {REPLACEMENTS}, medians of {args.repeats}:\n")
    print("| rows | before ms | now ms |")
    print("|---:|---:|---:|")
    for size in REPLACE_SIZES:
        b, n = (med(i, "replace", size) * 1e3 for i in ("before", "now"))
        print(f"| {size:,} | {b:.1f} | {n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
