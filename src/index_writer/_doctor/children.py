"""The probe processes: real processes on this host, driven one line at a time.

The parent starts each with :class:`Child` (``python -c``, running
:func:`main` with a role and its arguments), sends it commands on its stdin
and reads one answer per line from its stdout. The roles:

``hold PATH TIMEOUT``
    Take the lock on PATH, answer ``held``, keep it until told (or killed).
``try PATH TIMEOUT``
    Answer ``got`` if the lock is free (and release it), else ``busy``; on
    ``wait``, poll for it and answer again.
``append PATH LOCK WRITER COUNT TIMEOUT``
    On ``go``, append COUNT records to PATH with ``O_APPEND``, each under LOCK.
``replace TARGET COUNT DONE``
    Replace TARGET COUNT times with ``os.replace``, then create DONE.
``read TARGET DONE TIMEOUT``
    Read TARGET until DONE exists; answer with the counts of whole, missing
    and partial files as JSON.

An ``OSError`` in a probe process is answered as ``error NAME: message``
and raised in the parent as :class:`ChildError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import locks
from .records import append_record, check_version, replace_version
from .report import describe

__all__ = ["Child", "ChildError", "main"]

_CHILD_CODE = (
    "import sys; from index_writer._doctor.children import main; sys.exit(main(sys.argv[1:]))"
)

#: The directory holding the ``index_writer`` package, put on the probe
#: processes' path so that they import this very copy of it.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class ChildError(RuntimeError):
    """A probe process reported an OSError (``errno-name: message``)."""


class Child:
    """A probe process: commands on stdin, one answer per line on stdout."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def answer(self, timeout: float) -> str:
        """The next line, or raise RuntimeError on exit or timeout."""
        try:
            line = self._lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise RuntimeError(f"a probe process gave no answer within {timeout:.0f} s") from None
        if line is None:
            self.proc.wait()
            err = self.proc.stderr.read().strip() if self.proc.stderr else ""
            raise RuntimeError(
                f"a probe process exited with status {self.proc.returncode}"
                + (f": {err.splitlines()[-1]}" if err else "")
            )
        if line.startswith("error "):
            raise ChildError(line[6:])
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _reply(line: str) -> None:
    """One answer of a probe process to its parent."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Run one probe process: ``argv`` is its role and the role's arguments."""
    role, args = argv[0], argv[1:]
    try:
        status: int = _CHILD_ROLES[role](*args)
        return status
    except OSError as e:
        _reply(f"error {describe(e)}")
        return 1


def _child_hold(path: str, timeout: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if not locks.lock(fd, time.monotonic() + float(timeout)):
        _reply("busy")
        return 1
    _reply("held")
    sys.stdin.readline()  # "release", or EOF when the parent is gone
    locks.unlock(fd)
    _reply("released")
    return 0


def _child_try(path: str, timeout: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if locks.try_lock(fd):
        _reply("got")
        locks.unlock(fd)
        return 0
    _reply("busy")
    if sys.stdin.readline().strip() != "wait":
        return 0
    _reply("got" if locks.lock(fd, time.monotonic() + float(timeout)) else "busy")
    return 0


def _child_append(path: str, lock_path: str, writer: str, count: str, timeout: str) -> int:
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    _reply("ready")
    sys.stdin.readline()  # "go": all writers start together
    deadline = time.monotonic() + float(timeout)
    for i in range(int(count)):
        if not locks.lock(lock_fd, deadline):
            _reply("busy")
            return 1
        try:
            os.write(fd, append_record(int(writer), i))
        finally:
            locks.unlock(lock_fd)
    _reply("done")
    return 0


def _child_replace(target: str, count: str, done: str) -> int:
    tmp = f"{target}.tmp"
    for v in range(1, int(count) + 1):
        with open(tmp, "wb") as f:
            f.write(replace_version(v))
        os.replace(tmp, target)
    with open(done, "wb"):
        pass
    _reply("done")
    return 0


def _child_read(target: str, done: str, timeout: str) -> int:
    deadline = time.monotonic() + float(timeout)
    reads = missing = partial = stale = 0
    example = ""
    _reply("ready")
    while not os.path.exists(done) and time.monotonic() < deadline:
        try:
            with open(target, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            missing += 1
            continue
        except OSError as e:
            # A network filesystem may answer ESTALE when the file was
            # replaced between looking it up and opening it: an error the
            # reader sees and retries, never a wrong content.
            if e.errno != errno.ESTALE:
                raise
            stale += 1
            continue
        reads += 1
        problem = check_version(data)
        if problem is not None:
            partial += 1
            example = example or problem
    _reply(json.dumps({"reads": reads, "missing": missing, "partial": partial,
                        "stale": stale, "example": example}))
    return 0


_CHILD_ROLES: dict[str, Callable[..., int]] = {
    "hold": _child_hold,
    "try": _child_try,
    "append": _child_append,
    "replace": _child_replace,
    "read": _child_read,
}
