"""Every edge of ``timeout``: what the constructor takes, and what a write then does.

A timeout is a real number of seconds >= 0, of any real number type (numpy's
too), or None; ``inf`` and anything too long to be a deadline wait forever.
Anything else is refused when the writer is made, with ValueError or
TypeError -- never a raw error later, at the first write. The command line's
``--timeout`` follows the same rules (exit 2 and one line for a bad value).
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _internals
from _cli_run import run
from _workers import hold_writer_lock_until_told
from index_writer import IndexLockTimeoutError, IndexWriter

FORK = multiprocessing.get_context("fork")

#: Timeouts that are waits of a few seconds at most, and what ``.timeout`` keeps.
SHORT: list[tuple[Any, float]] = [
    (0, 0.0),
    (0.0, 0.0),
    (-0.0, 0.0),
    (0.001, 0.001),
    (1e-9, 1e-9),
    (np.int8(0), 0.0),
    (np.int64(3), 3.0),
    (np.float32(0.5), 0.5),
    (np.float16(1), 1.0),
    (Fraction(1, 3), 1 / 3),
]
#: Timeouts that wait forever, or so long that it makes no difference.
LONG: list[Any] = [
    None,
    1e10,
    9.3e9,
    1e300,
    math.inf,
    np.float64(math.inf),
    np.uint64(2**63),
    np.longdouble("1e4000"),
    10**20,
]


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return tmp_path / "index.csv"


@pytest.mark.parametrize(("timeout", "kept"), SHORT, ids=repr)
def test_short_timeouts_are_kept_as_seconds(index: Path, timeout: Any, kept: float) -> None:
    w = IndexWriter(index, timeout=timeout)
    assert type(w.timeout) is float
    assert w.timeout == pytest.approx(kept)
    w.write_entry("a", {"k": 1})
    assert w.read_rows() == [{"path": "a", "k": "1"}]


@pytest.mark.parametrize("timeout", LONG, ids=repr)
def test_long_timeouts_work(index: Path, timeout: Any) -> None:
    w = IndexWriter(index, timeout=timeout)
    assert w.timeout is None or (type(w.timeout) is float and w.timeout >= 1e10 - 1e9)
    if timeout is not None and math.isinf(float(timeout)):
        assert w.timeout is None  # inf means wait forever
    w.write_entry("a", {"k": 1})
    w.write_entry("b", {"k": 2, "new": "x"})  # a rewrite
    assert len(w.read_rows()) == 2


@pytest.mark.parametrize(
    "timeout",
    [-1, -1e-9, -math.inf, math.nan, np.float64(math.nan), np.int64(-5), Fraction(-1, 2)],
    ids=repr,
)
def test_negative_or_nan_is_a_value_error(index: Path, timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds"):
        IndexWriter(index, timeout=timeout)


@pytest.mark.parametrize(
    "timeout", ["1", b"1", True, False, np.True_, 1 + 0j, np.complex128(1), [1], object()],
    ids=repr,
)
def test_what_is_not_a_real_number_is_a_type_error(index: Path, timeout: Any) -> None:
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        IndexWriter(index, timeout=timeout)
    assert not index.parent.joinpath("index.csv.lock").exists()


@pytest.mark.parametrize(("timeout", "kept"), [(Decimal("1.5"), 1.5), (Decimal("Infinity"), None)])
def test_decimal_timeouts_are_real_numbers(index: Path, timeout: Decimal, kept: Any) -> None:
    w = IndexWriter(index, timeout=timeout)
    assert w.timeout == kept
    w.write_entry("a", {"k": 1})


def test_an_integer_beyond_any_float_waits_forever_or_is_refused(index: Path) -> None:
    try:
        w = IndexWriter(index, timeout=10**400)
    except ValueError:
        return
    assert w.timeout is None


# ------------------------------------------------------ the timeouts at work


def _held_by_another_process(index: Path) -> tuple[Any, Any]:
    """A process holding the index lock (lock file and index) until told."""
    parent, kid = FORK.Pipe()
    holder = FORK.Process(target=hold_writer_lock_until_told, args=(str(index), kid))
    holder.start()
    assert parent.poll(30) and parent.recv() == "held"
    return holder, parent


@pytest.mark.parametrize("timeout", [0, 1e-9, 0.001, np.float32(0.05)], ids=repr)
def test_short_timeouts_give_up_on_a_held_lock(index: Path, timeout: Any) -> None:
    IndexWriter(index).write_entry("a", {"k": 1})
    before = index.read_bytes()
    holder, conn = _held_by_another_process(index)
    try:
        w = IndexWriter(index, timeout=timeout)
        for call in (lambda: w.write_entry("b", {"k": 2}), w.read_rows):
            start = time.monotonic()
            with pytest.raises(IndexLockTimeoutError) as info:
                call()
            assert time.monotonic() - start < 2
            assert info.value.timeout == w.timeout
            assert str(index) + ".lock" in str(info.value)
    finally:
        conn.send("release")
        assert conn.recv() == "released"
        holder.join(30)
    assert index.read_bytes() == before


@pytest.mark.parametrize("timeout", [None, 1e10, 1e300, math.inf, np.float64(1e12)], ids=repr)
def test_long_timeouts_wait_for_a_held_lock(index: Path, timeout: Any) -> None:
    IndexWriter(index).write_entry("a", {"k": 1})
    holder, conn = _held_by_another_process(index)
    done: list[object] = []

    def write() -> None:
        try:
            IndexWriter(index, timeout=timeout).write_entry("b", {"k": 2})
            done.append(time.monotonic())
        except BaseException as e:
            done.append(e)

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.3)  # the writer is waiting (nothing can end its wait but the release)
    assert done == [], done
    released = time.monotonic()
    conn.send("release")
    assert conn.recv() == "released"
    holder.join(30)
    t.join(30)
    assert len(done) == 1 and isinstance(done[0], float), done
    assert done[0] >= released
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a", "b"]


@pytest.mark.parametrize("timeout", [1e-9, 0.01, 1e300, math.inf], ids=repr)
def test_timeouts_between_threads_of_one_process(index: Path, timeout: float) -> None:
    """The in-process wait (a thread lock) takes every timeout the file lock does."""
    IndexWriter(index).write_entry("a", {"k": 1})
    result: list[object] = []
    with _internals.holding_lock(IndexWriter(index)):

        def write() -> None:
            try:
                IndexWriter(index, timeout=timeout).write_entry("b", {"k": 2})
                result.append("written")
            except IndexLockTimeoutError as e:
                result.append(e)

        t = threading.Thread(target=write)
        t.start()
        t.join(0.5)
        if timeout < 1:
            assert len(result) == 1 and isinstance(result[0], IndexLockTimeoutError)
        else:
            assert result == []  # still waiting
    t.join(30)
    assert len(result) == 1
    if timeout >= 1:
        assert result == ["written"]


# -------------------------------------------------------------- --timeout


@pytest.mark.parametrize("value", ["1e300", "1e400", "+inf", "1e-9", "0.001", "1_000", " 5 "])
def test_cli_timeout_accepts(index: Path, value: str) -> None:
    IndexWriter(index).write_entry("a", {"k": 1})
    for words in (["add", index, "b", "k=2"], ["show", index], ["check", index, "--dedupe"]):
        r = run(*words, "--timeout", value)
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""


@pytest.mark.parametrize("value", ["True", "0x10", "1/2", "5s", "1e10e", "−1"])
def test_cli_timeout_refuses_in_one_line(tmp_path: Path, value: str) -> None:
    r = run("add", "i.csv", "f.nii", f"--timeout={value}", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.splitlines()[-1]
    assert last.startswith("index-writer add: error: argument --timeout: expected")
    assert list(tmp_path.iterdir()) == []


def test_cli_timeout_1e10_waits_for_the_lock(index: Path) -> None:
    IndexWriter(index).write_entry("a", {"k": 1})
    holder, conn = _held_by_another_process(index)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(run("add", index, "b", "--timeout", "1e10")))
    t.start()
    t.join(1.0)
    assert out == []  # waiting
    conn.send("release")
    assert conn.recv() == "released"
    holder.join(30)
    t.join(60)
    assert out[0].returncode == 0, out[0].stderr
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a", "b"]


def test_the_wait_does_its_idle_work_only_while_it_waits() -> None:
    """``idle`` runs before the first sleep and after each one, never past the deadline."""
    from index_writer import _lock

    calls: list[str] = []
    answers = iter([False, False, True])

    def attempt() -> bool:
        calls.append("attempt")
        return next(answers)

    assert _lock.poll(attempt, None, lambda: calls.append("idle"))
    assert calls == ["attempt", "idle", "idle", "attempt", "idle", "attempt"]
    calls.clear()
    answers = iter([False])
    assert not _lock.poll(attempt, time.monotonic(), lambda: calls.append("idle"))
    assert calls == ["attempt"]  # out of time at once: no work done for a wait not made
