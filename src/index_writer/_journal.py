"""The crash journal: what the lock holder is in the middle of doing.

A writer records an operation before it touches the index, and marks it done
afterwards, so that the next holder of the lock can undo a write that a crash
cut short:

- an **append** is recorded with the index's identity (device and inode), the
  offset where it starts, its length, its first :data:`HEAD` bytes and a
  CRC-32 of each later :data:`HEAD`-byte chunk. If the file is found longer
  than that offset but shorter than the whole append, and the extra bytes are
  provably the start of that append, they are truncated away (:func:`recover`).
  Anything else means another program has written since, and nothing is cut.
- a **rewrite** is recorded with the name of its temporary file, which is
  removed if it is still there; the index itself was never touched (it is
  replaced by a rename, which is atomic).

Format: the journal file starts with :attr:`Journal.MAGIC`, then ``A`` (an
operation is active) or ``D`` (done), then the record as one line of JSON and
an optional binary payload (the append's head). Each step is one ``pwrite``
in place.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any

from . import _files, _platform

__all__ = ["HEAD", "Journal", "append_record", "recover", "rewrite_record"]

logger = logging.getLogger(__name__)

#: An append's record carries its first bytes, and a CRC-32 of each later chunk
#: of this size, so a rollback can prove the bytes it removes are ours.
HEAD = 4096

#: How much of the journal is read on each acquisition; larger records (big
#: appends) are read whole when this is not enough.
_READ = 1 << 13


class Journal:
    """The journal kept in an open file: read on creation, written in place.

    A file that holds anything but a journal (a user pointed ``lock_path`` at
    a file with content) is never written, and neither is ``fd`` -1 (no
    journal on this platform or for this file).

    Parameters
    ----------
    fd : int
        Read-write descriptor of the journal file, or -1 for none.
    deadline : float | None
        ``time.monotonic()`` value by which the caller's timeout runs out,
        for any further waiting it does while holding the lock.

    Attributes
    ----------
    record : bytes | None
        The unfinished operation left by a previous holder, if any.
    payload : bytes
        The bytes stored after that record (possibly followed by leftovers
        of an earlier, longer record: the record says how many are its own).
    """

    MAGIC = b"index-writer journal 1\n"
    _ACTIVE = b"A"
    _DONE = b"D"

    def __init__(self, fd: int, deadline: float | None = None) -> None:
        self._fd = fd
        self.deadline = deadline
        self.record: bytes | None = None
        self.payload = b""
        self.enabled = fd >= 0
        if not self.enabled:
            return
        data = _platform.pread(fd, _READ, 0)
        if not data:
            return
        if not data.startswith(self.MAGIC):
            logger.debug("lock file holds foreign content; crash journal disabled")
            self.enabled = False
            return
        body = data[len(self.MAGIC) :]
        if body[:1] == self._ACTIVE:
            if len(data) == _READ:  # a large record: read all of it
                data = _files.pread_all(fd, os.fstat(fd).st_size, 0)
                body = data[len(self.MAGIC) :]
            self.record, _, rest = body[1:].partition(b"\n")
            self.payload = rest

    def write(self, record: bytes, durable: bool, payload: bytes = b"") -> None:
        """Record an operation about to start (one line, no newline, then data)."""
        if not self.enabled:
            return
        _files.write_all(self._fd, self.MAGIC + self._ACTIVE + record + b"\n" + payload, 0)
        if durable:
            os.fsync(self._fd)

    def clear(self) -> None:
        """Mark the recorded operation finished (or rolled back)."""
        if self.enabled:
            _platform.pwrite(self._fd, self._DONE, len(self.MAGIC))
            self.record = None
            self.payload = b""

    def clear_quietly(self) -> None:
        """:meth:`clear`, logging instead of raising: the operation itself is complete."""
        try:
            self.clear()
        except OSError as e:  # pragma: no cover - needs a failing pwrite
            logger.warning("could not clear the crash journal: %s", e)


def append_record(index: str, dev: int, ino: int, start: int, data: bytes) -> tuple[bytes, bytes]:
    """The record and payload for appending ``data`` at ``start`` to ``index``."""
    crcs = ""
    if len(data) > HEAD:
        full = range(HEAD, len(data) - HEAD + 1, HEAD)
        crcs = ',"crc":[' + ",".join(str(zlib.crc32(data[i : i + HEAD])) for i in full) + "]"
    head = data[:HEAD]
    record = (
        f'{{"op":"append","index":{json.dumps(index)},"dev":{dev},"ino":{ino},'
        f'"offset":{start},"length":{len(data)},"head":{len(head)}{crcs}}}'
    )
    return record.encode(), head


def rewrite_record(index: str, temp: str) -> bytes:
    """The record for rewriting ``index`` through the temporary file ``temp``."""
    return json.dumps({"op": "rewrite", "index": index, "temp": temp}).encode()


def recover(journal: Journal, where: object) -> None:
    """Undo the operation a holder that died with the lock left unfinished.

    ``where`` names the journal's file in log messages.
    """
    record = journal.record
    if not record:
        return
    try:
        info = json.loads(record)
        op, index = info["op"], info["index"]
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring an unreadable crash journal in %s", where)
        journal.clear()
        return
    if op == "append":
        _roll_back_append(index, info, journal.payload[: info.get("head", 0)])
    elif op == "rewrite":
        try:
            os.unlink(info["temp"])
            logger.warning(
                "removed %s, left by a rewrite of %s cut short by a crash", info["temp"], index
            )
        except FileNotFoundError:
            pass
    journal.clear()


def _roll_back_append(index: str, info: dict[str, Any], head: bytes) -> None:
    """Truncate an append that a crash cut short, if the file still shows it.

    Only when the file is the one appended to, has grown past the recorded
    offset but not by the whole length, and those bytes are provably ours.
    """
    try:
        fd = os.open(index, os.O_RDWR | _platform.O_BINARY)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        start, length = info["offset"], info["length"]
        if (st.st_dev, st.st_ino) != (info["dev"], info["ino"]) or not (
            start < st.st_size < start + length
        ):
            return
        if not _is_ours(fd, start, st.st_size, head, info.get("crc", [])):
            logger.warning(
                "not rolling back the write to %s cut short by a crash: "
                "another program has changed the file since",
                index,
            )
            return
        os.ftruncate(fd, start)
        logger.warning(
            "rolled back a write to %s cut short by a crash (%d of %d bytes had been written)",
            index,
            st.st_size - start,
            length,
        )
    finally:
        os.close(fd)


def _is_ours(fd: int, start: int, size: int, head: bytes, crcs: list[int]) -> bool:
    """Whether the bytes from ``start`` to ``size`` are the start of our append.

    They are checked against the record: the first :data:`HEAD` bytes exactly,
    each later whole chunk by its CRC-32. Anything else means another program
    (med-imagetools rewrites the index in place, ignoring the journal) has
    written since, and nothing may be truncated.
    """
    k = min(size - start, len(head))
    if not head or _files.pread_all(fd, k, start) != head[:k]:
        return False
    pos = start + HEAD
    for crc in crcs:
        if pos + HEAD > size:
            break
        if zlib.crc32(_files.pread_all(fd, HEAD, pos)) != crc:
            return False
        pos += HEAD
    return True
