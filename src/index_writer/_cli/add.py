"""``index-writer add``: record one entry from a shell script or a batch job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._writer import IndexWriter
from .arguments import build_context, seconds
from .common import CliError, UsageError


def register(subparsers: Any) -> None:
    """Add the ``add`` subcommand to ``subparsers``."""
    add = subparsers.add_parser(
        "add",
        help="record one entry",
        description=(
            "Record PATH in INDEX with the given values. INDEX is created if "
            "missing; its directory must exist. KEY=VALUE splits at the first "
            "'='; --json takes a JSON object, for values with any characters "
            "(strings are written as they are, null as empty, other values "
            "as JSON text)."
        ),
    )
    add.add_argument("index", metavar="INDEX", help="the CSV index")
    add.add_argument("path", metavar="PATH", help="the file to record")
    add.add_argument("pairs", metavar="KEY=VALUE", nargs="*", help="column values")
    add.add_argument("--json", metavar="OBJECT", help="column values as a JSON object")
    add.add_argument(
        "--replace",
        action="store_true",
        help="replace the row already holding PATH (replace_existing=True)",
    )
    add.add_argument(
        "--strict",
        action="store_true",
        help="fail instead of adding new columns (merge_columns=False)",
    )
    add.add_argument(
        "--filepath-column",
        default="path",
        metavar="NAME",
        help="the column holding the paths ('path')",
    )
    add.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="give up after S seconds waiting for the lock (default: wait)",
    )
    add.add_argument(
        "--durable",
        action="store_true",
        help="fsync before returning, to survive a power cut",
    )
    add.set_defaults(run=run, parser=add, take_extra=take_extra)


def take_extra(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Take back the ``KEY=VALUE`` words argparse left over; return the rest.

    argparse stops collecting ``KEY=VALUE`` words at the first option, so
    ``add INDEX PATH --strict k=v`` leaves ``k=v`` unparsed.
    """
    pairs = [a for a in extra if "=" in a and not a.startswith("-")]
    args.pairs += pairs
    return [a for a in extra if a not in pairs]


def run(args: argparse.Namespace) -> int:
    """Record the entry; exit status 0."""
    try:
        context = build_context(args.path, args.pairs, args.json, args.filepath_column)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not args.filepath_column:
        raise UsageError("--filepath-column must not be empty")
    index = Path(args.index)
    parent = index.parent
    if not parent.is_dir():
        raise CliError(f"{index}: directory {str(parent)!r} does not exist")
    if index.is_dir():
        raise CliError(f"{index}: is a directory, not an index file")
    writer = IndexWriter(index, timeout=args.timeout, durable=args.durable)
    try:
        writer.write_entry(
            args.path,
            context,
            filepath_column=args.filepath_column,
            replace_existing=args.replace,
            merge_columns=not args.strict,
        )
    except (ValueError, TypeError) as e:  # e.g. a NUL character in a --json value
        raise UsageError(str(e)) from None
    return 0
