"""Model families (conf/model): every family validates at a small world size, `model.num_layers=N` gives a
consistent proxy (dense-first layers, MTP, linear-attention pattern and the balanced pipeline layout
follow), and the rules for the architecture fields (MLA, gated delta net, gated attention, CUDA graphs).
"""
from __future__ import annotations

import re

import pytest

from conftest import PROBE, make_cfg, plan_for
from launcher.config.compose import group_options
from launcher.plan.resolve import linear_attention_pattern, moe_layer_pattern, resolve
from launcher.errors import ConfigError
from launcher.plan.layout import parse_layout
from launcher.tools.presets import family_config
from launcher.plan.rules import validate

# proxies check the architecture flags and Megatron's validator; a 4-layer DeepSeek-V3 on 8 GPUs does not fit
GPU8 = ["cluster.gpus_per_node=8", "train=pretrain", "train.global_batch_size=64", "launch.skip_memory_check=true"]


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _error(overrides: list[str]) -> ConfigError:
    """The first error: at compose (a choice outside its StrEnum) or from our rules."""
    with pytest.raises(ConfigError) as ei:
        cfg = make_cfg(overrides)
        validate(cfg, resolve(cfg, PROBE))
    return ei.value


@pytest.mark.parametrize("model", group_options("model"))
def test_family_proxy_validates_with_megatron(model):
    """Each family cut to 4 layers on 8 GPUs (EP8, 2 pipeline stages with the balanced layout) passes
    our rules and Megatron's validator; the architecture flags reach the argv."""
    plan = plan_for([f"model={model}", "model.num_layers=4", "parallel.ep=4", "parallel.pp=2",
                     "parallel.pipeline_layout=auto", *GPU8])
    cfg = family_config(model)
    argv = plan.argv
    assert _flag(argv, "--num-layers") == "4"
    assert _flag(argv, "--num-experts") == str(cfg.model.num_experts)
    if cfg.model.multi_latent_attention:
        assert "--multi-latent-attention" in argv and _flag(argv, "--kv-lora-rank") == str(cfg.model.kv_lora_rank)
        assert "--group-query-attention" not in argv
    if cfg.model.experimental_attention_variant:
        assert _flag(argv, "--experimental-attention-variant") == "gated_delta_net"
    if cfg.model.mtp_num_layers:
        assert _flag(argv, "--mtp-num-layers") == str(cfg.model.mtp_num_layers)
        assert plan.resolved.pipeline_layout.count("m") == cfg.model.mtp_num_layers


@pytest.mark.parametrize("n", [4, 8, 61])
def test_deepseek_v3_proxy_follows_num_layers(n):
    """Dense-first layers stay 3, MoE fills the rest, MTP stays, the layout counts n layers + 1 MTP."""
    plan = plan_for(["model=deepseek_v3", f"model.num_layers={n}", "parallel.pp=2", "parallel.vpp=2",
                     "parallel.pipeline_layout=auto", "parallel.ep=4", *GPU8], validate_megatron=n == 8)
    cfg = make_cfg(["model=deepseek_v3", f"model.num_layers={n}"])
    assert _flag(plan.argv, "--moe-layer-freq") == f"([0]*3+[1]*{n - 3})"
    assert moe_layer_pattern(cfg) == [0, 0, 0] + [1] * (n - 3)
    assert _flag(plan.argv, "--mtp-num-layers") == "1"
    stages = parse_layout(plan.resolved.pipeline_layout)
    assert len(stages) == 4 and "".join(stages).count("t") == n and stages[-1].endswith("mL")


def test_full_size_dense_first_layers_are_the_published_pattern():
    assert moe_layer_pattern(family_config("deepseek_v3")) == [0] * 3 + [1] * 58
    assert moe_layer_pattern(family_config("kimi_k2")) == [0] + [1] * 60
    assert moe_layer_pattern(family_config("deepseek_v2_lite")) == [0] + [1] * 26
    assert moe_layer_pattern(family_config("qwen3_235b_a22b")) == [1] * 94


@pytest.mark.parametrize("n,full", [(48, 12), (8, 2), (6, 1)])
def test_qwen3_next_proxy_keeps_every_fourth_layer_full_attention(n, full):
    cfg = make_cfg(["model=qwen3_next_80b_a3b", f"model.num_layers={n}"])
    pattern = linear_attention_pattern(cfg)
    assert len(pattern) == n and pattern.count(0) == full and pattern[3] == 0 and pattern[:3] == [1, 1, 1]


def test_too_few_layers_for_the_dense_ones():
    e = _error(["model=deepseek_v3", "model.num_layers=3", *GPU8])
    assert e.field == "model.moe_first_k_dense" and "at least one MoE layer" in e.rule


def test_list_pattern_of_the_wrong_length_names_the_fix():
    e = _error(["model=tiny_moe", "model.moe_layer_freq='([0]+[1]*5)'"])
    assert e.field == "model.moe_layer_freq" and "lists 6 layers but model.num_layers=4" in e.rule
    assert "moe_first_k_dense" in e.fix
    e = _error(["model=tiny_moe", "model.moe_layer_freq='([0]*4)'"])
    assert "no MoE layer" in e.rule
    e = _error(["model=tiny_moe", "model.moe_layer_freq='([0]+[1]*3); import os'"])
    assert "not a Megatron layer pattern" in e.rule


def test_dense_first_excludes_a_list_pattern():
    e = _error(["model=tiny_moe", "model.moe_first_k_dense=1", "model.moe_layer_freq='([0]+[1]*3)'"])
    assert e.field == "model.moe_first_k_dense" and "excludes" in e.rule


def test_explicit_layout_that_no_longer_fits_points_to_auto():
    dsv3 = ["preset=deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_fp8_a2a_overlap", "launch.dry_run=true"]
    e = _error([*dsv3, "model.num_layers=8"])
    assert e.field == "parallel.pipeline_layout" and "pipeline_layout=auto" in e.fix
    plan = plan_for([*dsv3, "model.num_layers=30", "parallel.pipeline_layout=auto"])
    assert "".join(parse_layout(plan.resolved.pipeline_layout)).count("t") == 30


# ------------------------------------------------------------ rules for the architecture fields

GPU1 = ["cluster.gpus_per_node=1"]


@pytest.mark.parametrize("overrides,field,rule", [
    (["model=tiny_deepseek"], "model.multi_latent_attention", r"needs Transformer Engine"),  # CPU: local spec
    (["model=tiny_deepseek", "model.num_query_groups=2", *GPU1], "model.num_query_groups", r"excludes multi-latent"),
    (["model=tiny_deepseek", "model.attention_output_gate=true", *GPU1], "model.attention_output_gate",
     r"not supported with multi-latent"),
    (["model=tiny_moe", "model.rope_type=yarn", *GPU1], "model.rope_type", r"only multi-latent attention"),
    (["model=tiny_moe", "recompute.granularity=selective", "recompute.modules=[mla_up_proj]", *GPU1],
     "recompute.modules", r"needs multi-latent attention"),
    (["model=tiny_moe", "recompute.granularity=selective", "recompute.modules=[gdn_norm_out]", *GPU1],
     "recompute.modules", r"needs gated delta-net"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4"], "model.layernorm_zero_centered_gamma",
     r"Transformer Engine"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4", "model.layernorm_zero_centered_gamma=false"],
     "model.experimental_attention_variant", r"Transformer Engine"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4", "model.linear_attention_freq=null", *GPU1],
     "model.linear_attention_freq", r"needs the linear/full attention pattern"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4", "model.linear_attention_freq='([1]*3)'", *GPU1],
     "model.linear_attention_freq", r"lists 3 layers"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4", "model.linear_num_value_heads=24", *GPU1],
     "model.linear_num_value_heads", r"multiple of"),
    (["model=qwen3_next_80b_a3b", "model.num_layers=4", "parallel.tp=2", "parallel.cp=16",
      "cluster.gpus_per_node=32", "train.seq_length=4096", "train=pretrain"], "parallel",
     r"splits its 16 key and 32 value heads over tp\*cp=32"),
    (["model=tiny_moe", "model.experimental_attention_variant=dsa", *GPU1], "model.experimental_attention_variant",
     r"must be one of gated_delta_net"),
    (["model=tiny_moe", "model.linear_attention_freq='4'", *GPU1], "model.linear_attention_freq", r"only used"),
    (["model=tiny_moe", "model.mtp_num_layers=1", "model.position_embedding_type=learned_absolute"],
     "model.mtp_num_layers", r"needs rope or no position embedding"),
])
def test_architecture_rules(overrides, field, rule):
    e = _error(overrides)
    assert e.field == field and re.search(rule, e.rule), e


def test_mla_and_gdn_recompute_modules_accepted_where_they_exist():
    plan_for(["model=tiny_deepseek", "recompute.granularity=selective", "recompute.modules=[mla_up_proj,mlp]",
              *GPU1])
    plan_for(["model=qwen3_next_80b_a3b", "model.num_layers=4", "recompute.granularity=selective",
              "recompute.modules=[gdn_norm_out]", "parallel.ep=8", *GPU8])


@pytest.mark.parametrize("overrides,field,rule", [
    (["train.cuda_graph_modules=[attn]"], "train.cuda_graph_modules", r"without train.cuda_graph_impl"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[attn]"], "train.cuda_graph_impl",
     r"need CUDA GPUs"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[moe_preprocess]", *GPU1],
     "train.cuda_graph_modules", r"with moe_router"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[moe,moe_router]", *GPU1],
     "train.cuda_graph_modules", r"exclude each other"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[mlp]", *GPU1],
     "train.cuda_graph_modules", r"has none"),
    (["train.cuda_graph_impl=full_iteration", "train.cuda_graph_modules=[attn]", *GPU1],
     "train.cuda_graph_modules", r"must be empty"),
    (["train.cuda_graph_impl=transformer_engine", "recompute=full", *GPU1], "recompute.granularity",
     r"full_iteration"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[moe_router]",
      "recompute.granularity=selective", "recompute.modules=[moe]", *GPU1], "recompute.modules",
     r"captured router graph"),
    (["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[router]", *GPU1],
     "train.cuda_graph_modules[0]", r"did you mean 'moe_router'"),
])
def test_cuda_graph_rules(overrides, field, rule):
    e = _error(overrides)
    assert e.field == field and re.search(rule, f"{e.rule} {e.fix}"), e


def test_cuda_graphs_reach_megatron():
    plan = plan_for(["train.cuda_graph_impl=transformer_engine", "train.cuda_graph_modules=[attn,moe_router,"
                     "moe_preprocess]", "model.moe_first_k_dense=1", *GPU1])
    i = plan.argv.index("--cuda-graph-modules")
    assert plan.argv[i - 2:i + 4] == ["--cuda-graph-impl", "transformer_engine", "--cuda-graph-modules", "attn",
                                      "moe_router", "moe_preprocess"]
