"""Reading a whole index file for :mod:`._check`, one record at a time.

The file is parsed by the index's own table format (:mod:`._table`), with its
rules, line numbers and byte offsets and without a field size limit. Nothing
here holds more than one record, except what the caller keeps:

- :class:`Reader` streams the records of a file (or of bytes in memory) and
  counts what a check reports besides them: blank lines, line endings, the
  first error that stops reading.
- :class:`Tally` keeps, per data row, 8 bytes: a hash of its path.
  :func:`repeated_hashes` finds the hashes that occur more than once with a
  few bits per row, and :class:`Groups` reads the file again, keeping only
  the rows with such a hash, to compare the paths themselves.
"""

from __future__ import annotations

import csv
import io
from array import array
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ._files import BoundedReader
from ._table import BOM, Scanner, TableError

#: How many examples (line numbers) a report lists per problem.
EXAMPLES = 5
_GAP_BLOCK = 1 << 20

#: One record: first line, byte span (start, end after its terminator), fields.
Record = tuple[int, int, int, list[str]]


class Source:
    """The bytes being read: a file (by path, or its first ``size`` bytes through an
    open descriptor ``fd``), opened anew for each stream, or bytes in memory."""

    def __init__(
        self, path: Path, data: bytes | None = None, *, fd: int = -1, size: int = 0
    ) -> None:
        self.path = path
        self.data = data
        self.fd = fd
        self.size = size

    def open(self) -> BinaryIO:
        """A new binary stream at the first byte."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.fd >= 0:
            return io.BufferedReader(BoundedReader(self.fd, self.size), 1 << 16)
        return open(self.path, "rb")


class _Window(io.RawIOBase):
    """The first ``limit`` bytes of a seekable stream, as a stream of their own."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            pos, whence = self._limit + pos, io.SEEK_SET
        return self._raw.seek(pos, whence)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self._limit - self._raw.tell())
        if size <= 0:
            return 0
        data = self._raw.read(size)
        buffer[: len(data)] = data
        return len(data)


def _blank_eols(gap: bytes) -> Counter[str]:
    """Terminators of blank lines (``gap`` holds nothing else)."""
    crlf = gap.count(b"\r\n")
    return Counter({"\r\n": crlf, "\n": gap.count(b"\n") - crlf, "\r": gap.count(b"\r") - crlf})


class Reader:
    """One pass over the records of an index file, as far as it is well-formed.

    :meth:`records` yields each non-blank record; meanwhile the attributes
    count the rest. A byte that is not UTF-8 also hides the records decoded
    in the same block just before it: those are read again from the bytes
    before the bad one, where the record holding it is cut short (dropped if
    it parses, ignored if its quote is left open). Any other error found
    there comes earlier in the file than the bad byte, so it is the one
    reported.

    Attributes
    ----------
    empty : bool
        The file has no bytes at all.
    bom : bool
        It starts with a UTF-8 byte order mark.
    blank_first, blank_later : int
        Blank lines before the first record, and after it.
    eols : Counter[str]
        Line terminators of records and blank lines: "\\r\\n", "\\n", "\\r" or
        "" (the last line has none).
    lines : int
        Physical lines read.
    error : csv.Error or None
        The first problem that stopped reading.
    error_start : int
        The first line of the record the error is in.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        self.empty = False
        self.bom = False
        self.blank_first = 0
        self.blank_later = 0
        self.eols: Counter[str] = Counter()
        self.lines = 0
        self.error: csv.Error | None = None
        self.error_start = 0
        self._seen = False
        self._end = 0
        self._end_line = 0
        self._gaps: BinaryIO | None = None
        #: The last record's terminator, and the blank lines before it.
        self._last_eol = ""
        self._last_gap = (0, False)

    def records(self) -> Generator[Record, None, None]:
        """Yield ``(first_line, start, end, fields)`` for each non-blank record."""
        try:
            with self._source.open() as stream:
                yield from self._read(stream)
        finally:
            if self._gaps is not None:
                self._gaps.close()
                self._gaps = None

    def _read(self, stream: BinaryIO) -> Iterator[Record]:
        head = stream.read(len(BOM))
        self.empty, self.bom = not head, head == BOM
        begin = len(BOM) if self.bom else 0
        stream.seek(begin)
        self._end = begin
        scanner = Scanner(stream, begin, 0)
        try:
            yield from self._take(scanner)
        except csv.Error as e:
            self.error, self.error_start, self.lines = e, scanner.next_start[0], scanner.line
            if isinstance(e, TableError) and e.kind == "not-utf8" and e.offset is not None:
                yield from self._before_bad_byte(scanner.next_start, e.offset)
            return
        self.blank_later += scanner.line - self._end_line
        self._count_blank(self._end, scanner.offset)
        self.lines = scanner.line

    def _take(self, scanner: Scanner) -> Iterator[Record]:
        for line, start, fields in scanner.records():
            gap = line - self._end_line - 1
            if self._seen:
                self.blank_later += gap
            else:
                self.blank_first += gap
            self._last_gap = (gap, not self._seen)
            self._seen = True
            self._count_blank(self._end, start)
            self._end, self._end_line = scanner.offset, scanner.line
            self._last_eol = scanner.last_eol
            self.eols[scanner.last_eol] += 1
            yield (line, start, scanner.offset, fields)

    def _before_bad_byte(self, resume: tuple[int, int], bad: int) -> Iterator[Record]:
        """Records between the last one read and the byte that is not UTF-8."""
        line, offset = resume
        with self._source.open() as raw:
            raw.seek(offset)
            window = io.BufferedReader(_Window(raw, bad))
            scanner = Scanner(window, offset, line - 1)
            held: Record | None = None
            try:
                for record in self._take(scanner):
                    if held is not None:
                        yield held
                    held = record
            except csv.Error as e:
                if not (isinstance(e, TableError) and e.kind == "unclosed-quote"):
                    self.error, self.error_start = e, scanner.next_start[0]
                if held is not None:
                    yield held
                return
        if held is None:
            return
        if self._last_eol:
            yield held
            return
        # The record holding the bad byte, cut short: not a record of the file.
        self.eols[""] -= 1
        gap, first = self._last_gap
        if first:
            self.blank_first -= gap
        else:
            self.blank_later -= gap

    def _count_blank(self, begin: int, end: int) -> None:
        """Count the terminators of the blank lines in ``[begin, end)``."""
        if begin >= end:
            return
        if self._gaps is None:
            self._gaps = self._source.open()
        self._gaps.seek(begin)
        carry = b""
        while begin < end:
            block = carry + self._gaps.read(min(_GAP_BLOCK, end - begin))
            begin += len(block) - len(carry)
            # Keep a final CR for the next block: it may be the start of CR LF.
            carry = block[-1:] if block.endswith(b"\r") and begin < end else b""
            self.eols.update(_blank_eols(block[: len(block) - len(carry)]))
            if not block:
                break


@dataclass
class Tally:
    """What one pass learns about the rows: the header, widths, path hashes."""

    filepath_column: str
    header: list[str] | None = None
    header_line: int = 0
    path_col: int = -1
    rows: int = 0
    short: int = 0
    extra: int = 0
    extra_lines: list[int] = field(default_factory=list)
    #: ``hash()`` of each data row's path, in file order (8 bytes a row).
    hashes: array[int] = field(default_factory=lambda: array("q"))

    def take(self, line: int, fields: list[str]) -> None:
        """Count one record (the first one is the header)."""
        if self.header is None:
            self.header, self.header_line = fields, line
            if self.filepath_column in fields:
                self.path_col = fields.index(self.filepath_column)
            return
        self.rows += 1
        n, width = len(fields), len(self.header)
        if n > width:
            self.extra += 1
            if len(self.extra_lines) < EXAMPLES:
                self.extra_lines.append(line)
        elif n < width:
            self.short += 1
        if self.path_col >= 0:
            self.hashes.append(hash(fields[self.path_col] if self.path_col < n else ""))


def repeated_hashes(hashes: array[int]) -> set[int]:
    """The values that occur more than once in ``hashes``.

    A bitmap of 32 bits per value finds the few values that share a bucket
    with another; only those are counted exactly.

    Examples
    --------
    >>> sorted(repeated_hashes(array("q", [5, -7, 5, 9, -7, 5])))
    [-7, 5]
    """
    if len(hashes) < 2:
        return set()
    mask = (1 << (32 * len(hashes) - 1).bit_length()) - 1
    seen = bytearray((mask >> 3) + 1)
    clashes: set[int] = set()
    for h in hashes:
        bucket = h & mask
        byte, bit = bucket >> 3, 1 << (bucket & 7)
        if seen[byte] & bit:
            clashes.add(bucket)
        else:
            seen[byte] |= bit
    del seen
    counts: Counter[int] = Counter(h for h in hashes if h & mask in clashes)
    return {h for h, k in counts.items() if k > 1}


@dataclass
class Group:
    """The rows holding one path: how many, their first lines, their spans."""

    count: int = 0
    lines: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Groups:
    """The rows whose path hash repeats, grouped by the path itself (a second pass)."""

    repeated: set[int]
    hashes: array[int]
    path_col: int
    keep_spans: bool = False
    paths: dict[str, Group] = field(default_factory=dict)
    #: Paths found more than once, in the order their second row came.
    order: list[str] = field(default_factory=list)

    def take(self, row: int, record: Record) -> None:
        """Look at data row number ``row`` (0-based)."""
        if self.hashes[row] not in self.repeated:
            return
        line, start, end, fields = record
        key = fields[self.path_col] if self.path_col < len(fields) else ""
        if not key:
            return  # no path (rows from before the column was added): not one file
        group = self.paths.get(key)
        if group is None:
            group = self.paths[key] = Group()
        group.count += 1
        if len(group.lines) < EXAMPLES:
            group.lines.append(line)
        if self.keep_spans:
            group.spans.append((start, end))
        if group.count == 2:
            self.order.append(key)

    def redundant(self) -> int:
        """Rows that repeat a path found again later."""
        return sum(self.paths[p].count - 1 for p in self.order)

    def all_but_last(self) -> list[tuple[int, int]]:
        """Spans of the rows a de-duplication removes, in file order."""
        return sorted(s for p in self.order for s in self.paths[p].spans[:-1])
