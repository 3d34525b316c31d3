"""Entries in, validated rows out: everything a caller can get wrong about an entry.

An entry is a ``(path, context)`` pair. :func:`prepare` turns entries into
rows -- ``dict[str, str]`` keyed by column name, the path under
``filepath_column`` -- and raises :class:`TypeError` or :class:`ValueError`
for anything that could not be written and read back exactly. It runs before
any lock is taken, so a bad entry costs nothing and changes nothing.
:func:`encode` is the last check, on the exact text about to be written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Row", "as_path_str", "encode", "prepare"]

Row = dict[str, str]


def as_path_str(path: object, what: str) -> str:
    """``path`` as a ``str``; :class:`TypeError` naming ``what`` otherwise.

    Examples
    --------
    >>> from pathlib import Path
    >>> as_path_str(Path("a") / "b.nii", "path")
    'a/b.nii'
    """
    if isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        p = os.fspath(path)
        if isinstance(p, str):
            return p
    raise TypeError(f"{what} must be a str or os.PathLike, not {type(path).__name__}")


def _as_mapping(context: object) -> dict[Any, Any]:
    """A context that is no mapping but has ``items()``, as the original takes it.

    A pandas Series (a row of ``DataFrame.iterrows()``), say.
    """
    items = getattr(context, "items", None)
    if not callable(items):
        raise TypeError(
            "context must be a mapping of column name to value (or have items()), "
            f"not {type(context).__name__}"
        )
    return dict(items())


def _make_row(path: object, context: Any, filepath_column: str) -> Row:
    p = path if type(path) is str else as_path_str(path, "path")
    if not p:
        raise ValueError("path must not be empty: there is no file to record")
    if not (type(context) is dict or isinstance(context, Mapping)):
        context = _as_mapping(context)
    row = {filepath_column: p}
    if filepath_column not in context:  # the usual case: one check for all the keys
        for key, value in context.items():
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"context keys are column names and must be str, got {key!r}")
            row[key] = value if type(value) is str else ("" if value is None else str(value))
        return row
    for key, value in context.items():
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"context keys are column names and must be str, got {key!r}")
        text = value if type(value) is str else ("" if value is None else str(value))
        if key == filepath_column:
            if text != p:
                raise ValueError(
                    f"context[{key!r}] = {text!r} conflicts with path {p!r}: "
                    f"{key!r} is the filepath_column; drop the key or use "
                    "another filepath_column"
                )
            continue
        row[key] = text
    return row


def prepare(entries: Iterable[Any], filepath_column: object) -> list[Row]:
    """Validate ``(path, context)`` pairs and turn them into rows.

    Values become ``str(value)``, ``None`` an empty string.

    Raises
    ------
    TypeError
        A pair, path, context or key of the wrong type.
    ValueError
        An empty path or ``filepath_column``, or a context key equal to
        ``filepath_column`` with a value other than the path.

    Examples
    --------
    >>> prepare([("a.nii", {"score": 0.5, "note": None})], "path")
    [{'path': 'a.nii', 'score': '0.5', 'note': ''}]
    """
    if not isinstance(filepath_column, str):
        raise TypeError(
            f"filepath_column must be a str, not {type(filepath_column).__name__}"
        )
    if not filepath_column:
        raise ValueError("filepath_column must not be empty")
    rows: list[Row] = []
    add, make = rows.append, _make_row
    for item in entries:
        try:
            path, context = item
        except (TypeError, ValueError):
            raise TypeError(
                f"entries must be (path, context) pairs, got {item!r}"
            ) from None
        add(make(path, context, filepath_column))
    return rows


def encode(text: str, rows: list[Row]) -> bytes:
    """UTF-8 bytes of ``text``, refusing what the index could not read back.

    ``rows`` are the rows ``text`` was made from, searched only to name the
    offending column in the error.

    Raises
    ------
    ValueError
        ``text`` holds a lone surrogate (not encodable) or a NUL character.

    Examples
    --------
    >>> encode("a,b\\n", [])
    b'a,b\\n'
    >>> encode("a,\\x00\\n", [{"path": "a", "v": "\\x00"}])
    Traceback (most recent call last):
    ...
    ValueError: the value of column 'v' contains a NUL character, which CSV cannot hold
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = _first_bad(rows, lambda s: not _encodable(s))
        raise ValueError(
            f"{bad} cannot be written as UTF-8 ({e.reason}); "
            "decode it properly first"
        ) from None
    if b"\x00" in data:
        bad = _first_bad(rows, lambda s: "\x00" in s)
        raise ValueError(f"{bad} contains a NUL character, which CSV cannot hold")
    return data


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad(rows: list[Row], bad: Callable[[str], bool]) -> str:
    for row in rows:
        for key, value in row.items():
            if bad(key):
                return f"column name {key!r}"
            if bad(value):
                return f"the value of column {key!r}"
    return "the entry"  # pragma: no cover - the caller found one
