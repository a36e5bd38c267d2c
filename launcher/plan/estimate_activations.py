"""Activation bytes one decoder layer keeps for its backward pass, per token of one micro batch.

Counted tensor by tensor as Megatron-Core 0.19.2 with Transformer Engine saves them (the `local` spec where
it differs): what each autograd node keeps between forward and backward, so a tensor that two nodes save
(attention output = projection input) is counted once and one that nobody saves (the norm output feeding
RoPE, the expert output after the combine) not at all. Every figure is bytes per token of the rank's
sequence shard (seq / CP x MBS tokens); tensors of the hidden width are further split by TP under sequence
parallelism, head- and FFN-split tensors by TP (ETP for experts).

Recompute: a selective module keeps only its input (Megatron checkpoints it and recomputes it in the
backward pass, where it exists again for one layer: `layer_transient`); full recompute keeps each layer's
input only.
"""
from __future__ import annotations

from dataclasses import dataclass

from launcher.config.schema import ModelConfig

# Megatron's argparse defaults where the schema leaves a field at None (launcher/plan/params.py uses the same).
_MLA = {"kv_lora_rank": 32, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128}
_GDN = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32}
FP32 = 4


def _or(m: ModelConfig, name: str, defaults: dict) -> int:
    value = getattr(m, name)
    return defaults[name] if value is None else value


@dataclass(frozen=True)
class ActContext:
    """What the saved tensors of one layer depend on besides the architecture."""

    m: ModelConfig
    seq: int
    """Sequence length on this rank (seq_length / CP): the unfused attention keeps seq x seq scores."""
    tp: int
    sp_div: int
    """TP under sequence parallelism (hidden-width tensors are split), else 1."""
    etp: int
    act: int
    """Bytes of one activation element: 2 (BF16/FP16) or 4 (FP32)."""
    gemm_in: float
    """Bytes per element a GEMM keeps of its input for the weight gradient: `act`, or 1 under FP8 (plus
    one FP32 scale per 128 elements with block scaling)."""
    modules: frozenset[str]
    """Selective-recompute modules."""
    fused_attention: bool
    """Transformer Engine's flash/cuDNN attention keeps no seq x seq tensor; the local spec does."""


@dataclass(frozen=True)
class LayerActivations:
    """Bytes per token of one layer: what stays saved, and what exists only while its backward runs."""

    attention: float
    mlp: float
    transient: float

    @property
    def saved(self) -> float:
        return self.attention + self.mlp


def gqa_attention(c: ActContext) -> tuple[float, float]:
    """GQA/MHA: (saved, recomputed) bytes per token. TE fuses the input norm into the QKV GEMM
    (LayerNormLinear keeps x and the norm output); QK norms and RoPE make new q and k (the fused RoPE
    kernel keeps nothing), v stays a view of the QKV output; the attention keeps its output (also the
    projection's input) and FP32 softmax statistics per head."""
    m, a = c.m, c.act
    h, heads = m.hidden_size, m.num_attention_heads
    d = m.kv_channels or h // heads
    groups = m.num_query_groups or heads
    q, kv = heads * d, groups * d
    gate = q if m.attention_output_gate else 0
    norm = a * h / c.sp_div + c.gemm_in * h / c.sp_div        # x, and the norm output the QKV GEMM keeps
    qkv = a * (q + gate + 2 * kv) / c.tp                       # QKV output (v and the norm inputs view it)
    rope = a * (q + kv) / c.tp                                 # the new q and k attention keeps
    out = c.gemm_in * q / c.tp + FP32 * heads / c.tp           # attention output + softmax statistics
    gate_saved = a * gate / c.tp                               # sigmoid gate on the output
    scores = 0.0
    if not c.fused_attention:
        # local spec: the repeated k/v of GQA and the softmax probabilities (BF16, seq x seq per head)
        scores = a * 2 * (q - kv) / c.tp + a * heads / c.tp * c.seq
    stats = FP32 * heads / c.tp
    if "core_attn" in c.modules:
        # the checkpoint keeps q, k, v (its inputs) and the output; the softmax internals come back in
        # the backward pass
        return norm + qkv + rope + out - stats + gate_saved, stats + scores
    return norm + qkv + rope + out + scores + gate_saved, 0.0


def mla_attention(c: ActContext) -> tuple[float, float]:
    """Multi-latent attention: (saved, recomputed). The input norm is a separate TENorm (its output feeds
    both down projections); the latent norms keep their inputs and the up projections theirs; q and k
    are rebuilt around RoPE (new tensors), v stays a view of the key/value up projection's output."""
    m, a, g = c.m, c.act, c.gemm_in
    h, heads = m.hidden_size, m.num_attention_heads
    qk, pos = _or(m, "qk_head_dim", _MLA), _or(m, "qk_pos_emb_head_dim", _MLA)
    kv_rank, v = _or(m, "kv_lora_rank", _MLA), _or(m, "v_head_dim", _MLA)
    x = a * h / c.sp_div
    ln = 0.0 if "layernorm" in c.modules else g * h / c.sp_div
    q_rank = m.q_lora_rank or 0
    down = (a + g) * q_rank + a * (kv_rank + pos) + g * kv_rank   # latent outputs and their norms
    up = a * heads * (qk + v) / c.tp                               # kv up projection output (holds v)
    rope = 2 * a * heads * (qk + pos) / c.tp                       # new q and k
    out = g * heads * v / c.tp + FP32 * heads / c.tp
    if "mla_up_proj" in c.modules:
        return x + ln + down + out, up + rope
    return x + ln + down + up + rope + out, 0.0


def gdn_attention(c: ActContext) -> tuple[float, float]:
    """Gated delta net (Qwen3-Next linear attention): (saved, recomputed). in_proj fused with the norm
    (x and norm output), its output (q, k, v, z, beta, alpha), the causal conv's output after SiLU, the
    L2-normalised q and k and the decay/beta the chunked kernel keeps (it recomputes its chunk states in
    the backward pass), the core output, the gated RMSNorm output the out projection keeps."""
    m, a, g = c.m, c.act, c.gemm_in
    h = m.hidden_size
    qk = _or(m, "linear_num_key_heads", _GDN) * _or(m, "linear_key_head_dim", _GDN)
    vh = _or(m, "linear_num_value_heads", _GDN)
    v = vh * _or(m, "linear_value_head_dim", _GDN)
    norm = (a + g) * h / c.sp_div
    proj = a * (2 * qk + 2 * v + 2 * vh) / c.tp
    conv = a * (2 * qk + v) / c.tp
    kernel = (a * 2 * qk + FP32 * 2 * vh) / c.tp
    out = a * v / c.tp + g * v / c.tp
    if "gdn_norm_out" in c.modules:
        return norm + proj + conv + kernel + a * v / c.tp, g * v / c.tp
    return norm + proj + conv + kernel + out, 0.0


def _swiglu_mlp(c: ActContext, tokens: float, width: float) -> float:
    """One MLP's saved bytes for `tokens` tokens (per token of the layer): the fc1 output the activation
    keeps (2 x width gated) and the activation output fc2 keeps."""
    up = 2 * width if c.m.swiglu else width
    return tokens * (c.act * up + c.gemm_in * width)


def dense_mlp(c: ActContext) -> tuple[float, float]:
    """Dense MLP with TE's fused pre-MLP norm: (saved, recomputed)."""
    m = c.m
    norm = (c.act + c.gemm_in) * m.hidden_size / c.sp_div
    body = _swiglu_mlp(c, 1.0, m.ffn_hidden_size / c.tp)
    if "mlp" in c.modules:
        return c.act * m.hidden_size / c.sp_div, norm - c.act * m.hidden_size / c.sp_div + body
    return norm + body, 0.0


def expert_tokens(c: ActContext) -> float:
    """Routed copies of one token this rank's experts process, on average: top-k per token; the rank's
    tokens are its sequence-parallel shard, gathered over the expert-TP group."""
    return c.m.moe_router_topk * c.etp / c.sp_div


def moe_block(c: ActContext, imbalance: float = 1.0) -> tuple[float, float]:
    """MoE block: (saved, recomputed). The pre-MLP norm (x, output), the router (FP32 logits, scores,
    routing map, the probabilities the aux loss keeps), the dispatched expert input the first grouped
    GEMM keeps, the expert MLP (fc1 output, activation output), the permuted probabilities (applied in
    the activation, so the combine keeps nothing), and the shared expert when the model has one.
    `imbalance` scales the routed copies (1 = balanced, what forced balance gives)."""
    m, a, g = c.m, c.act, c.gemm_in
    h, e = m.hidden_size, m.num_experts
    x = a * h / c.sp_div
    ln = g * h / c.sp_div
    router = (3 * FP32 + 1) * e / c.sp_div
    routed = expert_tokens(c) * imbalance
    width = m.moe_ffn_hidden_size / c.etp
    up = (2 * width if m.swiglu else width)
    fc1_in = routed * g * h
    fc1_out = routed * a * up
    act_out = routed * g * width
    probs = routed * FP32
    shared = 0.0
    if m.moe_shared_expert_intermediate_size:
        shared = _swiglu_mlp(c, 1.0, m.moe_shared_expert_intermediate_size / c.tp)
        if m.moe_shared_expert_gate:
            shared += a * 1 / c.sp_div
    recomputed = 0.0
    if "layernorm" in c.modules:
        ln, recomputed = 0.0, recomputed + ln
    if "moe" in c.modules:
        body = router + fc1_in + fc1_out + act_out + probs + shared
        return x + g * h / c.sp_div, recomputed + body
    if "moe_act" in c.modules:
        act_out, recomputed = 0.0, recomputed + act_out
    if "shared_experts" in c.modules and shared:
        recomputed, shared = recomputed + shared, 0.0
    return x + ln + router + fc1_in + fc1_out + act_out + probs + shared, recomputed


def moe_backward_transient(c: ActContext) -> float:
    """Gradient buffers that exist while one MoE block runs its backward: the gradients of the fc1 output
    and of the expert input (then the gradient flowing back through the dispatcher)."""
    m = c.m
    width = m.moe_ffn_hidden_size / c.etp
    up = 2 * width if m.swiglu else width
    return expert_tokens(c) * c.act * (up + 2 * m.hidden_size)


def layer(c: ActContext, moe: bool, linear_attention: bool, imbalance: float = 1.0) -> LayerActivations:
    """Saved and transient bytes per token of one decoder layer."""
    if linear_attention:
        att, att_re = gdn_attention(c)
    elif c.m.multi_latent_attention:
        att, att_re = mla_attention(c)
    else:
        att, att_re = gqa_attention(c)
    mlp, mlp_re = moe_block(c, imbalance) if moe else dense_mlp(c)
    grads = moe_backward_transient(c) if moe else c.act * 3 * c.m.ffn_hidden_size / c.tp
    return LayerActivations(attention=att, mlp=mlp, transient=att_re + mlp_re + grads)


def full_recompute_layer(c: ActContext, inner: LayerActivations, unit: int = 1) -> LayerActivations:
    """Full recompute, `unit` layers per checkpoint (uniform method): each unit keeps its input only (per
    layer: 1/unit of it); the unit's whole activation set exists again during its backward."""
    x = c.act * c.m.hidden_size / c.sp_div
    return LayerActivations(attention=x / unit, mlp=0.0, transient=unit * inner.saved + inner.transient)
