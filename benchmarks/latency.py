"""ms per write_entry on a filesystem where every operation is a round trip.

    python benchmarks/latency.py [--quick] [--delay SECONDS] [--json OUT]

On NFS, GPFS or Lustre each filesystem operation goes to a server. This
benchmark mounts the FUSE passthrough of ``tests/fusefs.py`` in its ``posix``
lock mode (the filesystem keeps the locks, so every lock request reaches it,
as on NFS, and locks exclude; no attribute caching) with a pause of
``--delay`` seconds (default 0.0002: 0.2 ms, a fast network round trip) in
every operation, and times ``write_entry(..., replace_existing=True)`` into
indexes of 1k, 10k and 100k rows for:

* ``index-writer`` -- this library;
* ``floor`` -- a ``fasteners.InterProcessLock`` around one ``os.write`` to an
  index opened once with ``O_APPEND`` (fasteners reopens its lock file on
  every acquisition);
* ``bare`` -- ``lockf`` on a lock file kept open around one ``os.write``: the
  fewest operations any locked append can make;
* ``original`` -- med-imagetools 2.16.0's IndexWriter, downloaded at run time
  as ``compare.py`` does, given a time budget per size.

Each is measured sequentially (one process) and with 4 writer processes on
one index (ms per write = wall time / writes), interleaved, as medians over
repeats. Needs what the FUSE tests need: Linux, /dev/fuse, ``fusermount3``
(Debian: ``apt-get install -y fuse3``) and ``mfusepy``; usually root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402


def load_fusefs() -> ModuleType:
    """The FUSE harness of the tests, imported by path (one copy of it)."""
    path = HERE.parent / "tests" / "fusefs.py"
    spec = importlib.util.spec_from_file_location("_iw_fusefs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_iw_fusefs"] = module
    spec.loader.exec_module(module)
    return module


def bare_writer(index: Path) -> tuple[Callable[[str, dict[str, Any]], None], Callable[[], None]]:
    """lockf on a lock file opened once, one O_APPEND write per entry."""
    lock = os.open(str(index) + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(path: str, ctx: dict[str, Any]) -> None:
        line = (f"{path},{ctx['subject_id']},{ctx['modality']},"
                f"{ctx['timestamp']},{ctx['quality_score']}\n")
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            os.write(fd, line.encode())
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)

    def close() -> None:
        os.close(fd)
        os.close(lock)

    return write, close


WRITERS = {**compare.WRITERS, "bare": bare_writer}
IMPLS = ("index-writer", "floor", "bare", "original")
MODES = ("sequential", "4 writers")


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    writes: int  # per measurement (all writers together)
    repeats: int
    original_seconds: float  # aim for this long per original measurement
    original_budget: float  # skip the original at a size costlier than this
    writers: int = 4


FULL = Config(sizes=(1_000, 10_000, 100_000), writes=400, repeats=5,
              original_seconds=2.0, original_budget=60.0)
QUICK = Config(sizes=(1_000,), writes=40, repeats=1, original_seconds=0.3,
               original_budget=5.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------- workers


def worker(impl: str, index: str, tag: str, writes: int, go: str, src: str) -> None:
    """One of the concurrent writers (a process of its own): prints its seconds."""
    if impl == "original":
        compare._load_original_class(src)
    make, close = WRITERS[impl](Path(index))
    make(f"output/warm_{tag}.nii.gz", compare.demo_context(0))
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.0005)
    t0 = time.perf_counter()
    for i in range(writes):
        make(f"output/w{tag}_{i}.nii.gz", compare.demo_context(i))
    print(time.perf_counter() - t0, flush=True)
    close()


def run_sequential(impl: str, index: Path, writes: int, rep: int) -> float:
    make, close = WRITERS[impl](index)
    try:
        make(f"output/warmup_{rep}.nii.gz", compare.demo_context(0))
        t0 = time.perf_counter()
        for i in range(writes):
            make(f"output/seq_{rep}_{i}.nii.gz", compare.demo_context(i))
        return (time.perf_counter() - t0) / writes
    finally:
        close()


def run_concurrent(impl: str, index: Path, writes: int, writers: int, rep: int,
                   src: str | None) -> float:
    go = index.with_name(f"go-{impl}-{rep}")
    each = max(1, writes // writers)
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(index),
             f"{rep}_{k}", str(each), str(go), src or ""],
            stdout=subprocess.PIPE, text=True,
        )
        for k in range(writers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"a {impl} writer failed to start")
        t0 = time.perf_counter()
        go.touch()
        for p in procs:
            p.wait(timeout=3600)
        elapsed = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            raise SystemExit(f"a {impl} writer failed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        go.unlink(missing_ok=True)
    return elapsed / (each * writers)


# ------------------------------------------------------------------ main


def bench(cfg: Config, mount: Path, source: Path, src: str | None) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    expected_rows: dict[str, int] = {}
    masters = {}
    for size in cfg.sizes:
        masters[size] = source / f"master-{size}.csv"
        compare.prefill(masters[size], size)
    original_writes: dict[int, int] = {}
    original_note = ""
    if src:
        for size in cfg.sizes:
            index = mount / "calibrate.csv"
            compare.fresh_copy(masters[size], index)
            per = run_sequential("original", index, 2, -1)
            index.unlink()
            if per * 2 * cfg.repeats * len(MODES) > cfg.original_budget:
                original_note = (f"the original was not run from {size:,} rows on: about "
                                 f"{per:.2g} s per write exceeds the {cfg.original_budget:g} s "
                                 "budget per size")
                break
            original_writes[size] = max(cfg.writers,
                                        min(cfg.writes, int(cfg.original_seconds / per)))
    for rep in range(cfg.repeats):
        for size in cfg.sizes:
            impls = [i for i in IMPLS if i != "original" or size in original_writes]
            k = (rep + cfg.sizes.index(size)) % len(impls)
            for mode in MODES:
                for impl in impls[k:] + impls[:k]:
                    writes = original_writes[size] if impl == "original" else cfg.writes
                    name = f"{impl}-{size}.csv"
                    index = mount / name
                    # Every change through the mount, as a client sees them: a
                    # file swapped behind the filesystem's back would keep its
                    # old identity for whoever still has it open.
                    compare.fresh_copy(masters[size], index)
                    if mode == "sequential":
                        per = run_sequential(impl, index, writes, rep)
                        expect = size + writes + 1
                    else:
                        per = run_concurrent(impl, index, writes, cfg.writers, rep, src)
                        expect = size + (writes // cfg.writers + 1) * cfg.writers
                    rows, distinct, _ = compare.count_rows(source / name)
                    if rows != expect or distinct != rows:
                        raise SystemExit(f"{impl} {mode} at {size}: expected {expect} rows, "
                                         f"found {rows} ({distinct} distinct)")
                    key = f"{impl}|{mode}|{size}"
                    samples.setdefault(key, []).append(per)
                    expected_rows[key] = writes
                    # The index, its lock file and its hidden journal (.NAME.journal):
                    # each measurement starts from nothing but the index.
                    for leftover in [*mount.glob(f"{name}*"), *mount.glob(f".{name}*")]:
                        leftover.unlink()
        log(f"repeat {rep + 1}/{cfg.repeats} done")
    for master in masters.values():
        master.unlink()
    return {"samples": samples, "writes": expected_rows, "original_note": original_note}


def table(cfg: Config, res: dict[str, Any]) -> str:
    med = {k: statistics.median(v) for k, v in res["samples"].items()}
    head = ("| Index rows | Writers | index-writer (ms) | floor (ms) | bare (ms) | "
            "original (ms) | index-writer ÷ floor | index-writer ÷ bare |")
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in cfg.sizes:
        for mode in MODES:
            def ms(impl: str, mode: str = mode, size: int = size) -> str:
                v = med.get(f"{impl}|{mode}|{size}")
                return "not run" if v is None else f"{v * 1e3:.2f}"

            def ratio(other: str, mode: str = mode, size: int = size) -> str:
                a, b = med.get(f"index-writer|{mode}|{size}"), med.get(f"{other}|{mode}|{size}")
                return "—" if a is None or b is None else f"{a / b:.2f}×"

            who = "1 (sequential)" if mode == "sequential" else f"{cfg.writers} processes"
            lines.append(f"| {size:,} | {who} | {ms('index-writer')} | {ms('floor')} | "
                         f"{ms('bare')} | {ms('original')} | {ratio('floor')} | "
                         f"{ratio('bare')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        impl, index, tag, writes, go, src = argv[1:7]
        worker(impl, index, tag, int(writes), go, src)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1k rows, few writes: a smoke run")
    ap.add_argument("--delay", type=float, default=0.0002,
                    help="seconds added to every filesystem operation (0.0002)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    fusefs = load_fusefs()
    reason = fusefs.unavailable()
    if reason:
        print(f"cannot mount the FUSE harness: {reason}", file=sys.stderr)
        return 1
    src: str | None = None
    try:
        src = str(compare._original.source_path())
        compare._load_original_class(src)
    except Exception as e:
        log(f"the original is unavailable, measuring without it: {e}")
        src = None
    base = Path(tempfile.mkdtemp(prefix="index-writer-latency-"))
    started = time.perf_counter()
    try:
        source = base / "source"
        source.mkdir()
        with fusefs.mounted(source, base / "mount", locks="posix", delay=args.delay) as mount:
            log(f"FUSE passthrough at {mount}, {args.delay * 1e3:g} ms per operation")
            res = bench(cfg, mount, source, src)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
    text = table(cfg, res)
    command = "python benchmarks/latency.py" + "".join(f" {a}" for a in argv)
    print(f"ms per write_entry(replace_existing=True) with {args.delay * 1e3:g} ms per "
          f"filesystem operation (medians of {cfg.repeats}):\n\n{text}")
    if res["original_note"]:
        print(f"\n{res['original_note']}.")
    if args.json:
        args.json.write_text(json.dumps({
            "command": command,
            "delay_seconds": args.delay,
            "quick": args.quick,
            "config": cfg.__dict__,
            "machine": compare.machine_facts(),
            "seconds": round(time.perf_counter() - started, 1),
            "date": dt.datetime.now().astimezone().isoformat(timespec="minutes"),
            "median_ms": {k: statistics.median(v) * 1e3 for k, v in res["samples"].items()},
            "samples_ms": {k: [x * 1e3 for x in v] for k, v in res["samples"].items()},
            "writes": res["writes"],
            "original_note": res["original_note"],
            "markdown": text,
        }, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
