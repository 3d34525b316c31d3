"""``index-writer show``: print a consistent snapshot of an index."""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._check import index_columns
from .._errors import IndexReadError
from .._state import iter_rows
from .._writer import IndexWriter, copy_snapshot
from .arguments import add_lock_path_option, add_timeout_option, column_list
from .common import CliError, printing, require_file, stdout
from .output import TABLE_CELL_MAX, write_csv, write_json, write_table

_WRITERS = {"csv": write_csv, "json": write_json, "table": write_table}


def register(subparsers: Any) -> None:
    """Add the ``show`` subcommand to ``subparsers``."""
    show = subparsers.add_parser(
        "show",
        help="print the index",
        description=(
            "Print a consistent snapshot of INDEX, read under the lock. csv "
            "(UTF-8, LF line ends) and json are exact; 'table' is an aligned "
            "view for terminals: control characters are escaped and cells "
            f"longer than {TABLE_CELL_MAX} columns are cut short."
        ),
    )
    show.add_argument("index", metavar="INDEX", help="the CSV index")
    show.add_argument(
        "--columns",
        type=column_list,
        metavar="A,B",
        help="only these columns, in this order",
    )
    show.add_argument(
        "--format",
        choices=("csv", "json", "table"),
        default="csv",
        help="output format (csv)",
    )
    add_lock_path_option(show)
    add_timeout_option(show, "give up")
    show.set_defaults(run=run, parser=show)


def _header(index: Path) -> list[str]:
    """The index's columns, read without the lock: a file that is no index is
    refused before taking the lock creates anything next to it."""
    require_file(index)
    try:
        return index_columns(index) or []
    except csv.Error as e:
        raise CliError(f"{index}: not a CSV index: {e}") from None


def run(args: argparse.Namespace) -> int:
    """Print the index; exit status 0.

    The snapshot is copied (under the lock, which is held only for the copy)
    to a temporary file, checked, and printed from there one row at a time,
    so memory stays bounded by the largest row and a slow reader of the
    output (a pager) never holds up writers.
    """
    index = Path(args.index)
    columns = _header(index)
    with tempfile.TemporaryFile(prefix="index-writer-show-") as copy:
        copy_snapshot(IndexWriter(index, args.lock_path, timeout=args.timeout), copy.fileno())
        size = os.fstat(copy.fileno()).st_size

        def rows() -> Iterator[dict[str, str]]:
            return iter_rows(copy.fileno(), size)[1]

        try:  # a first pass checks it all: nothing is printed of a malformed index
            found, check = iter_rows(copy.fileno(), size)
            for _ in check:
                pass
        except csv.Error as e:
            raise IndexReadError(index, e) from e
        columns = found or columns
        if args.columns:
            unknown = [c for c in args.columns if c not in columns]
            if unknown:
                have = ", ".join(columns) if columns else "none"
                raise CliError(
                    f"{index}: no column {', '.join(map(repr, unknown))} (columns: {have})"
                )
            columns = args.columns
        out = stdout()
        _WRITERS[args.format](out, columns, rows)
        with printing():
            out.flush()
    return 0
