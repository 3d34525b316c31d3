"""Ctrl-C at any instant: never a lock left held, never a raw error, nothing half-written.

Python raises :class:`KeyboardInterrupt` from its SIGINT handler between any two
bytecodes of the main thread. Here a SIGALRM handler does the same after a
random 5-400 microseconds, tens of thousands of times, while the main thread
writes (appends, batches, replacements that rewrite the file) and reads.
Afterwards another thread and another process must get the lock at once,
every acknowledged entry must be there, and no row may be partial.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _workers import check_index, context_for, entry_path, read_acks, stray_temp_files
from index_writer import IndexWriter, IndexWriterError

FORK = multiprocessing.get_context("fork")

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _storm(index: str, ack_path: str, interrupts: int, conn: Any) -> None:
    """Write under a storm of interrupts; report counts and unexpected errors."""
    signal.signal(signal.SIGALRM, _interrupt)
    rng = random.Random(os.getpid())
    w = IndexWriter(index)
    ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    seen = calls = i = 0
    revs: dict[str, int] = {}
    unexpected: list[str] = []
    while seen < interrupts:
        try:
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(5e-6, 400e-6))
            r = rng.random()
            calls += 1
            if r < 0.6:
                p = entry_path("int", i)
                i += 1
                w.write_entry(p, context_for(p))
                done = [(p, 0)]
            elif r < 0.8:
                ps = [entry_path("int", j) for j in range(i, i + rng.randint(2, 40))]
                i += len(ps)
                w.write_entries([(p, context_for(p)) for p in ps])
                done = [(p, 0) for p in ps]
            elif r < 0.9 and i:
                # A real replacement (a rewrite of the file): a new revision
                # each attempt, whether or not an interrupted one took effect.
                p = entry_path("int", rng.randrange(i))
                rev = revs[p] = revs.get(p, 0) + 1
                w.write_entry(p, context_for(p, rev), replace_existing=True)
                done = [(p, rev)]
            else:
                w.read_rows()
                done = []
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.write(ack, "".join(f"{p}\t{rev}\n" for p, rev in done).encode())
        except KeyboardInterrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            seen += 1
        except IndexWriterError as e:  # allowed, but none is expected here
            signal.setitimer(signal.ITIMER_REAL, 0)
            unexpected.append(repr(e))
        except Exception as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            unexpected.append(f"{type(e).__name__}: {e}")
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)

    # The lock must be free for another thread of this process at once...
    result: list[object] = []

    def other_thread() -> None:
        try:
            IndexWriter(index, timeout=5).write_entry(entry_path("thread", 0), context_for(
                entry_path("thread", 0)))
            result.append("ok")
        except BaseException as e:
            result.append(repr(e))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(30)
    conn.send((seen, calls, unexpected, result))
    # ...and for another process while this one lives on.
    conn.recv()


@pytest.mark.slow
def test_interrupts_never_leave_a_lock_held(tmp_path: Path) -> None:
    index = str(tmp_path / "index.csv")
    ack = str(tmp_path / "acks")
    parent, kid = multiprocessing.Pipe()
    child = FORK.Process(target=_storm, args=(index, ack, 20_000, kid))
    child.start()
    assert parent.poll(600), "the interrupted writer hung"
    seen, calls, unexpected, result = parent.recv()
    try:
        assert unexpected == []
        assert result == ["ok"], result
        start = time.monotonic()
        p = entry_path("process", 0)
        IndexWriter(index, timeout=5).write_entry(p, context_for(p))  # another process
        assert time.monotonic() - start < 5
    finally:
        parent.send("done")
        child.join(60)
    assert child.exitcode == 0
    acked = read_acks([ack])
    found = check_index(index, acked=acked)
    assert {entry_path("thread", 0), entry_path("process", 0)} <= found.keys()
    assert stray_temp_files(tmp_path) == []
    print(f"\n{seen} interrupts in {calls} calls; {len(acked)} acknowledged, {len(found)} rows")


def test_an_interrupt_just_after_a_rewrite_creates_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministically, the worst instant for Ctrl-C in a rewrite: the
    # temporary file exists (really created) but the code has not yet stored
    # its descriptor -- the interrupt arrives as os.open returns. The file
    # must not be left behind; the index is unchanged and the next write works.
    index = tmp_path / "index.csv"
    w = IndexWriter(index)
    w.write_entries([(f"r{i}", {"v": 0}) for i in range(100)])
    before = index.read_bytes()
    real_open = os.open
    fired: list[str] = []

    def open_then_interrupt(path: Any, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp") and not fired:
            fired.append(str(path))
            os.close(fd)  # only so that the test itself leaks nothing
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        w.write_entry("r5", {"v": 1}, replace_existing=True)
    monkeypatch.undo()
    assert len(fired) == 1
    assert stray_temp_files(tmp_path) == []
    assert index.read_bytes() == before
    w.write_entry("r5", {"v": 2}, replace_existing=True)
    assert IndexWriter(index).read_rows()[5] == {"path": "r5", "v": "2"}


def test_an_interrupt_while_reading_the_file_is_raised_not_lost(tmp_path: Path) -> None:
    # Ctrl-C landing while the reader of the file cleans up (detaching its
    # text wrapper): were that clean-up left to the garbage collector, the
    # interrupt would be ignored and the wrapper would close the stream
    # still in use (ValueError: seek of closed file).
    import _internals
    from index_writer import _table

    index = tmp_path / "index.csv"
    IndexWriter(index).write_entries([(f"r{i}", {"v": 0}) for i in range(100)])
    _internals.forget_all()  # the next write reads the whole file
    fired: list[int] = []

    def lines(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not fired and "detach" in _source_line(frame):
            fired.append(frame.f_lineno)
            raise KeyboardInterrupt
        return lines

    def calls(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is _table.Scanner._lines.__code__:
            return lines
        return None

    sys.settrace(calls)
    try:
        with pytest.raises(KeyboardInterrupt):
            IndexWriter(index).write_entry("r5", {"v": 1}, replace_existing=True)
    finally:
        sys.settrace(None)
    assert fired
    IndexWriter(index).write_entry("r5", {"v": 1}, replace_existing=True)
    assert IndexWriter(index).read_rows()[5] == {"path": "r5", "v": "1"}


def _source_line(frame: Any) -> str:
    import linecache

    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)
