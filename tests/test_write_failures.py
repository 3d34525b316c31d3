"""Real write failures: the index must stay byte-identical, with no stray temp file.

The failures are real, not mocked: a file size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored, so the kernel answers with a short write and then EFBIG), a
full tmpfs (ENOSPC), a read-only bind mount (EROFS), and file permissions
enforced on an unprivileged child process (EACCES). Every failure must raise
IndexWriteError whose ``original_exception`` is the OSError, leave the index
byte-identical and the same writer usable once the cause is gone.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _workers import (
    big_path,
    check_index,
    context_for,
    entry_path,
    stray_temp_files,
    write_range,
)
from index_writer import IndexReadError, IndexWriteError, IndexWriter

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX limits, mounts and fork")

FORK = multiprocessing.get_context("fork")


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:
        conn.send(("err", e))


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a forked child; return its result or raise its exception."""
    parent, kid = FORK.Pipe()
    p = FORK.Process(target=_child_main, args=(kid, fn, args))
    p.start()
    assert parent.poll(60), "child did not answer"
    status, value = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    if status == "err":
        raise value
    return value


def _assert_write_error(exc: BaseException, *errnos: int) -> None:
    assert isinstance(exc, IndexWriteError), repr(exc)
    assert isinstance(exc.original_exception, OSError), repr(exc.original_exception)
    assert exc.original_exception.errno in errnos, exc.original_exception


def _base_index(directory: Path, n: int = 100) -> tuple[str, set[str]]:
    index = str(directory / "index.csv")
    write_range(index, "base", n)
    return index, {entry_path("base", i) for i in range(n)}


# ------------------------------------------------------------- RLIMIT_FSIZE


def _write_under_fsize_limit(
    index: str, limit: int, action: str
) -> tuple[BaseException | None, bytes, list[str], str]:
    """In a child: set the file size limit, fail a write, lift it, write again.

    Returns the failure, the index's bytes and the directory listing right
    after it, and the path written once the limit was lifted.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    w = IndexWriter(index)
    w.read_rows()  # the writer knows the file before the failure
    failure: BaseException | None = None
    try:
        if action == "append":
            p = f"long/{'d' * 600}/e.nii.gz"  # a ~700-byte row, no new column
            w.write_entry(p, context_for(p))
        elif action == "batch":
            w.write_entries(
                (entry_path("batch", i), context_for(entry_path("batch", i))) for i in range(2000)
            )
        elif action == "new-column":
            p = big_path("base", 1)  # its "blob" column is new: a rewrite
            w.write_entry(p, context_for(p))
        elif action == "replace":
            p = entry_path("base", 3)
            w.write_entry(p, context_for(p, 1), replace_existing=True)
        else:  # pragma: no cover
            raise AssertionError(action)
    except BaseException as e:
        failure = e
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    data = Path(index).read_bytes()
    listing = sorted(os.listdir(os.path.dirname(index)))
    after = entry_path("after", 0)
    w.write_entry(after, context_for(after))  # the same writer, still consistent
    return failure, data, listing, after


@pytest.mark.parametrize("headroom", [0, 100])
@pytest.mark.parametrize("action", ["append", "batch"])
def test_rlimit_fsize_append(tmp_path: Path, action: str, headroom: int) -> None:
    """An append crossing the limit: a short write then EFBIG, or EFBIG at once."""
    index, base = _base_index(tmp_path)
    before = Path(index).read_bytes()
    listing = sorted(os.listdir(tmp_path))
    failure, data, listing_then, after = run_in_child(
        _write_under_fsize_limit, index, len(before) + headroom, action
    )
    assert failure is not None
    _assert_write_error(failure, errno.EFBIG)
    assert data == before
    assert listing_then == listing  # no stray file
    # The writer that failed appends normally once the limit is gone.
    assert Path(index).read_bytes().startswith(before)
    check_index(index, exact=base | {after})


def _fail_one_append(index: str, limit: int) -> BaseException | None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        p = f"long/{'d' * 600}/e.nii.gz"  # a ~700-byte row, no new column
        IndexWriter(index).write_entry(p, context_for(p))
    except BaseException as e:
        return e
    return None


def test_a_failed_append_leaves_no_record_to_misread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The append was undone, so its crash-journal record is void. Kept as
    # unfinished, it made the next writer, after another program appended a
    # few bytes, warn of a crashed write it could not undo.
    index, _ = _base_index(tmp_path)
    failure = run_in_child(_fail_one_append, index, os.path.getsize(index) + 5)
    _assert_write_error(failure, errno.EFBIG)
    with open(index, "a") as f:
        f.write("foreign\n")  # a short row: the other columns empty
    after = entry_path("after", 0)
    with caplog.at_level("WARNING", logger="index_writer"):
        IndexWriter(index).write_entry(after, context_for(after))
    assert caplog.records == []
    assert [r["path"] for r in IndexWriter(index).read_rows()][-2:] == ["foreign", after]


@pytest.mark.parametrize(("action", "room"), [("new-column", 20), ("replace", -10)])
def test_rlimit_fsize_rewrite(tmp_path: Path, action: str, room: int) -> None:
    """A rewrite (schema change, real replacement) whose temp file hits the limit.

    The limit is ``room`` bytes more than the current file: a schema change
    adds a 50 kB value, a replacement here keeps the size, so it gets less
    room than the file already takes (the index itself is only read).
    """
    index, base = _base_index(tmp_path)
    before = Path(index).read_bytes()
    listing = sorted(os.listdir(tmp_path))
    failure, data, listing_then, after = run_in_child(
        _write_under_fsize_limit, index, len(before) + room, action
    )
    assert failure is not None
    _assert_write_error(failure, errno.EFBIG)
    assert data == before
    assert listing_then == listing  # the temp file is gone
    assert Path(index).read_bytes().startswith(before)
    check_index(index, exact=base | {after})


def _first_write_with_no_room(index: str) -> BaseException | None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        IndexWriter(index).write_entry("a.nii", {"x": 1})
    except BaseException as e:
        return e
    return None


def test_rlimit_fsize_first_write_leaves_no_empty_index(tmp_path: Path) -> None:
    index = str(tmp_path / "new" / "index.csv")
    failure = run_in_child(_first_write_with_no_room, index)
    _assert_write_error(failure, errno.EFBIG)
    assert not os.path.exists(index)
    assert stray_temp_files(tmp_path / "new") == []


# ------------------------------------------------------------ a full tmpfs


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run mount: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def _try_write(index: str, path: str) -> BaseException | None:
    try:
        IndexWriter(index).write_entry(path, context_for(path))
    except BaseException as e:
        return e
    return None


def _fill(directory: Path) -> Path:
    """Fill the file system until not one more byte fits; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def test_full_tmpfs_enospc(small_tmpfs: Path) -> None:
    index, base = _base_index(small_tmpfs, 60)
    writer = IndexWriter(index)
    writer.read_rows()
    before = Path(index).read_bytes()
    filler = _fill(small_tmpfs)
    long = f"long/{'d' * 6000}/e.nii.gz"  # a ~6 kB row, no new column

    attempts: list[Callable[[], None]] = [
        # Appends bigger than the slack in the index's last page.
        lambda: writer.write_entry(long, context_for(long)),
        lambda: writer.write_entries(
            [(entry_path("many", i), context_for(entry_path("many", i))) for i in range(500)]
        ),
        # Rewrites: the temp file cannot be written.
        lambda: writer.write_entry(
            entry_path("base", 2), context_for(entry_path("base", 2), 1), replace_existing=True
        ),
        lambda: writer.write_entry(entry_path("col", 0), {"new_column": "x" * 10_000}),
    ]
    for attempt in attempts:
        with pytest.raises(IndexWriteError) as info:
            attempt()
        _assert_write_error(info.value, errno.ENOSPC)
        assert Path(index).read_bytes() == before
        assert stray_temp_files(small_tmpfs) == []

    # The lock file deleted meanwhile: a new process makes a new one (an
    # empty file fits), and its long row still does not.
    os.unlink(index + ".lock")
    lockless = f"lockless/{'d' * 6000}/e.nii.gz"
    failure = run_in_child(_try_write, index, lockless)
    _assert_write_error(failure, errno.ENOSPC)
    assert Path(index).read_bytes() == before

    filler.unlink()
    writer.write_entry(long, context_for(long))
    writer.write_entries(
        [(entry_path("many", i), context_for(entry_path("many", i))) for i in range(500)]
    )
    p = entry_path("base", 2)
    writer.write_entry(p, context_for(p, 1), replace_existing=True)
    revs = dict.fromkeys(base, 0) | {p: 1, long: 0}
    revs |= {entry_path("many", i): 0 for i in range(500)}
    check_index(index, exact=set(revs), revs=revs)


def test_a_full_disk_for_the_journal_undoes_the_append(small_tmpfs: Path) -> None:
    # A file made elsewhere (no journal yet) with room in its last page: the
    # row itself fits, the journal's record of it does not.
    index = small_tmpfs / "index.csv"
    index.write_bytes(b"path,v\na,1\n")
    before = index.read_bytes()
    filler = _fill(small_tmpfs)
    writer = IndexWriter(index)
    with pytest.raises(IndexWriteError) as info:
        writer.write_entry("b", {"v": 2})
    _assert_write_error(info.value, errno.ENOSPC)
    assert ".index.csv.journal" in str(info.value)  # what is full, named
    assert index.read_bytes() == before
    filler.unlink()
    writer.write_entry("c", {"v": 3})
    assert [r["path"] for r in writer.read_rows()] == ["a", "c"]


# ------------------------------------------------------ read-only bind mount


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable view, read-only bind mount of the same directory)."""
    src, ro = tmp_path / "data", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    try:
        r = subprocess.run(
            ["mount", "--bind", str(src), str(ro)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run mount: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {r.stderr.strip()}")
    try:
        r = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True, text=True, timeout=30
        )
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        yield src, ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False, timeout=30)


def test_read_only_mount(read_only_dir: tuple[Path, Path], tmp_path: Path) -> None:
    src, ro = read_only_dir
    _, base = _base_index(src, 20)
    index = ro / "index.csv"
    before = index.read_bytes()
    p = entry_path("ro", 0)
    # The default lock file is on the read-only mount too.
    with pytest.raises(IndexWriteError) as info:
        IndexWriter(index).write_entry(p, context_for(p))
    _assert_write_error(info.value, errno.EROFS)
    # With the lock elsewhere the index itself refuses the write.
    elsewhere = IndexWriter(index, lock_path=tmp_path / "locks" / "ro.lock")
    for attempt in (
        lambda: elsewhere.write_entry(p, context_for(p)),
        lambda: elsewhere.write_entry(big_path("ro", 0), context_for(big_path("ro", 0))),
    ):
        with pytest.raises(IndexWriteError) as info:
            attempt()
        _assert_write_error(info.value, errno.EROFS)
    assert index.read_bytes() == before
    assert [r["path"] for r in elsewhere.read_rows()] == [entry_path("base", i) for i in range(20)]
    assert stray_temp_files(src) == []
    check_index(src / "index.csv", exact=base)


# -------------------------------------------- permissions, as an unprivileged user


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged child can reach (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="index-writer-perm-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)


def _unprivileged_writes(index: str, lock: str, action: str) -> tuple[BaseException | None, int]:
    _drop_privileges()
    w = IndexWriter(index, lock_path=lock)
    n = len(w.read_rows())  # reading needs only read permission (and the lock)
    try:
        if action == "append":
            w.write_entry(entry_path("user", 0), context_for(entry_path("user", 0)))
        else:
            w.write_entry(big_path("user", 0), context_for(big_path("user", 0)))
    except BaseException as e:
        return e, n
    return None, n


def test_read_only_file_for_unprivileged_user(shared_dir: Path) -> None:
    data, locks = shared_dir / "data", shared_dir / "locks"
    data.mkdir(mode=0o777)
    locks.mkdir(mode=0o777)
    data.chmod(0o777)
    locks.chmod(0o777)
    index, base = _base_index(data, 30)
    os.chmod(index, 0o444)
    before = Path(index).read_bytes()
    for action in ("append", "new-column"):
        failure, n = run_in_child(_unprivileged_writes, index, str(locks / "i.lock"), action)
        assert n == 30
        _assert_write_error(failure, errno.EACCES, errno.EPERM)
        assert Path(index).read_bytes() == before
        assert stray_temp_files(data) == []
    check_index(index, exact=base)


def test_rewrite_in_unwritable_directory(shared_dir: Path) -> None:
    """Appends need only the file; a rewrite needs the directory: it must fail cleanly."""
    data, locks = shared_dir / "data", shared_dir / "locks"
    data.mkdir()
    locks.mkdir()
    data.chmod(0o755)  # owned by root: an unprivileged user cannot create files here
    locks.chmod(0o777)
    index, base = _base_index(data, 30)
    os.chmod(index, 0o666)
    lock = str(locks / "i.lock")
    failure, _ = run_in_child(_unprivileged_writes, index, lock, "append")
    assert failure is None
    before = Path(index).read_bytes()
    failure, _ = run_in_child(_unprivileged_writes, index, lock, "new-column")
    if os.geteuid() != 0:  # pragma: no cover - the file is ours: nothing was denied
        pytest.skip("not root: cannot create a directory this process may not write")
    _assert_write_error(failure, errno.EACCES, errno.EPERM)
    assert Path(index).read_bytes() == before
    assert stray_temp_files(data) == []
    check_index(index, exact=base | {entry_path("user", 0)})


# ------------------------------------------------- permission bits of a rewrite


def _rewrite_with_umask(index: str) -> list[tuple[int, int, int]]:
    """Two rewrites under a restrictive umask; (inode, mode, gid) after each."""
    os.umask(0o077)
    out = []
    p = big_path("perm", 0)
    IndexWriter(index).write_entry(p, context_for(p))  # new "blob" column: a rewrite
    st = os.stat(index)
    out.append((st.st_ino, stat.S_IMODE(st.st_mode), st.st_gid))
    q = entry_path("base", 1)
    IndexWriter(index).write_entry(q, context_for(q, 1), replace_existing=True)
    st = os.stat(index)
    out.append((st.st_ino, stat.S_IMODE(st.st_mode), st.st_gid))
    return out


@pytest.mark.parametrize("mode", [0o640, 0o664, 0o604], ids=oct)
def test_rewrite_keeps_permission_bits_and_group(tmp_path: Path, mode: int) -> None:
    """Group-shared indexes stay group-readable after a schema change or replacement."""
    index, base = _base_index(tmp_path, 10)
    os.chmod(index, mode)
    gid = os.stat(index).st_gid
    if os.geteuid() == 0:
        gid = 100 if gid != 100 else 101
        os.chown(index, -1, gid)
    ino = os.stat(index).st_ino
    (ino1, mode1, gid1), (ino2, mode2, gid2) = run_in_child(_rewrite_with_umask, index)
    assert ino1 != ino and ino2 != ino1, "expected two rewrites (new files)"
    assert mode1 == mode2 == mode
    assert gid1 == gid2 == gid
    revs = dict.fromkeys(base, 0) | {entry_path("base", 1): 1, big_path("perm", 0): 0}
    check_index(index, exact=set(revs), revs=revs)


def test_read_error_is_not_a_write_error(tmp_path: Path) -> None:
    """A malformed index is reported as IndexReadError and left untouched by a write."""
    index = tmp_path / "index.csv"
    index.write_bytes(b"path,a\nx.nii,1,2\n")
    with pytest.raises(IndexReadError):
        IndexWriter(index).write_entry("y.nii", {"a": 1})
    assert index.read_bytes() == b"path,a\nx.nii,1,2\n"
