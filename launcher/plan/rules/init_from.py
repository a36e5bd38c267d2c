"""train.checkpoint.init_from: starting weights from another checkpoint (moe-convert import writes one).

Megatron 0.19.2 loads --pretrained-checkpoint only when --load holds no checkpoint (training/checkpointing.py
load_checkpoint: then finetune, i.e. model weights only, iteration 0), and fails on the ranks with a bare
FileNotFoundError when it holds none either, or with a shape error deep in distributed checkpointing when the
model differs. Both are answered here, before anything starts. An import records the model it was built for
(convert.json, launcher/tools/convert_io.py): the fields that shape a weight must agree, and so must the
padded vocabulary: Megatron builds its tokenizer's vocabulary (a Hugging Face tokenizer's size, else
model.vocab_size) padded to a multiple of make_vocab_size_divisible_by x TP rows, and the import has the rows it
was built with.
"""
from __future__ import annotations

import json
from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.records.checkpoint_dir import TRACKER

FIELD = "train.checkpoint.init_from"
RECORD = "convert.json"
# model fields that change a weight's shape or presence (the rest, e.g. rotary_base, may change on purpose)
SHAPED = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "vocab_size",
          "num_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size", "moe_layer_freq",
          "moe_first_k_dense", "mtp_num_layers", "qk_layernorm", "untie_embeddings_and_output_weights", "swiglu",
          "normalization", "add_bias_linear", "add_qkv_bias", "multi_latent_attention")


def _visible(cfg: RunConfig) -> bool:
    """Local runs read the directory on this machine; Slurm and container paths may live elsewhere."""
    return cfg.cluster.executor == "local"


def check_init_from_exists(cfg: RunConfig, res: Resolved) -> None:
    path = cfg.train.checkpoint.init_from
    if path is None or (not Path(path).exists() and not _visible(cfg)):
        return
    if not (Path(path) / TRACKER).is_file():
        raise ConfigError(FIELD, path, f"holds no Megatron checkpoint ({TRACKER} missing)",
                          "point it at the --out of moe-convert import, or at a run's checkpoints directory")


def check_init_from_model(cfg: RunConfig, res: Resolved) -> None:
    path = cfg.train.checkpoint.init_from
    record = Path(path) / RECORD if path else None
    if record is None or not record.is_file():
        return
    saved = json.loads(record.read_text())
    for name in SHAPED:
        theirs, ours = saved["model"].get(name), getattr(cfg.model, name)
        if theirs != ours:
            raise ConfigError(f"model.{name}", ours, f"the checkpoint in {path} was imported with {theirs}",
                              f"set model.{name}={json.dumps(theirs)} (or import again with this model)")
    from launcher.plan.vocab import check_rows

    check_rows(cfg, saved["padded_vocab"], f"the embedding in {path}")


INIT_FROM_RULES = (check_init_from_exists, check_init_from_model)
