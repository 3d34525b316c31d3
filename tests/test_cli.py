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

import fasteners
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cli_run import console_script, run
from index_writer import IndexWriter
from index_writer._cli import main


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return tmp_path / "index.csv"


# ------------------------------------------------------------ arguments (in-process)


def add_rows(index: Path, *words: str) -> tuple[int, list[dict[str, str]]]:
    """Run ``add INDEX *words`` in-process; return its status and the rows then."""
    code = main(["add", str(index), *words])
    return code, IndexWriter(index).read_rows()


@pytest.mark.parametrize(
    ("word", "value"),
    [("k=v", "v"), ("k=a=b", "a=b"), ("k=", ""), ("k= spaced ", " spaced ")],
)
def test_key_value_splits_at_first_equals(index: Path, word: str, value: str) -> None:
    assert add_rows(index, "p", word) == (0, [{"path": "p", "k": value}])


@pytest.mark.parametrize(("word", "why"), [("novalue", "no '='"), ("=v", "empty key")])
def test_bad_key_value(
    index: Path, word: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add", str(index), "p", word]) == 2
    assert f"expected KEY=VALUE, got {word!r} ({why})" in capsys.readouterr().err
    assert not index.exists()


def test_json_object_values(index: Path) -> None:
    code, rows = add_rows(
        index,
        "p",
        "--json",
        '{"s": "a,\\"b\\"\\r\\nc", "i": 3, "f": 0.5, "t": true, "n": null, '
        '"l": [1, "x"], "o": {"k": 1}, "u": "\\u00e9"}',
    )
    assert code == 0
    assert rows == [
        {
            "path": "p",
            "s": 'a,"b"\r\nc',
            "i": "3",
            "f": "0.5",
            "t": "true",
            "n": "",
            "l": '[1,"x"]',
            "o": '{"k":1}',
            "u": "é",
        }
    ]


def test_json_given_twice_adds_both_and_a_key_twice_is_refused(index: Path) -> None:
    code, rows = add_rows(index, "p", "s=1", "--json", '{"dose": 1.5}', "--json", '{"site": "A"}')
    assert code == 0
    assert rows == [{"path": "p", "s": "1", "dose": "1.5", "site": "A"}]
    r = run("add", str(index), "q", "--json", '{"dose": 1}', "--json", '{"dose": 2}')
    assert r.returncode == 2 and "key 'dose' given more than once" in r.stderr
    assert [row["path"] for row in IndexWriter(index).read_rows()] == ["p"]


def test_json_numbers_are_kept_as_written(index: Path) -> None:
    # Parsed as floats, they lost digits (1.2345678901234567e+19), trailing
    # zeros (1.5) and their notation (100.0).
    code, rows = add_rows(
        index, "p", "--json",
        '{"big": 12345678901234567890.5, "z": 1.50, "e": 1e2, "l": [1.0, {"k": -0}]}',
    )
    assert code == 0
    assert rows == [
        {"path": "p", "big": "12345678901234567890.5", "z": "1.50", "e": "1e2",
         "l": '[1.0,{"k":-0}]'}
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": [-Infinity]}', "-Infinity is not a JSON number"),
        ("{bad", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got str"),
        ('{"a": 1, "a": 2}', "key 'a' given twice"),
    ],
)
def test_bad_json(index: Path, text: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add", str(index), "p", "--json", text]) == 2
    assert f"--json: {why}" in capsys.readouterr().err
    assert not index.exists()


def test_context_order_and_conflicts(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, rows = add_rows(index, "p", "b=1", "a=2", "--json", '{"c": "3"}')
    assert code == 0
    assert list(rows[0].items()) == [("path", "p"), ("b", "1"), ("a", "2"), ("c", "3")]
    # The path column may repeat PATH (dropped), never contradict it.
    assert add_rows(index, "q", "path=q", "a=1")[0] == 0
    for words, why in [
        (["r", "path=other"], "'path' is the path column"),
        (["r", "--json", '{"file": "x"}', "--filepath-column", "file"], "'file' is the path"),
        (["r", "a=1", "a=2"], "key 'a' given more than once"),
        (["r", "a=1", "--json", '{"a": "1"}'], "key 'a' given more than once"),
    ]:
        assert main(["add", str(index), *words]) == 2
        assert why in capsys.readouterr().err
    assert [r["path"] for r in IndexWriter(index).read_rows()] == ["p", "q"]


def test_options_in_any_order(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add", "--timeout", "2.5", str(index), "p", "a=1", "--replace", "b=2"]) == 0
    assert main(["show", str(index), "--columns", "b, path", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"b": "2", "path": "p"}]


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
        (
            ["add", "i.csv", "-x.nii"],
            "required: PATH ('-x.nii' was read as an option; to pass it as an argument, "
            "put '--' before the arguments: index-writer add [OPTIONS] -- INDEX PATH "
            "[KEY=VALUE ...])",
        ),
        (["add", "i.csv", "p", "-x"], "unrecognized arguments: -x ('-x' was read as an option"),
        (["add", "i.csv", "p", "--timeout", "-1"], "expected a number of seconds >= 0"),
        (["add", "i.csv", "p", "--timeout", "nan"], "or inf to wait forever; got 'nan'"),
        (["add", "i.csv", "p", "oops"], "expected KEY=VALUE"),
        (["add", "i.csv", "p", "--json", "{"], "not valid JSON"),
        (["add", "i.csv", "p", "--filepath-column", ""], "must not be empty"),
        (["show"], "required: INDEX"),
        (["show", "-i.csv"], "index-writer show [OPTIONS] -- INDEX)"),
        (["show", "i.csv", "--format", "xml"], "invalid choice"),
        (["show", "i.csv", "--columns", "a,,b"], "comma-separated column names"),
        (["check", "i.csv", "--timeout", "soon"], "got 'soon'"),
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


@pytest.mark.parametrize(
    "argv",
    [
        ["add", "i.csv"],  # no word starting with '-'
        ["add", "i.csv", "p", "--replce"],  # '--': a mistyped option, more likely
        ["add", "-1"],  # a number, which argparse takes as a value (INDEX here)
        ["demo", "-x"],  # no arguments to put after '--'
        ["-x"],  # no command yet
    ],
)
def test_no_dash_hint_where_it_would_mislead(
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "'--'" not in capsys.readouterr().err


def test_a_path_starting_with_a_dash_goes_after_double_dash(
    index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add", str(index), "--", "-x.nii", "k=v"]) == 0
    assert main(["add", "--replace", "--", str(index), "-x.nii", "k=w"]) == 0
    assert IndexWriter(index).read_rows() == [{"path": "-x.nii", "k": "w"}]


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


def test_add_to_a_directory(tmp_path: Path) -> None:
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
        # Who holds it: the process the kernel names, and who last changed the index.
        assert f"held by process {holder.pid}" in r.stderr
        assert "last change by process" in r.stderr and "on host" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
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


# ------------------------------------------------------- shell users' mistakes


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_add_creates_the_index_directory_like_the_library(tmp_path: Path) -> None:
    index = tmp_path / "out" / "sub" / "index.csv"
    r = run("add", index, "out/sub-01_CT.nii.gz", "subject=sub-01")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert csv_rows(index) == [["path", "subject"], ["out/sub-01_CT.nii.gz", "sub-01"]]
    # The same as IndexWriter(...).write_entry(...) on a missing directory.
    other = tmp_path / "py" / "sub" / "index.csv"
    IndexWriter(other).write_entry("out/sub-01_CT.nii.gz", {"subject": "sub-01"})
    assert other.read_bytes() == index.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("data.json", b'{"subject": "s1", "k": 1}\n', "has no 'path' column"),
        ("notes.txt", b"just some text\nmore text\n", "has no 'path' column"),
        ("files.csv", b"file,k\na.nii,1\n", "has no 'path' column (its columns: file, k)"),
        ("c.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "not a CSV index: line 1:"),
        ("dup.csv", b"path,path\na,b\n", "not a CSV index: line 1: duplicate column name"),
    ],
)
def test_add_refuses_a_file_that_is_no_index(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    target = tmp_path / name
    target.write_bytes(content)
    r = run("add", target, "f.nii", "a=1")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"index-writer: error: {target}: ")
    assert why in r.stderr
    assert r.stderr.count("\n") == 1
    assert target.read_bytes() == content
    assert _files(tmp_path) == [name]  # not even a lock file


def test_add_to_an_empty_or_blank_file_writes_the_header(tmp_path: Path) -> None:
    for content in (b"", b"\n\r\n", b"\xef\xbb\xbf"):
        index = tmp_path / "index.csv"
        index.write_bytes(content)
        assert run("add", index, "a.nii", "k=1").returncode == 0
        assert [r["path"] for r in IndexWriter(index).read_rows()] == ["a.nii"]
        index.unlink()


def test_add_with_another_path_column_needs_filepath_column(tmp_path: Path) -> None:
    index = tmp_path / "files.csv"
    index.write_text("file,k\na.nii,1\n")
    r = run("add", index, "b.nii", "k=2")
    assert r.returncode == 1
    assert "--filepath-column" in r.stderr
    assert run("add", index, "b.nii", "k=2", "--filepath-column", "file").returncode == 0
    assert index.read_text() == "file,k\na.nii,1\nb.nii,2\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "t/i.csv", "", "a=1"], "PATH is empty"),
        (["add", "", "f.nii", "a=1"], "INDEX is empty"),
    ],
)
def test_add_refuses_empty_words(argv: list[str], message: str, tmp_path: Path) -> None:
    """An unset "$out" in a batch script must not record an empty path."""
    r = run(*argv, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith(f"index-writer add: error: {message}")
    assert _files(tmp_path) == []


def test_add_without_path_says_only_path_is_required(tmp_path: Path) -> None:
    r = run("add", tmp_path / "i.csv")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "index-writer add: error: the following arguments are required: PATH"
    )


def test_add_strict_speaks_to_the_shell(index: Path) -> None:
    assert run("add", index, "a", "k=1").returncode == 0
    r = run("add", index, "b", "k=2", "extra=3", "--strict")
    assert r.returncode == 1
    assert r.stderr == (
        f"index-writer: error: Schema mismatch in index file '{index}'. "
        "Missing fields: ['extra']. Run without --strict to add these columns.\n"
    )
    assert "merge_columns" not in r.stderr


def test_replace_help_says_the_whole_row_is_replaced(
    capsys: pytest.CaptureFixture[str], index: Path
) -> None:
    assert main(["add", "--help"]) == 0
    assert "replace the whole row holding PATH" in " ".join(capsys.readouterr().out.split())
    run("add", index, "a", "k=1", "note=x")
    run("add", index, "a", "k=2", "--replace")
    assert IndexWriter(index).read_rows() == [{"path": "a", "k": "2", "note": ""}]


@pytest.mark.parametrize("command", ["add", "show", "check"])
@pytest.mark.parametrize("value", ["inf", "Infinity", "1e10", "0", "2.5"])
def test_timeout_accepts_any_number_of_seconds_and_inf(
    index: Path, command: str, value: str
) -> None:
    IndexWriter(index).write_entry("a", {"k": 1})
    extra = {"add": ["b", "k=2"], "show": [], "check": ["--dedupe"]}[command]
    r = run(command, index, *extra, "--timeout", value)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


@pytest.mark.parametrize("command", ["add", "show", "check"])
@pytest.mark.parametrize("value", ["-1", "-inf", "nan", "soon", "", "1e400x"])
def test_timeout_refuses_anything_else(tmp_path: Path, command: str, value: str) -> None:
    words = {"add": ["i.csv", "f.nii"], "show": ["i.csv"], "check": ["i.csv", "--dedupe"]}
    r = run(command, *words[command], f"--timeout={value}", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.splitlines()[-1]
    assert last.startswith(f"index-writer {command}: error: argument --timeout: expected")
    assert "or inf to wait forever" in last
    assert _files(tmp_path) == []


@pytest.mark.parametrize("argv", [["show"], ["check"], ["check", "--dedupe"]])
def test_reading_a_file_that_is_no_index_creates_nothing(tmp_path: Path, argv: list[str]) -> None:
    png = tmp_path / "c.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00")
    r = run(argv[0], png, *argv[1:])
    assert r.returncode == 1
    assert "UTF-8" in r.stdout + r.stderr
    assert _files(tmp_path) == ["c.png"]


@pytest.mark.parametrize("argv", [["show"], ["check"], ["check", "--dedupe"]])
def test_reading_a_missing_path_creates_nothing(tmp_path: Path, argv: list[str]) -> None:
    missing = tmp_path / "no" / "such" / "index.csv"
    r = run(argv[0], missing, *argv[1:])
    assert r.returncode == 1
    assert r.stderr == f"index-writer: error: {missing}: no such file\n"
    assert _files(tmp_path) == []


def test_show_and_check_say_the_same_about_an_unterminated_quote(index: Path) -> None:
    index.write_bytes(b'path,k\na,1\nb,"open\nc,3\n')
    message = (
        "unterminated quote: the quoted field opened on line 3 never closes "
        "(the rest of the file is inside it)"
    )
    shown = run("show", index)
    checked = run("check", index)
    assert (shown.returncode, checked.returncode) == (1, 1)
    assert shown.stderr.rstrip("\n").endswith(f"line 3: {message}")
    assert f"  problem: {message}\n" in checked.stdout


# ------------------------------------------------------ show --format csv is exact


AWKWARD = [
    "line1\rline2",
    "line1\r\nline2",
    "line1\nline2",
    'say "hi"',
    "  padded  ",
    " ",
    "",
    "a,b",
    '"',
    "\r",
    "é€😀",
]


def test_show_csv_is_exact_for_awkward_values(index: Path) -> None:
    IndexWriter(index).write_entries((f"f{i}", {"v": v}) for i, v in enumerate(AWKWARD))
    r = run("show", index, "--format", "csv")
    assert r.returncode == 0
    assert r.stdout.startswith('path,v\nf0,"line1\rline2"\nf1,"line1\r\nline2"\n')
    back = list(csv.reader(io.StringIO(r.stdout, newline=""), strict=True))
    assert back == [["path", "v"]] + [[f"f{i}", v] for i, v in enumerate(AWKWARD)]
    # A single empty column is written as "" so that it is not a blank line.
    r = run("show", index, "--columns", "v")
    assert r.stdout == (
        'v\n"line1\rline2"\n"line1\r\nline2"\n"line1\nline2"\n"say ""hi"""\n  padded  \n'
        ' \n""\n"a,b"\n""""\n"\r"\né€😀\n'
    )


# Any text a CSV value can hold (no NUL, no lone surrogates), rich in the
# characters that need quoting and in spaces.
csv_values = st.text(
    alphabet=st.one_of(
        st.sampled_from(',"\r\n \t'),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=10,
)


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(
        st.tuples(csv_values.filter(bool), st.dictionaries(st.sampled_from("abc"), csv_values)),
        min_size=1,
        max_size=8,
    )
)
def test_show_csv_parses_back_to_read_rows(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, dict[str, str]]]
) -> None:
    import contextlib

    index = tmp_path_factory.mktemp("show") / "index.csv"
    writer = IndexWriter(index)
    writer.write_entries(entries)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    with contextlib.redirect_stdout(out):
        assert main(["show", str(index), "--format", "csv"]) == 0
    out.flush()
    data = out.buffer.getvalue()  # type: ignore[attr-defined]
    rows = writer.read_rows()
    back = list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True))
    assert back[0] == list(rows[0])
    assert [dict(zip(back[0], r, strict=True)) for r in back[1:]] == rows


# ------------------------------------------------------------ standard output


def _run_with_stdout(stdout: str, *args: str, env: dict[str, str] | None = None
                     ) -> subprocess.CompletedProcess[bytes]:
    """Run the console script with its standard output closed ("closed") or sent to a file."""
    redirect = ">&-" if stdout == "closed" else f'> "{stdout}"'
    script = f'exec "$@" {redirect}'
    return subprocess.run(["sh", "-c", script, "sh", *console_script(), *args],
                          capture_output=False, stderr=subprocess.PIPE, timeout=60,
                          env={**os.environ, **(env or {})})


def test_a_closed_standard_output_is_reported_before_anything_is_done(index: Path) -> None:
    index.write_text("path,v\nx,1\nx,2\n")
    for args in (["show", str(index)], ["check", str(index), "--dedupe"]):
        r = _run_with_stdout("closed", *args)
        assert r.returncode == 1
        assert r.stderr.decode().startswith("index-writer: error: standard output is closed")
    assert index.read_text() == "path,v\nx,1\nx,2\n"  # nothing de-duplicated either


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_failure_to_print_is_not_blamed_on_the_index(index: Path) -> None:
    index.write_text("path,v\nx,1\n")
    for args in (["show", str(index)], ["show", str(index), "--format", "csv"],
                 ["check", str(index)]):
        r = _run_with_stdout("/dev/full", *args)
        assert r.returncode == 1
        assert r.stderr.decode() == (
            "index-writer: error: cannot write to standard output: No space left on device\n"
        )


def test_json_output_is_utf8_whatever_the_terminal_encoding(index: Path, tmp_path: Path) -> None:
    index.write_text("path,note\ncafé.nii,😀\n", encoding="utf-8")
    out = tmp_path / "out.json"
    r = _run_with_stdout(str(out), "show", str(index), "--format", "json",
                         env={"PYTHONIOENCODING": "latin-1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_bytes()) == [{"path": "café.nii", "note": "😀"}]


def test_show_columns_named_with_a_comma_and_given_twice(index: Path) -> None:
    index.write_text('path,"dose, Gy",v\na,1,2\n')
    r = run("show", index, "--columns", 'v, "dose, Gy"', "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"v": "2", "dose, Gy": "1"}]
    r = run("show", index, "--columns", "path,v,path")
    assert r.returncode == 2
    assert "column 'path' given twice" in r.stderr


def test_show_columns_named_with_spaces_of_their_own(index: Path) -> None:
    index.write_text("path, subject\na.nii, s1\n")  # written with ", " between names
    r = run("show", index, "--columns", ' path , " subject"', "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"path": "a.nii", " subject": " s1"}]


@pytest.mark.parametrize(
    "command",
    [["add", "{index}", "b.nii"], ["show", "{index}"], ["check", "--dedupe", "{index}"]],
    ids=["add", "show", "check --dedupe"],
)
def test_lock_path_names_the_lock_file_the_command_takes(
    tmp_path: Path, command: list[str]
) -> None:
    index, lock = tmp_path / "index.csv", tmp_path / "shared.lock"
    IndexWriter(index, lock).write_entry("a.nii", {})
    words = [w.format(index=index) for w in command]
    with fasteners.InterProcessLock(str(lock)):  # held here: the command must wait for it
        waited = run(*words, "--lock-path", lock, "--timeout", "0.2")
        assert waited.returncode == 1, waited.stderr
        assert "lock" in waited.stderr
        assert run(*words, "--timeout", "0.2").returncode == 0  # INDEX.lock is free
    assert run(*words, "--lock-path", lock, "--timeout", "5").returncode == 0
