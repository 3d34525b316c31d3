"""The live checks on this host: real processes probing a private directory.

:func:`run_local` creates ``DIR/.index-writer-doctor-LABEL``, runs the checks
of :class:`Probes` in it and always removes it (also on errors and Ctrl-C):

``locks-supported``
    A lock can be taken at all (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP`` mean
    no locks on this filesystem).
``lock-exclusion``
    A second process cannot take a lock the first holds, both ways round,
    and gets it once it is released.
``lock-release-on-kill``
    The lock of a ``SIGKILL``-ed holder becomes free.
``append``
    ``O_APPEND`` appends from several processes, under the lock, land whole.
``replace``
    Readers never see a missing or partial file while another process
    replaces it with ``os.replace``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from . import locks
from .children import Child, ChildError
from .records import append_problems, replace_version
from .report import Check, describe

__all__ = ["PROBE_PREFIX", "Probes", "remove_tree", "run_local"]

logger = logging.getLogger(__name__)

#: Names of the probe directories in the checked directory start with this.
PROBE_PREFIX = ".index-writer-doctor"


class Probes:
    """The live checks on this host, in the private directory ``work``.

    Each probe process is started through :meth:`spawn` and killed by
    :meth:`close`; ``timeout`` bounds every wait for a lock or an answer.
    """

    APPEND_WRITERS = 4
    APPENDS = 200
    REPLACES = 200
    READERS = 2
    RELEASE_WAIT = 5.0

    def __init__(self, work: Path, timeout: float) -> None:
        self.work = work
        self.timeout = timeout
        self.children: list[Child] = []

    def spawn(self, *args: str) -> Child:
        """Start a probe process (see :mod:`.children` for the roles)."""
        child = Child(*args)
        self.children.append(child)
        return child

    def close(self) -> None:
        """Kill the probe processes still running."""
        for child in self.children:
            child.close()
        self.children.clear()

    def run(self) -> list[Check]:
        """All the checks, in order; none after a failed ``locks-supported``."""
        checks = [self.locks_supported()]
        if checks[0].outcome != "ok":
            return checks
        checks += self.exclusion_and_release()
        checks.append(self.append())
        checks.append(self.replace())
        return checks

    # -- locks
    def locks_supported(self) -> Check:
        """Whether a lock can be taken here at all."""
        if not locks.posix_locks():  # pragma: no cover - Windows
            return Check("locks-supported", "skipped",
                         "no POSIX locks on this platform: live lock checks skipped")
        path = self.work / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not locks.lock(fd, time.monotonic() + self.timeout):
                return Check("locks-supported", "failed",
                             f"a new lock file stayed locked for {self.timeout:g} s")
            locks.unlock(fd)
        except OSError as e:
            if e.errno in locks.UNSUPPORTED:
                return Check(
                    "locks-supported", "failed",
                    f"locks not supported here: fcntl lock on {path} failed with "
                    f"{describe(e)}; index-writer cannot write in this directory",
                    {"errno": errno.errorcode.get(e.errno or 0, "")},
                )
            raise
        finally:
            os.close(fd)
        return Check("locks-supported", "ok", "POSIX (fcntl) locks can be taken")

    def exclusion_and_release(self) -> list[Check]:
        """``lock-exclusion`` and ``lock-release-on-kill``, with two probe processes."""
        path = str(self.work / "lock")
        t = self.timeout
        failures: list[str] = []
        # 1. A child holds the lock: we must not get it.
        holder = self.spawn("hold", path, str(t))
        holder.answer(t)  # "held"
        fd = os.open(path, os.O_RDWR)
        try:
            if locks.try_lock(fd):
                locks.unlock(fd)
                failures.append("this process took the lock while another process held it")
            # 2. Kill the holder: the lock must become free.
            holder.kill()
            release, released = self._release_on_kill(fd)
            # 3. We hold it: a new process must not get it, then get it once we unlock.
            if not released and not locks.lock(fd, time.monotonic() + t):
                return [Check("lock-exclusion", "failed", "the probe lock never became free"),
                        release]
            failures += self._exclude_another(path, fd)
        finally:
            os.close(fd)
        if failures:
            exclusion = Check(
                "lock-exclusion", "unsafe",
                "locks do not exclude: " + "; ".join(failures),
                {"failures": failures},
            )
        else:
            exclusion = Check(
                "lock-exclusion", "ok",
                "POSIX locks exclude: a second process could not take the lock while the "
                "first held it (both ways)",
            )
        return [exclusion, release]

    def _release_on_kill(self, fd: int) -> tuple[Check, bool]:
        """Wait for the lock of a killed holder on ``fd``'s file; the finding, and if held."""
        started = time.monotonic()
        released = locks.lock(fd, started + self.RELEASE_WAIT)
        waited = time.monotonic() - started
        if released:
            return Check(
                "lock-release-on-kill", "ok",
                f"a SIGKILLed holder's lock was free again after {waited:.2f} s",
                {"seconds": round(waited, 3)},
            ), True
        return Check(
            "lock-release-on-kill", "unsafe",
            f"the lock was still held {self.RELEASE_WAIT:g} s after its holder was "
            "killed: writers would wait for a dead process",
        ), False

    def _exclude_another(self, path: str, fd: int) -> list[str]:
        """With the lock held on ``fd``: another process must not get it until we unlock."""
        t = self.timeout
        probe = self.spawn("try", path, str(t))
        if probe.answer(t) == "got":
            return ["another process took the lock while this process held it"]
        locks.unlock(fd)
        probe.send("wait")
        if probe.answer(t) != "got":
            return [
                f"another process could not take the lock within {t:g} s after "
                "this process released it"
            ]
        return []

    # -- appends
    def append(self) -> Check:
        """``append``: writers append under the lock at once; every record lands whole."""
        path = self.work / "appends"
        lock = str(self.work / "lock")
        t = self.timeout
        writers = [
            self.spawn("append", str(path), lock, str(w), str(self.APPENDS), str(t))
            for w in range(self.APPEND_WRITERS)
        ]
        for w in writers:
            w.answer(t)  # "ready"
        for w in writers:
            w.send("go")
        for w in writers:
            if w.answer(t) != "done":
                return Check("append", "failed", f"an append probe could not lock within {t:g} s")
        data = path.read_bytes()
        total = self.APPEND_WRITERS * self.APPENDS
        problems = append_problems(
            data, {(w, i) for w in range(self.APPEND_WRITERS) for i in range(self.APPENDS)}
        )
        if problems:
            return Check(
                "append", "unsafe",
                f"appends from {self.APPEND_WRITERS} processes did not land whole: "
                + "; ".join(problems),
                {"appends": total, "problems": problems},
            )
        return Check(
            "append", "ok",
            f"{total} O_APPEND appends from {self.APPEND_WRITERS} processes (under the lock) "
            "landed whole and in order",
            {"appends": total},
        )

    # -- atomic replace
    def replace(self) -> Check:
        """``replace``: readers read while a writer replaces the file; never a partial one."""
        target = self.work / "replaced"
        done = self.work / "replaced.done"
        target.write_bytes(replace_version(0))
        t = self.timeout
        readers = [self.spawn("read", str(target), str(done), str(t))
                   for _ in range(self.READERS)]
        for r in readers:
            r.answer(t)  # "ready"
        writer = self.spawn("replace", str(target), str(self.REPLACES), str(done))
        writer.answer(t)  # "done"
        results = [json.loads(r.answer(t)) for r in readers]
        reads = sum(r["reads"] for r in results)
        missing = sum(r["missing"] for r in results)
        partial = sum(r["partial"] for r in results)
        stale = sum(r["stale"] for r in results)
        details = {"replaces": self.REPLACES, "reads": reads, "missing": missing,
                   "partial": partial, "stale": stale}
        if missing or partial:
            example = next((r["example"] for r in results if r["example"]), "")
            what = []
            if missing:
                what.append(f"{missing} found no file")
            if partial:
                what.append(f"{partial} read a partial file (e.g. {example})")
            return Check(
                "replace", "unsafe",
                f"os.replace is not atomic here: of {reads + missing} reads during "
                f"{self.REPLACES} replacements, {' and '.join(what)}",
                details,
            )
        note = f" ({stale} opens failed with ESTALE and were retried)" if stale else ""
        return Check(
            "replace", "ok",
            f"{self.REPLACES} os.replace calls: {reads} reads by {self.READERS} other "
            f"processes saw only whole files{note}",
            details,
        )


def remove_tree(path: Path) -> None:
    """Remove a probe directory, retrying while a network filesystem finishes closing."""
    for attempt in range(40):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            if not os.path.lexists(path):
                return
            # Another participant, the last out at the same moment, removed
            # part of it meanwhile: go on with the rest.
        except OSError as e:
            if attempt == 39:
                logger.warning("could not remove the probe directory %s: %s", path, e)
                return
            time.sleep(0.05)


def run_local(directory: Path, timeout: float, label: str) -> list[Check]:
    """Run the live checks in ``directory``, in a subdirectory named after ``label``."""
    work = directory / f"{PROBE_PREFIX}-{label}"
    work.mkdir()
    probes = Probes(work, timeout)
    try:
        return probes.run()
    except (ChildError, RuntimeError) as e:
        return [Check("probes", "failed", f"a live check could not run: {e}")]
    finally:
        probes.close()
        remove_tree(work)
