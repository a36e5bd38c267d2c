"""A resume loads into a model of its checkpoint's shape, or is refused before anything starts.

Megatron's loader compares every tensor's global shape with the model the run built and fails on the ranks
("Global shape mismatch for loaded (torch.Size([4, 128])) and expected ((4, 256))"), after the job has been
allocated; launching into a run directory with a changed model field (or a train.load of another model) got there,
and the record then read the CheckpointException that follows as a failed save
(tests/data/logs/bad_config_cpu_resume_other_hidden_size.log). Here the checkpoint run's shaping arguments
(launcher/records/checkpoint_model.py) meet this run's model fields first, then the embedding's rows (a resume at
another TP can pad the vocabulary to other rows: plan/vocab.py check_rows). The parallel layout may change freely:
Megatron's distributed checkpoints reshard.
"""
from __future__ import annotations

import json
from enum import Enum
from typing import Any, Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.records.checkpoint_model import SHAPE_ARGS, VOCAB_ROWS

# arguments Megatron derives when they are not given (kv_channels = hidden / heads, ...): compared only where ours
# is given, since the checkpoint holds the derived value
DERIVED = ("ffn_hidden_size", "num_query_groups", "kv_channels")
# arguments that shape a weight only where another one is on (Megatron keeps defaults for them otherwise, e.g.
# kv_lora_rank 32 in every checkpoint): MLA's ranks and head dims, the gated delta net's dims
ONLY_WITH = {**dict.fromkeys(("q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"),
                             "multi_latent_attention"),
             **dict.fromkeys(("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                              "linear_num_key_heads", "linear_num_value_heads"), "experimental_attention_variant")}


def _plain(v: Any) -> Any:
    """None and 0 (no MTP layer, no shared expert) alike; a schema choice as its string."""
    v = v.value if isinstance(v, Enum) else v
    return 0 if v is None else v


def check_shape(cfg: RunConfig, saved: Optional[dict], where: str, own: bool) -> None:
    """Refuse a resume (`own`: of the run's own directory) or train.load whose checkpoint has another model."""
    if not saved:
        return
    for name in SHAPE_ARGS:
        if name not in saved or not hasattr(cfg.model, name):
            continue
        ours = getattr(cfg.model, name)
        if name in ONLY_WITH and not saved.get(ONLY_WITH[name]):  # the switch itself was compared before
            continue
        if (ours is None and name in DERIVED) or _plain(ours) == _plain(saved[name]):
            continue
        keep = f"set model.{name}={json.dumps(_plain(saved[name]) if saved[name] is not None else None)}"
        fix = (f"{keep} to resume it, or give this run another launch.run_dir for a fresh start" if own
               else f"{keep} (the checkpoint's model), or load a checkpoint of this model")
        raise ConfigError(f"model.{name}", _plain(ours) if ours is not None else None,
                          f"the checkpoint it resumes ({where}) has {name}={saved[name]}, and Megatron's loader "
                          "would fail on every rank with a shape mismatch", fix)
    if saved.get(VOCAB_ROWS):
        from launcher.plan.vocab import check_rows

        check_rows(cfg, saved[VOCAB_ROWS], f"the embedding of the checkpoint it resumes ({where})")
