"""The CSV table format of an index file: how it is parsed and how rows are written.

The dialect is the one Python's :mod:`csv` module and Excel write: comma
separated, ``"`` quoted with ``""`` escapes, records ended by CR LF or LF, and
optionally a UTF-8 byte-order mark. Parsing is strict: a file this module
accepts round-trips byte-exact through :func:`format_row`, and anything else
(not UTF-8, NUL bytes, text after a closing quote, an unterminated quote, a
row wider than the header, duplicate column names) is reported as a
:class:`TableError`: a :class:`csv.Error` that says what is wrong (``kind``)
and where (``line``, and ``offset`` for bytes that are not UTF-8), with a
message that starts with the line number.

Values of any size are read without touching the process-wide
:func:`csv.field_size_limit`: when the C parser refuses a field for its size,
the same bytes are parsed again by a pure-Python parser with identical rules.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import BinaryIO

__all__ = [
    "BOM",
    "Header",
    "Scanner",
    "TableError",
    "eol_of",
    "format_row",
    "format_rows",
    "read_header",
    "skim",
    "too_wide",
]

BOM = codecs.BOM_UTF8
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


class TableError(csv.Error):
    """Bytes that are not a well-formed index table, and where.

    The message is ``line N: <what is wrong>``; the attributes say the same
    for programs, so nothing needs to parse the text.

    Parameters
    ----------
    kind : str
        What is wrong: ``"not-utf8"``, ``"nul"``, ``"unclosed-quote"``,
        ``"text-after-quote"``, ``"too-wide"``, ``"duplicate-column"`` or
        ``"malformed"`` (anything else the parser refuses).
    line : int
        The physical line (1-based) where the problem is: for an unclosed
        quote, the line where the quote opens.
    detail : str
        The rest of the message.
    offset : int, optional
        Byte offset of the offending byte in the file, where known.
    start : int, optional
        Byte offset where the malformed record starts, where known (an
        unclosed quote, text after a closing quote).

    Examples
    --------
    >>> err = TableError("too-wide", 3, "row has 3 fields but the header has 2 columns")
    >>> print(err)
    line 3: row has 3 fields but the header has 2 columns
    >>> err.kind, err.line, isinstance(err, csv.Error)
    ('too-wide', 3, True)
    """

    def __init__(
        self,
        kind: str,
        line: int,
        detail: str,
        offset: int | None = None,
        start: int | None = None,
    ) -> None:
        super().__init__(f"line {line}: {detail}")
        self.kind = kind
        self.line = line
        self.detail = detail
        self.offset = offset
        self.start = start

    def __reduce__(self) -> tuple[type[TableError], tuple[object, ...]]:
        return (type(self), (self.kind, self.line, self.detail, self.offset, self.start))


def too_wide(line: int, got: int, ncols: int) -> TableError:
    """The error for a record with more fields than the header has columns.

    Examples
    --------
    >>> print(too_wide(7, 4, 3))  # doctest: +NORMALIZE_WHITESPACE
    line 7: row has 4 fields but the header has 3 columns; fix or remove
    that row by hand (index-writer never drops data)
    """
    return TableError(
        "too-wide",
        line,
        f"row has {got} fields but the header has {ncols} columns; "
        "fix or remove that row by hand (index-writer never drops data)",
    )


def _parser_error(e: csv.Error, line: int, record: tuple[int, int]) -> TableError:
    """Our error for a :class:`csv.Error` raised by either parser.

    ``record`` is the line and byte offset where the failing record starts.
    """
    text = str(e)
    record_line, start = record
    if text.startswith("unexpected end of data"):
        return TableError(
            "unclosed-quote",
            record_line,
            f"unterminated quote: the quoted field opened on line {record_line} never "
            "closes (the rest of the file is inside it)",
            start=start,
        )
    if text.startswith("',' expected after '\"'"):
        return TableError(
            "text-after-quote",
            line,
            "text after a closing quote (a quote inside a value must be doubled: \"\")",
            start=start,
        )
    return TableError("malformed", line, text, start=start)


def format_row(values: Sequence[str], eol: str) -> str:
    """Return one CSV record for ``values``, ended by ``eol``.

    Fields holding a comma, a quote, CR or LF are quoted (whatever ``eol`` is:
    :mod:`csv` itself leaves a lone CR unquoted when writing LF files, which
    splits the row when read back). A record of a single empty field is
    written ``""`` so it is not mistaken for a blank line.

    Examples
    --------
    >>> format_row(["a.nii", '5" disk', "x,y", ""], "\\n")
    'a.nii,"5"" disk","x,y",\\n'
    >>> format_row([""], "\\r\\n")
    '""\\r\\n'
    """
    if len(values) == 1 and not values[0]:
        return '""' + eol
    search = _NEEDS_QUOTES.search
    return (
        ",".join(
            ['"' + v.replace('"', '""') + '"' if search(v) else v for v in values]
        )
        + eol
    )


def format_rows(records: Sequence[Sequence[str]], eol: str) -> list[str]:
    """:func:`format_row` for many records, with one check for the whole batch.

    Most batches hold no value that needs quotes: one search over all their
    text tells, and the records are then joined with commas directly.

    Examples
    --------
    >>> format_rows([("a.nii", "1"), ("b.nii", "x,y")], "\\n")
    ['a.nii,1\\n', 'b.nii,"x,y"\\n']
    """
    plain = not _NEEDS_QUOTES.search("".join(map("".join, records)))
    if plain and all(len(r) > 1 or r[0] for r in records):
        return [text + eol for text in map(",".join, records)]
    return [format_row(r, eol) for r in records]


def eol_of(line: str) -> str:
    """Return the terminator a physical line ends with ("" at end of file)."""
    if line.endswith("\r\n"):
        return "\r\n"
    if line.endswith(("\n", "\r")):
        return line[-1]
    return ""


class Header:
    """The header record of an index file.

    Attributes
    ----------
    columns : list[str]
        Column names, in file order; empty for a file with no header yet.
    bom : bool
        The file starts with a UTF-8 byte-order mark.
    eol : str
        The header's line terminator, used for every row written; ``"\\n"`` for
        a file that has none yet.
    """

    __slots__ = ("bom", "columns", "eol")

    def __init__(self, columns: list[str], bom: bool, eol: str) -> None:
        self.columns = columns
        self.bom = bom
        self.eol = eol

    def __repr__(self) -> str:
        return f"Header(columns={self.columns!r}, bom={self.bom!r}, eol={self.eol!r})"


class Scanner:
    """Stream records out of an index file's bytes, tracking lines and offsets.

    Parameters
    ----------
    stream : BinaryIO
        Seekable binary stream, positioned at ``offset``.
    offset : int
        Byte offset of the stream position within the file.
    line : int
        Number of physical lines before ``offset``.

    Attributes
    ----------
    offset : int
        Byte offset just after the last line consumed.
    line : int
        Physical lines consumed so far (1-based number of the last one).
    last_eol : str
        Terminator of the last line consumed; "" when it had none (end of
        file without a final newline) or nothing was read.
    """

    def __init__(self, stream: BinaryIO, offset: int, line: int) -> None:
        self._stream = stream
        self._start = (offset, line, stream.tell())
        self.offset = offset
        self.line = line
        self.last_eol = ""
        self.consumed_any = False

    def _lines(self) -> Generator[str, None, None]:
        text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="")
        try:
            for line in text:
                self.line += 1
                if "\x00" in line:
                    raise TableError(
                        "nul",
                        self.line,
                        "contains a NUL byte; this is not a text CSV file",
                        self.offset + len(line[: line.index("\x00")].encode()),
                    )
                self.offset += len(line) if line.isascii() else len(line.encode())
                self.last_eol = eol_of(line)
                self.consumed_any = True
                yield line
        finally:
            # Leave the caller's stream open (a wrapper closes its stream when
            # collected); it may be closed already if the caller stopped early.
            with contextlib.suppress(ValueError):
                text.detach()

    def records(self) -> Generator[tuple[int, int, list[str]], None, None]:
        """Yield ``(first_line, start_offset, fields)`` for each non-blank record.

        While a record is being handled (before the next one is asked for),
        :attr:`offset`, :attr:`line` and :attr:`last_eol` describe its end:
        the offset just after its terminator, its last physical line and that
        terminator. Blank lines are skipped: a record's ``start_offset`` is
        past the blank lines before it.

        Raises
        ------
        TableError
            The bytes are not a well-formed CSV; the message starts with
            ``line N:``.
        """
        # Each line generator is closed here, not left to the garbage
        # collector, which would ignore an interrupt (Ctrl-C) landing in its
        # clean-up and let its text wrapper close the caller's stream.
        done = 0
        lines = self._lines()
        try:
            for fields in csv.reader(lines, strict=True):
                if fields:
                    done += 1
                    yield self._record(fields)
                else:
                    self._mark()
            return
        except UnicodeDecodeError as e:
            raise self._decode_error(e) from e
        except TableError:
            raise
        except csv.Error as e:
            if not str(e).startswith("field larger than field limit"):
                raise _parser_error(e, self.line, self.next_start) from e
        finally:
            lines.close()
        # A field too large for the C parser: parse it all again in Python.
        self._restart()
        lines = self._lines()
        try:
            seen = 0
            for fields in _py_records(lines):
                if not fields:
                    self._mark()
                    continue
                rec = self._record(fields)
                seen += 1
                if seen > done:
                    yield rec
        except UnicodeDecodeError as e:  # pragma: no cover - found above already
            raise self._decode_error(e) from e
        except TableError:
            raise
        except csv.Error as e:
            raise _parser_error(e, self.line, self.next_start) from e
        finally:
            lines.close()

    # The record that just completed started right after the previous one.
    _rec_start: tuple[int, int] | None = None

    @property
    def next_start(self) -> tuple[int, int]:
        """``(line, offset)`` where the next record starts.

        That is just past the last record or blank line read. When
        :meth:`records` raises for an unclosed quote or text after a closing
        quote, the malformed record starts here (bytes that are not UTF-8 may
        be found a little before the record holding them is reached).
        """
        return self._rec_start or (self._start[1] + 1, self._start[0])

    def _mark(self) -> None:
        self._rec_start = (self.line + 1, self.offset)

    def _record(self, fields: list[str]) -> tuple[int, int, list[str]]:
        start = self.next_start
        self._mark()
        return (start[0], start[1], fields)

    def _restart(self) -> None:
        self.offset, self.line, pos = self._start
        self._stream.seek(pos)
        self._rec_start = None
        self.last_eol = ""
        self.consumed_any = False

    def _decode_error(self, e: UnicodeDecodeError) -> TableError:
        offset, line, pos = self._start
        self._stream.seek(pos)
        data = self._stream.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exact:
            bad = exact.start
            line += data.count(b"\n", 0, bad) + 1
            # Lone CR line ends count too.
            line += len(re.findall(rb"\r(?!\n)", data[:bad]))
            return TableError(
                "not-utf8",
                line,
                f"not valid UTF-8 (byte 0x{data[bad]:02x} at file offset {offset + bad}); "
                "save the file as UTF-8",
                offset + bad,
            )
        # pragma: no cover - a decode error always has a first bad byte
        return TableError("not-utf8", self.line, f"not valid UTF-8 ({e.reason})")


def _py_records(lines: Iterator[str]) -> Iterator[list[str]]:
    """Parse records with the rules of ``csv.reader(strict=True)``, no size limit.

    ``lines`` are physical lines split only at CR LF, LF and CR (as
    ``newline=""`` text streams split them), each keeping its terminator.
    """
    for first in lines:
        if first in ("\r\n", "\n", "\r"):
            yield []
            continue
        line = first
        n = len(line)
        pos = 0
        fields: list[str] = []
        while True:
            if pos < n and line[pos] == '"':
                parts: list[str] = []  # the field's text, doubled quotes still doubled
                pos += 1
                while True:
                    end = line.find('"', pos)
                    while 0 <= end < n - 1 and line[end + 1] == '"':  # doubled: skip it
                        end = line.find('"', end + 2)
                    if end >= 0:  # a quote that is not doubled: the closing one
                        parts.append(line[pos:end])
                        pos = end + 1
                        break
                    parts.append(line[pos:])
                    nxt = next(lines, None)
                    if nxt is None:
                        raise csv.Error("unexpected end of data")
                    line, n, pos = nxt, len(nxt), 0
                fields.append("".join(parts).replace('""', '"'))
                if pos >= n or line[pos] in "\r\n":
                    break
                if line[pos] != ",":
                    raise csv.Error("',' expected after '\"'")
                pos += 1
            else:
                comma = line.find(",", pos)
                if comma < 0:
                    fields.append(line[pos:].rstrip("\r\n"))
                    break
                fields.append(line[pos:comma])
                pos = comma + 1
        yield fields


def read_header(
    stream: BinaryIO,
) -> tuple[Header, Scanner, Generator[tuple[int, int, list[str]], None, None]]:
    """Start reading a whole index file from its first byte.

    Returns the header, the scanner (for line/offset bookkeeping) and an
    iterator over the remaining records.

    Raises
    ------
    TableError
        Malformed file, or duplicate column names in the header.
    """
    bom = stream.read(len(BOM)) == BOM
    if not bom:
        stream.seek(0)
    scanner = Scanner(stream, len(BOM) if bom else 0, 0)
    records = scanner.records()
    first = next(records, None)
    if first is None:
        return Header([], bom, scanner.last_eol or "\n"), scanner, records
    line, _, columns = first
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise TableError(
                "duplicate-column",
                line,
                f"duplicate column name {name!r} in the header; rename one of them",
            )
        seen.add(name)
    return Header(columns, bom, scanner.last_eol or "\n"), scanner, records


#: ``bytes.translate`` table deleting every byte but comma and LF.
_ALL_BUT_COMMA_LF = bytes(b for b in range(256) if b not in b",\n")
_SKIM_BLOCK = 1 << 20


def _plain(block: bytes, ncols: int) -> bool:
    """Whether ``block`` (whole lines) needs no real parsing.

    True when it has no quote (so no field spans lines or holds separators),
    no NUL, no CR other than in CR LF, valid UTF-8, and no line with more
    than ``ncols`` fields. Such lines are records exactly as :class:`Scanner`
    would read them, so their only facts that matter are counted in C.
    """
    if b'"' in block or b"\x00" in block:
        return False
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return False
    if max(map(len, block.translate(None, _ALL_BUT_COMMA_LF).split(b"\n"))) >= ncols:
        return False
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def skim(
    stream: BinaryIO,
    offset: int,
    line: int,
    ncols: int,
    each: Callable[[bytes, int], None] | None = None,
) -> tuple[int, int, str]:
    """Check plain rows in bulk, stopping before anything that needs parsing.

    Checking a whole index line by line in Python costs about a microsecond
    per row; most indexes are plain (no quoted fields), and this checks those
    in C-speed blocks, several times faster. It leaves ``stream`` at the
    first block that is not plain (or at the end), for a :class:`Scanner` to
    continue from, with the same results as if it had read everything.

    Parameters
    ----------
    stream : BinaryIO
        Seekable binary stream positioned at the start of a record, which is
        at byte ``offset`` of the file (the stream may hold only part of it).
    offset, line : int
        The byte offset and the number of physical lines before it.
    ncols : int
        Columns in the header; a row with more fields stops the skim.
    each : Callable[[bytes, int], None], optional
        Called with every block of plain lines accepted and its byte offset,
        for a caller that needs something from the rows themselves. In such
        a block a record is one line and its fields are split by commas.

    Returns
    -------
    tuple[int, int, str]
        Where it stopped: byte offset, physical lines before it, and the
        terminator of the last line skimmed ("" if none or it had none).
    """
    last_eol = ""
    carry = b""
    pending: list[bytes] = []  # blocks of a line longer than a block, joined once it ends
    start, pos = offset, stream.tell()  # the stream's positions need not be file offsets
    while True:
        block = stream.read(_SKIM_BLOCK)
        if block and b"\n" not in block:
            if b'"' in block:
                break  # a quoted value: not plain, whatever else the line holds
            pending.append(block)
            continue
        data = b"".join([carry, *pending, block])
        pending = []
        if not block:
            # At the end: a last line without a terminator.
            if data and _plain(data, ncols):
                if each is not None:
                    each(data, offset)
                offset, line, last_eol = offset + len(data), line + 1, ""
            break
        cut = data.rfind(b"\n") + 1
        whole, carry = data[:cut], data[cut:]
        if not _plain(whole, ncols):
            break
        if each is not None:
            each(whole, offset)
        offset += cut
        line += whole.count(b"\n")
        last_eol = "\r\n" if whole.endswith(b"\r\n") else "\n"
    stream.seek(pos + offset - start)
    return offset, line, last_eol
