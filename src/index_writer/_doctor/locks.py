"""The probe lock: the lock index-writer's writers take, polled until a deadline.

The probes lock descriptors of their own files, not an index, so they call the
platform's lock primitives (:func:`index_writer._platform.try_lock` and
:func:`~index_writer._platform.unlock`: on POSIX the ``lockf`` lock that
fasteners and index-writer take) directly, without the index's lock
machinery. Waiting polls :func:`try_lock`, as writers do, until the check's
deadline.
"""

from __future__ import annotations

import errno
import importlib.util
import time

from .. import _platform

__all__ = ["UNSUPPORTED", "lock", "posix_locks", "try_lock", "unlock"]

#: Errors from locking that mean "no locks on this filesystem".
UNSUPPORTED = frozenset(
    e for e in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None))
    if e is not None
)


def posix_locks() -> bool:
    """Whether this platform has POSIX (``fcntl``) locks, which the live checks probe.

    Platform-specific, kept here rather than in ``_platform.py``: only the
    checks need to know; elsewhere they are skipped.
    """
    return importlib.util.find_spec("fcntl") is not None


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd``'s file if it is free; False if another process holds it."""
    return _platform.try_lock(fd, True)


def lock(fd: int, deadline: float) -> bool:
    """Poll for the exclusive lock until ``deadline`` (monotonic); True once held."""
    delay = 0.0002
    while True:
        if try_lock(fd):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def unlock(fd: int) -> None:
    """Release the lock on ``fd``'s file."""
    _platform.unlock(fd)
