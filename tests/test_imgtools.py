"""med-imagetools' own writers and ``imgtools autopipeline`` on index-writer.

Needs the real med-imagetools 2.16 (``pip install '.[test-imgtools]'``); every
test here is marked ``imgtools`` and skipped without it. CI runs
them in a step of their own, after the rest of the suite, because
med-imagetools pins ``fasteners==0.19`` and brings SimpleITK, pydicom, pandas...

Scenarios that install index-writer into med-imagetools, start worker pools
or set the environment variable run in fresh interpreters
(``tests/_imgtools_workers.py``); the tests that install it in this process
undo it (the ``clean`` fixture checks that nothing is left behind).

med-imagetools' own writer tests come from its 2.16.0 sdist, downloaded at
test time with pip (cached like the interop tests' wheel) and never part of
this repository.
"""

from __future__ import annotations

import copy
import copyreg
import csv
import importlib.metadata
import json
import os
import pickle
import re
import site
import subprocess
import sys
import tarfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import index_writer
from _imgtools_workers import nifti_writer, small_image
from index_writer import (
    IndexReadError,
    IndexSchemaMismatchError,
    IndexWriter,
    install_as_imgtools,
    uninstall_as_imgtools,
)
from index_writer._imgtools import ENV_VAR, TESTED_VERSIONS

pytestmark = [
    pytest.mark.imgtools,
    # med-imagetools' logger (structlog) on a save that fails: not ours.
    pytest.mark.filterwarnings("ignore:Use None to use the terminal width:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _needs_imgtools() -> None:
    # Per test, not at import: with `-m "not imgtools"` nothing here is skipped.
    pytest.importorskip(
        "imgtools", reason="needs med-imagetools 2.16 (pip install '.[test-imgtools]')"
    )

TESTS = Path(__file__).resolve().parent
WORKERS = TESTS / "_imgtools_workers.py"
REPO = TESTS.parent
VERSION = "2.16.0"
SDIST = f"med_imagetools-{VERSION}.tar.gz"
SDIST_TESTS = f"med_imagetools-{VERSION}/tests/unittests/io/writers/"
NAMES = (
    "IndexWriter",
    "IndexWriterError",
    "IndexSchemaMismatchError",
    "IndexReadError",
    "IndexWriteError",
)
MALFORMED = "filepath,note\nold.nii.gz,a,EXTRA\n"


# ------------------------------------------------------------------ helpers


def _env(value: str | None = None, **extra: str) -> dict[str, str]:
    """This environment, with ``ENV_VAR`` set to ``value`` (or removed)."""
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if value is not None:
        env[ENV_VAR] = value
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.update(extra)
    return env


def run_python(
    args: list[str], env: dict[str, str], timeout: float = 240, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def last_json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def scenario(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Any:
    return last_json(run_python([str(WORKERS), *args], env or _env(), timeout=timeout))


def modules() -> tuple[Any, Any]:
    import imgtools.io.writers.abstract_base_writer as abw
    import imgtools.io.writers.index_writer as iw

    return iw, abw


def our_finders() -> list[object]:
    return [f for f in sys.meta_path if type(f).__module__ == "index_writer._imgtools"]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Not installed before the test; uninstalled, with nothing left, after it."""
    uninstall_as_imgtools()  # in case this process started with the variable set
    monkeypatch.delenv(ENV_VAR, raising=False)
    iw, abw = modules()
    originals = {(m.__name__, n): getattr(m, n) for m in (iw, abw) for n in NAMES}
    assert all(v.__module__ == iw.__name__ for v in originals.values())
    yield originals
    uninstall_as_imgtools()
    assert {(m.__name__, n): getattr(m, n) for m in (iw, abw) for n in NAMES} == originals
    assert our_finders() == []
    assert IndexWriter not in copyreg.dispatch_table
    assert ENV_VAR not in os.environ


# ------------------------------------------------------------------ in this process


def test_install_replaces_the_names_and_uninstall_restores_them(
    clean: dict[tuple[str, str], Any],
) -> None:
    iw, abw = modules()
    install_as_imgtools()
    for m in (iw, abw):
        for n in NAMES:
            assert getattr(m, n) is getattr(index_writer, n), f"{m.__name__}.{n}"
    assert os.environ[ENV_VAR] == "1"
    assert len(our_finders()) == 1
    assert copyreg.dispatch_table[IndexWriter] is not None

    install_as_imgtools()  # idempotent
    assert len(our_finders()) == 1
    assert abw.IndexWriter is IndexWriter

    uninstall_as_imgtools()
    for (mod, n), original in clean.items():
        assert getattr(sys.modules[mod], n) is original
    uninstall_as_imgtools()  # idempotent too
    install_as_imgtools()  # and it can be installed again
    assert abw.IndexWriter is IndexWriter


def test_uninstall_restores_a_value_the_variable_had(
    clean: dict[tuple[str, str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "0")
    install_as_imgtools()
    assert os.environ[ENV_VAR] == "1"
    uninstall_as_imgtools()
    assert os.environ[ENV_VAR] == "0"
    monkeypatch.delenv(ENV_VAR)


def test_imgtools_wraps_our_errors(clean: dict[tuple[str, str], Any], tmp_path: Path) -> None:
    """med-imagetools' own ``except`` clauses catch ours and raise WriterIndexError."""
    from imgtools.io.writers.abstract_base_writer import WriterIndexError

    install_as_imgtools()
    writer = nifti_writer(tmp_path / "out", "{name}.nii.gz")
    assert type(writer._index_writer) is IndexWriter

    writer.save(small_image(1), name="a")
    with pytest.raises(WriterIndexError) as e:
        writer.add_to_index(tmp_path / "out" / "a.nii.gz", merge_columns=False)
    assert type(e.value.__cause__) is IndexSchemaMismatchError

    writer.index_file.write_text(MALFORMED, encoding="utf-8")
    with pytest.raises(WriterIndexError) as e:
        writer.save(small_image(2), name="b")
    assert type(e.value.__cause__) is IndexReadError
    assert "line 2" in str(e.value.__cause__)
    assert writer.index_file.read_text(encoding="utf-8") == MALFORMED


def test_writers_made_before_or_after(
    clean: dict[tuple[str, str], Any], tmp_path: Path
) -> None:
    """A writer keeps the IndexWriter it was built with.

    One built before the call keeps the original, whose errors are still
    wrapped (the original raises the exception classes its module names now
    hold: ours). One built while installed keeps ours after the undo, and
    its errors are then no longer wrapped.
    """
    from imgtools.io.writers.abstract_base_writer import WriterIndexError

    iw, _ = modules()
    before = nifti_writer(tmp_path / "before", "{name}.nii.gz")
    assert type(before._index_writer) is clean[(iw.__name__, "IndexWriter")]
    install_as_imgtools()
    during = nifti_writer(tmp_path / "during", "{name}.nii.gz")
    for writer in (before, during):
        writer.save(small_image(1), name="a")
        with pytest.raises(WriterIndexError) as e:
            writer.add_to_index(writer.root_directory / "a.nii.gz", merge_columns=False)
        assert type(e.value.__cause__) is IndexSchemaMismatchError
    uninstall_as_imgtools()
    assert type(during._index_writer) is IndexWriter
    with pytest.raises(IndexSchemaMismatchError):
        during.add_to_index(during.root_directory / "a.nii.gz", merge_columns=False)


def test_copying_a_writer_while_installed(
    clean: dict[tuple[str, str], Any], tmp_path: Path
) -> None:
    """copy and deepcopy consult copyreg as pickle does: the copies still work."""
    install_as_imgtools()
    writer = IndexWriter(tmp_path / "index.csv", timeout=1.5, durable=True)
    for twin in (copy.copy(writer), copy.deepcopy(writer)):
        assert type(twin) is IndexWriter and twin is not writer
        assert repr(twin) == repr(writer)
        twin.write_entry(f"{id(twin)}.nii.gz", {"n": 1})
    assert len(writer.read_rows()) == 2


def test_an_original_writer_pickled_elsewhere_arrives_as_ours(
    clean: dict[tuple[str, str], Any], tmp_path: Path
) -> None:
    """A pickle names a class by where it lives: a med-imagetools writer pickled
    in a process without index-writer and unpickled in one where index-writer
    stands in for it (a reused worker, a spawned one under the variable)
    arrives as ours, with only the original's attributes, and must work."""
    iw, _ = modules()
    original = iw.IndexWriter(tmp_path / "index.csv")
    data = pickle.dumps(original)
    install_as_imgtools()
    twin = pickle.loads(data)
    assert type(twin) is IndexWriter
    assert (twin.index_path, twin.lock_path) == (original.index_path, original.lock_path)
    twin.write_entry("a.nii.gz", {"n": 1})
    assert twin.read_rows() == [{"path": "a.nii.gz", "n": "1"}]


def test_without_imgtools_a_clear_import_error(
    clean: dict[tuple[str, str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imgtools", None)  # what an uninstalled package looks like
    with pytest.raises(ModuleNotFoundError, match=r"needs med-imagetools.*pip install") as e:
        install_as_imgtools()
    assert e.value.name == "imgtools"
    assert our_finders() == []
    assert ENV_VAR not in os.environ


def test_tested_version_does_not_warn(clean: dict[tuple[str, str], Any]) -> None:
    from importlib.metadata import version

    assert version("med-imagetools") == VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        install_as_imgtools()


# ------------------------------------------------------------------ fresh interpreters

REPORT = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    {before}
    import index_writer
    from _imgtools_workers import patched_names
    flags = patched_names()
    iw = sys.modules["imgtools.io.writers.index_writer"]
    report = {{
        "flags": flags,
        "loader": type(iw.__loader__).__name__,
        "spec_loader": type(iw.__spec__.loader).__name__,
        "finders": [repr(f) for f in sys.meta_path if "index_writer" in repr(f)],
    }}
    {after}
report["warnings"] = [str(w.message) for w in caught]
print(json.dumps(report))
"""


def report(before: str = "", after: str = "", env: dict[str, str] | None = None) -> Any:
    code = REPORT.format(before=before or "pass", after=after or "pass")
    return last_json(run_python(["-c", code], env or _env()))


def test_imgtools_imported_after_the_call_is_patched() -> None:
    r = report(before="import index_writer; index_writer.install_as_imgtools()")
    assert all(r["flags"].values()), r["flags"]
    # No trace of the hook on the module: its real loader.
    assert r["loader"] == r["spec_loader"] == "SourceFileLoader"
    assert len(r["finders"]) == 1
    assert r["warnings"] == []


def test_uninstall_after_a_lazy_patch_restores_both_modules() -> None:
    after = """
    index_writer.uninstall_as_imgtools()
    import imgtools.io.writers.abstract_base_writer as abw
    report["after_undo"] = {n: getattr(abw, n) is getattr(iw, n)
                            and getattr(iw, n).__module__ == iw.__name__ for n in flags_names}
    report["finders_after"] = [f for f in sys.meta_path if "index_writer" in repr(f)]
    """
    r = report(
        before="import index_writer; index_writer.install_as_imgtools(); "
        f"flags_names = {list(NAMES)!r}",
        after=after.strip(),
    )
    assert all(r["flags"].values())
    assert all(r["after_undo"].values()), r["after_undo"]
    assert r["finders_after"] == []


def _fake_version(tmp_path: Path, version: str) -> Path:
    """A directory whose med-imagetools metadata says ``version``.

    Put first on ``PYTHONPATH``, importlib.metadata finds it before the real
    distribution; the real package is still the one imported.
    """
    info = tmp_path / f"med_imagetools-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: med-imagetools\nVersion: {version}\n", encoding="utf-8"
    )
    return tmp_path


@pytest.mark.parametrize("route", ["call", "variable"])
def test_untested_version_warns_once_and_patches(tmp_path: Path, route: str) -> None:
    fake = _fake_version(tmp_path, "2.17.1")
    env = _env("1" if route == "variable" else None)
    env["PYTHONPATH"] = os.pathsep.join([str(fake), env["PYTHONPATH"]])
    before = (
        "import index_writer; index_writer.install_as_imgtools(); "
        "index_writer.install_as_imgtools()"
        if route == "call"
        else ""
    )
    r = report(before=before, after="import imgtools.io.writers.nifti_writer", env=env)
    assert all(r["flags"].values())
    assert len(r["warnings"]) == 1, r["warnings"]
    assert "med-imagetools 2.17.1" in r["warnings"][0]
    assert f"tested: med-imagetools{TESTED_VERSIONS}" in r["warnings"][0]


def test_pth_file_is_installed_and_current() -> None:
    dist = importlib.metadata.distribution("index-writer")
    (record,) = [f for f in dist.files or [] if f.name == "index_writer_imgtools.pth"]
    installed = Path(str(dist.locate_file(record)))
    assert installed.is_file(), f"{installed} missing: reinstall the package"
    # Beside the package's site directory, where `site` processes .pth files.
    assert installed.parent == Path(index_writer.__file__).parent.parent or (
        installed.parent in map(Path, [*site.getsitepackages(), site.getusersitepackages()])
    )
    source = REPO / "src" / "index_writer_imgtools.pth"
    if source.is_file():
        assert installed.read_text() == source.read_text()


CHECK_START = (
    "import sys, json; print(json.dumps({"
    "'loaded': sorted(m for m in sys.modules if m.startswith('index_writer')), "
    "'hook': any('index_writer' in repr(f) for f in sys.meta_path)}))"
)


@pytest.mark.parametrize(
    ("value", "active"),
    [(None, False), ("", False), ("0", False), ("false", False), ("off", False),
     ("1", True), ("TRUE", True), (" yes ", True), ("on", True)],
)  # fmt: skip
def test_variable_at_interpreter_start(value: str | None, active: bool) -> None:
    r = run_python(["-W", "error", "-c", CHECK_START], _env(value))
    out = last_json(r)
    assert out["hook"] is active
    if value is None or value in ("", "0"):
        # The .pth line imported nothing: it costs one dictionary look-up.
        assert out["loaded"] == []
    assert r.stderr == ""


def test_variable_with_a_value_not_understood() -> None:
    r = run_python(["-c", CHECK_START], _env("maybe"))
    assert last_json(r)["hook"] is False
    assert f"{ENV_VAR}='maybe' is not understood and was ignored" in r.stderr


def test_variable_patches_a_fresh_python_c() -> None:
    r = report(env=_env("1"))
    assert all(r["flags"].values()), r["flags"]


# ------------------------------------------------------------------ pickling


SERIALIZERS = ["pickle-0", "pickle-2", "pickle-5", "cloudpickle", "dill"]


def _dumps(obj: object, how: str) -> bytes:
    if how.startswith("pickle-"):
        return pickle.dumps(obj, protocol=int(how.split("-")[1]))
    module = pytest.importorskip(how)
    return bytes(module.dumps(obj))


LOAD = """
import csv, json, sys
import {lib} as lib
from _imgtools_workers import is_patched
import imgtools.io.writers.abstract_base_writer
before = is_patched()
writer = lib.loads(sys.stdin.buffer.read())
w = writer._index_writer
w.write_entry("x.nii.gz", {{"n": 1}}, filepath_column="filepath")
print(json.dumps({{
    "before": before, "after": is_patched(), "class": type(w).__module__,
    "attrs": [str(w.index_path), str(w.lock_path), getattr(w, "timeout", None),
              getattr(w, "durable", None)],
    "rows": list(csv.DictReader(open(w.index_path, newline="", encoding="utf-8"))),
}}))
"""


@pytest.mark.parametrize("how", SERIALIZERS)
@pytest.mark.parametrize("installed", [True, False])
def test_a_pickled_writer_patches_the_process_that_unpickles_it(
    clean: dict[tuple[str, str], Any], tmp_path: Path, how: str, installed: bool
) -> None:
    """Unpickling a writer from a patched process patches med-imagetools first.

    The unpickling process is a fresh interpreter without the environment
    variable; without the installation the writer stays the original's.
    """
    if installed:
        install_as_imgtools()
    writer = nifti_writer(tmp_path / "out", "{name}.nii.gz")
    if installed:
        writer._index_writer = IndexWriter(
            writer.index_file, writer._get_index_lock(), timeout=2.5, durable=True
        )
    blob = _dumps(writer, how)
    uninstall_as_imgtools()
    lib = "pickle" if how.startswith("pickle") else how
    r = last_json(_run_with_input(LOAD.format(lib=lib), blob))
    assert r["before"] is False
    assert r["after"] is installed
    assert r["rows"] == [{"filepath": "x.nii.gz", "n": "1"}]
    if installed:
        assert r["class"] == "index_writer._writer"
        index = writer.index_file
        assert r["attrs"] == [str(index), f"{index}.lock", 2.5, True]
    else:
        assert r["class"] == "imgtools.io.writers.index_writer"


def _run_with_input(code: str, data: bytes) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode(), r.stderr.decode(errors="replace")
    )


# ------------------------------------------------------------------ worker processes


def _check_patched_worker(w: dict[str, Any]) -> None:
    assert w["patched"] is True, w
    assert w["env"] == "1"  # its own children are patched too
    assert w["writer"] == "index_writer._writer"
    assert w["saved_indexed"] is True
    # med-imagetools' own `except` caught our error and wrapped it.
    assert w["error"] == "WriterIndexError"
    assert w["cause"] == "index_writer._errors.IndexReadError"
    assert "line 2" in w["cause_message"]
    assert w["bad_index_unchanged"] is True


METHODS = ["spawn", "forkserver", "loky", "dask"]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["pickled", "env", "control"])
@pytest.mark.parametrize("method", METHODS)
def test_workers_of_a_patched_parent(tmp_path: Path, method: str, route: str) -> None:
    """Workers started by ``method`` from a parent that called install_as_imgtools().

    ``pickled``: the variable is removed after the call, so only the writers
    pickled to the worker can patch it; ``env``: the worker builds its own
    writers and is patched by the inherited variable; ``control``: the
    variable removed and no writer sent: the worker must stay unpatched,
    which shows that the two routes are what patch.
    """
    if method == "forkserver" and sys.platform == "win32":
        pytest.skip("no forkserver on Windows")
    r = scenario("workers", method, route, str(tmp_path))
    assert r["parent"]["patched"] is True
    assert r["parent"]["env"] == (None if route in ("pickled", "control") else "1")
    assert r["workers"]
    assert len({w["pid"] for w in r["workers"]}) == len(r["workers"])
    for w in r["workers"]:
        if route == "control":
            assert w["patched"] is False, w
            assert w["writer"] == "imgtools.io.writers.index_writer"
            assert w["env"] is None
        else:
            _check_patched_worker(w)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_forked_workers_inherit_the_patch(tmp_path: Path) -> None:
    """A forked child is a copy of its parent: patched, with no variable and no writer sent."""
    r = scenario("workers", "fork", "control", str(tmp_path))
    assert r["parent"] == {"patched": True, "env": None}
    for w in r["workers"]:
        assert w["env"] is None
        _check_patched_worker({**w, "env": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "forkserver", "loky"])
def test_variable_patches_a_fresh_python_and_its_workers(tmp_path: Path, method: str) -> None:
    """Nobody calls install_as_imgtools(): the variable alone, as a shell user sets it."""
    if method == "forkserver" and sys.platform == "win32":
        pytest.skip("no forkserver on Windows")
    r = scenario("workers", method, "shell", str(tmp_path), env=_env("1"))
    assert r["parent"] == {"patched": True, "env": "1"}
    for w in r["workers"]:
        _check_patched_worker(w)


# ------------------------------------------------------------------ med-imagetools' tests


def _cache_dir() -> Path:
    env = os.environ.get("INDEX_WRITER_TEST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "index-writer-tests"


@pytest.fixture(scope="session")
def sdist_writer_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """med-imagetools 2.16.0's ``tests/unittests/io/writers/``, from its sdist."""
    cache = _cache_dir()
    sdist = cache / SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                "--no-binary", ":all:", "--disable-pip-version-check",
                f"med-imagetools=={VERSION}", "-d", str(cache),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        if r.returncode != 0 or not sdist.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            pytest.skip(
                f"cannot download the med-imagetools=={VERSION} sdist with pip (package "
                f"index unreachable?): {' | '.join(tail)}"
            )
    out = tmp_path_factory.mktemp("imgtools-writer-tests")
    with tarfile.open(sdist) as tar:
        members = [
            m for m in tar.getmembers()
            if m.isfile() and m.name.startswith(SDIST_TESTS) and m.name.endswith(".py")
        ]  # fmt: skip
        for m in members:
            f = tar.extractfile(m)
            assert f is not None
            (out / Path(m.name).name).write_bytes(f.read())
    names = sorted(p.name for p in out.iterdir())
    assert names == ["test_base_writer.py", "test_nifti_writer.py"], names
    return out


CONFTEST = {
    "ours": """
import index_writer
index_writer.install_as_imgtools()
import imgtools.io.writers.abstract_base_writer as abw
assert abw.IndexWriter is index_writer.IndexWriter
""",
    "original": """
import imgtools.io.writers.abstract_base_writer as abw
assert abw.IndexWriter.__module__ == "imgtools.io.writers.index_writer"
""",
}


def _run_their_tests(tests: Path, where: Path, which: str) -> tuple[str, dict[str, Path]]:
    where.mkdir()
    for f in tests.iterdir():
        (where / f.name).write_bytes(f.read_bytes())
    (where / "conftest.py").write_text(CONFTEST[which], encoding="utf-8")
    (where / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    xdist_group: used by med-imagetools' tests\n", encoding="utf-8"
    )
    basetemp = where / "tmp"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"--basetemp={basetemp}", "-W", "error::pytest.PytestUnknownMarkWarning", str(where)],
        cwd=where,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, f"{which}: {r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    indexes = {
        str(p.relative_to(basetemp)): p for p in basetemp.rglob("*_index.csv")
    }
    return summary, indexes


def _rows(index: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(index, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [
            {k: v for k, v in row.items() if k not in ("saved_time", "StudyInstanceUID")}
            for row in reader
        ]
        return list(reader.fieldnames or []), rows


@pytest.mark.slow
def test_med_imagetools_writer_tests_pass(sdist_writer_tests: Path, tmp_path: Path) -> None:
    """Their ``tests/unittests/io/writers/`` with index-writer installed: all pass.

    Run once more with the original for comparison: the same index files,
    holding the same rows; only the column order differs (theirs sorted,
    ours in the order the columns first appeared).
    """
    ours, our_indexes = _run_their_tests(sdist_writer_tests, tmp_path / "ours", "ours")
    theirs, their_indexes = _run_their_tests(
        sdist_writer_tests, tmp_path / "original", "original"
    )
    m = re.fullmatch(r"(\d+) passed in [\d.]+s", ours)
    assert m, f"not all passed: {ours!r}"
    assert int(m[1]) >= 25  # 25 in the 2.16.0 sdist
    assert re.fullmatch(rf"{m[1]} passed in [\d.]+s", theirs), theirs
    print(f"\nmed-imagetools' writer tests: ours {ours!r}, original {theirs!r}")

    assert sorted(our_indexes) == sorted(their_indexes)
    assert len(our_indexes) >= 4
    for name, path in our_indexes.items():
        our_header, our_rows = _rows(path)
        their_header, their_rows = _rows(their_indexes[name])
        assert their_header == sorted(their_header)
        assert our_header[0] == "filepath" and our_header != sorted(our_header), name
        assert sorted(our_header) == their_header
        key = lambda row: sorted(row.items())  # noqa: E731
        assert sorted(our_rows, key=key) == sorted(their_rows, key=key), name


# ------------------------------------------------------------------ many writers at once


@pytest.mark.slow
def test_nifti_writer_processes_and_threads(tmp_path: Path) -> None:
    """6 processes × 4 threads × 100 images through NIFTIWriter.save(): all kept.

    The same run with med-imagetools' original IndexWriter is measured too
    (its fcntl lock does not exclude threads, and each write rewrites the
    whole file: most entries are lost); its figures are printed, not
    asserted. Then a malformed line in the index: a save in a worker raises
    med-imagetools' WriterIndexError, caused by our IndexReadError, and the
    index is left as it was.
    """
    procs, threads, images = 6, 4, 100
    total = procs * threads * images
    ours = scenario("stress", "ours", str(tmp_path / "ours"), *map(str, (procs, threads, images)))
    original = scenario(
        "stress", "original", str(tmp_path / "original"), *map(str, (procs, threads, images))
    )
    print(
        f"\nNIFTIWriter, {procs} processes x {threads} threads x {images} images:"
        f"\n  original: kept {original['kept']} of {total} in {original['seconds']:.2f} s"
        f" (errors: {original['errors']})"
        f"\n  ours:     kept {ours['kept']} of {total} in {ours['seconds']:.2f} s"
    )
    assert original["patched"] == [False] * procs
    assert ours["patched"] == [True] * procs
    assert ours["errors"] == {}
    assert ours["on_disk"] == ours["expected"] == total
    assert ours["kept"] == ours["rows"] == total  # every image, once
    assert ours["duplicates"] == ours["unexpected"] == 0
    assert ours["header"][0] == "filepath"
    assert original["on_disk"] == total  # the images were all written: only entries are lost

    w = scenario("malformed", str(tmp_path / "ours"))
    _check_patched_worker({**w, "saved_indexed": True})
    assert f"line {total + 2}" in w["cause_message"]


# ------------------------------------------------------------------ autopipeline


def _autopipeline(dicoms: Path, out: Path, value: str | None) -> subprocess.CompletedProcess[str]:
    imgtools_cli = Path(sys.executable).parent / ("imgtools.exe" if os.name == "nt" else "imgtools")
    return subprocess.run(
        [str(imgtools_cli), "autopipeline", str(dicoms), str(out), "--modalities", "CT",
         "--jobs", "2", "--existing-file-mode", "fail"],
        env=_env(value, NO_COLOR="1", TERM="dumb"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_autopipeline_with_the_variable(tmp_path: Path) -> None:
    """``INDEX_WRITER_AS_IMGTOOLS=1 imgtools autopipeline ...`` over generated CT series.

    Two loky workers (the most this validates on a 2-core machine: it caps
    ``--jobs`` at the CPU count) save a NIfTI file per patient through
    med-imagetools' writer. Every file is in the index once; its header is
    in first-appearance order (a single write by the original would have
    sorted it for good); med-imagetools' own simplified index and report are
    made from it. The same run without the variable is the control: sorted.
    """
    patients = [f"PAT{i:02d}" for i in range(10)]
    dicoms = tmp_path / "dicom"
    scenario("dicom", str(dicoms), *patients)

    runs = {}
    for value in ("1", None):
        out = tmp_path / f"out-{value or 'off'}"
        r = _autopipeline(dicoms, out, value)
        assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        runs[value] = out

    out = runs["1"]
    index = out / f"{out.name}_index.csv"
    with open(index, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert len(files) == len(patients)
    counts = Counter(row["filepath"] for row in rows)
    assert sorted(counts) == files
    assert set(counts.values()) == {1}
    assert header[0] == "filepath" and header != sorted(header)
    assert sorted(row["PatientID"] for row in rows) == patients
    # med-imagetools' own reading step: the simplified index and the report.
    simple = out / f"{out.name}_index-simple.csv"
    with open(simple, newline="", encoding="utf-8") as f:
        simple_rows = list(csv.DictReader(f))
    assert sorted(row["filepath"] for row in simple_rows) == files
    assert all(row["hash"] and row["PatientID"] for row in simple_rows)
    (report_file,) = out.glob(f"{out.name}_successful_*.json")
    assert len(json.loads(report_file.read_text(encoding="utf-8"))) == len(patients)
    assert not list(out.glob(f"{out.name}_failed_*.json"))
    assert not Path(f"{index}.lock").exists()  # med-imagetools removes it at the end

    off = runs[None]
    with open(off / f"{off.name}_index.csv", newline="", encoding="utf-8") as f:
        off_header = next(csv.reader(f))
    assert off_header == sorted(off_header)  # the original's doing
    assert sorted(off_header) == sorted(header)
