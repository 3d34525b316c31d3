"""The scanner behind ``index-writer check`` and its de-duplication, in-process."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index_writer import IndexWriter
from index_writer._check import DedupeRefused, check_index, dedupe, scan_records

# Text a CSV can hold: no NUL, no lone surrogates; plenty of the characters
# that need quoting.
values = st.text(
    alphabet=st.one_of(
        st.sampled_from(',"\r\n\t é€😀'),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=12,
)
rows = st.lists(st.lists(values, min_size=1, max_size=5), max_size=8)


@settings(max_examples=300, deadline=None)
@given(rows=rows, eol=st.sampled_from(["\n", "\r\n"]), final=st.booleans())
def test_scanner_agrees_with_csv_module(rows: list[list[str]], eol: str, final: bool) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=eol).writerows(rows)
    text = buf.getvalue()
    if not final and text.endswith(eol):
        text = text[: -len(eol)]
    data = text.encode("utf-8")
    expected = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    got = [[f.decode("utf-8") for f in r.fields] for r in scan_records(data)]
    assert got == expected
    # Spans tile the file exactly.
    pos = 0
    for rec in scan_records(data):
        assert rec.start == pos
        pos = rec.end
    assert pos == len(data)


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
    with pytest.raises(DedupeRefused) as info:
        dedupe(index)
    assert not info.value.report.clean
    assert index.read_bytes() == content


def test_dedupe_missing_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dedupe(tmp_path / "nope.csv")
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
