"""Invalid configurations: each stops in launcher.plan.rules (or derive) with a one-line ConfigError that
names the field, the rule and a fix. For the rules Megatron-Core itself enforces, the same argv built
*without* our rules is rejected by Megatron's validator too: our rule only front-runs it."""
from __future__ import annotations

import pytest

from conftest import PROBE, make_cfg, plan_for
from launcher.plan.resolve import resolve
from launcher.errors import ConfigError
from launcher.plan.megatron.table import schema_fields
from launcher.plan.megatron.validator import megatron_validate
from launcher.plan.plan import megatron_argv, run_env
from launcher.plan.rules import validate

G2, G3, G6, G8 = ("cluster.gpus_per_node=2",), ("cluster.gpus_per_node=3",), ("cluster.gpus_per_node=6",), \
    ("cluster.gpus_per_node=8",)

# id, overrides, expected field (substring of ConfigError.field), regex on str(error)
INVALID = [
    ("world_not_divisible_by_tp_pp_cp", [*G3, "parallel.tp=2"], "parallel",
     r"world size 3 is not divisible by tp\*pp\*cp=2"),
    ("world_not_divisible_by_ep_etp_pp", [*G6, "parallel.ep=4", "train.global_batch_size=12"], "parallel",
     r"world size 6 is not divisible by ep\*etp\*pp=4"),
    ("experts_not_divisible_by_ep", [*G6, "parallel.ep=3", "train.global_batch_size=12"], "parallel.ep",
     r"model\.num_experts=8 is not divisible by ep\. Fix: pick ep from \[1, 2, 4, 8\]"),
    ("heads_not_divisible_by_tp", [*G8, "parallel.tp=8"], "parallel.tp",
     r"model\.num_attention_heads=4 is not divisible by tp\. Fix: pick tp from \[1, 2, 4\]"),
    ("query_groups_vs_tp", [*G2, "parallel.tp=2", "model.num_attention_heads=12", "model.num_query_groups=3"],
     "parallel.tp", r"model\.num_query_groups=3 is neither a multiple nor a divisor of tp"),
    ("layers_not_divisible_by_pp", [*G3, "parallel.pp=3"], "parallel",
     r"model\.num_layers=4 is not divisible by pp\*vpp=3.*pipeline_layout=auto"),
    ("layers_not_divisible_by_pp_vpp", [*G2, "parallel.pp=2", "parallel.vpp=4"], "parallel",
     r"model\.num_layers=4 is not divisible by pp\*vpp=8"),
    ("vpp_without_pp", ["parallel.vpp=2"], "parallel.vpp",
     r"virtual pipeline stages need pipeline parallelism \(pp > 1\)"),
    ("layout_wrong_t_count", [*G2, "parallel.pp=2", "parallel.pipeline_layout=Et|ttL"],
     "parallel.pipeline_layout", r"has 3 decoder layers 't' but model\.num_layers=4"),
    ("layout_missing_E", [*G2, "parallel.pp=2", "parallel.pipeline_layout=tt|ttL"],
     "parallel.pipeline_layout", r"the embedding E must open the first stage"),
    ("layout_missing_L", [*G2, "parallel.pp=2", "parallel.pipeline_layout=Ett|tt"],
     "parallel.pipeline_layout", r"the loss L must close the last stage"),
    ("layout_stages_not_multiple_of_pp", [*G2, "parallel.pp=2", "parallel.pipeline_layout=Et|t|ttL"],
     "parallel.pipeline_layout", r"3 stages are not divisible by pp=2"),
    ("layout_stages_vs_vpp", [*G2, "parallel.pp=2", "parallel.vpp=2", "parallel.pipeline_layout=Ett|ttL"],
     "parallel.pipeline_layout", r"2 stages but pp\*vpp=4"),
    ("layout_unknown_symbol", [*G2, "parallel.pp=2", "parallel.pipeline_layout=Ett|txL"],
     "parallel.pipeline_layout", r"unknown symbols \['x'\]"),
    ("auto_layout_too_many_stages", [*G8, "parallel.pp=8", "parallel.vpp=2", "parallel.pipeline_layout=auto"],
     "parallel.pipeline_layout", r"4 layers cannot fill 16 pipeline stages"),
    ("sequence_parallel_off_with_tp", [*G2, "parallel.tp=2", "parallel.sequence_parallel=false"],
     "parallel.sequence_parallel", r"MoE with tp > 1 requires sequence parallelism"),
    ("sequence_parallel_on_with_tp1", ["parallel.sequence_parallel=true"], "parallel.sequence_parallel",
     r"sequence parallelism needs tp > 1"),
    ("seq_not_divisible_by_2cp", [*G3, "parallel.cp=3"], "train.seq_length",
     r"train\.seq_length=256: with cp=3 it must be divisible by 2\*cp=6"),
    ("cp_with_local_spec", [*G2, "parallel.cp=2", "model.transformer_impl=local"], "parallel.cp",
     r"context parallelism needs Transformer Engine attention"),
    ("seq_exceeds_max_positions", ["train.seq_length=8192"], "train.seq_length",
     r"exceeds model\.max_position_embeddings=4096"),
    ("gbs_not_multiple_of_mbs_dp", [*G2, "train.global_batch_size=6"], "train.global_batch_size",
     r"must be a multiple of micro_batch_size\*dp = 2\*2\. Fix: use a multiple of 4"),
    ("unknown_recompute_module", ["recompute=selective", "recompute.modules=[core_atn]"], "recompute.modules",
     r"'core_atn'.*did you mean 'core_attn'\?"),
    ("unknown_recompute_granularity", ["recompute.granularity=selectiv"], "recompute.granularity",
     r"did you mean 'selective'\?"),
    ("selective_without_modules", ["recompute.granularity=selective"], "recompute.modules",
     r"selective recompute needs at least one module"),
    ("full_without_method", ["recompute.granularity=full"], "recompute.method",
     r"full recompute needs method uniform\|block"),
    ("modules_with_recompute_off", ["recompute.modules=[core_attn]"], "recompute.granularity",
     r"modules/method given but recompute is off"),
    ("moe_act_on_cpu_local_spec", ["recompute.granularity=selective", "recompute.modules=[moe_act]"],
     "recompute.modules", r"'moe_act'.*needs grouped-GEMM experts"),
    ("layernorm_recompute_local_spec", ["cluster.gpus_per_node=1", "model.transformer_impl=local",
                                        "recompute=layernorm_moe"], "recompute.modules",
     r"'layernorm'.*output-discarding recompute needs Transformer Engine"),
    ("shared_experts_recompute_without_shared_expert",
     ["recompute.granularity=selective", "recompute.modules=[shared_experts]"], "recompute.modules",
     r"'shared_experts'.*the model has no shared expert"),
    ("flex_without_backend", ["dispatcher.type=flex"], "dispatcher.flex_backend",
     r"the flex dispatcher needs a backend"),
    ("flex_backend_with_alltoall", ["dispatcher.flex_backend=deepep"], "dispatcher.flex_backend",
     r"only used with type=flex, not alltoall"),
    ("deepep_on_cpu", ["dispatcher=deepep"], "dispatcher.type",
     r"the deepep backend needs CUDA GPUs and Transformer Engine"),
    ("unknown_dispatcher_type", ["dispatcher.type=alltoal"], "dispatcher.type", r"did you mean 'alltoall'\?"),
    ("shared_expert_overlap_without_shared_expert", ["dispatcher.shared_expert_overlap=true"],
     "dispatcher.shared_expert_overlap", r"the model has no shared expert"),
    ("permute_fusion_local_spec", ["cluster.gpus_per_node=1", "model.transformer_impl=local",
                                   "dispatcher.permute_fusion=true"], "dispatcher.permute_fusion",
     r"fused permute/router kernels come from Transformer Engine"),
    ("expert_bias_with_softmax", ["model.moe_router_enable_expert_bias=true"],
     "model.moe_router_enable_expert_bias", r"expert bias needs a sigmoid or sqrtsoftplus score function"),
    ("topk_exceeds_num_experts", ["model.moe_router_topk=16"], "model.moe_router_topk",
     r"must be between 1 and model\.num_experts=8"),
    ("top1_softmax_without_pre_softmax", ["model.moe_router_topk=1"], "model.moe_router_pre_softmax",
     r"top-1 softmax routing needs pre-softmax"),
    ("router_groups_not_dividing_experts", ["model.moe_router_num_groups=3"], "model.moe_router_num_groups",
     r"model\.num_experts=8 is not divisible by it"),
    ("bad_fp8_recipe", ["cluster.gpus_per_node=1", "precision=fp8_tensorwise", "precision.fp8_recipe=tensorwize"],
     "precision.fp8_recipe", r"did you mean 'tensorwise'\?"),
    ("fp8_on_cpu", ["precision=fp8_blockwise"], "precision.fp8_recipe", r"FP8 needs Transformer Engine on a GPU"),
    ("precision_aware_optimizer_without_dist_opt",
     ["precision.use_precision_aware_optimizer=true", "parallel.use_distributed_optimizer=false",
      "parallel.overlap_param_gather=false"], "precision.use_precision_aware_optimizer",
     r"needs the distributed optimizer"),
    ("overlap_param_gather_without_grad_reduce",
     ["parallel.overlap_grad_reduce=false", "parallel.overlap_param_gather=true"],
     "parallel.overlap_param_gather", r"needs use_distributed_optimizer and overlap_grad_reduce"),
    ("tp_on_cpu", ["cluster.nproc_cpu=2", "parallel.tp=2"], "parallel.tp",
     r"CPU runs support data, expert and pipeline parallelism only"),
    ("fsdp_on_cpu", ["parallel.use_megatron_fsdp=true"], "parallel.use_megatron_fsdp", r"Megatron FSDP needs CUDA"),
    ("multi_node_local_without_dry_run", ["cluster.nodes=2", *G8], "cluster.nodes",
     r"the local executor runs on this one machine.*launch\.dry_run=true"),
    ("unknown_executor", ["cluster.executor=pbs"], "cluster.executor", r"must be one of local, slurm, container"),
    ("bad_device", ["cluster.device=tpu"], "cluster.device", r"must be one of auto, cuda, cpu"),
    ("zero_degree", ["parallel.ep=0"], "parallel.ep", r"parallel degrees must be >= 1"),
    ("indexed_data_without_paths", ["data=indexed"], "data.paths", r"indexed data needs at least one"),
    ("mock_data_with_paths", ["data.paths=[/data/a]"], "data.paths", r"mock data reads no files"),
    ("bad_routing", ["train.routing=balanced"], "train.routing", r"must be one of dropless, forced_balance"),
    ("bad_gradient_accumulation_fusion", ["train.gradient_accumulation_fusion=yes"],
     "train.gradient_accumulation_fusion", r"must be auto, true or false"),
    ("zero_nodes", ["cluster.nodes=0"], "cluster.nodes", r"cluster\.nodes=0"),
    # found on the GPU host: validate_args accepts it, then the model builder asserts (mtp_block_spec)
    ("gated_delta_net_with_mtp", ["model=qwen3_next_80b_a3b", "model.mtp_num_layers=1", "cluster.gpus_per_node=1"],
     "model.mtp_num_layers", r"cannot build MTP layers with experimental_attention_variant=gated_delta_net"),
    # found on the GPU host: Megatron's validate_args accepts it, then OptimizerParamScheduler asserts
    ("warmup_not_shorter_than_training", ["train=pretrain", "train.train_iters=5"], "train.lr_warmup_iters",
     r"warm-up must be shorter than train\.train_iters=5"),
    ("indexed_hf_tokenizer_without_model", ["data=indexed", "data.paths=[/data/a]"], "data.tokenizer_model",
     r"tokenizer"),
]


def _id(case) -> str:
    return case.values[0] if hasattr(case, "marks") else case[0]


@pytest.mark.parametrize("case_id,overrides,field,pattern", INVALID, ids=[_id(c) for c in INVALID])
def test_invalid_config_is_rejected(case_id, overrides, field, pattern):
    with pytest.raises(ConfigError, match=pattern) as ei:
        plan_for(overrides)
    err = ei.value
    assert field in err.field, f"{case_id}: error names {err.field!r}"
    text = str(err)
    assert "\n" not in text, "ConfigError must be one line"
    assert "Fix:" in text and text.startswith(f"{err.field}=")
    assert err.fix and err.rule


def test_invalid_list_is_big_enough():
    assert len(INVALID) >= 24
    assert len({_id(c) for c in INVALID}) == len(INVALID)


# Rules Megatron-Core enforces itself: (case id, extra overrides, Megatron's own words).
# model.transformer_impl=local keeps Transformer Engine availability out of Megatron's answer, so the
# only thing it can object to is the rule under test.
# Not here, because Megatron 0.19.2's validator accepts them (our rule is stricter or catches a
# train-time failure): selective_without_modules (Megatron defaults to core_attn),
# topk_exceeds_num_experts, sequence_parallel_off_with_tp, sequence_parallel_on_with_tp1,
# precision_aware_optimizer_without_dist_opt, flex_backend_with_alltoall, tp_on_cpu.
PARITY = [
    ("world_not_divisible_by_tp_pp_cp", r"world size \(3\) is not divisible by total_model_size"),
    ("world_not_divisible_by_ep_etp_pp",
     r"world_size \(6\) is not divisible by expert_tensor_model_pipeline_parallel size \(4\)"),
    ("experts_not_divisible_by_ep", r"Number of experts should be a multiple of expert model parallel_size"),
    ("heads_not_divisible_by_tp",
     r"num_attention_heads \(4\) must be a multiple of tensor_model_parallel_size \(8\)"),
    ("query_groups_vs_tp",
     r"num_query_groups \(3\) must be a multiple or divisor of tensor_model_parallel_size \(2\)"),
    ("seq_not_divisible_by_2cp", r"seq-length should be a multiple of 2 \* context-parallel-size"),
    ("gbs_not_multiple_of_mbs_dp",
     r"global_batch_size \(6\) must be divisible by \w*micro_batch_size \(2\) \* data_parallel_size \(2\)"),
    ("layers_not_divisible_by_pp", r"Number of layers should be divisible by the pipeline-model-parallel size"),
    ("full_without_method", r'recompute_granularity: full so recompute_method must be "block" or "uniform"'),
    ("vpp_without_pp", r"interleaved schedule is used, pipeline-model-parallel size should be greater than 1"),
    ("seq_exceeds_max_positions",
     r"max_position_embeddings \(4096\) must be greater than or equal to seq_length \(8192\)"),
    ("expert_bias_with_softmax", r"Expert bias for aux-loss-free routing only supports 'sigmoid' and 'sqrtsoftplus'"),
    ("layout_wrong_t_count", r"Number of decoder layers 3\s*must match num_layers 4"),
    ("layout_missing_E", r"The first layer must be embedding"),
    ("layout_stages_not_multiple_of_pp",
     r"length of pipeline_model_parallel_layout must be divisible by pipeline_model_parallel_size"),
    ("overlap_param_gather_without_grad_reduce", r"Must use --overlap-param-gather with --overlap-grad-reduce"),
]
_BY_ID = {c[0]: c for c in INVALID if not hasattr(c, "marks")}


@pytest.mark.parametrize("case_id,megatron_says", PARITY, ids=[p[0] for p in PARITY])
def test_megatron_rejects_what_our_rule_rejects(case_id, megatron_says):
    _, overrides, field, _ = _BY_ID[case_id]
    cfg = make_cfg([*overrides, "model.transformer_impl=local"])
    res = resolve(cfg, PROBE)
    with pytest.raises(ConfigError) as ours:
        validate(cfg, res)
    assert field in ours.value.field
    # bypass launcher.plan.rules: Megatron sees the argv our rules would have stopped
    argv, env = megatron_argv(cfg, res), run_env(cfg, res)
    with pytest.raises(ConfigError, match=megatron_says) as theirs:
        megatron_validate(argv, res.world_size, env)
    # the field behind the flag Megatron names (plan/megatron/validator.py), or "megatron" where none does
    assert theirs.value.field in {*schema_fields(), "megatron"}
    assert "\n" not in str(theirs.value)


def test_parity_list_covers_the_required_rules():
    assert len(PARITY) >= 8
    assert {p[0] for p in PARITY} <= set(_BY_ID)
