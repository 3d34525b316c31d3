"""The original IndexWriter (med-imagetools 2.16.0), fetched and imported at run time.

The one loader of the original, shared by the tests (``test_interop.py`` and
its worker processes) and the benchmarks (``benchmarks/compare.py`` puts this
directory on ``sys.path``). Nothing of med-imagetools is committed to this
repository: :func:`source_path` runs ``pip download --no-deps
med-imagetools==2.16.0`` into a cache directory once, and extracts
``imgtools/io/writers/index_writer.py`` from the wheel next to it;
:func:`load` imports that single file by its path. The module needs only
``fasteners``, which index-writer depends on anyway.

The cache is ``$INDEX_WRITER_TEST_CACHE`` if set, else
``index-writer-tests`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

VERSION = "2.16.0"
WHEEL = f"med_imagetools-{VERSION}-py3-none-any.whl"
MEMBER = "imgtools/io/writers/index_writer.py"
#: The name the original is imported under (in ``sys.modules``).
MODULE_NAME = "_imgtools_index_writer_2_16"


class OriginalUnavailable(RuntimeError):
    """The wheel could not be downloaded (no network, no package index, no pip)."""


def cache_dir() -> Path:
    """Where the wheel and the extracted module are kept."""
    env = os.environ.get("INDEX_WRITER_TEST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "index-writer-tests"


def _download(cache: Path) -> Path:
    wheel = cache / WHEEL
    if wheel.is_file():
        return wheel
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--disable-pip-version-check", f"med-imagetools=={VERSION}", "-d", str(cache),
    ]  # fmt: skip
    try:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise OriginalUnavailable(f"cannot download med-imagetools=={VERSION}: {e}") from e
    if proc.returncode != 0 or not wheel.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise OriginalUnavailable(
            f"cannot download med-imagetools=={VERSION} with pip (exit {proc.returncode}; "
            f"package index unreachable?): {tail}"
        )
    return wheel


def source_path(cache: Path | None = None) -> Path:
    """The extracted ``index_writer.py`` of the original, fetched first if needed.

    Raises
    ------
    OriginalUnavailable
        The wheel is not cached and could not be downloaded.
    """
    cache = cache_dir() if cache is None else cache
    target = cache / f"med_imagetools-{VERSION}" / MEMBER
    if target.is_file():
        return target
    with zipfile.ZipFile(_download(cache)) as wheel:
        data = wheel.read(MEMBER)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: concurrent test runs never see half a file
    return target


def load(path: str | os.PathLike[str] | None = None) -> ModuleType:
    """Import the original module (once per process); its class is ``.IndexWriter``.

    ``path`` is the file :func:`source_path` returned (worker processes get
    it from their parent, so they never download); by default it is found
    or fetched here.
    """
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(
        MODULE_NAME, os.fspath(source_path() if path is None else path)
    )
    if spec is None or spec.loader is None:  # pragma: no cover
        raise OriginalUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module
