"""Printing rows: as CSV, as JSON, or as an aligned table for terminals."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, TextIO

from .._table import format_row
from .common import printing

#: Longest cell shown by ``show --format table`` (in terminal columns).
TABLE_CELL_MAX = 60

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_width(text: str) -> int:
    """Terminal columns taken by ``text`` (wide East Asian characters count 2).

    Examples
    --------
    >>> display_width("abc"), display_width("日本")
    (3, 4)
    """
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def cell(value: str, limit: int = TABLE_CELL_MAX) -> str:
    """A value as a table cell: control characters escaped, cut to ``limit`` columns.

    Examples
    --------
    >>> cell("a\\tb")
    'a\\\\tb'
    >>> cell("x" * 10, limit=6)
    'xxx...'
    """
    if not value.isprintable():
        value = "".join(
            ch
            if ch.isprintable()
            else _ESCAPES.get(ch) or ch.encode("unicode_escape").decode("ascii")
            for ch in value
        )
    if display_width(value) <= limit:
        return value
    out = []
    width = 0
    for ch in value:
        w = display_width(ch)
        if width + w > limit - 3:
            break
        out.append(ch)
        width += w
    return "".join(out) + "..."


Rows = Callable[[], Iterable[dict[str, str]]]
"""A way to read the rows (again): each call gives a new iterator over all of them."""


def table_lines(columns: Sequence[str], rows: Rows) -> Iterator[str]:
    """The lines of an aligned table: header, rule, one line per row, row count.

    Two passes over the rows (widths first), so only one row is held at a time.

    Examples
    --------
    >>> for line in table_lines(["path", "k"], lambda: [{"path": "a.nii", "k": "1"}]):
    ...     print(line)
    path   k
    -----  -
    a.nii  1
    (1 row)
    """
    head = [cell(c) for c in columns]
    widths = [display_width(h) for h in head]
    count = 0
    for row in rows():
        count += 1
        for i, c in enumerate(columns):
            widths[i] = max(widths[i], display_width(cell(row[c])))

    def line(cells: list[str]) -> str:
        padded = [c + " " * (w - display_width(c)) for c, w in zip(cells, widths, strict=True)]
        return "  ".join(padded).rstrip()

    yield line(head)
    yield "  ".join("-" * w for w in widths)
    for row in rows():
        yield line([cell(row[c]) for c in columns])
    yield f"({count} row{'s' if count != 1 else ''})"


def write_table(out: TextIO, columns: Sequence[str], rows: Rows) -> None:
    """Print the rows as an aligned table."""
    for text in table_lines(columns, rows):
        with printing():
            out.write(text + "\n")


def write_json(out: TextIO, columns: Sequence[str], rows: Rows) -> None:
    """Print the rows as a JSON list of objects holding ``columns``, one row at a time.

    The same text as ``json.dump(rows, indent=2, ensure_ascii=False)``.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> write_json(buf, ["path"], lambda: [{"path": "a", "v": "1"}])
    >>> print(buf.getvalue(), end="")
    [
      {
        "path": "a"
      }
    ]
    """
    put = _utf8(out)  # JSON is UTF-8, whatever the terminal's encoding
    sep = "[\n"
    for row in rows():
        text = json.dumps({c: row[c] for c in columns}, ensure_ascii=False, indent=2)
        put(sep + "  " + text.replace("\n", "\n  "))
        sep = ",\n"
    put("[]\n" if sep == "[\n" else "\n]\n")
    with printing():
        out.flush()


def _utf8(out: TextIO) -> Callable[[str], None]:
    """Write text to ``out`` as UTF-8: to its binary buffer when it has one."""
    raw: BinaryIO | None = getattr(out, "buffer", None)
    with printing():
        out.flush()

    def put(text: str) -> None:
        with printing():
            if raw is None:
                out.write(text)
            else:
                raw.write(text.encode("utf-8"))

    return put


def csv_records(columns: Sequence[str], rows: Iterable[dict[str, str]]) -> Iterator[str]:
    """The CSV records of ``rows`` (header first), as the index format writes them.

    Every value reads back exactly: fields holding a comma, a quote, CR or LF
    are quoted, whatever else they hold (lone CR included), and a record of
    one empty field is ``""`` so that it is not a blank line.

    Examples
    --------
    >>> rows = [{"path": "a", "v": "x\\ry"}, {"path": "b", "v": " "}]
    >>> list(csv_records(["path", "v"], rows))
    ['path,v\\n', 'a,"x\\ry"\\n', 'b, \\n']
    """
    if not columns:
        return
    yield format_row(columns, "\n")
    for row in rows:
        yield format_row([row[c] for c in columns], "\n")


def write_csv(out: TextIO, columns: Sequence[str], rows: Rows) -> None:
    """Print the rows as CSV: UTF-8, LF line ends, exact for every value.

    The bytes go to the stream's binary buffer when it has one, so no
    newline translation (CR LF on Windows) changes the values.
    """
    put = _utf8(out)
    chunk: list[str] = []
    for record in csv_records(columns, rows()):
        chunk.append(record)
        if len(chunk) >= 1024:
            put("".join(chunk))
            chunk.clear()
    put("".join(chunk))
    with printing():
        out.flush()
