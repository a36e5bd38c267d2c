"""The quant and distill groups on the login node (launcher/plan/rules/modelopt.py): each rule refuses its case in
one line naming the field and a fix, and what passes is handed to the recipe as MOE_QAT / MOE_DISTILL."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import make_cfg, plan_for
from launcher.config.cluster import CLUSTER_SCHEMAS
from launcher.errors import ConfigError
from launcher.plan import plan as plan_module
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.plan.rules import RULES
from launcher.plan.rules import modelopt as rules

H200X1 = MachineProbe(gpus=1, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
GPU = ("hardware=h200",)


def _refused(overrides: list[str], probe=None) -> ConfigError:
    cfg = make_cfg(overrides)
    cfg.launch.megatron_validate = False
    with pytest.raises(ConfigError) as e:
        if probe is None:
            plan_for(overrides, validate_megatron=False)
        else:
            build_plan(cfg, probe)
    return e.value


def _teacher(tmp_path: Path, vocab: int = 512) -> Path:
    """A teacher run directory as moe-launch leaves it: config.yaml beside checkpoints/."""
    run = tmp_path / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  vocab_size: {vocab}\n  make_vocab_size_divisible_by: 128\n"
                                     "data:\n  tokenizer_type: NullTokenizer\n")
    return run / "checkpoints"


def test_every_modelopt_rule_is_registered():
    assert all(rule in RULES for rule in rules.MODELOPT_RULES)


def test_qat_and_distill_go_to_the_recipe_as_json(tmp_path):
    plan = plan_for(["quant=int8", "quant.calib_batches=3", "quant.exclude=[*linear_qkv*]"], validate_megatron=False)
    assert json.loads(plan.env["MOE_QAT"]) == {"qat": "int8", "calib_batches": 3, "exclude": ["*linear_qkv*"]}
    assert "MOE_DISTILL" not in plan.env and "MOE_QAT" not in plan_for([], validate_megatron=False).env
    teacher = _teacher(tmp_path)
    plan = plan_for(["distill=kd", f"distill.teacher_checkpoint={teacher}", "distill.temperature=2.0",
                     "distill.layer_pairs=[[decoder.layers.1,decoder.layers.3]]"], validate_megatron=False)
    d = json.loads(plan.env["MOE_DISTILL"])
    assert d == {"teacher_checkpoint": str(teacher), "temperature": 2.0,
                 "layer_pairs": [["decoder.layers.1", "decoder.layers.3"]], "layer_weight": 1.0, "lm_loss_weight": 0.0}


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(rules.importlib.util, "find_spec", lambda name: None)
    e = _refused(["quant=fp8"])
    assert e.field == "quant.qat" and "pip install -e '.[modelopt]'" in str(e)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8"])
def test_gpu_only_formats_are_refused_on_cpu(fmt):
    e = _refused([f"quant={fmt}"])
    assert e.field == "quant.qat" and "CUDA only" in str(e)


def test_gpu_only_formats_need_compute_capability_8_9():
    e = _refused(["quant=nvfp4", *GPU, "hardware.compute_capability='8.0'"], H200X1)
    assert re.search(r"compute capability 8\.9 or newer; hardware h200 is 8\.0", str(e))
    assert "MOE_QAT" in build_plan(make_cfg(["quant=nvfp4", *GPU, "launch.megatron_validate=false"]), H200X1).env


def test_qat_inside_te_fp8_training_is_refused():
    e = _refused(["quant=fp8", *GPU, "precision=fp8_tensorwise"], H200X1)
    assert e.field == "quant.qat" and "Transformer Engine's FP8 training" in str(e)


def test_qat_refuses_the_torch_experts_and_auto_picks_te():
    e = _refused(["quant=fp8", *GPU, "model.moe_grouped_gemm_impl=torch"], H200X1)
    assert e.field == "model.moe_grouped_gemm_impl" and "cannot quantize the torch grouped-GEMM experts" in str(e)
    plan = build_plan(make_cfg(["quant=fp8", *GPU, "launch.megatron_validate=false"]), H200X1)
    assert plan.resolved.tuned.moe_grouped_gemm_impl == "te"
    assert any("quant.qat=fp8" in n for n in plan.resolved.notes)
    assert build_plan(make_cfg([*GPU, "launch.megatron_validate=false"]),
                      H200X1).resolved.tuned.moe_grouped_gemm_impl == "torch"  # without QAT: the tuned choice


def test_qat_with_local_experts_refuses_tp_and_ep_together():
    probe = MachineProbe(gpus=4, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
    e = _refused(["quant=fp8", *GPU, "model.transformer_impl=local", "parallel.tp=2", "parallel.ep=2"], probe)
    assert e.field == "parallel.tp" and "TP and EP > 1 together" in str(e)


def test_qat_refuses_virtual_pipeline_stages():
    e = _refused(["quant=fp8", "cluster.nproc_cpu=2", "parallel.pp=2", "parallel.vpp=2"])
    assert e.field == "parallel.vpp" and "one model chunk" in str(e)


def test_modelopt_refuses_megatron_fsdp():
    e = _refused(["quant=fp8", *GPU, "parallel.use_megatron_fsdp=true"], H200X1)
    assert e.field == "quant.qat" and "Megatron FSDP" in str(e)


def test_qat_needs_a_calibration_batch():
    assert _refused(["quant=fp8", "quant.calib_batches=0"]).field == "quant.calib_batches"


def test_qat_and_distillation_together_are_refused(tmp_path):
    e = _refused(["quant=fp8", "distill=kd", f"distill.teacher_checkpoint={_teacher(tmp_path)}"])
    assert e.field == "quant.qat" and "not supported" in str(e)


def test_distillation_needs_an_existing_teacher(tmp_path):
    assert "needs the teacher's checkpoint" in str(_refused(["distill=kd"]))
    e = _refused(["distill=kd", f"distill.teacher_checkpoint={tmp_path / 'nothing'}"])
    assert "does not exist on this machine" in str(e)
    e = _refused([f"distill.teacher_checkpoint={_teacher(tmp_path)}"])
    assert "is set while distillation is off" in str(e) and "distill=kd" in str(e)


@pytest.mark.parametrize("override,field", [("distill.temperature=0", "distill.temperature"),
                                            ("distill.layer_weight=-1", "distill.layer_weight"),
                                            ("distill.lm_loss_weight=-0.5", "distill.lm_loss_weight"),
                                            ("distill.layer_pairs=[[decoder.layers.1]]", "distill.layer_pairs")])
def test_distillation_values(tmp_path, override, field):
    assert _refused(["distill=kd", f"distill.teacher_checkpoint={_teacher(tmp_path)}", override]).field == field


def test_distillation_refuses_pipeline_parallelism(tmp_path):
    e = _refused(["distill=kd", f"distill.teacher_checkpoint={_teacher(tmp_path)}", "cluster.nproc_cpu=2",
                  "parallel.pp=2"])
    assert e.field == "parallel.pp" and "one pipeline stage" in str(e)


def test_distillation_refuses_the_ep_overlap_and_auto_leaves_it_off(tmp_path):
    teacher = _teacher(tmp_path)
    probe = MachineProbe(gpus=2, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
    base = ["distill=kd", f"distill.teacher_checkpoint={teacher}", *GPU, "parallel=ep2", "train.micro_batch_size=1"]
    e = _refused([*base, "dispatcher.overlap_moe_expert_parallel_comm=true"], probe)
    assert e.field == "dispatcher.overlap_moe_expert_parallel_comm"
    plan = build_plan(make_cfg([*base, "launch.megatron_validate=false"]), probe)
    assert plan.resolved.tuned.overlap_moe_expert_parallel_comm is False


def test_a_teacher_of_another_vocabulary_is_refused(tmp_path):
    e = _refused(["distill=kd", f"distill.teacher_checkpoint={_teacher(tmp_path, vocab=1000)}"])
    assert e.field == "distill.teacher_checkpoint"
    assert "pads to 1024" in str(e) and "the student's to 512" in str(e) and "model.vocab_size=1000" in str(e)
    plan_for(["distill=kd", f"distill.teacher_checkpoint={_teacher(tmp_path / 'same', vocab=500)}"],
             validate_megatron=False)  # 500 and 512 pad to the same 512


def test_padded_vocab_is_megatrons():
    from launcher.plan.vocab import padded  # the one padding every rule uses (the distillation vocabulary check too)

    assert padded(151936, 128, 1) == 151936 and padded(151937, 128, 2) == 152064


def test_dry_run_says_what_modelopt_will_do(tmp_path):
    from launcher.cli import _modelopt_lines

    lines = _modelopt_lines(make_cfg(["quant=fp8"]))
    assert len(lines) == 1 and lines[0].startswith("  quant:    fp8 fake-quant QAT") and "*router*" in lines[0]
    assert _modelopt_lines(make_cfg([])) == []
    assert CLUSTER_SCHEMAS and plan_module.modelopt_env(make_cfg([])) == {}
