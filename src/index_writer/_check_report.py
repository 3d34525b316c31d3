"""What a check of an index file found: :class:`CheckReport`, and how it is built.

:func:`inspect` reads the file with :class:`._check_scan.Reader` (twice when
some rows' path hashes repeat) and turns what it counted into one line per
problem and note. :func:`._check.check_index` returns its report;
:func:`._check.dedupe` also uses the duplicate groups it found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ._check_scan import EXAMPLES, Groups, Reader, Source, Tally, repeated_hashes
from ._errors import IndexWriterError
from ._state import incomplete_tail
from ._table import TableError

__all__ = ["CheckReport", "DedupeRefusedError", "inspect", "plural"]


@dataclass
class CheckReport:
    """What :func:`check_index` found in an index file.

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
        Rows whose path is found again later in the file: what
        :func:`dedupe` removes.
    blocking : list[str]
        The problems that make :func:`dedupe` refuse (also in ``problems``):
        bytes that are not UTF-8, a NUL byte, an unterminated quote, text
        after a closing quote, rows wider than the header, no path column,
        or repeated column names.

    Examples
    --------
    >>> report = CheckReport(Path("i.csv"), rows=3, columns=["path", "a"], duplicate_rows=1)
    >>> report.problems.append("1 duplicate path ...")
    >>> report.clean
    False
    >>> print(report.render())
    i.csv: 1 problem: 3 rows, 2 columns (path, a)
      problem: 1 duplicate path ...
    """

    index_path: Path
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicate_rows: int = 0
    blocking: list[str] = field(default_factory=list)

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
        cols = _plural(len(self.columns), "column")
        if self.columns:
            cols += f" ({shown})"
        verdict = "ok" if self.clean else _plural(len(self.problems), "problem")
        return f"{self.index_path}: {verdict}: {_plural(self.rows, 'row')}, {cols}"

    def render(self) -> str:
        """The summary line, then one indented line per problem and note."""
        lines = [self.summary()]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class DedupeRefusedError(IndexWriterError):
    """The index has problems that make removing duplicates unsafe; it is untouched.

    Parameters
    ----------
    report : CheckReport
        What :func:`check_index` found (``report.blocking`` is not empty).

    Attributes
    ----------
    report : CheckReport
        What was found.
    index_path : Path
        The index file.

    Examples
    --------
    >>> nul = "binary data: NUL byte at line 2"
    >>> report = CheckReport(Path("i.csv"), problems=[nul], blocking=[nul])
    >>> print(DedupeRefusedError(report))
    i.csv: not removing duplicates from a malformed index: binary data: NUL byte at line 2
    """

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self.index_path = report.index_path
        super().__init__(
            f"{report.index_path}: not removing duplicates from a malformed index: "
            + "; ".join(report.blocking)
        )

    def __reduce__(self) -> tuple[type[DedupeRefusedError], tuple[object, ...]]:
        return (type(self), (self.report,))


def _block(report: CheckReport, problem: str) -> None:
    report.problems.append(problem)
    report.blocking.append(problem)


def plural(n: int, word: str) -> str:
    """``"1 row"``, ``"2 rows"``.

    Examples
    --------
    >>> plural(1, "byte"), plural(0, "byte")
    ('1 byte', '0 bytes')
    """
    return f"{n} {word}{'s' if n != 1 else ''}"


_plural = plural


def _lines(numbers: list[int], total: int) -> str:
    shown = ", ".join(str(n) for n in numbers[:EXAMPLES])
    if total > EXAMPLES:
        shown += f" and {total - EXAMPLES} more"
    return shown


def _show(value: str) -> str:
    if len(value) > 60:
        value = value[:57] + "..."
    return repr(value)


def _incomplete(error: TableError, source: Source) -> str | None:
    """The problem, if ``error`` is about a last record a write cut short."""
    if source.fd < 0:
        return None
    start = incomplete_tail(error, source.fd, source.size)
    if start is None:
        return None
    why = (
        "its quoted field never closes"
        if error.kind == "unclosed-quote"
        else "it ends inside a UTF-8 character"
    )
    return (
        f"incomplete last record ({_plural(source.size - start, 'byte')} from byte offset "
        f"{start}, no line end): {why}, so a write was cut short there; readers leave it "
        "out, and the next write moves it into a file next to the index"
    )


def _fatal(reading: Reader, source: Source) -> tuple[str, int]:
    """The problem that stopped reading, and the line where reading stopped."""
    error = reading.error
    if not isinstance(error, TableError):  # pragma: no cover - the scanner raises only these
        return f"malformed CSV: {error}", reading.lines
    cut = _incomplete(error, source)
    if cut is not None:
        return cut, reading.lines
    line = error.line
    if error.kind == "not-utf8" and error.offset is not None:
        with source.open() as f:
            f.seek(error.offset)
            byte = f"0x{f.read(1)[0]:02x}"
        return f"not UTF-8: byte {byte} at line {line} (byte offset {error.offset})", line
    if error.kind == "nul":
        return f"binary data: NUL byte at line {line}", line
    if error.kind == "unclosed-quote":
        return f"unterminated quote: {error.detail.partition(': ')[2]}", reading.lines
    if error.kind == "text-after-quote":
        return f"text after a closing quote on 1 line: {reading.error_start}", line
    return f"malformed CSV at line {line}: {error.detail}", line


def _header_problems(report: CheckReport, tally: Tally, reading: Reader) -> None:
    if reading.blank_first:
        report.notes.append(
            f"{_plural(reading.blank_first, 'blank line')} before the header (pandas skips "
            "them, csv.DictReader takes the first for an empty header: remove them)"
        )
    names = report.columns
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        _block(report, f"the header repeats column name(s): {', '.join(map(repr, repeated))}")
    if tally.path_col == -1:
        _block(
            report,
            f"no {tally.filepath_column!r} column (name the path column with --filepath-column)",
        )


def _duplicates_problem(groups: Groups) -> str:
    examples = "; ".join(
        f"{_show(p)} on lines {_lines(groups.paths[p].lines, groups.paths[p].count)}"
        for p in groups.order[:3]
    )
    more = f"; and {len(groups.order) - 3} more paths" if len(groups.order) > 3 else ""
    return (
        f"{_plural(len(groups.order), 'duplicate path')} "
        f"({_plural(groups.redundant(), 'redundant row')}; "
        f"'check --dedupe' keeps the last of each): {examples}{more}"
    )


def _row_problems(report: CheckReport, tally: Tally, reading: Reader, groups: Groups) -> None:
    if reading.error is None and reading.eols[""]:
        report.problems.append(f"no newline at the end of the file (after line {reading.lines})")
    if tally.extra:
        _block(
            report,
            f"{tally.extra} row{'s have' if tally.extra != 1 else ' has'} more "
            f"fields than the header's {len(report.columns)}: "
            f"line{'s' if tally.extra != 1 else ''} {_lines(tally.extra_lines, tally.extra)}",
        )
    if groups.order:
        report.duplicate_rows = groups.redundant()
        report.problems.append(_duplicates_problem(groups))


def _row_notes(report: CheckReport, tally: Tally, reading: Reader) -> None:
    if tally.short:
        report.notes.append(
            f"{tally.short} row{'s have' if tally.short != 1 else ' has'} fewer fields than "
            "the header (the missing ones read as empty)"
        )
    if reading.blank_later:
        report.notes.append(f"{_plural(reading.blank_later, 'blank line')} (ignored by readers)")
    crlf, lf = reading.eols["\r\n"], reading.eols["\n"]
    if crlf and lf:
        report.notes.append(f"mixed line endings: {crlf} CR LF, {lf} LF")
    elif crlf:
        report.notes.append("CR LF line endings (kept by writers)")


def _group(source: Source, tally: Tally, keep_spans: bool) -> Groups:
    """Read the file again for the rows whose path hash repeats (if any)."""
    repeated = repeated_hashes(tally.hashes)
    groups = Groups(repeated, tally.hashes, tally.path_col, keep_spans)
    if not repeated:
        return groups
    records = Reader(source).records()
    next(records)  # the header
    # The same rows as the first pass, which stopped after tally.rows of them.
    for row, record in zip(range(tally.rows), records, strict=False):
        groups.take(row, record)
    records.close()
    return groups


def inspect(source: Source, filepath_column: str, keep_spans: bool) -> tuple[CheckReport, Groups]:
    """Build the report (and the duplicate groups :func:`dedupe` needs)."""
    report = CheckReport(index_path=source.path)
    reading = Reader(source)
    tally = Tally(filepath_column)
    for line, _, _, fields in reading.records():
        tally.take(line, fields)
    groups = Groups(set(), tally.hashes, -1)
    if reading.empty:
        report.notes.append("empty file (0 bytes): a writer will add the header")
        return report, groups
    if reading.bom:
        report.notes.append("starts with a UTF-8 byte order mark (kept by writers)")
    stopped = ""
    if reading.error is not None:
        problem, line = _fatal(reading, source)
        _block(report, problem)
        if not problem.startswith(("unterminated quote", "incomplete last record")):
            stopped = (
                f"reading stopped at line {line}: the counts and the other checks "
                "cover only the rows before it"
            )
    if tally.header is None:
        if stopped:
            report.notes.append(stopped)
        elif reading.lines:
            report.notes.append("only blank lines: a writer will add the header")
        else:
            report.notes.append("no header")
        return report, groups
    report.columns, report.rows = tally.header, tally.rows
    _header_problems(report, tally, reading)
    if tally.path_col >= 0:
        groups = _group(source, tally, keep_spans)
    _row_problems(report, tally, reading, groups)
    if stopped:
        report.notes.append(stopped)
    _row_notes(report, tally, reading)
    return report, groups
