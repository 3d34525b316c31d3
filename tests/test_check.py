"""``index-writer check`` and its de-duplication, in-process.

The file is parsed by the table format module (tested in ``test_table.py``);
these tests cover what the check makes of it.
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _internals
from index_writer import (
    DedupeRefusedError,
    IndexReadError,
    IndexWriter,
    IndexWriterError,
    check_index,
    dedupe,
)

# Text a CSV can hold: no NUL, no lone surrogates; plenty of the characters
# that need quoting.
values = st.text(
    alphabet=st.one_of(
        st.sampled_from(',"\r\n\t é€😀'),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c,d", 'e"f', "g\r\nh"]), values),
        min_size=1,
        max_size=12,
    )
)
def test_writer_output_checks_clean_and_dedupes_to_the_last(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, str]]
) -> None:
    index = tmp_path_factory.mktemp("idx") / "index.csv"
    w = IndexWriter(index)
    w.write_entries((p, {"v": v}) for p, v in entries)
    report = check_index(index)
    assert report.rows == len(entries)
    assert report.columns == ["path", "v"]
    expected_dupes = len(entries) - len({p for p, _ in entries})
    assert report.duplicate_rows == expected_dupes
    assert report.clean == (expected_dupes == 0)

    assert dedupe(index) == expected_dupes
    last = {p: v for p, v in entries}
    order = [p for i, (p, _) in enumerate(entries) if all(q != p for q, _ in entries[i + 1 :])]
    assert w.read_rows() == [{"path": p, "v": last[p]} for p in order]
    assert check_index(index).clean


def test_line_numbers_count_every_kind_of_line_end(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    # Header on line 1; a value spanning lines 2-3; a lone CR ends line 4.
    index.write_bytes(b'path,k\na,"x\ny"\rb,1\r\nb,2,3\n')
    report = check_index(index)
    assert report.problems == [
        "1 row has more fields than the header's 2: line 5",
        "1 duplicate path (1 redundant row; 'check --dedupe' keeps the last "
        "of each): 'b' on lines 4, 5",
    ]


def test_empty_and_header_only_files_are_clean(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(b"")
    assert check_index(index).clean
    index.write_bytes(b"\xef\xbb\xbf")
    assert check_index(index).clean
    index.write_bytes(b"path,k\r\n")
    report = check_index(index)
    assert (report.clean, report.rows, report.columns) == (True, 0, ["path", "k"])
    index.write_bytes(b"\n\npath,k\nx,1\n")
    report = check_index(index)
    assert (report.clean, report.rows) == (True, 1)
    assert "2 blank lines before the header" in report.notes[0]


def test_huge_value_needs_no_field_size_limit(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    big = "x" * (csv.field_size_limit() + 10)
    IndexWriter(index).write_entry("a", {"v": big})
    IndexWriter(index).write_entry("a", {"v": "small"})
    limit = csv.field_size_limit()
    assert check_index(index).duplicate_rows == 1
    assert dedupe(index) == 1
    assert csv.field_size_limit() == limit
    assert index.read_text() == "path,v\na,small\n"


def test_dedupe_refuses_malformed_file(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    content = b"path,k\na,1\na,\xff\n"
    index.write_bytes(content)
    with pytest.raises(DedupeRefusedError) as info:
        dedupe(index)
    assert not info.value.report.clean
    assert index.read_bytes() == content


@pytest.mark.parametrize("where", ["index missing", "directory missing"])
def test_rewriting_an_index_that_is_gone_raises_and_creates_no_index(
    tmp_path: Path, where: str
) -> None:
    """The index vanished after dedupe looked (deleted by someone): our error, no new file."""
    index = tmp_path / "i.csv" if where == "index missing" else tmp_path / "gone" / "i.csv"
    with pytest.raises(IndexReadError) as info:
        _internals.replace_contents(IndexWriter(index), b"path\n")
    assert isinstance(info.value.original_exception, FileNotFoundError)
    assert not index.exists()
    assert not os.path.exists(_internals.journal_path(index))
    assert index.parent.exists() == (where == "index missing")


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(IndexReadError) as info:
        dedupe(tmp_path / "nope.csv")
    assert isinstance(info.value.original_exception, FileNotFoundError)
    with pytest.raises(IndexReadError) as info:
        check_index(tmp_path / "nope.csv")
    assert isinstance(info.value.original_exception, FileNotFoundError)
    with pytest.raises(IndexReadError) as info:
        check_index(tmp_path)
    assert isinstance(info.value.original_exception, IsADirectoryError | PermissionError)
    assert list(tmp_path.iterdir()) == []


def test_dedupe_and_writer_threads_of_one_process(tmp_path: Path) -> None:
    """The in-process thread layer of the lock covers dedupe too."""
    index = tmp_path / "i.csv"
    w = IndexWriter(index)
    w.write_entries((f"dup{i % 20}", {"k": i}) for i in range(60))
    started = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            mine = IndexWriter(index)
            for i in range(400):
                mine.write_entry(f"t{i}", {"k": i})
                started.set()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            started.set()

    threads = [threading.Thread(target=writer) for _ in range(1)]
    for t in threads:
        t.start()
    started.wait(timeout=30)
    removed = [dedupe(index) for _ in range(3)]
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert removed[0] == 40
    assert removed[1:] == [0, 0]
    paths = [r["path"] for r in w.read_rows()]
    assert len(paths) == len(set(paths)) == 20 + 400


@pytest.fixture
def tiny_field_limit() -> Iterator[None]:
    """Make every field too large for the C parser: the scanner restarts in Python."""
    limit = csv.field_size_limit(2)
    try:
        yield
    finally:
        csv.field_size_limit(limit)


BLANKS_AND_ENDINGS = b'\r\npath,k\r\n\r\na,1\n\nb,"x\r\ny"\r\r\na,3\n\n'


def report_of(index: Path) -> tuple[object, ...]:
    r = check_index(index)
    return (r.rows, r.columns, r.problems, r.notes, r.duplicate_rows, r.blocking)


def test_blank_lines_and_line_endings_are_counted(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(BLANKS_AND_ENDINGS)
    report = check_index(index)
    assert (report.rows, report.duplicate_rows) == (3, 1)
    assert report.notes == [
        "1 blank line before the header (pandas skips them, csv.DictReader takes the first "
        "for an empty header: remove them)",
        "4 blank lines (ignored by readers)",
        # Terminators of records and blank lines, not the CR LF inside "x\r\ny".
        "mixed line endings: 4 CR LF, 4 LF",
    ]
    assert report.problems[0].endswith("'a' on lines 4, 9")


def test_python_parser_fallback_gives_the_same_report(
    tmp_path: Path, tiny_field_limit: None
) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(BLANKS_AND_ENDINGS)
    with_fallback = report_of(index)
    csv.field_size_limit(1 << 20)
    assert report_of(index) == with_fallback


def test_dedupe_keeps_blank_lines_and_line_endings(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(BLANKS_AND_ENDINGS)
    assert dedupe(index) == 1
    # Only the record "a,1\n" went; the blank lines around it stayed.
    assert index.read_bytes() == b'\r\npath,k\r\n\r\n\nb,"x\r\ny"\r\r\na,3\n\n'


def test_missing_final_newline_names_the_last_line(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(b'path,k\na,"x\ny"')
    assert check_index(index).problems == ["no newline at the end of the file (after line 3)"]


@pytest.mark.parametrize(
    ("content", "problem", "rows"),
    [
        (
            b"path,k\na,1\nb,\xe9t\xe9\nc,\xe9\n",
            "not UTF-8: byte 0xe9 at line 3 (byte offset 13)",
            1,
        ),
        (b"path,k\na,1\nb,\x00\nc,\x00\n", "binary data: NUL byte at line 3", 1),
        (b'path,k\na,1\nb,"x"y\nc,"x"y\n', "text after a closing quote on 1 line: 3", 1),
        (b'path,k\na,1\nb,"x\ny"z\n', "text after a closing quote on 1 line: 3", 1),
        (
            b'path,k\na,1\n\nb,"open\nc,3\n',
            "unterminated quote: the quoted field opened on line 4 never closes "
            "(the rest of the file is inside it)",
            1,
        ),
        # The first problem in the file is reported, whatever its kind.
        (b"path,k\na,\x00\nb,\xe9\n", "binary data: NUL byte at line 2", 0),
        (b'path,k\na,"x"y\nb,\xe9\n', "text after a closing quote on 1 line: 2", 0),
    ],
)
def test_reading_stops_at_the_first_fatal_problem(
    tmp_path: Path, content: bytes, problem: str, rows: int
) -> None:
    index = tmp_path / "i.csv"
    index.write_bytes(content)
    report = check_index(index)
    assert report.problems == report.blocking == [problem]
    assert (report.rows, report.columns) == (rows, ["path", "k"])
    if not problem.startswith("unterminated"):
        assert report.notes[-1].startswith("reading stopped at line ")
    with pytest.raises(DedupeRefusedError):
        dedupe(index)
    assert index.read_bytes() == content


def test_rows_before_a_bad_byte_far_into_the_file_are_checked(tmp_path: Path) -> None:
    # The scanner decodes blocks ahead of the rows it yields; every row before
    # the bad byte is still counted, and duplicates among them found.
    index = tmp_path / "i.csv"
    body = b"".join(b"f%d,%s\n" % (i, b"v" * 50) for i in range(1000))
    index.write_bytes(b"path,k\n" + body + b"f7,dup\nlast,caf\xe9\n")
    report = check_index(index)
    assert report.rows == 1001
    assert report.duplicate_rows == 1
    assert report.problems[0] == (
        f"not UTF-8: byte 0xe9 at line 1003 (byte offset {len(body) + 7 + 7 + 8})"
    )


def test_paths_with_the_same_hash_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are grouped by a hash of their path first; equal hashes are only candidates."""
    import index_writer._check_scan as scan

    # Every path of the same length now has the same hash.
    monkeypatch.setattr(scan, "hash", len, raising=False)
    index = tmp_path / "i.csv"
    index.write_text("path,k\naa,1\nbb,2\naa,3\ncc,4\nd,5\nbb,6\n")
    report = check_index(index)
    assert report.duplicate_rows == 2
    assert report.problems == [
        "2 duplicate paths (2 redundant rows; 'check --dedupe' keeps the last of each): "
        "'aa' on lines 2, 4; 'bb' on lines 3, 7"
    ]
    assert dedupe(index) == 2
    assert index.read_text() == "path,k\naa,3\ncc,4\nd,5\nbb,6\n"


def test_many_duplicates_are_all_counted_and_shown_briefly(tmp_path: Path) -> None:
    index = tmp_path / "i.csv"
    IndexWriter(index).write_entries((f"p{i % 7}", {"k": i}) for i in range(70))
    report = check_index(index)
    assert report.duplicate_rows == 63
    (problem,) = report.problems
    assert problem.startswith("7 duplicate paths (63 redundant rows; ")
    assert "'p0' on lines 2, 9, 16, 23, 30 and 5 more; 'p1' on lines 3, 10" in problem
    assert problem.endswith("; and 4 more paths")
    assert dedupe(index) == 63
    assert [r["k"] for r in IndexWriter(index).read_rows()] == [str(i) for i in range(63, 70)]


def test_a_bad_byte_cuts_the_record_holding_it(tmp_path: Path) -> None:
    # The rows before the bad byte are counted (their duplicate too), the one
    # holding it is not, whether it is cut inside or outside a quoted field.
    index = tmp_path / "i.csv"
    for tail in (b"c,caf\xe9\n", b'c,"caf\xe9"\n', b"c\xe9,x\n"):
        index.write_bytes(b"path,k\r\na,1\r\n\r\nb,2\r\na,3\r\n" + tail)
        report = check_index(index)
        assert (report.rows, report.duplicate_rows) == (3, 1), tail
        assert report.problems[0].startswith("not UTF-8: byte 0xe9 at line 6"), tail
        assert report.notes[-2:] == ["1 blank line (ignored by readers)", "CR LF line endings "
                                     "(kept by writers)"], tail  # fmt: skip


def test_dedupe_refused_is_an_index_writer_error_with_the_report(tmp_path: Path) -> None:
    import pickle

    index = tmp_path / "i.csv"
    index.write_bytes(b"path,k\na,1\na,2,3\n")
    with pytest.raises(IndexWriterError) as info:
        dedupe(index)
    error = info.value
    assert isinstance(error, DedupeRefusedError)
    assert error.index_path == index
    assert error.report.blocking
    assert str(error) == (
        f"{index}: not removing duplicates from a malformed index: "
        "1 row has more fields than the header's 2: line 3"
    )
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.report) == (str(error), error.report)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # not text
        b'{"path": "a.nii", "k": 1}\n',  # a JSON file: no path column
        b"file,k\na,1\na,2\n",  # an index of another path column
    ],
)
def test_dedupe_of_a_file_that_is_no_index_creates_nothing(tmp_path: Path, content: bytes) -> None:
    index = tmp_path / "data.bin"
    index.write_bytes(content)
    with pytest.raises(DedupeRefusedError) as info:
        dedupe(index)
    assert info.value.report.blocking
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    assert index.read_bytes() == content


PEAK_RSS = """
import resource, sys
from index_writer import check_index

def peak_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak

before = peak_kb()
report = check_index(sys.argv[1])
print(report.rows, report.duplicate_rows, peak_kb() - before)
"""


@pytest.mark.slow
def test_check_memory_is_bounded_by_the_row_not_the_file(tmp_path: Path) -> None:
    """300k rows (about 26 MB): the check needs a few bytes per row, not the file."""
    import subprocess
    import sys

    pytest.importorskip("resource")
    index = tmp_path / "i.csv"
    rows = 300_000
    IndexWriter(index).write_entries(
        (f"output/sub-{i:07d}/image_{i}.nii.gz", {"subject": f"s{i % 1000}", "qc": "a,b"})
        for i in range(rows)
    )
    with index.open("a") as f:
        f.write("output/sub-0000005/image_5.nii.gz,again,x\n")
    size_kb = index.stat().st_size // 1024
    r = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(index)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    count, duplicates, growth_kb = map(int, r.stdout.split())
    assert (count, duplicates) == (rows + 1, 1)
    # 8 bytes a row for the path hashes plus a 4-byte-a-row bitmap: about 4 MB,
    # and the interpreter's own allocations around it: well under half the file
    # (reading the file whole would be more than all of it).
    assert growth_kb < size_kb // 2, f"peak grew by {growth_kb} KB for a {size_kb} KB file"


def test_blank_lines_longer_than_a_read_block(tmp_path: Path) -> None:
    # More than a megabyte of blank lines; the lone LF first puts the reads'
    # block boundary in the middle of a CR LF, which still counts as one.
    index = tmp_path / "i.csv"
    index.write_bytes(b"path\n" + b"\n" + b"\r\n" * 600_000 + b"a\n")
    report = check_index(index)
    assert (report.clean, report.rows) == (True, 1)
    assert report.notes == [
        "600001 blank lines (ignored by readers)",
        "mixed line endings: 600000 CR LF, 3 LF",
    ]


pieces = st.sampled_from(
    ["a", "b", "a,b", '"x,y"', '"q""q"', '"l1\nl2"', '"c\rr"', "", ",", "é", "\n", "\r\n", "\r"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=40), st.booleans())
def test_the_streaming_check_agrees_with_reading_it_all_at_once(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str], bom: bool
) -> None:
    """For any well-formed file: rows, widths and duplicates as csv.reader sees them."""
    import io

    text = "path,k\n" + "".join(parts)
    index = tmp_path_factory.mktemp("stream") / "i.csv"
    index.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return  # malformed: covered by the examples above
    rows = [r for r in records[1:] if r]
    paths = [r[0] for r in rows if r[0]]  # a row without a path is no file's
    report = check_index(index)
    assert report.rows == len(rows)
    assert report.columns == ["path", "k"]
    assert report.duplicate_rows == len(paths) - len(set(paths))
    wide = sum(len(r) > 2 for r in rows)
    assert bool(report.blocking) == (wide > 0)
    assert report.clean == (not wide and len(set(paths)) == len(paths) and text.endswith(
        ("\n", "\r")
    ))


def test_rows_without_a_path_are_not_duplicates(tmp_path: Path) -> None:
    # A file made elsewhere, without the path column: the writer adds the
    # column, and the rows from before have no path. They are no file's rows,
    # let alone one file's: nothing to report or remove.
    index = tmp_path / "index.csv"
    index.write_bytes(b"subject,modality\ns1,CT\ns2,MR\ns3,PT\n")
    IndexWriter(index).write_entry("out/a.nii", {"subject": "s4"})
    with open(index, "a", newline="") as f:
        f.write("s5,CT\n")  # a short row: no path field at all
    rows = IndexWriter(index).read_rows()
    report = check_index(index)
    assert report.clean and report.duplicate_rows == 0, report.problems
    assert dedupe(index) == 0
    assert IndexWriter(index).read_rows() == rows
