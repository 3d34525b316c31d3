"""What users install: the wheel holds the library and its command, nothing else.

The wheel is built from a copy of the source tree (benchmarks and tests
included, so a packaging rule that swept them in would show), listed with
``python -m zipfile -l``, then installed into a fresh virtual environment
with no extras, where the command must run. These tests are marked ``heavy``:
CI runs them once, on its main interpreter.

The trove classifiers name every Python version the project supports, and the
one running the tests.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import index_writer

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str | os.PathLike[str], cwd: Path | None = None) -> str:
    r = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "source"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", "*.egg-info", "build", "dist", "site", "__pycache__", ".*_cache",
            ".hypothesis", ".venv", "_cache",
        ),
    )  # fmt: skip
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", tree)
    (built,) = (work / "dist").glob("index_writer-*.whl")
    return built


@pytest.mark.heavy
@pytest.mark.slow
def test_the_wheel_holds_the_library_and_nothing_else(wheel: Path) -> None:
    listing = _run(sys.executable, "-m", "zipfile", "-l", wheel)
    names = [line.split()[0] for line in listing.splitlines()[1:] if line.strip()]
    version = index_writer.__version__
    dist_info = f"index_writer-{version}.dist-info/"
    assert wheel.name.startswith(f"index_writer-{version}-")
    # Beside the package: only the start-up hook that honours INDEX_WRITER_AS_IMGTOOLS.
    strays = [
        n
        for n in names
        if not n.startswith(("index_writer/", dist_info)) and n != "index_writer_imgtools.pth"
    ]
    assert strays == [], f"files outside the package: {strays}"
    assert "index_writer_imgtools.pth" in names
    for word in ("benchmark", "_naive", "rewrite_all", "compare", "_original", "test"):
        assert not [n for n in names if word in n], f"{word!r} ships in the wheel: {names}"
    for module in ("__init__", "_writer", "_check", "_demo", "_cli/__init__", "_cli/add"):
        assert f"index_writer/{module}.py" in names
    assert "index_writer/py.typed" in names


@pytest.mark.heavy
@pytest.mark.slow
def test_one_version_number(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"index_writer-{index_writer.__version__}.dist-info/METADATA")
        scripts = z.read(f"index_writer-{index_writer.__version__}.dist-info/entry_points.txt")
    assert f"\nVersion: {index_writer.__version__}\n" in metadata.decode()
    assert "index-writer = index_writer._cli:main" in scripts.decode()
    assert importlib.metadata.version("index-writer") == index_writer.__version__


@pytest.mark.heavy
@pytest.mark.slow
def test_the_command_runs_from_a_fresh_install_without_extras(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = shutil.which("python", path=str(bin_dir))
    assert python is not None
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    assert "tqdm" not in _run(python, "-m", "pip", "list", "--format=freeze")
    command = shutil.which("index-writer", path=str(bin_dir))
    assert command is not None, f"no index-writer command in {bin_dir}"
    assert _run(command, "--version") == f"index-writer {index_writer.__version__}\n"
    out = _run(command, "demo", "--workers", "2", "--entries", "20", "--index", "i.csv",
               cwd=tmp_path)  # fmt: skip
    assert "verified: 20 rows, 20 unique paths" in out


def test_classifiers_name_each_supported_python() -> None:
    meta = importlib.metadata.metadata("index-writer")
    requires = meta["Requires-Python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", requires or "")
    assert m, f"Requires-Python is {requires!r}, expected '>=3.N'"
    minors = sorted(
        int(c.rsplit(".", 1)[1])
        for c in meta.get_all("Classifier") or []
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert minors, "no 'Programming Language :: Python :: 3.N' classifiers"
    assert minors == list(range(int(m[1]), minors[-1] + 1)), (
        f"classifiers name 3.{minors}: every version from {requires} on, without gaps"
    )
    running = sys.version_info[1]
    assert running in minors, (
        f"the tests run on Python 3.{running}, which pyproject.toml's classifiers do not "
        "name: add it once the suite passes there"
    )
