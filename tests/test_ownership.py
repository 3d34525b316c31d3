"""An index owned by another user, rewritten by root: it stays theirs.

An admin job (a schema change, a replacement, ``check --dedupe``) run as
root replaces the index with a new file. The new file must keep the owner,
group and permission bits of the old one, so that the owner's pipeline goes
on appending afterwards. The owner here is an unprivileged child process
(``setuid``), the admin the test itself (root).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import _internals
from _cli_run import run
from _system import NOBODY, become, in_child, need_root, shared_directory
from _workers import (
    big_batch_then_exit,
    big_path,
    check_index,
    context_for,
    entry_path,
    kill_inside_a_big_append,
    prepare_for_big_batch,
)
from index_writer import IndexWriter

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX owners")

#: A group the owner is not the primary member of (``users``), to see it kept too.
GROUP = 100


def _owner_writes(index: str, tag: str, n: int) -> None:
    w = IndexWriter(index)
    w.write_entries((entry_path(tag, i), context_for(entry_path(tag, i))) for i in range(n))


def _ownership(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _replaced(index: Path, action: Callable[[], object]) -> bool:
    """Run ``action``; whether it replaced the index by a new file."""
    fd = os.open(index, os.O_RDONLY)
    try:
        action()
        return os.fstat(fd).st_nlink == 0  # the old file is gone
    finally:
        os.close(fd)


def _root_rewrites(index: Path) -> list[bool]:
    """Root's three rewrites; whether each replaced the file."""
    big = big_path("admin", 0)
    p = entry_path("owner", 1)

    def dedupe() -> None:
        r = run("check", index, "--dedupe")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "removed 1 duplicate row" in r.stdout

    replaced = [
        # its "blob" column is new: a schema change
        _replaced(index, lambda: IndexWriter(index).write_entry(big, context_for(big))),
        _replaced(
            index,
            lambda: IndexWriter(index).write_entry(p, context_for(p, 1), replace_existing=True),
        ),
    ]
    dup = entry_path("owner", 2)  # appended again: a duplicate for check --dedupe
    IndexWriter(index).write_entry(dup, context_for(dup))
    replaced.append(_replaced(index, dedupe))
    return replaced


@pytest.mark.parametrize("mode", [0o640, 0o664, 0o600], ids=oct)
def test_owner_group_and_mode_survive_roots_rewrites(mode: int) -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir()
        data.chmod(0o777)
        index = data / "index.csv"
        in_child(_owner_writes, str(index), "owner", 20, uid=NOBODY)
        os.chown(index, NOBODY, GROUP)  # root may give the file to any group
        index.chmod(mode)
        kept = _ownership(index)
        assert kept == (NOBODY, GROUP, mode)
        assert _root_rewrites(index) == [True, True, True]
        assert _ownership(index) == kept
        # The owner's pipeline goes on.
        in_child(_owner_writes, str(index), "later", 5, uid=NOBODY)
        assert _ownership(index) == kept
        revs = {entry_path("owner", i): 0 for i in range(20)}
        revs |= {entry_path("owner", 1): 1, big_path("admin", 0): 0}
        revs |= {entry_path("later", i): 0 for i in range(5)}
        check_index(index, exact=set(revs), revs=revs)
        assert not [n for n in os.listdir(data) if n.endswith(".tmp")]


def test_owner_appends_after_root_was_first_to_use_the_index() -> None:
    """The owner made the index by hand (or with a tool that leaves no lock file)."""
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir()
        data.chmod(0o777)
        index = data / "index.csv"
        index.write_bytes(b"path,k\na,1\nb,2\na,3\n")
        os.chown(index, NOBODY, NOBODY)
        index.chmod(0o640)
        r = run("check", index, "--dedupe")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _ownership(index) == (NOBODY, NOBODY, 0o640)
        sidecars = [data / "index.csv.lock", Path(_internals.journal_path(index))]
        owners = {p.name: _ownership(p)[:2] for p in sidecars}
        in_child(IndexWriter(index).write_entry, "c", {"k": 4}, uid=NOBODY)
        assert [r["path"] for r in IndexWriter(index).read_rows()] == ["b", "a", "c"], owners


#: A second unprivileged user, in the owner's group.
MEMBER = 12345


def _as_owner(fn: Callable[..., object], *args: object) -> object:
    become(NOBODY, GROUP)
    os.umask(0o022)
    return fn(*args)


def _member_big_batch(index: str, n: int) -> None:
    become(MEMBER, GROUP)
    os.umask(0o022)
    big_batch_then_exit(index, n)


def _owner_shares_the_index(index: str) -> None:
    """The owner makes the index group-writable (the files a user sees)."""
    os.chmod(index, 0o664)
    os.chmod(index + ".lock", 0o664)


def test_an_append_a_group_member_left_cut_short_is_undone_by_the_owner() -> None:
    need_root()
    with shared_directory() as shared:
        data = shared / "data"
        data.mkdir()
        data.chmod(0o777)
        index = data / "index.csv"
        paths = {entry_path("owner", i) for i in range(10)}
        in_child(_as_owner, _owner_writes, str(index), "owner", 10)
        paths.add(in_child(_as_owner, prepare_for_big_batch, str(index)))
        in_child(_as_owner, _owner_shares_the_index, str(index))
        before = index.read_bytes()
        # Where the member keeps it: the owner's journal is not the member's to write.
        member_journal = _internals.journal_beside_lock(str(index) + ".lock", str(index))
        kill_inside_a_big_append(
            index, target=_member_big_batch, journal=member_journal
        )
        assert len(index.read_bytes()) > len(before)
        record = _internals.journal_file_record(member_journal)  # the member's own journal
        assert record is not None and record["op"] == "append"
        in_child(_as_owner, _owner_writes, str(index), "after", 1)
        paths.add(entry_path("after", 0))
        check_index(index, exact=paths)
