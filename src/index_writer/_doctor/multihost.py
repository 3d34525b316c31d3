"""The multi-host check: participants on N hosts meet and take one lock in turns.

Started at once on N hosts (``srun -N4 index-writer doctor DIR --hosts 4``),
each participant of :func:`run`:

1. writes ``hello.ID.json`` (its host, its local verdict and mount) in the
   shared probe directory ``DIR/.index-writer-doctor.RUN_ID`` and waits for
   N of them (:class:`Rendezvous`);
2. takes the shared lock ``rounds`` times (:func:`take_turns`): under the
   lock it reads the sequence number from ``counter``, writes the next one
   with its id as the holder's mark, waits a moment, appends a line to
   ``appends`` and clears the mark;
3. writes its holds to ``holds.ID.json``, waits for N of them, and judges
   them all (:func:`.overlap.cross_host_check`): every participant reaches
   the same finding;
4. leaves ``done.ID``; the last one out removes the directory. A participant
   that gives up removes only its own files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

from .. import _platform
from . import locks
from .overlap import cross_host_check
from .probes import remove_tree
from .records import shared_append_line
from .report import Check, Report, combine_verdicts, describe

__all__ = ["Incomplete", "Rendezvous", "participant_id", "run", "take_turns"]

#: Bytes of the shared counter file: ``SEQ HOLDER``, padded.
_COUNTER_SIZE = 64


def _counter_record(seq: int, holder: str) -> bytes:
    return f"{seq:020d} {holder[:40]}".ljust(_COUNTER_SIZE - 1).encode() + b"\n"


def _parse_counter(data: bytes) -> tuple[int, str]:
    if not data.strip():
        return 0, "-"
    seq, _, holder = data.decode("ascii", "replace").strip().partition(" ")
    return int(seq), holder.strip() or "-"


def participant_id(host: str) -> str:
    """A new participant's id: its host name (as a file name), pid and a random part."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:60] or "host"
    return f"{safe}-{os.getpid()}-{secrets.token_hex(3)}"


class Rendezvous:
    """The shared probe directory of a multi-host check.

    Files: ``hello.<id>.json`` (a participant arrived, with its local
    findings), ``holds.<id>.json`` (its lock holds), ``done.<id>`` (it has read
    everyone's holds), ``lock`` (the probe lock), ``counter`` (the shared
    sequence number) and ``appends`` (one line per hold).
    """

    def __init__(self, shared: Path, me: str, hosts: int, timeout: float) -> None:
        self.dir = shared
        self.me = me
        self.hosts = hosts
        self.timeout = timeout
        self.mine: list[Path] = []

    def write(self, name: str, payload: dict[str, Any]) -> None:
        """Write ``name`` as JSON, atomically (readers see all of it or nothing)."""
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, path)
        self.mine.append(path)

    def names(self, prefix: str) -> list[str]:
        """The names of the files in the directory that start with ``prefix``."""
        # Creating and removing a file makes an NFS client notice that the
        # directory changed, so it rereads the listing instead of trusting
        # its cache for up to a minute.
        ping = self.dir / f".ping.{self.me}"
        with contextlib.suppress(OSError):
            ping.touch()
            ping.unlink()
        try:
            return sorted(n for n in os.listdir(self.dir) if n.startswith(prefix))
        except FileNotFoundError:
            return []

    def wait_for(self, prefix: str, what: str) -> list[str]:
        """Wait until ``hosts`` files start with ``prefix``; raise Incomplete if not."""
        deadline = time.monotonic() + self.timeout
        while True:
            names = self.names(prefix)
            if len(names) > self.hosts:
                raise Incomplete(
                    f"{len(names)} participants in {self.dir}, but --hosts is {self.hosts}: "
                    "files left by an interrupted check? Remove the directory (or give "
                    "each check its own run id) and start again",
                    names,
                )
            if len(names) == self.hosts:
                return names
            if time.monotonic() >= deadline:
                raise Incomplete(
                    f"only {len(names)} of {self.hosts} participants {what} within "
                    f"{self.timeout:g} s: start the check on all {self.hosts} hosts at "
                    "once (srun -N HOSTS ...), with the same DIR and --hosts",
                    names,
                )
            time.sleep(0.05)

    def read(self, name: str) -> dict[str, Any]:
        """The JSON of file ``name``."""
        result: dict[str, Any] = json.loads((self.dir / name).read_text(encoding="utf-8"))
        return result

    def remove_mine(self) -> None:
        """Remove the files this participant wrote, and the directory if that empties it."""
        for path in self.mine:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when nobody else left anything


class Incomplete(Exception):
    """Not all participants turned up, or more than expected (``names``: the files seen)."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def take_turns(shared: Path, me: str, rounds: int, timeout: float) -> list[dict[str, Any]]:
    """Take the shared lock ``rounds`` times; return one record per hold.

    Under the lock: open the counter (as a writer opens the index), read
    ``seq holder``, write ``seq+1 me``, hold briefly, append a line to
    ``appends``, write ``seq+1 -``, close, unlock. Two holds that overlap
    read the same ``seq`` or see each other's mark.
    """
    rng = random.Random(me)
    holds = []
    lock_fd = os.open(shared / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        for _ in range(rounds):
            if not locks.lock(lock_fd, time.monotonic() + timeout):
                raise Incomplete(
                    f"could not take the probe lock in {shared} within {timeout:g} s", []
                )
            mono0, wall0 = time.monotonic(), time.time()
            try:
                seq, seen = _count(shared, me, rng)
            finally:
                mono1, wall1 = time.monotonic(), time.time()
                locks.unlock(lock_fd)
            holds.append({"read": seq, "wrote": seq + 1, "seen": seen,
                          "wall": [wall0, wall1], "mono": [mono0, mono1]})
            time.sleep(rng.uniform(0, 0.002))  # let the others in
    finally:
        os.close(lock_fd)
    return holds


def _count(shared: Path, me: str, rng: random.Random) -> tuple[int, str]:
    """One hold's work, under the lock; returns the number read and the mark found."""
    fd = os.open(shared / "counter", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        seq, seen = _parse_counter(_platform.pread(fd, _COUNTER_SIZE, 0))
        _platform.pwrite(fd, _counter_record(seq + 1, me), 0)
        os.fsync(fd)
        time.sleep(rng.uniform(0.0005, 0.002))
        afd = os.open(shared / "appends", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(afd, shared_append_line(me, seq + 1))
        finally:
            os.close(afd)
        _platform.pwrite(fd, _counter_record(seq + 1, "-"), 0)
    finally:
        os.close(fd)
    return seq, seen


def run(
    report: Report, shared: Path, me: str, hosts: int, timeout: float, rounds: int,
    local_reason: str,
) -> None:
    """Take part as ``me`` in a check of ``hosts`` participants meeting in ``shared``.

    Adds the ``hosts`` finding and the participants to ``report`` and settles
    its verdict (:func:`.report.combine_verdicts`); ``local_reason`` explains
    this host's own verdict. Never raises for what the other participants
    did or failed to do: that is the finding.
    """
    rv = Rendezvous(shared, me, hosts, timeout)
    finished = False
    try:
        hellos, cross = _check_together(rv, report, local_reason, rounds)
        finished = True
        _leave(rv)
    except Incomplete as e:
        cross = Check("hosts", "failed", str(e), {"seen": e.names})
        hellos = []
    except OSError as e:
        cross = Check("hosts", "failed", f"the multi-host check failed: {describe(e)}")
        hellos = []
    except (ValueError, KeyError, TypeError) as e:  # a file we did not write
        cross = Check(
            "hosts", "failed",
            f"unexpected content in {shared} ({type(e).__name__}: {e}): files left by "
            "another program or an interrupted check? Remove the directory and start again",
        )
        hellos = []
    finally:
        if not finished:
            rv.remove_mine()
    report.checks.append(cross)
    report.participants = [
        {"id": h["id"], "host": h["host"], "verdict": h["verdict"], "reason": h["reason"],
         "mount": h["mount"]}
        for h in hellos
    ]
    combine_verdicts(report, local_reason, hellos, cross)


def _check_together(
    rv: Rendezvous, report: Report, local_reason: str, rounds: int
) -> tuple[list[dict[str, Any]], Check]:
    """Meet, take turns, and judge everyone's holds: the hellos and the finding."""
    rv.dir.mkdir(exist_ok=True)
    rv.write(f"hello.{rv.me}.json", {
        "id": rv.me, "host": report.host, "pid": os.getpid(), "verdict": report.verdict,
        "reason": local_reason,
        "mount": None if report.mount is None else report.mount.to_dict(),
    })
    hellos = [rv.read(n) for n in rv.wait_for("hello.", "arrived")]
    holds = take_turns(rv.dir, rv.me, rounds, rv.timeout)
    rv.write(f"holds.{rv.me}.json", {"id": rv.me, "holds": holds})
    records = {}
    for name in rv.wait_for("holds.", "finished"):
        data = rv.read(name)
        records[data["id"]] = data["holds"]
    return hellos, cross_host_check(rv.dir, hellos, records)


def _leave(rv: Rendezvous) -> None:
    """Say this participant is done; the last one out removes the directory."""
    done = rv.dir / f"done.{rv.me}"
    done.touch()
    rv.mine.append(done)
    if len(rv.names("done.")) >= rv.hosts:
        remove_tree(rv.dir)
