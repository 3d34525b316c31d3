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

Most writes are appends to an index whose header does not change, so
:func:`guess_append` formats and encodes the rows *before* the lock is taken,
for the header known then; :func:`plan` uses that guess when the header is
still the same. The lock is then held only for the system calls.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from pathlib import Path

from ._errors import IndexSchemaMismatchError
from ._rows import Row, encode
from ._state import IndexState
from ._table import format_row, format_rows

__all__ = ["Append", "Rewrite", "guess_append", "plan"]


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

    __slots__ = ("columns", "data", "lead", "rows", "schema", "text", "texts")

    def __init__(self, columns: list[str], lead: str, rows: list[Row], eol: str) -> None:
        self.columns = columns
        self.lead = lead
        self.rows = rows
        self.texts = format_rows(_values(columns, rows), eol)
        self.text = lead + "".join(self.texts)
        self.data = encode(self.text, rows)
        self.schema: tuple[tuple[str, ...], str] | None = None


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
    stored_at : dict[str, list[int]]
        Path → the offsets of the rows holding it now, for each path in
        ``replacements``.
    """

    __slots__ = ("appends", "columns", "replacements", "stored_at")

    def __init__(
        self,
        columns: list[str],
        replacements: dict[str, Row],
        appends: list[Row],
        stored_at: dict[str, list[int]] | None = None,
    ) -> None:
        self.columns = columns
        self.replacements = replacements
        self.appends = appends
        self.stored_at = stored_at if stored_at is not None else {}


def guess_append(state: IndexState | None, rows: list[Row]) -> Append | None:
    """The append of ``rows`` to the index ``state`` describes, if its header stays so.

    Safe to call without the lock: it reads only ``state.schema``, which is
    replaced, never changed. None when the rows bring new columns or the
    index has no header yet (then :func:`plan` decides under the lock).

    Raises
    ------
    ValueError
        A value that cannot be written (NUL, lone surrogate).
    """
    if state is None:
        return None
    schema = state.schema
    columns, eol = schema
    if not columns:
        return None
    known = set(columns)
    for row in rows:
        for key in row:
            if key not in known:
                return None
    guess = Append(list(columns), "", rows, eol)
    guess.schema = schema
    return guess


def plan(
    state: IndexState,
    rows: list[Row],
    filepath_column: str,
    *,
    replace_existing: bool,
    merge_columns: bool,
    stored_row: Callable[[int], list[str]],
    index_path: Path,
    guess: Append | None = None,
) -> Append | Rewrite | None:
    """What writing ``rows`` to the index described by ``state`` takes.

    ``stored_row(offset)`` reads the fields of the row stored at ``offset``
    (it is only called for ``replace_existing``, to check the rows
    ``state.paths`` names as candidates). ``state.paths`` must map
    ``filepath_column`` when ``replace_existing`` is set. ``guess`` is
    :func:`guess_append`'s answer, used if the header is still the one it
    was made for.

    Raises
    ------
    IndexSchemaMismatchError
        New columns with ``merge_columns=False``.
    ValueError
        A column name that cannot be written (NUL, lone surrogate).
    """
    if (  # the usual case, settled before the lock: an append to an unchanged header
        guess is not None
        and not replace_existing
        and guess.schema is state.schema
        and state.ends_clean
    ):
        return guess
    columns = state.header.columns
    if guess is not None and guess.schema is state.schema:
        new_columns: list[str] = []  # the guess was made: no row brings a new column
    else:
        new_columns = _new_columns(columns, state.colpos, rows, filepath_column)
    if columns and new_columns and not merge_columns:
        raise IndexSchemaMismatchError(set(new_columns), index_path)
    if new_columns:
        encode(format_row(new_columns, "\n"), rows)  # refuse unwritable names
    # New columns rewrite the file; so does a first header for a file holding
    # only blank lines (appended after them, it would not be the first line).
    rewrite = bool(new_columns) and (bool(columns) or state.size > 0)

    appends = rows
    replacements: dict[str, Row] = {}
    stored_at: dict[str, list[int]] = {}
    if replace_existing:
        assert state.paths is not None
        latest = {row[filepath_column]: row for row in rows}
        appends = []
        for path, row in latest.items():
            stored = _stored_rows(state, path, filepath_column, stored_row)
            if not stored:
                appends.append(row)
            elif rewrite or len(stored) > 1 or stored[0][1] != [row.get(c, "") for c in columns]:
                replacements[path] = row
                stored_at[path] = [offset for offset, _ in stored]
        rewrite = rewrite or bool(replacements)

    if rewrite:
        return Rewrite(columns + new_columns, replacements, appends, stored_at)
    if not appends:
        return None  # every entry is already stored exactly so
    if (
        guess is not None
        and guess.schema is state.schema
        and state.ends_clean
        and len(appends) == len(rows)  # all of them, in order
    ):
        return guess
    eol = state.header.eol
    if columns:
        return Append(columns, "" if state.ends_clean else eol, appends, eol)
    return Append(new_columns, format_row(new_columns, eol), appends, eol)


def _values(columns: list[str], rows: list[Row]) -> list[Sequence[str]]:
    """Each row's values in the order of ``columns`` ("" where a row has none)."""
    n = len(columns)
    if n == 1:
        return [(row.get(columns[0], ""),) for row in rows]
    whole = operator.itemgetter(*columns)  # a row with every column: a C-speed lookup
    return [whole(row) if len(row) == n else [row.get(c, "") for c in columns] for row in rows]


def _stored_rows(
    state: IndexState, path: str, filepath_column: str, stored_row: Callable[[int], list[str]]
) -> list[tuple[int, list[str]]]:
    """The rows holding ``path``: offset and fields (padded to the header's width)."""
    column = state.colpos.get(filepath_column)
    if column is None or state.paths is None:
        return []
    width = len(state.header.columns)
    rows = []
    for offset in state.paths.candidates(path):
        fields = stored_row(offset)
        if column < len(fields) and fields[column] == path:
            rows.append((offset, fields + [""] * (width - len(fields))))
    return rows


def _new_columns(
    columns: list[str], colpos: dict[str, int], rows: list[Row], filepath_column: str
) -> list[str]:
    """Columns the rows bring that the header lacks, in first-appearance order."""
    keys = dict.fromkeys(itertools.chain.from_iterable(rows))  # first appearance, C speed
    if columns:
        return [k for k in keys if k not in colpos]
    return list(dict.fromkeys([filepath_column, *keys]))
