"""Every benchmark figure users read, written from one file: docs/benchmarks.json.

    python benchmarks/report.py docs/benchmarks.json            # print the report
    python benchmarks/report.py docs/benchmarks.json --write    # update README.md, docs/
    python benchmarks/report.py docs/benchmarks.json --check    # exit 1 if they differ
    python benchmarks/report.py docs/benchmarks.json --plot     # redraw docs/benchmark.png

``benchmarks/compare.py --out docs/`` measures, writes the JSON and calls this
module; the JSON is the one source of truth, and README.md and the pages of
docs/ only quote it through generated sections::

    <!-- begin benchmarks:NAME -->
    ...written by this script from the JSON; edits here are overwritten...
    <!-- end benchmarks:NAME -->

NAME is a *section*: a function from the JSON to Markdown, registered with
``@section("NAME")``. A new benchmark adds its figures to the JSON under a key
of its own, and a section that renders them (returning "" when the key is
missing, so older files still render), then places the markers where the
section belongs. tests/test_report.py checks that every page agrees with the
JSON.

Formatting rule, for every figure: times and rates to 3 significant digits,
ratios to 3 significant digits, memory in whole MB.

The JSON (``"format": 1``)::

    run        command, quick (bool), minutes, note (why the figures are what
               they are, when not a plain run; optional)
    machine    cores, cpu, python, implementation, os, fasteners, joblib,
               index_writer, git, original, load_start, load_end ([1, 5, 15 min]),
               date
    settings   sizes, writes, repeats, batch_rows, rss_rows, workers,
               demo_entries, original_size_budget_s
    sequential [{implementation, rows, time}]: write_entry(replace_existing=True)
               into an index of `rows` rows, time per write
    original_stopped  text: where and why the original was not measured ("" if it was)
    original_error    text: why the original could not run at all ("" if it could)
    first_replace [{rows, time}]: a process's first replace_existing write
    batch      [{implementation, rows, time}]: write_entries into a new index,
               time per row
    memory     [{implementation, write, rows, peak_mb, after_imports_mb, seconds}]:
               one write from a fresh process (write: "append" or "replace")
    demo       [{implementation, entries, time, checked}]: the many-workers demo,
               time per entry; checked: [[rows, distinct paths], ...] per run

    implementation: "index-writer", "original", "floor" (the demo's floor: "no-op")
    time:      {median, min, max: seconds per entry; runs; entries: per run;
                all: [seconds per entry of each run] (optional)}
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from index_writer._lock import RECHECK

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEFAULT_JSON = DOCS / "benchmarks.json"
PLOT = "benchmark.png"
FORMAT = 1

Data = dict[str, Any]

# Goals the run is checked against (printed by compare.py, shown under "Checks").
FLOOR_FRACTION = 0.70  # sequential writes: at least this share of the floor's rate
FLAT_FRACTION = 0.66  # rate at 100,000 rows: at least this share of the rate at 1,000
BATCH_RATE = 200_000  # write_entries: rows per second
RSS_MB = 300  # peak memory of one write into the memory benchmark's index
DEMO_VS_NOOP = 1.5  # the demo with 1,000 entries: at most this many times the no-op pool
DEMO_VS_ORIGINAL = 30.0  # the demo with 5,000 entries: at least this many times faster
FIRST_REPLACE_S, FIRST_REPLACE_MB = 0.5, 64  # first replace_existing write into 1M rows
FIRST_APPEND_S, FIRST_APPEND_MB = 0.25, 40  # first plain write into 1M rows
CONTENTION_SHAPE = "12x1"  # 12 processes: at least as fast as SQLite WAL and the floor
SYSCALLS_WARM, SYSCALLS_AFTER = 8, 10  # system calls per write: alone; after another writer
LATENCY_VS_FLOOR = 1.2  # ms per write on a slow filesystem: at most this times the floor's
TOOLS_MB = 100  # peak memory of `show` and `check` on the memory benchmark's index

# ------------------------------------------------------------- formatting


def sig(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, with thousands separators.

    >>> sig(0.033127), sig(4.7), sig(13449.3), sig(1972705), sig(0.0)
    ('0.0331', '4.70', '13,400', '1,970,000', '0')
    """
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    rounded = round(x, decimals)
    if rounded and math.floor(math.log10(abs(rounded))) != math.floor(math.log10(abs(x))):
        decimals -= 1  # 9.996 -> 10.0, not 10.00
        rounded = round(x, decimals)
    return f"{rounded:,.{decimals}f}" if decimals > 0 else f"{round(rounded):,}"


def ms(seconds: float) -> str:
    return sig(seconds * 1e3)


def times(ratio: float) -> str:
    return sig(ratio) + "×"


def rows_count(n: int) -> str:
    return f"{n:,}"


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """A Markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---:" if i >= right_from else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------ the figures


def _find(items: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    for item in items:
        if all(item.get(k) == v for k, v in keys.items()):
            return item
    return None


def seq(data: Data, impl: str, rows: int) -> dict[str, Any] | None:
    """The sequential-write time of ``impl`` at ``rows`` rows, if measured."""
    item = _find(data.get("sequential", []), implementation=impl, rows=rows)
    return item["time"] if item else None


def demo(data: Data, impl: str, entries: int) -> dict[str, Any] | None:
    item = _find(data.get("demo", []), implementation=impl, entries=entries)
    return item["time"] if item else None


def memory(data: Data, impl: str, write: str) -> dict[str, Any] | None:
    return _find(data.get("memory", []), implementation=impl, write=write)


def whole_run(t: dict[str, Any]) -> float:
    """Seconds of a whole demo run (the median)."""
    return float(t["median"] * t["entries"])


def floor_shares(data: Data) -> list[float]:
    """index-writer's rate as a share of the floor's, at each size measured."""
    shares = []
    for size in data["settings"]["sizes"]:
        ours, floor = seq(data, "index-writer", size), seq(data, "floor", size)
        if ours and floor:
            shares.append(floor["median"] / ours["median"])
    return shares


def percent_range(shares: list[float]) -> str:
    lo, hi = (round(100 * min(shares)), round(100 * max(shares)))
    return f"{lo}%" if lo == hi else f"{lo}–{hi}%"


# --------------------------------------------------------------- sections

Section = Callable[[Data, str], str]
SECTIONS: dict[str, Section] = {}


def section(name: str) -> Callable[[Section], Section]:
    """Register a section: ``fn(data, docs)`` returns Markdown.

    ``docs`` is the path from the page to the docs/ directory (``"docs/"`` in
    README.md, ``""`` in docs/), for links and images.
    """

    def register(fn: Section) -> Section:
        SECTIONS[name] = fn
        return fn

    return register


@section("source")
def source(data: Data, docs: str) -> str:
    """One sentence: which command, on what machine, how many repeats."""
    m, run = data["machine"], data["run"]
    quick = " (quick mode: small sizes, a smoke test)" if run.get("quick") else ""
    return (
        f"Measured by `{run['command']}`{quick} on a shared {m['cores']}-core machine "
        f"({m['cpu']}, {m['os'].split()[0]}, {m['implementation']} {m['python']}), "
        f"medians of {data['settings']['repeats']} repeats; the three implementations "
        "ran interleaved in one run."
    )


@section("summary")
def summary(data: Data, docs: str) -> str:
    """What was measured and the headline ratios, in one paragraph."""
    s = data["settings"]
    sizes = s["sizes"]
    text = [
        "How long one `write_entry(path, context, replace_existing=True)` takes in an "
        f"index of {rows_count(sizes[0])} to {rows_count(sizes[-1])} rows, how fast "
        f"`write_entries` writes {rows_count(s['batch_rows'])} rows, how much memory one "
        f"write into {rows_count(s['rss_rows'])} rows needs, and how long the many-workers "
        f"demo ({s['workers']} worker processes, a new writer and one entry per task) "
        "takes: for index-writer, for the original (med-imagetools "
        f"{data['machine']['original'].split()[-1]}'s `IndexWriter`) and for the *floor*, "
        "a bare `fasteners` lock around one `os.write` per entry, the least any safe "
        "shared append can cost."
    ]
    shares = floor_shares(data)
    ours = [seq(data, "index-writer", n) for n in sizes]
    if shares and all(ours):
        text.append(
            f"An index-writer write takes {ms(min(t['median'] for t in ours if t))}–"
            f"{ms(max(t['median'] for t in ours if t))} ms whatever the size of the index, "
            f"{percent_range(shares)} of the floor's speed;"
        )
    ratios = [
        (n, o["median"] / w["median"])
        for n in sizes
        if (o := seq(data, "original", n)) and (w := seq(data, "index-writer", n))
    ]
    if ratios:
        (n0, r0), (n1, r1) = ratios[0], ratios[-1]
        text.append(
            f"the original's time grows with the index, so index-writer is {times(r0)} "
            f"as fast at {rows_count(n0)} rows and {times(r1)} at {rows_count(n1)}."
        )
    elif shares:
        text[-1] = text[-1].rstrip(";") + "."
    demos = [
        (n, o, w)
        for n in s["demo_entries"]
        if (o := demo(data, "original", n)) and (w := demo(data, "index-writer", n))
    ]
    if demos:
        text.append(
            "The demo runs "
            + " and ".join(
                f"{times(o['median'] / w['median'])} as fast with {rows_count(n)} entries"
                for n, o, w in demos
            )
            + "."
        )
    text.append(source(data, docs))
    return " ".join(text)


@section("plot")
def plot_image(data: Data, docs: str) -> str:
    return (
        f"![Milliseconds per write_entry against the rows already in the index, "
        "log-log: the original's time grows in proportion to the index, index-writer "
        f"stays flat just above the floor]({docs}{PLOT})"
    )


@section("table")
def compact_table(data: Data, docs: str) -> str:
    """What, index-writer, original, floor, ratio: the figures that matter."""
    s = data["settings"]
    rows: list[list[str]] = []
    notes: list[str] = []
    def note(text: str) -> str:
        notes.append(f"{'¹²³⁴⁵⁶⁷⁸⁹'[len(notes)]} {text}")
        return notes[-1][0]

    for i, n in enumerate(s["sizes"]):
        ours, orig, floor = (seq(data, k, n) for k in ("index-writer", "original", "floor"))
        what = (
            f"one `write_entry(..., replace_existing=True)` into {rows_count(n)} rows, ms"
            if i == 0
            else f"... into {rows_count(n)} rows"
        )
        orig_cell, ratio = "—", "—"
        if orig and ours:
            orig_cell = ms(orig["median"])
            ratio = times(orig["median"] / ours["median"]) + " faster"
        elif ours and (one := memory(data, "original", "append")) and one["rows"] == n:
            orig_cell = ms(one["seconds"])
            what += note(
                "The original's figure at this size is one write in a new process (from the "
                "memory benchmark): the timed series left it out, as it would take too long."
            )
        elif ours and data.get("original_stopped"):
            orig_cell = "not run"
        rows.append(
            [
                what,
                ms(ours["median"]) if ours else "—",
                orig_cell,
                ms(floor["median"]) if floor else "—",
                ratio,
            ]
        )
    first = _find(data.get("first_replace", []), rows=s["sizes"][-1])
    if first:
        rows.append(
            [
                f"a process's first such write into {rows_count(first['rows'])} rows "
                "(it maps the paths), ms",
                ms(first["time"]["median"]),
                "—",
                "—",
                "—",
            ]
        )
    batch = {b["implementation"]: b for b in data.get("batch", [])}
    if "index-writer" in batch:
        b = batch["index-writer"]
        floor_rate = (
            sig(1 / batch["floor"]["time"]["median"]) if "floor" in batch else "—"
        )
        rows.append(
            [
                f"`write_entries` of {rows_count(b['rows'])} rows, rows/s",
                sig(1 / b["time"]["median"]),
                "no such call",
                floor_rate,
                "—",
            ]
        )
    ours_mem, orig_mem = memory(data, "index-writer", "append"), memory(data, "original", "append")
    if ours_mem:
        rows.append(
            [
                f"peak memory of one write into {rows_count(ours_mem['rows'])} rows, MB",
                f"{ours_mem['peak_mb']:.0f}",
                f"{orig_mem['peak_mb']:.0f}" if orig_mem else "—",
                "—",
                times(orig_mem["peak_mb"] / ours_mem["peak_mb"]) + " less" if orig_mem else "—",
            ]
        )
    for i, n in enumerate(s["demo_entries"]):
        ours, orig, noop = (demo(data, k, n) for k in ("index-writer", "original", "no-op"))
        if not ours:
            continue
        if i == 0:
            mark = note("The demo's floor: the same pool of processes, with tasks that do nothing.")
            what = (
                f"the many-workers demo{mark}, {s['workers']} processes × {rows_count(n)} "
                "entries, whole run, s"
            )
        else:
            what = f"... × {rows_count(n)} entries"
        rows.append(
            [
                what,
                sig(whole_run(ours)),
                sig(whole_run(orig)) if orig else "—",
                sig(whole_run(noop)) if noop else "—",
                times(orig["median"] / ours["median"]) + " faster" if orig else "—",
            ]
        )
    text = table(["What", "index-writer", "original", "floor", "index-writer vs original"], rows)
    return text + ("\n\n" + "<br>\n".join(notes) if notes else "")


@section("sequential")
def sequential_table(data: Data, docs: str) -> str:
    s = data["settings"]
    rows = []
    for n in s["sizes"]:
        cells = [rows_count(n)]
        for impl in ("index-writer", "original", "floor"):
            t = seq(data, impl, n)
            cells.append(_spread(t) if t else "not run")
        rows.append(cells)
    lines = [
        "Milliseconds per `write_entry(path, context, replace_existing=True)`, with the "
        "demo's four context fields, into an index that already holds the rows: median "
        "(fastest–slowest run). Each run times "
        f"{rows_count(s['writes'])} writes (index-writer, floor) or as many as fit in "
        "about a second (the original), after two untimed writes: a process's first "
        "write reads the index, index-writer's second sorts its path map (both are in "
        "the memory table).",
        "",
        table(["Rows in the index", "index-writer", "original", "floor"], rows),
    ]
    stopped = data.get("original_stopped", "")
    if stopped:
        lines += ["", f"{stopped[0].upper()}{stopped[1:]}."]
    if data.get("original_error"):
        lines += ["", f"The original could not be run: {data['original_error']}"]
    return "\n".join(lines)


def _spread(t: dict[str, Any]) -> str:
    if t["runs"] > 1:
        return f"{ms(t['median'])} ({ms(t['min'])}–{ms(t['max'])})"
    return ms(t["median"])


@section("first-write")
def first_write_table(data: Data, docs: str) -> str:
    items = data.get("first_replace", [])
    if not items:
        return ""
    rows = [[rows_count(f["rows"]), _spread(f["time"])] for f in items]
    return "\n".join(
        [
            "Milliseconds for a process's first `write_entry(..., replace_existing=True)`: "
            "the write that reads the whole index once and files each path's hash with "
            "its row (the process's next such write sorts them: see the memory table). "
            "Median (fastest–slowest run).",
            "",
            table(["Rows in the index", "index-writer"], rows),
        ]
    )


@section("memory")
def memory_table(data: Data, docs: str) -> str:
    items = data.get("memory", [])
    if not items:
        return ""
    labels = {
        ("index-writer", "append"): "index-writer, `write_entry` (an append)",
        ("index-writer", "replace"): (
            "index-writer, first `write_entry(..., replace_existing=True)`"
        ),
        ("index-writer", "second-replace"): (
            "index-writer, two `write_entry(..., replace_existing=True)` (seconds: the "
            "second, which sorts the path map)"
        ),
        ("index-writer", "real-replace"): (
            "index-writer, two `write_entry(..., replace_existing=True)`, then a real "
            "replacement (seconds: the replacement, which rewrites the file)"
        ),
        ("original", "append"): "original, `write_entry`",
    }
    rows = [
        [
            labels.get((m["implementation"], m["write"]), f"{m['implementation']} {m['write']}"),
            rows_count(m["rows"]),
            f"{m['peak_mb']:.0f}",
            f"{m['after_imports_mb']:.0f}",
            sig(m["seconds"]),
        ]
        for m in items
    ]
    return "\n".join(
        [
            "Each row is a new Python process writing to its own copy of the index (one "
            "write, or two where the row says so): its peak resident memory, its memory "
            "after the imports, and how long the write took.",
            "",
            table(
                ["One write, new process", "Rows", "Peak MB", "After imports, MB", "Seconds"],
                rows,
            ),
        ]
    )


@section("batch")
def batch_table(data: Data, docs: str) -> str:
    items = data.get("batch", [])
    if not items:
        return ""
    rows = [
        [
            b["implementation"],
            sig(1 / b["time"]["median"]),
            f"{sig(1 / b['time']['max'])}–{sig(1 / b['time']['min'])}",
            str(b["time"]["runs"]),
        ]
        for b in items
    ]
    n = rows_count(items[0]["rows"])
    return "\n".join(
        [
            f"Rows per second of one `write_entries` call of {n} rows into a new index "
            "(the floor: the same rows formatted and appended in one `os.write` under the "
            "lock; `csv.DictWriter`: the standard library writing the same rows to a file, "
            "no lock).",
            "",
            table(["", "Rows/s (median)", "Slowest–fastest run", "Runs"], rows),
        ]
    )


@section("demo")
def demo_table(data: Data, docs: str) -> str:
    items = data.get("demo", [])
    if not items:
        return ""
    s = data["settings"]
    rows = []
    for n in s["demo_entries"]:
        for impl, label in (
            ("index-writer", "index-writer"),
            ("original", "original"),
            ("no-op", "floor: tasks that do nothing"),
        ):
            t = demo(data, impl, n)
            if t is None:
                continue
            spread = (
                f"{sig(t['min'] * n)}–{sig(t['max'] * n)}" if t["runs"] > 1 else "—"
            )
            rows.append([rows_count(n), label, sig(whole_run(t)), spread, str(t["runs"])])
    checked = [
        f"{d['implementation']} × {rows_count(d['entries'])}: "
        + ", ".join(f"{r:,}/{u:,}" for r, u in d["checked"])
        for d in items
        if d.get("checked")
    ]
    lines = [
        f"Seconds for the whole run of the many-workers demo: joblib's `Parallel(n_jobs="
        f"{s['workers']})`, each task creating a writer and writing one entry, each run "
        "starting a new pool.",
        "",
        table(["Entries", "", "Seconds (median)", "Fastest–slowest", "Runs"], rows, 2),
    ]
    if checked:
        lines += [
            "",
            "Every index was read back after its run (rows/distinct paths): "
            + "; ".join(checked)
            + ".",
        ]
    return "\n".join(lines)


CONTENTION_PLOT = "contention.png"


def _contention_rate(data: Data, shape: str, impl: str) -> float | None:
    r = data.get("contention", {}).get("shapes", {}).get(shape, {}).get(impl)
    return None if r is None else float(r["entries_per_s"])


@section("contention")
def contention_table(data: Data, docs: str) -> str:
    """Entries/s with many writers at once, against SQLite WAL and the floor."""
    c = data.get("contention")
    if not c:
        return ""
    impls = ["index-writer append", "index-writer replace", "SQLite WAL insert",
             "SQLite WAL insert or replace", "floor", "lockf"]
    rows = []
    for shape in c["shapes"]:
        procs, threads = shape.split("x")
        label = f"{procs} processes" + (f" × {threads} threads" if threads != "1" else "")
        rate = {i: _contention_rate(data, shape, i) or 0.0 for i in impls}
        rows.append([
            label,
            *(sig(rate[i]) for i in impls),
            times(rate["index-writer append"] / rate["SQLite WAL insert"]),
            times(rate["index-writer replace"] / rate["SQLite WAL insert or replace"]),
        ])
    return "\n".join([
        f"Entries per second, all writers together: each process writes "
        f"{c['writes_per_process']:,} entries (split among its threads) into one index, "
        f"started at once; medians of {c['repeats']} runs. SQLite in WAL mode "
        "(`synchronous=NORMAL`, one autocommitted `INSERT`, or `INSERT OR REPLACE` keyed "
        "by the path, per entry) is the peer; *floor*: a fasteners lock around one "
        "`os.write`; *lockf*: a blocking `lockf` around one `os.write`, what the kernel "
        "allows.",
        "",
        table(["Writers", "index-writer append", "index-writer replace", "SQLite insert",
               "SQLite insert or replace", "floor", "lockf", "append ÷ SQLite",
               "replace ÷ SQLite"], rows),
        "",
        f"![Entries per second against the number of writer processes, for index-writer, "
        f"SQLite and the floor]({docs}{CONTENTION_PLOT})",
    ])


@section("contention-cpu")
def contention_cpu(data: Data, docs: str) -> str:
    """Where the time goes: CPU time per entry at the largest shape."""
    c = data.get("contention")
    if not c or CONTENTION_SHAPE not in c["shapes"]:
        return ""
    by_impl = c["shapes"][CONTENTION_SHAPE]
    rows = [[impl, sig(r["user_us"]), sig(r["system_us"]), sig(r["user_us"] + r["system_us"])]
            for impl, r in by_impl.items()]
    return "\n".join([
        "CPU time per entry with 12 writer processes (user and system, all processes "
        "together). With one lock and 2 cores, the lock holder's time per write bounds "
        "the rate: index-writer spends it in Python (rows, plan, bookkeeping), SQLite in "
        "the kernel.",
        "",
        table(["", "user µs", "system µs", "total µs"], rows),
    ])


@section("syscalls")
def syscalls_table(data: Data, docs: str) -> str:
    """System calls per write on the index, its lock file and journal."""
    sc = data.get("syscalls")
    if not sc:
        return ""
    if "not_measured" in sc:
        return f"System calls were not counted in this run: {sc['not_measured']}."
    return "\n".join([
        f"System calls per `write_entry(replace_existing=True)` on the files of the index "
        f"(counted with {sc['strace']} over {sc['writes']} writes into {sc['rows']:,} rows): "
        "*warm*, no other writer since the last write; *after*, another process appended "
        "in between. Each is a round trip to the server on a network filesystem. "
        "index-writer's `newfstatat` on the lock file is not made per write: a writer "
        f"checks that its lock file is still the one at its path at most every {RECHECK:g} s "
        "(and after waiting for the lock), so its count per write depends on how long "
        "the writes take. Counted on a filesystem whose file times tell quick changes "
        "apart (here: Linux 6.13 or later); where they move with a clock tick, a warm "
        "write also reads the index's first bytes (one `pread64` more) until its last "
        "change is two seconds old.",
        "",
        sc["markdown"],
    ])


@section("latency")
def latency_table(data: Data, docs: str) -> str:
    """ms per write on a filesystem where every operation costs a round trip."""
    lat = data.get("latency")
    if not lat:
        return ""
    if "not_measured" in lat:
        return f"The slow-filesystem benchmark did not run: {lat['not_measured']}."
    note = f" {lat['original_note']}." if lat.get("original_note") else ""
    return "\n".join([
        f"Milliseconds per `write_entry(replace_existing=True)` on a FUSE passthrough that "
        f"adds {lat['delay_seconds'] * 1e3:g} ms to every filesystem operation and keeps "
        "the locks itself, as an NFS server does (`benchmarks/latency.py`; medians of "
        f"{lat['config']['repeats']}). *bare*: `lockf` on a lock file kept open around "
        "one `os.write`. File times there move with the kernel's clock tick, so "
        f"index-writer also reads the index's first bytes before each write.{note}",
        "",
        lat["markdown"],
    ])


@section("tools")
def tools_table(data: Data, docs: str) -> str:
    """Peak memory of `index-writer show` and `check` on the large index."""
    items = data.get("tools")
    if not items:
        return ""
    rows = [[f"`index-writer {t['command']}`", f"{t['peak_mb']:.0f} MB", sig(t["seconds"])]
            for t in items]
    return "\n".join([
        f"The command's whole-file tools on {rows_count(items[0]['rows'])} rows "
        f"({items[0]['file_mb']:.0f} MB): peak memory of the process and time. Both read "
        "the file one row at a time (`show` from a copy taken under the lock).",
        "",
        table(["", "Peak memory", "Seconds"], rows),
    ])


def checks(data: Data) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/FAIL/info) for each goal the run can be checked against."""
    s = data["settings"]
    quick = bool(data["run"].get("quick"))
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool, applies: bool = True) -> str:
        if quick or not applies:
            return "info"
        return "PASS" if ok else "FAIL"

    for n in s["sizes"]:
        ours, floor = seq(data, "index-writer", n), seq(data, "floor", n)
        if ours and floor:
            share = floor["median"] / ours["median"]
            out.append(
                (
                    f"sequential writes at {rows_count(n)} rows: at least "
                    f"{FLOOR_FRACTION:.0%} of the floor's speed",
                    f"{share:.0%}",
                    verdict(share >= FLOOR_FRACTION),
                )
            )
    base = seq(data, "index-writer", s["sizes"][0])
    big = seq(data, "index-writer", 100_000)
    if base and big:
        share = base["median"] / big["median"]
        out.append(
            (
                f"speed at 100,000 rows: at least {FLAT_FRACTION:.0%} of the speed at "
                f"{rows_count(s['sizes'][0])}",
                f"{share:.0%}",
                verdict(share >= FLAT_FRACTION),
            )
        )
    b = _find(data.get("batch", []), implementation="index-writer")
    if b:
        rate = 1 / b["time"]["median"]
        out.append(
            (
                f"`write_entries`: at least {rows_count(BATCH_RATE)} rows/s",
                f"{sig(rate)} rows/s",
                verdict(rate >= BATCH_RATE),
            )
        )
    for write, label in (("append", "an append"), ("replace", "a first replace_existing write")):
        m = memory(data, "index-writer", write)
        if m:
            out.append(
                (
                    f"peak memory of {label} into {rows_count(m['rows'])} rows: at most "
                    f"{RSS_MB} MB",
                    f"{m['peak_mb']:.0f} MB",
                    verdict(m["peak_mb"] <= RSS_MB, m["rows"] >= 1_000_000),
                )
            )
    out += _more_checks(data, verdict)
    entries = s["demo_entries"]
    if entries:
        ours, noop = demo(data, "index-writer", entries[0]), demo(data, "no-op", entries[0])
        if ours and noop:
            r = ours["median"] / noop["median"]
            out.append(
                (
                    f"the demo with {rows_count(entries[0])} entries: at most "
                    f"{DEMO_VS_NOOP:g}× the time of the pool doing nothing",
                    f"{sig(r)}×",
                    verdict(r <= DEMO_VS_NOOP, entries[0] == 1000),
                )
            )
        ours, orig = demo(data, "index-writer", entries[-1]), demo(data, "original", entries[-1])
        if ours and orig:
            r = orig["median"] / ours["median"]
            out.append(
                (
                    f"the demo with {rows_count(entries[-1])} entries: at least "
                    f"{DEMO_VS_ORIGINAL:g}× as fast as the original",
                    f"{sig(r)}×",
                    verdict(r >= DEMO_VS_ORIGINAL, entries[-1] == 5000),
                )
            )
    return out


def _more_checks(data: Data, verdict: Callable[..., str]) -> list[tuple[str, str, str]]:
    """The goals for first writes, batches, many writers, system calls, slow filesystems."""
    out: list[tuple[str, str, str]] = []
    for write, (limit_s, limit_mb) in (("append", (FIRST_APPEND_S, FIRST_APPEND_MB)),
                                       ("replace", (FIRST_REPLACE_S, FIRST_REPLACE_MB))):
        m = memory(data, "index-writer", write)
        if m:
            extra = m["peak_mb"] - m["after_imports_mb"]
            big = m["rows"] >= 1_000_000
            out.append((f"a process's first {write} write into {rows_count(m['rows'])} rows: "
                        f"at most {limit_s:g} s", f"{sig(m['seconds'])} s",
                        verdict(m["seconds"] <= limit_s, big)))
            out.append((f"... and at most {limit_mb} MB of memory beyond the imports",
                        f"{extra:.0f} MB", verdict(extra <= limit_mb, big)))
    ours = _find(data.get("batch", []), implementation="index-writer")
    ref = _find(data.get("batch", []), implementation="csv.DictWriter")
    if ours and ref:
        r = ref["time"]["median"] / ours["time"]["median"]
        out.append(("`write_entries` at least as fast as `csv.DictWriter` writing the same "
                    "rows", f"{sig(r)}×", verdict(r >= 1.0)))
    pairs = (("index-writer append", "SQLite WAL insert"),
             ("index-writer replace", "SQLite WAL insert or replace"),
             ("index-writer append", "floor"), ("index-writer replace", "floor"))
    for ours_impl, peer in pairs:
        a = _contention_rate(data, CONTENTION_SHAPE, ours_impl)
        b = _contention_rate(data, CONTENTION_SHAPE, peer)
        if a and b:
            out.append((f"12 writer processes, {ours_impl.split()[-1]}: at least as fast as "
                        f"{peer}", f"{sig(a / b)}×", verdict(a >= b)))
    sc = data.get("syscalls", {}).get("results", {}).get("index-writer", {})
    for scenario, limit in (("warm", SYSCALLS_WARM), ("after-append", SYSCALLS_AFTER)):
        if scenario in sc:
            n = sc[scenario]["total_per_write"]
            # The one call not made per write: a writer checks that its lock file is
            # still the one at its path (a stat) at most every RECHECK seconds.
            periodic = sc[scenario]["per_write"].get("lock file", {}).get("newfstatat", 0.0)
            # An append that crosses a page of the file is journaled before it is
            # made too: one more `pwrite` for those (their share of the writes).
            crossing = sc[scenario]["per_write"].get("journal", {}).get("pwrite64", 1.0) - 1
            note = (f", of which {crossing:.2f} for the appends that cross a page"
                    if crossing >= 0.005 else "")
            out.append((f"system calls per write ({scenario}): at most {limit}, besides the "
                        f"lock file's `stat` made at most every {RECHECK:g} s",
                        f"{n - periodic:.2f} (+{periodic:.2f}){note}",
                        verdict(n - periodic <= limit)))
    lat = data.get("latency", {}).get("median_ms", {})
    for key, value in sorted(lat.items()):
        impl, mode, size = key.split("|")
        floor = lat.get(f"floor|{mode}|{size}")
        if impl == "index-writer" and floor:
            out.append((f"slow filesystem, {mode}, {int(size):,} rows: at most "
                        f"{LATENCY_VS_FLOOR:g}× the floor's ms per write",
                        f"{sig(value / floor)}×", verdict(value <= LATENCY_VS_FLOOR * floor)))
    for t in data.get("tools", []):
        out.append((f"peak memory of `index-writer {t['command']}` on "
                    f"{rows_count(t['rows'])} rows: at most {TOOLS_MB} MB",
                    f"{t['peak_mb']:.0f} MB", verdict(t["peak_mb"] <= TOOLS_MB,
                                                     t["rows"] >= 1_000_000)))
    return out


@section("checks")
def checks_table(data: Data, docs: str) -> str:
    found = checks(data)
    if not found:
        return ""
    return "\n".join(
        [
            "What the project expects of every run, and what this one measured:",
            "",
            table(["Goal", "Measured", "Result"], [list(c) for c in found], 1),
        ]
    )


@section("machine")
def machine(data: Data, docs: str) -> str:
    m, run = data["machine"], data["run"]
    loads = " ".join(f"{x:.2f}" for x in m["load_start"])
    facts = [
        ("Command", f"`{run['command']}`" + (" (quick mode)" if run.get("quick") else "")),
        ("Duration", f"{sig(run['minutes'])} minutes"),
        ("Date", m["date"]),
        ("CPU", f"{m['cpu']}, {m['cores']} cores usable"),
        ("Operating system", m["os"]),
        ("Python", f"{m['python']} ({m['implementation']})"),
        ("index-writer", f"{m['index_writer']} (git {m['git']})"),
        ("The original", m["original"]),
        ("fasteners, joblib", f"{m['fasteners']}, {m['joblib']}"),
        ("Load average (1, 5, 15 min)", f"{loads} at the start"),
    ]
    if m.get("load_end"):
        facts[-1] = (
            facts[-1][0],
            facts[-1][1] + ", " + " ".join(f"{x:.2f}" for x in m["load_end"]) + " at the end",
        )
    lines = [f"- {k}: {v}" for k, v in facts]
    text = (
        "The machine is shared with other jobs, so absolute times are noisy; the "
        "implementations ran interleaved, and the tables give medians and the spread "
        "over the runs.\n\n" + "\n".join(lines)
    )
    if run.get("note"):
        text += f"\n\n{run['note']}"
    return text


# ----------------------------------------------------------- the pages

_BLOCK = re.compile(
    r"^(?P<begin><!-- begin benchmarks:(?P<name>[\w-]+) [^>\n]*-->\n)"
    r"(?P<body>.*?)"
    r"^(?P<end><!-- end benchmarks:(?P=name) -->)$",
    re.S | re.M,
)
_ANY_MARKER = re.compile(r"^<!-- (?:begin|end) benchmarks:([\w-]+)", re.M)
BEGIN = (
    "<!-- begin benchmarks:{name} (generated from docs/benchmarks.json by "
    "benchmarks/report.py) -->"
)


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold generated sections."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def docs_prefix(page: Path, root: Path = ROOT) -> str:
    return "docs/" if page.parent == root else ""


def render(text: str, data: Data, docs: str, where: str = "") -> str:
    """``text`` with every generated section rewritten from ``data``."""
    begins = [m[1] for m in _ANY_MARKER.finditer(text)]
    found = [m["name"] for m in _BLOCK.finditer(text)]
    if len(begins) != 2 * len(found):
        raise ValueError(f"{where}: unmatched benchmarks markers (sections found: {found})")
    unknown = sorted(set(found) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{where}: unknown sections {unknown}; known: {sorted(SECTIONS)}")

    def replace(m: re.Match[str]) -> str:
        body = SECTIONS[m["name"]](data, docs).strip("\n")
        # Blank lines around the body: Markdown then never reads it as part of
        # the HTML comment before it.
        return BEGIN.format(name=m["name"]) + "\n\n" + (body + "\n\n" if body else "") + m["end"]

    return _BLOCK.sub(replace, text)


def sections_in(text: str) -> Iterator[tuple[str, str]]:
    """(name, body) of each generated section of a page."""
    for m in _BLOCK.finditer(text):
        yield m["name"], m["body"]


def stale(data: Data, root: Path = ROOT) -> list[Path]:
    """The pages whose generated sections differ from what ``data`` gives."""
    out = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        if render(text, data, docs_prefix(page, root), str(page)) != text:
            out.append(page)
    return out


def write_pages(data: Data, root: Path = ROOT) -> list[Path]:
    """Rewrite the generated sections of README.md and docs/; return the pages changed."""
    changed = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        new = render(text, data, docs_prefix(page, root), str(page))
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def load(path: Path) -> Data:
    data: Data = json.loads(path.read_text(encoding="utf-8"))
    problems = validate(data)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return data


def validate(data: Data) -> list[str]:
    """What is wrong with a benchmarks JSON (nothing: an empty list)."""
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"format is {data.get('format')!r}, this script reads {FORMAT}")
    for key in ("run", "machine", "settings"):
        if not isinstance(data.get(key), dict):
            problems.append(f"no {key!r} object")
    for key in ("sequential", "first_replace", "batch", "demo"):
        for i, item in enumerate(data.get(key, [])):
            t = item.get("time", {})
            missing = {"median", "min", "max", "runs", "entries"} - set(t)
            if missing:
                problems.append(f"{key}[{i}].time lacks {sorted(missing)}")
            elif not t["min"] <= t["median"] <= t["max"]:
                problems.append(f"{key}[{i}].time: not min <= median <= max")
    return problems


# -------------------------------------------------------------- the plot


def plot(data: Data, path: Path) -> str:
    """Draw ms per write against rows in the index (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot (pip install '.[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    styles = {
        "original": ("tab:red", "s", f"original ({data['machine']['original']})"),
        "index-writer": ("tab:blue", "o", "index-writer"),
        "floor": ("tab:gray", "^", "floor: fasteners lock + one os.write"),
    }
    for impl, (color, marker, label) in styles.items():
        pts = [
            (n, t) for n in data["settings"]["sizes"] if (t := seq(data, impl, n)) is not None
        ]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        ys = [t["median"] * 1e3 for _, t in pts]
        lo = [y - t["min"] * 1e3 for y, (_, t) in zip(ys, pts, strict=True)]
        hi = [t["max"] * 1e3 - y for y, (_, t) in zip(ys, pts, strict=True)]
        ax.errorbar(
            xs, ys, yerr=[lo, hi], color=color, marker=marker, label=label, capsize=3,
            linewidth=1.5,
        )  # fmt: skip
    one = memory(data, "original", "append")
    if one:
        ax.plot(
            [one["rows"]], [one["seconds"] * 1e3], linestyle="none", marker="s",
            markerfacecolor="none", color="tab:red",
            label=f"original: one write at {one['rows']:,} rows (new process)",
        )  # fmt: skip
    m = data["machine"]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows already in the index")
    ax.set_ylabel("ms per write_entry (median; bars: fastest–slowest run)")
    ax.set_title("Sequential write_entry(replace_existing=True), 4 context fields")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(
        0.99, 0.01, f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['date']}",
        ha="right", va="bottom", fontsize=7, color="0.4",
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    done = f"plot written to {path}"
    if data.get("contention"):
        other = path.with_name(CONTENTION_PLOT)
        plot_contention(data, other)
        done += f" and {other}"
    return done


def plot_contention(data: Data, path: Path) -> None:
    """Draw entries/s against writer processes (single-threaded shapes)."""
    import matplotlib.pyplot as plt

    shapes = [sh for sh in data["contention"]["shapes"] if sh.endswith("x1")]
    xs = [int(sh.split("x")[0]) for sh in shapes]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for impl, style, color in (
        ("index-writer append", "o-", "tab:blue"),
        ("index-writer replace", "s-", "tab:cyan"),
        ("SQLite WAL insert", "^--", "tab:green"),
        ("SQLite WAL insert or replace", "v--", "tab:olive"),
        ("floor", "x:", "tab:gray"),
    ):
        ys = [_contention_rate(data, sh, impl) or 0.0 for sh in shapes]
        ax.plot(xs, ys, style, color=color, label=impl)
    m = data["machine"]
    ax.set_xlabel(f"writer processes on one index ({m['cores']} CPU cores)")
    ax.set_ylabel("entries per second, all writers (median)")
    ax.set_xticks(xs)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Many writers at once")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def text_report(data: Data) -> str:
    """The report for a terminal: summary, table, checks."""
    return "\n\n".join(
        part
        for part in (
            summary(data, "docs/"),
            compact_table(data, "docs/"),
            sequential_table(data, "docs/"),
            checks_table(data, "docs/"),
        )
        if part
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="?", default=DEFAULT_JSON)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md and docs/")
    mode.add_argument("--check", action="store_true", help="exit 1 if any page differs")
    ap.add_argument("--plot", action="store_true", help=f"redraw docs/{PLOT}")
    args = ap.parse_args(argv)
    data = load(args.json)
    if args.plot:
        print(plot(data, DOCS / PLOT))
    if args.write:
        changed = write_pages(data)
        print("updated: " + ", ".join(str(p.relative_to(ROOT)) for p in changed)
              if changed else "every page is already current")  # fmt: skip
    elif args.check:
        old = stale(data)
        if old:
            print(
                "out of date with " + str(args.json) + ": "
                + ", ".join(str(p.relative_to(ROOT)) for p in old)
                + f"\nrun: python benchmarks/report.py {args.json} --write"
            )  # fmt: skip
            return 1
        print("every page agrees with " + str(args.json))
    elif not args.plot:
        print(text_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
