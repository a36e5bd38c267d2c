"""Requirements Megatron-Core 0.19.2 asserts only when it builds the MoE layer, its router or its token
dispatcher on the compute node (megatron/core/transformer/moe/), which validate_args never sees: each one
here, checked on the login node. One function each, raising ConfigError(field, value, rule, fix)."""
from __future__ import annotations

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved


def _balancing(cfg: RunConfig) -> list[str]:
    """moe_router_load_balancing_type: one type, or several separated by spaces (Megatron's nargs='+')."""
    return cfg.model.moe_router_load_balancing_type.split()


def check_expert_bias_linear(cfg: RunConfig, res: Resolved) -> None:
    """moe_layer.py: `assert mlp_bias is None` after the experts (every dispatcher), and shared_experts.py:
    `assert config.add_bias_linear == False` - both at the first forward or at construction."""
    if cfg.model.add_bias_linear:
        raise ConfigError("model.add_bias_linear", True, "MoE experts (and shared experts) take no linear bias in "
                          "megatron-core 0.19.2 (MoELayer asserts mlp_bias is None)",
                          "set model.add_bias_linear=false (model.add_qkv_bias keeps the attention bias)")


def check_sinkhorn(cfg: RunConfig, res: Resolved) -> None:
    """router.py sinkhorn_load_balancing: 'Sinkhorn routing does not support aux loss' (first forward)."""
    m = cfg.model
    if "sinkhorn" in _balancing(cfg) and m.moe_aux_loss_coeff != 0:
        raise ConfigError("model.moe_aux_loss_coeff", m.moe_aux_loss_coeff, "sinkhorn routing takes no aux loss "
                          "(the router asserts moe_aux_loss_coeff == 0)", "set model.moe_aux_loss_coeff=0")


def check_quantile_balancing(cfg: RunConfig, res: Resolved) -> None:
    """router.py quantile_balancing: no aux loss, no fused router, no group-limited routing (asserted when the
    router is built or first routes)."""
    m = cfg.model
    if "quantile_balancing" not in _balancing(cfg):
        return
    if m.moe_aux_loss_coeff != 0:
        raise ConfigError("model.moe_aux_loss_coeff", m.moe_aux_loss_coeff, "quantile balancing replaces the "
                          "aux loss (the router asserts it is disabled)", "set model.moe_aux_loss_coeff=0")
    if cfg.dispatcher.router_fusion:
        raise ConfigError("dispatcher.router_fusion", True, "quantile balancing has no fused router",
                          "set dispatcher.router_fusion=false")
    if m.moe_router_num_groups is not None or m.moe_router_group_topk is not None:
        raise ConfigError("model.moe_router_num_groups", m.moe_router_num_groups, "quantile balancing does not "
                          "support group-limited routing", "set model.moe_router_num_groups=null "
                          "model.moe_router_group_topk=null")


# the flex dispatcher's build-time asserts (TP x EP > 1, NCCL EP's capacity factor) are rules/dispatcher.py's
MOE_RULES = (check_expert_bias_linear, check_sinkhorn, check_quantile_balancing)
