"""``index-writer show``: print a consistent snapshot of an index."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._check import check_index
from .._writer import IndexWriter
from .arguments import column_list, seconds
from .common import CliError, require_file, stdout
from .output import TABLE_CELL_MAX, write_csv, write_json, write_table

_WRITERS = {"csv": write_csv, "json": write_json, "table": write_table}


def register(subparsers: Any) -> None:
    """Add the ``show`` subcommand to ``subparsers``."""
    show = subparsers.add_parser(
        "show",
        help="print the index",
        description=(
            "Print a consistent snapshot of INDEX, read under the lock. "
            "'table' is an aligned view for terminals: control characters are "
            "escaped and cells longer than "
            f"{TABLE_CELL_MAX} columns are cut short (csv and json are exact)."
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
    show.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="give up after S seconds waiting for the lock (default: wait)",
    )
    show.set_defaults(run=run, parser=show)


def run(args: argparse.Namespace) -> int:
    """Print the index; exit status 0."""
    index = Path(args.index)
    require_file(index)
    rows = IndexWriter(index, timeout=args.timeout).read_rows()
    columns = list(rows[0]) if rows else check_index(index).columns
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
