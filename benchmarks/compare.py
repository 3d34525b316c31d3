"""index-writer side by side with the original IndexWriter and the bare floor.

    python benchmarks/compare.py [--quick] [--out docs/]

Three implementations, measured in one run, interleaved, medians over repeats:

* ``index-writer`` -- this library (``index_writer.IndexWriter``);
* ``original`` -- ``imgtools.io.writers.index_writer.IndexWriter`` from the
  med-imagetools 2.16.0 wheel, downloaded at run time with
  ``pip download --no-deps`` into a cache directory and imported from the
  file by ``tests/_original.py``, the loader the tests use too (none of its
  code is committed);
* ``floor`` -- the least any safe shared append can do: a
  ``fasteners.InterProcessLock`` held around one ``os.write`` of the row to an
  index opened once with ``O_APPEND``.

Workloads:

a. sequential ``write_entry(..., replace_existing=True)`` with the demo's four
   context fields into indexes of 1k, 10k, 100k and 1M existing rows (the
   original stops where its time budget runs out);
b. ``write_entries`` of 200k rows into a new index;
c. peak RSS of a fresh process appending one row to a 1M-row index (a plain
   append, and the first ``replace_existing=True`` write, which maps paths);
d. the many-workers demo (med-imagetools' example): joblib
   ``Parallel(n_jobs=12)``, a new writer and one ``write_entry`` per task,
   against the same pool running no-op tasks and against the original.

It prints a summary, the main tables and the checks (``report.py``); with
``--out DIR`` it also writes every figure and the machine facts to
``DIR/benchmarks.json`` and draws ``DIR/benchmark.png`` from it, and when DIR is
this repository's docs/, it rewrites the generated sections of README.md and
docs/ from that JSON (``report.py --write``). ``--quick`` uses smaller sizes
and finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fasteners

from index_writer import IndexWriter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import _original  # noqa: E402
import report  # noqa: E402

COLUMNS = ("path", "subject_id", "modality", "timestamp", "quality_score")
MODALITIES = ("CT", "MR", "SEG")
ORIGINAL_MODULE = _original.MODULE_NAME

# ----------------------------------------------------------------- settings


@dataclass(frozen=True)
class Config:
    """How much to measure."""

    sizes: tuple[int, ...]
    writes: int  # timed writes per measurement (index-writer, floor)
    repeats: int
    original_seconds: float  # aim for this long per original measurement
    original_min_writes: int
    original_size_budget: float  # stop the original where a size would cost more
    batch_rows: int
    batch_repeats: int
    rss_rows: int
    rss_original: bool
    demo_small: int
    demo_small_repeats: int
    demo_large: int
    demo_large_repeats: int
    workers: int = 12


FULL = Config(
    sizes=(1_000, 10_000, 100_000, 1_000_000),
    writes=2000,
    repeats=5,
    original_seconds=1.0,
    original_min_writes=3,
    original_size_budget=20.0,
    batch_rows=200_000,
    batch_repeats=3,
    rss_rows=1_000_000,
    rss_original=True,
    demo_small=1000,
    demo_small_repeats=5,
    demo_large=5000,
    demo_large_repeats=5,
)

QUICK = Config(
    sizes=(1_000, 10_000, 100_000),
    writes=1000,
    repeats=3,
    original_seconds=0.3,
    original_min_writes=3,
    original_size_budget=2.0,
    batch_rows=50_000,
    batch_repeats=3,
    rss_rows=100_000,
    rss_original=False,
    demo_small=300,
    demo_small_repeats=2,
    demo_large=1000,
    demo_large_repeats=1,
)

# ------------------------------------------------------------------ data


def demo_context(i: int) -> dict[str, Any]:
    """``generate_context(i)`` of med-imagetools' demo: four fields."""
    return {
        "subject_id": f"subject_{i % 10}",
        "modality": random.choice(MODALITIES),
        "timestamp": dt.datetime.now().isoformat(),
        "quality_score": round(random.uniform(0, 1), 3),
    }


def make_contexts(n: int) -> list[dict[str, Any]]:
    return [demo_context(i) for i in range(n)]


def prefill(path: Path, rows: int) -> None:
    """Write an index of ``rows`` demo-like rows directly (fast, deterministic)."""
    rng = random.Random(rows)
    base = dt.datetime(2025, 1, 1)
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(COLUMNS) + "\n")
        chunk = []
        for i in range(rows):
            ts = (base + dt.timedelta(seconds=i, microseconds=i % 997)).isoformat()
            chunk.append(
                f"output/prefill_{i}.nii.gz,subject_{i % 10},{MODALITIES[i % 3]},"
                f"{ts},{round(rng.uniform(0, 1), 3)}\n"
            )
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def fresh_copy(master: Path, target: Path) -> None:
    """Put a copy of ``master`` at ``target`` (a new inode) and drop its lock file."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(master, tmp)
    os.replace(tmp, target)


def count_rows(path: Path) -> tuple[int, int, list[str]]:
    """Rows, distinct paths and header of an index, read with the csv module."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        pidx = header.index("path") if "path" in header else 0
        paths = [row[pidx] for row in reader if row]
    return len(paths), len(set(paths)), header


# ------------------------------------------------------------ the writers


def floor_writer(index: Path) -> tuple[Callable[[str, dict[str, Any]], None], Callable[[], None]]:
    """The bare floor: fasteners lock + one O_APPEND write per entry."""
    lock = fasteners.InterProcessLock(str(index) + ".lock")
    fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(path: str, ctx: dict[str, Any]) -> None:
        line = (
            f"{path},{ctx['subject_id']},{ctx['modality']},"
            f"{ctx['timestamp']},{ctx['quality_score']}\n"
        )
        with lock:
            os.write(fd, line.encode())

    return write, lambda: os.close(fd)


def ours_writer(index: Path) -> tuple[Callable[[str, dict[str, Any]], None], Callable[[], None]]:
    w = IndexWriter(index)

    def write(path: str, ctx: dict[str, Any]) -> None:
        w.write_entry(path, ctx, replace_existing=True)

    return write, lambda: None


def original_writer(
    index: Path,
) -> tuple[Callable[[str, dict[str, Any]], None], Callable[[], None]]:
    cls = sys.modules[ORIGINAL_MODULE].IndexWriter
    w = cls(index_path=index)

    def write(path: str, ctx: dict[str, Any]) -> None:
        w.write_entry(path=Path(path), context=ctx, replace_existing=True)

    return write, lambda: None


WRITERS = {"index-writer": ours_writer, "floor": floor_writer, "original": original_writer}

# --------------------------------------------------------------- results


@dataclass
class Sample:
    """Repeated timings of one (workload, implementation, size)."""

    seconds_per_entry: list[float] = field(default_factory=list)
    entries: int = 0
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_entry)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.seconds_per_entry), max(self.seconds_per_entry)


@dataclass
class Results:
    seq: dict[tuple[str, int], Sample] = field(default_factory=dict)
    first_write: dict[int, Sample] = field(default_factory=dict)
    original_stopped: str = ""
    original_error: str = ""
    batch: dict[str, Sample] = field(default_factory=dict)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)
    demo: dict[tuple[str, int], Sample] = field(default_factory=dict)
    demo_rows: dict[tuple[str, int], list[tuple[int, int]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # contention, syscalls, latency, tools


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------- a. sequential writes


def bench_sequential(cfg: Config, work: Path, res: Results, have_original: bool) -> None:
    masters = {}
    for size in cfg.sizes:
        masters[size] = work / f"master-{size}.csv"
        prefill(masters[size], size)
    contexts = make_contexts(cfg.writes)

    # The original: how many writes per measurement, and where to stop.
    orig_writes: dict[int, int] = {}
    if have_original:
        est = 4.5e-6  # seconds per existing row and write (first guess)
        for size in cfg.sizes:
            per_write = est * size
            if per_write * cfg.original_min_writes * cfg.repeats > cfg.original_size_budget:
                res.original_stopped = (
                    f"the original was stopped before {size:,} rows: about "
                    f"{per_write:.2g} s per write (extrapolated) × "
                    f"{cfg.original_min_writes} writes × {cfg.repeats} repeats exceeds the "
                    f"{cfg.original_size_budget:g} s budget per size"
                )
                break
            n = max(cfg.original_min_writes, min(cfg.writes, int(cfg.original_seconds / per_write)))
            orig_writes[size] = n
            # Calibrate on the real file before deciding on the next size.
            est = _calibrate_original(masters[size], work, size) / size

    for rep in range(cfg.repeats):
        for size in cfg.sizes:
            impls = ["index-writer", "floor"] + (["original"] if size in orig_writes else [])
            k = (rep + cfg.sizes.index(size)) % len(impls)
            for impl in impls[k:] + impls[:k]:  # rotate the order: interleaved
                n = orig_writes[size] if impl == "original" else cfg.writes
                index = work / f"{impl}-{size}.csv"
                fresh_copy(masters[size], index)
                make, close = WRITERS[impl](index)
                try:
                    # Two untimed warm-up writes: index-writer's first reads the
                    # index, its second sorts the path map (see the memory table).
                    t0 = time.perf_counter()
                    make(f"output/warmup_{rep}.nii.gz", contexts[0])
                    first = time.perf_counter() - t0
                    make(f"output/warmup2_{rep}.nii.gz", contexts[0])
                    t0 = time.perf_counter()
                    for i in range(n):
                        make(f"output/fake_file_{rep}_{i}.nii.gz", contexts[i % len(contexts)])
                    elapsed = time.perf_counter() - t0
                finally:
                    close()
                s = res.seq.setdefault((impl, size), Sample())
                s.seconds_per_entry.append(elapsed / n)
                s.entries = n
                if impl == "index-writer":
                    fw = res.first_write.setdefault(size, Sample(entries=1))
                    fw.seconds_per_entry.append(first)
                rows, distinct, _ = count_rows(index)
                if rows != size + n + 2 or distinct != rows:
                    raise SystemExit(
                        f"{impl} at {size} rows: expected {size + n + 2} rows, "
                        f"found {rows} ({distinct} distinct)"
                    )
                index.unlink()
        done = ", ".join(
            f"{impl}@{size:,}: {res.seq[(impl, size)].seconds_per_entry[-1] * 1e3:.3g} ms"
            for (impl, size) in sorted(res.seq, key=lambda k: (k[1], k[0]))
        )
        log(f"sequential repeat {rep + 1}/{cfg.repeats}: {done}")
    for size in cfg.sizes:
        masters[size].unlink()


def _calibrate_original(master: Path, work: Path, size: int) -> float:
    index = work / f"calibrate-{size}.csv"
    fresh_copy(master, index)
    make, close = original_writer(index)
    ctx = demo_context(0)
    make("output/calibrate_0.nii.gz", ctx)
    t0 = time.perf_counter()
    make("output/calibrate_1.nii.gz", ctx)
    took = time.perf_counter() - t0
    close()
    index.unlink()
    return took


# ----------------------------------------------------- b. write_entries


def bench_batch(cfg: Config, work: Path, res: Results) -> None:
    n = cfg.batch_rows
    contexts = make_contexts(n)
    entries = [(f"output/batch_{i}.nii.gz", contexts[i]) for i in range(n)]
    impls = ["index-writer", "floor", "csv.DictWriter"]
    for rep in range(cfg.batch_repeats):
        for impl in impls[rep % 3 :] + impls[: rep % 3]:
            index = work / f"batch-{impl}-{rep}.csv"
            t0 = time.perf_counter()
            if impl == "index-writer":
                IndexWriter(index).write_entries(entries)
            elif impl == "csv.DictWriter":  # the standard library, no lock: a reference
                with open(index, "w", newline="", encoding="utf-8") as f:
                    dw = csv.DictWriter(f, fieldnames=list(COLUMNS))
                    dw.writeheader()
                    dw.writerows({"path": p, **c} for p, c in entries)
            else:
                lines = ["path,subject_id,modality,timestamp,quality_score\n"]
                lines += [
                    f"{p},{c['subject_id']},{c['modality']},{c['timestamp']},"
                    f"{c['quality_score']}\n"
                    for p, c in entries
                ]
                fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    with fasteners.InterProcessLock(str(index) + ".lock"):
                        os.write(fd, "".join(lines).encode())
                finally:
                    os.close(fd)
            elapsed = time.perf_counter() - t0
            rows, distinct, _ = count_rows(index)
            if rows != n or distinct != n:
                raise SystemExit(f"write_entries {impl}: {rows} rows, {distinct} distinct")
            s = res.batch.setdefault(impl, Sample())
            s.seconds_per_entry.append(elapsed / n)
            s.entries = n
            index.unlink()
    log(
        "write_entries: "
        + ", ".join(f"{k}: {1 / v.median:,.0f} rows/s" for k, v in res.batch.items())
    )


# ---------------------------------------------------------- c. peak RSS


def _vm(field_name: str) -> float:
    """VmHWM / VmRSS of this process in MB (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(impl: str, mode: str, index: str, original_src: str) -> None:
    """Run in a fresh process: one write to ``index``; print peak RSS as JSON."""
    cls = _load_original_class(original_src) if impl == "original" else IndexWriter
    base = _vm("VmHWM")
    ctx = demo_context(0)
    t0 = time.perf_counter()
    if impl == "original":
        cls(index_path=Path(index)).write_entry(
            path=Path(f"output/rss_{mode}.nii.gz"), context=ctx,
            replace_existing=mode == "replace",
        )
    elif mode == "second-replace":  # time the second of two writes
        writer = cls(index)
        writer.write_entry("output/rss_first.nii.gz", ctx, replace_existing=True)
        t0 = time.perf_counter()
        writer.write_entry("output/rss_second.nii.gz", ctx, replace_existing=True)
    elif mode == "real-replace":  # time a real replacement, after two writes
        writer = cls(index)
        writer.write_entry("output/rss_first.nii.gz", ctx, replace_existing=True)
        writer.write_entry("output/rss_second.nii.gz", ctx, replace_existing=True)
        changed = {**ctx, "quality_score": 2.0}  # prefill() scores are below 1
        t0 = time.perf_counter()
        writer.write_entry("output/prefill_7.nii.gz", changed, replace_existing=True)
    else:
        cls(index).write_entry(
            f"output/rss_{mode}.nii.gz", ctx, replace_existing=mode == "replace"
        )
    took = time.perf_counter() - t0
    print(json.dumps({"peak_mb": _vm("VmHWM"), "base_mb": base, "seconds": took}))


def bench_rss(cfg: Config, work: Path, res: Results, original_src: str | None) -> None:
    index = work / f"rss-{cfg.rss_rows}.csv"
    prefill(index, cfg.rss_rows)
    runs = [("index-writer", "append"), ("index-writer", "replace"),
            ("index-writer", "second-replace"), ("index-writer", "real-replace")]
    if cfg.rss_original and original_src:
        runs.append(("original", "append"))
    for impl, mode in runs:
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--rss-child",
            impl, mode, str(index), original_src or "",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            res.rss[f"{impl} {mode}"] = {"error": proc.stderr.strip()[-300:]}
            log(f"RSS {impl} {mode}: failed: {proc.stderr.strip()[-300:]}")
            continue
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        res.rss[f"{impl} {mode}"] = info
        log(
            f"RSS {impl} {mode} at {cfg.rss_rows:,} rows: peak {info['peak_mb']:.0f} MB "
            f"(after imports {info['base_mb']:.0f} MB), {info['seconds']:.2f} s"
        )
    index.unlink()


# ---------------------------------------------------------- d. the demo


def _load_original_class(src: str) -> Any:
    """The original class, imported by file path (in a worker as in the parent)."""
    return _original.load(src).IndexWriter


def demo_task_ours(index_path: str, i: int) -> None:
    """The demo's task: a new writer, one entry."""
    output_path = Path(f"output/fake_file_{i}.nii.gz")
    context = demo_context(i)
    IndexWriter(index_path=index_path).write_entry(path=output_path, context=context)


def demo_task_original(index_path: str, i: int, src: str) -> None:
    output_path = Path(f"output/fake_file_{i}.nii.gz")
    context = demo_context(i)
    cls = _load_original_class(src)
    cls(index_path=Path(index_path)).write_entry(path=output_path, context=context)


def demo_task_noop(index_path: str, i: int) -> None:
    return None


def _cold_pool() -> None:
    """Shut joblib's reusable loky executor down, so each run starts its workers."""
    with contextlib.suppress(Exception):
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)


def run_demo(impl: str, entries: int, work: Path, workers: int, src: str | None) -> float:
    from joblib import Parallel, delayed

    index = work / f"demo-{impl}-{entries}.csv"
    for p in (index, Path(str(index) + ".lock")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    _cold_pool()
    idx = str(index)
    if impl == "index-writer":
        tasks = (delayed(demo_task_ours)(idx, i) for i in range(entries))
    elif impl == "original":
        tasks = (delayed(demo_task_original)(idx, i, src) for i in range(entries))
    else:
        tasks = (delayed(demo_task_noop)(idx, i) for i in range(entries))
    t0 = time.perf_counter()
    Parallel(n_jobs=workers)(tasks)
    return time.perf_counter() - t0


def bench_demo(cfg: Config, work: Path, res: Results, src: str | None) -> None:
    def one(impl: str, entries: int) -> None:
        seconds = run_demo(impl, entries, work, cfg.workers, src)
        s = res.demo.setdefault((impl, entries), Sample())
        s.seconds_per_entry.append(seconds / entries)
        s.entries = entries
        index = work / f"demo-{impl}-{entries}.csv"
        if impl != "noop":
            rows, distinct, _ = count_rows(index)
            res.demo_rows.setdefault((impl, entries), []).append((rows, distinct))
            if rows != entries or distinct != entries:
                log(f"demo {impl} × {entries}: kept {rows} rows ({distinct} distinct)!")
            index.unlink()
        log(f"demo {impl} × {entries}: {seconds:.2f} s")

    # One untimed run first: the first pool of a process also starts joblib's
    # resource tracker and imports what the workers need.
    run_demo("noop", cfg.workers * 4, work, cfg.workers, src)
    small = ["noop", "index-writer"] + (["original"] if src else [])
    for rep in range(cfg.demo_small_repeats):
        k = rep % len(small)
        for impl in small[k:] + small[:k]:
            one(impl, cfg.demo_small)
    large: list[str] = []
    for rep in range(cfg.demo_large_repeats):
        large += ["index-writer", "noop"] if rep % 2 == 0 else ["noop", "index-writer"]
    if src:
        large.insert(2, "original")  # the original once (it takes about a minute)
    for impl in large:
        one(impl, cfg.demo_large)
    _cold_pool()


# ------------------------------------------------------------- reporting


# ------------------------------------------------------ e. many writers


def bench_contention(cfg: Config, res: Results) -> None:
    """Many writer processes at once, against SQLite WAL and the floor (contention.py)."""
    import contention

    settings = contention.QUICK if cfg is QUICK else contention.FULL
    log(f"contention: {settings.writes} writes per process, {settings.repeats} repeats")
    res.extra["contention"] = contention.run(settings, log=log)
    log("contention:\n" + contention.table(res.extra["contention"]))


# ------------------------------------- f. system calls and a slow filesystem


def bench_script(name: str, args: list[str], res: Results) -> None:
    """Run ``benchmarks/NAME.py ARGS --json`` and keep its JSON (or why it could not run)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        cmd = [sys.executable, str(HERE / f"{name}.py"), *args, "--json", str(out)]
        log(f"{name}: {' '.join(cmd[1:])}")
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode == 0 and out.exists():
            res.extra[name] = json.loads(out.read_text())
        else:
            why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            res.extra[name] = {"not_measured": why}
            log(f"{name}: not measured: {why}")


# ------------------------------------------- g. the command's whole-file tools


def bench_tools(cfg: Config, work: Path, res: Results) -> None:
    """Peak memory and time of ``index-writer show`` and ``check`` on the large index."""
    index = work / "tools.csv"
    prefill(index, cfg.rss_rows)
    size_mb = index.stat().st_size / 2**20
    results = []
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print(time.perf_counter() - t, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    for command in (["show", "--format", "csv"], ["check"]):
        argv = [sys.executable, "-m", "index_writer", command[0], str(index), *command[1:]]
        r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"index-writer {command[0]} failed: {r.stderr.strip()[-300:]}")
        seconds, peak = map(float, r.stdout.split())
        results.append({"command": " ".join(command), "rows": cfg.rss_rows,
                        "file_mb": round(size_mb, 1), "peak_mb": round(peak, 1),
                        "seconds": round(seconds, 3)})
        log(f"index-writer {' '.join(command)}: {peak:.0f} MB peak, {seconds:.2f} s")
    res.extra["tools"] = results
    index.unlink()


def machine_facts() -> dict[str, Any]:
    """The machine, the software and the load, for the JSON's ``machine``."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cores": usable,
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "fasteners": importlib.metadata.version("fasteners"),
        "joblib": _version("joblib"),
        "index_writer": _version("index-writer"),
        "git": commit,
        "original": f"med-imagetools {_original.VERSION}",
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "load_end": [],
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _time(s: Sample) -> dict[str, Any]:
    """A Sample as the JSON's ``time``: seconds per entry."""
    lo, hi = s.spread
    return {
        "median": s.median, "min": lo, "max": hi, "runs": len(s.seconds_per_entry),
        "entries": s.entries, "all": list(s.seconds_per_entry),
    }  # fmt: skip


def results_json(
    cfg: Config, res: Results, facts: dict[str, Any], command: str, quick: bool, elapsed: float
) -> dict[str, Any]:
    """Every figure of the run, in the format ``report.py`` reads (see its docstring)."""
    return {
        "format": report.FORMAT,
        "run": {"command": command, "quick": quick, "minutes": round(elapsed / 60, 2)},
        "machine": facts,
        "settings": {
            "sizes": list(cfg.sizes),
            "writes": cfg.writes,
            "repeats": cfg.repeats,
            "batch_rows": cfg.batch_rows,
            "rss_rows": cfg.rss_rows,
            "workers": cfg.workers,
            "demo_entries": [cfg.demo_small, cfg.demo_large],
            "original_size_budget_s": cfg.original_size_budget,
        },
        "sequential": [
            {"implementation": impl, "rows": size, "time": _time(s)}
            for (impl, size), s in sorted(res.seq.items(), key=lambda kv: kv[0][1])
        ],
        "original_stopped": res.original_stopped,
        "original_error": res.original_error,
        "first_replace": [
            {"rows": size, "time": _time(s)} for size, s in sorted(res.first_write.items())
        ],
        "batch": [
            {"implementation": impl, "rows": cfg.batch_rows, "time": _time(s)}
            for impl, s in res.batch.items()
        ],
        "memory": [
            {
                "implementation": key.split()[0],
                "write": key.split()[1],
                "rows": cfg.rss_rows,
                "peak_mb": info["peak_mb"],
                "after_imports_mb": info["base_mb"],
                "seconds": info["seconds"],
            }
            for key, info in res.rss.items()
            if "error" not in info
        ],
        "demo": [
            {
                "implementation": "no-op" if impl == "noop" else impl,
                "entries": entries,
                "time": _time(s),
                "checked": [list(rc) for rc in res.demo_rows.get((impl, entries), [])],
            }
            for (impl, entries), s in res.demo.items()
        ],
        **res.extra,
    }


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rss-child"]:
        rss_child(*argv[1:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    ap.add_argument("--out", type=Path, default=None,
                    help="write benchmarks.md and benchmark.png into this directory")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    command = "python benchmarks/compare.py" + "".join(f" {a}" for a in argv)
    facts = machine_facts()
    started = time.perf_counter()
    res = Results()

    src: str | None = None
    try:
        src = str(_original.source_path())
        _load_original_class(src)
    except Exception as e:
        res.original_error = f"{type(e).__name__}: {e}"
        log(f"the original is unavailable, measuring without it: {res.original_error}")
        src = None

    work = Path(tempfile.mkdtemp(prefix="index-writer-bench-"))
    log(f"scratch directory {work}; {'quick' if args.quick else 'full'} run")
    try:
        bench_sequential(cfg, work, res, src is not None)
        bench_batch(cfg, work, res)
        bench_rss(cfg, work, res, src)
        bench_tools(cfg, work, res)
        bench_demo(cfg, work, res, src)
        bench_contention(cfg, res)
        bench_script("syscalls", ["--quick"] if args.quick else [], res)
        bench_script("latency", ["--quick"] if args.quick else [], res)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    facts["load_end"] = [round(x, 2) for x in os.getloadavg()]

    data = results_json(cfg, res, facts, command, args.quick, elapsed)
    print(report.text_report(data))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "benchmarks.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
        print(report.plot(data, args.out / report.PLOT))
        if args.out.resolve() == report.DOCS:
            changed = report.write_pages(data)
            print("updated: " + (", ".join(p.name for p in changed) or "nothing"))
        else:
            print(f"to update the pages: python benchmarks/report.py {path} --write")
    failed = [c for c in report.checks(data) if c[2] == "FAIL"]
    print(f"\n{len(failed)} check(s) failed" if failed else "\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
