"""``index-writer show``: print a consistent snapshot of an index."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from .._check import index_columns
from .._writer import IndexWriter
from .arguments import add_timeout_option, column_list
from .common import CliError, require_file, stdout
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
    """Print the index; exit status 0."""
    index = Path(args.index)
    columns = _header(index)
    rows = IndexWriter(index, timeout=args.timeout).read_rows()
    if rows:
        columns = list(rows[0])
    if args.columns:
        unknown = [c for c in args.columns if c not in columns]
        if unknown:
            have = ", ".join(columns) if columns else "none"
            raise CliError(f"{index}: no column {', '.join(map(repr, unknown))} (columns: {have})")
        columns = args.columns
    out = stdout()
    _WRITERS[args.format](out, columns, rows)
    out.flush()
    return 0
