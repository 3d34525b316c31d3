"""The documentation in docs/ cannot rot: its examples run and its CLI help is current.

- Every ```` ```pycon ```` block is a doctest. The blocks of one page run in order,
  sharing their names, in a fresh working directory.
- A ```` ```python ```` block preceded by ``<!-- test: run -->`` runs as a script
  (``python file.py``) in a fresh working directory and must exit 0.
- A ```` ```console ```` block preceded by ``<!-- test: run -->`` runs each
  ``$ command`` with bash, one directory per block, and compares what it
  prints (stdout and stderr together) with the lines below it; ``...``
  matches anything, as in doctests.
- ``requires=mod1,mod2`` in the marker skips the block when a module is
  missing (``requires=imgtools`` also marks its test ``imgtools``);
  ``<!-- test: skip -->`` skips a pycon block.
- docs/cli.md holds the ``--help`` of ``index-writer`` and each subcommand in
  blocks marked ``<!-- help: index-writer SUB -->``; they must match the
  argparse parser (whitespace aside), and every subcommand needs a section with
  an example. After changing the CLI, regenerate them with::

      python tests/test_docs.py --update
"""

from __future__ import annotations

import argparse
import doctest
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from index_writer._cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLI_PAGE = DOCS / "cli.md"
#: Written by benchmarks/compare.py, not by hand: nothing in it is meant to run.
NOT_OURS = {"benchmarks.md"}
HELP_COLUMNS = 80

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*test:(?P<spec>[^>]*?)\s*-->\s*$")
_HELP_MARKER = re.compile(r"^\s*<!--\s*help:\s*(?P<name>[\w -]+?)\s*-->\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the spec of a <!-- test: ... --> line just before it
    label: str | None  # the name of a <!-- help: ... --> line just before it
    start: int  # 0-based index of the first content line
    end: int  # 0-based index of the closing fence

    @property
    def flags(self) -> set[str]:
        return {w for w in (self.marker or "").split() if "=" not in w}

    @property
    def requires(self) -> list[str]:
        for word in (self.marker or "").split():
            if word.startswith("requires="):
                return [m for m in word.split("=", 1)[1].split(",") if m]
        return []

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip("`") == ""
        ):
            j += 1
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]
        ]
        prev = lines[i - 1] if i > 0 else ""
        marker = _MARKER.match(prev)
        label = _HELP_MARKER.match(prev)
        found.append(
            Block(
                page=page.name,
                line=i + 1,
                lang=m["lang"],
                text="\n".join(body) + "\n",
                marker=marker["spec"].strip() if marker else None,
                label=label["name"] if label else None,
                start=i + 1,
                end=j,
            )
        )
        i = j + 1
    return found


PAGES = sorted(p for p in DOCS.glob("*.md") if p.name not in NOT_OURS)
ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


#: Tests of blocks that need one of these modules get its marker (CI runs the
#: tests marked ``imgtools`` in a step of their own, with med-imagetools installed).
MARKED_MODULES = {"imgtools": pytest.mark.imgtools}


def _param(value: object, requires: list[str], test_id: str) -> Any:
    marks = [MARKED_MODULES[m] for m in requires if m in MARKED_MODULES]
    return pytest.param(value, marks=marks, id=test_id)


def _missing(modules: list[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The console script of the interpreter running the tests comes first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(COLUMNS=str(HELP_COLUMNS), NO_COLOR="1", PYTHONIOENCODING="utf-8")
    env.pop("FORCE_COLOR", None)
    return env


# ------------------------------------------------------------------ examples


def test_docs_have_runnable_examples() -> None:
    assert PAGES, f"no pages in {DOCS}"
    assert any(b.lang == "pycon" for b in ALL_BLOCKS)
    assert any(b.lang == "python" and "run" in b.flags for b in ALL_BLOCKS)
    assert any(b.lang == "console" and "run" in b.flags for b in ALL_BLOCKS)
    for b in ALL_BLOCKS:
        if b.marker is not None:
            assert b.flags <= {"run", "skip"}, f"{b.id}: unknown test marker {b.marker!r}"
            assert b.lang in ("pycon", "python", "console"), f"{b.id}: marker on a {b.lang} block"


@pytest.mark.parametrize(
    "page",
    [
        _param(p.name, [m for b in blocks(p) if b.lang == "pycon" for m in b.requires], p.name)
        for p in PAGES
        if any(b.lang == "pycon" for b in blocks(p))
    ],
)
def test_pycon_examples(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    globs: dict[str, object] = {"__name__": f"docs_{page}"}
    parser = doctest.DocTestParser()
    report: list[str] = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    ran = 0
    for b in blocks(DOCS / page):
        if b.lang != "pycon" or "skip" in b.flags or _missing(b.requires):
            continue
        test = parser.get_doctest(b.text, globs, b.id, str(DOCS / page), b.line)
        runner.run(test, out=report.append, clear_globs=False)
        globs = test.globs  # a DocTest works on a copy: carry the names on
        ran += 1
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)
    if ran == 0:
        pytest.skip("every pycon block needs a missing module")


@pytest.mark.parametrize(
    "block",
    [_param(b, b.requires, b.id) for b in ALL_BLOCKS if b.lang == "python" and "run" in b.flags],
)
def test_python_scripts(block: Block, tmp_path: Path) -> None:
    missing = _missing(block.requires)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    script = tmp_path / "example.py"
    script.write_text(block.text, encoding="utf-8")
    r = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"{block.id} failed:\n{r.stdout}\n{r.stderr}"


def console_steps(text: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    steps: list[tuple[str, list[str]]] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            steps[-1] = (steps[-1][0] + "\n" + line, [])
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            steps.append((line[2:], []))
            continuing = line.endswith("\\")
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"output before the first command: {line!r}")
    return [(cmd, "\n".join(out).rstrip("\n") + "\n" if out else "") for cmd, out in steps]


@pytest.mark.parametrize(
    "block",
    [_param(b, b.requires, b.id) for b in ALL_BLOCKS if b.lang == "console" and "run" in b.flags],
)
def test_console_examples(block: Block, tmp_path: Path) -> None:
    missing = _missing(block.requires)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    env = _env()
    for command, want in console_steps(block.text):
        r = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        got = r.stdout
        if not checker.check_output(want, got, flags):
            pytest.fail(
                f"{block.id}: `{command}` printed\n{got}\nexpected\n{want}"
                f"(exit status {r.returncode})"
            )


# ------------------------------------------------------------------ CLI page


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help() -> dict[str, str]:
    """``--help`` of the command and each subcommand, at a fixed width."""
    saved = os.environ.get("COLUMNS"), os.environ.get("NO_COLOR")
    os.environ["COLUMNS"], os.environ["NO_COLOR"] = str(HELP_COLUMNS), "1"
    try:
        parser = build_parser()
        texts = {parser.prog: parser.format_help()}
        for name, sub in _subcommands(parser).items():
            texts[f"{parser.prog} {name}"] = sub.format_help()
    finally:
        for key, value in zip(("COLUMNS", "NO_COLOR"), saved, strict=True):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {name: _ANSI.sub("", text).rstrip() + "\n" for name, text in texts.items()}


def _words(text: str) -> str:
    return " ".join(text.split())


def test_cli_page_has_current_help() -> None:
    documented = {b.label: b for b in blocks(CLI_PAGE) if b.label}
    current = cli_help()
    assert sorted(documented) == sorted(current), (
        "docs/cli.md documents other commands than the parser has; "
        "add a section, then run: python tests/test_docs.py --update"
    )
    stale = [n for n, text in current.items() if _words(text) != _words(documented[n].text)]
    assert not stale, (
        f"docs/cli.md shows outdated --help for {', '.join(stale)}; "
        "run: python tests/test_docs.py --update"
    )


@pytest.mark.parametrize("name", sorted(cli_help()))
def test_cli_page_matches_the_installed_command(name: str) -> None:
    """The console script prints the documented help for the command and each subcommand."""
    from _cli_run import console_script

    documented = {b.label: b.text for b in blocks(CLI_PAGE) if b.label}
    r = subprocess.run(
        [*console_script(), *name.split()[1:], "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert _words(_ANSI.sub("", r.stdout)) == _words(documented[name]), (
        f"docs/cli.md shows other help for {name} than the command prints; "
        "run: python tests/test_docs.py --update"
    )


def test_cli_page_has_an_example_per_subcommand() -> None:
    page = CLI_PAGE.read_text(encoding="utf-8")
    parser = build_parser()
    examples = "\n".join(
        b.text for b in blocks(CLI_PAGE) if b.lang in ("console", "sh", "bash") and not b.label
    )
    for name in _subcommands(parser):
        command = f"{parser.prog} {name}"
        assert re.search(rf"^##+ `?{command}`?\s*$", page, re.M), f"no section for {command}"
        assert re.search(rf"^(\$ )?{command}\b", examples, re.M), f"no example of {command}"


def update_cli_page() -> bool:
    """Rewrite the help blocks of docs/cli.md; return whether anything changed."""
    lines = CLI_PAGE.read_text(encoding="utf-8").splitlines()
    current = cli_help()
    # From the end, so earlier line numbers stay valid.
    for b in sorted((b for b in blocks(CLI_PAGE) if b.label), key=lambda b: -b.start):
        if b.label in current:
            lines[b.start : b.end] = current[b.label].rstrip("\n").splitlines()
    text = "\n".join(lines) + "\n"
    changed = text != CLI_PAGE.read_text(encoding="utf-8")
    CLI_PAGE.write_text(text, encoding="utf-8")
    missing = sorted(set(current) - {b.label for b in blocks(CLI_PAGE)})
    if missing:
        print(f"no help block for {', '.join(missing)}: add a section with")
        for name in missing:
            print(f"<!-- help: {name} -->\n```text\n```")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: python {sys.argv[0]} --update   (rewrites the help blocks in {CLI_PAGE})")
    print("docs/cli.md " + ("updated" if update_cli_page() else "already current"))
