"""The path map: every row holding a path is among its candidates, and nothing else.

The map files rows under a 24-bit hash of their path, searched unsorted for
the first few lookups and sorted after. These properties run it against a
list of (path, offset) pairs, with a hash that collides on purpose (small
values, many zero bytes: the unsorted search must skip matches that straddle
two rows).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index_writer import _paths

PATHS = [f"p{i}" for i in range(12)]
# Hashes with zero bytes and shared bytes, so packed hashes look alike.
HASH_VALUES = [0, 1, 256, 65536, 65537, 257, 0x010000, 0xFFFFFF, 0x00FF00, 2, 3, 0x0100FF]


@pytest.fixture
def weak_hash(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, int]:
    table = {p.encode(): h for p, h in zip(PATHS, HASH_VALUES, strict=True)}
    monkeypatch.setattr(_paths, "path_hash", table.__getitem__)
    monkeypatch.setattr(_paths, "FRESH_MIN", 3)  # rows added are sorted in as they come
    return table


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(PATHS)),
        st.tuples(st.just("lines"), st.lists(st.sampled_from(PATHS), min_size=1, max_size=40),
                  st.sampled_from([0, 1]), st.booleans()),
        st.tuples(st.just("look"), st.sampled_from(PATHS)),
        st.tuples(st.just("sort"),),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # never changes
@given(ops=operations)
def test_candidates_are_exactly_the_rows_filed_under_the_hash(
    weak_hash: dict[bytes, int], ops: list[tuple[object, ...]]
) -> None:
    m = _paths.PathOffsets()
    rows: list[tuple[str, int]] = []  # the model
    offset = 0
    for op in ops:
        if op[0] == "add":
            path = str(op[1])
            m.add(path, offset)
            rows.append((path, offset))
            offset += 10
        elif op[0] == "lines":
            paths, column, crlf = op[1], op[2], op[3]
            assert isinstance(paths, list)
            eol = b"\r\n" if crlf else b"\n"
            lines = [(b"x," + p.encode() if column else p.encode() + b",x") + eol
                     for p in paths]
            m.add_plain_lines(b"".join(lines), offset, int(str(column)))
            for p, line in zip(paths, lines, strict=True):
                rows.append((p, offset))
                offset += len(line)
        elif op[0] == "sort":
            m.sort()
        else:
            path = str(op[1])
            want = {o for p, o in rows if weak_hash[p.encode()] == weak_hash[path.encode()]}
            got = m.candidates(path)
            assert sorted(got) == sorted(want)
            assert len(got) == len(set(got))
    assert len(m) == len(rows)
    for path in PATHS:  # and after every lookup has sorted the map
        for _ in range(_paths._SEARCHES_BEFORE_SORT + 1):
            got = m.candidates(path)
        want = {o for p, o in rows if weak_hash[p.encode()] == weak_hash[path.encode()]}
        assert sorted(got) == sorted(want)


def test_a_hash_straddling_two_rows_is_no_candidate(weak_hash: dict[bytes, int]) -> None:
    """Rows hashed 256 then 0 pack as 00 01 00 00 00 00 00 00: hash 1 sits across them."""
    m = _paths.PathOffsets()
    m.add_plain_lines(b"p2\np0\n", 0, 0)
    assert weak_hash[b"p2"] == 256 and weak_hash[b"p0"] == 0 and weak_hash[b"p1"] == 1
    assert m.candidates("p1") == []
    assert m.candidates("p2") == [0] and m.candidates("p0") == [3]


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    changes=st.lists(st.tuples(st.integers(0, 39), st.integers(-40, 40)), max_size=6),
)
def test_shift_moves_every_later_row_by_the_deltas_before_it(
    gaps: list[int], changes: list[tuple[int, int]]
) -> None:
    m = _paths.PathOffsets()
    offsets, at = [], 0
    for i, gap in enumerate(gaps):
        m.add(f"p{i}", at)
        offsets.append(at)
        at += gap
    rows = sorted({row % len(offsets): delta for row, delta in changes}.items())
    moves = [(offsets[row], max(delta, 1 - gaps[row])) for row, delta in rows]
    assert m.shift(moves)
    want = [o + sum(d for start, d in moves if start < o) for o in offsets]
    assert list(m.starts) == want
    for i, o in enumerate(want):
        assert o in m.candidates(f"p{i}")


def test_shift_refuses_an_offset_that_is_no_row_start() -> None:
    m = _paths.PathOffsets()
    for i, o in enumerate((0, 10, 20)):
        m.add(f"p{i}", o)
    assert not m.shift([(10, 5), (15, 1)])
    assert list(m.starts) == [0, 10, 20]  # unchanged
