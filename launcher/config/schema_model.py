"""The model group's schema (conf/model/*.yaml): the architecture, in Megatron's argparse dest names.

Split from launcher/config/schema.py (which re-exports it) to keep each module small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from launcher.config.choices import AttentionVariant, GroupedGemmImpl, RopeType, ScoreFunction, TransformerImpl


@dataclass
class ModelConfig:
    """Architecture of one published model; no parallel degrees here."""

    name: str = MISSING
    """Model id, e.g. qwen3_30b_a3b; also names the run."""
    num_layers: int = MISSING
    hidden_size: int = MISSING
    ffn_hidden_size: int = MISSING
    """Dense MLP width (dense layers and Megatron's default for moe_ffn_hidden_size)."""
    num_attention_heads: int = MISSING
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention; None = multi-head attention."""
    kv_channels: Optional[int] = None
    """Head dimension; None = hidden_size / num_attention_heads."""
    max_position_embeddings: int = 4096
    vocab_size: int = MISSING
    make_vocab_size_divisible_by: int = 128
    normalization: str = "RMSNorm"
    norm_epsilon: float = 1e-5
    position_embedding_type: str = "rope"
    rotary_base: int = 10000
    rotary_percent: float = 1.0
    swiglu: bool = True
    qk_layernorm: bool = False
    untie_embeddings_and_output_weights: bool = True
    add_bias_linear: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    init_method_std: float = 0.02
    transformer_impl: TransformerImpl = TransformerImpl.auto
    """transformer_engine, local, or auto (TE when the device is a GPU and TE is installed)."""
    # --- MoE ---
    num_experts: int = MISSING
    moe_ffn_hidden_size: int = MISSING
    moe_router_topk: int = 2
    moe_layer_freq: str = "1"
    """Megatron syntax: "1" (every layer MoE) or a Python list expression like "([0]*3+[1]*58)"."""
    moe_shared_expert_intermediate_size: Optional[int] = None
    moe_router_score_function: ScoreFunction = ScoreFunction.softmax
    moe_router_pre_softmax: bool = False
    moe_router_topk_scaling_factor: Optional[float] = None
    moe_router_load_balancing_type: str = "aux_loss"
    moe_aux_loss_coeff: float = 1e-3
    moe_z_loss_coeff: Optional[float] = None
    moe_router_dtype: Optional[str] = "fp32"
    moe_router_enable_expert_bias: bool = False
    moe_router_bias_update_rate: Optional[float] = None
    moe_router_num_groups: Optional[int] = None
    moe_router_group_topk: Optional[int] = None
    moe_grouped_gemm: bool = True
    """Grouped GEMM for experts (Transformer Engine only; ignored by the local spec)."""
    moe_grouped_gemm_impl: GroupedGemmImpl = GroupedGemmImpl.auto
    """Expert GEMMs: auto (torch where valid on Hopper, else te: launcher/plan/tuned.py), te (Transformer Engine
    GroupedLinear; on Hopper with cuBLASLt < 13.4 one GEMM per expert)
    or torch (torch.nn.functional.grouped_mm inside Megatron's TEGroupedMLP, one kernel per projection:
    recipes/experts.py). torch needs TE (on a GPU), BF16, parallel.etp=1, no expert bias; its checkpoints have TE's
    layout, so either implementation resumes the other's."""
    mtp_num_layers: Optional[int] = None
    """Multi-token-prediction layers (DeepSeek-V3 style); None = off."""
    moe_first_k_dense: Optional[int] = None
    """Dense MLP in the first K layers, MoE after (DeepSeek's first_k_dense_replace): emitted as
    --moe-layer-freq "([0]*K+[1]*(num_layers-K))", so it follows model.num_layers. Excludes a
    list-valued moe_layer_freq."""
    moe_shared_expert_gate: bool = False
    """Sigmoid gate on the shared expert's output (Qwen2-MoE, Qwen3-Next)."""
    add_qkv_bias: bool = False
    """Bias on the query/key/value projections only (Qwen2)."""
    attention_output_gate: bool = False
    """Sigmoid gate on the attention output, computed from the input (Qwen3-Next gated attention)."""
    layernorm_zero_centered_gamma: bool = False
    """Zero-centred norm weight, y = x_norm * (1 + gamma) (Qwen3-Next); Megatron's --apply-layernorm-1p."""
    rope_type: Optional[RopeType] = None
    """MLA RoPE: yarn or rope; None = Megatron's default (yarn with MLA, rope otherwise)."""
    rotary_scaling_factor: Optional[float] = None
    """YaRN scaling factor (MLA); None = Megatron's default (1.0)."""
    mscale: Optional[float] = None
    """YaRN mscale (MLA); None = Megatron's default (1.0)."""
    mscale_all_dim: Optional[float] = None
    """YaRN mscale_all_dim (MLA); None = Megatron's default (0.0)."""
    # --- multi-latent attention (DeepSeek-V2/V3, Kimi-K2); needs Transformer Engine ---
    multi_latent_attention: bool = False
    q_lora_rank: Optional[int] = None
    """Query compression rank; None = no query compression (V2-Lite)."""
    kv_lora_rank: Optional[int] = None
    """Key/value compression rank; None = Megatron's default (32: set it with MLA)."""
    qk_head_dim: Optional[int] = None
    """Per-head query/key width without the RoPE part; None = Megatron's default (128)."""
    qk_pos_emb_head_dim: Optional[int] = None
    """Per-head RoPE width of query/key; None = Megatron's default (64)."""
    v_head_dim: Optional[int] = None
    """Per-head value width; None = Megatron's default (128)."""
    # --- gated delta net linear attention (Qwen3-Next); needs Transformer Engine ---
    experimental_attention_variant: Optional[AttentionVariant] = None
    """gated_delta_net (hybrid linear/full attention, with linear_attention_freq); None = off. (Megatron's
    other variant, dsa, needs indexer settings the schema does not model.)"""
    linear_attention_freq: Optional[str] = None
    """Megatron syntax: "N" (every N-th layer full attention, the rest linear) or a list expression
    such as "([1]*3+[0]*1)*12" (1 = linear attention layer)."""
    linear_conv_kernel_dim: Optional[int] = None
    linear_key_head_dim: Optional[int] = None
    linear_value_head_dim: Optional[int] = None
    linear_num_key_heads: Optional[int] = None
    linear_num_value_heads: Optional[int] = None
