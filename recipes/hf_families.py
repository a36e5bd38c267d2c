"""Weight-name mappings modelopt 0.47.0 lacks, registered into its own tables (compute side).

modelopt.torch.export maps Megatron-Core GPT modules to Hugging Face tensor names per architecture
(plugins/mcore_common.py: all_mcore_hf_import_mapping / all_mcore_hf_export_mapping). Its MoE entries are
Qwen3-MoE, DeepSeek-V2/V3 and GPT-OSS; Mixtral is not there. Mixtral is Megatron's GPT with RMSNorm, GQA,
RoPE and SwiGLU experts, i.e. Qwen3-MoE's modules without the QK norms under other names:

    Megatron module                              Mixtral tensor (layer i, expert j)
    router                                       model.layers.{i}.block_sparse_moe.gate.weight
    local_experts.linear_fc1 = [gate; up]        model.layers.{i}.block_sparse_moe.experts.{j}.w1 / w3
    local_experts.linear_fc2                     model.layers.{i}.block_sparse_moe.experts.{j}.w2
    attention, norms, embeddings, lm_head        as Llama / Qwen3 (self_attn.q/k/v/o_proj, ...)

The mapping objects are modelopt's own rule classes (NameRemapping, QKVMerging, GatedMLPMerging and their
export counterparts); registering adds a key to modelopt's dictionaries, so its importer and exporter pick it up.
"""
from __future__ import annotations

MIXTRAL = "MixtralForCausalLM"


def _mixtral_import() -> dict:
    from modelopt.torch.export.plugins.mcore_custom import (COL_ETP, COL_TP, REPLICATE, ROW_ETP, ROW_TP,
                                                            GatedMLPMerging, NameRemapping, QKVMerging)

    layer, moe = "model.layers.{}.", "model.layers.{}.block_sparse_moe."
    return {
        "word_embeddings": NameRemapping("model.embed_tokens.", COL_TP),
        "final_layernorm": NameRemapping("model.norm.", REPLICATE),
        "output_layer": NameRemapping("lm_head.", COL_TP),
        "input_layernorm": NameRemapping(layer + "input_layernorm.", REPLICATE),
        "fused_input_layernorm": NameRemapping(layer + "input_layernorm.weight"),
        "linear_qkv": QKVMerging(layer + "self_attn.", COL_TP),
        "linear_proj": NameRemapping(layer + "self_attn.o_proj.", ROW_TP),
        "pre_mlp_layernorm": NameRemapping(layer + "post_attention_layernorm.", REPLICATE),
        "fused_pre_mlp_layernorm": NameRemapping(layer + "post_attention_layernorm.weight"),
        "router": NameRemapping(moe + "gate.", REPLICATE),
        "local_experts.linear_fc1": GatedMLPMerging(moe + "experts.{}.",
                                                    {**COL_ETP, "gate_proj_name": "w1", "up_proj_name": "w3"}),
        "local_experts.linear_fc2": NameRemapping(moe + "experts.{}.w2.", ROW_ETP),
    }


def _mixtral_export() -> dict:
    from modelopt.torch.export.plugins.mcore_custom import (GatedMLPSlicing, NameRemapping, QKVSlicing,
                                                            SelfAttentionScaling)

    layer, moe = "model.layers.{}.", "model.layers.{}.block_sparse_moe."
    return {
        "word_embeddings": NameRemapping("model.embed_tokens."),
        "final_layernorm": NameRemapping("model.norm."),
        "output_layer": NameRemapping("lm_head."),
        "input_layernorm": NameRemapping(layer + "input_layernorm."),
        "fused_input_layernorm": NameRemapping(layer + "input_layernorm.weight"),
        "linear_qkv": QKVSlicing(layer + "self_attn."),
        "linear_proj": NameRemapping(layer + "self_attn.o_proj."),
        "core_attention": SelfAttentionScaling(layer + "self_attn."),  # FP8 KV-cache scales, when quantized
        "pre_mlp_layernorm": NameRemapping(layer + "post_attention_layernorm."),
        "fused_pre_mlp_layernorm": NameRemapping(layer + "post_attention_layernorm.weight"),
        "router": NameRemapping(moe + "gate."),
        "local_experts.linear_fc1": GatedMLPSlicing(moe + "experts.{}.",
                                                    {"gate_proj_name": "w1", "up_proj_name": "w3"}),
        "local_experts.linear_fc2": NameRemapping(moe + "experts.{}.w2."),
    }


def register() -> None:
    """Add the mappings modelopt lacks (idempotent: its own entries are never replaced)."""
    from modelopt.torch.export.plugins import mcore_common

    mcore_common.all_mcore_hf_import_mapping.setdefault(MIXTRAL, _mixtral_import())
    mcore_common.all_mcore_hf_export_mapping.setdefault(MIXTRAL, _mixtral_export())


def supported() -> set[str]:
    """Architectures both directions can handle once register() ran."""
    from modelopt.torch.export.plugins import mcore_common

    return set(mcore_common.all_mcore_hf_import_mapping) & set(mcore_common.all_mcore_hf_export_mapping)
