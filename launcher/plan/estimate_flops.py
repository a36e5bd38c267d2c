"""Model FLOPs per token and per step: the arithmetic of Megatron-Core 0.19.2's
megatron.training.training.num_floating_point_operations (transformer path, BSHD batches), the number
behind its logged TFLOP/s/GPU, in plain Python so the estimate needs no megatron import.

Per token, forward and backward (3 x the forward GEMMs, 2 FLOPs per multiply-add):
  MLP        12 h (3 or 2) x (ffn x dense layers + (moe_ffn x top-k + shared) x MoE layers)
  attention  token-linear projections per layer (GQA: QKV + out; MLA: the LoRA and up projections;
             gated delta net: in_proj, conv, delta rule, out_proj) + core attention seq x (its L^2 part)
  MTP        12 x mtp x (3h + 2h^2), and each MTP layer counts as one more decoder layer (MoE when the
             last layer is)
  logits     12 h x padded vocab x (1 + mtp)
tests/unit/plan/test_estimate.py checks the result equals Megatron's function on several families.
"""
from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.resolve import eval_layer_pattern, moe_layer_pattern
from launcher.plan.estimate_memory import padded_vocab
from launcher.config.schema import ModelConfig, RunConfig

_MLA = {"kv_lora_rank": 32, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128}
_GDN = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32}
FWD_BWD_FMA = 3 * 2  # forward + wgrad + dgrad, 2 FLOPs per multiply-add


def _or(m: ModelConfig, name: str, defaults: dict) -> int:
    value = getattr(m, name)
    return defaults[name] if value is None else value


def _mla_terms(m: ModelConfig) -> tuple[float, float]:
    """(token-linear, core per seq position) FLOPs per token of one MLA layer."""
    h, n = m.hidden_size, m.num_attention_heads
    qk, pos = _or(m, "qk_head_dim", _MLA), _or(m, "qk_pos_emb_head_dim", _MLA)
    kv_rank, v = _or(m, "kv_lora_rank", _MLA), _or(m, "v_head_dim", _MLA)
    if m.q_lora_rank is None:
        q_term = h * n * (qk + pos)
    else:
        q_term = m.q_lora_rank * (h + n * (qk + pos) + 1)
    linear = FWD_BWD_FMA * (q_term + kv_rank * (h + n * (qk + v) + 1) + h * pos + n * v * h)
    core = FWD_BWD_FMA * (n * (qk + pos) / 2 + n * v / 2)
    return linear, core


def _gqa_terms(m: ModelConfig) -> tuple[float, float]:
    h, n = m.hidden_size, m.num_attention_heads
    d = m.kv_channels or h // n
    groups = m.num_query_groups or n
    q, kv = d * n, d * groups
    gate = q if m.attention_output_gate else 0
    linear = FWD_BWD_FMA * (h * (q + 2 * kv + gate) + q * h)
    core = FWD_BWD_FMA * q / 2 * 2
    return linear, core


def _gdn_term(m: ModelConfig) -> float:
    qk = _or(m, "linear_key_head_dim", _GDN) * _or(m, "linear_num_key_heads", _GDN)
    v_head, v_heads = _or(m, "linear_value_head_dim", _GDN), _or(m, "linear_num_value_heads", _GDN)
    v = v_head * v_heads
    return FWD_BWD_FMA * (m.hidden_size * (2 * qk + 2 * v + 2 * v_heads)
                          + _or(m, "linear_conv_kernel_dim", _GDN) * (2 * qk + v)
                          + v_heads * v_head ** 2 * 4 + m.hidden_size * v)


def _linear_layers(m: ModelConfig, num_layers: int) -> int:
    """Gated-delta-net layers among num_layers (MTP layers included, as Megatron counts them)."""
    if m.experimental_attention_variant != "gated_delta_net" or m.linear_attention_freq is None:
        return 0
    text = m.linear_attention_freq
    if "[" in text:
        return sum(eval_layer_pattern(text))
    freq = int(text)
    return sum(0 if (i + 1) % freq == 0 else 1 for i in range(num_layers))


@dataclass(frozen=True)
class Flops:
    per_token: float
    """Forward + backward FLOPs per token (sequence length fixed by the config)."""
    per_step: float
    """One global batch (Megatron's num_floating_point_operations(args, global_batch_size))."""


def flops_per_sequence_tokens(cfg: RunConfig, sequences: int) -> float:
    """num_floating_point_operations(args, sequences) for this config."""
    m, s = cfg.model, cfg.train.seq_length
    moe = moe_layer_pattern(cfg)
    n_moe, n_dense = sum(moe), m.num_layers - sum(moe)
    mtp = m.mtp_num_layers or 0
    n_moe += moe[-1] * mtp
    n_dense += (1 - moe[-1]) * mtp
    layers = m.num_layers + mtp
    gated = 3 if m.swiglu else 2
    shared = m.moe_shared_expert_intermediate_size or 0
    mlp = FWD_BWD_FMA * m.hidden_size * (m.ffn_hidden_size * gated * n_dense
                                         + m.moe_ffn_hidden_size * m.moe_router_topk * gated * n_moe
                                         + shared * gated * n_moe)
    linear, core = _mla_terms(m) if m.multi_latent_attention else _gqa_terms(m)
    n_linear = _linear_layers(m, layers)
    attn = _gdn_term(m) * n_linear + linear * (layers - n_linear)
    mtp_term = FWD_BWD_FMA * mtp * (3 * m.hidden_size + 2 * m.hidden_size ** 2)
    logits = FWD_BWD_FMA * m.hidden_size * padded_vocab(cfg) * (mtp + 1)
    tokens = sequences * s
    return tokens * (mlp + attn + mtp_term + logits) + sequences * s * s * core * (layers - n_linear)


def estimate_flops(cfg: RunConfig) -> Flops:
    step = flops_per_sequence_tokens(cfg, cfg.train.global_batch_size)
    return Flops(per_token=step / (cfg.train.global_batch_size * cfg.train.seq_length), per_step=step)
