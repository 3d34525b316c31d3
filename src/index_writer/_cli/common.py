"""What every subcommand shares: the program name, expected failures, the streams."""

from __future__ import annotations

import contextlib
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

PROG = "index-writer"


class CliError(Exception):
    """An expected failure: reported as one line on stderr, exit status 1."""


class UsageError(Exception):
    """Bad arguments found after parsing: usage on stderr, exit status 2."""


def stdout() -> TextIO:
    """The current standard output (looked up at each call, for redirection).

    Raises
    ------
    CliError
        There is none: the command was started with it closed.
    """
    if sys.stdout is None:
        raise CliError("standard output is closed: send it somewhere (> FILE, or "
                       "> /dev/null to discard it)")
    return sys.stdout


@contextlib.contextmanager
def printing() -> Iterator[None]:
    """Report a failure to write standard output as that, not as the index's.

    A closed pipe (``| head``) is left to the caller, which stops quietly.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise CliError(f"cannot write to standard output: {e.strerror or e}") from None


def stderr() -> TextIO | None:
    """The current standard error, or None when there is none (``pythonw``)."""
    return sys.stderr


def say(text: str, stream: TextIO | None = None) -> None:
    """Write one line to ``stream`` (standard output by default)."""
    stream = stdout() if stream is None else stream
    with printing():
        stream.write(text + "\n")


def plural(n: int, word: str) -> str:
    """``"1 row"``, ``"2 rows"``.

    Examples
    --------
    >>> plural(1, "row"), plural(3, "row")
    ('1 row', '3 rows')
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


def shorten(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_file(path: Path) -> None:
    """Fail (exit 1) unless ``path`` is an existing regular file; never create it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{path}: is a directory, not an index file")
