"""The ``index-writer`` command (also ``python -m index_writer``).

Subcommands, one module each (its ``register(subparsers)`` next to its
``run(args)``):

``demo``
    Run the many-workers example (N workers, M entries, one ``write_entry``
    per task), verify the index and print the speed.
``add``
    Record one entry from a shell script or a SLURM array job.
``show``
    Print a consistent snapshot of an index as CSV, JSON or an aligned table.
``check``
    Inspect an index without changing it; ``--dedupe`` keeps the last row of
    each path.
``doctor``
    Check whether writers may share an index in a directory (its mount, live
    lock probes, and with ``--hosts N`` a check across hosts).

Exit status: 0 on success, 1 when the command failed or found problems (one
line on stderr names the file and the cause), 2 for bad arguments (with the
usage), 130 when interrupted. Expected errors never print a traceback.

Examples
--------
>>> main(["add", "--help"]) == 0  # doctest: +ELLIPSIS
usage: index-writer add ...
True
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import IndexWriterError, __version__
from . import add, check, demo, doctor, show
from .common import PROG, CliError, UsageError, say, stderr

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

#: Success.
EXIT_OK = 0
#: The command failed, ``check`` found problems or the demo's verification failed.
EXIT_FAILURE = 1
#: Bad arguments (the usage is printed).
EXIT_USAGE = 2
#: Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for ``index-writer`` and its subcommands.

    Returns
    -------
    argparse.ArgumentParser
        Each subcommand's namespace carries ``run`` (the function to call)
        and ``parser`` (its own parser, for usage errors).

    Examples
    --------
    >>> args = build_parser().parse_args(["add", "i.csv", "a.nii", "k=v"])
    >>> args.command, args.index, args.path, args.pairs, args.strict
    ('add', 'i.csv', 'a.nii', ['k=v'], False)
    """
    parser = _Parser(
        prog=PROG,
        description=(
            "Record the files many workers produce in one shared CSV index: "
            "thread-, process- and crash-safe, with constant-time appends."
        ),
        epilog="Run 'index-writer COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (demo, add, show, check, doctor):
        command.register(subparsers)
    return parser


#: The words being parsed, for :meth:`_Parser.error`'s hint.
_WORDS: contextvars.ContextVar[Sequence[str]] = contextvars.ContextVar("words", default=())

#: Words argparse takes for values, not options, although they start with '-'.
_NUMBER = re.compile(r"-\d+$|-\d*\.\d+$")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors say how to pass a word that starts with '-'.

    argparse takes any word starting with '-' for an option: ``index-writer
    add i.csv -x.nii`` fails with "the following arguments are required:
    PATH". When a word that starts with one '-' and is no option of the
    command is behind a missing or unrecognized argument, the error says to
    put ``--`` before the arguments; a word starting with '--' is more
    likely a mistyped option, and gets no hint. Subcommand parsers are made
    of the same class.
    """

    def error(self, message: str) -> NoReturn:
        super().error(message + self._dash_hint(message))

    def _dash_hint(self, message: str) -> str:
        if not message.startswith(("the following arguments are required", "unrecognized")):
            return ""
        words = list(_WORDS.get())
        if "--" in words:
            words = words[: words.index("--")]
        known = self._option_string_actions
        dashed = [
            w for w in words
            if w.startswith("-") and not w.startswith("--") and w != "-"
            and not _NUMBER.match(w) and w.partition("=")[0] not in known
        ]
        positionals = [a for a in self._actions if not a.option_strings]
        if not dashed or not positionals or any(a.dest == "command" for a in positionals):
            return ""
        formatter = self._get_formatter()
        names = [formatter._format_args(a, a.dest.upper()) for a in positionals]
        return (
            f" ({dashed[0]!r} was read as an option; to pass it as an argument, put '--' "
            f"before the arguments: {self.prog} [OPTIONS] -- {' '.join(names)})"
        )


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return EXIT_OK
    if isinstance(e.code, int):
        return e.code
    err = stderr()
    if err is not None:
        say(str(e.code), err)
    return EXIT_FAILURE


def _fail(message: str) -> int:
    err = stderr()
    if err is not None:
        with contextlib.suppress(OSError, ValueError):
            say(f"{PROG}: error: {message}", err)
    return EXIT_FAILURE


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    try:
        parser.error(message)
    except SystemExit as e:
        return _exit_code(e)
    return EXIT_USAGE  # pragma: no cover - error() always exits


def _describe_os_error(e: OSError, fallback: str | None) -> str:
    name = e.filename if e.filename is not None else fallback
    cause = e.strerror or str(e)
    if e.filename2 is not None:
        return f"{name} -> {e.filename2}: {cause}"
    return f"{name}: {cause}" if name else cause


def _quiet_broken_pipe() -> int:
    # The reader went away (``show ... | head``): stop quietly, and keep the
    # interpreter from complaining while flushing stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_FAILURE


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; raises SystemExit for usage errors, ``--help`` and ``--version``."""
    words = _WORDS.set(sys.argv[1:] if argv is None else argv)
    try:
        return _parse_words(parser, argv)
    finally:
        _WORDS.reset(words)


def _parse_words(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    take_extra = getattr(args, "take_extra", None)
    if extra and take_extra is not None:
        extra = take_extra(args, extra)
    if extra:
        (getattr(args, "parser", None) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the ``index-writer`` command line.

    Parameters
    ----------
    argv : list[str], optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 success, 1 failure or problems found, 2 bad
        arguments, 130 interrupted. The console script passes it to
        :func:`sys.exit`.

    Examples
    --------
    >>> main(["show", "/nonexistent/index.csv"])
    1
    """
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as e:  # usage errors (2), --help and --version (0)
        return _exit_code(e)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as e:
        return _usage_error(args.parser, str(e))
    except (CliError, IndexWriterError) as e:
        return _fail(str(e))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        return _fail(_describe_os_error(e, getattr(args, "index", None)))
    except UnicodeEncodeError as e:
        return _fail(
            f"cannot print {e.object[e.start : e.end]!r} in this terminal's "
            f"encoding ({e.encoding}); set PYTHONIOENCODING=utf-8"
        )
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
