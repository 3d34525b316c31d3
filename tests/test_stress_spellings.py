"""Stress: one index written through several spellings, by threads and processes,
while its lock file is deleted over and over and writers are SIGKILLed.

Every spelling of the index -- its real path, a path through a symlinked
directory, one with ``..`` -- is one index: threads of one process exclude
each other whichever spelling each write uses, processes exclude each other
through the lock file or, while it is being deleted and recreated, through
the lock on the index itself, and the journal next to the index lets the
next writer undo what a killed one left unfinished. Afterwards every
acknowledged entry is there, at its last acknowledged revision or later, and
no row is partial.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

import _internals
from _workers import check_index, kill_worker_spellings, read_acks, stray_temp_files, unlink_loop

FORK = multiprocessing.get_context("fork")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL, fork and symlinks")

SECONDS = 10
PROCESSES = 3
THREADS = 3


def _new_big_append(index: Path, seconds: float, seen: set[int]) -> bool:
    """Wait up to ``seconds`` for the journal to record a new append of over 1 MB.

    It may be over already (appends are not marked done): a kill then lands
    just after it, which is worth testing too.
    """
    marker = len(_internals.JOURNAL_MAGIC)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(_internals.journal_path(index), "rb") as f:
                data = f.read(4096)
            record = json.loads(data[marker + 1 :].split(b"\n")[0])
        except (OSError, ValueError):
            continue
        offset = record.get("offset", -1)
        if (
            data[marker : marker + 1] == b"A"
            and record.get("op") == "append"
            and record.get("length", 0) > 1_000_000
            and offset not in seen
        ):
            seen.add(offset)
            return True
    return False


@pytest.mark.slow
def test_spellings_threads_processes_lock_deletions_and_kills(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    index = real / "index.csv"
    spellings = [
        str(index),
        str(tmp_path / "link" / "index.csv"),
        str(real / ".." / "real" / "index.csv"),
    ]
    seed = os.getpid() ^ time.time_ns()
    print(f"random seed {seed}")  # shown if the test fails
    rng = random.Random(seed)
    logs: list[str] = []
    gen = 0

    def spawn() -> multiprocessing.process.BaseProcess:
        nonlocal gen
        gen += 1
        ack, log = str(tmp_path / f"ack{gen}"), str(tmp_path / f"log{gen}")
        logs.append(log)
        p = FORK.Process(
            target=kill_worker_spellings,
            args=(spellings, f"k{gen}", ack, log, rng.random(), THREADS),
        )
        p.start()
        return p

    stop, deleted = FORK.Event(), FORK.Value("i", 0)
    deleter = FORK.Process(target=unlink_loop, args=(str(index) + ".lock", stop, deleted))
    deleter.start()
    live = [spawn() for _ in range(PROCESSES)]
    kills = targeted = 0
    seen: set[int] = set()
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.3))
            if rng.random() < 0.4 and _new_big_append(index, 0.5, seen):
                for p in live:  # all at once: the kill lands inside that append
                    os.kill(p.pid, signal.SIGKILL)
                for k, p in enumerate(live):
                    p.join()
                    live[k] = spawn()
                kills += len(live)
                targeted += 1
                continue
            k = rng.randrange(len(live))
            assert live[k].is_alive(), f"a writer died by itself (exit code {live[k].exitcode})"
            os.kill(live[k].pid, signal.SIGKILL)
            live[k].join()
            kills += 1
            live[k] = spawn()
    finally:
        for p in live:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join()
        stop.set()
        deleter.join(30)
    kills += len(live)

    acked = read_acks(glob.glob(str(tmp_path / "ack*")))
    found = check_index(index, acked=acked)
    assert all(p.startswith("k") for p in found)
    assert stray_temp_files(real) == []
    log = "".join(Path(f).read_text() for f in logs if os.path.exists(f))
    assert "could not" not in log
    # Enough happened: writers recreate a deleted lock file when they next
    # check it (after a wait, or every RECHECK seconds), so about ten
    # deletions a second succeed.
    assert kills > 20 and len(acked) > 1000 and deleted.value > 50
    print(
        f"\n{kills} kills ({targeted} volleys aimed at a big append), "
        f"{deleted.value} lock file deletions, {len(acked)} acknowledged, "
        f"{len(found)} rows, {index.stat().st_size / 1e6:.1f} MB; appends rolled back: "
        f"{log.count('rolled back')}, rewrite temp files removed: {log.count('removed')}"
    )
