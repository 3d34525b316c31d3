"""The original IndexWriter (med-imagetools 2.16.0), fetched and loaded at run time.

Nothing of med-imagetools is committed to this repository: ``load()`` runs
``pip download --no-deps med-imagetools==2.16.0`` into ``benchmarks/_cache/``
(gitignored) once, extracts ``imgtools/io/writers/index_writer.py`` from the
wheel into the same cache, and imports that single file by its path. The
module only needs ``fasteners``, which index-writer depends on anyway.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

VERSION = "2.16.0"
MEMBER = "imgtools/io/writers/index_writer.py"
MODULE_NAME = "_imgtools_index_writer_original"
CACHE = Path(__file__).resolve().parent / "_cache"


class OriginalUnavailable(RuntimeError):
    """The wheel could not be downloaded (no network, no pip, ...)."""


def source_path(cache: Path = CACHE) -> Path:
    """Return the path of the extracted ``index_writer.py``, fetching it if needed."""
    target = cache / f"med_imagetools-{VERSION}" / MEMBER
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"med_imagetools-{VERSION}-*.whl"))
    if not wheels:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            f"med-imagetools=={VERSION}", "-d", str(cache),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(cache.glob(f"med_imagetools-{VERSION}-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise OriginalUnavailable(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        data = wheel.read(MEMBER)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def load_from(path: str | Path) -> ModuleType:
    """Import the original module from its file path (once per process)."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(MODULE_NAME, str(path))
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


def load(cache: Path = CACHE) -> ModuleType:
    """Fetch (if needed) and import the original; its class is ``.IndexWriter``."""
    return load_from(source_path(cache))
