"""One checkpoint layout for MoE layers whichever spec built them (compute side).

Megatron-Core 0.19.2's local spec maps, for every layer, `pre_mlp_layernorm.` to `mlp.linear_fc1.layer_norm_` in
its sharded state dict (gpt_layer_specs.py get_gpt_layer_local_submodules, sharded_state_dict_keys_map): right
for a dense layer, whose TE spec fuses that norm into linear_fc1, wrong for an MoE layer, whose TE spec keeps a
separate `pre_mlp_layernorm` (TENorm, no mapping). So a local-spec MoE checkpoint (every CPU run, moe-convert's
world-1 model) and a TE-spec one differ in that one key per layer, and neither loads the other (strict load:
missing key). Every other key already agrees (input_layernorm <-> linear_qkv.layer_norm_weight by the same map;
SequentialMLP, TEGroupedMLP and recipes/experts.py's torch experts by recipes/expert_checkpoint.py).

te_keys_for_local_moe_layers() drops that entry for MoE layers of the local spec, before the model is built: the
local spec then keys its MoE layers as the TE spec does, so checkpoints move between CPU and GPU runs, and an
imported Hugging Face checkpoint (written at world 1 with the local spec) starts a TE run. Checkpoints that a
local-spec run wrote before this (key `mlp.linear_fc1.layer_norm_weight` in an MoE layer) are recognized by
uses_te_moe_keys() so moe-convert export reads both.
"""
from __future__ import annotations

import dataclasses
import functools

LOCAL_MOE_NORM = "pre_mlp_layernorm."


def te_keys_for_local_moe_layers() -> None:
    """Patch the local spec's layer builder (idempotent)."""
    import megatron.core.models.gpt.gpt_layer_specs as specs

    orig = specs.get_gpt_layer_local_submodules
    if getattr(orig, "_te_moe_keys", False):
        return

    @functools.wraps(orig)
    def submodules(*args, **kwargs):
        sub = orig(*args, **kwargs)
        num_experts = kwargs["num_experts"] if "num_experts" in kwargs else (args[0] if args else None)
        if num_experts and LOCAL_MOE_NORM in sub.sharded_state_dict_keys_map:
            keys = {k: v for k, v in sub.sharded_state_dict_keys_map.items() if k != LOCAL_MOE_NORM}
            sub = dataclasses.replace(sub, sharded_state_dict_keys_map=keys)
        return sub

    submodules._te_moe_keys = True
    specs.get_gpt_layer_local_submodules = submodules


def uses_te_moe_keys(iter_dir: str) -> bool:
    """Whether a torch_dist checkpoint keys MoE layers' pre-MLP norm as the TE spec does (`pre_mlp_layernorm.weight`;
    the local spec's old layout has none: it wrote that norm as `mlp.linear_fc1.layer_norm_weight`)."""
    from megatron.core.dist_checkpointing import load_tensors_metadata

    return any(k.endswith("pre_mlp_layernorm.weight") for k in load_tensors_metadata(iter_dir))


def for_checkpoint(load, ckpt_step, pretrained=None) -> None:
    """Before building a local-spec model: the TE keys, unless the checkpoint it will load (--load's, else
    --pretrained-checkpoint's) has the old local layout, which it then keeps reading."""
    import os

    from recipes.checkpoint import checkpoint_dir

    path = checkpoint_dir(load, ckpt_step) if load else None
    if path is None and pretrained:
        path = checkpoint_dir(pretrained, None)
    if path is None or not os.path.isfile(os.path.join(path, "metadata.json")) or uses_te_moe_keys(path):
        te_keys_for_local_moe_layers()
