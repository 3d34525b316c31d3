"""``index-writer check``: look for problems in an index, optionally de-duplicate it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._check import CheckReport, DedupeRefusedError, check_index, dedupe
from .arguments import add_filepath_column_option, add_lock_path_option, add_timeout_option
from .common import CliError, UsageError, plural, require_file, say, stdout


def register(subparsers: Any) -> None:
    """Add the ``check`` subcommand to ``subparsers``."""
    check = subparsers.add_parser(
        "check",
        help="look for problems in an index",
        description=(
            "Read INDEX without changing it and report rows, columns, "
            "duplicate paths, rows with more fields than the header, a missing "
            "final newline, bytes that are not UTF-8, NUL bytes and "
            "unterminated quotes. Exit status 0 and one line when clean, 1 and "
            "a short report otherwise. --dedupe keeps the last row of each "
            "path (under the lock, replacing the file atomically)."
        ),
    )
    check.add_argument("index", metavar="INDEX", help="the CSV index")
    check.add_argument(
        "--dedupe",
        action="store_true",
        help="remove all but the last row of each path, and say how many",
    )
    add_filepath_column_option(check)
    add_lock_path_option(check, "with --dedupe: ")
    add_timeout_option(check, "with --dedupe: give up")
    check.set_defaults(run=run, parser=check)


def run(args: argparse.Namespace) -> int:
    """Check (and de-duplicate); exit status 0 when clean, 1 otherwise."""
    if not args.filepath_column:
        raise UsageError("--filepath-column must not be empty")
    index = Path(args.index)
    require_file(index)
    out = stdout()
    if args.dedupe:
        try:
            removed = dedupe(
                index,
                filepath_column=args.filepath_column,
                lock_path=args.lock_path,
                timeout=args.timeout,
            )
        except DedupeRefusedError as e:
            say(e.report.render(), out)
            raise CliError(f"{index}: not de-duplicating: fix the problems above first") from None
        if removed:
            say(f"{index}: removed {plural(removed, 'duplicate row')}", out)
        else:
            say(f"{index}: no duplicate paths; nothing removed", out)
    report: CheckReport = check_index(index, args.filepath_column)
    if report.clean:
        say(report.summary(), out)
        return 0
    say(report.render(), out)
    return 1
