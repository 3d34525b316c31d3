"""Where each path's row starts: what ``replace_existing`` needs to find a row.

:class:`PathOffsets` maps a path to the byte offset of the row holding it, or
to :data:`DUPLICATE` when several rows hold it (a replacement must then
rewrite the file to leave exactly one). It is filled from parsed records and,
in bulk, from blocks of plain lines (see :func:`._table.skim`).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DUPLICATE", "PathOffsets"]

#: What :meth:`PathOffsets.where` returns for a path held by several rows.
DUPLICATE: Final = -1


class PathOffsets:
    """Path → offset of its row (or :data:`DUPLICATE`), for one column.

    Examples
    --------
    >>> paths = PathOffsets()
    >>> paths.add("a.nii", 7)
    >>> paths.add("b.nii", 20)
    >>> paths.add("a.nii", 33)
    >>> paths.where("a.nii") == DUPLICATE, paths.where("b.nii"), paths.where("c.nii")
    (True, 20, None)
    """

    __slots__ = ("_offsets",)

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}

    def add(self, path: str, offset: int) -> None:
        """Record that the row at ``offset`` holds ``path``."""
        offsets = self._offsets
        offsets[path] = DUPLICATE if path in offsets else offset

    def __len__(self) -> int:
        """How many distinct paths are mapped."""
        return len(self._offsets)

    def where(self, path: str) -> int | None:
        """The offset of ``path``'s row, :data:`DUPLICATE`, or None if absent."""
        return self._offsets.get(path)

    def add_plain_lines(self, block: bytes, offset: int, column: int) -> None:
        """Record the paths of a block of plain lines starting at ``offset``.

        Plain lines (no quotes; see :func:`._table.skim`) are records whose
        fields are split by commas; ``column`` is the path's field.
        """
        cut = column + 1
        offsets = self._offsets
        crlf = b"\r" in block  # then every line but a last unended one ends in CR
        for line in block.split(b"\n"):
            size = len(line) + 1
            if crlf and line.endswith(b"\r"):
                line = line[:-1]
            if line:
                fields = line.split(b",", cut)
                if column < len(fields):
                    p = fields[column].decode()
                    offsets[p] = DUPLICATE if p in offsets else offset
            offset += size
