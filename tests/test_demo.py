"""``index-writer demo``: the workload, its verification (which must fail loudly
on a tampered index), progress output, and the command end-to-end.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import re
import shutil
from pathlib import Path

import pytest

from _cli_run import run
from index_writer import IndexWriter
from index_writer._cli import main
from index_writer._demo import DEMO_COLUMNS, demo_path, generate_context
from index_writer._progress import Progress

ENTRIES = 40


def demo(*args: str | Path) -> tuple[int, str, str]:
    """Run ``index-writer demo *args`` in-process: status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def verify(index: Path, entries: int | None = ENTRIES) -> list[str]:
    """The problems ``demo --verify-only`` finds (none when it passes)."""
    more = [] if entries is None else ["--entries", str(entries)]
    code, out, err = demo("--verify-only", "--index", index, *more)
    problems = [line[4:] for line in err.splitlines() if line.startswith("  - ")]
    assert code == (1 if problems else 0), out + err
    assert ("verified: " in out) == (not problems)
    return problems


@pytest.fixture(scope="module")
def good_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = tmp_path_factory.mktemp("demo") / "index.csv"
    code, out, err = demo("--engine", "threads", "--workers", "3", "--entries", ENTRIES,
                          "--index", index)  # fmt: skip
    assert code == 0, out + err
    return index


@pytest.fixture
def copy(good_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index.csv"
    shutil.copyfile(good_index, target)
    return target


def test_generate_context_matches_the_seed() -> None:
    ctx = generate_context(23)
    assert list(ctx) == ["subject_id", "modality", "timestamp", "quality_score"]
    assert ctx["subject_id"] == "subject_3"
    assert ctx["modality"] in ("CT", "MR", "SEG")
    assert isinstance(ctx["quality_score"], float)
    assert 0 <= ctx["quality_score"] <= 1
    assert round(ctx["quality_score"], 3) == ctx["quality_score"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", str(ctx["timestamp"]))
    assert demo_path(23) == "output/fake_file_23.nii.gz"


def test_verify_accepts_the_real_thing(good_index: Path) -> None:
    assert verify(good_index) == []
    rows = IndexWriter(good_index).read_rows()
    assert list(rows[0]) == list(DEMO_COLUMNS)


def test_verify_only_counts_what_is_there(copy: Path) -> None:
    """Without --entries, the index is checked for as many entries as it shows."""
    code, out, _ = demo("--verify-only", "--index", copy)
    assert code == 0
    assert f"verified: {ENTRIES} rows, {ENTRIES} unique paths" in out
    assert verify(copy, ENTRIES + 10) == [
        f"expected {ENTRIES + 10} rows, found {ENTRIES}",
        f"10 entries missing: {demo_path(ENTRIES)}, {demo_path(ENTRIES + 1)}, "
        f"{demo_path(ENTRIES + 2)}, ... (7 more)",
    ]
    # A lost entry shows: a higher number is still there.
    lines = _lines(copy)
    gone = next(i for i, line in enumerate(lines) if line.startswith(demo_path(3) + ","))
    del lines[gone]
    copy.write_text("".join(lines))
    assert verify(copy, None) == [
        f"expected {ENTRIES} rows, found {ENTRIES - 1}",
        f"1 entries missing: {demo_path(3)}",
    ]


def _lines(index: Path) -> list[str]:
    return index.read_text().splitlines(keepends=True)


def test_verify_catches_a_missing_row(copy: Path) -> None:
    lines = _lines(copy)
    gone = lines.pop(7)
    copy.write_text("".join(lines))
    problems = verify(copy)
    assert f"expected {ENTRIES} rows, found {ENTRIES - 1}" in problems
    assert any(gone.split(",")[0] in p and "missing" in p for p in problems)


def test_verify_catches_a_duplicated_row(copy: Path) -> None:
    lines = _lines(copy)
    copy.write_text("".join([*lines, lines[3]]))
    for entries in (ENTRIES, None):
        problems = verify(copy, entries)
        assert f"expected {ENTRIES} rows, found {ENTRIES + 1}" in problems
        assert any("recorded more than once" in p for p in problems)


def test_verify_catches_a_value_in_the_wrong_place(copy: Path) -> None:
    lines = _lines(copy)
    path, _subject, *rest = lines[5].split(",")
    lines[5] = ",".join([path, "subject_x", *rest])
    copy.write_text("".join(lines))
    problems = verify(copy)
    assert problems == [f"1 row(s) with implausible values: {path} (subject_id 'subject_x')"]


def test_verify_catches_a_blanked_value_and_a_foreign_path(copy: Path) -> None:
    lines = _lines(copy)
    fields = lines[2].split(",")
    fields[2] = ""  # modality
    lines[2] = ",".join(fields)
    fields = lines[4].split(",")
    fields[0] = "output/other.nii.gz"
    lines[4] = ",".join(fields)
    copy.write_text("".join(lines))
    problems = verify(copy)
    assert any("row(s) with an empty column" in p for p in problems)
    assert any("unexpected path(s): 'output/other.nii.gz'" in p for p in problems)


def test_verify_catches_a_dropped_column_and_a_broken_file(copy: Path) -> None:
    lines = _lines(copy)
    copy.write_text("".join(",".join(line.split(",")[:4]) + "\n" for line in lines))
    assert "missing column(s): quality_score" in verify(copy)

    copy.write_text("".join(lines) + 'output/x,"unterminated\n')
    (problem,) = verify(copy)
    assert problem.startswith(f"Failed to read index file '{copy}'")


# ------------------------------------------------------------------ progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Closed(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(5, "Input/output error")


def test_progress_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    with Progress(50, "demo", out, interval=3600) as progress:
        for _ in range(50):
            progress.update()
    assert re.fullmatch(r"demo: 50/50 \(100%\) in \d+\.\d s\n", out.getvalue())
    out = io.StringIO()
    with Progress(5, "demo", out, interval=0) as progress:
        for _ in range(5):
            progress.update()
    assert out.getvalue().count("\n") == 5  # four while running, one at the end
    assert "\r" not in out.getvalue()


def test_progress_updates_one_line_on_a_terminal() -> None:
    out = _Terminal()
    with Progress(3, "demo", out, use_tqdm=False) as progress:
        for _ in range(3):
            progress.update()
    text = out.getvalue()
    assert text.startswith("\rdemo: ")
    assert text.endswith("demo: 3/3 (100%) in 0.0 s\n")
    assert text.count("\n") == 1


def test_progress_with_tqdm_on_a_terminal() -> None:
    pytest.importorskip("tqdm")
    out = _Terminal()
    with Progress(3, "demo", out) as progress:
        for _ in range(3):
            progress.update()
    assert "3/3" in out.getvalue()


def test_progress_never_breaks_the_run() -> None:
    for stream in (_Closed(), None):
        with Progress(3, "demo", stream, interval=0) as progress:
            for _ in range(3):
                progress.update()
    terminal = _Terminal()
    terminal.close()  # writes raise ValueError
    with Progress(3, "demo", terminal, use_tqdm=False) as progress:
        progress.update(3)


# ---------------------------------------------------------------- end to end


def _field(stdout: str, prefix: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :]
    raise AssertionError(f"no line starting with {prefix!r} in:\n{stdout}")


def test_demo_processes_end_to_end(tmp_path: Path) -> None:
    index = tmp_path / "sub" / "index.csv"
    r = run("demo", "--workers", "4", "--entries", "200", "--index", index)
    assert r.returncode == 0, r.stdout + r.stderr
    default = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert f"4 worker processes (started by {default}) record 200 files" in r.stdout
    assert re.search(
        r"^index-writer: 200 entries in \d+\.\d\d s \([\d,]+ entries/s\)$", r.stdout, re.M
    )
    assert "verified: 200 rows, 200 unique paths" in r.stdout
    assert _field(r.stdout, "index: ") == str(index)
    assert re.search(r"index-writer: 200/200 \(100%\)", r.stderr)  # progress, no tty
    assert verify(index, 200) == []

    r = run("demo", "--index", index, "--entries", "10")
    assert r.returncode == 1
    assert "already exists" in r.stderr


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_demo_under_each_start_method(tmp_path: Path, method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        r = run("demo", "--start-method", method, "--index", tmp_path / "i.csv")
        assert r.returncode == 2
        assert f"--start-method {method} is not available on this platform" in r.stderr
        return
    index = tmp_path / "index.csv"
    r = run("demo", "--workers", "3", "--entries", "30", "--start-method", method,
            "--index", index)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"3 worker processes (started by {method}) record 30 files" in r.stdout
    assert "verified: 30 rows, 30 unique paths" in r.stdout


def test_demo_threads_default_index(tmp_path: Path) -> None:
    r = run("demo", "--workers", "3", "--entries", "60", "--engine", "threads")
    assert r.returncode == 0, r.stdout + r.stderr
    index = Path(_field(r.stdout, "index: "))
    try:
        assert index.name == "index.csv"
        assert index.parent.name.startswith("index-writer-demo-")
        assert verify(index, 60) == []
        assert "3 worker threads" in r.stdout
    finally:
        shutil.rmtree(index.parent)


def test_demo_has_no_comparison_run(tmp_path: Path) -> None:
    # The read-all/rewrite-all baseline is not installed: benchmarks/rewrite_all.py
    # runs that comparison from a checkout.
    r = run("demo", "--compare", "--index", tmp_path / "i.csv")
    assert r.returncode == 2
    assert "unrecognized arguments: --compare" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_verification_fails_loudly_on_a_tampered_index(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    r = run("demo", "--workers", "2", "--entries", "50", "--index", index)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("demo", "--verify-only", "--index", index, "--entries", "50")
    assert r.returncode == 0
    assert "verified: 50 rows" in r.stdout

    lines = index.read_text().splitlines(keepends=True)
    del lines[10]
    index.write_text("".join(lines))
    r = run("demo", "--verify-only", "--index", index, "--entries", "50")
    assert r.returncode == 1
    assert "verified" not in r.stdout
    assert f"index-writer demo: VERIFICATION FAILED for {index}:" in r.stderr
    assert "  - expected 50 rows, found 49" in r.stderr
    assert "entries missing" in r.stderr

    r = run("demo", "--verify-only", "--index", tmp_path / "none.csv", "--entries", "5")
    assert r.returncode == 1
    assert "no such file" in r.stderr
