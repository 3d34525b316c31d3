"""Run the installed ``index-writer`` console script in a subprocess (test helper)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def console_script() -> list[str]:
    exe = Path(sys.executable).parent / "index-writer"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("index-writer")
    if found:
        return [found]
    pytest.fail(
        "the index-writer console script is not installed next to "
        f"{sys.executable} or on PATH: run pip install -e ."
    )


def run(
    *args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script; expected errors never show a traceback.

    Output is decoded as UTF-8 without newline translation, so CR LF inside
    values stays visible.
    """
    raw = subprocess.run(
        [*console_script(), *map(str, args)],
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
    )
    proc = subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode()
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc
