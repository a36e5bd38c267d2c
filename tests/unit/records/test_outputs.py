"""Commands never destroy what they did not make (issue 15): results, compare, moe-bench --summarize and
presets --readme refuse to rewrite the repository's committed perf_results/ or README.md without
--perf-results, write beside the runs they read by default, and leave the committed files byte for byte."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from launcher.records import compare, results
from launcher.records.outputs import PERF_RESULTS, REPO, is_committed_output, refuse_committed
from launcher.tools import bench, presets

RUNS = PERF_RESULTS / "runs"
RUN = RUNS / "qwen3_30b_a3b_8l_ep2_forced_balance"


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _committed() -> list[Path]:
    files = [PERF_RESULTS / "README.md", REPO / "README.md", *sorted((PERF_RESULTS / "plots").glob("*.png"))]
    files += sorted(RUNS.glob("*/record.json")) + sorted(RUNS.glob("*/record.md"))
    files += sorted((PERF_RESULTS / "compare").glob("*.md")) + sorted(PERF_RESULTS.glob("bench/*/bench.json"))
    return files


def test_what_counts_as_committed(tmp_path):
    assert is_committed_output(PERF_RESULTS / "README.md") and is_committed_output(REPO / "README.md")
    assert is_committed_output(PERF_RESULTS / "plots")  # a directory holding committed files
    assert not is_committed_output(PERF_RESULTS / "results" / "README.md")  # new files there are fine
    assert not is_committed_output(tmp_path / "README.md")
    assert refuse_committed("t", [PERF_RESULTS / "README.md"], allowed=True) is None
    line = refuse_committed("t", [None, tmp_path / "x", PERF_RESULTS / "README.md"], allowed=False)
    assert line and "--perf-results" in line and "README.md" in line and "\n" not in line


def test_results_on_committed_runs_writes_beside_them_and_touches_nothing_committed(tmp_path, capsys):
    before = _digest(_committed())
    out = tmp_path / "res"
    assert results.main([str(RUN), "--out", str(out), "--no-plots"]) == 0
    assert RUN.name in (out / "README.md").read_text()  # its row links the run's record
    assert _digest(_committed()) == before


def test_results_default_is_results_beside_the_first_run(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RUN, runs / RUN.name)
    assert results.main([str(runs / RUN.name), "--no-plots"]) == 0
    assert (runs / "results" / "README.md").exists()


def test_results_refuses_committed_destinations_without_the_switch(capsys):
    before = _digest(_committed())
    for args in (["--readme", str(PERF_RESULTS / "README.md")], ["--summary", str(REPO / "README.md")],
                 ["--plots", str(PERF_RESULTS / "plots"), "--readme", "/nonexistent-dir-for-test/README.md"]):
        assert results.main([str(RUN), *args]) == 2
        err = capsys.readouterr().err
        assert "committed result" in err and "--perf-results" in err and err.count("\n") == 1
    assert _digest(_committed()) == before


def test_compare_refuses_to_overwrite_a_committed_comparison(capsys):
    target = sorted((PERF_RESULTS / "compare").glob("*.md"))[0]
    before = target.read_bytes()
    assert compare.main([str(RUN), "--ref", "issue6_h200x2_qwen3_30b_a3b_8l_ep2_forced_balance",
                         "--out", str(target)]) == 2
    assert "--perf-results" in capsys.readouterr().err and target.read_bytes() == before


def test_bench_summarize_refuses_a_committed_bench_dir(capsys):
    d = sorted(PERF_RESULTS.glob("bench/*/bench.json"))[0].parent
    before = _digest([d / "bench.json", d / "bench.md"])
    assert bench.main(["--summarize", str(d)]) == 2
    assert "--perf-results" in capsys.readouterr().err
    assert _digest([d / "bench.json", d / "bench.md"]) == before


def test_presets_readme_refuses_the_project_readme_but_writes_a_copy(tmp_path, capsys):
    before = (REPO / "README.md").read_bytes()
    assert presets.main(["--readme", str(REPO / "README.md")]) == 2
    assert "--perf-results" in capsys.readouterr().err and (REPO / "README.md").read_bytes() == before
    copy = tmp_path / "README.md"
    copy.write_bytes(before)
    assert presets.main(["--readme", str(copy)]) == 0 and copy.read_bytes() == before  # up to date: same bytes
