"""Resources a long-lived process holds: descriptors, mounts, time and memory.

A notebook or a service may write thousands of small indexes: the
descriptors a process keeps open must stay bounded whatever their number,
``close()`` (or leaving a ``with`` block) must let a filesystem be
unmounted, and a huge value must be read and rewritten in time and memory
proportional to its size.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import _internals
from _system import in_child, open_descriptors, tmpfs, umount
from _workers import context_for, entry_path, run_in_threads
from index_writer import IndexWriter

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self/fd, mounts and rlimits of Linux"
)


# ------------------------------------------------- thousands of indexes, few descriptors


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # not the one listdir used


def _many_indexes(root: str, n: int, threads: int) -> dict[str, object]:
    """In a child with ``ulimit -n 256``: ``threads`` threads write ``n`` indexes in all.

    Each index gets one row, every 7th a second row with a new column (a
    rewrite); every 10th write also goes to one of three indexes all threads
    share, so the least recently used indexes closed to stay within bounds
    include ones other threads are using. The descriptor count is sampled
    after every write. Then every index is read back, and 300 random early
    ones (long closed) are written to again.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    from index_writer import _handles

    base = _fd_count()
    peak = [base]
    hot = [IndexWriter(f"{root}/hot{k}/index.csv") for k in range(3)]
    hot_paths: list[set[str]] = [set(), set(), set()]
    lock = threading.Lock()

    def run(t: int) -> None:
        for i in range(t, n, threads):
            w = IndexWriter(f"{root}/d{i % 40}/i{i:05d}.csv")
            w.write_entry(f"a{i}", {"k": i})
            if i % 7 == 0:
                w.write_entry(f"b{i}", {"k": i, "new": "x"})
            if i % 10 == 0:
                p = f"t{t}/e{i}"
                hot[i % 3].write_entry(p, {"k": i})
                with lock:
                    hot_paths[i % 3].add(p)
            count = _fd_count()
            with lock:
                peak[0] = max(peak[0], count)

    run_in_threads(run, threads)
    wrong = []
    for i in range(n):
        rows = IndexWriter(f"{root}/d{i % 40}/i{i:05d}.csv").read_rows()
        want = [{"path": f"a{i}", "k": str(i)}]
        if i % 7 == 0:
            want = [{"path": f"a{i}", "k": str(i), "new": ""}, {"path": f"b{i}", "k": str(i),
                                                                "new": "x"}]
        if rows != want:
            wrong.append((i, rows))
        peak[0] = max(peak[0], _fd_count())
    again = random.Random(n).sample(range(n // 2), 300)
    for i in again:
        w = IndexWriter(f"{root}/d{i % 40}/i{i:05d}.csv")
        w.write_entry(f"c{i}", {"k": i})
        if [r["path"] for r in w.read_rows()][-1] != f"c{i}":
            wrong.append((i, "second write"))
        peak[0] = max(peak[0], _fd_count())
    hot_ok = [
        {r["path"] for r in w.read_rows()} == paths
        for w, paths in zip(hot, hot_paths, strict=True)
    ]
    return {
        "base": base,
        "peak": peak[0],
        "limit": _handles.open_limit(),
        "wrong": wrong[:5],
        "hot_ok": hot_ok,
    }


@pytest.mark.slow
def test_three_thousand_indexes_under_ulimit_256(tmp_path: Path) -> None:
    out = in_child(_many_indexes, str(tmp_path), 3000, 4, wait=300)
    assert out["wrong"] == []
    assert out["hot_ok"] == [True, True, True]
    # An index keeps two descriptors (index, journal), a lock file one.
    assert out["limit"] == 16
    # Indexes in use by a thread are never closed: up to one more each.
    assert out["peak"] - out["base"] <= 3 * (out["limit"] + 4) + 4, out
    print(f"\npeak {out['peak']} descriptors (base {out['base']}, open_limit {out['limit']})")


def _two_spellings_then_other_indexes(root: str, others: int) -> None:
    """Write one index through two spellings of its directory, then ``others`` other
    indexes (the least recently used lock files are closed beyond 4), then through
    the second spelling again; exit 0 when done (SIGALRM ends a hang after 3 s)."""
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(3)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # 4 kept open
    a = IndexWriter(f"{root}/real/index.csv")
    b = IndexWriter(f"{root}/link/index.csv", timeout=2)
    a.write_entry("a", {"k": 1})
    b.write_entry("b", {"k": 2})
    for i in range(others):
        IndexWriter(f"{root}/other{i}.csv").write_entry("x", {"k": i})
    b.write_entry("c", {"k": 3})
    a.write_entry("d", {"k": 4})
    assert [r["path"] for r in b.read_rows()] == ["a", "b", "c", "d"]
    os._exit(0)


def test_many_rewrites_of_one_index_keep_the_registries_small(tmp_path: Path) -> None:
    # Every rewrite gives the index a new file (a new inode); what this
    # process files the index under must follow it, not accumulate.
    _internals.forget_all()
    w = IndexWriter(tmp_path / "index.csv")
    w.write_entries([(f"r{i}", {"v": 0}) for i in range(10)])
    before = _internals.registry_sizes()
    for i in range(300):
        w.write_entry("r1", {"v": i + 1}, replace_existing=True)  # a rewrite each
    assert _internals.registry_sizes() == before
    assert w.read_rows()[1] == {"path": "r1", "v": "300"}
    w.close()  # it holds no file now: nothing is filed under one
    assert _internals.registry_sizes()["files"] == before["files"] - 1


def test_lock_file_of_two_spellings_closed_for_one_of_them(tmp_path: Path) -> None:
    from _system import FORK

    for others in range(1, 8):
        root = tmp_path / str(others)
        (root / "real").mkdir(parents=True)
        (root / "link").symlink_to(root / "real", target_is_directory=True)
        child = FORK.Process(target=_two_spellings_then_other_indexes, args=(str(root), others))
        child.start()
        child.join(30)
        assert child.exitcode == 0, (
            f"{others} other indexes: exit code {child.exitcode} (-14: hung until SIGALRM)"
        )


# ------------------------------------------------------------------ unmounting


def _our_descriptors(where: Path) -> list[str]:
    return [p for p in open_descriptors() if p.startswith(str(where))]


def test_close_lets_a_tmpfs_be_unmounted(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with tmpfs(mnt):
        index = mnt / "sub" / "index.csv"
        w = IndexWriter(index)
        w.write_entry("a", {"k": 1})
        w.write_entry("b", {"k": 2, "new": "x"})  # a rewrite
        w.write_entry("a", {"k": 3}, replace_existing=True)  # another
        assert len(w.read_rows()) == 2
        assert _our_descriptors(mnt), "the writer keeps its files open between calls"
        busy = umount(mnt)
        assert busy.returncode != 0 and "busy" in busy.stderr
        w.close()
        assert _our_descriptors(mnt) == []
        done = umount(mnt)
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mnt)
        # The same writer, on a fresh filesystem mounted there: a new index.
        with tmpfs(mnt):
            w.write_entry("c", {"k": 4})
            assert w.read_rows() == [{"path": "c", "k": "4"}]
            w.close()
            assert umount(mnt).returncode == 0


def test_with_block_lets_a_tmpfs_be_unmounted(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with tmpfs(mnt):
        index = mnt / "index.csv"
        with IndexWriter(index) as w:
            w.write_entries((entry_path("w", i), context_for(entry_path("w", i)))
                            for i in range(50))
        # Another spelling (a symlink from outside the mount), and a reader.
        link = tmp_path / "link"
        link.symlink_to(mnt, target_is_directory=True)
        with IndexWriter(link / "index.csv") as w2:
            p = entry_path("link", 0)
            w2.write_entry(p, context_for(p))
        assert len(IndexWriter(index).read_rows()) == 51  # readers keep nothing open
        assert _our_descriptors(mnt) == []
        r = umount(mnt)
        assert r.returncode == 0, r.stderr
        with tmpfs(mnt):
            with w:
                w.write_entry("again", {"k": 1})
            assert umount(mnt).returncode == 0


def test_an_error_inside_the_with_block_still_closes(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with tmpfs(mnt):
        def fail_inside() -> None:
            with IndexWriter(mnt / "index.csv") as w:
                w.write_entry("a", {"k": 1})
                raise KeyError("boom")

        with pytest.raises(KeyError):
            fail_inside()
        assert _our_descriptors(mnt) == []
        assert umount(mnt).returncode == 0


def test_close_after_the_directory_was_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = IndexWriter(out / "index.csv")
    w.write_entry("a", {"k": 1})
    shutil.rmtree(out)
    w.close()
    assert _our_descriptors(out) == []


# --------------------------------------------------------- one 50 MB value

_MEASURE = textwrap.dedent(
    """
    import json, sys, time
    from index_writer import IndexWriter

    def peak():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    index, action = sys.argv[1], sys.argv[2]
    w = IndexWriter(index)
    start = peak()
    t = time.perf_counter()
    if action == "read":
        rows = w.read_rows()
        check = len(rows[1]["v"])
    elif action == "replace":  # another row replaced: the file is rewritten
        w.write_entry("a.nii", {"k": "9"}, replace_existing=True)
        check = 0
    else:  # the big value itself replaced by a small one
        w.write_entry("big.nii", {"k": "9", "v": "small"}, replace_existing=True)
        check = 0
    print(json.dumps({"seconds": time.perf_counter() - t, "peak": peak(), "start": start,
                      "check": check}))
    """
)


def _make_big_index(index: Path, value: str) -> None:
    w = IndexWriter(index)
    w.write_entry("a.nii", {"k": "1"})
    w.write_entry("big.nii", {"k": "2", "v": value})
    w.write_entry("c.nii", {"k": "3"})


def _measure(index: Path, action: str) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(index), action],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, float] = json.loads(r.stdout)
    return out


def _value_figures(tmp_path: Path, value: str) -> dict[str, dict[str, float]]:
    index = tmp_path / "index.csv"
    size = len(value.encode())
    figures = {}
    for action in ("read", "replace", "replace-big"):
        if index.exists():
            index.unlink()
        in_child(_make_big_index, index, value)
        before = index.read_bytes() if action == "read" else b""
        figures[action] = _measure(index, action)
        if action == "read":
            assert figures[action]["check"] == len(value)
            assert index.read_bytes() == before
        rows = IndexWriter(index).read_rows()
        if action == "replace":
            assert rows[0]["k"] == "9" and rows[1]["v"] == value
        elif action == "replace-big":
            assert rows[1] == {"path": "big.nii", "k": "9", "v": "small"}
        figures[action]["ratio"] = figures[action]["peak"] / size
    print()
    for action, f in figures.items():
        print(
            f"{size / 1e6:.0f} MB value, {action}: {f['seconds']:.2f} s, "
            f"peak {f['peak'] / 1e6:.0f} MB ({f['ratio']:.1f}x the value; "
            f"{f['start'] / 1e6:.0f} MB at start)"
        )
    return figures


@pytest.mark.slow
def test_a_50_mb_value_of_many_lines_reads_and_rewrites_in_bounded_time_and_memory(
    tmp_path: Path,
) -> None:
    value = ("x" * 98 + "\r\n") * 500_000  # 50 MB, 500,000 lines, CR LF inside
    size = len(value)
    figures = _value_figures(tmp_path, value)
    for action, f in figures.items():
        assert f["seconds"] < 10, (action, f)
        assert f["peak"] < 6 * size + 50e6, (action, f)


@pytest.mark.slow
def test_a_5_mb_value_full_of_quotes_reads_and_rewrites_in_bounded_memory(
    tmp_path: Path,
) -> None:
    value = json.dumps({f"k{i}": "v" for i in range(300_000)})  # 5 MB of JSON, 1.2M quotes
    size = len(value)
    figures = _value_figures(tmp_path, value)
    for action, f in figures.items():
        assert f["peak"] < 6 * size + 50e6, (action, f)



def _spellings_while_evicting(root: str, seconds: float) -> int:
    """One thread writes through ever new spellings of one index while another
    writes to ever new indexes (4 kept open: evictions all the time)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    sys.setswitchinterval(1e-5)  # threads take turns often: races show (this child only)
    os.makedirs(f"{root}/a")
    errors: list[BaseException] = []
    stop = threading.Event()
    written = [0, 0, 0]

    def spellings(t: int) -> Callable[[], None]:
        def run() -> None:
            i = 0
            while not stop.is_set():
                link = f"{root}/l{t}-{i}"
                os.symlink("a", link)  # a new spelling of the index every time
                IndexWriter(f"{link}/index.csv").write_entry(f"s{t}-{i}", {"k": i})
                i += 1
            written[t] = i
        return run

    def churn() -> None:
        i = 0
        while not stop.is_set():
            IndexWriter(f"{root}/other{i}.csv").write_entry("x", {"k": i})
            i += 1

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)
                stop.set()
        return run

    workers = [spellings(0), spellings(1), spellings(2), churn, churn]
    threads = [threading.Thread(target=guarded(f)) for f in workers]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    rows = IndexWriter(f"{root}/a/index.csv").read_rows()
    assert len(rows) == sum(written)
    return sum(written)


def test_new_spellings_while_other_threads_evict(tmp_path: Path) -> None:
    """Resolving a new spelling races with another thread's eviction: no error leaks."""
    written = in_child(_spellings_while_evicting, str(tmp_path), 5.0)
    assert written > 100
