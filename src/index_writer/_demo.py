"""The demo workload: many workers record fake output files in one index.

The many-workers demo, med-imagetools' own example for its ``IndexWriter``, as
``index-writer demo`` runs it: a pool of ``workers``
processes (or threads) runs one task per entry; each task makes a fresh
:class:`~index_writer.IndexWriter` and calls ``write_entry`` once for
``output/fake_file_{i}.nii.gz`` with :func:`generate_context`'s fields.
Afterwards :func:`verify_index` reads the index back and checks that every
entry is there exactly once, with every column and plausible values.

:func:`run_workload` takes another ``task`` too: ``benchmarks/rewrite_all.py``
runs the same workload with the read-all/rewrite-all strategy for comparison.

Examples
--------
>>> import tempfile
>>> index = Path(tempfile.mkdtemp()) / "index.csv"
>>> result = run_workload(index, workers=2, entries=20, engine="threads")
>>> result.errors, verify_index(index, 20)
([], (20, []))
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.pool
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from ._errors import IndexWriterError
from ._progress import Progress

__all__ = [
    "DEMO_COLUMNS",
    "MODALITIES",
    "START_METHODS",
    "RunResult",
    "demo_path",
    "generate_context",
    "run_workload",
    "verify_index",
]

logger = logging.getLogger(__name__)

Engine = Literal["processes", "threads"]
#: One pool task: ``(index_path, i)`` -> an error text, or None on success.
Task = Callable[[tuple[str, int]], str | None]

MODALITIES = ("CT", "MR", "SEG")
DEMO_COLUMNS = ("path", "subject_id", "modality", "timestamp", "quality_score")
#: How worker processes can be started (:mod:`multiprocessing` start methods).
START_METHODS = ("fork", "spawn", "forkserver")
_DEMO_PATH = re.compile(r"output/fake_file_(\d+)\.nii\.gz")


def default_start_method() -> str:
    """``"forkserver"`` where the platform has it (POSIX), else ``"spawn"`` (Windows).

    Both start workers without copying the parent's threads and locks; it is
    Python 3.14's default on Linux, chosen here on every Python version so the
    demo behaves the same everywhere.

    Examples
    --------
    >>> default_start_method() in ("forkserver", "spawn")
    True
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def demo_path(i: int) -> str:
    """The fake output file recorded by task ``i``.

    Examples
    --------
    >>> demo_path(7)
    'output/fake_file_7.nii.gz'
    """
    return f"output/fake_file_{i}.nii.gz"


def generate_context(i: int) -> dict[str, object]:
    """The metadata the many-workers demo records for task ``i``.

    Examples
    --------
    >>> ctx = generate_context(13)
    >>> ctx["subject_id"], ctx["modality"] in MODALITIES, 0 <= ctx["quality_score"] <= 1
    ('subject_3', True, True)
    """
    return {
        "subject_id": f"subject_{i % 10}",
        "modality": random.choice(MODALITIES),
        "timestamp": datetime.now().isoformat(),
        "quality_score": round(random.uniform(0, 1), 3),
    }


def _task_index_writer(task: tuple[str, int]) -> str | None:
    """One pool task: a new writer, one entry. Returns an error text or None."""
    from . import IndexWriter

    index_path, i = task
    try:
        IndexWriter(index_path).write_entry(demo_path(i), generate_context(i))
    except (IndexWriterError, OSError, ValueError) as exc:
        return f"{demo_path(i)}: {type(exc).__name__}: {exc}"
    return None


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops the pool quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class RunResult:
    """What one run of the workload did.

    Attributes
    ----------
    engine : str
        ``"processes"`` or ``"threads"``.
    start_method : str or None
        How the worker processes were started; None for threads.
    workers, entries : int
        Pool size and number of tasks.
    elapsed : float
        Wall-clock seconds for the whole run, pool start-up and shutdown
        included.
    errors : list[str]
        One text per task that raised.
    """

    engine: str
    start_method: str | None
    workers: int
    entries: int
    elapsed: float
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Entries per second (``inf`` for an immeasurably fast run)."""
        return self.entries / self.elapsed if self.elapsed > 0 else math.inf


def run_workload(
    index_path: str | os.PathLike[str],
    *,
    workers: int = 12,
    entries: int = 1000,
    engine: Engine = "processes",
    start_method: str | None = None,
    progress: Progress | None = None,
    task: Task | None = None,
) -> RunResult:
    """Run the demo workload: ``entries`` tasks on a pool of ``workers``.

    Parameters
    ----------
    index_path : str or os.PathLike
        The index to write.
    workers : int, optional
        Pool size.
    entries : int, optional
        Number of tasks; task ``i`` records :func:`demo_path` ``(i)``.
    engine : {"processes", "threads"}, optional
        A :class:`multiprocessing.pool.Pool` of processes or a
        :class:`multiprocessing.pool.ThreadPool`.
    start_method : {"fork", "spawn", "forkserver"}, optional
        How to start worker processes; default :func:`default_start_method`.
        ``ValueError`` if the platform does not have it.
    progress : Progress, optional
        Updated once per finished task.
    task : Callable[[tuple[str, int]], str | None], optional
        What task ``i`` runs, given ``(index_path, i)``; returns an error
        text or None. The default (None) records :func:`demo_path` ``(i)`` with a new
        :class:`~index_writer.IndexWriter`. With processes it must be a
        module-level function (it is pickled by name).

    Returns
    -------
    RunResult
        Timing and the errors of tasks that failed (a failing task does not
        stop the run).
    """
    if workers < 1 or entries < 0:
        raise ValueError("workers must be >= 1 and entries >= 0")
    tasks = ((os.fspath(index_path), i) for i in range(entries))
    errors: list[str] = []
    start = time.perf_counter()
    pool: multiprocessing.pool.Pool
    if engine == "processes":
        start_method = start_method or default_start_method()
        context = multiprocessing.get_context(start_method)
        pool = context.Pool(workers, initializer=_ignore_sigint)
    elif engine == "threads":
        start_method = None
        pool = multiprocessing.pool.ThreadPool(workers)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    with pool:
        results: Iterator[str | None] = pool.imap_unordered(
            task or _task_index_writer, tasks, chunksize=1
        )
        for error in results:
            if error is not None:
                errors.append(error)
            if progress is not None:
                progress.update()
        pool.close()
        pool.join()
    elapsed = time.perf_counter() - start
    if errors:
        logger.info("%d of %d tasks failed; first: %s", len(errors), entries, errors[0])
    return RunResult(engine, start_method, workers, entries, elapsed, errors)


def _value_problem(row: dict[str, str], i: int | None) -> str | None:
    """Why a demo row's values are implausible, or None."""
    if i is not None and row.get("subject_id") != f"subject_{i % 10}":
        return f"subject_id {row.get('subject_id')!r}"
    if row.get("modality") not in MODALITIES:
        return f"modality {row.get('modality')!r}"
    try:
        score = float(row.get("quality_score", ""))
    except ValueError:
        return f"quality_score {row.get('quality_score')!r}"
    if not 0 <= score <= 1:
        return f"quality_score {row.get('quality_score')!r}"
    try:
        datetime.fromisoformat(row.get("timestamp", ""))
    except ValueError:
        return f"timestamp {row.get('timestamp')!r}"
    return None


def _examples(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def verify_index(
    index_path: str | os.PathLike[str], entries: int | None = None
) -> tuple[int, list[str]]:
    """Check a demo index: every entry exactly once, every column, sane values.

    Reads the index with :meth:`~index_writer.IndexWriter.read_rows` (a
    locked, consistent snapshot) and checks the row count, that the paths
    are exactly ``demo_path(0) ... demo_path(entries - 1)`` with none
    repeated, that every column of :data:`DEMO_COLUMNS` is present, and that
    each row's values are plausible and in the right column (``subject_id``
    matches the path's number, ``modality`` is one of :data:`MODALITIES`,
    ``quality_score`` is in [0, 1], ``timestamp`` is ISO 8601).

    Parameters
    ----------
    index_path : str or os.PathLike
        The index the demo wrote.
    entries : int, optional
        How many entries the demo wrote. By default, as many as the index
        shows: one more than the highest entry number in it (so a lost entry
        is found unless it is the last one), or its number of rows if it
        holds no demo path at all.

    Returns
    -------
    tuple[int, list[str]]
        The number of entries checked for, and one line per problem (none
        when the index is correct).

    Examples
    --------
    >>> import tempfile
    >>> index = Path(tempfile.mkdtemp()) / "index.csv"
    >>> verify_index(index, 5)[1][0].endswith("does not exist")
    True
    """
    from . import IndexWriter

    path = Path(index_path)
    if not path.exists():
        return entries or 0, [f"{path} does not exist"]
    try:
        rows = IndexWriter(path).read_rows()
    except IndexWriterError as exc:
        return entries or 0, [str(exc)]
    except OSError as exc:
        return entries or 0, [f"{path}: {exc.strerror or exc}"]
    if entries is None:
        entries = _entries_shown(rows)

    problems: list[str] = []
    if len(rows) != entries:
        problems.append(f"expected {entries} rows, found {len(rows)}")
    columns = list(rows[0]) if rows else []
    missing_cols = [c for c in DEMO_COLUMNS if c not in columns]
    if rows and missing_cols:
        problems.append(f"missing column(s): {', '.join(missing_cols)}")
    counts = Counter(row.get("path", "") for row in rows)
    repeated = sorted(p for p, k in counts.items() if k > 1)
    if repeated:
        problems.append(f"{len(repeated)} path(s) recorded more than once: {_examples(repeated)}")
    number = {demo_path(i): i for i in range(entries)}
    absent = [p for p in number if p not in counts]
    if absent:
        problems.append(f"{len(absent)} entries missing: {_examples(absent)}")
    unexpected = sorted(p for p in counts if p not in number)
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected path(s): {_examples([repr(p) for p in unexpected])}"
        )
    empty: list[str] = []
    bad: list[str] = []
    for row in rows:
        p = row.get("path", "")
        if any(not row.get(c) for c in DEMO_COLUMNS):
            empty.append(p)
            continue
        why = _value_problem(row, number.get(p))
        if why is not None:
            bad.append(f"{p} ({why})")
    if empty:
        problems.append(f"{len(empty)} row(s) with an empty column: {_examples(empty)}")
    if bad:
        problems.append(f"{len(bad)} row(s) with implausible values: {_examples(bad)}")
    return entries, problems


def _entries_shown(rows: list[dict[str, str]]) -> int:
    """How many entries a demo index holds by the look of it (see verify_index)."""
    numbers = (_DEMO_PATH.fullmatch(row.get("path", "")) for row in rows)
    highest = max((int(m[1]) for m in numbers if m), default=None)
    return len(rows) if highest is None else highest + 1
