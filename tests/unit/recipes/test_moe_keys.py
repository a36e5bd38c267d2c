"""recipes/moe_keys.py: the local spec's MoE layers key their pre-MLP norm as the TE spec does; dense layers keep
Megatron's mapping (their TE norm is fused into linear_fc1)."""
from __future__ import annotations

import pytest

specs = pytest.importorskip("megatron.core.models.gpt.gpt_layer_specs")

from recipes import moe_keys  # noqa: E402


def test_moe_layers_drop_the_dense_mapping_and_dense_layers_keep_it(monkeypatch):
    before = specs.get_gpt_layer_local_submodules(num_experts=4)
    assert before.sharded_state_dict_keys_map["pre_mlp_layernorm."] == "mlp.linear_fc1.layer_norm_"  # 0.19.2
    monkeypatch.setattr(specs, "get_gpt_layer_local_submodules", specs.get_gpt_layer_local_submodules)
    moe_keys.te_keys_for_local_moe_layers()
    moe_keys.te_keys_for_local_moe_layers()  # idempotent
    moe = specs.get_gpt_layer_local_spec(4).submodules  # positional, as megatron.training's builder calls it
    assert "pre_mlp_layernorm." not in moe.sharded_state_dict_keys_map
    assert moe.sharded_state_dict_keys_map["input_layernorm."] == "self_attention.linear_qkv.layer_norm_"
    dense = specs.get_gpt_layer_local_submodules(num_experts=None)
    assert dense.sharded_state_dict_keys_map["pre_mlp_layernorm."] == "mlp.linear_fc1.layer_norm_"
    again = specs.get_gpt_layer_local_submodules(num_experts=4)
    assert "pre_mlp_layernorm." in before.sharded_state_dict_keys_map and again is not before  # no shared mutation
