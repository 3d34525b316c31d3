"""The read-all/rewrite-all strategy, re-implemented minimally for comparison.

This is the technique ``index-writer`` replaces: take an inter-process file
lock, read the whole index, merge the columns, append the row and write the
whole file again. Every write costs O(rows), so a run of ``n`` writes costs
O(n²); the lock belongs to the process, so threads of one process are not
excluded; and the rewrite truncates the file in place, so a writer killed
mid-rewrite loses rows. ``benchmarks/rewrite_all.py`` runs the demo workload
with it as the baseline. It is written for this project, not copied from any
other. It is not part of the installed package; do not use it for real work.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

import fasteners

from index_writer._demo import demo_path, generate_context

__all__ = ["RewriteAllIndexWriter", "rewrite_all_task"]


class RewriteAllIndexWriter:
    """Append one row by reading and rewriting the whole CSV under a file lock.

    Parameters
    ----------
    index_path : str or os.PathLike
        The CSV index.
    lock_path : str or os.PathLike, optional
        Defaults to ``<index_path>.lock``.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> w = RewriteAllIndexWriter(d / "i.csv")
    >>> w.write_entry("a.nii.gz", {"subject": 1})
    >>> w.write_entry("b.nii.gz", {"subject": 2, "modality": "CT"})
    >>> print((d / "i.csv").read_text(), end="")
    path,subject,modality
    a.nii.gz,1,
    b.nii.gz,2,CT
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        lock_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.index_path = Path(index_path)
        self.lock_path = Path(lock_path) if lock_path else Path(f"{index_path}.lock")

    def write_entry(
        self,
        path: str | os.PathLike[str],
        context: Mapping[str, object],
        filepath_column: str = "path",
    ) -> None:
        """Read every row, add this one, write every row back."""
        row = {filepath_column: str(path)}
        row.update({k: "" if v is None else str(v) for k, v in context.items()})
        with fasteners.InterProcessLock(str(self.lock_path)):
            columns: list[str] = []
            rows: list[dict[str, str]] = []
            if self.index_path.exists():
                with self.index_path.open(newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    columns = list(reader.fieldnames or [])
                    rows = list(reader)
            columns += [k for k in row if k not in columns]
            rows.append(row)
            with self.index_path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)


def rewrite_all_task(task: tuple[str, int]) -> str | None:
    """One demo task with this writer (see ``index_writer._demo.run_workload``)."""
    index_path, i = task
    try:
        RewriteAllIndexWriter(index_path).write_entry(demo_path(i), generate_context(i))
    except Exception as exc:  # the baseline may fail in any way; count it
        return f"{demo_path(i)}: {type(exc).__name__}: {exc}"
    return None
