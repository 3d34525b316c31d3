"""Inspect an index file without the writer's internals, and de-duplicate it.

Used by ``index-writer check``. :func:`check_index` reads the file once, never
modifies it and reports everything a human should know before trusting the
index: rows, columns, duplicate paths, rows with more fields than the header,
a missing final newline, and the first problem that stops reading the file:
bytes that are not UTF-8, a NUL byte, an unterminated quote or text after a
closing quote. :func:`dedupe` keeps the last row of each path, under the index lock,
with an atomic rewrite.

The file is parsed by the index's own table format (:mod:`._table`), with its
rules, line numbers and byte offsets and without a field size limit; this
module only analyses what that scanner yields. The byte span of every record
is known, so a de-duplicated file keeps the kept rows, blank lines, line
endings and byte order mark byte-for-byte.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ._table import BOM, Scanner, TableError

__all__ = [
    "CheckReport",
    "DedupeRefused",
    "check_index",
    "dedupe",
    "readable_rows",
]

logger = logging.getLogger(__name__)

#: How many examples (line numbers, paths) a report lists per problem.
EXAMPLES = 5


@dataclass
class _Row:
    """One record: first line, byte span and fields.

    The span runs from the record's first byte to just after its own
    terminator; blank lines around it are not part of it, so dropping the
    span keeps them.
    """

    line: int
    start: int
    end: int
    fields: list[str]


@dataclass
class _Reading:
    """What the table scanner yielded for a whole file, and where it stopped."""

    bom: bool
    rows: list[_Row] = field(default_factory=list)
    #: Blank lines just before each record of ``rows``.
    blank_before: list[int] = field(default_factory=list)
    #: Blank lines after the last record (none counted after an error).
    blank_after: int = 0
    #: Line terminators of records and blank lines: "\r\n", "\n", "\r" or "".
    eols: Counter[str] = field(default_factory=Counter)
    #: Physical lines read.
    lines: int = 0
    #: The first fatal problem, and the first line of the record it is in.
    error: csv.Error | None = None
    error_start: int = 0


def _blank_eols(gap: bytes) -> Counter[str]:
    """Terminators of the blank lines between two records (``gap`` holds nothing else)."""
    crlf = gap.count(b"\r\n")
    return Counter({"\r\n": crlf, "\n": gap.count(b"\n") - crlf, "\r": gap.count(b"\r") - crlf})


def _scan(data: bytes) -> _Reading:
    """Read ``data`` with the table scanner, as far as it is well-formed."""
    bom = data.startswith(BOM)
    begin = len(BOM) if bom else 0
    stream = io.BytesIO(data)
    stream.seek(begin)
    scanner = Scanner(stream, begin, 0)
    reading = _Reading(bom=bom)
    end, end_line = begin, 0
    try:
        for line, start, fields in scanner.records():
            reading.blank_before.append(line - end_line - 1)
            if start != end:
                reading.eols.update(_blank_eols(data[end:start]))
            end, end_line = scanner.offset, scanner.line
            reading.eols[scanner.last_eol] += 1
            reading.rows.append(_Row(line, start, end, fields))
    except csv.Error as e:
        reading.error = e
        reading.error_start = scanner.next_start[0]
        reading.lines = scanner.line
        return reading
    reading.blank_after = scanner.line - end_line
    reading.eols.update(_blank_eols(data[end : scanner.offset]))
    reading.lines = scanner.line
    return reading


def _read(data: bytes) -> _Reading:
    """Like :func:`_scan`, but keeping every record before a byte that is not UTF-8.

    The scanner decodes a block ahead of the records it yields, so a bad byte
    also hides the records just before it. They are read again from the bytes
    before the bad one, where the record holding it is cut short: dropped if
    it parses, ignored if its quote is left open. Any other error there comes
    earlier in the file than the bad byte, so it is the one reported.
    """
    reading = _scan(data)
    error = reading.error
    if not isinstance(error, TableError) or error.kind != "not-utf8" or error.offset is None:
        return reading
    before = _scan(data[: error.offset])
    if before.error is not None and not (
        isinstance(before.error, TableError) and before.error.kind == "unclosed-quote"
    ):
        return before
    if before.error is None and before.eols[""]:
        del before.rows[-1], before.blank_before[-1], before.eols[""]
    before.error, before.error_start = reading.error, reading.error_start
    before.lines = reading.lines
    return before


def readable_rows(data: bytes) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of an index file, up to anything malformed.

    For looking into a file that may be damaged: reading stops quietly at the
    first problem that stops the scanner (see :func:`check_index` for what it
    is).

    Examples
    --------
    >>> readable_rows(b'path,v\\na,1\\n\\nb,"2\\n3"\\nc,"open\\n')
    (['path', 'v'], [['a', '1'], ['b', '2\\n3']])
    """
    rows = [row.fields for row in _read(data).rows]
    return (rows[0] if rows else []), rows[1:]


@dataclass
class CheckReport:
    """What :func:`check_index` found.

    Attributes
    ----------
    index_path : Path
        The file inspected.
    rows : int
        Data rows (blank lines not counted).
    columns : list[str]
        Header names in file order.
    problems : list[str]
        One line each; empty when the index is clean.
    notes : list[str]
        Harmless facts worth knowing (byte order mark, CR LF line endings,
        blank lines, short rows).
    duplicate_rows : int
        Rows that repeat a path seen later in the file (what ``--dedupe``
        would remove).
    blocking : bool
        Problems that make a safe de-duplication impossible (not UTF-8, NUL
        bytes, unterminated quote, text after a closing quote, extra fields,
        no or ambiguous header).
    """

    index_path: Path
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicate_rows: int = 0
    blocking: bool = False

    @property
    def clean(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def summary(self) -> str:
        """One line: the verdict, rows and columns.

        Examples
        --------
        >>> CheckReport(Path("i.csv"), rows=2, columns=["path", "a"]).summary()
        'i.csv: ok: 2 rows, 2 columns (path, a)'
        """
        shown = ", ".join(self.columns[:8])
        if len(self.columns) > 8:
            shown += f", ... {len(self.columns) - 8} more"
        cols = f"{len(self.columns)} column{'s' if len(self.columns) != 1 else ''}"
        if self.columns:
            cols += f" ({shown})"
        rows = f"{self.rows} row{'s' if self.rows != 1 else ''}"
        if self.clean:
            verdict = "ok"
        else:
            k = len(self.problems)
            verdict = f"{k} problem{'s' if k != 1 else ''}"
        return f"{self.index_path}: {verdict}: {rows}, {cols}"

    def render(self) -> str:
        """The summary line, then one indented line per problem and note."""
        lines = [self.summary()]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _lines(numbers: list[int], total: int) -> str:
    shown = ", ".join(str(n) for n in numbers[:EXAMPLES])
    if total > EXAMPLES:
        shown += f" and {total - EXAMPLES} more"
    return shown


def _show(value: str) -> str:
    if len(value) > 60:
        value = value[:57] + "..."
    return repr(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _fatal(reading: _Reading, data: bytes) -> tuple[str, int]:
    """The problem that stopped the scanner, and the line where reading stopped."""
    error = reading.error
    if not isinstance(error, TableError):  # pragma: no cover - the scanner raises only these
        return f"malformed CSV: {error}", reading.lines
    line, start = error.line, reading.error_start
    if error.kind == "not-utf8" and error.offset is not None:
        byte = f"0x{data[error.offset]:02x}"
        return f"not UTF-8: byte {byte} at line {line} (byte offset {error.offset})", line
    if error.kind == "nul":
        return f"binary data: NUL byte at line {line}", line
    if error.kind == "unclosed-quote":
        return f"unterminated quote: {error.detail.partition(': ')[2]}", reading.lines
    if error.kind == "text-after-quote":
        return f"text after a closing quote on 1 line: {start}", line
    return f"malformed CSV at line {line}: {error.detail}", line


def _analyse(index_path: Path, data: bytes, filepath_column: str) -> tuple[CheckReport, list[_Row]]:
    """Build the report; also return the data records (for :func:`dedupe`)."""
    report = CheckReport(index_path=index_path)
    if not data:
        report.notes.append("empty file (0 bytes): a writer will add the header")
        return report, []
    reading = _read(data)
    if reading.bom:
        report.notes.append("starts with a UTF-8 byte order mark (kept by writers)")
    stopped = ""
    if reading.error is not None:
        problem, line = _fatal(reading, data)
        report.problems.append(problem)
        report.blocking = True
        if not problem.startswith("unterminated quote"):
            stopped = (
                f"reading stopped at line {line}: the counts and the other checks "
                "cover only the rows before it"
            )
    if not reading.rows:
        if stopped:
            report.notes.append(stopped)
        elif reading.lines:
            report.notes.append("only blank lines: a writer will add the header")
        else:
            report.notes.append("no header")
        return report, []

    header, body = reading.rows[0], reading.rows[1:]
    leading_blank = reading.blank_before[0]
    if leading_blank:
        report.notes.append(
            f"{_plural(leading_blank, 'blank line')} before the header (ignored by readers)"
        )
    names = header.fields
    report.columns = names
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        report.problems.append(
            f"the header repeats column name(s): {', '.join(map(repr, repeated))}"
        )
        report.blocking = True

    width = len(names)
    path_col = names.index(filepath_column) if filepath_column in names else -1
    if path_col == -1:
        report.problems.append(
            f"no {filepath_column!r} column (name the path column with --filepath-column)"
        )
        report.blocking = True

    extra: list[int] = []
    short = 0
    first_line: dict[str, int] = {}
    dup_lines: dict[str, list[int]] = {}
    for row in body:
        if len(row.fields) > width:
            extra.append(row.line)
        elif len(row.fields) < width:
            short += 1
        if path_col >= 0:
            key = row.fields[path_col] if path_col < len(row.fields) else ""
            if key in first_line:
                dup_lines.setdefault(key, [first_line[key]]).append(row.line)
            else:
                first_line[key] = row.line
    report.rows = len(body)
    blank = sum(reading.blank_before[1:]) + reading.blank_after

    if reading.error is None and reading.eols[""]:
        report.problems.append(f"no newline at the end of the file (after line {reading.lines})")
    if extra:
        report.problems.append(
            f"{len(extra)} row{'s have' if len(extra) != 1 else ' has'} more "
            f"fields than the header's {width}: "
            f"line{'s' if len(extra) != 1 else ''} {_lines(extra, len(extra))}"
        )
        report.blocking = True
    if dup_lines:
        report.duplicate_rows = sum(len(v) - 1 for v in dup_lines.values())
        examples = "; ".join(
            f"{_show(k)} on lines {_lines(v, len(v))}" for k, v in list(dup_lines.items())[:3]
        )
        more = f"; and {len(dup_lines) - 3} more paths" if len(dup_lines) > 3 else ""
        report.problems.append(
            f"{_plural(len(dup_lines), 'duplicate path')} "
            f"({_plural(report.duplicate_rows, 'redundant row')}; "
            f"'check --dedupe' keeps the last of each): {examples}{more}"
        )
    if stopped:
        report.notes.append(stopped)
    if short:
        report.notes.append(
            f"{short} row{'s have' if short != 1 else ' has'} fewer fields than the "
            "header (the missing ones read as empty)"
        )
    if blank:
        report.notes.append(f"{_plural(blank, 'blank line')} (ignored by readers)")
    crlf, lf = reading.eols["\r\n"], reading.eols["\n"]
    if crlf and lf:
        report.notes.append(f"mixed line endings: {crlf} CR LF, {lf} LF")
    elif crlf:
        report.notes.append("CR LF line endings (kept by writers)")
    return report, body


def check_index(index_path: str | os.PathLike[str], filepath_column: str = "path") -> CheckReport:
    """Inspect an index file without modifying it.

    Parameters
    ----------
    index_path : str or os.PathLike
        The CSV index.
    filepath_column : str, optional
        The column holding the paths; duplicates are looked for in it.

    Returns
    -------
    CheckReport
        ``report.clean`` is ``True`` when nothing is wrong.

    Raises
    ------
    OSError
        The file cannot be read (missing, a directory, no permission).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "i.csv").write_text("path,a\\nx,1\\nx,2\\ny,3")
    >>> report = check_index(d / "i.csv")
    >>> report.clean, report.rows, report.duplicate_rows
    (False, 3, 1)
    >>> print(report.problems[0])
    no newline at the end of the file (after line 4)
    """
    path = Path(index_path)
    data = path.read_bytes()
    report, _ = _analyse(path, data, filepath_column)
    return report


class DedupeRefused(Exception):
    """The index has problems that make a de-duplication unsafe.

    Attributes
    ----------
    report : CheckReport
        What was found; the file was not changed.
    """

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        super().__init__(f"{report.index_path}: not de-duplicating: fix the problems above first")


def _keep_last(records: list[_Row], col: int) -> list[_Row]:
    """The records that repeat a path found again later in the file."""
    last: dict[str, int] = {}
    for i, rec in enumerate(records):
        last[rec.fields[col] if col < len(rec.fields) else ""] = i
    keep = set(last.values())
    return [rec for i, rec in enumerate(records) if i not in keep]


def dedupe(
    index_path: str | os.PathLike[str],
    *,
    filepath_column: str = "path",
    lock_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> int:
    """Keep only the last row of each path; return how many rows were removed.

    Runs under the index lock every ``IndexWriter`` takes (thread layer and
    fasteners file lock), after rolling back any write a crashed writer left
    half-done, so no writer appends in between. The header, a byte order
    mark, line endings and every kept row stay byte-for-byte; the new file
    goes to a temporary file in the same directory, gets the old one's
    permission bits and group, is fsynced, and replaces the index with
    :func:`os.replace` (the directory is fsynced too). Nothing is written
    when there are no duplicates.

    Parameters
    ----------
    index_path : str or os.PathLike
        The CSV index.
    filepath_column : str, optional
        The column holding the paths.
    lock_path : str or os.PathLike, optional
        Defaults to ``<index_path>.lock``, like ``IndexWriter``.
    timeout : float, optional
        Seconds to wait for the lock; ``None`` waits forever.

    Returns
    -------
    int
        Rows removed.

    Raises
    ------
    DedupeRefused
        The file is malformed (``CheckReport.blocking``); it is untouched.
    IndexLockTimeoutError
        The lock was not acquired in time.
    OSError
        Reading or replacing the file failed; it is untouched.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "i.csv").write_text("path,a\\nx,1\\ny,2\\nx,3\\n")
    >>> dedupe(d / "i.csv")
    1
    >>> print((d / "i.csv").read_text(), end="")
    path,a
    y,2
    x,3
    """
    from ._writer import IndexWriter, replace_contents

    path = Path(index_path)
    if not path.exists():
        # Taking the lock would create files next to a path that is not there.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    writer = IndexWriter(path, lock_path, timeout=timeout, durable=True)
    drop: list[_Row] = []

    def without_duplicates(data: bytes) -> bytes | None:
        report, records = _analyse(path, data, filepath_column)
        if report.blocking:
            raise DedupeRefused(report)
        if not report.duplicate_rows:
            return None
        drop.extend(_keep_last(records, report.columns.index(filepath_column)))
        chunks: list[bytes] = []
        pos = 0
        for rec in drop:
            chunks.append(data[pos : rec.start])
            pos = rec.end
        chunks.append(data[pos:])
        return b"".join(chunks)

    if not replace_contents(writer, without_duplicates):
        return 0
    logger.info("removed %d duplicate rows from %s", len(drop), path)
    return len(drop)
