"""Checkpoint layout of recipes/experts.py's TorchGroupedLinear: exactly Transformer Engine's.

TorchGroupedLinear holds one [experts, out, in] weight; TE's GroupedLinear holds weight0..weightN-1, and
Megatron 0.19.2 writes those per expert (TEGroupedLinear._sharded_state_dict_grouped, extensions/
transformer_engine.py:2508): for local expert i, a ShardedTensor under the module's key `<prefix>weight`
at global expert index ep_rank * N + i on an extra axis after the layer offsets, TP-sharded on axis 0
(column, fc1) or 1 (row, fc2), replica id (pp, tp, expert-DP rank), plus a ShardedObject `_extra_state`
per expert (TE's FP8 metadata; empty for BF16). TEGroupedMLP.sharded_state_dict (moe/experts.py:912) then
splits each fc1 weight into its SwiGLU halves (apply_swiglu_sharded_factory). That is also SequentialMLP's
layout, so the three expert modules load each other's checkpoints.

Here the one weight becomes one ShardedTensorFactory whose build makes those same per-expert pieces
(with the SwiGLU split for a gated fc1 done here, since TEGroupedMLP only splits keys named weight<i>) and
whose merge stacks them back. A factory, not N ShardedTensors, because Megatron's optimizer finds a
parameter's checkpoint entry by the parameter itself (distrib_optimizer.py:1746), and builds its states
(exp_avg, ...) through the same factory with the state tensor in place of the weight.
"""
from __future__ import annotations

import dataclasses
import re

import torch

_EXTRA_STATE = re.compile(r"_extra_state\d*$")


def grouped_sharded_state_dict(module, prefix: str, sharded_offsets: tuple, metadata: dict | None) -> dict:
    """The sharded state dict of a TorchGroupedLinear (weight [N, out, in], tp_axis 0 or 1, swiglu,
    pg_collection), keyed as TE's module is."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

    metadata = ensure_metadata_has_dp_cp_group(metadata)
    if metadata.get("singleton_local_shards", False):
        # TE keys each expert separately then (`<global expert>.<prefix>`); megatron.training never sets it
        raise ValueError("model.moe_grouped_gemm_impl=torch: checkpoints with singleton_local_shards are not "
                         "implemented. Fix: set model.moe_grouped_gemm_impl=te")
    pieces = _ExpertPieces(module, tuple(sharded_offsets), metadata["dp_cp_group"])
    out = {f"{prefix}weight": ShardedTensorFactory(f"{prefix}weight", module.weight, pieces.build, pieces.merge,
                                                   pieces.weight_replica_id())}
    for i in range(module.num_gemms):
        name = f"{prefix}_extra_state{'' if i == 0 else i}"  # TE's names: _extra_state, _extra_state1, ...
        out[name] = pieces.extra_state(f"{prefix}_extra_state", i)
    return out


class _ExpertPieces:
    """Build and merge functions of the weight's factory, for one module and one set of offsets."""

    def __init__(self, module, sharded_offsets: tuple, dp_cp_group):
        from megatron.core.utils import get_pg_rank, get_pg_size

        self.module, self.sharded_offsets, self.dp_cp_group = module, sharded_offsets, dp_cp_group
        pgs = module.pg_collection
        self.num_global = get_pg_size(pgs.ep) * module.num_gemms
        self.first_global = get_pg_rank(pgs.ep) * module.num_gemms
        self.tp_group = pgs.expt_tp
        # the last replica coordinate is the expert-DP rank: weights over expt_dp, the extra-state objects
        # over expt_dp_gtp_remat (the same group unless TE's GTP rematerialization is on), as TE sets them
        self.weight_dp_rank = get_pg_rank(pgs.expt_dp)
        self.extra_dp_rank = get_pg_rank(getattr(pgs, "expt_dp_gtp_remat", None) or pgs.expt_dp)

    def offsets(self, i: int) -> tuple:
        # the expert axis comes right after the offsets the layers above added (moe/experts.py:930)
        return (*self.sharded_offsets, (len(self.sharded_offsets), self.first_global + i, self.num_global))

    def _wrap(self, name: str, value, i: int):
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        axis_map = {} if name == "_extra_state" else {name: self.module.tp_axis}
        return make_sharded_tensors_for_checkpoint({name: value}, "", axis_map, self.offsets(i),
                                                   tp_group=self.tp_group, dp_cp_group=self.dp_cp_group)[name]

    def weight_replica_id(self) -> tuple:
        probe = self._wrap("weight", self.module.weight[0], 0)
        return (*probe.replica_id[:2], self.weight_dp_rank)

    def extra_state(self, key: str, i: int):
        obj = self._wrap("_extra_state", torch.empty(0, dtype=torch.uint8), i)  # TE's, without FP8 metadata
        return dataclasses.replace(obj, key=key, replica_id=(*obj.replica_id[:2], self.extra_dp_rank))

    def build(self, key: str, data: torch.Tensor, replica_id, flattened_range) -> list:
        """Per expert what TE's module (and TEGroupedMLP's SwiGLU split for fc1) makes of weight i; called
        with the weight, or with an optimizer state of its shape (fully_reshardable format)."""
        if flattened_range is not None:
            # only the deprecated fully_sharded_model_space optimizer format flattens (distrib_optimizer.py:1978)
            raise ValueError("model.moe_grouped_gemm_impl=torch: the optimizer checkpoint format "
                             "fully_sharded_model_space is not implemented. Fix: use Megatron's default "
                             "(dp_reshardable) or --dist-ckpt-optim-fully-reshardable")
        from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

        built = []
        for i in range(self.module.num_gemms):
            tensor = dataclasses.replace(self._wrap("weight", data[i], i), key=key, replica_id=replica_id)
            if self.module.swiglu:
                factory = apply_swiglu_sharded_factory(tensor, self.offsets(i), False, self.tp_group,
                                                       self.dp_cp_group)
                built.append(factory.build_fn(key, data[i], replica_id, None))
            else:
                built.append([tensor])
        return built

    def merge(self, loaded: list) -> torch.Tensor:
        # inverse of build: each expert's pieces (SwiGLU halves) back into [out, in], the experts stacked
        return torch.stack([torch.cat(parts, dim=0) if len(parts) > 1 else parts[0] for parts in loaded])


def drop_te_extra_state(module, state_dict, prefix, *args) -> None:
    """Load pre-hook: a checkpoint of TE's module (or this layout) brings `_extra_state`, `_extra_state1`, ...
    (FP8 scaling metadata); the torch experts compute in BF16 and keep none, so they are dropped."""
    for key in [k for k in state_dict if k.startswith(prefix) and _EXTRA_STATE.fullmatch(k[len(prefix):])]:
        del state_dict[key]
