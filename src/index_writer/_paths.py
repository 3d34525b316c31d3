"""Where each path's row starts, in about 16 bytes per row.

``replace_existing`` must find the rows holding a path, in an index of
millions of rows, in constant time. A dict of a million path strings would
hold well over 100 MB in every writer process; :class:`PathOffsets` keeps
instead, per row, a short hash of its path and the row's byte offset, and
answers with *candidate* offsets: rows whose path has the same hash. The
caller reads each candidate row and compares its path (an unequal hash is
never a match; an equal one only probably is).

Layout: ``starts`` holds each row's offset, in the order rows were added;
``keys`` holds, sorted, one float per row -- the path's 24-bit hash times
2**29 plus the row's number -- an exact integer below 2**53, sorted by
CPython's fast float comparison and searched with :mod:`bisect`. Rows added
after the last sort wait in ``fresh`` (a dict of full hashes), which is
sorted in when it grows. Rows are added in bulk from blocks of plain lines
(:meth:`PathOffsets.add_plain_lines`, C-speed operations per block) or one
by one (:meth:`PathOffsets.add`).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array

__all__ = ["PathOffsets"]

_HASH_BITS = 24
_ROW_BITS = 29  # at most 2**29 rows (half a billion)
_SCALE = float(1 << _ROW_BITS)
_ROW_MASK = (1 << _ROW_BITS) - 1
_HASH_MASK = (1 << _HASH_BITS) - 1


def _fields(lines: list[bytes], column: int) -> list[bytes]:
    """Field ``column`` of each plain line ("" where a short row lacks it)."""
    if column == 0:
        return list(map(operator.itemgetter(0), map(operator.methodcaller("partition", b","),
                                                    lines)))
    split = map(operator.methodcaller("split", b",", column + 1), lines)
    try:
        return list(map(operator.itemgetter(column), split))
    except IndexError:  # a short row
        return [f[column] if column < len(f) else b"" for f in
                map(operator.methodcaller("split", b",", column + 1), lines)]


def path_hash(path: bytes) -> int:
    """The hash rows are filed under (per process: Python randomizes it)."""
    return hash(path)


class PathOffsets:
    """Candidate offsets of the rows holding each path, for one column.

    Examples
    --------
    >>> paths = PathOffsets()
    >>> paths.add("a.nii", 7)
    >>> paths.add_plain_lines(b"b.nii,1\\na.nii,2\\n", 20, 0)
    >>> sorted(paths.candidates("a.nii")), paths.candidates("b.nii"), len(paths)
    ([7, 28], [20], 3)
    >>> paths.candidates("c.nii")  # almost always empty; else a row to check
    []
    """

    __slots__ = ("fresh", "keys", "pending", "starts")

    def __init__(self) -> None:
        self.starts = array("Q")  # row number -> offset
        self.keys = array("d")  # sorted keys of the rows numbered before len(pending)...
        self.pending = array("d")  # keys not sorted in yet
        self.fresh: dict[int, list[int]] = {}  # full hash -> row numbers, not in keys

    def __len__(self) -> int:
        """How many rows are mapped."""
        return len(self.starts)

    def add(self, path: str, offset: int) -> None:
        """Record that the row at ``offset`` holds ``path``."""
        row = len(self.starts)
        self.starts.append(offset)
        self.fresh.setdefault(path_hash(path.encode()), []).append(row)
        if len(self.fresh) > max(4096, len(self.keys) >> 3):
            self.sort()

    def add_plain_lines(self, block: bytes, offset: int, column: int) -> None:
        """Record the paths of a block of plain lines starting at ``offset``.

        Plain lines (no quotes; see :func:`._table.skim`) are records whose
        fields are split by commas; ``column`` is the path's field; blank
        lines are no records. The work per line is done by C functions
        mapped over the block's lines.
        """
        lines = block.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the block ends with a line end
        starts = array("Q", itertools.accumulate(map((1).__add__, map(len, lines)),
                                                 initial=offset))
        starts.pop()  # accumulate also yields where the block ends
        if b"\r" in block:  # CR LF: every line but an unended last one ends in CR
            lines = list(map(operator.methodcaller("rstrip", b"\r"), lines))
        if not all(lines):
            nonblank = list(map(bool, lines))
            lines = list(itertools.compress(lines, nonblank))
            starts = array("Q", itertools.compress(starts, nonblank))
        first = len(self.starts)
        self.starts.extend(starts)
        fields = _fields(lines, column)
        hashes = map(_HASH_MASK.__and__, map(path_hash, fields))
        self.pending.extend(
            map(operator.add, map(_SCALE.__mul__, map(float, hashes)),
                itertools.count(float(first)))
        )

    def sort(self) -> None:
        """Sort everything added so far into ``keys`` (timsort merges the runs)."""
        if self.fresh:
            for h, rows in self.fresh.items():
                base = float(h & _HASH_MASK) * _SCALE
                self.pending.extend(base + row for row in rows)
            self.fresh = {}
        if self.pending:
            self.keys.extend(self.pending)
            self.pending = array("d")
            self.keys = array("d", sorted(self.keys))

    def candidates(self, path: str) -> list[int]:
        """Offsets of the rows that may hold ``path``: check each row's path."""
        if self.pending:
            self.sort()
        h = path_hash(path.encode())
        found = [self.starts[row] for row in self.fresh.get(h, ())]
        low = float(h & _HASH_MASK) * _SCALE
        high = low + _SCALE
        keys = self.keys
        i = bisect.bisect_left(keys, low)
        while i < len(keys) and keys[i] < high:
            found.append(self.starts[int(keys[i]) & _ROW_MASK])
            i += 1
        return found
