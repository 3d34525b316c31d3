"""The ``index-writer`` command: argument parsing in-process, every subcommand
end-to-end through the installed console script, and bad input for each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _cli_run import console_script, run
from index_writer import IndexWriter
from index_writer._cli import build_parser, main
from index_writer._cli.arguments import build_context, parse_json_object, parse_key_value


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return tmp_path / "index.csv"


# ------------------------------------------------------------ parsing (in-process)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("k=v", ("k", "v")),
        ("k=a=b", ("k", "a=b")),
        ("k=", ("k", "")),
        ("k= spaced ", ("k", " spaced ")),
    ],
)
def test_key_value_splits_at_first_equals(word: str, expected: tuple[str, str]) -> None:
    assert parse_key_value(word) == expected


@pytest.mark.parametrize(("word", "why"), [("novalue", "no '='"), ("=v", "empty key")])
def test_bad_key_value(word: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_key_value(word)


def test_json_object_values() -> None:
    got = parse_json_object(
        '{"s": "a,\\"b\\"\\r\\nc", "i": 3, "f": 0.5, "t": true, "n": null, '
        '"l": [1, "x"], "o": {"k": 1}, "u": "\\u00e9"}'
    )
    assert got == {
        "s": 'a,"b"\r\nc',
        "i": "3",
        "f": "0.5",
        "t": "true",
        "n": "",
        "l": '[1,"x"]',
        "o": '{"k":1}',
        "u": "é",
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{bad", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got str"),
        ('{"a": 1, "a": 2}', "key 'a' given twice"),
    ],
)
def test_bad_json(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_json_object(text)


def test_context_order_and_conflicts() -> None:
    assert build_context("p", ["b=1", "a=2"], '{"c": "3"}') == {
        "b": "1",
        "a": "2",
        "c": "3",
    }
    # The path column may repeat PATH (dropped), never contradict it.
    assert build_context("p", ["path=p", "x=1"], None) == {"x": "1"}
    with pytest.raises(ValueError, match="path column"):
        build_context("p", ["path=q"], None)
    with pytest.raises(ValueError, match="path column"):
        build_context("p", [], '{"file": "q"}', filepath_column="file")
    with pytest.raises(ValueError, match="more than once"):
        build_context("p", ["a=1", "a=2"], None)
    with pytest.raises(ValueError, match="more than once"):
        build_context("p", ["a=1"], '{"a": "1"}')


def test_parser_defaults() -> None:
    parser = build_parser()
    demo = parser.parse_args(["demo"])
    assert (demo.workers, demo.entries, demo.index, demo.engine) == (12, 1000, None, "processes")
    add = parser.parse_args(
        ["add", "i.csv", "p", "a=1", "--replace", "--strict", "--timeout", "2.5"]
    )
    assert (add.replace, add.strict, add.timeout, add.durable) == (True, True, 2.5, False)
    assert add.filepath_column == "path"
    show = parser.parse_args(["show", "i.csv", "--columns", "a, b", "--format", "json"])
    assert (show.columns, show.format) == (["a", "b"], "json")
    check = parser.parse_args(["check", "i.csv", "--dedupe"])
    assert check.dedupe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["demo", "--workers", "0"], "must be at least 1"),
        (["demo", "--entries", "many"], "not a whole number"),
        (["demo", "--engine", "fibers"], "invalid choice"),
        (["demo", "--verify-only"], "--verify-only needs --index"),
        (["add", "i.csv"], "required: PATH"),
        (["add", "i.csv", "p", "--timeout", "-1"], "must be a number >= 0"),
        (["add", "i.csv", "p", "--timeout", "nan"], "must be a number >= 0"),
        (["add", "i.csv", "p", "oops"], "expected KEY=VALUE"),
        (["add", "i.csv", "p", "--json", "{"], "not valid JSON"),
        (["add", "i.csv", "p", "--filepath-column", ""], "must not be empty"),
        (["show"], "required: INDEX"),
        (["show", "i.csv", "--format", "xml"], "invalid choice"),
        (["show", "i.csv", "--columns", "a,,b"], "comma-separated column names"),
        (["check", "i.csv", "--timeout", "soon"], "not a number of seconds"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be created, even by mistake
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: index-writer")
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    for sub in ("demo", "add", "show", "check"):
        assert main([sub, "--help"]) == 0
        assert f"usage: index-writer {sub}" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("index-writer ")


# ---------------------------------------------------------------------- add


def test_add_and_show_end_to_end(index: Path) -> None:
    r = run("add", index, "out/a.nii.gz", "subject=s1", "note=x=y")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run(
        "add",
        index,
        "out/b.nii.gz",
        "subject=s2",
        "--json",
        '{"note": "comma, \\"quote\\"\\r\\nnewline", "score": 0.5, "tag": null}',
    )
    assert r.returncode == 0, r.stderr
    assert csv_rows(index) == [
        ["path", "subject", "note", "score", "tag"],
        ["out/a.nii.gz", "s1", "x=y", "", ""],
        ["out/b.nii.gz", "s2", 'comma, "quote"\r\nnewline', "0.5", ""],
    ]

    r = run("show", index, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == IndexWriter(index).read_rows()

    r = run("show", index)  # csv is the default
    assert r.returncode == 0
    assert list(csv.reader(io.StringIO(r.stdout, newline=""))) == csv_rows(index)

    r = run("show", index, "--columns", "score,path", "--format", "csv")
    assert r.stdout == "score,path\n,out/a.nii.gz\n0.5,out/b.nii.gz\n"

    r = run("show", index, "--format", "table", "--columns", "path,subject,note")
    assert r.returncode == 0
    shown = 'comma, "quote"\\r\\nnewline'  # CR LF escaped, on one line
    assert r.stdout.splitlines() == [
        "path          subject  note",
        "------------  -------  " + "-" * len(shown),
        "out/a.nii.gz  s1       x=y",
        "out/b.nii.gz  s2       " + shown,
        "(2 rows)",
    ]


def test_add_replace_and_filepath_column(index: Path) -> None:
    for value in ("1", "2"):
        assert run("add", index, "a", f"v={value}").returncode == 0
    assert run("add", index, "b", "v=3").returncode == 0
    assert run("add", index, "a", "v=9", "--replace").returncode == 0
    assert csv_rows(index) == [["path", "v"], ["a", "9"], ["b", "3"]]

    other = index.with_name("files.csv")
    r = run("add", other, "x.nii", "k=1", "--filepath-column", "file", "--durable")
    assert r.returncode == 0, r.stderr
    assert csv_rows(other) == [["file", "k"], ["x.nii", "1"]]


def test_add_strict_mismatch(index: Path) -> None:
    assert run("add", index, "a", "k=1").returncode == 0
    before = index.read_bytes()
    assert run("add", index, "b", "k=2", "--strict").returncode == 0  # fewer is fine
    before = index.read_bytes()
    r = run("add", index, "c", "k=3", "extra=4", "--strict")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("index-writer: error: Schema mismatch in index file")
    assert str(index) in r.stderr
    assert "Missing fields: ['extra']" in r.stderr
    assert index.read_bytes() == before


def test_add_bad_key_value_and_json(index: Path) -> None:
    r = run("add", index, "a", "subject")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: index-writer add")
    assert "expected KEY=VALUE, got 'subject' (no '=')" in r.stderr
    r = run("add", index, "a", "--json", "{'single': 'quotes'}")
    assert r.returncode == 2
    assert "--json: not valid JSON" in r.stderr
    r = run("add", index, "a", "--json", "[1]")
    assert r.returncode == 2
    assert "expected a JSON object" in r.stderr
    r = run("add", index, "a", "path=b")
    assert r.returncode == 2
    assert "'path' is the path column" in r.stderr
    r = run("add", index, "a", "--json", '{"k": "nul\\u0000"}')
    assert r.returncode == 2
    assert "NUL" in r.stderr
    assert not index.exists()


def test_add_to_malformed_index(index: Path) -> None:
    index.write_bytes(b'path,k\na,1\nb,"open\n')
    before = index.read_bytes()
    r = run("add", index, "c", "k=2")
    assert r.returncode == 1
    assert r.stderr.startswith(f"index-writer: error: Failed to read index file '{index}'")
    assert "line 3" in r.stderr
    assert index.read_bytes() == before


def test_add_missing_directory_or_directory_index(tmp_path: Path) -> None:
    r = run("add", tmp_path / "nowhere" / "index.csv", "a")
    assert r.returncode == 1
    assert "nowhere" in r.stderr
    assert "does not exist" in r.stderr
    assert not (tmp_path / "nowhere").exists()
    r = run("add", tmp_path, "a")
    assert r.returncode == 1
    assert f"{tmp_path}: is a directory" in r.stderr


def test_add_times_out_while_another_process_holds_the_lock(index: Path) -> None:
    run("add", index, "a", "k=1")
    before = index.read_bytes()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, fasteners
                lock = fasteners.InterProcessLock(sys.argv[1])
                lock.acquire()
                print("locked", flush=True)
                sys.stdin.read()
                lock.release()
                """
            ),
            f"{index}.lock",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        r = run("add", index, "b", "k=2", "--timeout", "0.2")
        assert r.returncode == 1
        assert "Timed out after 0.2 s" in r.stderr
        assert f"{index}.lock" in r.stderr
        assert index.read_bytes() == before
    finally:
        holder.communicate("", timeout=30)
    assert run("add", index, "b", "k=2", "--timeout", "5").returncode == 0


# --------------------------------------------------------------------- show


def test_show_missing_file_creates_nothing(tmp_path: Path) -> None:
    r = run("show", tmp_path / "missing.csv")
    assert r.returncode == 1
    assert r.stderr == f"index-writer: error: {tmp_path / 'missing.csv'}: no such file\n"
    assert list(tmp_path.iterdir()) == []


def test_show_malformed_csv(index: Path) -> None:
    index.write_bytes(b"path,k\na,1\nb,2,3\n")
    r = run("show", index)
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"'{index}'" in r.stderr
    assert "line 3: row has 3 fields but the header has 2 columns" in r.stderr
    index.write_bytes(b"path,k\na,\xff\n")
    r = run("show", index, "--format", "table")
    assert r.returncode == 1
    assert "not valid UTF-8" in r.stderr


def test_show_unknown_column_directory_and_empty(index: Path, tmp_path: Path) -> None:
    run("add", index, "a", "k=1")
    r = run("show", index, "--columns", "path,nope")
    assert r.returncode == 1
    assert "no column 'nope' (columns: path, k)" in r.stderr
    r = run("show", tmp_path)
    assert r.returncode == 1
    assert "is a directory" in r.stderr

    header_only = tmp_path / "header.csv"
    header_only.write_text("path,k\n")
    assert run("show", header_only).stdout == "path,k\n"
    assert run("show", header_only, "--format", "json").stdout == "[]\n"
    assert run("show", header_only, "--format", "table").stdout.endswith("(0 rows)\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    r = run("show", empty)
    assert (r.returncode, r.stdout) == (0, "")


def test_show_table_escapes_and_shortens(index: Path) -> None:
    IndexWriter(index).write_entry("a", {"long": "x" * 500, "ctl": "tab\there"})
    r = run("show", index, "--format", "table")
    lines = r.stdout.splitlines()
    assert lines[2].startswith("a     " + "x" * 57 + "...  tab\\there")


def _show_as_nobody(index: Path, conn: object) -> None:
    """In a forked child: drop root, run ``show`` in-process, report the outcome."""
    import contextlib

    from index_writer._cli import main

    os.setgid(65534)
    os.setuid(65534)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["show", str(index)])
    conn.send((code, err.getvalue()))  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop privileges")
def test_show_permission_denied(index: Path) -> None:
    run("add", index, "a", "k=1")
    index.chmod(0)
    try:
        if os.geteuid() == 0:
            # Root reads any file: check as an unprivileged user instead.
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            parent, child_end = ctx.Pipe()
            child = ctx.Process(target=_show_as_nobody, args=(index, child_end))
            child.start()
            assert parent.poll(60)
            code, stderr = parent.recv()
            child.join(30)
        else:
            r = run("show", index)
            code, stderr = r.returncode, r.stderr
        assert code == 1
        assert "Permission denied" in stderr
        assert str(index) in stderr
        assert "Traceback" not in stderr
    finally:
        index.chmod(0o644)


# -------------------------------------------------------------------- check


def test_check_clean(index: Path) -> None:
    w = IndexWriter(index)
    w.write_entries((f"f{i}", {"k": i, "note": "a,b"}) for i in range(3))
    before = index.read_bytes()
    r = run("check", index)
    assert r.returncode == 0
    assert r.stdout == f"{index}: ok: 3 rows, 3 columns (path, k, note)\n"
    assert index.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"path,k\na,1\nb,2\na,3\n", ["1 duplicate path", "'a' on lines 2, 4"]),
        (b"path,k\na,1\nb,2,3\n", ["1 row has more fields than the header's 2: line 3"]),
        (b"path,k\na,1\nb,2", ["no newline at the end of the file (after line 3)"]),
        (b"path,k\na,1\nb,\xe9t\xe9\n", ["not UTF-8: byte 0xe9 at line 3"]),
        (b'path,k\na,1\nb,"open\nc,3\n', ["unterminated quote", "opened on line 3"]),
        (b'path,k\na,"x"y\n', ["text after a closing quote on 1 line: 2"]),
        (b"path,k\na,\x00\n", ["NUL byte at line 2"]),
        (b"path,path\na,1\n", ["repeats column name(s): 'path'"]),
        (b"file,k\na,1\n", ["no 'path' column"]),
    ],
)
def test_check_reports_problems_without_modifying(
    index: Path, content: bytes, expected: list[str]
) -> None:
    index.write_bytes(content)
    r = run("check", index)
    assert r.returncode == 1
    assert r.stdout.startswith(f"{index}: 1 problem: ")
    for text in expected:
        assert text in r.stdout
    assert index.read_bytes() == content
    assert not Path(f"{index}.lock").exists()


def test_check_several_problems_and_notes(index: Path) -> None:
    index.write_bytes(b"\xef\xbb\xbfpath,k\r\na,1\r\n\r\na,2,9\r\nb\r\nb,3")
    r = run("check", index)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[0] == f"{index}: 3 problems: 4 rows, 2 columns (path, k)"
    assert any("no newline at the end" in line for line in out)
    assert any("more fields than the header" in line for line in out)
    assert any("duplicate path" in line for line in out)
    assert any("byte order mark" in line for line in out)
    assert any("fewer fields" in line for line in out)
    assert any("1 blank line" in line for line in out)


def test_check_missing_and_directory(tmp_path: Path) -> None:
    r = run("check", tmp_path / "nope.csv")
    assert r.returncode == 1
    assert r.stderr == f"index-writer: error: {tmp_path / 'nope.csv'}: no such file\n"
    r = run("check", tmp_path, "--dedupe")
    assert r.returncode == 1
    assert "is a directory" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_filepath_column(index: Path) -> None:
    index.write_text("file,k\na,1\na,2\n")
    r = run("check", index, "--filepath-column", "file")
    assert r.returncode == 1
    assert "1 duplicate path" in r.stdout


def test_dedupe_keeps_last_row_of_each_path(index: Path) -> None:
    body = 'path,k,note\r\na,1,"x,\r\ny"\r\nb,2,\r\na,3,\r\nc,4,"q""q"\r\nb,5,last\r\n'
    index.write_bytes(b"\xef\xbb\xbf" + body.encode())
    index.chmod(0o640)
    r = run("check", index, "--dedupe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"{index}: removed 2 duplicate rows",
        f"{index}: ok: 3 rows, 3 columns (path, k, note)",
    ]
    # Kept rows, BOM and line endings are byte-for-byte; permissions kept.
    assert index.read_bytes() == (b'\xef\xbb\xbfpath,k,note\r\na,3,\r\nc,4,"q""q"\r\nb,5,last\r\n')
    assert index.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in index.parent.iterdir() if p.name.endswith(".tmp")] == []
    # The writers read the result and keep appending to it.
    IndexWriter(index).write_entry("d", {"k": 6})
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a", "c", "b", "d"]

    r = run("check", index, "--dedupe")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == f"{index}: no duplicate paths; nothing removed"


def test_dedupe_refuses_malformed_and_reports_other_problems(index: Path) -> None:
    content = b"path,k\na,1\na,2,3\n"
    index.write_bytes(content)
    r = run("check", index, "--dedupe")
    assert r.returncode == 1
    assert "more fields than the header" in r.stdout
    assert "not de-duplicating: fix the problems above first" in r.stderr
    assert index.read_bytes() == content

    # A missing final newline does not block de-duplication, but is reported.
    index.write_bytes(b"path,k\na,1\na,2")
    r = run("check", index, "--dedupe")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == f"{index}: removed 1 duplicate row"
    assert "no newline at the end" in r.stdout
    assert index.read_bytes() == b"path,k\na,2"


def test_dedupe_under_concurrent_writers(index: Path) -> None:
    """Rows appended while de-duplicating are never lost or duplicated."""
    w = IndexWriter(index)
    w.write_entries((f"dup{i % 50}", {"k": i}) for i in range(150))
    writer_code = textwrap.dedent(
        """
        import sys
        from index_writer import IndexWriter
        w = IndexWriter(sys.argv[1])
        for i in range(int(sys.argv[3])):
            w.write_entry(f"{sys.argv[2]}-{i}", {"k": i})
            if i == 0:
                print("started", flush=True)
        """
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", writer_code, str(index), f"w{n}", "300"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for p in writers:
            assert p.stdout is not None
            assert p.stdout.readline() == "started\n"
        results = [run("check", index, "--dedupe") for _ in range(2)]
    finally:
        for p in writers:
            p.communicate(timeout=60)
            assert p.returncode == 0
    assert results[0].stdout.startswith(f"{index}: removed 100 duplicate rows")
    rows = IndexWriter(index).read_rows()
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == 50 + 600
    assert {row["k"] for row in rows if row["path"].startswith("dup")} == {
        str(i) for i in range(100, 150)
    }


# --------------------------------------------------------------- python -m


def test_python_dash_m(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "index_writer", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout.split()[0]) == (0, "index-writer")
    index = tmp_path / "i.csv"
    r = subprocess.run(
        [sys.executable, "-m", "index_writer", "add", str(index), "a", "k=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "index_writer", "show", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_show_into_closed_pipe(index: Path) -> None:
    IndexWriter(index).write_entries((f"f{i}", {"k": "v" * 50}) for i in range(20000))
    proc = subprocess.Popen(
        [*console_script(), "show", str(index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == "path,k\n"
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == ""


def test_add_accepts_options_between_key_values(tmp_path: Path) -> None:
    from index_writer._cli import main

    index = tmp_path / "i.csv"
    index.write_text("path,a\n")
    assert main(["add", str(index), "x.nii", "a=1", "--strict", "a=2"]) == 2  # a given twice
    assert main(["add", str(index), "x.nii", "--replace", "a=1"]) == 0
    assert main(["add", str(index), "y.nii", "--strict", "new=1"]) == 1  # schema mismatch
    assert main(["add", str(index), "z.nii", "--bogus"]) == 2
    assert index.read_text() == "path,a\nx.nii,1\n"
