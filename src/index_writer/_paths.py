"""Where each path's row starts, in about 16 bytes per row.

``replace_existing`` must find the rows holding a path, in an index of
millions of rows, in constant time. A dict of a million path strings would
hold well over 100 MB in every writer process; :class:`PathOffsets` keeps
instead, per row, a short hash of its path and the row's byte offset, and
answers with *candidate* offsets: rows whose path has the same hash. The
caller reads each candidate row and compares its path (an unequal hash is
never a match; an equal one only probably is).

Layout: ``starts`` holds each row's offset, in the order rows were added
(8 bytes a row). Rows loaded in bulk first wait in ``pending``: their 24-bit
hashes, 4 bytes a row in row order, searched with ``bytearray.find`` (C
speed: about 3 ms for a million rows). The first lookup searches them, so a
process that writes once (one ``index-writer add``, a job writing one
entry) never pays for sorting; the second sorts them into ``keys``: one
float per row -- the hash times 2**29 plus the row's number, an exact
integer below 2**53, sorted by CPython's fast float comparison and searched
with :mod:`bisect` (a list: 32 bytes a row; an array would save 24 but cost
a copy of the whole list every time it is sorted). Rows added after the
sort wait in ``fresh`` (a dict of full hashes, about 90 bytes a row), which
is sorted in once it holds more than :data:`FRESH_MIN` rows and an eighth
of the sorted ones: a dict lookup touches far less memory than a bisection
of the sorted keys, which matters when many writer processes take turns on
two cores and each finds its map gone from the CPU's caches. Rows are added
in bulk from blocks of plain lines (:meth:`PathOffsets.add_plain_lines`,
C-speed operations per block) or one by one (:meth:`PathOffsets.add`).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections.abc import Iterable

__all__ = ["PathOffsets"]

_HASH_BITS = 24
_ROW_BITS = 29  # at most 2**29 rows (half a billion)
_SCALE = float(1 << _ROW_BITS)
_ROW_MASK = (1 << _ROW_BITS) - 1
_HASH_MASK = (1 << _HASH_BITS) - 1
_GAP = 0xFFFFFFFF  # in ``pending``: a row kept elsewhere (no 24-bit hash is this)
_GAP_BYTES = array("I", [_GAP]).tobytes()
_SEARCHES_BEFORE_SORT = 1  # lookups that search ``pending`` before it is sorted
#: Rows ``fresh`` may hold, whatever the number of sorted ones (about 6 MB).
FRESH_MIN = 1 << 16


def _fields(lines: list[bytes], column: int) -> Iterable[bytes]:
    """Field ``column`` of each plain line ("" where a short row lacks it)."""
    if column == 0:  # lazily: the caller's C-speed pipeline makes no list of them
        return map(operator.itemgetter(0), map(operator.methodcaller("partition", b","), lines))
    split = map(operator.methodcaller("split", b",", column + 1), lines)
    try:
        return list(map(operator.itemgetter(column), split))
    except IndexError:  # a short row
        return [f[column] if column < len(f) else b"" for f in
                map(operator.methodcaller("split", b",", column + 1), lines)]


#: The hash rows are filed under: Python's own hash of the path's UTF-8 bytes
#: (randomized per process, which is fine: the map lives in one process).
path_hash = hash


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

    __slots__ = ("fresh", "keys", "pending", "pending_first", "searches", "starts")

    def __init__(self) -> None:
        self.starts = array("Q")  # row number -> offset
        self.keys: list[float] = []  # sorted keys
        self.pending = bytearray()  # 24-bit hashes (uint32) of rows from pending_first on
        self.pending_first = 0
        self.searches = 0  # lookups that searched ``pending``
        self.fresh: dict[int, int | list[int]] = {}  # full hash -> row number(s), not in keys

    def __len__(self) -> int:
        """How many rows are mapped."""
        return len(self.starts)

    def add(self, path: str, offset: int) -> None:
        """Record that the row at ``offset`` holds ``path``."""
        row = len(self.starts)
        self.starts.append(offset)
        h = path_hash(path.encode())
        fresh = self.fresh
        if h in fresh:
            old = fresh[h]
            fresh[h] = [*old, row] if isinstance(old, list) else [old, row]
        else:
            fresh[h] = row
            if len(fresh) > max(FRESH_MIN, len(self.keys) >> 3):
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
        hashes = map(path_hash, _fields(lines, column))
        if self.keys:  # already sorted: a few rows appended since; keep them aside
            fresh = self.fresh
            rows = range(first, first + len(lines))
            listed = list(hashes)
            new = dict(zip(listed, rows, strict=True))
            if len(new) == len(lines) and fresh.keys().isdisjoint(new):
                fresh.update(new)  # the usual case: no path twice
            else:
                for h, row in zip(listed, rows, strict=True):
                    old = fresh.get(h)
                    fresh[h] = (
                        row if old is None else [*old, row] if isinstance(old, list) else [old, row]
                    )
            if len(fresh) > max(FRESH_MIN, len(self.keys) >> 3):
                self.sort()
            return
        pending = self.pending
        if not pending:
            self.pending_first = first
        gap = first - self.pending_first - len(pending) // 4  # rows added one by one
        pending += _GAP_BYTES * gap
        pending += array("I", map(_HASH_MASK.__and__, hashes)).tobytes()

    def shift(self, moves: list[tuple[int, int]]) -> bool:
        """Move rows after others that changed length.

        ``moves`` holds ``(offset, delta)`` pairs in increasing offset order:
        the row starting at ``offset`` (still there, same path) grew by
        ``delta`` bytes (shrank, if negative), so every later row moves by
        the sum of the deltas before it. Rows are added in file order, so
        ``starts`` increases and each row is found by bisection. Returns
        False, changing nothing, if an offset is not the start of a row.
        """
        starts = self.starts
        bounds = []
        for offset, _ in moves:
            i = bisect.bisect_left(starts, offset)
            if i == len(starts) or starts[i] != offset:
                return False
            bounds.append(i + 1)
        bounds.append(len(starts))
        total = 0
        for (_, delta), lo, hi in zip(moves, bounds[:-1], bounds[1:], strict=True):
            total += delta
            if total and lo < hi:
                starts[lo:hi] = array("Q", map(total.__add__, starts[lo:hi]))
        return True

    def sort(self) -> None:
        """Sort everything added so far into ``keys``.

        Sorting works in place, and merges the sorted runs it finds.
        """
        keys = self.keys
        before = len(keys)
        for h, rows in self.fresh.items():
            base = float(h & _HASH_MASK) * _SCALE
            if isinstance(rows, list):
                keys.extend(base + row for row in rows)
            else:
                keys.append(base + rows)
        self.fresh = {}
        if self.pending:
            hashes = array("I")
            hashes.frombytes(self.pending)
            new = map(float.__add__, map(_SCALE.__rmul__, hashes),
                      itertools.count(float(self.pending_first)))
            keys.extend(itertools.compress(new, map(_GAP.__ne__, hashes))
                        if _GAP in hashes else new)
            self.pending = bytearray()
        if len(keys) != before:
            keys.sort()
        self.searches = 0

    def candidates(self, path: str) -> list[int]:
        """Offsets of the rows that may hold ``path``: check each row's path."""
        if self.pending and self.searches >= _SEARCHES_BEFORE_SORT:
            self.sort()
        h = path_hash(path.encode())
        rows = self.fresh.get(h)
        starts = self.starts
        found = (
            [] if rows is None
            else [starts[row] for row in rows] if isinstance(rows, list)
            else [starts[rows]]
        )
        if self.pending:
            self.searches += 1
            found += self._search_pending(h & _HASH_MASK)
        low = float(h & _HASH_MASK) * _SCALE
        high = low + _SCALE
        keys = self.keys
        i = bisect.bisect_left(keys, low)
        while i < len(keys) and keys[i] < high:
            found.append(starts[int(keys[i]) & _ROW_MASK])
            i += 1
        return found

    def _search_pending(self, key: int) -> list[int]:
        """Offsets of the pending rows whose 24-bit hash is ``key``."""
        pending, starts, first = self.pending, self.starts, self.pending_first
        pattern = array("I", [key]).tobytes()
        found = []
        at = pending.find(pattern)
        while at >= 0:
            if at % 4 == 0:  # not the bytes of two neighbours
                found.append(starts[first + at // 4])
            at = pending.find(pattern, at + 1)
        return found
