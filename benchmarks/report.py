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

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DEFAULT_JSON = DOCS / "benchmarks.json"
PLOT = "benchmark.png"
FORMAT = 1

Data = dict[str, Any]

# Goals the run is checked against (printed by compare.py, shown under "Checks").
FLOOR_FRACTION = 0.50  # sequential writes: at least this share of the floor's rate
FLAT_FRACTION = 0.66  # rate at 100,000 rows: at least this share of the rate at 1,000
BATCH_RATE = 200_000  # write_entries: rows per second
RSS_MB = 300  # peak memory of one write into the memory benchmark's index
DEMO_VS_NOOP = 1.5  # the demo with 1,000 entries: at most this many times the no-op pool
DEMO_VS_ORIGINAL = 30.0  # the demo with 5,000 entries: at least this many times faster

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
        "about a second (the original), after one untimed write.",
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
            "the write that reads the whole index once and maps each path to its row. "
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
            "Each row is a new Python process making one write to its own copy of the "
            "index: its peak resident memory, its memory after the imports, and how long "
            "that one write took.",
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
            "lock).",
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
    return f"plot written to {path}"


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
