"""The model a Megatron checkpoint's run built, as the Megatron arguments that give a weight its shape or presence
(read from the checkpoint's common state), for launcher/plan/resume_shape.py: a resume into another shape fails in
Megatron's loader on every rank ("Global shape mismatch for loaded ... and expected ..."), after allocation."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher.records.checkpoint_buckets import read_saved

# Megatron argument names (each also a model.* field of ours, launcher/plan/megatron/table.py)
SHAPE_ARGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
              "kv_channels", "num_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
              "moe_shared_expert_gate", "mtp_num_layers", "swiglu", "qk_layernorm",
              "untie_embeddings_and_output_weights", "add_bias_linear", "add_qkv_bias", "attention_output_gate",
              "normalization", "multi_latent_attention", "q_lora_rank", "kv_lora_rank", "qk_head_dim",
              "qk_pos_emb_head_dim", "v_head_dim", "experimental_attention_variant", "linear_conv_kernel_dim",
              "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads")
VOCAB_ROWS = "padded_vocab_size"  # the embedding's rows: the tokenizer's vocabulary padded for its TP size


def read_saved_model(iter_dir: Path) -> Optional[dict]:
    """{argument: value} for SHAPE_ARGS and VOCAB_ROWS as the checkpoint's run had them (absent ones left out);
    None where the common state cannot be read here."""
    args = read_saved(iter_dir)[1]
    if args is None:
        return None
    return {k: getattr(args, k) for k in (*SHAPE_ARGS, VOCAB_ROWS) if hasattr(args, k)}
