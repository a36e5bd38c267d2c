"""Comparison of a run with a reference: ratios and the like-for-like check."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from launcher.records import compare
from launcher.records.compare import entry_from_record, like_for_like, load_references, ratios, render
from launcher.records.record import build_record

ROOT = Path(__file__).resolve().parents[3]
RUNS = ROOT / "perf_results" / "runs"
SEEDS = ROOT.parent / "shared" / "seeds"


@pytest.fixture(scope="module")
def refs():
    return load_references()


@pytest.fixture(scope="module")
def runs():
    return {n: entry_from_record(build_record(RUNS / n)) for n in
            ("qwen3_30b_a3b_8l_ep2_dropless", "qwen3_30b_a3b_8l_ep2_forced_balance")}


def test_references_name_their_source():
    raw = yaml.safe_load((ROOT / "perf_results" / "references.yaml").read_text())["references"]
    ids = [r["id"] for r in raw]
    assert len(ids) == len(set(ids))
    for r in raw:
        assert r.get("source"), r["id"]
        assert r["source"].startswith(("issue ", "seed ")), r["id"]
        m = re.search(r"seed (\d{3}_[0-9a-f]+\.txt)", r["source"])
        if m and SEEDS.is_dir():
            assert (SEEDS / m.group(1)).exists(), r["source"]
        assert r.get("tflops_per_gpu") or r.get("tokens_per_s_per_gpu"), r["id"]


def test_like_for_like_with_its_issue6_reference(runs, refs):
    run, ref = runs["qwen3_30b_a3b_8l_ep2_dropless"], refs["issue6_h200x2_qwen3_30b_a3b_8l_ep2_dropless"]
    c = like_for_like(run, ref)
    assert c["like_for_like"] and all(s == "same" for *_, s in c["critical"])
    tf = next(r for r in ratios(run, ref) if r[0] == "TFLOP/s/GPU")
    assert tf[3] == pytest.approx(run["tflops_per_gpu"] / 170, rel=1e-3)
    assert ref["mfu"] == pytest.approx(170 / 989.0, rel=1e-3)      # computed against conf/hardware/h200.yaml
    text = render(run, ref)
    assert "**Like for like**" in text and "not stated" in text    # the issue gives no tokens/s for dropless


def test_a_run_with_fewer_experts_matches_no_reference(refs):
    """Same model name, layers and GPUs as a reference, but 64 of the 128 experts: not the same shape."""
    cut = entry_from_record(build_record(RUNS / "issue17_q30b_8l_rank_of_ep2_forced_balance_mbs8"))
    assert cut["num_experts"] == 64 and compare.matching_references(cut, refs) == []
    same = dict(cut, num_experts=128, full_num_experts=128, gpus=2)
    ref = refs["issue6_h200x2_qwen3_30b_a3b_8l_ep2_dropless"]
    assert compare.matching_references(same, {"r": ref}) == compare.matching_references(
        dict(same, num_experts=None, full_num_experts=None), {"r": ref})


def test_routing_difference_is_flagged(runs):
    text = render(runs["qwen3_30b_a3b_8l_ep2_forced_balance"], runs["qwen3_30b_a3b_8l_ep2_dropless"])
    assert "**NOT like for like**: routing mode differs (forced_balance vs dropless)" in text
    assert "| megatron-core | 0.19.2 | 0.19.2 | same |" in text      # run vs run also compares versions


def test_gpu_precision_seq_and_unknowns_are_flagged(runs, refs):
    run = dict(runs["qwen3_30b_a3b_8l_ep2_forced_balance"])
    c = like_for_like(run, refs["issue7_nemo_automodel_h100x8_qwen3_30b_a3b"])
    states = {k: s for k, _, _, s in c["critical"]}
    assert not c["like_for_like"]
    assert states == {"routing": "unknown", "precision": "same", "system": "differs", "seq_length": "unknown"}
    other = dict(run, precision="fp8-blockwise", seq_length=8192)
    states = {k: s for k, _, _, s in like_for_like(other, run)["critical"]}
    assert states["precision"] == "differs" and states["seq_length"] == "differs"
    text = render(run, refs["issue7_nemo_automodel_h100x8_qwen3_30b_a3b"])
    assert "models differ in size" in text and "GPU differs (h200 vs h100)" in text


def test_cli_writes_the_report_and_refuses_unknown_ids(tmp_path, capsys):
    out = tmp_path / "c.md"
    assert compare.main([str(RUNS / "qwen3_30b_a3b_8l_ep2_forced_balance"), "--ref",
                         "issue6_h200x2_qwen3_30b_a3b_8l_ep2_forced_balance", "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    with pytest.raises(SystemExit, match="did you mean issue6_h200x2"):
        compare.main([str(RUNS / "qwen3_30b_a3b_8l_ep2_dropless"), "--ref", "issue6_h200x2"])
    assert compare.main(["--list"]) == 0 and "issue7_nemo_automodel" in capsys.readouterr().out
