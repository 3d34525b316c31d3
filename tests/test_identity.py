"""One index, however it is spelled: in-process exclusion by file identity, links.

Every spelling of one index file -- through a symlinked directory, with
``..``, relative or absolute, through a bind mount, with another lock file --
shares one in-process lock and one cached state, so threads of one process
lose nothing whichever spelling each uses. A symbolic link to an index is
written through and stays a link; a hard-linked index is never split in two.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import _internals
import _system
from _workers import check_index, context_for, entry_path, run_in_threads
from index_writer import IndexLockTimeoutError, IndexWriteError, IndexWriter


def _write_through(spellings: list[tuple[str, str | None]], n: int) -> None:
    """Thread ``t`` writes ``n`` entries through ``spellings[t]`` (index, lock path)."""

    def run(t: int) -> None:
        index, lock = spellings[t]
        w = IndexWriter(index, lock)
        for i in range(n):
            p = entry_path(f"t{t}", i)
            # Self-checking rows; some bring new columns (rewrites while others append).
            w.write_entry(p, context_for(p))

    run_in_threads(run, len(spellings))


def _all(spellings: int, n: int) -> set[str]:
    return {entry_path(f"t{t}", i) for t in range(spellings) for i in range(n)}


def test_symlinked_directory_and_dotdot_spellings_share_one_lock(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    spellings: list[tuple[str, str | None]] = [
        (str(real / "index.csv"), None),
        (str(tmp_path / "link" / "index.csv"), None),
        (str(real / ".." / "real" / "index.csv"), None),
        (os.path.relpath(real / "index.csv"), None),
    ]
    _write_through(spellings, 150)
    check_index(real / "index.csv", exact=_all(4, 150))
    assert not [p for p in real.iterdir() if p.name.endswith(".tmp")]


def test_two_lock_paths_for_one_index_in_one_process(tmp_path: Path) -> None:
    index = str(tmp_path / "index.csv")
    spellings: list[tuple[str, str | None]] = [
        (index, None),
        (index, str(tmp_path / "other.lock")),
        (index, str(tmp_path / "locks" / "third.lock")),
    ]
    _write_through(spellings, 200)
    check_index(index, exact=_all(3, 200))


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    try:
        r = subprocess.run(["mount", "--bind", str(src), str(other)], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run mount: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {r.stderr.strip()}")
    try:
        yield src, other
    finally:
        subprocess.run(["umount", "-l", str(other)], check=False, timeout=30)


def test_bind_mount_spellings_share_one_lock(bind_mount: tuple[Path, Path]) -> None:
    src, other = bind_mount
    st_a, st_b = os.stat(src), os.stat(other)
    assert (st_a.st_dev, st_a.st_ino) == (st_b.st_dev, st_b.st_ino)  # one directory
    spellings: list[tuple[str, str | None]] = [
        (str(src / "index.csv"), None),
        (str(other / "index.csv"), None),
    ] * 2
    _write_through(spellings, 300)
    check_index(src / "index.csv", exact=_all(4, 300))


def test_symlinked_index_file_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "run3_index.csv"
    link = tmp_path / "index.csv"
    IndexWriter(target).write_entries([("a", {"v": 1}), ("b", {"v": 2})])
    link.symlink_to(target.name)
    w = IndexWriter(link)
    w.write_entry("c", {"v": 3})  # append
    w.write_entry("d", {"v": 4, "new": "x"})  # new column: a rewrite
    w.write_entry("a", {"v": 9}, replace_existing=True)  # replacement: a rewrite
    assert link.is_symlink() and os.readlink(link) == target.name
    assert [r["path"] for r in IndexWriter(target).read_rows()] == ["a", "b", "c", "d"]
    assert link.read_bytes() == target.read_bytes() == b"path,v,new\na,9,\nb,2,\nc,3,\nd,4,x\n"


def test_hard_linked_index_appends_and_refuses_rewrites(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    other = tmp_path / "same.csv"
    IndexWriter(index).write_entry("a", {"v": 1})
    os.link(index, other)
    w = IndexWriter(other)
    w.write_entry("b", {"v": 2})  # an append reaches both names
    assert index.read_bytes() == other.read_bytes() == b"path,v\na,1\nb,2\n"
    for rewrite in (
        lambda: w.write_entry("c", {"v": 3, "new": "x"}),
        lambda: w.write_entry("a", {"v": 5}, replace_existing=True),
    ):
        with pytest.raises(IndexWriteError, match="2 hard links") as info:
            rewrite()
        assert str(other) in str(info.value)
    assert index.read_bytes() == other.read_bytes() == b"path,v\na,1\nb,2\n"
    assert os.stat(index).st_ino == os.stat(other).st_ino


def _rename(src: str, dst: str) -> None:
    os.rename(src, dst)


@pytest.mark.parametrize("who", ["this process", "another process"])
def test_an_index_moved_aside_is_left_alone_and_a_new_one_started(
    tmp_path: Path, who: str
) -> None:
    # med-imagetools starts an index afresh by renaming it (overwrite_index);
    # users do it with mv. The file this process keeps open is then no longer
    # the index: writes must go to a new file at the path, not the moved one.
    index, moved = tmp_path / "index.csv", tmp_path / "index.csv.backup"
    w = IndexWriter(index)
    w.write_entry("run1.nii", {"run": 1})
    if who == "this process":
        os.rename(index, moved)
    else:
        _system.in_child(_rename, str(index), str(moved))
    w.write_entry("run2.nii", {"run": 2})
    IndexWriter(index).write_entry("run2b.nii", {"run": 2})
    assert moved.read_text() == "path,run\nrun1.nii,1\n"
    assert index.read_text() == "path,run\nrun2.nii,2\nrun2b.nii,2\n"


def _write_with_own_lock_file(index: str, lock: str) -> None:
    IndexWriter(index, lock_path=lock, timeout=0.3).write_entry("other", {"v": 9})


def test_a_renamed_index_is_one_index_with_the_name_it_had(tmp_path: Path) -> None:
    # This process holds b.csv open when it is renamed to c.csv. A writer of
    # c.csv must share the slot that holds the file: two slots would each
    # lock and unlock the same file, and POSIX locks belong to the process,
    # so one's unlock (here a write through the old name, which finds the
    # file gone) would release the lock the other holds, and let another
    # process in.
    b, c = tmp_path / "b.csv", tmp_path / "c.csv"
    wb = IndexWriter(b, timeout=0.3)
    wb.write_entry("x", {"v": 1})
    os.rename(b, c)
    wc = IndexWriter(c)
    with _internals.holding_lock(wc):
        with pytest.raises(IndexLockTimeoutError):
            wb.write_entry("y", {"v": 2})
        with pytest.raises(IndexLockTimeoutError):
            _system.in_child(_write_with_own_lock_file, str(c), str(tmp_path / "own.lock"))
    wb.write_entry("y", {"v": 2})  # a new index at the old name
    assert [r["path"] for r in IndexWriter(b).read_rows()] == ["y"]
    assert [r["path"] for r in wc.read_rows()] == ["x"]


@pytest.mark.parametrize(
    "linked", ["before either name is used", "after one name wrote", "after reading the other"]
)
def test_two_names_of_a_hard_linked_index_are_one_index(tmp_path: Path, linked: str) -> None:
    # Each name has its own default lock file, so only this process's mutex
    # and the lock on the index file keep two threads apart; the lock on the
    # file belongs to the process, so one thread's unlock would release it
    # for the other. While a thread holds the index through one name, a
    # write through the other must wait, as it would in another process.
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    IndexWriter(a).write_entry("first", {"v": 0})
    _internals.forget_all()  # as a new process: nothing known about either name
    x = IndexWriter(a)
    y = IndexWriter(b, timeout=0.3)
    if linked == "after one name wrote":
        x.write_entry("x", {"v": 1})
    elif linked == "after reading the other":  # b.csv missing yet: no rows, nothing opened
        x.write_entry("x", {"v": 1})
        assert y.read_rows() == []
    os.link(a, b)
    with _internals.holding_lock(x), pytest.raises(IndexLockTimeoutError):
        y.write_entry("y", {"v": 2})
    y.write_entry("y", {"v": 2})
    x.write_entry("z", {"v": 3})
    assert [r["path"] for r in y.read_rows()][-2:] == ["y", "z"]


def test_a_name_met_while_the_other_name_reopens_the_file_is_the_same_index(
    tmp_path: Path,
) -> None:
    # A writer through a.csv reopens the file a writer through b.csv opened
    # last (through its own name, so that a read-only mount stays read-only).
    # Another thread writing through b.csv at that moment must wait for it:
    # it once found the file in no slot, made a second one, and the two
    # names' writers then ran at once (duplicated rows).
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    IndexWriter(a).write_entry("first", {"v": 0})
    os.link(a, b)
    IndexWriter(b).write_entry("x", {"v": 1})  # the file is held open through b.csv
    outcome: list[BaseException | None] = []

    def other_thread_writes_through_b() -> None:
        def run(_: int) -> None:
            try:
                IndexWriter(b, timeout=0.3).write_entry("z", {"v": 3})
                outcome.append(None)
            except IndexLockTimeoutError as e:
                outcome.append(e)

        run_in_threads(run, 1)

    with _internals.just_before_opening(a, other_thread_writes_through_b):
        IndexWriter(a).write_entry("y", {"v": 2})
    assert len(outcome) == 1 and isinstance(outcome[0], IndexLockTimeoutError), outcome
    IndexWriter(b).write_entry("z", {"v": 3})
    assert [r["path"] for r in IndexWriter(a).read_rows()] == ["first", "x", "y", "z"]


def test_a_new_lock_file_named_two_ways_is_one_lock(tmp_path: Path) -> None:
    # Two indexes share a lock file that does not exist yet, named through a
    # symlinked directory by one and directly by the other. While a thread
    # holds it for one index, a write to the other waits, as it would in
    # another process: one thread's unlock must never release a lock another
    # thread of the process holds.
    (tmp_path / "locks").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "locks", target_is_directory=True)
    (tmp_path / "y.csv").write_text("path,v\n")
    x = IndexWriter(tmp_path / "x.csv", lock_path=tmp_path / "locks" / "shared.lock")
    y = IndexWriter(tmp_path / "y.csv", lock_path=tmp_path / "link" / "shared.lock", timeout=0.3)
    assert y.read_rows() == []  # met before the lock file exists (readers create nothing)
    assert not (tmp_path / "locks" / "shared.lock").exists()
    with _internals.holding_lock(x), pytest.raises(IndexLockTimeoutError):
        y.write_entry("b.nii", {"v": 1})
    y.write_entry("b.nii", {"v": 1})
    assert (tmp_path / "y.csv").read_text() == "path,v\nb.nii,1\n"
