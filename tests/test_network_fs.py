"""Writers on a FUSE mount, where a replaced file's open descriptor goes stale.

On network and FUSE filesystems a descriptor of a file that was deleted or
renamed over can answer ``ESTALE`` (NFS does when another client replaced
the file; the FUSE passthrough of ``tests/fusefs.py`` does for any
replacement). A writer keeps the index open between calls and every rewrite
replaces the file by a rename: the next call must notice and reopen the
index, not fail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import _internals
import fusefs
from _system import require_fuse
from _workers import check_index, context_for, entry_path
from index_writer import IndexWriter


@pytest.fixture
def fuse_dir(tmp_path: Path) -> Iterator[Path]:
    """A FUSE passthrough mount (kernel-kept locks, as on a local disk)."""
    require_fuse()
    source = tmp_path / "source"
    source.mkdir()
    with fusefs.mounted(source, tmp_path / "mount", locks="kernel") as mnt:
        try:
            yield mnt
        finally:
            _internals.close_all()  # writers keep files open: let it unmount at once


def _write(w: IndexWriter, tag: str, i: int, rev: int = 0, replace: bool = False) -> str:
    p = entry_path(tag, i)
    w.write_entry(p, context_for(p, rev), replace_existing=replace)
    return p


def test_a_new_writer_for_each_write_survives_rewrites(fuse_dir: Path) -> None:
    """With its files closed after each call, nothing stale is ever used."""
    index = fuse_dir / "index.csv"
    written = set()
    for i in range(30):  # some rows bring new columns: rewrites
        with IndexWriter(index) as w:
            written.add(_write(w, "w", i))
    check_index(index, exact=written)


def test_a_writer_goes_on_after_its_own_rewrite(fuse_dir: Path) -> None:
    index = fuse_dir / "index.csv"
    w = IndexWriter(index)
    written = {_write(w, "w", i) for i in range(30)}  # new columns: rewrites
    check_index(index, exact=written)


def test_a_writer_goes_on_after_another_process_rewrote_the_index(fuse_dir: Path) -> None:
    index = fuse_dir / "index.csv"
    w = IndexWriter(index)
    first = _write(w, "plain", 0)
    code = (
        "from index_writer import IndexWriter\n"
        f"IndexWriter({str(index)!r}).write_entry('other', {{'brand_new': 'x'}})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    second = _write(w, "plain", 1)
    assert [r["path"] for r in w.read_rows()] == [first, "other", second]


def test_a_writer_goes_on_after_the_index_was_deleted(fuse_dir: Path) -> None:
    index = fuse_dir / "index.csv"
    w = IndexWriter(index)
    _write(w, "plain", 0)
    os.unlink(index)  # starting afresh
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(index) + ".lock")
    p = _write(w, "plain", 1)
    assert [r["path"] for r in w.read_rows()] == [p]


# What the Linux NFS client does when a process renames a file over one that
# is open on the same client: it first renames the open file to a hidden
# ``.nfs...`` name ("silly rename"), so whoever has it open can go on using
# it, and only then renames the new file into place. The old file keeps a
# link, so ``fstat`` of an open descriptor shows ``st_nlink == 1`` and no
# ``ESTALE``. This rewriter does exactly those renames on a local disk.
_SILLY_RENAMING_REWRITER = """
import os, sys
from index_writer import IndexWriter
index = sys.argv[1]
real_replace = os.replace
def nfs_client_replace(src, dst):
    if os.path.exists(dst):
        os.rename(dst, os.path.join(os.path.dirname(dst), ".nfs000000000001"))
    real_replace(src, dst)
os.replace = nfs_client_replace
IndexWriter(index).write_entry("other", {"brand_new": "x"})
"""


@pytest.mark.parametrize("appends_before", [0, 1, 5])
def test_a_writer_goes_on_after_another_process_rewrote_the_index_on_nfs(
    tmp_path: Path, appends_before: int
) -> None:
    """The old file is still linked (silly-renamed): the next write must not go there."""
    index = tmp_path / "index.csv"
    w = IndexWriter(index)
    before = [_write(w, "plain", i) for i in range(1 + appends_before)]
    subprocess.run([sys.executable, "-c", _SILLY_RENAMING_REWRITER, str(index)],
                   check=True, timeout=60)
    assert (tmp_path / ".nfs000000000001").exists()  # the old file, still linked
    after = [_write(w, "plain", 100 + i) for i in range(3)]
    assert [r["path"] for r in w.read_rows()] == [*before, "other", *after]


_SILLY_RENAMING_WORKER = """
import itertools, os, sys
from index_writer import IndexWriter
index, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_replace, hidden = os.replace, itertools.count()
def nfs_client_replace(src, dst):
    if os.path.exists(dst):
        name = f".nfs{os.getpid()}_{next(hidden)}"
        os.rename(dst, os.path.join(os.path.dirname(dst), name))
    real_replace(src, dst)
os.replace = nfs_client_replace
w = IndexWriter(index)
for i in range(n):
    extra = {f"col_{tag}_{i}": "x"} if i % 7 == 3 else {}  # a new column: a rewrite
    w.write_entry(f"{tag}/{i}", {"worker": tag, **extra})
"""


def test_writers_racing_rewrites_on_nfs_lose_nothing(tmp_path: Path) -> None:
    """Four processes, each rewriting now and then the way an NFS client renames."""
    index = tmp_path / "index.csv"
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", _SILLY_RENAMING_WORKER, str(index), f"w{k}",
                          str(n)])
        for k in range(4)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert any(p.name.startswith(".nfs") for p in tmp_path.iterdir())  # rewrites happened
    rows = IndexWriter(index).read_rows()
    assert sorted(r["path"] for r in rows) == sorted(f"w{k}/{i}" for k in range(4)
                                                     for i in range(n))
