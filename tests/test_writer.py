"""Behaviour of IndexWriter within one process: the contract of issue 2."""

from __future__ import annotations

import csv
import io
import os
import pickle
import stat
from pathlib import Path

import pytest

import _internals
import _system
from index_writer import (
    IndexLockTimeoutError,
    IndexReadError,
    IndexSchemaMismatchError,
    IndexWriteError,
    IndexWriter,
    IndexWriterError,
)

CTX = {"subject_id": "subject_1", "modality": "CT", "quality_score": 0.5}


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return tmp_path / "index.csv"


def forget() -> None:
    """Drop this process's cached knowledge, as a brand-new process would have."""
    _internals.forget_all()


# ----------------------------------------------------------------- API surface


def test_public_names_and_hierarchy() -> None:
    import index_writer

    assert set(index_writer.__all__) == {
        "IndexWriter",
        "IndexWriterError",
        "IndexReadError",
        "IndexWriteError",
        "IndexSchemaMismatchError",
        "IndexLockTimeoutError",
        # Checking and de-duplicating (tests/test_check.py).
        "check_index",
        "CheckReport",
        "dedupe",
        "DedupeRefusedError",
        # med-imagetools integration (tests/test_imgtools*.py).
        "install_as_imgtools",
        "uninstall_as_imgtools",
    }
    for cls in (
        index_writer.DedupeRefusedError,
        IndexReadError,
        IndexWriteError,
        IndexSchemaMismatchError,
        IndexLockTimeoutError,
    ):
        assert issubclass(cls, IndexWriterError)


def test_error_messages_and_attributes_match_the_original() -> None:
    p = Path("x/index.csv")
    e = IndexSchemaMismatchError({"b", "a"}, p)
    assert e.missing_fields == {"a", "b"} and e.index_path == p
    assert str(e) == (
        "Schema mismatch in index file 'x/index.csv'. Missing fields: ['a', 'b']. "
        "Set merge_columns=True to allow schema evolution."
    )
    cause = OSError("boom")
    r = IndexReadError(p, cause)
    assert r.original_exception is cause
    assert str(r) == "Failed to read index file 'x/index.csv': boom"
    w = IndexWriteError(p, cause)
    assert str(w) == "Failed to write to index file 'x/index.csv': boom"
    t = IndexLockTimeoutError(Path("i.lock"), 1.5)
    assert t.lock_path == Path("i.lock") and t.timeout == 1.5
    for err in (e, r, w, t):
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err)


def test_paths_and_defaults(tmp_path: Path) -> None:
    w = IndexWriter(str(tmp_path / "a.csv"))
    assert w.index_path == tmp_path / "a.csv"
    assert isinstance(w.index_path, Path)
    assert w.lock_path == tmp_path / "a.csv.lock"
    assert w.timeout is None and w.durable is False
    w2 = IndexWriter(tmp_path / "b.csv", tmp_path / "locks" / "b.lock", timeout=3, durable=True)
    assert w2.lock_path == tmp_path / "locks" / "b.lock"
    assert (w2.timeout, w2.durable) == (3, True)
    assert "b.csv" in repr(w2)


def test_lock_path_equal_to_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lock_path must not be the index"):
        IndexWriter(tmp_path / "i.csv", tmp_path / "i.csv")
    with pytest.raises(ValueError, match="lock_path must not be the index"):
        IndexWriter(tmp_path / "i.csv", str(tmp_path / "sub" / ".." / "i.csv"))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"timeout": -1}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": "5"}, TypeError),
        ({"timeout": True}, TypeError),
    ],
)
def test_bad_timeout(index: Path, kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        IndexWriter(index, **kwargs)  # type: ignore[arg-type]


class _ItemsOnly:
    """Not a mapping, but has ``items()``: the original takes it."""

    def items(self) -> list[tuple[str, object]]:
        return [("k", 1), ("m", None)]


class _NotCallableItems:
    items = (("k", 1),)


def test_a_context_with_items_is_taken_as_the_original_takes_it(index: Path) -> None:
    import pandas as pd

    w = IndexWriter(index)
    frame = pd.DataFrame({"path": ["a.nii", "b.nii"], "subject": ["s1", "s2"], "n": [1, 2]})
    for _, row in frame.iterrows():  # a pandas Series per row
        w.write_entry(row["path"], row)
    w.write_entry("c.nii", _ItemsOnly())  # type: ignore[arg-type]
    assert index.read_text() == "path,subject,n,k,m\na.nii,s1,1,,\nb.nii,s2,2,,\nc.nii,,,1,\n"


def test_bad_path_types(index: Path) -> None:
    with pytest.raises(TypeError):
        IndexWriter(123)  # type: ignore[arg-type]
    w = IndexWriter(index)
    with pytest.raises(TypeError, match="path must be"):
        w.write_entry(42, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="context must be a mapping"):
        w.write_entry("a", [("k", "v")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="context must be a mapping"):
        w.write_entry("a", _NotCallableItems())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str"):
        w.write_entry("a", {1: "v"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="filepath_column"):
        w.write_entry("a", {}, filepath_column=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="filepath_column"):
        w.write_entry("a", {}, filepath_column="")
    with pytest.raises(TypeError, match="pairs"):
        w.write_entries(["abc"])  # type: ignore[list-item]
    assert not index.exists()


def test_writer_pickles_and_keeps_working(index: Path) -> None:
    w = IndexWriter(index, timeout=5)
    w.write_entry("a", {"k": 1})
    clone = pickle.loads(pickle.dumps(w))
    assert (clone.index_path, clone.lock_path, clone.timeout) == (index, w.lock_path, 5)
    clone.write_entry("b", {"k": 2})
    assert [r["path"] for r in w.read_rows()] == ["a", "b"]


# ------------------------------------------------------------------- columns


def test_new_file_layout(index: Path) -> None:
    IndexWriter(index).write_entry(Path("out/a.nii.gz"), {"zeta": 1, "alpha": None, "mid": 2.5})
    assert index.read_bytes() == b"path,zeta,alpha,mid\nout/a.nii.gz,1,,2.5\n"


def test_existing_order_kept_and_new_columns_appended(index: Path) -> None:
    index.write_text("path,b,a\nx,1,2\n")
    w = IndexWriter(index)
    w.write_entry("y", {"a": "3", "c": "4", "b": "5", "d": "6"})
    w.write_entry("z", {"e": "7"})
    assert index.read_text() == "path,b,a,c,d,e\nx,1,2,,,\ny,5,3,4,6,\nz,,,,,7\n"


def test_filepath_column_and_conflicting_key(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"file": "a", "k": 1}, filepath_column="file")
    assert index.read_text() == "file,k\na,1\n"
    with pytest.raises(ValueError, match="conflicts with path"):
        w.write_entry("b", {"file": "other"}, filepath_column="file")
    assert index.read_text() == "file,k\na,1\n"


def test_values_are_str_and_none_is_empty(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"i": 3, "f": 0.125, "n": None, "b": False, "l": [1, 2]})
    assert w.read_rows() == [
        {"path": "a", "i": "3", "f": "0.125", "n": "", "b": "False", "l": "[1, 2]"}
    ]


def test_unwritable_values_are_refused(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"k": "ok"})
    before = index.read_bytes()
    with pytest.raises(ValueError, match="NUL"):
        w.write_entry("b", {"k": "x\x00y"})
    with pytest.raises(ValueError, match="UTF-8"):
        w.write_entry("b", {"k": "\udcff"})
    with pytest.raises(ValueError, match="column name"):
        w.write_entry("b", {"bad\x00key": "v"})
    assert index.read_bytes() == before


# ------------------------------------------------------------------ replacing


def test_replace_existing_updates_in_place(index: Path) -> None:
    w = IndexWriter(index)
    for name in "abc":
        w.write_entry(name, {"v": 1})
    w.write_entry("b", {"v": 2}, replace_existing=True)
    assert index.read_text() == "path,v\na,1\nb,2\nc,1\n"
    w.write_entry("d", {"v": 3}, replace_existing=True)  # absent: an append
    assert index.read_text() == "path,v\na,1\nb,2\nc,1\nd,3\n"


def test_replace_collapses_duplicates(index: Path) -> None:
    index.write_text("path,v\na,1\nb,1\na,2\nc,1\na,3\n")
    IndexWriter(index).write_entry("a", {"v": 9}, replace_existing=True)
    assert index.read_text() == "path,v\na,9\nb,1\nc,1\n"


def test_replace_with_duplicates_even_when_value_equal(index: Path) -> None:
    index.write_text("path,v\na,9\na,9\n")
    IndexWriter(index).write_entry("a", {"v": 9}, replace_existing=True)
    assert index.read_text() == "path,v\na,9\n"


@pytest.mark.parametrize("fresh_process", [False, True])
def test_replace_with_equal_row_writes_nothing(index: Path, fresh_process: bool) -> None:
    w = IndexWriter(index)
    for i in range(50):
        w.write_entry(f"p{i}", {"v": i, "w": "x"})
    st = os.stat(index)
    before = index.read_bytes()
    if fresh_process:
        forget()
    for i in range(50):
        w.write_entry(f"p{i}", {"v": i, "w": "x"}, replace_existing=True)
        w.write_entry(f"p{i}", {"w": "x", "v": str(i)}, replace_existing=True)
    after = os.stat(index)
    assert index.read_bytes() == before
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_replace_with_new_column_rewrites(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"v": 1})
    w.write_entry("a", {"v": 1, "extra": "e"}, replace_existing=True)
    assert index.read_text() == "path,v,extra\na,1,e\n"


def test_replace_batch_last_wins(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entries([("a", {"v": 1}), ("b", {"v": 1})])
    w.write_entries(
        [("b", {"v": 2}), ("n", {"v": 1}), ("b", {"v": 3}), ("n", {"v": 2})],
        replace_existing=True,
    )
    assert index.read_text() == "path,v\na,1\nb,3\nn,2\n"


def test_replace_keeps_other_rows_byte_exact(index: Path) -> None:
    index.write_bytes(b'path,v\r\n"q,1","say ""x""\r\nnext"\r\nb,1\r\n')
    IndexWriter(index).write_entry("b", {"v": 2}, replace_existing=True)
    assert index.read_bytes() == b'path,v\r\n"q,1","say ""x""\r\nnext"\r\nb,2\r\n'


@pytest.mark.parametrize("fresh_process", [False, True])
def test_replacements_copy_the_other_rows_as_they_are(index: Path, fresh_process: bool) -> None:
    # A replacement that keeps the header copies every other row byte for
    # byte (quoting, short rows, blank lines included) and keeps the writer's
    # path map right for the rows after it, which moved.
    head = '\ufeffpath,v,w\r\n"a",1,x\r\nb,22\r\n\r\n"m\r\nl",3,y\r\nc,4,z\r\n'
    index.write_bytes(head.encode())
    w = IndexWriter(index)
    w.write_entry("b", {"v": "a much longer value", "w": "q"}, replace_existing=True)
    want = head.replace("b,22\r\n", "b,a much longer value,q\r\n")
    assert index.read_bytes() == want.encode()
    if fresh_process:
        forget()
    w.write_entries(
        [("c", {"v": 5}), ("m\r\nl", {"v": "", "w": ""}), ("d", {"v": 6}),
         ("a", {"v": 1, "w": "x"})],  # "a" unchanged: its quotes stay
        replace_existing=True,
    )
    want = want.replace('"m\r\nl",3,y', '"m\r\nl",,').replace("c,4,z", "c,5,") + "d,6,\r\n"
    assert index.read_bytes() == want.encode()
    w.write_entry("c", {"v": 7}, replace_existing=True)  # found where it moved to
    w.write_entry("d", {"v": 8}, replace_existing=True)
    w.write_entry("b", {"v": 9}, replace_existing=True)
    want = want.replace("c,5,", "c,7,").replace("d,6,", "d,8,")
    want = want.replace("b,a much longer value,q", "b,9,")
    assert index.read_bytes() == want.encode()
    assert [r["path"] for r in w.read_rows()] == ["a", "b", "m\r\nl", "c", "d"]


def _replace_in_another_process(index: Path, path: str, value: str) -> None:
    _system.in_child(_replace_one, str(index), path, value)


def _replace_one(index: str, path: str, value: str) -> None:
    IndexWriter(index).write_entry(path, {"v": value}, replace_existing=True)


def test_a_writer_after_its_replacement_is_not_fooled_by_a_reused_inode(index: Path) -> None:
    # A long-lived writer replaces a row (a rewrite: a new file). Two other
    # processes then replace rows so that the file keeps its size, each
    # rewrite making a new file, and a third appends. On ext4 the second new
    # file readily got the inode number of the first while nothing held the
    # first open, and the long-lived writer took it for its own file, grown:
    # its stale row offsets then made it change the wrong row ("ba" for
    # "a", whose old offset fell inside "ba" after the rows moved).
    w = IndexWriter(index)
    for round_ in range(5):
        index.unlink(missing_ok=True)
        w.close()
        w.write_entries([("p0", {"v": "1"}), ("ba", {"v": "1"}), ("a", {"v": "1"}),
                         ("q", {"v": "11111"})] + [(f"pad{i}", {"v": "x"}) for i in range(40)])
        w.write_entry("pad39", {"v": "y"}, replace_existing=True)
        _replace_in_another_process(index, "p0", "12345")  # 4 bytes longer
        _replace_in_another_process(index, "q", "1")  # 4 bytes shorter: same size
        _system.in_child(_append_one, str(index), "z")
        w.write_entry("a", {"v": "2"}, replace_existing=True)
        rows = {r["path"]: r["v"] for r in w.read_rows()}
        assert (rows["ba"], rows["a"], len(w.read_rows())) == ("1", "2", 45), round_


def _append_one(index: str, path: str) -> None:
    IndexWriter(index).write_entry(path, {"v": "0"})


@pytest.mark.parametrize("length", [4095, 4096, 4097, 16385, 65537])
def test_a_replaced_crlf_row_of_any_length_is_cut_whole(index: Path, length: int) -> None:
    # The stored row is read in growing blocks (4 KiB first); a block that
    # ended between a row's CR and LF made its end look like a bare CR, and
    # the LF stayed behind as a blank line.
    long = "x" * (length - len("a,\r\n"))
    index.write_bytes(f"path,v\r\na,{long}\r\nb,1\r\n".encode())
    IndexWriter(index).write_entry("a", {"v": "new"}, replace_existing=True)
    assert index.read_bytes() == b"path,v\r\na,new\r\nb,1\r\n"


# ---------------------------------------------------------------- merge off


def test_merge_columns_false(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"x": 1, "y": 2}, merge_columns=False)  # new file: fine
    before = index.read_bytes()
    with pytest.raises(IndexSchemaMismatchError) as info:
        w.write_entry("b", {"x": 1, "z": 3, "w": 4}, merge_columns=False)
    assert info.value.missing_fields == {"z", "w"}
    assert info.value.index_path == index
    assert "Missing fields: ['w', 'z']" in str(info.value)
    with pytest.raises(IndexSchemaMismatchError):
        w.write_entries([("c", {"x": 1}), ("d", {"q": 1})], merge_columns=False)
    assert index.read_bytes() == before
    w.write_entry("c", {"y": 5}, merge_columns=False)  # fewer columns is fine
    assert index.read_text() == "path,x,y\na,1,2\nc,,5\n"


# ------------------------------------------------------------ batches


def test_write_entries_all_or_nothing(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"v": 1})
    before = index.read_bytes()

    def entries():  # type: ignore[no-untyped-def]
        yield "b", {"v": 2}
        yield "c", {"v": None}
        yield "d", {"path": "not-d"}

    with pytest.raises(ValueError, match="conflicts"):
        w.write_entries(entries())
    assert index.read_bytes() == before
    w.write_entries([])
    assert index.read_bytes() == before


def test_write_entries_columns_in_first_appearance_order(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entries([("a", {"x": 1}), ("b", {"y": 2, "x": 3}), ("c", {"z": 4})])
    assert index.read_text() == "path,x,y,z\na,1,,\nb,3,2,\nc,,,4\n"


def test_empty_batch_creates_nothing(index: Path) -> None:
    IndexWriter(index).write_entries([])
    assert not index.exists()


# ------------------------------------------------------- files made elsewhere


def test_zero_byte_and_header_only(index: Path) -> None:
    index.write_bytes(b"")
    IndexWriter(index).write_entry("a", {"v": 1})
    assert index.read_bytes() == b"path,v\na,1\n"
    other = index.with_name("h.csv")
    other.write_bytes(b"path,v\r\n")
    IndexWriter(other).write_entry("a", {"v": 1})
    assert other.read_bytes() == b"path,v\r\na,1\r\n"


def test_bom_is_understood_and_kept(index: Path) -> None:
    index.write_bytes(b"\xef\xbb\xbfpath,v\r\na,1\r\n")
    w = IndexWriter(index)
    w.write_entry("b", {"v": 2})
    assert index.read_bytes() == b"\xef\xbb\xbfpath,v\r\na,1\r\nb,2\r\n"
    w.write_entry("c", {"new": 3})  # rewrite keeps the BOM
    assert index.read_bytes() == b"\xef\xbb\xbfpath,v,new\r\na,1,\r\nb,2,\r\nc,,3\r\n"
    assert list(w.read_rows()[0]) == ["path", "v", "new"]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_line_ending_kept(index: Path, eol: bytes) -> None:
    index.write_bytes(b"path,v" + eol + b"a,1" + eol)
    w = IndexWriter(index)
    w.write_entry("b", {"v": "x\r\ny"})
    w.write_entry("c", {"w": "z"})
    data = index.read_bytes()
    assert data == eol.join([b"path,v,w", b"a,1,", b'b,"x\r\ny",', b"c,,z", b""])


def test_missing_final_newline(index: Path) -> None:
    index.write_bytes(b"path,v\r\na,1")
    IndexWriter(index).write_entry("b", {"v": 2})
    assert index.read_bytes() == b"path,v\r\na,1\r\nb,2\r\n"
    h = index.with_name("h.csv")
    h.write_bytes(b"path,v")
    IndexWriter(h).write_entry("b", {"v": 2})
    assert h.read_bytes() == b"path,v\nb,2\n"


def test_short_rows_are_padded_not_dropped(index: Path) -> None:
    index.write_bytes(b"path,a,b\nx,1\ny\n")
    w = IndexWriter(index)
    assert w.read_rows() == [
        {"path": "x", "a": "1", "b": ""},
        {"path": "y", "a": "", "b": ""},
    ]
    w.write_entry("z", {"c": 1})
    assert index.read_bytes() == b"path,a,b,c\nx,1,,\ny,,,\nz,,,1\n"


def test_awkward_values_round_trip_byte_exact(index: Path) -> None:
    values = {
        "comma": "a,b",
        "quote": 'he said "hi"',
        "crlf": "line1\r\nline2",
        "cr": "a\rb",
        "lf": "a\nb",
        "unicode": "Zürich — 東京 🧠",
        "spaces": "  padded  ",
        "leading_quote": '"x',
        "empty": "",
    }
    w = IndexWriter(index)
    w.write_entry("a", values)
    w.write_entry("b", {"comma": "x"})
    forget()
    assert IndexWriter(index).read_rows()[0] == {"path": "a", **values}
    with index.open(newline="", encoding="utf-8") as f:
        assert next(iter(csv.DictReader(f))) == {"path": "a", **values}


def test_huge_value_and_host_field_size_limit(index: Path) -> None:
    limit = csv.field_size_limit()
    big = "é,\"x\r\n" * (1_000_000 // 6)
    w = IndexWriter(index)
    w.write_entry("a", {"big": big, "k": 1})
    w.write_entry("b", {"k": 2})
    forget()
    w.write_entry("c", {"k": 3, "new": 1})  # full read + rewrite through the big value
    forget()
    rows = IndexWriter(index).read_rows()
    assert rows[0]["big"] == big
    assert [r["path"] for r in rows] == ["a", "b", "c"]
    assert csv.field_size_limit() == limit


def test_missing_index_reads_as_empty(index: Path) -> None:
    assert IndexWriter(index).read_rows() == []
    assert not index.exists()


def test_parent_directory_created(tmp_path: Path) -> None:
    index = tmp_path / "deep" / "er" / "index.csv"
    IndexWriter(index).write_entry("a", {})
    assert index.read_text() == "path\na\n"


def test_empty_path_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    index = tmp_path / "sub" / "index.csv"
    w = IndexWriter(index)
    for call in (
        lambda: w.write_entry("", {"a": 1}),
        lambda: w.write_entries([("a.nii", {}), ("", {})]),
    ):
        with pytest.raises(ValueError, match="path must not be empty"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_single_empty_field_row(index: Path) -> None:
    # Written elsewhere: a row whose only field is empty is "" (not a blank line).
    index.write_bytes(b'path\n""\n')
    w = IndexWriter(index)
    w.write_entry("x", {})
    assert index.read_bytes() == b'path\n""\nx\n'
    forget()
    assert [r["path"] for r in w.read_rows()] == ["", "x"]


# ----------------------------------------------------------- malformed files


MALFORMED = {
    "not_utf8": (b"path,v\na,1\nb,\xff\xfe\n", "line 3", "UTF-8"),
    "too_many_fields": (b"path,v\na,1\nb,2,3\n", "line 3", "3 fields"),
    "duplicate_header": (b"path,v,v\na,1,2\n", "line 1", "duplicate column"),
    "unterminated_quote": (b'path,v\na,"open\nb,2\n', "line 2", "opened on line 2 never closes"),
    "text_after_quote": (b'path,v\na,"x"y\n', "line 2", "text after a closing quote"),
    "binary": (b"path,v\na,\x00\x01\x02\n", "line 2", "NUL"),
    "late_bad_row": (b"path,v\n" + b"a,1\n" * 5000 + b"z,1,2\n", "line 5002", "fields"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_index_is_refused_and_untouched(index: Path, case: str) -> None:
    data, where, what = MALFORMED[case]
    index.write_bytes(data)
    w = IndexWriter(index)
    for action in (
        lambda: w.write_entry("new", {"v": 1}),
        lambda: w.write_entry("a", {"v": 5}, replace_existing=True),
        lambda: w.write_entry("new", {"other": 1}),
        w.read_rows,
    ):
        with pytest.raises(IndexReadError) as info:
            action()
        msg = str(info.value)
        assert str(index) in msg and where in msg and what in msg, msg
        assert isinstance(info.value.original_exception, csv.Error)
        assert index.read_bytes() == data


def test_malformed_rows_appended_by_someone_else(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"v": 1})
    with index.open("ab") as f:
        f.write(b"b,2,3\n")
    with pytest.raises(IndexReadError, match="line 3"):
        w.write_entry("c", {"v": 3})
    assert index.read_bytes() == b"path,v\na,1\nb,2,3\n"


def test_blank_lines_are_skipped(index: Path) -> None:
    index.write_bytes(b"\npath,v\n\na,1\n\n")
    w = IndexWriter(index)
    w.write_entry("b", {"v": 2})
    assert [r["path"] for r in w.read_rows()] == ["a", "b"]


# -------------------------------------------- what this process knows, checked


def test_foreign_in_place_rewrite_is_noticed(index: Path) -> None:
    w = IndexWriter(index)
    for i in range(20):
        w.write_entry(f"p{i}", {"v": i})
    # Someone rewrites the file in place (same inode), sorted and CRLF, plus a row.
    rows = w.read_rows()
    buf = io.StringIO()
    cw = csv.DictWriter(buf, fieldnames=["path", "v"])
    cw.writeheader()
    cw.writerows([*rows, {"path": "foreign", "v": "x"}])
    with index.open("r+", newline="") as f:
        f.truncate(0)
        f.write(buf.getvalue())
    w.write_entry("after", {"v": "y"})
    got = [r["path"] for r in w.read_rows()]
    assert got == [f"p{i}" for i in range(20)] + ["foreign", "after"]
    assert index.read_bytes().endswith(b"foreign,x\r\nafter,y\r\n")


def _sort_rows_in_place(index: str) -> None:
    """Sort the data rows, in place and under the lock: the file keeps its size."""
    import fasteners

    with fasteners.InterProcessLock(index + ".lock"), open(index, "r+b") as f:
        head, *rows = f.read().splitlines(keepends=True)
        f.seek(0)
        f.write(head + b"".join(sorted(rows)))


def test_a_same_size_rewrite_after_another_writers_append_is_noticed(index: Path) -> None:
    # Another process's append ends the file, as its journal says; then a
    # program sorts the rows in place. This writer's map of where each path
    # is must not be trusted because the journal explains the growth.
    w = IndexWriter(index)
    w.write_entry("b/1", {"v": "old"})
    w.write_entry("a/1", {"v": "old"}, replace_existing=True)  # sorting swaps the first two
    w.write_entries(((f"c/{i:03d}", {"v": "old"}) for i in range(100)), replace_existing=True)
    _system.in_child(_append_one, str(index), "d/1")
    size = index.stat().st_size
    _system.in_child(_sort_rows_in_place, str(index))
    assert index.stat().st_size == size
    w.write_entry("a/1", {"v": "NEW"}, replace_existing=True)
    rows = w.read_rows()
    assert [r for r in rows if r["path"] == "a/1"] == [{"path": "a/1", "v": "NEW"}]
    assert len(rows) == 103


def _rename_row_in_place(index: str, old: str, new: str) -> None:
    """Give one row another path of the same length, in place and under the lock."""
    import fasteners

    with fasteners.InterProcessLock(index + ".lock"), open(index, "r+b") as f:
        data = f.read()
        assert len(old) == len(new) and data.count(f"\n{old},".encode()) == 1
        f.seek(0)
        f.write(data.replace(f"\n{old},".encode(), f"\n{new},".encode()))


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_same_size_rewrite_around_another_writers_append_is_noticed_anywhere(
    index: Path, when: str
) -> None:
    # A row far from the file's first and last bytes is renamed in place,
    # before or after another process appends one row. The journal's record
    # of that append ends the file, but its times show the other change.
    w = IndexWriter(index)
    w.write_entries(((f"c/{i:03d}", {"v": "old"}) for i in range(100)), replace_existing=True)
    at = index.read_bytes().index(b"\nc/050,")
    assert 256 < at < index.stat().st_size - 256  # neither in the first nor the last bytes
    if when == "before":
        _system.in_child(_rename_row_in_place, str(index), "c/050", "x/050")
    _system.in_child(_append_one, str(index), "d/1")
    if when == "after":
        _system.in_child(_rename_row_in_place, str(index), "c/050", "x/050")
    w.write_entry("x/050", {"v": "NEW"}, replace_existing=True)
    rows = w.read_rows()
    assert [r for r in rows if r["path"] == "x/050"] == [{"path": "x/050", "v": "NEW"}]
    assert [r["path"] for r in rows if r["path"] == "c/050"] == []
    assert len(rows) == 101


def _rename_row_in_place_keeping_the_time(index: str, old: str, new: str, mtime: int) -> None:
    """As :func:`_rename_row_in_place`, leaving the modification time ``mtime``."""
    _rename_row_in_place(index, old, new)
    os.utime(index, ns=(os.stat(index).st_atime_ns, mtime))


def _same_tick_rewrite_after_another_writers_append(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entries(((f"c/{i:03d}", {"v": "old"}) for i in range(100)), replace_existing=True)
    _system.in_child(_append_one, str(index), "d/1")
    mtime = index.stat().st_mtime_ns
    _system.in_child(_rename_row_in_place_keeping_the_time, str(index), "c/000", "x/000", mtime)
    assert index.stat().st_mtime_ns == mtime
    w.write_entry("x/000", {"v": "NEW"}, replace_existing=True)
    rows = w.read_rows()
    assert [r for r in rows if r["path"] == "x/000"] == [{"path": "x/000", "v": "NEW"}]
    assert len(rows) == 101
    w.close()


def test_a_same_tick_rewrite_after_another_writers_append_is_noticed(tmp_path: Path) -> None:
    # Where file times tick coarsely (ramfs here; every Linux filesystem
    # before 6.13), a same-size rewrite within the clock tick of another
    # writer's append leaves the time that append's journal record shows
    # (made exact here with utime). Equal times prove nothing there: the
    # first bytes are still compared.
    with _system.ramfs(tmp_path / "ramfs") as mnt:
        _same_tick_rewrite_after_another_writers_append(mnt / "index.csv")


def _sort_columns_in_place_keeping_the_time(index: str, mtime_ns: int) -> None:
    """What med-imagetools' writer does to an index (same size here), in the same clock tick."""
    with open(index, newline="") as f:
        header, *records = list(csv.reader(f))
    order = sorted(range(len(header)), key=header.__getitem__)
    with open(index, "r+", newline="") as f:  # in place: same file
        out = csv.writer(f, lineterminator="\n")
        for record in [header, *records]:
            out.writerow([record[i] for i in order])
    os.utime(index, ns=(mtime_ns, mtime_ns))


def test_a_same_size_rewrite_in_the_tick_of_our_own_append_is_noticed(tmp_path: Path) -> None:
    # Where file times tick coarsely (ramfs here), med-imagetools' writer
    # sorting the columns in place right after our append (same size, same
    # tick: made exact with utime) leaves size and time as our append left
    # them. The next append must still follow the new header.
    with _system.ramfs(tmp_path / "ramfs") as mnt:
        index = mnt / "index.csv"
        w = IndexWriter(index)
        w.write_entry("p1", {"z": "Z1", "a": "A1"})
        mtime = index.stat().st_mtime_ns
        _system.in_child(_sort_columns_in_place_keeping_the_time, str(index), mtime)
        assert index.read_text() == "a,path,z\nA1,p1,Z1\n"
        w.write_entry("p2", {"z": "Z2", "a": "A2"})
        assert index.read_text() == "a,path,z\nA1,p1,Z1\nA2,p2,Z2\n"
        w.close()


def test_a_filesystem_mounted_where_another_was_is_judged_afresh(tmp_path: Path) -> None:
    # A writer on a tmpfs (whose times tell quick changes apart here) is
    # closed, the tmpfs unmounted and a ramfs mounted in its place: Linux
    # gives it the same device number. What was found of the tmpfs's times
    # must not be taken for the ramfs's.
    with _system.tmpfs(tmp_path / "mnt") as mnt:
        w = IndexWriter(mnt / "index.csv")
        w.write_entry("a", {"v": "1"})
        w.close()
    with _system.ramfs(tmp_path / "mnt") as mnt:
        _same_tick_rewrite_after_another_writers_append(mnt / "index.csv")


def test_foreign_shrink_and_replace_are_noticed(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entries((f"p{i}", {"v": i}) for i in range(10))
    index.write_text("path,v\nonly,1\n")  # smaller, same inode
    w.write_entry("x", {"v": 2}, replace_existing=True)
    tmp = index.with_name("new.csv")
    tmp.write_text("path,v,w\nfresh,1,2\n")
    os.replace(tmp, index)  # new inode
    w.write_entry("y", {"v": 3}, replace_existing=True)
    assert [r["path"] for r in w.read_rows()] == ["fresh", "y"]


def test_same_size_change_is_noticed(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("aaaa", {"v": 1}, replace_existing=True)
    data = index.read_bytes()
    st = os.stat(index)
    index.write_bytes(data.replace(b"aaaa", b"bbbb"))
    os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    w.write_entry("bbbb", {"v": 1}, replace_existing=True)  # equal now: no-op
    assert index.read_text() == "path,v\nbbbb,1\n"


def test_rows_appended_by_another_writer_are_seen(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"v": 1}, replace_existing=True)
    # Another process appends (simulated by a second key: separate knowledge).
    other = IndexWriter(index, index.with_name("index.csv.lock"))
    forget()
    other.write_entry("b", {"v": 2})
    w.write_entry("a", {"v": 1}, replace_existing=True)  # equal: nothing to do
    w.write_entry("b", {"v": 3}, replace_existing=True)
    assert index.read_text() == "path,v\na,1\nb,3\n"


# ------------------------------------------------------------- misc options


def test_durable_mode_writes(index: Path) -> None:
    w = IndexWriter(index, durable=True)
    w.write_entry("a", {"v": 1})
    w.write_entry("a", {"v": 2, "w": 1}, replace_existing=True)
    assert index.read_text() == "path,v,w\na,2,1\n"


def test_rewrite_keeps_permission_bits(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entry("a", {"v": 1})
    os.chmod(index, 0o640)
    w.write_entry("b", {"new": 1})
    assert stat.S_IMODE(os.stat(index).st_mode) == 0o640
    assert not [p for p in index.parent.iterdir() if p.name.endswith(".tmp")]


def test_lock_timeout_in_process(index: Path) -> None:
    import threading

    w = IndexWriter(index, timeout=0.05)
    w.write_entry("a", {})
    holder = IndexWriter(index)
    with _internals.holding_lock(holder):  # held by this thread
        result: list[BaseException] = []

        def other() -> None:
            try:
                w.write_entry("b", {})
            except BaseException as e:
                result.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert isinstance(result[0], IndexLockTimeoutError)
    assert index.read_text() == "path\na\n"


def test_write_error_on_unwritable_target(tmp_path: Path) -> None:
    # The index path is a directory: opening it for writing fails.
    target = tmp_path / "dir.csv"
    target.mkdir()
    with pytest.raises(IndexWriteError) as info:
        IndexWriter(target).write_entry("a", {})
    assert isinstance(info.value.original_exception, OSError)
    assert str(target) in str(info.value)


def test_lock_path_linked_to_index_is_refused(index: Path) -> None:
    index.write_text("path\n")
    link = index.with_name("link.lock")
    link.symlink_to(index)
    with pytest.raises(ValueError, match="lock_path must not be the index"):
        IndexWriter(index, link)


@pytest.mark.parametrize(
    "body",
    [
        b"a,1\r\nb,2\r\n\r\nc,3\r\na,4\r\n",  # plain, CR LF, a blank line, a duplicate
        b'a,1\nb,"2\n2"\nc,3\nd',  # a quoted field (the rest parsed) and no final newline
        "é,1\nß,2\n".encode(),
    ],
)
def test_path_map_from_bulk_check_equals_parsed(tmp_path: Path, body: bytes) -> None:
    from index_writer import _table

    index = tmp_path / "index.csv"
    eol = b"\r\n" if b"\r\n" in body else b"\n"
    index.write_bytes(b"path,v" + eol + body)
    w = IndexWriter(index)
    forget()
    w.write_entry("zzz", {"v": 0}, replace_existing=True)  # builds the map
    expected: dict[str, int | None] = {}
    rows = 0
    with index.open("rb") as f:
        _, _, records = _table.read_header(f)
        for _, start, fields in records:
            expected[fields[0]] = -1 if fields[0] in expected else start
            rows += 1
    expected["zzz"] = index.stat().st_size - len(b"zzz,0" + eol)
    assert _internals.path_offsets(w, [*expected, "absent"]) == (
        {**expected, "absent": None},
        rows,  # "zzz" included: the map holds every row
    )


def _append_from_another_process(index: str, rows: list[tuple[str, dict[str, str]]]) -> None:
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(
        target=lambda: IndexWriter(index).write_entries(rows)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0


def test_quoted_rows_appended_by_another_process_survive_a_rewrite(index: Path) -> None:
    """What another writer appended is taken in (plain rows in bulk, quoted ones
    parsed) before this writer rewrites the file: nothing of it may be lost."""
    w = IndexWriter(index)
    w.write_entry("a", {"v": "1"})  # this process now knows the file
    _append_from_another_process(
        str(index),
        [("b", {"v": "2"}), ("c", {"v": 'x,"y"\r\nz'}), ("d", {"v": "4"})],
    )
    w.write_entry("e", {"v": "5", "new": "column"})  # a rewrite
    assert [r["path"] for r in w.read_rows()] == ["a", "b", "c", "d", "e"]
    assert w.read_rows()[2]["v"] == 'x,"y"\r\nz'


def test_an_empty_index_path_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        IndexWriter("")
    with pytest.raises(ValueError, match="must not be empty"):
        IndexWriter("", "")


def test_an_empty_lock_path_means_the_default_as_in_the_original(tmp_path: Path) -> None:
    # The original takes ``lock_path or <index>.lock``: a lock path read from
    # an unset environment variable ("") keeps working after the switch.
    w = IndexWriter(tmp_path / "i.csv", "")
    assert w.lock_path == tmp_path / "i.csv.lock"
    w.write_entry("a", {"v": 1})
    assert (tmp_path / "i.csv.lock").exists()


@pytest.mark.parametrize(
    "content", [b"\n", b"\n\r\n\n", b"\r\n", b"\xef\xbb\xbf\n"], ids=repr
)
def test_a_file_of_blank_lines_gets_its_header_on_the_first_line(
    index: Path, content: bytes
) -> None:
    # ``echo > index.csv`` makes one: a header appended after the blank line
    # would not be the first line, which csv.DictReader (and med-imagetools'
    # own writer, reading the file next) takes for the header.
    index.write_bytes(content)
    IndexWriter(index).write_entry("a.nii", {"subject": "s1"})
    bom = b"\xef\xbb\xbf" if content.startswith(b"\xef\xbb\xbf") else b""
    eol = b"\r\n" if content.removeprefix(bom).startswith(b"\r\n") else b"\n"  # the first one
    assert index.read_bytes() == bom + b"path,subject" + eol + b"a.nii,s1" + eol
    with open(index, newline="", encoding="utf-8-sig") as f:
        assert list(csv.DictReader(f)) == [{"path": "a.nii", "subject": "s1"}]


def test_setting_the_paths_redirects_later_calls_as_in_the_original(tmp_path: Path) -> None:
    w = IndexWriter(tmp_path / "a.csv")
    w.write_entry("x1", {"v": 1})
    w.index_path = tmp_path / "b.csv"
    assert w.lock_path == tmp_path / "a.csv.lock"  # the lock file stays
    w.write_entry("x2", {"v": 2})
    w.lock_path = None  # the new index's own
    assert w.lock_path == tmp_path / "b.csv.lock"
    w.write_entry("x3", {"v": 3})
    assert (tmp_path / "a.csv").read_text() == "path,v\nx1,1\n"
    assert (tmp_path / "b.csv").read_text() == "path,v\nx2,2\nx3,3\n"
    with pytest.raises(ValueError, match="must not be the index itself"):
        w.lock_path = tmp_path / "b.csv"
    with pytest.raises(ValueError, match="must not be empty"):
        w.index_path = ""
    assert w.index_path == tmp_path / "b.csv"  # unchanged by a refused value
    assert pickle.loads(pickle.dumps(w)).index_path == tmp_path / "b.csv"
