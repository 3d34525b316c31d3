"""Readers: no write access needed, no side effects, always a consistent snapshot.

``read_rows()``, ``index-writer show`` and ``index-writer check`` must work on
a read-only mount and for a user who may not write the directory (shared
datasets, published results); must create nothing, not even for a mistyped
path; and must never return part of an unfinished batch or a partial row --
neither while a writer is appending a big batch nor after one was killed in
the middle of it. Errors name the file, never a descriptor.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _internals
from _cli_run import console_script
from _system import (
    FORK,
    NOBODY,
    become,
    in_child,
    listing,
    need_root,
    read_only_view,
    shared_directory,
)
from _workers import (
    big_path,
    check_index,
    context_for,
    entry_path,
    expected_values,
    kill_inside_a_big_append,
    prepare_for_big_batch,
)
from index_writer import (
    IndexLockTimeoutError,
    IndexReadError,
    IndexWriteError,
    IndexWriter,
    dedupe,
)
from index_writer import check_index as check_report

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX mounts, users and signals")


def cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """The installed ``index-writer``; no traceback ever, no newline translation."""
    raw = subprocess.run(
        [*console_script(), *map(str, args)], capture_output=True, timeout=120, cwd="/"
    )
    r = subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode()
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _main_captured(args: list[str]) -> tuple[int, str, str]:
    import contextlib

    from index_writer._cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    out.flush()
    return code, out.buffer.getvalue().decode(), err.getvalue()  # type: ignore[attr-defined]


def _cli_as_nobody(args: list[str]) -> tuple[int, str, str]:
    _main_captured(args)  # as root first: every module the command needs is imported
    become()  # (the interpreter's own files may be out of nobody's reach)
    return _main_captured(args)


def cli_as_nobody(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``index-writer ARGS`` run by the unprivileged user (in a forked child)."""
    words = [str(a) for a in args]
    code, out, err = in_child(_cli_as_nobody, words)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(words, code, out, err)


def _self_checking_problems(rows: list[dict[str, str]]) -> list[str]:
    """Rows whose values are not exactly those derived from their path."""
    bad = []
    for row in rows:
        p = row["path"]
        want = expected_values(p, int(row.get("rev") or 0))
        for column, value in row.items():
            if column != "path" and value != want.get(column, ""):
                bad.append(f"{p}: {column}={value[:40]!r}")
        bad += [f"{p}: no column {c}" for c, v in want.items() if v and c not in row]
    return bad


def _csv_output_rows(text: str) -> list[dict[str, str]]:
    records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    return [dict(zip(records[0], r, strict=True)) for r in records[1:]]


def _index_with_rows(directory: Path, n: int = 60) -> tuple[Path, set[str]]:
    index = directory / "index.csv"
    w = IndexWriter(index)
    paths = [entry_path("base", i) for i in range(n)]
    w.write_entries((p, context_for(p)) for p in paths)
    big = big_path("base", 0)
    w.write_entry(big, context_for(big))  # its "blob" column: a rewrite
    return index, {*paths, big}


# ------------------------------------------------------ read-only mount, other users


def test_read_only_mount_read_rows_show_and_check(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    index, paths = _index_with_rows(src)
    rows = IndexWriter(index).read_rows()
    assert {r["path"] for r in rows} == paths
    with read_only_view(src, tmp_path / "ro") as ro:
        before = listing(src)
        for lock_file in ("kept", "deleted"):
            if lock_file == "deleted":
                os.unlink(str(index) + ".lock")
                before = listing(src)
            assert IndexWriter(ro / "index.csv").read_rows() == rows
            shown = cli("show", ro / "index.csv")
            assert shown.returncode == 0, shown.stderr
            assert _csv_output_rows(shown.stdout) == rows
            checked = cli("check", ro / "index.csv")
            assert checked.returncode == 0, checked.stdout
            assert checked.stdout.startswith(f"{ro / 'index.csv'}: ok: {len(rows)} rows, ")
            assert check_report(ro / "index.csv").clean
            assert listing(src) == before


def _read_with_timeout(index: str, timeout: float) -> BaseException | int:
    try:
        return len(IndexWriter(index, timeout=timeout).read_rows())
    except BaseException as e:
        return e


def test_read_only_mount_reader_still_waits_for_a_writer(tmp_path: Path) -> None:
    """Readers lock through a read-only descriptor: a write in progress holds them off."""
    src = tmp_path / "data"
    src.mkdir()
    index, paths = _index_with_rows(src, 5)
    with read_only_view(src, tmp_path / "ro") as ro:
        with _internals.holding_lock(IndexWriter(index)):
            got = in_child(_read_with_timeout, str(ro / "index.csv"), 0.3)
            assert isinstance(got, IndexLockTimeoutError), got
        assert in_child(_read_with_timeout, str(ro / "index.csv"), 5) == len(paths)


def _read_as_other_user(index: str) -> list[dict[str, str]]:
    return IndexWriter(index).read_rows()


@pytest.mark.parametrize("lock_file", ["readable", "unreadable", "missing"])
def test_user_without_write_access_reads_shows_and_checks(lock_file: str) -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir(mode=0o755)  # root's: nobody may not create files here
        index, _ = _index_with_rows(data)
        lock = data / "index.csv.lock"
        if lock_file == "unreadable":
            lock.chmod(0o600)
        elif lock_file == "missing":
            lock.unlink()
        rows = IndexWriter(index).read_rows()
        before = listing(data)
        assert in_child(_read_as_other_user, str(index), uid=NOBODY) == rows
        shown = cli_as_nobody("show", index, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == rows
        checked = cli_as_nobody("check", index)
        assert checked.returncode == 0, checked.stdout
        assert checked.stdout.startswith(f"{index}: ok: {len(rows)} rows")
        assert listing(data) == before


# ----------------------------------------------- a concurrent writer's big batches


def _batch_tag(k: int, size: int) -> str:
    return f"b{k:04d}n{size}"


#: Batches the concurrent writer writes (500 to 5,000 rows of ~150 bytes each).
BATCHES = 24


def _write_batches(index: str, done: Any, reads: Any) -> None:
    """Write :data:`BATCHES` batches of self-checking rows, then set ``done``.

    After each batch, wait until the reader has finished two more reads (the
    second began after the batch was written), so that every state of the
    index is read at least once, however the two are scheduled.
    """
    w = IndexWriter(index)
    for k in range(BATCHES):
        size = 500 + (k * 7919) % 4501
        tag = _batch_tag(k, size)
        w.write_entries((entry_path(tag, j), context_for(entry_path(tag, j))) for j in range(size))
        after = reads.value + 2
        deadline = time.monotonic() + 60
        while reads.value < after:
            assert time.monotonic() < deadline, "the reader stopped reading"
            time.sleep(0.001)
    done.set()


def _snapshot_problems(rows: list[dict[str, str]]) -> tuple[list[str], int]:
    """Partial batches and rows that are not exactly right; and how many batches."""
    rows = [r for r in rows if r["path"] != "first"]
    problems = _self_checking_problems(rows)
    counts = Counter(r["path"].split("/")[0] for r in rows)
    for tag, n in counts.items():
        want = int(tag.split("n")[1])
        if n != want:
            problems.append(f"batch {tag}: {n} of {want} rows")
    return problems, len(counts)


def _read_snapshots(index: str, done: Any, reads: Any) -> tuple[list[str], list[int]]:
    """Read over and over until the writer is done; the problems found, the batches seen.

    ``reads`` counts the reads finished.
    """
    problems: list[str] = []
    seen: list[int] = []
    while not done.is_set():
        found, batches = _snapshot_problems(IndexWriter(index).read_rows())
        problems += found
        seen.append(batches)
        with reads.get_lock():
            reads.value += 1
    return problems[:10], seen


@pytest.mark.parametrize("reader", ["read-only mount", "user without write access"])
def test_snapshots_during_big_batches_are_all_or_nothing(tmp_path: Path, reader: str) -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir(mode=0o755)
        index = data / "index.csv"
        IndexWriter(index).write_entry("first", {})  # the index and its lock file exist
        done, reads = FORK.Event(), FORK.Value("i", 0)
        writer = FORK.Process(target=_write_batches, args=(str(index), done, reads))
        with read_only_view(data, tmp_path / "ro") as ro:
            writer.start()
            try:
                if reader == "read-only mount":
                    problems, seen = _read_snapshots(str(ro / "index.csv"), done, reads)
                else:
                    problems, seen = in_child(
                        _read_snapshots, str(index), done, reads, uid=NOBODY
                    )
            finally:
                writer.join(120)
            assert writer.exitcode == 0
            assert problems == []
            assert set(range(1, BATCHES + 1)) <= set(seen), seen  # every state was read
            shown = cli("show", ro / "index.csv", "--format", "json")
        assert shown.returncode == 0, shown.stderr
        assert _snapshot_problems(json.loads(shown.stdout)) == ([], BATCHES)
        print(f"\n{len(seen)} snapshots, batches seen: {sorted(set(seen))}")


# --------------------------------------------- a writer killed inside a big append


def _rows_of(index: str, lock: str | None = None) -> list[dict[str, str]]:
    return IndexWriter(index, lock).read_rows()


def test_readers_leave_out_an_append_cut_short_and_touch_nothing(tmp_path: Path) -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir(mode=0o755)
        index, paths = _index_with_rows(data)
        paths.add(prepare_for_big_batch(index))
        size = kill_inside_a_big_append(index)
        torn = index.read_bytes()
        assert len(torn) > size
        journal = Path(_internals.journal_path(index)).read_bytes()
        before = listing(data)
        with read_only_view(data, tmp_path / "ro") as ro:
            rows = in_child(_rows_of, str(ro / "index.csv"))
            shown = cli("show", ro / "index.csv")
        assert {r["path"] for r in rows} == paths
        assert _self_checking_problems(rows) == []
        assert _csv_output_rows(shown.stdout) == rows
        assert in_child(_rows_of, str(index), uid=NOBODY) == rows
        shown = cli_as_nobody("show", index, "--format", "json")
        assert json.loads(shown.stdout) == rows
        # Readers wrote nothing: not the index, not the journal, no new file.
        assert index.read_bytes() == torn
        assert Path(_internals.journal_path(index)).read_bytes() == journal
        assert listing(data) == before
        # The next writer rolls the torn bytes back.
        check_index(index, exact=paths)
        assert len(index.read_bytes()) == size


def _unprivileged_big_batch(index: str, lock: str, n: int) -> None:
    become()
    rows = [(big_path("huge", i), context_for(big_path("huge", i))) for i in range(n)]
    IndexWriter(index, lock).write_entries(rows)
    os._exit(3)


def test_append_cut_short_by_a_writer_whose_journal_is_next_to_its_lock_file() -> None:
    """The index is writable, its directory is not: the journal goes next to the lock file."""
    need_root()
    with shared_directory() as shared:
        data, locks = shared / "data", shared / "locks"
        data.mkdir(mode=0o755)
        locks.mkdir()
        locks.chmod(0o777)
        lock = locks / "index.lock"
        index = data / "index.csv"
        w = IndexWriter(index, lock)
        paths = {entry_path("base", i) for i in range(20)}
        w.write_entries((p, context_for(p)) for p in sorted(paths))
        paths.add(prepare_for_big_batch(index, lock=lock))  # the batch is an append
        w.close()
        index.chmod(0o666)
        lock.chmod(0o666)
        before = index.read_bytes()
        for _ in range(5):
            child = FORK.Process(
                target=_unprivileged_big_batch, args=(str(index), str(lock), 1300)
            )
            child.start()
            while index.stat().st_size == len(before) and child.exitcode is None:
                pass
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            if child.exitcode == -signal.SIGKILL and index.stat().st_size > len(before):
                break
            index.write_bytes(before)
        else:
            pytest.fail("never managed to kill the writer inside its write")
        # The journal the killed writer kept, next to its lock file, shows the torn append.
        (journal,) = [locks / n for n in os.listdir(locks) if n.endswith(".journal")]
        record = _internals.journal_file_record(journal)
        assert record is not None and record["op"] == "append", record
        assert int(str(record["offset"])) + int(str(record["length"])) > index.stat().st_size
        # A reader in another process, with the same lock file as the writers
        # (every reader and writer of an index must use the same one).
        rows = in_child(_rows_of, str(index), str(lock))
        problems = _self_checking_problems(rows)
        assert {r["path"] for r in rows} == paths, problems[:3]
        IndexWriter(index, lock).write_entries([])  # nothing: a writer still recovers only
        rows = IndexWriter(index, lock).read_rows()
        assert {r["path"] for r in rows} == paths
        IndexWriter(index, lock).write_entry(entry_path("next", 0),
                                             context_for(entry_path("next", 0)))
        assert {r["path"] for r in IndexWriter(index, lock).read_rows()} == {
            *paths, entry_path("next", 0)
        }


# ------------------------------------------------------- reads of missing paths


def test_reading_a_mistyped_path_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert IndexWriter("typo_dir/sub/index.csv").read_rows() == []
    assert IndexWriter(tmp_path / "typo_dir" / "sub" / "index.csv").read_rows() == []
    (tmp_path / "out").mkdir()
    assert IndexWriter("out/index.csv").read_rows() == []
    assert IndexWriter("out/index.csv", lock_path="locks/a/b.lock").read_rows() == []
    assert IndexWriter("out/index.csv", timeout=0).read_rows() == []
    for missing in ("typo_dir/sub/index.csv", "out/index.csv"):
        with pytest.raises(IndexReadError) as info:
            check_report(missing)
        assert isinstance(info.value.original_exception, FileNotFoundError)
        with pytest.raises(IndexReadError):
            dedupe(missing)
    assert listing(tmp_path) == ["out"]


def test_reading_an_index_without_lock_file_or_journal_creates_neither(tmp_path: Path) -> None:
    index, paths = _index_with_rows(tmp_path)
    IndexWriter(index).close()
    os.unlink(str(index) + ".lock")
    os.unlink(_internals.journal_path(index))
    assert {r["path"] for r in IndexWriter(index).read_rows()} == paths
    assert cli("show", index).returncode == 0
    assert cli("check", index).returncode == 0
    assert listing(tmp_path) == ["index.csv"]


_NOT_INDEXES = {
    "missing.csv": None,
    "a_directory": "dir",
    "c.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
    "latin1.csv": b"path,name\na.nii,Jos\xe9\n",
    "no_path_column.csv": b"file,k\na.nii,1\n",
    "quote.csv": b'path,k\na,"open\nb,2\n',
}


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        (name, argv)
        for name in _NOT_INDEXES
        for argv in (["show"], ["check"], ["check", "--dedupe"])
    ],
)
def test_show_and_check_of_what_is_no_index_create_nothing(
    tmp_path: Path, name: str, argv: list[str]
) -> None:
    target = tmp_path / name
    content = _NOT_INDEXES[name]
    if content == "dir":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    before = listing(tmp_path)
    r = cli(argv[0], target, *argv[1:])
    if name == "no_path_column.csv" and argv == ["show"]:
        assert r.returncode == 0, r.stderr  # a CSV file: shown as it is
    else:
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert str(target) in r.stdout + r.stderr
    assert listing(tmp_path) == before
    if isinstance(content, bytes):
        assert target.read_bytes() == content


# ------------------------------------------------------------ errors name paths


_DESCRIPTOR = re.compile(r": \d+\)?$")


def _message(call: Callable[[], object]) -> str:
    with pytest.raises((IndexReadError, IndexWriteError)) as info:
        call()
    text = str(info.value)
    assert not _DESCRIPTOR.search(text), text
    return text


def test_errors_name_paths_not_descriptors(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    text = _message(lambda: IndexWriter(directory).read_rows())
    assert f"Is a directory: '{directory}'" in text
    text = _message(lambda: IndexWriter(directory).write_entry("a", {"k": 1}))
    assert f"Is a directory: '{directory}'" in text
    f = tmp_path / "file"
    f.write_text("x")
    text = _message(lambda: IndexWriter(f / "index.csv", tmp_path / "i.lock").read_rows())
    assert str(f / "index.csv") in text
    malformed = tmp_path / "m.csv"
    malformed.write_bytes(b"path,k\na,1,2\n")
    text = _message(lambda: IndexWriter(malformed).read_rows())
    assert text.startswith(f"Failed to read index file '{malformed}': line 2: ")
    text = _message(lambda: IndexWriter(malformed).write_entry("b", {"k": 1}))
    assert text.startswith(f"Failed to read index file '{malformed}': line 2: ")


def _denied(index: str, action: str) -> tuple[int | None, str]:
    try:
        if action == "read":
            IndexWriter(index).read_rows()
        elif action == "append":
            IndexWriter(index).write_entry("b", {"k": 2})
        else:
            IndexWriter(index).write_entry("b", {"k": 2, "new": "x"})
    except (IndexReadError, IndexWriteError) as e:
        cause = e.original_exception
        return (cause.errno if isinstance(cause, OSError) else None), str(e)
    raise AssertionError(f"{action} of {index} was allowed")


@pytest.mark.parametrize(
    ("mode", "action"), [(0o444, "append"), (0o444, "rewrite"), (0o000, "read")]
)
def test_permission_errors_name_the_index(mode: int, action: str) -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir(mode=0o755)
        index = data / "index.csv"
        IndexWriter(index).write_entry("a", {"k": 1})
        for sidecar in (data / "index.csv.lock", Path(_internals.journal_path(index))):
            sidecar.chmod(0o666)
        index.chmod(mode)
        before = listing(data)
        code, text = in_child(_denied, str(index), action, uid=NOBODY)
        assert code in (errno.EACCES, errno.EPERM)
        assert f"Permission denied: '{index}'" in text
        assert listing(data) == before


def test_lock_file_errors_name_the_path_as_text(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    text = _message(lambda: IndexWriter(f / "index.csv").write_entry("a", {"k": 1}))
    assert "Not a directory" in text
    lock_dir = tmp_path / "lockdir"
    lock_dir.mkdir()
    text = _message(lambda: IndexWriter(tmp_path / "i.csv", lock_dir).write_entry("a", {}))
    assert f"'{lock_dir}'" in text and "b'" not in text


# ------------------------------------------------------ what cannot be an index


def test_a_fifo_is_refused_as_an_index(tmp_path: Path) -> None:
    fifo = tmp_path / "index.csv"
    os.mkfifo(fifo)
    with pytest.raises(IndexWriteError):
        IndexWriter(fifo, timeout=1).write_entry("a", {"k": 1})
    assert listing(tmp_path) in (["index.csv"], ["index.csv", "index.csv.lock"])


def _read_fifo(path: str) -> str:
    def give_up() -> None:
        time.sleep(3)
        os._exit(9)  # hung: the test sees the exit code

    threading.Thread(target=give_up, daemon=True).start()
    try:
        IndexWriter(path, timeout=1).read_rows()
    except IndexReadError as e:
        return str(e)
    return "read"


def test_reading_a_fifo_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "index.csv"
    os.mkfifo(fifo)
    child = FORK.Process(target=_read_fifo, args=(str(fifo),))
    child.start()
    child.join(30)
    assert child.exitcode == 0


# ------------------------------------------------- bytes that are not UTF-8 at the end


def _latin1_index(tmp_path: Path, rows: int) -> tuple[Path, bytes]:
    index = tmp_path / "index.csv"
    data = b"path,name\n" + b"".join(b"r%05d.nii,value\n" % i for i in range(rows))
    data += b"last.nii,Jos\xe9 Smith"  # Latin-1, and no final line end
    index.write_bytes(data)
    return index, data


@pytest.mark.parametrize("rows", [3, 20_000])
def test_a_latin1_last_row_is_refused_not_dropped(
    tmp_path: Path, rows: int, caplog: pytest.LogCaptureFixture
) -> None:
    index, data = _latin1_index(tmp_path, rows)
    with pytest.raises(IndexReadError, match="not valid UTF-8"):
        IndexWriter(index).read_rows()
    with caplog.at_level(logging.WARNING, logger="index_writer"), pytest.raises(
        IndexReadError, match="not valid UTF-8"
    ):
        IndexWriter(index).write_entry("new.nii", {"name": "x"})
    assert index.read_bytes() == data
    assert not [name for name in os.listdir(tmp_path) if "incomplete" in name]


def test_a_latin1_file_ending_in_a_lead_byte_is_refused_untouched(tmp_path: Path) -> None:
    # Its last byte looks like a character cut short, but an earlier line is
    # not UTF-8 either: moving the last line aside would change the file and
    # still leave it refused.
    index = tmp_path / "index.csv"
    data = b"path,a\nx,caf\xe9\ny,r\xe9sum\xe9"
    index.write_bytes(data)
    with pytest.raises(IndexReadError, match="not valid UTF-8"):
        IndexWriter(index).write_entry("z", {"a": "9"})
    assert index.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == [".index.csv.journal", "index.csv", "index.csv.lock"]
