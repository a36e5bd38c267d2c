"""Parameter counts of a model config, from the architecture (no model is built).

Counted the way Megatron-Core 0.19.2 builds the model (and the way the Hugging Face checkpoints
store it): word embedding and, when untied, the output layer (unpadded vocabulary); per decoder layer
the attention block (GQA/MHA, multi-latent attention, or gated delta net), its norms, and the MLP
block (dense SwiGLU MLP, or router + routed experts + shared expert with its optional gate); the final
norm; and, separately, the multi-token-prediction layers.

`total` is the main model without MTP layers, the figure model cards publish (DeepSeek-V3: 671B;
its Hugging Face checkpoint adds the 14B MTP module -> 685B, see `hf_checkpoint`). `active` counts
what one token touches: every non-expert parameter (embedding and output layer included) plus
top-k routed experts in each MoE layer. Router expert-bias buffers are not parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.resolve import linear_attention_pattern, moe_layer_pattern
from launcher.config.schema import ModelConfig, RunConfig

# Megatron's argparse defaults for fields the schema leaves at None.
_MLA_DEFAULTS = {"kv_lora_rank": 32, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128}
_GDN_DEFAULTS = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                 "linear_num_key_heads": 16, "linear_num_value_heads": 32}


def _or(m: ModelConfig, name: str, defaults: dict) -> int:
    value = getattr(m, name)
    return defaults[name] if value is None else value


def _norm(m: ModelConfig, width: int) -> int:
    return 2 * width if m.normalization == "LayerNorm" else width


def _linear(m: ModelConfig, n_in: int, n_out: int, bias: bool | None = None) -> int:
    return n_in * n_out + (n_out if (m.add_bias_linear if bias is None else bias) else 0)


def mlp_params(m: ModelConfig, width: int) -> int:
    """One (SwiGLU or plain) MLP of the given intermediate width: fc1 (2x width when gated) + fc2."""
    up = 2 * width if m.swiglu else width
    return _linear(m, m.hidden_size, up) + _linear(m, width, m.hidden_size)


def attention_params(m: ModelConfig) -> int:
    """Self-attention with its input norm: GQA/MHA (optionally output-gated, QK-normed) or MLA."""
    h = m.hidden_size
    if m.multi_latent_attention:
        qk, pos = _or(m, "qk_head_dim", _MLA_DEFAULTS), _or(m, "qk_pos_emb_head_dim", _MLA_DEFAULTS)
        kv_rank, v = _or(m, "kv_lora_rank", _MLA_DEFAULTS), _or(m, "v_head_dim", _MLA_DEFAULTS)
        heads = m.num_attention_heads
        q_out = heads * (qk + pos)
        if m.q_lora_rank:
            q = _linear(m, h, m.q_lora_rank) + _norm(m, m.q_lora_rank) + _linear(m, m.q_lora_rank, q_out)
        else:
            q = _linear(m, h, q_out)
        kv = _linear(m, h, kv_rank + pos) + _norm(m, kv_rank) + _linear(m, kv_rank, heads * (qk + v))
        return _norm(m, h) + q + kv + _linear(m, heads * v, h)
    d = m.kv_channels or h // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    q_out = m.num_attention_heads * d * (2 if m.attention_output_gate else 1)
    qkv = _linear(m, h, q_out + 2 * groups * d, bias=m.add_bias_linear or m.add_qkv_bias)
    qk_norm = 2 * _norm(m, d) if m.qk_layernorm else 0
    return _norm(m, h) + qkv + qk_norm + _linear(m, m.num_attention_heads * d, h)


def gated_delta_net_params(m: ModelConfig) -> int:
    """Gated delta net (linear attention) with its input norm: in_proj (q, k, v, z, beta, alpha),
    depthwise conv over q/k/v, dt_bias and A_log per value head, gated RMSNorm over a value head, out_proj."""
    h = m.hidden_size
    qk = _or(m, "linear_num_key_heads", _GDN_DEFAULTS) * _or(m, "linear_key_head_dim", _GDN_DEFAULTS)
    v_heads = _or(m, "linear_num_value_heads", _GDN_DEFAULTS)
    v_dim = _or(m, "linear_value_head_dim", _GDN_DEFAULTS)
    v = v_heads * v_dim
    in_proj = _linear(m, h, 2 * qk + 2 * v + 2 * v_heads)
    conv = (2 * qk + v) * _or(m, "linear_conv_kernel_dim", _GDN_DEFAULTS)
    return _norm(m, h) + in_proj + conv + 2 * v_heads + _norm(m, v_dim) + _linear(m, v, h)


def moe_params(m: ModelConfig) -> tuple[int, int]:
    """One MoE block with its pre-MLP norm: (all parameters, parameters one token uses)."""
    h, e = m.hidden_size, m.num_experts
    router = h * e
    expert = mlp_params(m, m.moe_ffn_hidden_size)
    shared = 0
    if m.moe_shared_expert_intermediate_size:
        shared = mlp_params(m, m.moe_shared_expert_intermediate_size) + (h if m.moe_shared_expert_gate else 0)
    common = _norm(m, h) + router + shared
    return common + e * expert, common + m.moe_router_topk * expert


def layer_params(m: ModelConfig, moe: bool, linear_attention: bool) -> tuple[int, int]:
    """One decoder layer: (all parameters, parameters one token uses)."""
    attn = gated_delta_net_params(m) if linear_attention else attention_params(m)
    if moe:
        total, active = moe_params(m)
    else:
        total = active = _norm(m, m.hidden_size) + mlp_params(m, m.ffn_hidden_size)
    return attn + total, attn + active


@dataclass(frozen=True)
class LayerSplit:
    """One decoder (or MTP) layer's parameters by how a parallel layout stores them."""

    sharded: int
    """Tensor-parallel linears: attention projections, dense MLP, shared expert (each TP rank holds 1/TP)."""
    replicated: int
    """Norms, the router and the shared-expert gate: every TP rank holds them whole."""
    experts: int
    """Routed experts (each EP x ETP rank holds 1/(EP*ETP))."""


def _replicated(m: ModelConfig, moe: bool, linear_attention: bool) -> int:
    """Norm weights (input, pre-MLP, QK or MLA latent norms) and the router: not split by TP."""
    h = m.hidden_size
    n = 2 * _norm(m, h)
    if linear_attention:
        n += _norm(m, _or(m, "linear_value_head_dim", _GDN_DEFAULTS))
    elif m.multi_latent_attention:
        n += _norm(m, _or(m, "kv_lora_rank", _MLA_DEFAULTS)) + (_norm(m, m.q_lora_rank) if m.q_lora_rank else 0)
    elif m.qk_layernorm:
        n += 2 * _norm(m, m.kv_channels or h // m.num_attention_heads)
    if moe:
        n += h * m.num_experts + (h if m.moe_shared_expert_gate and m.moe_shared_expert_intermediate_size else 0)
    return n


def layer_split(m: ModelConfig, moe: bool, linear_attention: bool) -> LayerSplit:
    """layer_params of one layer split into TP-sharded, replicated and routed-expert parameters."""
    total, _ = layer_params(m, moe, linear_attention)
    experts = m.num_experts * mlp_params(m, m.moe_ffn_hidden_size) if moe else 0
    replicated = _replicated(m, moe, linear_attention)
    return LayerSplit(sharded=total - experts - replicated, replicated=replicated, experts=experts)


def mtp_wrap(m: ModelConfig) -> int:
    """What an MTP layer adds around its decoder layer: enorm, hnorm, final norm, eh_proj (2h -> h)."""
    return 3 * _norm(m, m.hidden_size) + 2 * m.hidden_size * m.hidden_size


@dataclass(frozen=True)
class ParamCount:
    total: int
    """Main model (no MTP layers)."""
    active: int
    """Per token: non-expert parameters (embedding and output included) + top-k routed experts."""
    embedding: int
    output: int
    """Output layer; 0 when tied to the embedding."""
    experts: int
    """Routed expert parameters (all MoE layers)."""
    mtp: int
    """MTP layers as Megatron builds them (they share the embedding and output layer)."""
    mtp_active: int
    mtp_layers: int = 0

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def hf_checkpoint(self) -> int:
        """What a Hugging Face checkpoint holds: each MTP module stores its own copy of the embedding
        and output head (DeepSeek-V3: 671B + 14B MTP module = 685B)."""
        return self.total + self.mtp + self.mtp_layers * (self.embedding + self.output)


def count(cfg: RunConfig) -> ParamCount:
    """Total and active parameters of cfg.model (its num_layers, MoE and attention patterns)."""
    m = cfg.model
    moe = moe_layer_pattern(cfg)
    linear = linear_attention_pattern(cfg)
    h = m.hidden_size
    embedding = m.vocab_size * h
    output = embedding if m.untie_embeddings_and_output_weights else 0
    total = active = embedding + output + _norm(m, h)  # + final norm
    experts = 0
    routed = m.num_experts * mlp_params(m, m.moe_ffn_hidden_size)
    for i in range(m.num_layers):
        t, a = layer_params(m, bool(moe[i]), bool(linear[i]))
        total, active = total + t, active + a
        experts += routed if moe[i] else 0
    n_mtp = m.mtp_num_layers or 0
    # an MTP layer: enorm, hnorm, eh_proj (2h -> h), a decoder layer like the last one (full
    # attention), final norm
    t, a = layer_params(m, bool(moe[-1]), False)
    wrap = mtp_wrap(m)
    return ParamCount(total=total, active=active, embedding=embedding, output=output, experts=experts,
                      mtp=n_mtp * (t + wrap), mtp_active=n_mtp * (a + wrap), mtp_layers=n_mtp)


def human(n: float) -> str:
    """1234567890 -> '1.23B'; 1.04e12 -> '1.04T'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.0f}{unit}"
    return str(int(n))


@dataclass(frozen=True)
class Published:
    """Parameter counts a model's publisher states, and how it counts active parameters."""

    total: float
    active: float
    source: str
    active_counts_input_embedding: bool = True
    """DeepSeek and Moonshot count activated parameters without the input embedding (a table lookup,
    no compute); Qwen and Mistral count every parameter a token touches, embedding included."""

    def active_of(self, c: ParamCount) -> int:
        return c.active if self.active_counts_input_embedding else c.active - c.embedding


# Published figures (model cards and reports), checked by tests/unit/plan/test_params.py.
PUBLISHED: dict[str, Published] = {
    "deepseek_v3": Published(671e9, 37e9, "deepseek-ai/DeepSeek-V3 model card: 671B total (685B on Hugging Face "
                             "with the 14B MTP module), 37B activated", active_counts_input_embedding=False),
    "deepseek_v2": Published(236e9, 21e9, "deepseek-ai/DeepSeek-V2 model card: 236B total, 21B activated",
                             active_counts_input_embedding=False),
    "deepseek_v2_lite": Published(15.7e9, 2.4e9, "deepseek-ai/DeepSeek-V2-Lite model card: 15.7B total, 2.4B "
                                  "activated", active_counts_input_embedding=False),
    # the released checkpoint's count; the technical report (arXiv:2507.20534) says 1.04T, which this config
    # reproduces only with one MTP layer added (1.026T + 17.2B), and the release has none
    "kimi_k2": Published(1.03e12, 32e9, "moonshotai/Kimi-K2-Base on Hugging Face: 1.03T (safetensors metadata; "
                         "the report's 1.04T matches this plus one MTP layer), model card: 32B activated",
                         active_counts_input_embedding=False),
    "qwen3_30b_a3b": Published(30.5e9, 3.3e9, "Qwen/Qwen3-30B-A3B model card: 30.5B total, 3.3B activated"),
    "qwen3_235b_a22b": Published(235e9, 22e9, "Qwen/Qwen3-235B-A22B model card: 235B total, 22B activated"),
    "qwen3_next_80b_a3b": Published(80e9, 3e9, "Qwen/Qwen3-Next-80B-A3B-Base model card: 80B total, 3B activated"),
    "qwen2_57b_a14b": Published(57.4e9, 14e9, "Qwen2 technical report (arXiv:2407.10671): 57.4B total, 14B "
                                "activated"),
    "mixtral_8x7b": Published(46.7e9, 12.9e9, "Mistral AI, 'Mixtral of experts': 46.7B total, 12.9B per token"),
    "mixtral_8x22b": Published(141e9, 39e9, "Mistral AI, 'Cheaper, Better, Faster, Stronger' (Mixtral 8x22B): "
                               "141B total, 39B active"),
}
