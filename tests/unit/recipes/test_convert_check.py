"""recipes/convert_check.py reads a modelopt FP8 export for transformers by applying the per-tensor weight
scales (transformers 5.17 does not know quant_method=modelopt and would load the FP8 bytes unscaled)."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")

from recipes.convert_check import dequantized_copy  # noqa: E402


def test_fp8_weights_are_scaled_back_and_activation_scales_dropped(tmp_path):
    src = tmp_path / "fp8"
    src.mkdir()
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    scale = torch.tensor(0.01)
    safetensors.save_file({"model.layers.0.mlp.experts.0.up_proj.weight": (w / scale).to(torch.float8_e4m3fn),
                           "model.layers.0.mlp.experts.0.up_proj.weight_scale": scale,
                           "model.layers.0.mlp.experts.0.up_proj.input_scale": torch.tensor(0.1),
                           "lm_head.weight": w.to(torch.bfloat16)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"architectures": ["Qwen3MoeForCausalLM"],
                                                 "quantization_config": {"quant_method": "modelopt"}}))
    out = dequantized_copy(src, tmp_path / "bf16")
    t = safetensors.load_file(str(out / "model.safetensors"))
    assert sorted(t) == ["lm_head.weight", "model.layers.0.mlp.experts.0.up_proj.weight"]
    assert torch.allclose(t["model.layers.0.mlp.experts.0.up_proj.weight"].float(), w, rtol=0.07)
    assert t["model.layers.0.mlp.experts.0.up_proj.weight"].dtype == torch.bfloat16
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_fp8_without_its_scale_is_refused(tmp_path):
    src = tmp_path / "fp8"
    src.mkdir()
    safetensors.save_file({"a.weight": torch.ones(2, 2).to(torch.float8_e4m3fn)}, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="a.weight is FP8 without a weight_scale"):
        dequantized_copy(src, tmp_path / "bf16")
