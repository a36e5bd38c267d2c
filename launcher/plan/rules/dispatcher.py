"""What the flex dispatcher's backends require that megatron-core 0.19.2 asserts only when the model is built
(token_dispatcher.py: MoEFlexTokenDispatcher, _DeepepManager, _HybridEPManager, _NCCLEPManager;
transformer_config.py: __post_init__), so a run stops on the login node instead of after its GPUs were
allocated and the model half built. The fields they read that the schema does not model come through the
escape hatch (megatron.extra / megatron.raw), read here without importing Megatron.
"""
from __future__ import annotations

from typing import Any

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved


def megatron_value(cfg: RunConfig, dest: str) -> Any:
    """The value megatron.extra / megatron.raw give Megatron's `dest` (None if neither sets it; a bare flag is
    True). Extra keys are dests or --flags; raw is argv, the last occurrence wins as in argparse."""
    value = None
    for key, v in cfg.megatron.extra.items():
        if key.lstrip("-").replace("-", "_") == dest:
            value = v
    raw = list(cfg.megatron.raw)
    for i, tok in enumerate(raw):
        flag, eq, inline = tok.partition("=")
        if flag.startswith("--") and flag[2:].replace("-", "_") == dest:
            if eq:
                value = inline
            elif i + 1 < len(raw) and not raw[i + 1].startswith("--"):
                value = raw[i + 1]
            else:
                value = True
    return value


def _backend(cfg: RunConfig) -> str | None:
    d = cfg.dispatcher
    return str(d.flex_backend) if d.type == "flex" and d.flex_backend else None


def check_flex_group(cfg: RunConfig, res: Resolved) -> None:
    """MoEFlexTokenDispatcher: "DeepEP dispatcher requires TPxEP > 1" (and the same for NCCL EP): the flex
    dispatcher's group is expert tensor-parallel x expert-parallel ranks."""
    backend, p = _backend(cfg), cfg.parallel
    if backend in ("deepep", "ncclep") and p.ep * p.etp <= 1:
        raise ConfigError("parallel.ep", p.ep, f"dispatcher={backend} needs expert TP x EP > 1 (Megatron asserts it "
                          "when the dispatcher is built)", "use parallel.ep >= 2, or dispatcher=alltoall for EP 1")


def check_flex_router_dtype(cfg: RunConfig, res: Resolved) -> None:
    """_DeepepManager asserts float32 probs ("DeepEP only supports float32 probs"): its top-k weights are the
    router's output, so the router must compute in fp32."""
    dtype = cfg.model.moe_router_dtype
    if _backend(cfg) == "deepep" and dtype != "fp32":
        raise ConfigError("model.moe_router_dtype", dtype, "DeepEP's top-k weights must be float32 (Megatron "
                          "asserts it at the first dispatch)", "set model.moe_router_dtype=fp32")


def check_flex_capacity(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig: deepep does not support moe_pad_expert_input_to_capacity (drop-and-pad)."""
    if _backend(cfg) == "deepep" and megatron_value(cfg, "moe_pad_expert_input_to_capacity") not in (None, False):
        raise ConfigError("megatron.extra.moe_pad_expert_input_to_capacity", True, "dispatcher=deepep does not "
                          "support padding expert inputs to capacity (drop-and-pad)",
                          "drop moe_pad_expert_input_to_capacity, or use dispatcher=alltoall for drop-and-pad")


def check_flex_cuda_graphs(cfg: RunConfig, res: Resolved) -> None:
    """DeepEP's dispatch makes the CPU wait for the GPU's signal (fused_a2a.py), which a CUDA graph cannot
    capture: no graph may contain the dispatcher (a whole layer, the moe module, or the full iteration)."""
    t = cfg.train
    if _backend(cfg) != "deepep" or t.cuda_graph_impl is None:
        return
    mods = [str(m) for m in t.cuda_graph_modules]
    if t.cuda_graph_impl == "full_iteration" or not mods or "moe" in mods:
        what = "the full iteration" if t.cuda_graph_impl == "full_iteration" else (
            "the moe module" if mods else "whole layers")
        raise ConfigError("train.cuda_graph_impl", t.cuda_graph_impl, f"its graphs capture {what}, around "
                          "DeepEP's dispatch, where the CPU waits on the GPU (not capturable)",
                          "capture only attn/moe_router/moe_preprocess (train.cuda_graph_modules), or "
                          "train.cuda_graph_impl=null")


def check_hybridep_equal_tokens(cfg: RunConfig, res: Resolved) -> None:
    """_HybridEPManager: HybridEP's dispatch expects the same token count on every rank of its group; variable
    sequence lengths (packed or ragged inputs) need moe_hybridep_pad_uneven_dispatch_inputs."""
    if _backend(cfg) != "hybridep" or megatron_value(cfg, "variable_seq_lengths") in (None, False):
        return
    if megatron_value(cfg, "moe_hybridep_pad_uneven_dispatch_inputs") in (None, False):
        raise ConfigError("megatron.extra.variable_seq_lengths", True, "dispatcher=hybridep needs equal token "
                          "counts on every rank of its group; variable sequence lengths make them uneven",
                          "add megatron.extra.moe_hybridep_pad_uneven_dispatch_inputs=true (pads to the group's "
                          "maximum)")


def check_ncclep_capacity(cfg: RunConfig, res: Resolved) -> None:
    """_NCCLEPManager: "The 'ncclep' backend requires moe_expert_rank_capacity_factor"; zero-copy requires
    moe_ncclep_static_shape."""
    if _backend(cfg) != "ncclep":
        return
    factor = megatron_value(cfg, "moe_expert_rank_capacity_factor")
    if factor in (None, False):
        raise ConfigError("megatron.extra.moe_expert_rank_capacity_factor", None, "dispatcher=ncclep sizes its "
                          "per-rank receive budget from it (exceeding the budget traps in NCCL)",
                          "set megatron.extra.moe_expert_rank_capacity_factor (generously, e.g. 2.0)")
    if megatron_value(cfg, "moe_ncclep_zero_copy") not in (None, False) and \
            megatron_value(cfg, "moe_ncclep_static_shape") in (None, False):
        raise ConfigError("megatron.extra.moe_ncclep_zero_copy", True, "needs moe_ncclep_static_shape",
                          "add megatron.extra.moe_ncclep_static_shape=true, or drop moe_ncclep_zero_copy")


DISPATCHER_RULES = (check_flex_group, check_flex_router_dtype, check_flex_capacity, check_flex_cuda_graphs,
                    check_hybridep_equal_tokens, check_ncclep_capacity)
