"""Login-node validation: the ordered RULES, one small function each, raising ConfigError(field, value,
rule, fix). The first violation stops the launch.

Every rule mirrors a check Megatron-Core makes later (in validate_args, initialize_model_parallel,
TransformerConfig.__post_init__ or at model construction), so a bad config stops here, before any GPU
is allocated, with a message that names our field instead of Megatron's internals.

  parallel.py   world size, grids, degrees vs what they split, pipeline layout, SP/CP, batch
  features.py   model features, recompute, dispatcher, router, precision, overlap, CUDA graphs, experts
  dispatcher.py what the flex backends (deepep, hybridep, ncclep) need that Megatron asserts at model build
  train.py      sequence vs positions, LR schedule, profiling window, CPU runs, checkpoints, loggers
  init_from.py  train.checkpoint.init_from: a checkpoint there, imported for this model and padded vocabulary
  values.py     sizes, lengths, rates and step counts in range; names not empty (first)
  moe.py        what Megatron asserts only when it builds the MoE layer, router and dispatcher
  data.py       the data group: blends, split, files, tokenizer, vocabulary
  cluster.py    executors, Slurm directives, containers, environment
  modelopt.py   quant (QAT) and distill: the extra, formats per device, TE FP8, experts, layout, the teacher
  memory.py     the estimated peak memory against the device (last: it assumes a valid layout)
"""
from __future__ import annotations

from typing import Callable

from launcher.config.schema import RunConfig
from launcher.plan.resolve import Resolved
from launcher.plan.rules.cluster import CLUSTER_RULES
from launcher.plan.rules.data import DATA_RULES
from launcher.plan.rules.dispatcher import DISPATCHER_RULES
from launcher.plan.rules.features import (check_attention_variant, check_cuda_graphs, check_dispatcher,
                                          check_ep_overlap_conflicts, check_ep_overlap_layout,
                                          check_fp8_hardware, check_gated_delta_net_mtp, check_moe_layer_freq,
                                          check_optimizer_offload, check_overlap, check_precision,
                                          check_recompute, check_recompute_prerequisites, check_router,
                                          check_topk, check_torch_grouped_gemm)
from launcher.plan.rules.memory import check_memory_fits
from launcher.plan.rules.modelopt import MODELOPT_RULES
from launcher.plan.rules.moe import MOE_RULES
from launcher.plan.rules.parallel import (check_batch, check_context_parallel, check_experts_divisible_by_ep,
                                          check_heads_tp, check_layers_pipeline, check_layout,
                                          check_positive_degrees, check_query_groups_tp,
                                          check_sequence_parallel, check_vpp, check_world_dense,
                                          check_world_expert)
from launcher.plan.rules.init_from import INIT_FROM_RULES
from launcher.plan.rules.train import (check_checkpoint, check_cpu_run, check_kernel_profile, check_loggers,
                                       check_lr_schedule, check_restarts, check_seq_vs_positions)
from launcher.plan.rules.values import VALUE_RULES, check_profile_ranks
from launcher.plan.tuned import tuned_config

RULES: tuple[Callable[[RunConfig, Resolved], None], ...] = (
    *VALUE_RULES, check_positive_degrees, *CLUSTER_RULES, check_world_dense, check_world_expert,
    check_experts_divisible_by_ep,
    check_topk, check_moe_layer_freq, check_attention_variant, check_heads_tp, check_query_groups_tp, check_vpp,
    check_layers_pipeline, check_layout,
    check_sequence_parallel, check_context_parallel, check_seq_vs_positions, check_batch, check_lr_schedule,
    check_recompute,
    check_recompute_prerequisites, check_dispatcher, *DISPATCHER_RULES, check_router, check_precision,
    check_fp8_hardware, check_optimizer_offload, check_overlap, check_ep_overlap_layout, check_ep_overlap_conflicts,
    check_cuda_graphs, check_torch_grouped_gemm, check_kernel_profile, check_profile_ranks, check_cpu_run,
    check_checkpoint, check_restarts, *INIT_FROM_RULES, *MOE_RULES, check_loggers, *DATA_RULES,
    check_gated_delta_net_mtp, *MODELOPT_RULES,
    check_memory_fits,
)


def validate(cfg: RunConfig, res: Resolved) -> None:
    """Run every rule on the config with its tuned knobs concrete; the first violation raises ConfigError."""
    cfg = tuned_config(cfg, res.tuned)
    for rule in RULES:
        rule(cfg, res)
