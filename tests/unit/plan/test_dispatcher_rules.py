"""launcher/plan/rules/dispatcher.py: what the flex backends need that megatron-core 0.19.2 asserts only when the
model is built (token_dispatcher.py, transformer_config.py). Each rule: one config it refuses, with the field and
a fix, and the nearest config it lets through."""
from __future__ import annotations

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.plan.resolve import resolve
from launcher.plan.rules import validate
from launcher.plan.rules.dispatcher import megatron_value

EP2 = ["model=qwen3_30b_a3b", "model.num_layers=2", "parallel=ep2", "train=pretrain", "cluster.gpus_per_node=2",
       "hardware=h200", "model.transformer_impl=transformer_engine", "launch.skip_memory_check=true"]


def _validate(overrides: list[str]) -> None:
    cfg = make_cfg(overrides)
    validate(cfg, resolve(cfg, PROBE))


REFUSED = [
    ("deepep_ep1", ["dispatcher=deepep", "parallel.ep=1", "cluster.gpus_per_node=1"], "parallel.ep",
     "expert TP x EP > 1"),
    ("ncclep_ep1", ["dispatcher=ncclep", "parallel.ep=1", "cluster.gpus_per_node=1",
                    "+megatron.extra.moe_expert_rank_capacity_factor=2.0"], "parallel.ep", "expert TP x EP > 1"),
    ("deepep_bf16_router", ["dispatcher=deepep", "model.moe_router_dtype=null"], "model.moe_router_dtype",
     "float32"),
    ("deepep_drop_and_pad", ["dispatcher=deepep", "+megatron.extra.moe_pad_expert_input_to_capacity=true",
                             "+megatron.extra.moe_expert_capacity_factor=1.0"],
     "megatron.extra.moe_pad_expert_input_to_capacity", "drop-and-pad"),
    ("deepep_drop_and_pad_raw", ["dispatcher=deepep", "megatron.raw=[--moe-pad-expert-input-to-capacity]"],
     "megatron.extra.moe_pad_expert_input_to_capacity", "drop-and-pad"),
    ("deepep_graph_whole_layer", ["dispatcher=deepep", "train.cuda_graph_impl=transformer_engine"],
     "train.cuda_graph_impl", "whole layers"),
    ("deepep_graph_moe", ["dispatcher=deepep", "train.cuda_graph_impl=transformer_engine",
                          "train.cuda_graph_modules=[attn,moe]"], "train.cuda_graph_impl", "the moe module"),
    ("hybridep_variable_lengths", ["dispatcher=hybridep", "+megatron.extra.variable_seq_lengths=true"],
     "megatron.extra.variable_seq_lengths", "equal token counts"),
    ("ncclep_no_capacity", ["dispatcher=ncclep"], "megatron.extra.moe_expert_rank_capacity_factor",
     "receive budget"),
    ("ncclep_zero_copy", ["dispatcher=ncclep", "+megatron.extra.moe_expert_rank_capacity_factor=2.0",
                          "+megatron.extra.moe_ncclep_zero_copy=true"], "megatron.extra.moe_ncclep_zero_copy",
     "moe_ncclep_static_shape"),
]


@pytest.mark.parametrize("case, overrides, field, rule", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_on_the_login_node(case, overrides, field, rule):
    with pytest.raises(ConfigError) as e:
        _validate([*EP2, *overrides])
    assert e.value.field == field and rule in e.value.rule and e.value.fix
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [
    ["dispatcher=deepep"],
    ["dispatcher=hybridep", "model.moe_router_dtype=null"],  # HybridEP casts the probs itself
    ["dispatcher=deepep", "train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[attn]"],
    ["dispatcher=hybridep", "+megatron.extra.variable_seq_lengths=true",
     "+megatron.extra.moe_hybridep_pad_uneven_dispatch_inputs=true"],
    ["dispatcher=ncclep", "megatron.raw=[--moe-expert-rank-capacity-factor,2.0]"],
    ["dispatcher=alltoall", "model.moe_router_dtype=null", "+megatron.extra.moe_pad_expert_input_to_capacity=true",
     "+megatron.extra.moe_expert_capacity_factor=1.0"],
], ids=["deepep", "hybridep_bf16_router", "deepep_graph_attn", "hybridep_padded", "ncclep_raw_capacity",
        "alltoall_drop_and_pad"])
def test_the_nearest_valid_configs_pass(overrides):
    _validate([*EP2, *overrides])


def test_megatron_value_reads_extra_and_raw_like_argparse():
    cfg = make_cfg(["+megatron.extra.moe_expert_rank_capacity_factor=1.5",
                    "megatron.raw=['--moe-expert-rank-capacity-factor=3',--variable-seq-lengths]"])
    assert megatron_value(cfg, "moe_expert_rank_capacity_factor") == "3"  # raw comes last on the argv
    assert megatron_value(cfg, "variable_seq_lengths") is True
    assert megatron_value(cfg, "moe_ncclep_zero_copy") is None
