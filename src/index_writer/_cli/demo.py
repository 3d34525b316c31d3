"""``index-writer demo``: the many-workers example, verified and timed."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._demo import (
    DEMO_COLUMNS,
    START_METHODS,
    RunResult,
    default_start_method,
    run_workload,
    verify_index,
)
from .._progress import Progress
from .arguments import positive_int
from .common import PROG, CliError, UsageError, require_file, say, shorten, stderr

#: Entries the demo writes unless told otherwise.
DEFAULT_ENTRIES = 1000


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``subparsers``."""
    demo = subparsers.add_parser(
        "demo",
        help="run the many-workers example, verify it and time it",
        description=(
            "N workers record M fake output files (output/fake_file_{i}.nii.gz, "
            "with subject_id, modality, timestamp and quality_score) in one "
            "index, one write_entry per task; then the index is verified and "
            "the time, entries/s and index path are printed. Exit status 0 "
            "only if the verification passed."
        ),
    )
    demo.add_argument(
        "--workers", type=positive_int, default=12, metavar="N", help="pool size (12)"
    )
    demo.add_argument(
        "--entries",
        type=positive_int,
        metavar="M",
        help=f"entries to write ({DEFAULT_ENTRIES}); with --verify-only, how many "
        "the index must hold (default: as many as it shows)",
    )
    demo.add_argument(
        "--index",
        metavar="PATH",
        help="index to create (must not exist; default: index.csv in a new "
        "temporary directory, kept and printed)",
    )
    demo.add_argument(
        "--engine",
        choices=("processes", "threads"),
        default="processes",
        help="run the tasks in a process pool (default) or a thread pool",
    )
    demo.add_argument(
        "--start-method",
        choices=START_METHODS,
        help="how worker processes start (default: forkserver where the platform "
        "has it, else spawn)",
    )
    demo.add_argument(
        "--verify-only",
        action="store_true",
        help="write nothing: verify the existing demo index at --index",
    )
    demo.set_defaults(run=run, parser=demo)


def _print_run(label: str, result: RunResult) -> None:
    entries = "1 entry" if result.entries == 1 else f"{result.entries} entries"
    say(f"{label}: {entries} in {result.elapsed:.2f} s ({result.rate:,.0f} entries/s)")


def _report_task_errors(result: RunResult) -> None:
    err = stderr()
    if not result.errors or err is None:
        return
    say(f"{PROG} demo: {len(result.errors)} of {result.entries} tasks failed:", err)
    for text in result.errors[:5]:
        say(f"  {shorten(text)}", err)


def _verification(index: Path, entries: int | None) -> bool:
    entries, problems = verify_index(index, entries)
    if not problems:
        say(
            f"verified: {entries} rows, {entries} unique paths, "
            f"columns {', '.join(DEMO_COLUMNS)} all present"
        )
        return True
    err = stderr()
    if err is not None:
        say(f"{PROG} demo: VERIFICATION FAILED for {index}:", err)
        for problem in problems:
            say(f"  - {problem}", err)
    return False


def _new_index(args: argparse.Namespace) -> Path:
    if not args.index:
        return Path(tempfile.mkdtemp(prefix="index-writer-demo-")) / "index.csv"
    index = Path(args.index)
    if index.exists() or index.is_symlink():
        raise CliError(
            f"{index}: already exists; the demo writes a fresh index (choose a "
            "new --index path, or use --verify-only to check this one)"
        )
    index.parent.mkdir(parents=True, exist_ok=True)
    return index


def _verify_only(args: argparse.Namespace) -> int:
    if not args.index:
        raise UsageError("--verify-only needs --index PATH")
    index = Path(args.index)
    require_file(index)
    ok = _verification(index, args.entries)
    say(f"index: {index}")
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    """Run (or only verify) the demo; exit status 0 if the verification passed."""
    if args.verify_only:
        return _verify_only(args)
    method = args.start_method
    if method is not None and method not in multiprocessing.get_all_start_methods():
        raise UsageError(
            f"--start-method {method} is not available on this platform "
            f"(available: {', '.join(multiprocessing.get_all_start_methods())})"
        )
    entries = args.entries or DEFAULT_ENTRIES
    index = _new_index(args)
    pool = f"{args.workers} worker {args.engine}"
    if args.engine == "processes":
        method = method or default_start_method()
        pool += f" (started by {method})"
    say(f"{PROG} demo: {pool} record {entries} files in {index}, one write_entry per task")
    sys.stdout.flush()
    with Progress(entries, "index-writer", stderr()) as progress:
        result = run_workload(
            index,
            workers=args.workers,
            entries=entries,
            engine=args.engine,
            start_method=method,
            progress=progress,
        )
    _print_run("index-writer", result)
    _report_task_errors(result)
    ok = _verification(index, entries)
    say(f"index: {index}")
    return 0 if ok else 1
