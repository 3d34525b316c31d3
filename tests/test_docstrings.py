"""Every example in the public docstrings runs, so the documentation cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import index_writer

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(index_writer.__path__, "index_writer.")
    if name != "index_writer.__main__"
)


@pytest.mark.parametrize("name", ["index_writer", *MODULES])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_has_examples() -> None:
    finder = doctest.DocTestFinder(recurse=False)
    for obj in (
        index_writer.IndexWriter,
        index_writer.IndexWriter.write_entry,
        index_writer.IndexWriter.write_entries,
        index_writer.IndexWriter.read_rows,
        index_writer.IndexWriterError,
        index_writer.IndexReadError,
        index_writer.IndexWriteError,
        index_writer.IndexSchemaMismatchError,
        index_writer.IndexLockTimeoutError,
        index_writer.check_index,
        index_writer.CheckReport,
        index_writer.CheckReport.summary,
        index_writer.dedupe,
        index_writer.DedupeRefusedError,
    ):
        tests = finder.find(obj, obj.__qualname__)
        assert any(t.examples for t in tests), f"{obj.__qualname__} has no example"
