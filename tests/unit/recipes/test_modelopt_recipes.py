"""recipes/qat.py and recipes/distill.py without a training run: what they read from the launcher, the modelopt
config they build, the checkpoint they pick and how the KD loss is put together (the runs: tests/e2e/
test_modelopt_cpu.py)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from recipes import distill, qat


def test_qat_spec_from_the_launchers_json(monkeypatch):
    monkeypatch.delenv(qat.ENV, raising=False)
    assert qat.spec_from_env() is None
    monkeypatch.setenv(qat.ENV, json.dumps({"qat": "none", "calib_batches": 4, "exclude": []}))
    assert qat.spec_from_env() is None
    monkeypatch.setenv(qat.ENV, json.dumps({"qat": "fp8", "calib_batches": 3, "exclude": ["*router*"]}))
    assert qat.spec_from_env() == qat.QatSpec("fp8", 3, ("*router*",))


def test_quant_config_is_modelopts_with_the_exclusions_last():
    import modelopt.torch.quantization as mtq

    cfg = qat.quant_config(qat.QatSpec("fp8", 1, ("*linear_qkv*",)))
    assert cfg["quant_cfg"][:-1] == mtq.FP8_DEFAULT_CFG["quant_cfg"]  # the default, untouched (a copy)
    assert cfg["quant_cfg"][-1] == {"quantizer_name": "*linear_qkv*", "enable": False}
    assert cfg["quant_cfg"] is not mtq.FP8_DEFAULT_CFG["quant_cfg"]


def test_excluded_modules_stay_unquantized_and_the_rest_calibrate():
    import modelopt.torch.quantization as mtq

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.router, self.keep_bf16 = (torch.nn.Linear(8, 8) for _ in range(3))

        def forward(self, x):
            return self.keep_bf16(self.router(self.proj(x)))

    model = Toy()
    x = torch.randn(4, 8)
    mtq.quantize(model, qat.quant_config(qat.QatSpec("int8", 1, ("*keep_bf16*",))), lambda m: m(x))
    assert model.proj.weight_quantizer.is_enabled and model.proj.input_quantizer.amax is not None
    assert not model.router.weight_quantizer.is_enabled  # modelopt's default exclusion
    assert not model.keep_bf16.weight_quantizer.is_enabled  # ours


def test_qat_loads_the_checkpoint_megatron_loads(tmp_path):
    args = argparse.Namespace(load=None, ckpt_step=None)
    assert qat.checkpoint_to_load(args) is None
    (tmp_path / "iter_0000004").mkdir()
    (tmp_path / "iter_0000008").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("8")
    args.load = str(tmp_path)
    assert qat.checkpoint_to_load(args) == str(tmp_path / "iter_0000008")
    args.ckpt_step = 4  # the launcher skips a newer incomplete save with --ckpt-step
    assert qat.checkpoint_to_load(args) == str(tmp_path / "iter_0000004")


def test_distill_spec_from_the_launchers_json(monkeypatch):
    monkeypatch.delenv(distill.ENV, raising=False)
    assert distill.spec_from_env() is None
    monkeypatch.setenv(distill.ENV, json.dumps({"teacher_checkpoint": "/t", "temperature": 2, "layer_pairs":
                                                [["decoder.layers.1", "decoder.layers.3"]], "layer_weight": 0.5,
                                                "lm_loss_weight": 0}))
    assert distill.spec_from_env() == distill.DistillSpec("/t", 2.0, (("decoder.layers.1", "decoder.layers.3"),),
                                                          0.5, 0.0)


def test_teacher_dir_is_a_save_directorys_newest_or_an_iteration_directory(tmp_path):
    assert distill.teacher_dir(str(tmp_path)) is None
    it = tmp_path / "iter_0000010"
    it.mkdir()
    (it / "metadata.json").write_text("{}")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    assert distill.teacher_dir(str(tmp_path)) == str(it)
    assert distill.teacher_dir(str(it)) == str(it)


@pytest.mark.parametrize("lm_weight,layer_weight,pairs", [(0.0, 1.0, 0), (0.5, 2.0, 2)])
def test_kd_loss_is_logits_plus_weighted_layers_plus_weighted_lm(lm_weight, layer_weight, pairs):
    from modelopt.torch.distill.loss_balancers import STUDENT_LOSS_KEY

    losses = {STUDENT_LOSS_KEY: torch.tensor(6.0), "LogitsKLLoss_0": torch.tensor(0.25)}
    losses.update({f"HiddenStateCosineLoss_{i + 1}": torch.tensor(0.1 * (i + 1)) for i in range(pairs)})
    spec = distill.DistillSpec("/t", 1.0, (("a", "b"),) * pairs, layer_weight, lm_weight)
    total, logits, layer = distill.combine(dict(losses), spec)
    mean_layer = 0.15 if pairs else 0.0  # (0.1 + 0.2) / 2
    assert float(logits) == 0.25 and float(layer) == pytest.approx(mean_layer)
    assert float(total) == pytest.approx(0.25 + layer_weight * mean_layer + lm_weight * 6.0)


def test_the_teacher_takes_its_architecture_from_its_checkpoint_and_the_layout_from_the_student(monkeypatch):
    saved = argparse.Namespace(num_layers=4, hidden_size=256, num_experts=16, padded_vocab_size=512,
                               tensor_model_parallel_size=8, expert_model_parallel_size=8, lr=1.0)
    student = argparse.Namespace(num_layers=2, hidden_size=128, num_experts=8, padded_vocab_size=512,
                                 tensor_model_parallel_size=1, expert_model_parallel_size=2, lr=3e-3)
    import megatron.core.dist_checkpointing as dc

    monkeypatch.setattr(dc, "load_common_state_dict", lambda path: {"args": saved})
    t = distill.teacher_args(student, "/t")
    assert (t.num_layers, t.hidden_size, t.num_experts) == (4, 256, 16)
    assert (t.tensor_model_parallel_size, t.expert_model_parallel_size, t.lr) == (1, 2, 3e-3)
    assert student.num_layers == 2  # a copy
