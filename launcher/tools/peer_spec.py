"""The Hugging Face transformers model that is the same architecture as a composed recipe.

The performance benchmark (launcher/tools/bench.py) trains our Megatron recipe and the model a user would
otherwise take from transformers, on the same shape. This module maps our ModelConfig to the
transformers config of that family, and refuses (field, value, rule, fix) what the transformers class
cannot express, so that the two sides never silently differ in architecture.
"""
from __future__ import annotations

from typing import Callable

from launcher.errors import ConfigError
from launcher.config.schema import ModelConfig, RunConfig

EXPERTS_IMPLEMENTATIONS = ("grouped_mm", "batched_mm", "eager")


def _require(field: str, value, ok: bool, rule: str, fix: str) -> None:
    if not ok:
        raise ConfigError(field, value, rule, fix)


def _common_checks(m: ModelConfig) -> None:
    """What both supported transformers families share with our schema."""
    _require("model.normalization", m.normalization, m.normalization == "RMSNorm",
             "the transformers peer families use RMSNorm", "benchmark a model with RMSNorm")
    _require("model.swiglu", m.swiglu, m.swiglu, "the peer's experts are SwiGLU MLPs", "set model.swiglu=true")
    _require("model.add_bias_linear", m.add_bias_linear, not m.add_bias_linear,
             "the peer's linear layers have no bias", "set model.add_bias_linear=false")
    _require("model.moe_router_score_function", m.moe_router_score_function,
             m.moe_router_score_function == "softmax", "the peer routes with a softmax router",
             "benchmark a softmax-routed model (Qwen3-MoE, Mixtral)")
    _require("model.moe_shared_expert_intermediate_size", m.moe_shared_expert_intermediate_size,
             not m.moe_shared_expert_intermediate_size, "the peer families have no shared expert",
             "benchmark a model without shared experts")
    _require("model.multi_latent_attention", m.multi_latent_attention, not m.multi_latent_attention,
             "the peer families use grouped-query attention", "benchmark a GQA model")
    _require("model.mtp_num_layers", m.mtp_num_layers, not m.mtp_num_layers,
             "the peer families have no multi-token prediction", "set model.mtp_num_layers=null")
    _require("model.moe_first_k_dense", m.moe_first_k_dense, not m.moe_first_k_dense and m.moe_layer_freq == "1",
             "every layer of the peer families is an MoE layer", "benchmark with model.moe_layer_freq=1")
    _require("model.experimental_attention_variant", m.experimental_attention_variant,
             m.experimental_attention_variant is None, "the peer families use softmax attention only",
             "set model.experimental_attention_variant=null")
    _require("model.position_embedding_type", m.position_embedding_type, m.position_embedding_type == "rope"
             and m.rotary_percent == 1.0, "the peer families use full RoPE", "benchmark a full-RoPE model")


def _shared(m: ModelConfig) -> dict:
    heads = m.num_attention_heads
    return {
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": heads, "num_key_value_heads": m.num_query_groups or heads,
        "head_dim": m.kv_channels or m.hidden_size // heads, "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.norm_epsilon, "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rotary_base)},
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights, "initializer_range": m.init_method_std,
        "num_experts_per_tok": m.moe_router_topk, "router_aux_loss_coef": m.moe_aux_loss_coeff,
        "output_router_logits": True, "use_cache": False, "attention_dropout": m.attention_dropout,
    }


def qwen3_moe(m: ModelConfig) -> dict:
    """Qwen3MoeConfig: QK RMSNorm, top-k probabilities renormalised (norm_topk_prob, which is Megatron's
    softmax over the top-k logits, i.e. moe_router_pre_softmax=false)."""
    _require("model.qk_layernorm", m.qk_layernorm, m.qk_layernorm, "Qwen3-MoE normalises queries and keys",
             "set model.qk_layernorm=true or benchmark a Mixtral-style model")
    return {**_shared(m), "intermediate_size": m.ffn_hidden_size, "moe_intermediate_size": m.moe_ffn_hidden_size,
            "num_experts": m.num_experts, "norm_topk_prob": not m.moe_router_pre_softmax,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": m.add_qkv_bias}


def mixtral(m: ModelConfig) -> dict:
    """MixtralConfig: no QK norm, softmax then top-k renormalised (Megatron's pre-softmax=false)."""
    _require("model.qk_layernorm", m.qk_layernorm, not m.qk_layernorm, "Mixtral has no QK normalisation",
             "set model.qk_layernorm=false or benchmark a Qwen3-MoE model")
    _require("model.add_qkv_bias", m.add_qkv_bias, not m.add_qkv_bias, "Mixtral has no QKV bias",
             "set model.add_qkv_bias=false")
    return {**_shared(m), "intermediate_size": m.moe_ffn_hidden_size, "num_local_experts": m.num_experts}


FAMILIES: dict[str, Callable[[ModelConfig], dict]] = {"qwen3_moe": qwen3_moe, "mixtral": mixtral}


def family_of(m: ModelConfig) -> str:
    """Qwen3-style (QK norm) models map to Qwen3MoeForCausalLM, the rest to MixtralForCausalLM."""
    return "qwen3_moe" if m.qk_layernorm else "mixtral"


def peer_spec(cfg: RunConfig, micro_batch_size: int, train_iters: int, experts_implementation: str = "grouped_mm",
              attn_implementation: str = "sdpa", profile_steps: tuple[int, int] | None = None) -> dict:
    """Everything recipes/peer_hf.py needs, from the composed recipe: same architecture, sequence
    length and global batch (tokens per optimizer step); its own micro batch size."""
    m, t = cfg.model, cfg.train
    _common_checks(m)
    _require("bench --experts-impl", experts_implementation, experts_implementation in EXPERTS_IMPLEMENTATIONS,
             f"one of {', '.join(EXPERTS_IMPLEMENTATIONS)}", "pick a transformers experts implementation")
    _require("bench --peer-mbs", micro_batch_size, micro_batch_size >= 1 and t.global_batch_size % micro_batch_size
             == 0, f"a divisor of train.global_batch_size ({t.global_batch_size})", "pick a divisor")
    family = family_of(m)
    return {"family": family, "model_name": m.name, "hf_config": FAMILIES[family](m),
            "seq_length": t.seq_length, "micro_batch_size": micro_batch_size,
            "global_batch_size": t.global_batch_size, "train_iters": train_iters, "lr": t.lr,
            "clip_grad": t.clip_grad, "seed": t.seed, "experts_implementation": experts_implementation,
            "attn_implementation": attn_implementation, "profile_steps": list(profile_steps) if profile_steps else None}
