"""The CSV table format: formatting, strict parsing, and the size-unlimited parser."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index_writer import _table

# Text a CSV value may hold: anything but NUL and lone surrogates.
values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=30,
)
awkward = st.text(alphabet='ab,"\r\n é', max_size=8)


def scan(data: bytes) -> list[list[str]]:
    return [fields for _, _, fields in _table.Scanner(io.BytesIO(data), 0, 0).records()]


def py_parse(text: str) -> list[list[str]]:
    stream = io.StringIO(text, newline="")
    return [r for r in _table._py_records(iter(stream)) if r]


@given(rows=st.lists(st.lists(values, min_size=1, max_size=5), max_size=6),
       eol=st.sampled_from(["\n", "\r\n"]))
def test_format_then_parse_round_trips(rows: list[list[str]], eol: str) -> None:
    text = "".join(_table.format_row(r, eol) for r in rows)
    assert scan(text.encode()) == rows
    assert py_parse(text) == rows
    # and the csv module agrees with what we wrote
    assert [r for r in csv.reader(io.StringIO(text, newline="")) if r] == rows


@settings(max_examples=400)
@given(text=st.lists(awkward, max_size=6).map("".join))
def test_python_parser_matches_csv_module(text: str) -> None:
    try:
        expected: list[list[str]] | type[csv.Error] = [
            r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r
        ]
    except csv.Error:
        expected = csv.Error
    try:
        got: list[list[str]] | type[csv.Error] = py_parse(text)
    except csv.Error:
        got = csv.Error
    assert got == expected


def test_fallback_parser_used_for_huge_fields_only() -> None:
    limit = csv.field_size_limit()
    big = "x" * (limit + 10)
    data = f'path,v\na,1\nb,"{big}"\nc,3\n'.encode()
    assert scan(data) == [["path", "v"], ["a", "1"], ["b", big], ["c", "3"]]
    assert csv.field_size_limit() == limit


def test_offsets_and_lines() -> None:
    data = b'h1,h2\r\na,"x\r\ny"\r\n\r\nb,2'
    recs = list(_table.Scanner(io.BytesIO(data), 0, 0).records())
    assert [(line, start) for line, start, _ in recs] == [(1, 0), (2, 7), (5, 19)]
    assert data[19:] == b"b,2"


def test_read_header_reports_bom_and_eol() -> None:
    header, _, rest = _table.read_header(io.BytesIO(b"\xef\xbb\xbfa,b\r\n1,2\r\n"))
    assert (header.columns, header.bom, header.eol) == (["a", "b"], True, "\r\n")
    assert [f for _, _, f in rest] == [["1", "2"]]
    empty, _, _ = _table.read_header(io.BytesIO(b""))
    assert (empty.columns, empty.bom, empty.eol) == ([], False, "\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a\nb\n\xc3\n", "line 3: not valid UTF-8"),
        (b"a\rb\r\xff", "line 3: not valid UTF-8"),
        (b'a\n"b\n', "line 2: unterminated quote: the quoted field opened on line 2"),
        (b"a\nb\x00\n", "line 2: contains a NUL"),
    ],
)
def test_errors_name_the_line(data: bytes, message: str) -> None:
    with pytest.raises(csv.Error, match=message):
        scan(data)


def test_cr_is_quoted_even_for_lf_files() -> None:
    # csv.writer(lineterminator="\n") leaves "a\rb" unquoted, which splits the
    # row when read back; ours quotes it.
    assert _table.format_row(["a\rb"], "\n") == '"a\rb"\n'


def full_then_skim(data: bytes, ncols: int) -> tuple[object, object]:
    """(state after a full scan, state after skim + scan of the rest)."""

    def finish(scanner: _table.Scanner) -> object:
        try:
            wide = [line for line, _, f in scanner.records() if len(f) > ncols]
        except csv.Error as e:
            return ("error", str(e))
        return (scanner.offset, scanner.line, scanner.last_eol, wide[:1])

    full = finish(_table.Scanner(io.BytesIO(data), 0, 0))
    stream = io.BytesIO(data)
    offset, line, eol = _table.skim(stream, 0, 0, ncols)
    rest = _table.Scanner(stream, offset, line)
    rest.last_eol = eol
    return full, finish(rest)


plain_lines = st.lists(
    st.text(alphabet='ab,é"\r\x00', max_size=6).map(lambda s: s + "\n")
    | st.text(alphabet="ab,", max_size=6).map(lambda s: s + "\r\n")
    | st.just("\n"),
    max_size=12,
)


@settings(max_examples=300)
@given(lines=plain_lines, tail=st.sampled_from(["", "x,y", "a\r", '"q']), ncols=st.integers(1, 4))
def test_skim_agrees_with_full_scan(lines: list[str], tail: str, ncols: int) -> None:
    data = ("".join(lines) + tail).encode()
    full, skimmed = full_then_skim(data, ncols)
    assert skimmed == full


def test_skim_takes_big_plain_blocks_and_stops_at_quotes() -> None:
    plain = b"a,b,c\n" * 300_000  # > one block
    data = plain + b'x,"y\nz",1\n' + b"d,e,f\n"
    stream = io.BytesIO(data)
    offset, line, eol = _table.skim(stream, 0, 0, 3)
    assert 0 < offset <= len(plain) and data[offset - 1 : offset] == b"\n"
    assert line == data[:offset].count(b"\n") and eol == "\n"
    assert stream.tell() == offset
    full, skimmed = full_then_skim(data, 3)
    assert skimmed == full
