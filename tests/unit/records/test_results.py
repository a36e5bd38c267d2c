"""perf_results/ is generated: its tables come from the run directories and references.yaml, with the
published table's columns; the committed README blocks equal what the command writes now."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from launcher.records import results
from launcher.records.compare import entry_from_record, load_references
from launcher.records.record import build_record

ROOT = Path(__file__).resolve().parents[3]
PERF = ROOT / "perf_results"
SEED = ROOT.parent / "shared" / "seeds" / "000_60544ec4f5cf3959.txt"


def _copy_perf(tmp_path: Path) -> Path:
    dst = tmp_path / "perf_results"
    for run in sorted((PERF / "runs").iterdir()):
        (dst / "runs" / run.name).mkdir(parents=True)
        for f in run.iterdir():
            if f.is_dir():  # attempts/N of a relaunched run (moe-launch keeps every earlier attempt)
                shutil.copytree(f, dst / "runs" / run.name / f.name)
            elif f.name not in ("record.json", "record.md"):
                shutil.copy(f, dst / "runs" / run.name / f.name)
    shutil.copy(PERF / "README.md", dst / "README.md")
    shutil.copy(PERF / "references.yaml", dst / "references.yaml")
    if (PERF / "compare").is_dir():
        shutil.copytree(PERF / "compare", dst / "compare")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return dst


def test_columns_are_the_published_tables():
    assert len(results.COLUMNS) == 25
    if SEED.exists():
        header = next(line for line in SEED.read_text().splitlines() if line.startswith("| Model | Dispatcher"))
        assert [c.strip() for c in header.strip("|").split("|")] == results.COLUMNS


def test_row_of_a_run_and_of_a_reference():
    e = entry_from_record(build_record(PERF / "runs" / "qwen3_30b_a3b_8l_ep2_forced_balance"))
    cells = dict(zip(results.COLUMNS, results.row(e, "runs/x/record.md")))
    assert cells["Model"] == "qwen3_30b_a3b (8 of 48 layers)" and cells["Dispatcher"] == "A2A"
    assert (cells["System"], cells["Precision"], cells["#GPUs"], cells["SEQ LEN"]) == ("H200", "BF16", "2", "4096")
    assert (cells["EP"], cells["EDP"], cells["DP"], cells["FSDP"], cells["GA"]) == ("2", "1", "2", "/", "4")
    assert cells["MFU"].endswith("%") and "forced balance" in cells["Notes"] and "mcore 0.19.2" in cells["Code"]
    ref = load_references()["seed000_qwen3_235b_deepep_pp8_vpp4_ep32"]
    cells = dict(zip(results.COLUMNS, results.row(ref)))
    assert (cells["Per GPU TF"], cells["Step time (sec)"], cells["GA"], cells["Code"]) == \
        ("245", "19.70", "128", "moe_dev(f3e6c5)")
    assert "source: seed 000_60544ec4f5cf3959.txt" in cells["Notes"]


def test_a_run_that_cut_the_experts_says_so():
    """The one-GPU stand-in for an EP2 rank holds 64 of Qwen3-30B-A3B's 128 experts: its row and record must
    not read as the model's own 8-layer shape."""
    r = build_record(PERF / "runs" / "issue17_q30b_8l_rank_of_ep2_forced_balance_mbs8")
    assert (r["model"]["num_experts"], r["model"]["full_num_experts"]) == (64, 128)
    cells = dict(zip(results.COLUMNS, results.row(entry_from_record(r), "runs/x/record.md")))
    assert cells["Model"] == "qwen3_30b_a3b (8 of 48 layers, 64 of 128 experts)"
    assert "| model | qwen3_30b_a3b (8 of 48 layers, 64 of 128 experts, top-8) |" in \
        (PERF / "runs" / "issue17_q30b_8l_rank_of_ep2_forced_balance_mbs8" / "record.md").read_text()


def test_replace_block_is_idempotent():
    t = results.replace_block("# x\n", "results", "| a |")
    assert results.replace_block(t, "results", "| a |") == t
    assert results.replace_block(t, "results", "| b |").count("results:begin") == 1


def test_committed_tables_are_what_the_command_generates(tmp_path):
    dst = _copy_perf(tmp_path)
    runs = sorted(str(p) for p in (dst / "runs").iterdir())
    assert results.main([*runs, "--readme", str(dst / "README.md"), "--references", str(dst / "references.yaml"),
                         "--compare-dir", str(dst / "compare"), "--summary", str(tmp_path / "README.md"),
                         "--no-plots"]) == 0
    assert (dst / "README.md").read_text() == (PERF / "README.md").read_text()
    block = re.compile(r"<!-- measured:begin.*?<!-- measured:end -->", re.S)
    assert block.search((ROOT / "README.md").read_text()).group(0) == \
        block.search((tmp_path / "README.md").read_text()).group(0)
    for run in (dst / "runs").iterdir():
        assert (run / "record.json").read_text() == (PERF / "runs" / run.name / "record.json").read_text()


def test_plots_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    recs = [build_record(PERF / "runs" / n) for n in ("qwen3_30b_a3b_8l_ep2_dropless", "tiny_moe_1gpu")]
    pngs = [results.plot_run(recs[0], tmp_path / "a.png"), results.plot_all(recs, tmp_path / "b.png"),
            results.plot_across(recs, load_references(), tmp_path / "c.png")]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    for name in ("throughput_across_runs", "loss_and_throughput_all_runs"):
        assert (PERF / "plots" / f"{name}.png").exists()
