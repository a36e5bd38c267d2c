"""moe-tune's greedy chain: what is kept, what is not, resume, inheritance (runs faked by record files)."""
from __future__ import annotations

import json

import pytest

from conftest import make_cfg
from launcher.tools import tune
from launcher.errors import ConfigError

DOC = {"base": ["model=tiny_moe", "train.micro_batch_size=1"],
       "steps": [{"name": "fusions", "overrides": ["dispatcher.permute_fusion=true"]},
                 {"name": "micro batch", "options": {"mbs2": ["train.micro_batch_size=2"],
                                                     "mbs4": ["train.micro_batch_size=4"]}},
                 {"name": "noise", "overrides": ["train.manual_gc=false"]},
                 {"name": "oom", "overrides": ["train.micro_batch_size=64"]}]}
# tokens/s/GPU each attempt would measure, by the setting that distinguishes it
SPEED = {"baseline": 100.0, "fusions": 110.0, "mbs2": 150.0, "mbs4": 140.0, "noise": 150.5, "oom": None}


def fake_launch(calls):
    """Writes the record an attempt would leave, its speed looked up by the attempt's name."""
    def launch(overrides, run_dir):
        calls.append(overrides)
        name = run_dir.name.split("_", 1)[1].removeprefix("micro_batch_")
        value = SPEED[name]
        run_dir.mkdir(parents=True)
        ok = value is not None
        (run_dir / "record.json").write_text(json.dumps({
            "status": "ok" if ok else "failed", "failure": None if ok else {"class": "oom", "kind": "cuda"},
            "steady_state": {"tokens_per_s_per_gpu": {"median": value, "cv_pct": 1.0},
                             "peak_memory_mb": {"max_allocated_mb": 1024.0}} if ok else {}}))
        return 0 if ok else 1
    return launch


def test_greedy_chain_keeps_only_real_gains(tmp_path):
    calls: list[list[str]] = []
    doc = tune.Tuner(DOC, tmp_path, ["cluster.master_port=29600"], "tokens_per_s_per_gpu", 0.01,
                     fake_launch(calls)).run()
    kept = {a["name"]: a["kept"] for a in doc["attempts"]}
    assert kept == {"00_baseline": True, "01_fusions": True, "02_micro_batch_mbs2": True,
                    "03_micro_batch_mbs4": False, "04_noise": False, "05_oom": False}
    assert doc["best"] == 150.0  # 150.5 is within the 1% threshold: noise is not kept
    assert doc["kept_overrides"] == ["model=tiny_moe", "dispatcher.permute_fusion=true", "train.micro_batch_size=2"]
    # each attempt stacks on what was kept; command-line overrides and no double validation come last
    assert calls[3][-2:] == ["cluster.master_port=29600", "launch.megatron_validate=false"]
    assert "train.micro_batch_size=2" in calls[4] and "dispatcher.permute_fusion=true" in calls[4]
    failed = next(a for a in doc["attempts"] if a["name"] == "05_oom")
    assert failed["status"] == "failed" and failed["failure"] == "oom/cuda"
    log = (tmp_path / "tuning_log.md").read_text()
    assert "| 02_micro_batch_mbs2 |" in log and "failed (oom/cuda)" in log


def test_measure_reads_a_real_failed_record():
    """The failure class comes from what launcher.records.record writes (its "class" and "kind" keys)."""
    from pathlib import Path

    run = Path(__file__).resolve().parents[3] / "perf_results" / "runs" / "qwen3_30b_a3b_4l_1gpu_mbs4"
    m = tune.measure(run, "tokens_per_s_per_gpu")
    assert m["status"] == "failed" and m["failure"] == "oom/cuda" and m["value"] is None


def test_resume_runs_nothing_twice(tmp_path):
    calls: list[list[str]] = []
    tune.Tuner(DOC, tmp_path, [], "tokens_per_s_per_gpu", 0.01, fake_launch(calls)).run()
    n = len(calls)
    again = tune.Tuner(DOC, tmp_path, [], "tokens_per_s_per_gpu", 0.01, fake_launch(calls)).run()
    assert len(calls) == n and again["best"] == 150.0


def test_merge_and_inherit(tmp_path):
    assert tune.merge(["a=1", "b=2"], ["++a=3"]) == ["b=2", "++a=3"]
    (tmp_path / "t.json").write_text(json.dumps({"base": ["model=x", "train.micro_batch_size=1"],
                                                 "kept_overrides": ["model=x", "train.micro_batch_size=8",
                                                                    "dispatcher.permute_fusion=true"]}))
    assert tune.inherited(tmp_path / "t.json", ["train.micro_batch_size"]) == ["dispatcher.permute_fusion=true"]


def test_bad_tuning_file_is_refused(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("base: [a=1]\nsteps:\n  - name: x\n")
    with pytest.raises(ConfigError, match="overrides"):
        tune.load_steps(p)
    assert tune.main([str(p), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("text,rule", [
    (None, "cannot be read"), ("base: [", "does not parse"), ("just a string", "a 'base' list"),
])
def test_a_tuning_file_that_is_missing_or_not_one_is_one_line(tmp_path, capsys, text, rule):
    p = tmp_path / "t.yaml"
    if text is not None:
        p.write_text(text)
    with pytest.raises(ConfigError, match=rule) as e:
        tune.load_steps(p)
    assert e.value.field == "steps" and "\n" not in str(e.value)
    assert tune.main([str(p), "--out", str(tmp_path / "o")]) == 2 and "Traceback" not in capsys.readouterr().err


def test_an_out_directory_or_inherited_chain_that_does_not_work_is_one_line(tmp_path, capsys):
    good = tmp_path / "t.yaml"
    good.write_text("base: [model=tiny_moe]\nsteps: []\n")
    blocker = tmp_path / "file"
    blocker.write_text("not json")
    assert tune.main([str(good), "--out", str(blocker / "o")]) == 2
    assert "moe-tune: error: --out=" in capsys.readouterr().err
    assert tune.main([str(good), "--out", str(tmp_path / "o"), "--inherit", str(blocker)]) == 2
    assert "moe-tune: error: --inherit=" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a moe-tune tune.json"):
        tune.inherited(tmp_path / "other.json", [])


def test_committed_tuning_files_load():
    from pathlib import Path

    for p in (Path(__file__).resolve().parents[3] / "perf_results" / "tuning").glob("*.yaml"):
        doc = tune.load_steps(p)
        # the base composes (a preset or groups) into the Qwen3-30B-A3B shape each chain documents
        assert make_cfg(doc["base"]).model.name == "qwen3_30b_a3b", p.name
