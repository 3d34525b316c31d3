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

The process runs under ``strace -f -y -e trace=%file,%desc`` (``-y`` prints
the path behind every descriptor). The calls made between two marker ``stat``
calls (after 5 untraced warm-up writes, so neither the process's start-up nor
its first write counts) are sorted by the file they name: the index, its lock
file (``NAME.lock``), its crash journal (``.NAME.journal``), or anything else
in the index directory (the directory itself, temporary files); counted by
file and name and divided by N. Needs ``strace`` (Debian: ``apt-get install -y
strace``).
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

from index_writer._journal import journal_name

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
    ctx = compare.demo_context(0)
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
#: A path as strace -y prints it: ``3</dir/index.csv>`` or a ``"/dir/index.csv"`` argument.
_PATH = re.compile(r'[<"](/[^<>"]*?)(?: \(deleted\))?[>"]')

#: The files counted apart, in table order; "other" is anything else in the
#: index directory.
FILES = ("index", "lock file", "journal", "other")


def files_of(index: Path) -> dict[str, str]:
    """The files a write of ``index`` may touch, by path: the index, lock file and journal."""
    return {
        str(index): "index",
        f"{index}.lock": "lock file",  # the default of index-writer, fasteners' floor, original
        str(index.with_name(journal_name(str(index)))): "journal",
    }


def which_file(line: str, files: dict[str, str], work: str) -> str | None:
    """The file a trace line's call is on (see :data:`FILES`), or None if not ours."""
    paths = _PATH.findall(line)  # e.g. AT_FDCWD</cwd> and then "/dir/index.csv"
    for path in paths:
        if path in files:
            return files[path]
    if any(path == work or path.startswith(work + "/") for path in paths):
        return "other"
    return None


def count(trace: str, index: Path, markers: str) -> collections.Counter[tuple[str, str]]:
    """Calls by (file, name) between BEGIN and END on the index's files, outside pauses."""
    files, work = files_of(index), str(index.parent)
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    active = False
    for line in trace.splitlines():
        if markers in line:
            if "/BEGIN" in line or "/RESUME" in line:
                active = True
            elif "/END" in line or "/PAUSE" in line:
                active = False
            continue
        m = _LINE.match(line)
        if not active or not m or m.group(3) != "(":
            continue  # "<... resumed>" halves are counted at their start
        file = which_file(line, files, work)
        if file is not None:
            calls[file, m.group(2)] += 1
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
                appender[0](f"output/foreign_{n}.nii.gz", compare.demo_context(n))
                to_child.write("ok\n")
                to_child.flush()
        if appender is not None:
            appender[1]()
        if proc.wait() != 0:
            raise SystemExit(f"the traced {impl} writer failed (exit {proc.returncode})")
        calls = count(trace.read_text(errors="replace"), index, str(markers))
        per_file: dict[str, dict[str, float]] = {}
        for (file, name), n in sorted(calls.items(), key=lambda kv: (FILES.index(kv[0][0]),
                                                                      kv[0][1])):
            per_file.setdefault(file, {})[name] = n / writes
        return {"per_write": per_file, "total_per_write": sum(calls.values()) / writes}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    columns = [(impl, sc) for impl in IMPLS for sc in SCENARIOS if sc in results.get(impl, {})]
    rows = sorted(
        {(f, n) for impl, sc in columns for f, calls in results[impl][sc]["per_write"].items()
         for n in calls},
        key=lambda row: (FILES.index(row[0]), row[1]),
    )
    head = "| file | system call | " + " | ".join(f"{impl}: {sc}" for impl, sc in columns) + " |"
    lines = [head, "|---|---|" + "---:|" * len(columns)]
    for file, name in rows:
        cells = [results[impl][sc]["per_write"].get(file, {}).get(name, 0) for impl, sc in columns]
        lines.append(f"| {file} | `{name}` | " + " | ".join(
            f"{c:.2f}".rstrip("0").rstrip(".") or "0" for c in cells) + " |")
    totals = [results[impl][sc]["total_per_write"] for impl, sc in columns]
    lines.append("| **total per write** | | " + " | ".join(f"**{t:.2f}**" for t in totals)
                 + " |")
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
    print(f"System calls on the index, its lock file, its journal and the rest of its "
          f"directory per write_entry(replace_existing=True), {writes} writes into "
          f"{args.rows:,} rows:\n\n{text}")
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
