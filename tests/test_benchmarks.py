"""The benchmark helpers that live outside the package: the read-all/rewrite-all
baseline and the script that runs the demo workload with it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def rewrite_all(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "rewrite_all.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_baseline_rewrites_the_whole_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _naive import RewriteAllIndexWriter
    finally:
        sys.path.remove(str(BENCHMARKS))
    w = RewriteAllIndexWriter(tmp_path / "small.csv")
    w.write_entry("a", {"x": 1})
    w.write_entry("b", {"y": None})
    assert (tmp_path / "small.csv").read_text() == "path,x,y\na,1,\nb,,\n"


def test_rewrite_all_script_with_processes(tmp_path: Path) -> None:
    # Processes exclude each other through the file lock: slow, but nothing lost.
    r = rewrite_all("--workers", "2", "--entries", "30", "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"index-writer: 30 entries in \d+\.\d\d s", lines[0])
    assert lines[1] == "  kept 30 of 30 entries"
    assert re.fullmatch(r"read-all/rewrite-all: 30 entries in \d+\.\d\d s", lines[2])
    assert lines[3] == "  kept 30 of 30 entries"
    assert re.fullmatch(
        r"index-writer was \d+\.\dx as fast as read-all/rewrite-all \(.*\)", lines[4]
    )
    assert lines[5] == f"indexes: {tmp_path}"
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [
        "index-writer.csv",
        "rewrite-all.csv",
    ]


def test_rewrite_all_script_with_threads(tmp_path: Path) -> None:
    # Threads of one process are not excluded by the baseline's lock: it may
    # lose entries (how many varies); index-writer keeps them all.
    r = rewrite_all(
        "--workers", "3", "--entries", "40", "--engine", "threads", "--dir", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == "  kept 40 of 40 entries"
    assert re.fullmatch(r"  kept \d+ of 40 entries.*|  unreadable: .*", lines[3])


def test_syscall_count_sorts_calls_by_the_file_they_name() -> None:
    # Lines as `strace -f -y` prints them: a descriptor shows its path in <>.
    saved = sys.path[:]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import syscalls  # puts benchmarks/ and tests/ on sys.path itself
    finally:
        sys.path[:] = saved
    d, m = "/w/index", "/w/markers"
    trace = "\n".join([
        f'7 pwrite64(5<{d}/.index.csv.journal>, "x", 1, 0) = 1',  # before BEGIN: not counted
        f'7 newfstatat(AT_FDCWD</src>, "{m}/BEGIN", {{}}, 0) = 0',
        f"7 fcntl(3<{d}/index.csv.lock>, F_SETLK, {{l_type=F_WRLCK}}) = 0",
        f"7 fcntl(4<{d}/index.csv>, F_SETLK, {{l_type=F_WRLCK}}) = 0",
        f'7 newfstatat(4<{d}/index.csv>, "", {{st_size=22}}, AT_EMPTY_PATH) = 0',
        f'7 pwrite64(5<{d}/.index.csv.journal>, "index-writer journal 2\\nA"..., 147, 0) = 147',
        f'7 write(4<{d}/index.csv>, "b,1\\n", 4) = 4',
        f'7 newfstatat(AT_FDCWD</src>, "{d}/index.csv.tmp1", {{}}, 0) = 0',
        '7 newfstatat(AT_FDCWD</src>, "/usr/lib/python3", {}, 0) = 0',  # not ours
        f"7 close(9<{d}/index.csv (deleted)>) = 0",
        f'7 newfstatat(AT_FDCWD</src>, "{m}/END", {{}}, 0) = 0',
        f'7 write(4<{d}/index.csv>, "c,1\\n", 4) = 4',  # after END: not counted
    ])
    calls = syscalls.count(trace, Path(d) / "index.csv", m)
    assert calls == {
        ("lock file", "fcntl"): 1,
        ("index", "fcntl"): 1,
        ("index", "newfstatat"): 1,
        ("journal", "pwrite64"): 1,
        ("index", "write"): 1,
        ("other", "newfstatat"): 1,
        ("index", "close"): 1,
    }
