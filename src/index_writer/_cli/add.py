"""``index-writer add``: record one entry from a shell script or a batch job."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from .._check import index_columns
from .._errors import IndexSchemaMismatchError
from .._writer import IndexWriter
from .arguments import (
    add_filepath_column_option,
    add_lock_path_option,
    add_timeout_option,
    build_context,
)
from .common import CliError, UsageError, shorten


def register(subparsers: Any) -> None:
    """Add the ``add`` subcommand to ``subparsers``."""
    add = subparsers.add_parser(
        "add",
        help="record one entry",
        description=(
            "Record PATH in INDEX with the given values. INDEX is created if "
            "missing, with its directory; an existing INDEX must be an index "
            "with the path column. KEY=VALUE splits at the first '='; --json "
            "takes a JSON object, for values with any characters (strings are "
            "written as they are, null as empty, other values as JSON text)."
        ),
    )
    add.add_argument("index", metavar="INDEX", help="the CSV index")
    add.add_argument("path", metavar="PATH", help="the file to record")
    add.add_argument(
        "pairs", metavar="KEY=VALUE", nargs="*", default=[], help="column values (optional)"
    )
    add.add_argument(
        "--json",
        metavar="OBJECT",
        action="append",
        default=[],
        help="column values as a JSON object (may be given more than once)",
    )
    add.add_argument(
        "--replace",
        action="store_true",
        help="replace the whole row holding PATH: columns not given become "
        "empty (replace_existing=True)",
    )
    add.add_argument(
        "--strict",
        action="store_true",
        help="fail instead of adding new columns (merge_columns=False)",
    )
    add_filepath_column_option(add)
    add_lock_path_option(add)
    add_timeout_option(add, "give up")
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


def _check_words(args: argparse.Namespace) -> dict[str, str]:
    """The entry's context; UsageError for empty words and malformed values."""
    for word, name in ((args.index, "INDEX"), (args.path, "PATH")):
        if not word:
            raise UsageError(f"{name} is empty (an unset shell variable?)")
    if not args.filepath_column:
        raise UsageError("--filepath-column must not be empty")
    try:
        return build_context(args.path, args.pairs, args.json, args.filepath_column)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_target(index: Path, column: str) -> None:
    """Refuse a directory, or an existing file that is not an index with ``column``.

    Only the header is read, without the lock, so a mistaken INDEX (a swapped
    argument, a data file) is left exactly as it was, with no lock file
    next to it.
    """
    if index.is_dir():
        raise CliError(f"{index}: is a directory, not an index file")
    try:
        columns = index_columns(index)
    except FileNotFoundError:
        return
    except csv.Error as e:
        raise CliError(f"{index}: not a CSV index: {e}") from None
    if columns is not None and column not in columns:
        raise CliError(
            f"{index}: has no {column!r} column (its columns: {shorten(', '.join(columns), 80)})"
            ": is INDEX the first argument? Name another path column with --filepath-column"
        )


def run(args: argparse.Namespace) -> int:
    """Record the entry; exit status 0."""
    context = _check_words(args)
    index = Path(args.index)
    _check_target(index, args.filepath_column)
    writer = IndexWriter(index, args.lock_path, timeout=args.timeout, durable=args.durable)
    try:
        writer.write_entry(
            args.path,
            context,
            filepath_column=args.filepath_column,
            replace_existing=args.replace,
            merge_columns=not args.strict,
        )
    except IndexSchemaMismatchError as e:
        raise CliError(
            f"Schema mismatch in index file '{e.index_path}'. Missing fields: "
            f"{sorted(e.missing_fields)}. Run without --strict to add these columns."
        ) from None
    except (ValueError, TypeError) as e:  # e.g. a NUL character in a --json value
        raise UsageError(str(e)) from None
    return 0
