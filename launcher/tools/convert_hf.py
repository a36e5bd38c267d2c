"""Hugging Face config.json <-> our model config, for the families moe-convert moves weights of (login side).

The weights are moved on the compute side by modelopt's rules (recipes/convert.py, recipes/hf_families.py);
here is what must agree before anything is built: a Hugging Face config that does not describe the composed
model would fail deep inside the import with a shape error, or worse, load into a model that computes
something else (a different RoPE base, top-k normalisation or norm epsilon changes no shape). Each
disagreement is one line: the HF field, its value, ours, and the override that makes them agree.

Families (modelopt 0.47.0's mapping tables, plugins/mcore_common.py, plus our Mixtral rules):
  Qwen3MoeForCausalLM   QK RMSNorm, every layer MoE, softmax over the top-k logits (norm_topk_prob=true)
  MixtralForCausalLM    no QK norm, every layer MoE, softmax over the top-k logits
Not supported: DeepSeek-V2/V3 (modelopt maps them, but multi-latent attention needs Transformer Engine and
our importer runs the local spec), Qwen2-MoE (no modelopt mapping: shared expert and its gate), Qwen3-Next.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from launcher.config.schema import ModelConfig
from launcher.errors import ConfigError

QWEN3_MOE, MIXTRAL = "Qwen3MoeForCausalLM", "MixtralForCausalLM"
MODEL_TYPE = {QWEN3_MOE: "qwen3_moe", MIXTRAL: "mixtral"}
UNSUPPORTED = {
    "DeepseekV2ForCausalLM": "multi-latent attention needs Transformer Engine; moe-convert builds the local spec",
    "DeepseekV3ForCausalLM": "multi-latent attention needs Transformer Engine; moe-convert builds the local spec",
    "Qwen2MoeForCausalLM": "modelopt 0.47.0 has no Qwen2-MoE mapping (shared expert with its gate)",
    "Qwen3NextForCausalLM": "modelopt 0.47.0 has no Qwen3-Next mapping (gated delta net layers)",
}


@dataclass(frozen=True)
class Field:
    """One HF config field and the model field it must equal (after `to_hf`, our value as HF writes it)."""

    hf: str
    ours: str
    to_hf: Callable[[ModelConfig], Any]


def _query_groups(m: ModelConfig) -> int:
    return m.num_query_groups or m.num_attention_heads


def _head_dim(m: ModelConfig) -> int:
    return m.kv_channels or m.hidden_size // m.num_attention_heads


COMMON = (
    Field("num_hidden_layers", "num_layers", lambda m: m.num_layers),
    Field("hidden_size", "hidden_size", lambda m: m.hidden_size),
    Field("num_attention_heads", "num_attention_heads", lambda m: m.num_attention_heads),
    Field("num_key_value_heads", "num_query_groups", _query_groups),
    Field("head_dim", "kv_channels", _head_dim),
    Field("vocab_size", "vocab_size", lambda m: m.vocab_size),
    Field("rms_norm_eps", "norm_epsilon", lambda m: m.norm_epsilon),
    Field("rope_theta", "rotary_base", lambda m: float(m.rotary_base)),
    Field("tie_word_embeddings", "untie_embeddings_and_output_weights",
          lambda m: not m.untie_embeddings_and_output_weights),
    Field("num_experts_per_tok", "moe_router_topk", lambda m: m.moe_router_topk),
)
FAMILY_FIELDS: dict[str, tuple[Field, ...]] = {
    QWEN3_MOE: COMMON + (
        Field("num_experts", "num_experts", lambda m: m.num_experts),
        Field("moe_intermediate_size", "moe_ffn_hidden_size", lambda m: m.moe_ffn_hidden_size),
        # norm_topk_prob: softmax over all logits then renormalised top-k = Megatron's softmax over the top-k
        # logits (moe_router_pre_softmax=false); without it, Megatron's pre-softmax
        Field("norm_topk_prob", "moe_router_pre_softmax", lambda m: not m.moe_router_pre_softmax),
        Field("intermediate_size", "ffn_hidden_size", lambda m: m.ffn_hidden_size),
    ),
    MIXTRAL: COMMON + (
        Field("num_local_experts", "num_experts", lambda m: m.num_experts),
        Field("intermediate_size", "moe_ffn_hidden_size", lambda m: m.moe_ffn_hidden_size),
    ),
}
# HF fields that carry no model field: the value both families have, as HF writes it
FIXED: dict[str, dict[str, Any]] = {
    QWEN3_MOE: {"hidden_act": "silu", "attention_bias": False, "decoder_sparse_step": 1, "mlp_only_layers": []},
    MIXTRAL: {"hidden_act": "silu"},
}
# HF fields whose HF default applies when config.json leaves them out
HF_DEFAULTS = {"tie_word_embeddings": False, "norm_topk_prob": False, "attention_bias": False,
               "decoder_sparse_step": 1, "mlp_only_layers": [], "hidden_act": "silu"}
# model fields both families need (ours, required value, why)
SHAPE: tuple[tuple[str, Any, str], ...] = (
    ("normalization", "RMSNorm", "both families use RMSNorm"),
    ("position_embedding_type", "rope", "both families use RoPE"),
    ("rotary_percent", 1.0, "RoPE over the whole head"),
    ("swiglu", True, "SwiGLU experts (hidden_act silu, gate and up projections)"),
    ("add_bias_linear", False, "no linear biases"),
    ("add_qkv_bias", False, "no QKV bias"),
    ("multi_latent_attention", False, "GQA attention (MLA: DeepSeek, not supported here)"),
    ("moe_shared_expert_intermediate_size", None, "no shared expert"),
    ("moe_layer_freq", "1", "every layer MoE"),
    ("moe_first_k_dense", None, "no dense first layers"),
    ("mtp_num_layers", None, "no multi-token prediction"),
    ("moe_router_score_function", "softmax", "softmax router"),
    ("moe_router_topk_scaling_factor", None, "no top-k scaling"),
    ("moe_router_enable_expert_bias", False, "no expert bias"),
    ("attention_output_gate", False, "no attention output gate"),
    ("layernorm_zero_centered_gamma", False, "plain RMSNorm weights"),
    ("experimental_attention_variant", None, "softmax attention in every layer"),
)


def read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--hf", str(hf_dir), "has no config.json", "point it at a Hugging Face checkpoint "
                          "directory (config.json + *.safetensors) or a hub repo id") from None
    except (OSError, ValueError) as e:
        raise ConfigError("--hf", str(path), f"cannot be read as JSON ({e})", "fix or re-download it") from None


def architecture(hf: dict, where: str) -> str:
    arch = (hf.get("architectures") or [None])[0]
    if arch in FAMILY_FIELDS:
        return arch
    why = UNSUPPORTED.get(arch, "moe-convert moves the weights of " + " and ".join(FAMILY_FIELDS) + " only")
    raise ConfigError("--hf", where, f"architecture {arch} is not supported: {why}",
                      "convert a Qwen3-MoE or Mixtral checkpoint")


def _hf_value(hf: dict, key: str) -> Any:
    """A field as config.json holds it: transformers 5 keeps the RoPE base under rope_parameters, and Qwen3-MoE's
    expert count under num_local_experts (its attribute_map) or num_experts (older files)."""
    if key == "rope_theta" and "rope_theta" not in hf:
        return (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("rope_theta", 10000.0)
    if key == "num_experts" and key not in hf:
        return hf.get("num_local_experts")
    if key == "head_dim" and hf.get(key) is None:
        h, n = hf.get("hidden_size"), hf.get("num_attention_heads")
        return h // n if h and n else None
    if key == "num_key_value_heads" and hf.get(key) is None:
        return hf.get("num_attention_heads")
    return hf.get(key, HF_DEFAULTS.get(key))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def _fix(field: Field, hf_value: Any) -> str:
    """The override that makes our model say what the HF config says (booleans inverted where to_hf inverts)."""
    if field.ours in ("untie_embeddings_and_output_weights", "moe_router_pre_softmax"):
        return f"model.{field.ours}={str(not hf_value).lower()}"
    if field.ours == "rotary_base":
        return f"model.rotary_base={int(hf_value)}"
    return f"model.{field.ours}={json.dumps(hf_value)}"


def _rope_scaling(hf: dict) -> Optional[str]:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    return None if kind in (None, "default") else str(kind)


def mismatches(model: ModelConfig, hf: dict, arch: str) -> list[ConfigError]:
    """Every way the HF config and the composed model disagree, one error each (empty: they agree)."""
    out = [ConfigError(f"model.{name}", getattr(model, name), f"{arch} needs {want!r} ({why})",
                       f"set model.{name}={json.dumps(want)}")
           for name, want, why in SHAPE if not _same(getattr(model, name, want), want)]
    for f in FAMILY_FIELDS[arch]:
        if f.ours == "ffn_hidden_size":
            continue  # Qwen3-MoE's dense width: no dense layer here (decoder_sparse_step 1), no weight has it
        theirs, ours = _hf_value(hf, f.hf), f.to_hf(model)
        if theirs is None and ours is not None:  # a config.json without it (one written by hand, or truncated)
            out.append(ConfigError(f"config.json {f.hf}", None, "is missing", "use the config.json the checkpoint "
                                   "was saved with (transformers writes every field)"))
            continue
        if not _same(theirs, ours):
            out.append(ConfigError(f"config.json {f.hf}", theirs, f"our model has {ours} (model.{f.ours}="
                                   f"{getattr(model, f.ours)})", f"add {_fix(f, theirs)}"))
    for key, want in FIXED[arch].items():
        if _hf_value(hf, key) != want:
            out.append(ConfigError(f"config.json {key}", _hf_value(hf, key), f"moe-convert handles {arch} with "
                                   f"{key}={want!r} only", "convert a checkpoint of that shape"))
    if _rope_scaling(hf):
        out.append(ConfigError("config.json rope_parameters", _rope_scaling(hf), "RoPE scaling is not modelled by "
                               "our model config (plain RoPE)", "convert a checkpoint without RoPE scaling"))
    qk = arch == QWEN3_MOE
    if model.qk_layernorm != qk:
        out.append(ConfigError("model.qk_layernorm", model.qk_layernorm, f"{arch} has {'' if qk else 'no '}QK norm",
                               f"set model.qk_layernorm={str(qk).lower()}"))
    return out


def family_of(model: ModelConfig) -> str:
    """The HF architecture an export writes: Qwen3-MoE with QK norm, Mixtral without (the rest must agree:
    mismatches() against the config hf_config() writes)."""
    return QWEN3_MOE if model.qk_layernorm else MIXTRAL


def hf_config(model: ModelConfig, arch: str, dtype: str = "bfloat16") -> dict:
    """config.json for our model in that family (what modelopt's exporter copies and updates)."""
    cfg: dict[str, Any] = {"architectures": [arch], "model_type": MODEL_TYPE[arch], "dtype": dtype,
                           "max_position_embeddings": model.max_position_embeddings, "attention_dropout": 0.0,
                           "initializer_range": model.init_method_std, "use_cache": True, **FIXED[arch]}
    for f in FAMILY_FIELDS[arch]:
        if f.hf != "rope_theta":
            cfg[f.hf] = f.to_hf(model)
    cfg["rope_parameters"] = {"rope_theta": float(model.rotary_base), "rope_type": "default"}
    return cfg
