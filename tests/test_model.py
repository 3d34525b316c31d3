"""A hypothesis state machine: the index always equals a simple in-memory model.

Each write goes through one of three spellings of the same index, chosen per
write: its real path, a path through a symlinked directory, and one with
``..``. They must behave as one index (one lock, one cached state).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import _internals
from index_writer import IndexSchemaMismatchError, IndexWriter

paths = st.sampled_from([f"out/{n}.nii" for n in "abcdef"] + ["with,comma", 'q"uote'])
keys = st.sampled_from(["subject", "modality", "score", "note"])
vals = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.text(alphabet='xy,"\r\né ', max_size=5),
)
contexts = st.dictionaries(keys, vals, max_size=3)
entries = st.lists(st.tuples(paths, contexts), min_size=0, max_size=4)
#: Which spelling of the index a write goes through (see ``IndexModel.writers``).
spellings = st.integers(0, 2)


def as_str(v: object) -> str:
    return "" if v is None else str(v)


class IndexModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        real = self.dir / "real"
        real.mkdir()
        (self.dir / "link").symlink_to(real, target_is_directory=True)
        self.writers = [
            IndexWriter(real / "index.csv"),
            IndexWriter(self.dir / "link" / "index.csv"),
            IndexWriter(self.dir / "link" / ".." / "real" / "index.csv"),
        ]
        self.writer = self.writers[0]
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []

    def teardown(self) -> None:
        shutil.rmtree(self.dir)

    def apply(
        self, batch: list[tuple[str, dict[str, object]]], replace: bool, merge: bool
    ) -> None:
        new_rows = [{"path": p, **{k: as_str(v) for k, v in c.items()}} for p, c in batch]
        if not batch:
            return
        seen = dict.fromkeys(k for r in new_rows for k in r)
        if not self.columns:
            columns = list(dict.fromkeys(["path", *seen]))
        else:
            extra = [k for k in seen if k not in self.columns]
            if extra and not merge:
                raise IndexSchemaMismatchError(set(extra), self.writer.index_path)
            columns = self.columns + extra
        self.columns = columns
        if replace:
            latest: dict[str, dict[str, str]] = {}
            for r in new_rows:
                latest[r["path"]] = r
            out: list[dict[str, str]] = []
            done: set[str] = set()
            for r in self.rows:
                p = r["path"]
                if p in latest:
                    if p not in done:
                        done.add(p)
                        out.append(latest[p])
                else:
                    out.append(r)
            out += [r for p, r in latest.items() if p not in done]
            self.rows = out
        else:
            self.rows = self.rows + new_rows

    def expected(self) -> list[dict[str, str]]:
        return [{c: r.get(c, "") for c in self.columns} for r in self.rows]

    def run(self, batch: list[tuple[str, dict[str, object]]], replace: bool, merge: bool,
            single: bool, spelling: int) -> None:
        writer = self.writers[spelling]
        model_error = real_error = None
        snapshot = (list(self.columns), list(self.rows))
        try:
            self.apply(batch, replace, merge)
        except IndexSchemaMismatchError as e:
            model_error = e
            self.columns, self.rows = snapshot
        try:
            if single:
                for p, c in batch:
                    writer.write_entry(p, c, replace_existing=replace, merge_columns=merge)
            else:
                writer.write_entries(batch, replace_existing=replace, merge_columns=merge)
        except IndexSchemaMismatchError as e:
            real_error = e
        if single and model_error is not None:
            # One by one, the entries before the offending one do land: replay
            # the model the same way.
            self.columns, self.rows = snapshot
            for p, c in batch:
                try:
                    self.apply([(p, c)], replace, merge)
                except IndexSchemaMismatchError:
                    break
        assert (model_error is None) == (real_error is None)
        if real_error is not None and model_error is not None and not single:
            assert real_error.missing_fields == model_error.missing_fields

    @rule(batch=entries, replace=st.booleans(), merge=st.booleans(), spelling=spellings)
    def write_batch(self, batch: list[tuple[str, dict[str, object]]], replace: bool,
                    merge: bool, spelling: int) -> None:
        self.run(batch, replace, merge, single=False, spelling=spelling)

    @rule(path=paths, context=contexts, replace=st.booleans(), merge=st.booleans(),
          spelling=spellings)
    def write_one(self, path: str, context: dict[str, object], replace: bool,
                  merge: bool, spelling: int) -> None:
        self.run([(path, context)], replace, merge, single=True, spelling=spelling)

    @rule()
    def new_process(self) -> None:
        """Forget what this process knew, as a fresh worker would."""
        _internals.forget_all()

    @invariant()
    def index_matches_model(self) -> None:
        expected = self.expected()
        for writer in self.writers:
            assert writer.read_rows() == expected
        assert (self.dir / "link").is_symlink()
        assert not [p for p in (self.dir / "real").iterdir() if p.name.endswith(".tmp")]


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
