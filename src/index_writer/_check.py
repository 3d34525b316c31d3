"""Inspect an index file without the writer's internals, and de-duplicate it.

Used by ``index-writer check``. :func:`check_index` reads the file once, never
modifies it and reports everything a human should know before trusting the
index: rows, columns, duplicate paths, rows with more fields than the header,
a missing final newline, bytes that are not UTF-8, NUL bytes and unterminated
quotes. :func:`dedupe` keeps the last row of each path, under the index lock,
with an atomic rewrite.

The file is tokenised as bytes with the rules of :mod:`csv`'s ``excel``
dialect (``,`` separates fields, ``"`` quotes them, ``""`` is a literal quote,
a record ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` outside quotes). UTF-8
never uses bytes below 0x80 inside a multi-byte character, so splitting the
raw bytes is exactly equivalent to splitting the decoded text, and the byte
span of every record is known: a de-duplicated file keeps the kept rows
byte-for-byte. The scanner has no field size limit and never touches
:func:`csv.field_size_limit`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CheckReport",
    "DedupeRefused",
    "Record",
    "check_index",
    "dedupe",
    "scan_records",
]

logger = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"
_UNQUOTED = re.compile(rb"[^,\r\n]*")
_QUOTE = 0x22
_COMMA = 0x2C
_CR = 0x0D
_LF = 0x0A

#: How many examples (line numbers, paths) a report lists per problem.
EXAMPLES = 5


@dataclass
class Record:
    """One CSV record as found in the file.

    Attributes
    ----------
    line : int
        1-based physical line on which the record starts.
    start, end : int
        Byte span of the record in the file, terminator included.
    fields : list[bytes]
        Field values, unquoted, still UTF-8 encoded. Empty for a blank line.
    terminated : bool
        Whether a line terminator ends the record (``False`` only for the last
        record of a file without a final newline).
    unterminated_quote : bool
        A quoted field opened in this record never closes; the record runs to
        the end of the file.
    text_after_quote : bool
        A closing quote is followed by something other than ``,`` or a line
        end (``"ab"c``); :mod:`csv` silently reads ``abc``.
    """

    line: int
    start: int
    end: int
    fields: list[bytes]
    terminated: bool = True
    unterminated_quote: bool = False
    text_after_quote: bool = False


def scan_records(data: bytes, offset: int = 0) -> Iterator[Record]:
    """Split CSV bytes into records, the way :func:`csv.reader` would.

    Parameters
    ----------
    data : bytes
        The file's content.
    offset : int, optional
        Where to start (3 to skip a UTF-8 byte order mark).

    Yields
    ------
    Record
        Every record in order, blank lines included (with no fields). After a
        record with ``unterminated_quote`` nothing more is yielded.

    Examples
    --------
    >>> [r.fields for r in scan_records(b'path,note\\na,"x, ""y"" z"\\n')]
    [[b'path', b'note'], [b'a', b'x, "y" z']]
    >>> [r.terminated for r in scan_records(b"a\\nb")]
    [True, False]
    """
    n = len(data)
    pos = offset
    line = 1 + data.count(b"\n", 0, offset)
    while pos < n:
        nl = data.find(b"\n", pos)
        stop = n if nl == -1 else nl
        seg = data[pos:stop]
        if b'"' not in seg and b"\r" not in seg[:-1]:
            # Fast path: no quoting on this physical line.
            body = seg[:-1] if seg.endswith(b"\r") else seg
            end = n if nl == -1 else nl + 1
            yield Record(
                line=line,
                start=pos,
                end=end,
                fields=body.split(b",") if body else [],
                terminated=nl != -1 or seg.endswith(b"\r"),
            )
            pos = end
            line += 1
            continue
        record = _scan_slow(data, pos, line)
        yield record
        if record.unterminated_quote:
            return
        line += _count_lines(data, record.start, record.end)
        pos = record.end


_LONE_CR = re.compile(rb"\r(?!\n)")


def _count_lines(data: bytes, start: int, end: int) -> int:
    """Physical lines ended in ``data[start:end]`` (LF, CR LF or a lone CR)."""
    n = data.count(b"\n", start, end)
    if data.find(b"\r", start, end) != -1:
        n += len(_LONE_CR.findall(data, start, end))
    return n


def _scan_slow(data: bytes, pos: int, line: int) -> Record:
    """Tokenise one record that contains quotes or a lone CR."""
    n = len(data)
    start = pos
    fields: list[bytes] = []
    after_quote = False
    while True:
        if pos < n and data[pos] == _QUOTE:
            q = pos + 1
            while True:
                close = data.find(b'"', q)
                if close == -1:
                    fields.append(data[pos + 1 :].replace(b'""', b'"'))
                    return Record(
                        line=line,
                        start=start,
                        end=n,
                        fields=fields,
                        terminated=False,
                        unterminated_quote=True,
                        text_after_quote=after_quote,
                    )
                if data[close + 1 : close + 2] == b'"':
                    q = close + 2
                    continue
                break
            value = data[pos + 1 : close].replace(b'""', b'"')
            pos = close + 1
            if pos < n and data[pos] not in (_COMMA, _CR, _LF):
                after_quote = True
                m = _UNQUOTED.match(data, pos)
                assert m is not None  # the pattern matches the empty string
                value += m.group()
                pos = m.end()
        else:
            m = _UNQUOTED.match(data, pos)
            assert m is not None
            value = m.group()
            pos = m.end()
        fields.append(value)
        if pos >= n:
            return Record(line, start, n, fields, False, False, after_quote)
        c = data[pos]
        if c == _COMMA:
            pos += 1
            continue
        if c == _CR and data[pos + 1 : pos + 2] == b"\n":
            pos += 2
        else:
            pos += 1
        if fields == [b""] and data[start] != _QUOTE:
            fields = []  # a blank line (ended by a lone CR)
        return Record(line, start, pos, fields, True, False, after_quote)


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
        bytes, unterminated quote, extra fields, no or ambiguous header).
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


def _show(value: bytes) -> str:
    text = value.decode("utf-8", "backslashreplace")
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(text)


def _encoding_problem(data: bytes, offset: int) -> str | None:
    try:
        data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = offset + exc.start
        line = data.count(b"\n", 0, bad) + 1
        bad_lines = 0
        for raw in data[offset:].split(b"\n"):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines += 1
        return (
            f"not UTF-8: byte 0x{data[bad]:02x} at line {line} (byte offset {bad}); "
            f"{bad_lines} line{'s' if bad_lines != 1 else ''} affected"
        )
    return None


def _analyse(
    index_path: Path, data: bytes, filepath_column: str
) -> tuple[CheckReport, list[Record]]:
    """Build the report; also return the data records (for :func:`dedupe`)."""
    report = CheckReport(index_path=index_path)
    if not data:
        report.notes.append("empty file (0 bytes): a writer will add the header")
        return report, []
    offset = 0
    if data.startswith(_BOM):
        offset = len(_BOM)
        report.notes.append("starts with a UTF-8 byte order mark (kept by writers)")

    problem = _encoding_problem(data, offset)
    if problem:
        report.problems.append(problem)
        report.blocking = True
    nul = data.find(b"\x00", offset)
    if nul != -1:
        nul_line = data.count(b"\n", 0, nul) + 1
        report.problems.append(f"binary data: NUL byte at line {nul_line}")
        report.blocking = True

    records = list(scan_records(data, offset))
    if not records:
        report.notes.append("no header")
        return report, []

    first = 0
    while first < len(records) and not records[first].fields:
        first += 1
    leading_blank = first
    if first == len(records):
        report.notes.append("only blank lines: a writer will add the header")
        return report, []
    header, body = records[first], records[first + 1 :]
    if leading_blank:
        report.notes.append(
            f"{leading_blank} blank line{'s' if leading_blank != 1 else ''} before "
            "the header (ignored by readers)"
        )
    names = [f.decode("utf-8", "replace") for f in header.fields]
    report.columns = names
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        report.problems.append(
            f"the header repeats column name(s): {', '.join(map(repr, repeated))}"
        )
        report.blocking = True

    width = len(names)
    path_col = names.index(filepath_column) if filepath_column in names else -1
    if names and path_col == -1:
        report.problems.append(
            f"no {filepath_column!r} column (name the path column with --filepath-column)"
        )
        report.blocking = True

    data_records: list[Record] = []
    extra: list[int] = []
    short = blank = after_quote = 0
    after_quote_lines: list[int] = []
    first_line: dict[bytes, int] = {}
    dup_lines: dict[bytes, list[int]] = {}
    crlf = lf = 0
    for rec in records:
        if rec.terminated:
            if data[rec.end - 2 : rec.end] == b"\r\n":
                crlf += 1
            elif data[rec.end - 1 : rec.end] == b"\n":
                lf += 1
        if rec.text_after_quote:
            after_quote += 1
            after_quote_lines.append(rec.line)
    for rec in body:
        if not rec.fields:
            blank += 1
            continue
        data_records.append(rec)
        if len(rec.fields) > width:
            extra.append(rec.line)
        elif len(rec.fields) < width:
            short += 1
        if path_col >= 0:
            key = rec.fields[path_col] if path_col < len(rec.fields) else b""
            if key in first_line:
                dup_lines.setdefault(key, [first_line[key]]).append(rec.line)
            else:
                first_line[key] = rec.line
    report.rows = len(data_records)

    last = records[-1]
    if last.unterminated_quote:
        report.problems.append(
            f"unterminated quote: the quoted field opened on line {last.line} "
            "never closes (the rest of the file is inside it)"
        )
        report.blocking = True
    elif not last.terminated:
        report.problems.append(f"no newline at the end of the file (after line {last.line})")
    if extra:
        report.problems.append(
            f"{len(extra)} row{'s have' if len(extra) != 1 else ' has'} more "
            f"fields than the header's {width}: "
            f"line{'s' if len(extra) != 1 else ''} {_lines(extra, len(extra))}"
        )
        report.blocking = True
    if after_quote:
        report.problems.append(
            f"text after a closing quote on {after_quote} "
            f"line{'s' if after_quote != 1 else ''}: "
            f"{_lines(after_quote_lines, after_quote)}"
        )
        report.blocking = True
    if dup_lines:
        report.duplicate_rows = sum(len(v) - 1 for v in dup_lines.values())
        examples = "; ".join(
            f"{_show(k)} on lines {_lines(v, len(v))}" for k, v in list(dup_lines.items())[:3]
        )
        more = f"; and {len(dup_lines) - 3} more paths" if len(dup_lines) > 3 else ""
        report.problems.append(
            f"{len(dup_lines)} duplicate path{'s' if len(dup_lines) != 1 else ''} "
            f"({report.duplicate_rows} redundant "
            f"row{'s' if report.duplicate_rows != 1 else ''}; "
            f"'check --dedupe' keeps the last of each): {examples}{more}"
        )
    if short:
        report.notes.append(
            f"{short} row{'s have' if short != 1 else ' has'} fewer fields than the "
            "header (the missing ones read as empty)"
        )
    if blank:
        report.notes.append(f"{blank} blank line{'s' if blank != 1 else ''} (ignored by readers)")
    if crlf and lf:
        report.notes.append(f"mixed line endings: {crlf} CR LF, {lf} LF")
    elif crlf:
        report.notes.append("CR LF line endings (kept by writers)")
    return report, data_records


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


def _keep_last(records: list[Record], col: int) -> list[Record]:
    """The records that repeat a path found again later in the file."""
    last: dict[bytes, int] = {}
    for i, rec in enumerate(records):
        last[rec.fields[col] if col < len(rec.fields) else b""] = i
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
    from ._writer import IndexWriter

    path = Path(index_path)
    if not path.exists():
        # Taking the lock would create files next to a path that is not there.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    writer = IndexWriter(path, lock_path, timeout=timeout, durable=True)
    drop: list[Record] = []

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

    if not writer._replace_contents(without_duplicates):
        return 0
    logger.info("removed %d duplicate rows from %s", len(drop), path)
    return len(drop)
