"""One source for every benchmark figure: docs/benchmarks.json, through benchmarks/report.py.

README.md and the pages of docs/ quote the benchmark only in sections that
report.py generates from the JSON; these tests check that every such section
agrees with the JSON, that no page quotes a performance figure by hand
elsewhere (except the few listed below, with the reason each is not the
benchmark's), and that what compare.py writes is what report.py reads.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import report  # noqa: E402

sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return report.load(report.DEFAULT_JSON)


def test_the_figures_file_is_valid(data: dict[str, Any]) -> None:
    assert report.validate(data) == []
    for key in ("sequential", "first_replace", "batch", "memory", "demo"):
        assert data[key], f"docs/benchmarks.json has no {key!r} figures"


def test_readme_and_docs_agree_with_the_figures(data: dict[str, Any]) -> None:
    stale = report.stale(data)
    assert not stale, (
        f"{', '.join(p.name for p in stale)} differ from docs/benchmarks.json; "
        "run: python benchmarks/report.py docs/benchmarks.json --write"
    )


def test_every_section_is_on_some_page() -> None:
    used = {
        name
        for page in report.pages()
        for name, _ in report.sections_in(page.read_text(encoding="utf-8"))
    }
    assert used == set(report.SECTIONS), f"sections on no page: {set(report.SECTIONS) - used}"
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    order = [name for name, _ in report.sections_in(performance)]
    # What was measured, the plot, the compact table first; the machine last.
    assert order[:3] == ["summary", "plot", "table"]
    assert order[-1] == "machine"
    assert performance.startswith("# Performance\n")


def test_the_page_title_matches_the_menu() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^  - Performance: performance\.md$", nav, re.M)


# Performance figures written by hand, outside the generated sections: each is
# a setting or a separate measurement, never a figure of the benchmark.
FIGURE = re.compile(
    r"(?<![\w.,-])\d[\d,]*(?:\.\d+)?(?:–\d[\d,]*(?:\.\d+)?)?\s?"
    r"(?:ms|µs|s|seconds|minutes|MB|GB|rows/s|entries/s|%|×|(?:entries )?per second)"
    r"(?![\w/])"
)
NOT_THE_BENCHMARKS = {
    "concurrency.md": {
        # fasteners' and the writer's lock polling intervals: settings.
        "10 to 100 ms": "fasteners' polling interval",
        "1 ms": "the writer's polling interval",
        "10 ms": "the writer's polling interval",
        "10 minutes": "the timeout in the example",
    },
    "clusters.md": {
        "5 s": "how soon doctor wants a killed holder's lock free",
        "2.6 ms": "hold times in doctor's example report",
        "2.1 ms": "hold times in doctor's example report",
    },
    "crash-safety.md": {
        "5 s": "ext4's commit interval",
        "30 s": "the kernel's writeback delay",
        # "What each costs": durable=True against the default, measured by the
        # script printed on that page, a benchmark of its own.
        "37,400 entries/s": "durability table",
        "0.027 ms": "durability table",
        "3,100 entries/s": "durability table",
        "0.32 ms": "durability table",
        "467,000 entries/s": "durability table",
        "358,000 entries/s": "durability table",
        "30 ms": "durability table",
        "39 ms": "durability table",
        "344 ms": "durability table",
        "457 ms": "durability table",
        "0.035 ms": "durability table",
        "200 to 330 per second": "durability under load",
        "85,000 to 150,000 entries per second": "durability under load",
    },
}


def hand_written_figures(text: str) -> list[str]:
    body = report._BLOCK.sub("", text)
    body = re.sub(r"(\d) to (\d)", r"\1–\2", body)  # "10 to 100 ms" is one figure
    return [m[0].replace("–", " to ") for m in FIGURE.finditer(body)]


def test_no_figure_is_quoted_by_hand() -> None:
    found = []
    for page in report.pages():
        allowed = NOT_THE_BENCHMARKS.get(page.name, {})
        for figure in hand_written_figures(page.read_text(encoding="utf-8")):
            if figure not in allowed:
                found.append(f"{page.name}: {figure!r}")
    assert not found, (
        "performance figures outside the generated sections (quote the benchmark "
        "through a section of benchmarks/report.py instead): " + ", ".join(found)
    )


def test_the_figure_finder_finds_figures() -> None:
    text = "about 0.9 s, 818 ms, 13,449×, 72%, 324,000 rows/s and 10 to 100 ms"
    assert hand_written_figures(text) == [
        "0.9 s", "818 ms", "13,449×", "72%", "324,000 rows/s", "10 to 100 ms",
    ]  # fmt: skip
    generated = report.BEGIN.format(name="table") + "\n4.7 ms\n<!-- end benchmarks:table -->"
    assert hand_written_figures(generated) == []


# --------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.033127, "0.0331"),
        (4.7, "4.70"),
        (444.2, "444"),
        (13449.3, "13,400"),
        (1972705, "1,970,000"),
        (9.996, "10.0"),
        (999.6, "1,000"),
        (0.0, "0"),
    ],
)
def test_three_significant_digits(value: float, text: str) -> None:
    assert report.sig(value) == text


# --------------------------------------------------------- what renders


def test_a_run_without_the_original_renders(data: dict[str, Any]) -> None:
    partial = copy.deepcopy(data)
    for key in ("sequential", "demo", "memory"):
        partial[key] = [x for x in partial[key] if x["implementation"] != "original"]
    partial["original_stopped"] = ""
    partial["original_error"] = "OriginalUnavailable: no network"
    partial["run"]["quick"] = True
    for name, fn in report.SECTIONS.items():
        text = fn(partial, "")
        assert "nan" not in text.split(), name
    assert "could not be run: OriginalUnavailable" in report.SECTIONS["sequential"](partial, "")
    assert {c[2] for c in report.checks(partial)} == {"info"}  # quick runs pass nothing


def test_write_then_check(data: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for page in report.pages():
        shutil.copy(page, tmp_path / page.relative_to(ROOT))
    assert report.stale(data, tmp_path) == []
    changed = copy.deepcopy(data)
    changed["demo"][0]["time"]["median"] *= 2
    assert report.stale(changed, tmp_path) != []
    written = report.write_pages(changed, tmp_path)
    assert written and report.stale(changed, tmp_path) == []
    # A hand edit inside a generated section is found, and undone by --write.
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    row = text.index("\n| one `write_entry", text.index("<!-- begin benchmarks:table")) + 1
    readme.write_text(text[:row] + "| hand-edited " + text[row + 2 :], encoding="utf-8")
    assert report.stale(changed, tmp_path) == [readme]


def test_unknown_or_unclosed_sections_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown sections"):
        report.render(
            "<!-- begin benchmarks:nope x -->\n<!-- end benchmarks:nope -->\n", data, ""
        )
    with pytest.raises(ValueError, match="unmatched"):
        report.render("<!-- begin benchmarks:table x -->\n", data, "")


def test_the_command_checks_the_pages() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCHMARKS / "report.py"), str(report.DEFAULT_JSON), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stderr) == (0, ""), r.stdout + r.stderr
    assert "every page agrees" in r.stdout


def test_the_plot_is_drawn_from_the_figures(data: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra: pip install .[bench]")
    out = tmp_path / "plot.png"
    drawn = [out]
    if data.get("contention"):  # the many-writers plot goes beside it
        drawn.append(tmp_path / "contention.png")
    assert report.plot(data, out) == "plot written to " + " and ".join(map(str, drawn))
    for png in drawn:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------ compare.py writes it


def test_compare_writes_what_report_reads() -> None:
    """The JSON compare.py builds from its measurements (here made up) renders."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import compare
    finally:
        sys.path.remove(str(BENCHMARKS))
    cfg = compare.QUICK
    res = compare.Results()

    def sample(seconds: float, entries: int) -> Any:
        return compare.Sample([seconds, seconds * 1.1, seconds * 0.9], entries)

    for size in cfg.sizes:
        res.seq[("index-writer", size)] = sample(3.3e-5, cfg.writes)
        res.seq[("floor", size)] = sample(2.4e-5, cfg.writes)
        res.seq[("original", size)] = sample(4.4e-6 * size, 3)
        res.first_write[size] = sample(8e-7 * size, 1)
    res.batch = {
        "index-writer": sample(3e-6, cfg.batch_rows),
        "floor": sample(5e-7, cfg.batch_rows),
    }
    res.rss = {
        "index-writer append": {"peak_mb": 29.2, "base_mb": 23.1, "seconds": 0.2},
        "index-writer replace": {"peak_mb": 60.0, "base_mb": 23.1, "seconds": 0.1},
        "original append": {"error": "killed"},
    }
    for n in (cfg.demo_small, cfg.demo_large):
        for impl, s in (("index-writer", 1.3e-3), ("original", 3.7e-3), ("noop", 1.1e-3)):
            res.demo[(impl, n)] = sample(s, n)
            if impl != "noop":
                res.demo_rows[(impl, n)] = [(n, n)]
    facts = compare.machine_facts()
    facts["load_end"] = [1.0, 1.0, 1.0]
    data = compare.results_json(cfg, res, facts, "python benchmarks/compare.py --quick", True, 42)
    data = json.loads(json.dumps(data))  # as written and read back
    assert report.validate(data) == []
    assert [m["write"] for m in data["memory"]] == ["append", "replace"]  # the failed one left out
    assert {d["implementation"] for d in data["demo"]} == {"index-writer", "original", "no-op"}
    for name, fn in report.SECTIONS.items():
        assert isinstance(fn(data, "docs/"), str), name
    table = report.SECTIONS["table"](data, "docs/")
    assert "| ... into 100,000 rows | 0.0330 | 440 | 0.0240 | 13,300× faster |" in table
    assert "quick mode" in report.SECTIONS["source"](data, "")
