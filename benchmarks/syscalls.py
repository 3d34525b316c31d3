"""System calls per steady-state write_entry, counted with strace.

    python benchmarks/syscalls.py [--writes N] [--rows R] [--quick] [--json OUT]

On a network filesystem every system call on the index or its lock file is a
round trip to the server, so their number per write is what a cluster pays.
For each implementation -- ``index-writer``, the ``floor`` (a
``fasteners.InterProcessLock`` around one ``os.write`` to an index opened once
with ``O_APPEND``; fasteners reopens its lock file on every acquisition), the
``bare`` minimum (``lockf`` on a lock file kept open around that ``os.write``)
and the ``original`` (med-imagetools 2.16.0, downloaded at run time as
``compare.py`` does) -- a traced process makes N
``write_entry(..., replace_existing=True)`` calls into an index of R rows, in
two scenarios:

``warm``
    no other writer: each write follows the same process's previous one;
``after-append``
    before each write, another (untraced) process appends one row with the
    same implementation, so the traced writer must notice and take it in.

The process runs under ``strace -f -y -e trace=%file,%desc``; the calls made
between two marker ``stat`` calls that name the index directory (the index,
the lock file, temporary files, the directory itself) are counted by name and
divided by N. Needs ``strace`` (Debian: ``apt-get install -y strace``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
import latency  # noqa: E402

IMPLS = ("index-writer", "floor", "bare", "original")
WRITERS = latency.WRITERS
SCENARIOS = ("warm", "after-append")
WARMUP = 5


def load_original() -> str | None:
    """Import the original into this process; return its source path or None."""
    try:
        src = str(compare._original.source_path())
        compare._load_original_class(src)
        return src
    except Exception as e:
        print(f"the original is unavailable, counting without it: {e}", file=sys.stderr)
        return None


# ------------------------------------------------------------- the child


def child(impl: str, index: str, writes: int, scenario: str, markers: str, src: str) -> None:
    """Run under strace: warm up, then N timed writes between two markers."""
    if impl == "original":
        compare._load_original_class(src)
    make, close = WRITERS[impl](Path(index))
    ctx = compare.seed_context(0)
    to_parent = open(os.path.join(markers, "to-parent"), "w")  # noqa: SIM115
    from_parent = open(os.path.join(markers, "to-child"))  # noqa: SIM115

    def foreign_append() -> None:
        to_parent.write("append\n")
        to_parent.flush()
        from_parent.readline()

    for i in range(WARMUP):
        if scenario == "after-append":
            foreign_append()
        make(f"output/warm_{i}.nii.gz", ctx)
    os.stat(os.path.join(markers, "BEGIN"))
    for i in range(writes):
        if scenario == "after-append":
            os.stat(os.path.join(markers, "PAUSE"))
            foreign_append()
            os.stat(os.path.join(markers, "RESUME"))
        make(f"output/traced_{i}.nii.gz", ctx)
    os.stat(os.path.join(markers, "END"))
    close()
    to_parent.write("done\n")
    to_parent.flush()


# ------------------------------------------------------------ the parent

_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(?:<\.\.\. )?(\w+)(\(| resumed>)")


def count(trace: str, work: str, markers: str) -> collections.Counter[str]:
    """Calls by name between BEGIN and END that touch ``work``, outside pauses."""
    calls: collections.Counter[str] = collections.Counter()
    active = False
    for line in trace.splitlines():
        if markers in line:
            if "/BEGIN" in line or "/RESUME" in line:
                active = True
            elif "/END" in line or "/PAUSE" in line:
                active = False
            continue
        m = _LINE.match(line)
        if not active or not m or m.group(3) != "(" or work not in line:
            continue  # "<... resumed>" halves are counted at their start
        calls[m.group(2)] += 1
    return calls


def measure(impl: str, scenario: str, rows: int, writes: int, src: str | None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="index-writer-syscalls-"))
    work, markers = base / "index", base / "markers"
    work.mkdir()
    markers.mkdir()
    try:
        index = work / "index.csv"
        compare.prefill(index, rows)
        for name in ("BEGIN", "END", "PAUSE", "RESUME"):
            (markers / name).touch()
        os.mkfifo(markers / "to-parent")
        os.mkfifo(markers / "to-child")
        trace = base / "trace.txt"
        cmd = [
            "strace", "-f", "-qq", "-y", "-e", "trace=%file,%desc", "-o", str(trace),
            sys.executable, str(Path(__file__).resolve()), "--child", impl, str(index),
            str(writes), scenario, str(markers), src or "",
        ]
        proc = subprocess.Popen(cmd)
        appender = None
        with open(markers / "to-parent") as from_child, open(markers / "to-child", "w") as to_child:
            for n, line in enumerate(from_child):
                if line.strip() == "done":
                    break
                if appender is None:
                    appender = WRITERS[impl](index)
                appender[0](f"output/foreign_{n}.nii.gz", compare.seed_context(n))
                to_child.write("ok\n")
                to_child.flush()
        if appender is not None:
            appender[1]()
        if proc.wait() != 0:
            raise SystemExit(f"the traced {impl} writer failed (exit {proc.returncode})")
        calls = count(trace.read_text(errors="replace"), str(work), str(markers))
        per_write = {name: n / writes for name, n in sorted(calls.items())}
        return {"per_write": per_write, "total_per_write": sum(calls.values()) / writes}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    columns = [(impl, sc) for impl in IMPLS for sc in SCENARIOS if sc in results.get(impl, {})]
    names = sorted({n for impl, sc in columns for n in results[impl][sc]["per_write"]})
    head = "| system call | " + " | ".join(f"{impl}: {sc}" for impl, sc in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for name in names:
        cells = [results[impl][sc]["per_write"].get(name, 0) for impl, sc in columns]
        lines.append(f"| `{name}` | " + " | ".join(f"{c:.2f}".rstrip("0").rstrip(".") or "0"
                                                     for c in cells) + " |")
    totals = [results[impl][sc]["total_per_write"] for impl, sc in columns]
    lines.append("| **total per write** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        impl, index, writes, scenario, markers, src = argv[1:7]
        child(impl, index, int(writes), scenario, markers, src)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=100, help="traced writes per measurement")
    ap.add_argument("--rows", type=int, default=1000, help="rows in the index beforehand")
    ap.add_argument("--quick", action="store_true", help="20 writes: a smoke run")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = ap.parse_args(argv)
    if shutil.which("strace") is None:
        print("strace is not installed (Debian: apt-get install -y strace); nothing counted",
              file=sys.stderr)
        return 1
    writes = 20 if args.quick else args.writes
    src = load_original()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for impl in IMPLS:
        if impl == "original" and src is None:
            continue
        for scenario in SCENARIOS:
            results.setdefault(impl, {})[scenario] = measure(impl, scenario, args.rows,
                                                             writes, src)
            total = results[impl][scenario]["total_per_write"]
            print(f"{impl}, {scenario}: {total:.2f} calls per write", file=sys.stderr)
    text = table(results)
    print(f"System calls on the index directory per write_entry(replace_existing=True), "
          f"{writes} writes into {args.rows:,} rows:\n\n{text}")
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/syscalls.py" + "".join(f" {a}" for a in argv),
            "writes": writes, "rows": args.rows,
            "strace": subprocess.run(["strace", "-V"], capture_output=True,
                                     text=True).stdout.splitlines()[0],
            "results": results, "markdown": text,
        }, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
