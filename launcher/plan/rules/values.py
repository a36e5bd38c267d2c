"""Values that are wrong whatever else the config says: sizes, lengths, rates and step counts outside their
range, and empty names. Some of these Megatron accepts and trains with (a zero learning rate, a negative weight
decay), some reach a bare AssertionError on every rank; here they stop first, in one line. The first rule
of RULES, so a later rule's arithmetic never sees a zero or a negative."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved


def _pos(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _nonneg(v: float) -> bool:
    return v >= 0 and math.isfinite(v)


def _unit(v: float) -> bool:
    return 0 <= v < 1


def _frac(v: float) -> bool:
    return 0 < v <= 1


def _nonneg_or_inf(v: float) -> bool:
    return v >= 0  # inf: no clipping (nan compares false)


POSITIVE, NON_NEGATIVE, UNIT, FRACTION = ((_pos, "must be > 0"), (_nonneg, "must be >= 0"),
                                          (_unit, "must lie in [0, 1)"), (_frac, "must lie in (0, 1]"))
NON_NEGATIVE_OR_INF = (_nonneg_or_inf, "must be >= 0 (inf: no clipping)")

# field -> (test, rule, example fix value); None values mean "Megatron's default" and are not checked.
BOUNDS: dict[str, tuple[tuple[Callable[[float], bool], str], str]] = {
    "model.num_layers": (POSITIVE, "4"), "model.hidden_size": (POSITIVE, "1024"),
    "model.ffn_hidden_size": (POSITIVE, "4096"), "model.num_attention_heads": (POSITIVE, "8"),
    "model.num_query_groups": (POSITIVE, "4"), "model.kv_channels": (POSITIVE, "128"),
    "model.max_position_embeddings": (POSITIVE, "4096"), "model.vocab_size": (POSITIVE, "151936"),
    "model.make_vocab_size_divisible_by": (POSITIVE, "128"), "model.norm_epsilon": (POSITIVE, "1e-6"),
    "model.rotary_base": (POSITIVE, "10000"), "model.rotary_percent": (FRACTION, "1.0"),
    "model.attention_dropout": (UNIT, "0.0"), "model.hidden_dropout": (UNIT, "0.0"),
    "model.init_method_std": (POSITIVE, "0.02"), "model.num_experts": (POSITIVE, "8"),
    "model.moe_ffn_hidden_size": (POSITIVE, "768"), "model.moe_router_topk": (POSITIVE, "2"),
    "model.moe_shared_expert_intermediate_size": (POSITIVE, "null"),
    "model.moe_router_topk_scaling_factor": (POSITIVE, "null"), "model.moe_aux_loss_coeff": (NON_NEGATIVE, "1e-3"),
    "model.moe_z_loss_coeff": (NON_NEGATIVE, "null"), "model.moe_router_bias_update_rate": (NON_NEGATIVE, "1e-3"),
    "model.moe_router_num_groups": (POSITIVE, "null"), "model.moe_router_group_topk": (POSITIVE, "null"),
    "model.mtp_num_layers": (POSITIVE, "null"), "model.moe_first_k_dense": (NON_NEGATIVE, "null"),
    "model.q_lora_rank": (POSITIVE, "null"), "model.kv_lora_rank": (POSITIVE, "512"),
    "model.qk_head_dim": (POSITIVE, "128"), "model.qk_pos_emb_head_dim": (POSITIVE, "64"),
    "model.v_head_dim": (POSITIVE, "128"), "model.rotary_scaling_factor": (POSITIVE, "null"),
    "model.linear_conv_kernel_dim": (POSITIVE, "4"), "model.linear_key_head_dim": (POSITIVE, "128"),
    "model.linear_value_head_dim": (POSITIVE, "128"), "model.linear_num_key_heads": (POSITIVE, "16"),
    "model.linear_num_value_heads": (POSITIVE, "32"),
    "dispatcher.flex_num_sms": (POSITIVE, "null"), "recompute.num_layers": (POSITIVE, "1"),
    "train.seq_length": (POSITIVE, "4096"), "train.micro_batch_size": (POSITIVE, "1"),
    "train.global_batch_size": (POSITIVE, "32"), "train.train_iters": (POSITIVE, "100"),
    "train.lr": (POSITIVE, "3e-4"), "train.min_lr": (NON_NEGATIVE, "3e-5"),
    "train.lr_warmup_iters": (NON_NEGATIVE, "10"), "train.weight_decay": (NON_NEGATIVE, "0.1"),
    "train.adam_beta1": (UNIT, "0.9"), "train.adam_beta2": (UNIT, "0.95"),
    "train.clip_grad": (NON_NEGATIVE_OR_INF, "1.0"),
    "train.log_interval": (POSITIVE, "1"), "train.eval_iters": (NON_NEGATIVE, "0"),
    "train.eval_interval": (POSITIVE, "1000"), "train.save_interval": (POSITIVE, "1000"),
    "train.manual_gc_interval": (NON_NEGATIVE, "10"), "train.profile_step_start": (NON_NEGATIVE, "10"),
    "train.profile_step_end": (POSITIVE, "12"),
    "cluster.nproc_cpu": (POSITIVE, "2"),
}


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def check_bounds(cfg: RunConfig, res: Resolved) -> None:
    for path, ((test, rule), example) in BOUNDS.items():
        value = _get(cfg, path)
        if value is None or isinstance(value, bool):
            continue
        if not test(float(value)):
            raise ConfigError(path, value, rule, f"set {path}={example}")


def check_lr_order(cfg: RunConfig, res: Resolved) -> None:
    """The schedule decays from lr to min_lr; min_lr above lr would make it climb."""
    t = cfg.train
    if t.min_lr > t.lr:
        raise ConfigError("train.min_lr", t.min_lr, f"exceeds train.lr={t.lr} (the schedule decays from lr to "
                          "min_lr)", f"set train.min_lr below {t.lr}, e.g. {t.lr / 10:g}")


def check_profile_ranks(cfg: RunConfig, res: Resolved) -> None:
    bad = [r for r in cfg.train.profile_ranks if r < 0 or r >= res.world_size]
    if bad:
        raise ConfigError("train.profile_ranks", list(cfg.train.profile_ranks),
                          f"ranks must lie in [0, {res.world_size}) (world size {res.world_size})",
                          "name existing global ranks, e.g. train.profile_ranks=[0]")


def _name_error(field: str, value: Optional[str], optional: bool) -> Optional[ConfigError]:
    if value is None and optional:
        return None
    if value is None or not str(value).strip():
        return ConfigError(field, value, "must not be empty", "give it a name"
                           + (" or leave it unset (null)" if optional else ""))
    if "/" in str(value) or str(value) in (".", ".."):
        return ConfigError(field, value, "names one directory: no '/' and not '.' or '..'",
                           f"e.g. {field}={str(value).strip('/.').replace('/', '_') or 'run'}")
    return None


def check_names(cfg: RunConfig, res: Resolved) -> None:
    """Names become directory names and Slurm job names: an empty one makes runs/-<time>."""
    for field, value, optional in (("model.name", cfg.model.name, False), ("precision.name", cfg.precision.name,
                                   False), ("launch.name", cfg.launch.name, True)):
        err = _name_error(field, value, optional)
        if err:
            raise err
    for field, value in (("data.tokenizer_model", cfg.data.tokenizer_model), ("launch.run_dir", cfg.launch.run_dir),
                         ("train.save", cfg.train.save), ("train.load", cfg.train.load),
                         ("train.tensorboard_dir", cfg.train.tensorboard_dir),
                         ("train.wandb_project", cfg.train.wandb_project),
                         ("train.wandb_exp_name", cfg.train.wandb_exp_name),
                         ("train.wandb_save_dir", cfg.train.wandb_save_dir)):
        if value is not None and not str(value).strip():
            raise ConfigError(field, value, "must not be empty", f"give {field} a value or leave it unset (null)")


VALUE_RULES = (check_bounds, check_lr_order, check_names)
