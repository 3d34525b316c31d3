"""README.md and docs/ cannot rot: their examples run and the CLI help is current.

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

README.md is checked too, and so is every shell block:

- Every other ```` ```sh ````, ```` ```bash ```` and ```` ```console ```` block of
  README.md and docs/ runs too, with ``index-writer`` on PATH: a page's blocks
  run in order in one fresh directory (its pycon blocks replayed among them),
  so a block can use the files an earlier one made. A ``sh``/``bash`` block
  runs as a bash script with ``set -e`` and must exit 0; a ``console`` block's
  output is compared as above. In their marker:
  ``placeholder=/some/dir`` stands a fresh directory in for a path the reader
  replaces with their own; ``needs=cmd1,cmd2`` skips the block where a
  command is missing.
- ``<!-- test: checkout -->`` before a shell block (setting up from a
  checkout, ``pip install .``) runs it in a copy of the checkout, in a fresh
  virtual environment (tests marked ``heavy``).
- ``<!-- not run: REASON -->`` before a shell block that cannot run here by
  its nature (a SLURM job script, ``srun``, the benchmark itself) says so:
  it is reported as a skipped test with its reason, and counted.
- Code lines in README.md and docs/ fit the page: at most 80 characters (the
  width a code block shows beside both sidebars of the site).
- The site builds without a word on the terminal, its API signatures split over
  lines.
"""

from __future__ import annotations

import argparse
import doctest
import html
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
#: Pages written by a program, not by hand, whose code blocks are not examples
#: (none now: the benchmark's figures are generated into sections of the pages).
NOT_OURS: set[str] = set()
HELP_COLUMNS = 80

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*test:(?P<spec>[^>]*?)\s*-->\s*$")
_HELP_MARKER = re.compile(r"^\s*<!--\s*help:\s*(?P<name>[\w -]+?)\s*-->\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>[^>]*?)\s*-->\s*$")
ROOT = DOCS.parent
README = ROOT / "README.md"
SHELL_LANGS = ("sh", "bash", "console")
#: The widest code line the pages show without scrolling sideways.
CODE_COLUMNS = 80
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the spec of a <!-- test: ... --> line just before it
    label: str | None  # the name of a <!-- help: ... --> line just before it
    not_run: str | None  # the reason of a <!-- not run: ... --> line just before it
    start: int  # 0-based index of the first content line
    end: int  # 0-based index of the closing fence

    @property
    def flags(self) -> set[str]:
        return {w for w in (self.marker or "").split() if "=" not in w}

    def option(self, name: str) -> list[str]:
        """The comma-separated values of ``name=`` in the marker."""
        for word in (self.marker or "").split():
            if word.startswith(name + "="):
                return [m for m in word.split("=", 1)[1].split(",") if m]
        return []

    @property
    def requires(self) -> list[str]:
        return self.option("requires")

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
        not_run = _NOT_RUN.match(prev)
        found.append(
            Block(
                page=page.name,
                line=i + 1,
                lang=m["lang"],
                text="\n".join(body) + "\n",
                marker=marker["spec"].strip() if marker else None,
                label=label["name"] if label else None,
                not_run=not_run["reason"].strip() if not_run else None,
                start=i + 1,
                end=j,
            )
        )
        i = j + 1
    return found


PAGES = sorted(p for p in DOCS.glob("*.md") if p.name not in NOT_OURS)
ALL_BLOCKS = [b for page in [README, *PAGES] for b in blocks(page)]


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
    allowed = {
        "pycon": {"skip"},
        "python": {"run"},
        "console": {"run", "checkout"},
        "sh": {"checkout"},
        "bash": {"checkout"},
    }
    for b in ALL_BLOCKS:
        if b.marker is not None:
            assert b.lang in allowed, f"{b.id}: test marker on a {b.lang} block"
            assert b.flags <= allowed[b.lang], f"{b.id}: unknown test marker {b.marker!r}"
            options = {w.split("=", 1)[0] for w in b.marker.split() if "=" in w}
            assert options <= {"requires", "placeholder", "needs"}, f"{b.id}: {b.marker!r}"
        if b.not_run is not None:
            assert b.lang in SHELL_LANGS, f"{b.id}: 'not run' marker on a {b.lang} block"
            assert b.not_run, f"{b.id}: say why the block is not run: <!-- not run: REASON -->"


@pytest.mark.parametrize(
    "page",
    [
        _param(p.name, [m for b in blocks(p) if b.lang == "pycon" for m in b.requires], p.name)
        for p in PAGES
        if any(b.lang == "pycon" for b in blocks(p))
    ],
)
def test_pycon_examples(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's pycon blocks, with its shell blocks among them, in order."""
    run_page(DOCS / page, tmp_path, monkeypatch)


def run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a page's pycon and shell blocks in order, in one fresh directory.

    The pycon blocks share their names; a shell block finds the files the
    blocks above it wrote. Stops at the first block that fails.
    """
    monkeypatch.chdir(tmp_path)
    env = _env()
    globs: dict[str, object] = {"__name__": f"docs_{page.name}"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran, not_here = 0, []
    for b in blocks(page):
        if b.lang == "pycon" and "skip" not in b.flags:
            missing = _missing(b.requires)
            if missing:
                not_here.append(f"{b.id} (needs {', '.join(missing)})")
                continue
            report: list[str] = []
            test = parser.get_doctest(b.text, globs, b.id, str(page), b.line)
            if runner.run(test, out=report.append, clear_globs=False).failed:
                pytest.fail("".join(report), pytrace=False)
            globs = test.globs  # a DocTest works on a copy: carry the names on
            ran += 1
        elif shell_kind(b) == "page":
            unavailable = _unavailable(b)
            if unavailable:
                not_here.append(f"{b.id} (needs {', '.join(unavailable)})")
                continue
            if shutil.which("bash") is None:
                pytest.skip("needs bash")
            text = b.text
            for placeholder in b.option("placeholder"):
                stand_in = tmp_path / "placeholder" / placeholder.strip("/")
                stand_in.mkdir(parents=True, exist_ok=True)
                text = text.replace(placeholder, str(stand_in))
            if b.lang == "console":
                run_console(b.id, text, tmp_path, env)
            else:
                run_script(b.id, text, tmp_path, env)
            ran += 1
    if not_here:
        pytest.skip(f"{ran} blocks ran; not here: {'; '.join(not_here)}")


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
    run_console(block.id, block.text, tmp_path, _env())


def run_console(block_id: str, text: str, cwd: Path, env: dict[str, str]) -> None:
    """Run each ``$ command`` of a console block; fail where its output differs."""
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for command, want in console_steps(text):
        r = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
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
                f"{block_id}: `{command}` printed\n{got}\nexpected\n{want}"
                f"(exit status {r.returncode})"
            )


def run_script(block_id: str, text: str, cwd: Path, env: dict[str, str]) -> None:
    """Run a sh/bash block as a bash script that stops at the first failing command."""
    r = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", "PS4='$ '; set -x\n" + text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        pytest.fail(
            f"{block_id} failed (exit status {r.returncode}); what it ran and printed:\n"
            f"{r.stdout}\nIf this block cannot run here by its nature, put "
            "<!-- not run: REASON --> on the line before it."
        )


# ------------------------------------------------------------ shell blocks


def shell_kind(b: Block) -> str | None:
    """How a shell block is tested: 'alone', 'page', 'checkout' or 'not run'."""
    if b.lang not in SHELL_LANGS:
        return None
    if b.not_run is not None:
        return "not run"
    if "checkout" in b.flags:
        return "checkout"
    if "run" in b.flags:
        return "alone"  # test_console_examples
    return "page"


def _unavailable(b: Block) -> list[str]:
    """The modules and commands a block needs that are missing here."""
    return _missing(b.requires) + [c for c in b.option("needs") if shutil.which(c) is None]


#: Pages whose shell blocks run in test_shell_blocks (test_pycon_examples runs
#: those of pages with pycon blocks).
SHELL_PAGES = [
    p
    for p in [README, *PAGES]
    if any(shell_kind(b) == "page" for b in blocks(p))
    and not any(b.lang == "pycon" for b in blocks(p))
]


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda p: p.name)
def test_shell_blocks(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's shell blocks run as written, in order, in one fresh directory."""
    run_page(page, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if shell_kind(b) == "not run"], ids=lambda b: b.id
)
def test_shell_blocks_not_run(block: Block) -> None:
    """Each block marked <!-- not run: REASON --> is counted, with its reason, as a skip."""
    pytest.skip(f"{block.id} not run: {block.not_run}")


def test_markers_stand_right_before_a_block() -> None:
    for page in [README, *PAGES]:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if _MARKER.match(line) or _NOT_RUN.match(line) or _HELP_MARKER.match(line):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                assert _FENCE.match(following), (
                    f"{page.name}:{i + 1}: {line.strip()} must be the line right before "
                    "the code block it is about"
                )


#: Set in the environment of the setup commands run by test_setup_commands, so
#: that the test suite they run does not run them again.
NESTED = "INDEX_WRITER_TESTING_SETUP_COMMANDS"


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if shell_kind(b) == "checkout"], ids=lambda b: b.id
)
def test_setup_commands(block: Block, tmp_path: Path) -> None:
    """Set-up commands run as written in a copy of the checkout and a fresh venv.

    The venv's ``bin`` comes first on PATH, as after activating it, and it
    starts with nothing but pip: what a block installs is all it gets. A
    block that runs the test suite must see it pass (skips state their reason).
    """
    if os.environ.get(NESTED):
        pytest.skip("already running inside the set-up commands' own test run")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    import venv

    tree = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", "*.egg-info", "build", "dist", "site", "__pycache__", ".*_cache",
            ".hypothesis", ".venv", "_cache",
        ),
    )  # fmt: skip
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
        VIRTUAL_ENV=str(env_dir),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        **{NESTED: "1"},
    )
    r = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1700,
        check=False,
    )
    tail = "\n".join(r.stdout.splitlines()[-60:])
    assert r.returncode == 0, f"{block.id} failed (exit status {r.returncode}):\n{tail}"
    if "pytest" in block.text:
        closing = re.findall(r"^=+ (.* in [\d.]+s.*?) =+$", r.stdout, re.M)
        assert closing, f"{block.id}: no pytest result line:\n{tail}"
        assert re.search(r"\d+ passed", closing[-1]), closing[-1]
        assert not re.search(r"failed|error", closing[-1]), closing[-1]
        skips = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", r.stdout, re.M)
        assert all(reason.strip() for reason in skips), skips
        print(f"{block.id}: {closing[-1]}", *(f"  skipped: {s}" for s in skips), sep="\n")


# ----------------------------------------------------------- page layout


def test_code_lines_fit_the_page() -> None:
    """No code block of README.md or the docs makes readers scroll sideways."""
    wide = [
        f"{b.id}+{n}: {len(line)} characters"
        for b in ALL_BLOCKS
        for n, line in enumerate(b.text.splitlines(), start=1)
        if len(line) > CODE_COLUMNS
    ]
    assert not wide, f"code lines longer than {CODE_COLUMNS} characters:\n" + "\n".join(wide)


#: Words from the project's own history that mean nothing to a user.
INTERNAL = re.compile(
    r"\bseed(?:'s)?\b(?! ?=)|\bissue #?\d+|\btargets of\b|\bthe lead\b|\bthe seed\b", re.I
)


def test_users_read_no_internal_vocabulary() -> None:
    src = ROOT / "src"
    texts = {p.relative_to(ROOT): p.read_text(encoding="utf-8") for p in [README, *PAGES]}
    texts.update({p.relative_to(ROOT): p.read_text(encoding="utf-8") for p in src.rglob("*.py")})
    texts.update({Path(f"--help of {name}"): text for name, text in cli_help().items()})
    found = [
        f"{where}: {m[0]!r}" for where, text in texts.items() for m in INTERNAL.finditer(text)
    ]
    assert not found, "say it in the user's words: " + ", ".join(found)


def _mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("needs the docs extra: pip install '.[docs]'")
    script = Path(sys.executable).parent / "mkdocs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mkdocs"]


@pytest.mark.slow
def test_the_site_builds_quietly_with_formatted_signatures(tmp_path: Path) -> None:
    """``mkdocs build`` prints nothing (no banner); API signatures are split over lines."""
    env = {k: v for k, v in os.environ.items() if "MKDOCS" not in k}
    site = tmp_path / "site"
    r = subprocess.run(
        [*_mkdocs(), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stdout + r.stderr
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    signatures = {}
    for m in re.finditer(r'<div class="doc-signature[^"]*"[^>]*>(.*?)</div>', page, re.S):
        text = html.unescape(re.sub(r"<[^>]+>", "", m[1])).strip()
        signatures[text.split("(", 1)[0]] = text.splitlines()
    assert "IndexWriter" in signatures, sorted(signatures)
    assert signatures["IndexWriter"][:2] == ["IndexWriter(", "    index_path: str | PathLike[str],"]
    assert len(signatures["write_entry"]) > 3, signatures["write_entry"]
    wide = [line for lines in signatures.values() for line in lines if len(line) > CODE_COLUMNS]
    assert not wide, wide


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
