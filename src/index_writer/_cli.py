"""The ``index-writer`` command (also ``python -m index_writer``).

Subcommands:

``demo``
    Run the seed's workload (N workers, M entries, one ``write_entry`` per
    task), verify the index and print the speed; ``--compare`` also runs the
    read-all/rewrite-all strategy and prints the ratio.
``add``
    Record one entry from a shell script or a SLURM array job.
``show``
    Print a consistent snapshot of an index as CSV, JSON or an aligned table.
``check``
    Inspect an index without changing it; ``--dedupe`` keeps the last row of
    each path.
``doctor``
    Check whether writers may share an index in a directory (its mount, live
    lock probes, and with ``--hosts N`` a check across hosts).

Exit status: 0 on success, 1 when the command failed or found problems (one
line on stderr names the file and the cause), 2 for bad arguments (with the
usage), 130 when interrupted. Expected errors never print a traceback.

Examples
--------
>>> main(["add", "--help"]) == 0  # doctest: +ELLIPSIS
usage: index-writer add ...
True
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import stat
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import IndexWriter, IndexWriterError, __version__
from ._check import CheckReport, DedupeRefused, check_index, readable_rows
from ._check import dedupe as dedupe
from ._demo import (
    DEMO_COLUMNS,
    Progress,
    RunResult,
    demo_path,
    run_workload,
    verify_index,
)

__all__ = [
    "build_context",
    "build_parser",
    "dedupe",
    "main",
    "parse_json_object",
    "parse_key_value",
]

PROG = "index-writer"

#: Longest cell shown by ``show --format table`` (in terminal columns).
TABLE_CELL_MAX = 60


class CliError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1."""


class UsageError(Exception):
    """Bad arguments found after parsing: usage on stderr, exit status 2."""


# --------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def _column_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for ``index-writer`` and its subcommands.

    Returns
    -------
    argparse.ArgumentParser
        Each subcommand's namespace carries ``handler`` (the function to run)
        and ``parser`` (its own parser, for usage errors).

    Examples
    --------
    >>> args = build_parser().parse_args(["add", "i.csv", "a.nii", "k=v"])
    >>> args.command, args.index, args.path, args.pairs, args.strict
    ('add', 'i.csv', 'a.nii', ['k=v'], False)
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Record the files many workers produce in one shared CSV index: "
            "thread-, process- and crash-safe, with constant-time appends."
        ),
        epilog="Run 'index-writer COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = subs.add_parser(
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
        "--workers", type=_positive_int, default=12, metavar="N", help="pool size (12)"
    )
    demo.add_argument(
        "--entries",
        type=_positive_int,
        default=1000,
        metavar="M",
        help="entries to write (1000)",
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
        "--compare",
        action="store_true",
        help="also run the workload with the read-all/rewrite-all strategy and print the ratio",
    )
    demo.add_argument(
        "--verify-only",
        action="store_true",
        help="write nothing: verify the existing demo index at --index, "
        "which should hold --entries entries",
    )
    demo.set_defaults(handler=_cmd_demo, parser=demo)

    add = subs.add_parser(
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
        type=_seconds,
        metavar="S",
        help="give up after S seconds waiting for the lock (default: wait)",
    )
    add.add_argument(
        "--durable",
        action="store_true",
        help="fsync before returning, to survive a power cut",
    )
    add.set_defaults(handler=_cmd_add, parser=add)

    show = subs.add_parser(
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
        type=_column_list,
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
        type=_seconds,
        metavar="S",
        help="give up after S seconds waiting for the lock (default: wait)",
    )
    show.set_defaults(handler=_cmd_show, parser=show)

    check = subs.add_parser(
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
    check.add_argument(
        "--filepath-column",
        default="path",
        metavar="NAME",
        help="the column holding the paths ('path')",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="with --dedupe: give up after S seconds waiting for the lock",
    )
    check.set_defaults(handler=_cmd_check, parser=check)
    _register_doctor(subs)
    return parser


def _register_doctor(subs: Any) -> None:
    doctor = subs.add_parser(
        "doctor",
        help="is it safe to share an index in a directory?",
        description=(
            "Check whether writers may share an index in DIR: read how DIR is "
            "mounted, then probe it live with processes on this host (POSIX "
            "locks exclude and are released when their holder is killed, "
            "O_APPEND appends land whole, os.replace is atomic), in a private "
            "subdirectory that is removed afterwards. With --hosts N, start the "
            "same command at once on N hosts (srun -N N index-writer doctor DIR "
            "--hosts N): they also check that their locks exclude each other. "
            "The first line is the verdict: safe, safe-single-host, unsafe or "
            "failed. Exit status 0 for safe and safe-single-host, 1 otherwise."
        ),
    )
    doctor.add_argument("directory", metavar="DIR", help="where the index would live")
    doctor.add_argument(
        "--hosts",
        type=_positive_int,
        default=1,
        metavar="N",
        help="how many hosts run the check together (1)",
    )
    doctor.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="give up after S seconds waiting for a lock, a probe or the other hosts (60)",
    )
    doctor.add_argument(
        "--run-id",
        metavar="ID",
        help="name of the shared probe directory of a multi-host check (default: "
        "$SLURM_JOB_ID.$SLURM_STEP_ID, else 'shared'); the same on every host",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=_cmd_doctor, parser=doctor)


def parse_key_value(item: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` at the first ``=``.

    Parameters
    ----------
    item : str
        The command-line word.

    Returns
    -------
    tuple[str, str]
        The key (non-empty) and the value (may be empty, may contain ``=``).

    Raises
    ------
    ValueError
        No ``=``, or an empty key.

    Examples
    --------
    >>> parse_key_value("note=a=b")
    ('note', 'a=b')
    >>> parse_key_value("empty=")
    ('empty', '')
    """
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"expected KEY=VALUE, got {item!r} (no '=')")
    if not key:
        raise ValueError(f"expected KEY=VALUE, got {item!r} (empty key)")
    return key, value


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_json_object(text: str) -> dict[str, str]:
    """Parse ``--json``: a JSON object whose values become column values.

    Strings are kept as they are, ``null`` becomes an empty value, anything
    else (numbers, booleans, arrays, objects) its compact JSON text.

    Parameters
    ----------
    text : str
        The option's argument.

    Returns
    -------
    dict[str, str]
        Column values in the object's order.

    Raises
    ------
    ValueError
        Not valid JSON, not an object, or a key given twice.

    Examples
    --------
    >>> parse_json_object('{"note": "a, \\\\"b\\\\"", "n": 1.5, "ok": true, "x": null}')
    {'note': 'a, "b"', 'n': '1.5', 'ok': 'true', 'x': ''}
    """

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"--json: key {key!r} given twice")
            out[key] = value
        return out

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise ValueError(f"--json: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"--json: expected a JSON object, got {type(obj).__name__}")
    return {key: _json_text(value) for key, value in obj.items()}


def build_context(
    path: str,
    pairs: Sequence[str],
    json_text: str | None,
    filepath_column: str = "path",
) -> dict[str, str]:
    """The ``context`` for ``add``: ``KEY=VALUE`` words, then ``--json``.

    Parameters
    ----------
    path : str
        The entry's path (a key equal to ``filepath_column`` must repeat it).
    pairs : Sequence[str]
        ``KEY=VALUE`` words.
    json_text : str or None
        The ``--json`` object.
    filepath_column : str, optional
        The path column.

    Returns
    -------
    dict[str, str]
        Column values, in the order given.

    Raises
    ------
    ValueError
        A malformed word or object, a key given twice, or the path column
        given a different value than ``path``.

    Examples
    --------
    >>> build_context("a.nii", ["subject=s1"], '{"note": "x,y"}')
    {'subject': 's1', 'note': 'x,y'}
    """
    items = [parse_key_value(item) for item in pairs]
    if json_text is not None:
        items += parse_json_object(json_text).items()
    context: dict[str, str] = {}
    for key, value in items:
        if key in context:
            raise ValueError(f"key {key!r} given more than once")
        if key == filepath_column:
            if value != path:
                raise ValueError(
                    f"{key!r} is the path column: it holds PATH ({path!r}), not {value!r}"
                )
            continue
        context[key] = value
    return context


# ------------------------------------------------------------------ output


def _out() -> TextIO:
    return sys.stdout


def _err() -> TextIO | None:
    return sys.stderr


def _say(text: str, stream: TextIO | None = None) -> None:
    stream = _out() if stream is None else stream
    stream.write(text + "\n")


def _display_width(text: str) -> int:
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _cell(value: str, limit: int = TABLE_CELL_MAX) -> str:
    if not value.isprintable():
        value = "".join(
            ch
            if ch.isprintable()
            else _ESCAPES.get(ch) or ch.encode("unicode_escape").decode("ascii")
            for ch in value
        )
    if _display_width(value) <= limit:
        return value
    out = []
    width = 0
    for ch in value:
        w = _display_width(ch)
        if width + w > limit - 3:
            break
        out.append(ch)
        width += w
    return "".join(out) + "..."


def _table_lines(columns: list[str], rows: list[dict[str, str]]) -> Iterator[str]:
    head = [_cell(c) for c in columns]
    body = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [_display_width(h) for h in head]
    for cells in body:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], _display_width(cell))

    def line(cells: list[str]) -> str:
        padded = [c + " " * (w - _display_width(c)) for c, w in zip(cells, widths, strict=True)]
        return "  ".join(padded).rstrip()

    yield line(head)
    yield "  ".join("-" * w for w in widths)
    for cells in body:
        yield line(cells)
    yield f"({len(rows)} row{'s' if len(rows) != 1 else ''})"


# ----------------------------------------------------------------- helpers


def _require_file(path: Path) -> None:
    """Fail (exit 1) unless ``path`` is an existing regular file; never create it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{path}: is a directory, not an index file")


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- commands


def _cmd_add(args: argparse.Namespace) -> int:
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


def _cmd_show(args: argparse.Namespace) -> int:
    index = Path(args.index)
    _require_file(index)
    rows = IndexWriter(index, timeout=args.timeout).read_rows()
    columns = list(rows[0]) if rows else check_index(index).columns
    if args.columns:
        unknown = [c for c in args.columns if c not in columns]
        if unknown:
            have = ", ".join(columns) if columns else "none"
            raise CliError(f"{index}: no column {', '.join(map(repr, unknown))} (columns: {have})")
        columns = args.columns
    out = _out()
    if args.format == "json":
        json.dump(
            [{c: row[c] for c in columns} for row in rows],
            out,
            ensure_ascii=False,
            indent=2,
        )
        out.write("\n")
    elif args.format == "table":
        for text in _table_lines(columns, rows):
            out.write(text + "\n")
    else:
        writer = csv.writer(out, lineterminator="\n")
        if columns:
            writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in rows)
    out.flush()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    index = Path(args.index)
    _require_file(index)
    if not args.filepath_column:
        raise UsageError("--filepath-column must not be empty")
    out = _out()
    if args.dedupe:
        try:
            removed = dedupe(index, filepath_column=args.filepath_column, timeout=args.timeout)
        except DedupeRefused as e:
            _say(e.report.render(), out)
            raise CliError(str(e)) from None
        if removed:
            _say(f"{index}: removed {_plural(removed, 'duplicate row')}", out)
        else:
            _say(f"{index}: no duplicate paths; nothing removed", out)
    report: CheckReport = check_index(index, args.filepath_column)
    if report.clean:
        _say(report.summary(), out)
        return 0
    _say(report.render(), out)
    return 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor import diagnose

    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # clean up the probe directory, as for Ctrl-C

    restore = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        restore = signal.signal(signal.SIGTERM, terminate)
    try:
        report = diagnose(args.directory, hosts=args.hosts, timeout=args.timeout,
                          run_id=args.run_id)
    except ValueError as e:
        raise UsageError(str(e).replace("run_id must", "--run-id must")) from None
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    out = _out()
    _say(report.to_json() if args.json else report.render(), out)
    out.flush()
    return report.exit_status


def _rewrite_all_kept(index: Path, entries: int) -> str:
    """How many demo entries a rewrite-all index kept, without trusting it."""
    try:
        data = index.read_bytes()
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    report = check_index(index)
    columns, rows = readable_rows(data)
    col = columns.index("path") if "path" in columns else 0
    expected = {demo_path(i) for i in range(entries)}
    kept = {r[col] for r in rows if len(r) > col} & expected
    text = f"kept {len(kept)} of {entries} entries"
    if report.problems:
        text += f"; its index has problems: {report.problems[0]}"
    return text


def _print_run(label: str, result: RunResult) -> None:
    entries = "1 entry" if result.entries == 1 else f"{result.entries} entries"
    _say(f"{label}: {entries} in {result.elapsed:.2f} s ({result.rate:,.0f} entries/s)")


def _report_task_errors(result: RunResult) -> None:
    if not result.errors:
        return
    err = _err()
    if err is None:
        return
    _say(f"{PROG} demo: {len(result.errors)} of {result.entries} tasks failed:", err)
    for text in result.errors[:5]:
        _say(f"  {_shorten(text)}", err)


def _verification(index: Path, entries: int) -> bool:
    problems = verify_index(index, entries)
    if not problems:
        _say(
            f"verified: {entries} rows, {entries} unique paths, "
            f"columns {', '.join(DEMO_COLUMNS)} all present"
        )
        return True
    err = _err()
    if err is not None:
        _say(f"{PROG} demo: VERIFICATION FAILED for {index}:", err)
        for problem in problems:
            _say(f"  - {problem}", err)
    return False


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.verify_only:
        if not args.index:
            raise UsageError("--verify-only needs --index PATH")
        index = Path(args.index)
        _require_file(index)
        ok = _verification(index, args.entries)
        _say(f"index: {index}")
        return 0 if ok else 1

    if args.index:
        index = Path(args.index)
        if index.exists() or index.is_symlink():
            raise CliError(
                f"{index}: already exists; the demo writes a fresh index (choose a "
                "new --index path, or use --verify-only to check this one)"
            )
        index.parent.mkdir(parents=True, exist_ok=True)
    else:
        index = Path(tempfile.mkdtemp(prefix="index-writer-demo-")) / "index.csv"
    baseline = index.with_name(f"{index.stem}-rewrite-all{index.suffix}")
    if args.compare and (baseline.exists() or baseline.is_symlink()):
        raise CliError(f"{baseline}: already exists (the --compare run writes it)")

    engine = "worker processes" if args.engine == "processes" else "worker threads"
    _say(
        f"{PROG} demo: {args.workers} {engine} record {args.entries} files in "
        f"{index}, one write_entry per task"
    )
    sys.stdout.flush()
    with Progress(args.entries, "index-writer", _err()) as progress:
        result = run_workload(
            index,
            workers=args.workers,
            entries=args.entries,
            engine=args.engine,
            progress=progress,
        )
    _print_run("index-writer", result)
    _report_task_errors(result)
    ok = _verification(index, args.entries)

    if args.compare:
        sys.stdout.flush()
        with Progress(args.entries, "read-all/rewrite-all", _err()) as progress:
            naive = run_workload(
                baseline,
                workers=args.workers,
                entries=args.entries,
                engine=args.engine,
                strategy="rewrite-all",
                progress=progress,
            )
        _print_run("read-all/rewrite-all", naive)
        _say(f"  {_rewrite_all_kept(baseline, args.entries)}")
        if naive.errors:
            first = _shorten(naive.errors[0])
            _say(f"  {_plural(len(naive.errors), 'write')} raised, e.g. {first}")
        ratio = naive.elapsed / result.elapsed if result.elapsed > 0 else math.inf
        _say(
            f"index-writer was {ratio:.1f}x as fast as read-all/rewrite-all "
            f"({result.elapsed:.2f} s vs {naive.elapsed:.2f} s)"
        )
        _say(f"read-all/rewrite-all index: {baseline}")
    _say(f"index: {index}")
    return 0 if ok else 1


# -------------------------------------------------------------------- main


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    err = _err()
    if err is not None:
        _say(str(e.code), err)
    return 1


def _fail(message: str) -> int:
    err = _err()
    if err is not None:
        with contextlib.suppress(OSError, ValueError):
            _say(f"{PROG}: error: {message}", err)
    return 1


def _describe_os_error(e: OSError, fallback: str | None) -> str:
    name = e.filename if e.filename is not None else fallback
    cause = e.strerror or str(e)
    if e.filename2 is not None:
        return f"{name} -> {e.filename2}: {cause}"
    return f"{name}: {cause}" if name else cause


def _quiet_broken_pipe() -> int:
    # The reader went away (``show ... | head``): stop quietly, and keep the
    # interpreter from complaining while flushing stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``index-writer`` command line.

    Parameters
    ----------
    argv : list[str], optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 success, 1 failure or problems found, 2 bad
        arguments, 130 interrupted. The console script passes it to
        :func:`sys.exit`.

    Examples
    --------
    >>> main(["show", "/nonexistent/index.csv"])
    1
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse stops collecting KEY=VALUE words at the first option, so
        # `add INDEX PATH --strict k=v` leaves k=v over: take it back.
        if extra and getattr(args, "command", None) == "add":
            pairs = [a for a in extra if "=" in a and not a.startswith("-")]
            args.pairs += pairs
            extra = [a for a in extra if a not in pairs]
        if extra:
            (getattr(args, "parser", None) or parser).error(
                f"unrecognized arguments: {' '.join(extra)}"
            )
    except SystemExit as e:  # usage errors (2), --help and --version (0)
        return _exit_code(e)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as e:
        sub: argparse.ArgumentParser = args.parser
        try:
            sub.error(str(e))
        except SystemExit as exit_:
            return _exit_code(exit_)
        return 2  # pragma: no cover - error() always exits
    except CliError as e:
        return _fail(str(e))
    except IndexWriterError as e:
        return _fail(str(e))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        return _fail(_describe_os_error(e, getattr(args, "index", None)))
    except UnicodeEncodeError as e:
        return _fail(
            f"cannot print {e.object[e.start : e.end]!r} in this terminal's "
            f"encoding ({e.encoding}); set PYTHONIOENCODING=utf-8"
        )
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
