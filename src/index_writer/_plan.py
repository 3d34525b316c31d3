"""Deciding what a write does, without touching any file.

:func:`plan` takes what is known about the index (:class:`._state.IndexState`),
the rows to write and the caller's flags, and returns one of:

- ``None``: nothing to do -- every row is already stored exactly so;
- :class:`Append`: these bytes go at the end of the file (with the header,
  for a file that has none yet);
- :class:`Rewrite`: the file is written again with these columns, these
  rows replaced (at their first occurrence; later duplicates dropped) and
  these rows added at the end.

It raises, before anything is written, for a schema the caller did not allow
or a column name that could not be read back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ._errors import IndexSchemaMismatchError
from ._paths import DUPLICATE
from ._rows import Row, encode
from ._state import IndexState
from ._table import format_row

__all__ = ["Append", "Rewrite", "plan"]


class Append:
    """Append ``data`` (``text``, encoded) at the end of the index.

    Attributes
    ----------
    columns : list[str]
        The header's columns afterwards.
    lead : str
        What precedes the rows in ``text``: the header for a file that has
        none, a line terminator for one whose last line lacks it, or "".
    texts : list[str]
        One formatted record per row, in order.
    rows : list[Row]
        The rows, in the same order.
    """

    __slots__ = ("columns", "data", "lead", "rows", "text", "texts")

    def __init__(self, columns: list[str], lead: str, rows: list[Row], eol: str) -> None:
        self.columns = columns
        self.lead = lead
        self.rows = rows
        self.texts = [format_row([row.get(c, "") for c in columns], eol) for row in rows]
        self.text = lead + "".join(self.texts)
        self.data = encode(self.text, rows)


class Rewrite:
    """Write the whole index again.

    Attributes
    ----------
    columns : list[str]
        The new header.
    replacements : dict[str, Row]
        Path → the row that replaces the first row holding it (later rows
        holding it are dropped).
    appends : list[Row]
        Rows added at the end.
    """

    __slots__ = ("appends", "columns", "replacements")

    def __init__(self, columns: list[str], replacements: dict[str, Row], appends: list[Row]):
        self.columns = columns
        self.replacements = replacements
        self.appends = appends


def plan(
    state: IndexState,
    rows: list[Row],
    filepath_column: str,
    *,
    replace_existing: bool,
    merge_columns: bool,
    is_stored: Callable[[int, Row], bool],
    index_path: Path,
) -> Append | Rewrite | None:
    """What writing ``rows`` to the index described by ``state`` takes.

    ``is_stored(offset, row)`` tells whether the row stored at ``offset``
    already equals ``row`` (it reads the file; it is only called for
    ``replace_existing``). ``state.paths`` must map ``filepath_column`` when
    ``replace_existing`` is set.

    Raises
    ------
    IndexSchemaMismatchError
        New columns with ``merge_columns=False``.
    ValueError
        A column name that cannot be written (NUL, lone surrogate).
    """
    columns = state.header.columns
    new_columns = _new_columns(columns, state.colpos, rows, filepath_column)
    if columns and new_columns and not merge_columns:
        raise IndexSchemaMismatchError(set(new_columns), index_path)
    if new_columns:
        encode(format_row(new_columns, "\n"), rows)  # refuse unwritable names
    rewrite = bool(columns) and bool(new_columns)

    appends = rows
    replacements: dict[str, Row] = {}
    if replace_existing:
        paths = state.paths
        assert paths is not None
        latest = {row[filepath_column]: row for row in rows}
        appends = []
        for path, row in latest.items():
            where = paths.where(path)
            if where is None:
                appends.append(row)
            elif rewrite or where == DUPLICATE or not is_stored(where, row):
                replacements[path] = row
        rewrite = rewrite or bool(replacements)

    if rewrite:
        return Rewrite(columns + new_columns, replacements, appends)
    if not appends:
        return None  # every entry is already stored exactly so
    eol = state.header.eol
    if columns:
        return Append(columns, "" if state.ends_clean else eol, appends, eol)
    return Append(new_columns, format_row(new_columns, eol), appends, eol)


def _new_columns(
    columns: list[str], colpos: dict[str, int], rows: list[Row], filepath_column: str
) -> list[str]:
    """Columns the rows bring that the header lacks, in first-appearance order."""
    if columns:
        return list(dict.fromkeys(k for row in rows for k in row if k not in colpos))
    return list(dict.fromkeys([filepath_column, *(k for row in rows for k in row)]))
