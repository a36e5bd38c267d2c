"""The torch grouped-GEMM experts (recipes/experts.py) checkpoint in Transformer Engine's per-expert layout.

No TE here, so the reference is Megatron's SequentialMLP: TEGroupedMLP.sharded_state_dict (moe/experts.py:
912-918) says its layout "is interchangable with SequentialMLP's", and SequentialMLP builds on CPU. The
torch module sits inside Megatron's real TEGroupedMLP (what runs on the GPU); the test compares every
sharded entry (key, global shape and offset, local shape, fragmentation, replica id, values), with one
expert-parallel rank of 1 and rank 1 of 2, for the weights and for an optimizer state built through the
same factory, and then saves with one module and loads into the other through dist_checkpointing.
What only a GPU host can show: TE's own module producing the same entries (tests/gpu/test_checkpoint_gpu.py).
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.moe.experts import GroupedMLPSubmodules, SequentialMLP, TEGroupedMLP
from megatron.core.transformer.transformer_config import TransformerConfig

from recipes.experts import TorchColumnGroupedLinear, TorchRowGroupedLinear

LOCAL_EXPERTS = 4
LAYER_OFFSET = ((0, 1, 2),)  # the second of two layers, as TransformerBlock passes it down


class _Group:
    """A process group stand-in that only answers size() and rank() (what the checkpoint code asks)."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


@pytest.fixture(scope="module")
def groups(gloo_world):
    parallel_state.initialize_model_parallel()
    yield ProcessGroupCollection.use_mpu_process_groups()
    parallel_state.destroy_model_parallel()


def _config(gated: bool) -> TransformerConfig:
    return TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_moe_experts=8,
                             moe_ffn_hidden_size=32, gated_linear_unit=gated, add_bias_linear=False,
                             bf16=True, params_dtype=torch.bfloat16, use_cpu_initialization=True)


def _modules(pgs, gated: bool, ep_size: int, ep_rank: int):
    pgs = copy.copy(pgs)
    pgs.ep = _Group(ep_size, ep_rank)
    cfg = _config(gated)
    grouped = TEGroupedMLP(LOCAL_EXPERTS, cfg, GroupedMLPSubmodules(
        linear_fc1=TorchColumnGroupedLinear, linear_fc2=TorchRowGroupedLinear), pg_collection=pgs)
    sequential = SequentialMLP(LOCAL_EXPERTS, cfg, MLPSubmodules(
        linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear), pg_collection=pgs)
    with torch.no_grad():  # the same numbers in both: expert i of the grouped weight = local expert i
        for i, expert in enumerate(sequential.local_experts):
            expert.linear_fc1.weight.copy_(grouped.linear_fc1.weight[i])
            expert.linear_fc2.weight.copy_(grouped.linear_fc2.weight[i])
    return grouped, sequential


def _entries(sharded: dict) -> dict:
    """Every sharded entry after the factories are built, by what identifies it in a checkpoint."""
    sharded = copy.copy(sharded)
    apply_factories(sharded)
    out = {}
    for item in nested_values(sharded):
        if isinstance(item, ShardedTensor):
            ident = (item.key, item.global_shape, item.global_offset, item.local_shape,
                     item.axis_fragmentations, item.replica_id, item.dtype)
            out[ident] = item.data.detach().clone()
        else:
            assert isinstance(item, ShardedObject), item
            out[(item.key, item.global_shape, item.global_offset, item.replica_id)] = None
    return out


@pytest.mark.parametrize("gated", [True, False], ids=["swiglu", "plain"])
@pytest.mark.parametrize("ep_size,ep_rank", [(1, 0), (2, 1)], ids=["ep1", "ep2-rank1"])
def test_torch_experts_shard_like_sequential_mlp(groups, gated, ep_size, ep_rank):
    grouped, sequential = _modules(groups, gated, ep_size, ep_rank)
    got = _entries(grouped.sharded_state_dict("decoder.layers.mlp.", LAYER_OFFSET))
    want = _entries(sequential.sharded_state_dict("decoder.layers.mlp.", LAYER_OFFSET))
    assert sorted(got, key=repr) == sorted(want, key=repr)
    for ident, value in want.items():
        if value is not None:
            assert torch.equal(got[ident], value), ident
    tensors = [k for k in got if len(k) == 7]
    # fc1: experts x 2 halves when gated, fc2: one per expert; global expert axis = ep_size * local experts
    assert len(tensors) == LOCAL_EXPERTS * ((2 if gated else 1) + 1)
    assert {k[1][1] for k in tensors} == {ep_size * LOCAL_EXPERTS}
    assert {k[2][1] for k in tensors} == set(range(ep_rank * LOCAL_EXPERTS, (ep_rank + 1) * LOCAL_EXPERTS))


def test_optimizer_state_through_the_factory_is_per_expert(groups):
    # the fully_reshardable optimizer format replaces the factory's data by a state of the weight's shape
    # and its key by optimizer.state.<name>.<key> (distrib_optimizer.py:1811-1821)
    grouped, _ = _modules(groups, True, 2, 1)
    factory = grouped.linear_fc1.sharded_state_dict("decoder.layers.mlp.experts.linear_fc1.", LAYER_OFFSET)[
        "decoder.layers.mlp.experts.linear_fc1.weight"]
    state = torch.arange(grouped.linear_fc1.weight.numel(), dtype=torch.float32).view_as(grouped.linear_fc1.weight)
    opt = dataclasses.replace(factory, key="optimizer.state.exp_avg." + factory.key, data=state)
    built = opt.build()
    assert all(t.key == opt.key and t.dtype == torch.float32 for parts in built for t in parts)
    assert torch.equal(opt.merge_fn([[t.data for t in parts] for parts in built]), state)


@pytest.mark.parametrize("direction", ["torch_to_sequential", "sequential_to_torch"])
def test_checkpoint_loads_across_implementations(groups, tmp_path, direction, monkeypatch):
    if not torch.cuda.is_available():  # the torch_dist writer synchronizes and allocates on "the" device
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)     # filesystem_async.py:248
        monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("cpu"))  # state_dict_saver.py:251
    src_grouped, src_sequential = _modules(groups, True, 1, 0)
    dst_grouped, dst_sequential = _modules(groups, True, 1, 0)
    with torch.no_grad():  # make the destination different from the source
        for p in [*dst_grouped.parameters(), *dst_sequential.parameters()]:
            p.zero_()
    prefix, offsets = "decoder.layers.mlp.", ((0, 0, 1),)  # one layer: the checkpoint must cover the tensor
    src, dst = (src_grouped, dst_sequential) if direction == "torch_to_sequential" else (src_sequential, dst_grouped)
    dist_checkpointing.save(src.sharded_state_dict(prefix, offsets), str(tmp_path))
    loaded = dist_checkpointing.load(dst.sharded_state_dict(prefix, offsets), str(tmp_path))
    dst.load_state_dict({k[len(prefix):]: v for k, v in loaded.items()}, strict=True)
    for i in range(LOCAL_EXPERTS):
        grouped, expert = (src_grouped, dst_sequential.local_experts[i]) if direction == "torch_to_sequential" \
            else (dst_grouped, src_sequential.local_experts[i])
        assert torch.equal(grouped.linear_fc1.weight[i], expert.linear_fc1.weight)
        assert torch.equal(grouped.linear_fc2.weight[i], expert.linear_fc2.weight)


# --------------------------------------------------------------- resume across implementations (recipes/checkpoint)

def _checkpoint(root, monkeypatch, impl, fmt, **saved) -> str:
    """A distributed checkpoint as Megatron writes one: args in the common state, the optimizer format in the
    content metadata, latest_checkpointed_iteration.txt beside iter_0000010."""
    from argparse import Namespace

    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("cpu"))
    args = Namespace(iteration=10, **saved) if impl is None else Namespace(iteration=10, moe_grouped_gemm_impl=impl,
                                                                           **saved)
    path = root / "iter_0000010"
    path.mkdir(parents=True)
    state = {"args": args, "w": ShardedTensor.from_rank_offsets("w", torch.zeros(4))}
    dist_checkpointing.save(state, str(path), content_metadata={"distrib_optim_sharding_type": fmt})
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    return str(root)


def _args(load, **kw):
    from argparse import Namespace

    return Namespace(load=load, no_load_optim=None, finetune=False, use_distributed_optimizer=True, ckpt_step=None,
                     **kw)


@pytest.mark.parametrize("saved, fmt, impl, refused", [
    ("torch", "dp_reshardable", "te", True),       # bucket order of the torch experts under TE's parameters
    (None, "dp_reshardable", "torch", True),       # before the stamp: Megatron's own experts wrote it
    ("torch", "dp_reshardable", "torch", False),
    ("torch", "fully_reshardable", "te", False),   # per-parameter optimizer state: either implementation
    ("te", "fully_reshardable", "torch", False),
])
def test_resume_refuses_bucket_optimizer_state_of_the_other_implementation(groups, tmp_path, monkeypatch,
                                                                          saved, fmt, impl, refused):
    from recipes import checkpoint

    args = _args(_checkpoint(tmp_path / "ckpt", monkeypatch, saved, fmt))
    if refused:
        with pytest.raises(checkpoint.CheckpointError, match=f"model.moe_grouped_gemm_impl={saved or 'te'} .*Fix:"):
            checkpoint.check_resume(args, impl)
        args.no_load_optim = True  # a fresh optimizer: only the model loads, and that layout is shared
    checkpoint.check_resume(args, impl)


def _buckets(overlap=True, dp=1, size=None, num=None) -> dict:
    return dict(overlap_grad_reduce=overlap, data_parallel_size=dp, ddp_bucket_size=size, ddp_num_buckets=num)


@pytest.mark.parametrize("saved, now, fix", [
    # a one-GPU run (parallel.overlap_grad_reduce=auto -> false) resumed on more GPUs, and back
    (_buckets(overlap=False), _buckets(dp=2), "parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false"),
    (_buckets(dp=2), _buckets(overlap=False),
     "parallel.overlap_grad_reduce=true 'megatron.raw=[--ddp-bucket-size,40000000]'"),
    # Megatron's default size grows past 40 data-parallel ranks
    (_buckets(dp=8), _buckets(dp=64), "'megatron.raw=[--ddp-bucket-size,40000000]'"),
    (_buckets(size=1000), _buckets(), "'megatron.raw=[--ddp-bucket-size,1000]'"),
    (_buckets(num=4), _buckets(), "'megatron.raw=[--ddp-num-buckets,4]'"),
    (_buckets(dp=2), _buckets(dp=8), None),       # the same 40M-element buckets: data-parallel resharding loads
    (_buckets(overlap=False), _buckets(overlap=False, dp=4), None),
])
def test_resume_refuses_optimizer_state_of_other_gradient_buckets(groups, tmp_path, monkeypatch, saved, now, fix):
    """Megatron's loader fails on such a resume with a shape mismatch of bucket_idx_0 (CPU, overlap on with
    --ddp-bucket-size 20000 -> off: 'Global shape mismatch for loaded (torch.Size([65536])) and expected
    ((1906304,))'); the check names the overrides that cut the buckets as the saving run did."""
    from recipes import checkpoint

    args = _args(_checkpoint(tmp_path / "ckpt", monkeypatch, "torch", "dp_reshardable", **saved), **now)
    if fix is None:
        checkpoint.check_resume(args, "torch")
        return
    with pytest.raises(checkpoint.CheckpointError, match="bucket format") as e:
        checkpoint.check_resume(args, "torch")
    assert fix in str(e.value) and "\n" not in str(e.value)
    args.no_load_optim = True  # a fresh optimizer: only the model loads
    checkpoint.check_resume(args, "torch")
    args.no_load_optim = None
    _checkpoint(tmp_path / "full", monkeypatch, "torch", "fully_reshardable", **saved)
    checkpoint.check_resume(_args(str(tmp_path / "full"), **now), "torch")  # per-parameter state: any layout


def test_resume_check_without_a_checkpoint(tmp_path):
    from recipes import checkpoint

    checkpoint.check_resume(_args(str(tmp_path / "none")), "torch")  # first launch of a run: nothing to load
    assert checkpoint.checkpoint_dir(str(tmp_path), None) is None
