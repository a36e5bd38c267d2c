"""train.checkpoint.init_from (launcher/plan/rules/init_from.py, the flag table, plan/checkpoint.py): Megatron's
--pretrained-checkpoint, checked before launch against what moe-convert import recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg, plan_for
from launcher.errors import ConfigError
from launcher.plan.checkpoint import ResumePoint, checkpointing
from launcher.plan.resolve import resolve
from launcher.plan.rules import validate

QWEN4 = ["model=qwen3_30b_a3b", "model.num_layers=4", "launch.skip_memory_check=true", "cluster.device=cpu"]


def _imported(tmp_path: Path, model: dict | None = None, padded: int = 151936) -> Path:
    d = tmp_path / "imported"
    (d / "iter_0000000").mkdir(parents=True)
    (d / "iter_0000000" / "metadata.json").write_text("{}")
    (d / "latest_checkpointed_iteration.txt").write_text("0")
    if model is not None:
        (d / "convert.json").write_text(json.dumps({"model": model, "padded_vocab": padded}))
    return d


def _model(overrides: list[str]) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(make_cfg(overrides).model), default=str))


def _check(overrides: list[str]) -> None:
    cfg = make_cfg(overrides)
    validate(cfg, resolve(cfg, PROBE))


def test_init_from_is_megatrons_pretrained_checkpoint(tmp_path):
    d = _imported(tmp_path)
    argv = plan_for([*QWEN4, f"train.checkpoint.init_from={d}"], validate_megatron=False).argv
    assert argv[argv.index("--pretrained-checkpoint") + 1] == str(d)


def test_the_runs_own_checkpoint_wins_and_says_so(tmp_path):
    cfg = make_cfg([*QWEN4, f"train.checkpoint.init_from={tmp_path}"])
    res = resolve(cfg, PROBE)
    fresh = checkpointing(cfg, res, tmp_path / "run")
    assert fresh.load == str((tmp_path / "run" / "checkpoints").absolute())  # empty: Megatron takes init_from
    assert any("starting from the weights in" in n for n in fresh.notes)
    resumed = checkpointing(cfg, res, tmp_path / "run", ResumePoint(str(tmp_path / "run" / "checkpoints"), 30, 30))
    assert resumed.resumed_from == 30 and not any("starting from" in n for n in resumed.notes)


def test_a_directory_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        _check([*QWEN4, f"train.checkpoint.init_from={tmp_path}"])
    assert e.value.field == "train.checkpoint.init_from" and "latest_checkpointed_iteration.txt missing" in str(e.value)
    with pytest.raises(ConfigError, match="holds no Megatron checkpoint"):
        _check([*QWEN4, f"train.checkpoint.init_from={tmp_path / 'absent'}"])


def test_the_imported_model_must_be_this_model(tmp_path):
    d = _imported(tmp_path, _model(QWEN4))
    _check([*QWEN4, f"train.checkpoint.init_from={d}", "model.rotary_base=5000000"])  # no shape: allowed
    with pytest.raises(ConfigError) as e:
        _check([*QWEN4, f"train.checkpoint.init_from={d}", "model.num_experts=64"])
    assert str(e.value).startswith("model.num_experts=64: the checkpoint in")
    assert "model.num_experts=128" in str(e.value)


def test_the_padded_vocabulary_at_this_tp_must_match_the_import(tmp_path):
    d = _imported(tmp_path, _model(QWEN4))
    tp2 = ["model=qwen3_30b_a3b", "model.num_layers=4", "launch.skip_memory_check=true", "cluster.gpus_per_node=2",
           f"train.checkpoint.init_from={d}", "parallel.tp=2", "model.make_vocab_size_divisible_by=128"]
    with pytest.raises(ConfigError) as e:
        _check(tp2)  # 151936 = 1187 x 128: TP 2 pads it to 152064
    assert "152064 rows at TP 2" in str(e.value) and "model.make_vocab_size_divisible_by=64" in str(e.value)
