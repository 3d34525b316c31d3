"""Turning command-line words into values: numbers, seconds, column lists, column values."""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

#: Waits at least this long are waiting forever: no lock is held for 30 years,
#: and longer deadlines overflow the platform's clocks and thread waits.
FOREVER = min(1e9, threading.TIMEOUT_MAX / 2)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1.

    Examples
    --------
    >>> positive_int("12")
    12
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def timeout(text: str) -> float | None:
    """An argparse type for ``--timeout``: seconds >= 0, or ``inf`` (None: wait forever).

    Examples
    --------
    >>> timeout("2.5"), timeout("0"), timeout("inf")
    (2.5, 0.0, None)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0, or inf to wait forever; got {text!r}"
        )
    return None if value >= FOREVER else value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0.

    Examples
    --------
    >>> seconds("2.5"), seconds("0")
    (2.5, 0.0)
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def add_timeout_option(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--timeout S`` to ``parser``; ``what`` says what gives up after S seconds."""
    parser.add_argument(
        "--timeout",
        type=timeout,
        metavar="S",
        help=f"{what} after S seconds waiting for the lock (a number, or inf: "
        "wait forever, the default)",
    )


def add_lock_path_option(parser: argparse.ArgumentParser, when: str = "") -> None:
    """Add ``--lock-path FILE`` to ``parser``; ``when`` prefixes its help."""
    parser.add_argument(
        "--lock-path",
        metavar="FILE",
        help=f"{when}the lock file the index's writers use (default: INDEX.lock; "
        "the library's lock_path)",
    )


def add_filepath_column_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--filepath-column NAME`` to ``parser``."""
    parser.add_argument(
        "--filepath-column",
        default="path",
        metavar="NAME",
        help="the column holding the paths ('path')",
    )


#: One name of a ``--columns`` list: in double quotes (exact), or plain (trimmed).
_COLUMN = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^",]*?))\s*(,|$)')


def column_list(text: str) -> list[str]:
    """An argparse type: comma-separated column names, spaces around them dropped.

    Written as a CSV record, so a name holding a comma is given in double
    quotes; a quoted name is taken exactly, spaces included. A name given
    twice is refused.

    Examples
    --------
    >>> column_list('path, subject, "dose, Gy", " site"')
    ['path', 'subject', 'dose, Gy', ' site']
    """
    names: list[str] = []
    pos = 0
    while True:
        m = _COLUMN.match(text, pos)
        if m is None:
            names = []  # malformed: refused below
            break
        quoted, plain, end = m.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else plain)
        pos = m.end()
        if not end:
            break
    if not names or not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"column {', '.join(map(repr, twice))} given twice")
    return names


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


class _Number(str):
    """A JSON number, kept as the text it was given in (``1.50`` stays ``1.50``)."""


def _json_text(value: Any) -> str:
    if isinstance(value, str) and not isinstance(value, _Number):
        return value
    if value is None:
        return ""
    return _compact(value)


def _compact(value: Any) -> str:
    """Compact JSON text of a parsed value, its numbers as given."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_compact, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_compact(str(k))}:{_compact(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)  # a string, true, false or null


def _not_json(name: str) -> Any:
    raise ValueError(f"--json: {name} is not a JSON number; give it as a string")


def parse_json_object(text: str) -> dict[str, str]:
    """Parse ``--json``: a JSON object whose values become column values.

    Strings are kept as they are, ``null`` becomes an empty value, anything
    else (numbers, booleans, arrays, objects) its compact JSON text, numbers
    exactly as written (``1.50`` stays ``1.50``).

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
    >>> parse_json_object('{"n": 1.50, "big": 12345678901234567890.5, "v": [1e2, {"k": 0}]}')
    {'n': '1.50', 'big': '12345678901234567890.5', 'v': '[1e2,{"k":0}]'}
    """

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"--json: key {key!r} given twice")
            out[key] = value
        return out

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_float=_Number,
                         parse_int=_Number, parse_constant=_not_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"--json: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"--json: expected a JSON object, got {type(obj).__name__}")
    return {key: _json_text(value) for key, value in obj.items()}


def build_context(
    path: str,
    pairs: Sequence[str],
    json_texts: Sequence[str] = (),
    filepath_column: str = "path",
) -> dict[str, str]:
    """The ``context`` for ``add``: ``KEY=VALUE`` words, then each ``--json``.

    Parameters
    ----------
    path : str
        The entry's path (a key equal to ``filepath_column`` must repeat it).
    pairs : Sequence[str]
        ``KEY=VALUE`` words.
    json_texts : Sequence[str]
        The ``--json`` objects, in the order given.
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
    >>> build_context("a.nii", ["subject=s1"], ['{"note": "x,y"}', '{"n": 2}'])
    {'subject': 's1', 'note': 'x,y', 'n': '2'}
    """
    items = [parse_key_value(item) for item in pairs]
    for text in json_texts:
        items += parse_json_object(text).items()
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
