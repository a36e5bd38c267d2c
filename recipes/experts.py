"""Expert GEMMs through torch's grouped GEMM: one kernel per projection instead of one per expert.

Why: on Hopper with cuBLASLt < 13.4 (the CUDA 13.0/13.1 stacks), Transformer Engine's GroupedLinear
runs one cuBLAS GEMM per expert, spread over streams. With 128 experts that is 128 launches per
projection per micro batch (about 10,700 kernels in one 4-layer Qwen3-30B-A3B step at MBS 4), and the
profile shows the GPU idle 58% of the step while the CPU launches them (perf_results/tuning/README.md).
torch.nn.functional.grouped_mm (CUTLASS, what transformers uses) does each projection in one kernel.

How: Megatron's TEGroupedMLP keeps everything else (router probabilities, SwiGLU, moe_act recompute,
the dispatcher); only its two grouped linears are replaced by TorchGroupedLinear, by pointing the TE
spec provider's grouped-linear classes at it before the model is built (`apply(impl)`, called by
recipes/pretrain.py from MOE_GROUPED_GEMM_IMPL, which the launcher sets from model.moe_grouped_gemm_impl).
Supported: BF16/FP16, expert tensor parallel 1, no expert bias, no delayed wgrad; the launcher's
check_torch_grouped_gemm refuses the rest before anything starts. Checkpoints: the one [experts, out, in]
weight is saved and loaded in TE's per-expert layout (recipes/expert_checkpoint.py), so a checkpoint of
either implementation loads into the other. Without Transformer Engine (CPU, local spec) `apply("torch")`
builds Megatron's TEGroupedMLP around these linears in place of the local spec's SequentialMLP.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from recipes.expert_checkpoint import drop_te_extra_state, grouped_sharded_state_dict

ENV = "MOE_GROUPED_GEMM_IMPL"
IMPLS = ("te", "torch")


def grouped_mm():
    """torch.nn.functional.grouped_mm (torch >= 2.10) or torch._grouped_mm (2.9)."""
    fn = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if fn is None:
        raise RuntimeError(f"model.moe_grouped_gemm_impl=torch needs torch >= 2.9 (grouped_mm); this is "
                           f"torch {torch.__version__}. Fix: set model.moe_grouped_gemm_impl=te")
    return fn


class TorchGroupedLinear(torch.nn.Module):
    """Drop-in for TEColumnParallelGroupedLinear / TERowParallelGroupedLinear inside TEGroupedMLP:
    forward(x [tokens, in], tokens_per_expert) -> (y [tokens, out], None); x is sorted by expert.
    The subclasses below say which of the two (the TP axis of TE's checkpoint layout)."""

    tp_axis = 0

    def __init__(self, num_gemms: int, input_size: int, output_size: int, *, config, init_method, bias: bool,
                 skip_bias_add: bool, is_expert: bool = False, tp_comm_buffer_name: Optional[str] = None,
                 pg_collection=None, name: Optional[str] = None):
        super().__init__()
        if bias:
            raise ValueError("model.moe_grouped_gemm_impl=torch: expert biases are not supported "
                             "(model.add_bias_linear=true). Fix: set model.moe_grouped_gemm_impl=te")
        if config.expert_tensor_parallel_size != 1:
            raise ValueError("model.moe_grouped_gemm_impl=torch needs parallel.etp=1. Fix: set "
                             "model.moe_grouped_gemm_impl=te")
        self.config, self.num_gemms, self.use_bias = config, num_gemms, False
        self.pg_collection = pg_collection
        self._grouped_mm = grouped_mm()  # looked up once, not in every forward
        self.in_features, self.out_features = input_size, output_size
        device = "cpu" if config.use_cpu_initialization or not torch.cuda.is_available() \
            else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.empty(num_gemms, output_size, input_size, device=device,
                                                     dtype=config.params_dtype))
        if config.perform_initialization:
            self._initialize(init_method, is_expert)
        # Megatron's DDP and optimizer read these: expert weights reduce over the expert-data-parallel group
        # when experts are sharded (the rule TE's wrapper applies), and ETP = 1 means no TP partition.
        use_expert_pgs = is_expert and (config.expert_model_parallel_size > 1
                                        or config.expert_tensor_parallel_size != config.tensor_model_parallel_size)
        self.weight.allreduce = not use_expert_pgs
        self.weight.tensor_model_parallel = False
        self._register_load_state_dict_pre_hook(drop_te_extra_state, with_module=True)

    @property
    def swiglu(self) -> bool:
        """fc1 of a gated MLP holds [gate; up]: TEGroupedMLP checkpoints each half separately."""
        return self.tp_axis == 0 and self.config.gated_linear_unit

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        return grouped_sharded_state_dict(self, prefix, sharded_offsets, metadata)

    def _initialize(self, init_method, is_expert: bool) -> None:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name

        tracker = get_cuda_rng_tracker()
        fork = tracker.fork(get_expert_parallel_rng_tracker_name()) if is_expert and tracker.is_initialized() \
            else contextlib.nullcontext()
        with fork, torch.no_grad():
            for i in range(self.num_gemms):  # each expert like its own Linear weight [out, in]
                init_method(self.weight[i])

    def forward(self, x: torch.Tensor, tokens_per_expert):
        if x.shape[0] == 0:  # no token routed here: keep the weight in the graph for its (zero) gradient
            return x @ self.weight[0].t() + 0 * self.weight.sum(), None
        counts = torch.as_tensor(tokens_per_expert, dtype=torch.int32)
        offs = torch.cumsum(counts, 0, dtype=torch.int32).to(x.device, non_blocking=True)
        y = self._grouped_mm(x.to(self.weight.dtype), self.weight.transpose(1, 2), offs=offs)
        return y, None

    def extra_repr(self) -> str:
        return f"experts={self.num_gemms}, in={self.in_features}, out={self.out_features}, grouped_mm"


class TorchColumnGroupedLinear(TorchGroupedLinear):
    """fc1 (TEColumnParallelGroupedLinear): TE shards and checkpoints it on the output axis."""

    tp_axis = 0


class TorchRowGroupedLinear(TorchGroupedLinear):
    """fc2 (TERowParallelGroupedLinear): TE shards and checkpoints it on the input axis."""

    tp_axis = 1


def apply(impl: Optional[str] = None) -> str:
    """Select the experts' grouped-GEMM implementation before the model is built; returns it."""
    impl = impl or os.environ.get(ENV) or "te"
    if impl not in IMPLS:
        raise ValueError(f"{ENV}={impl!r}: one of {', '.join(IMPLS)}. Fix: set model.moe_grouped_gemm_impl")
    if impl == "torch":
        grouped_mm()  # fail now, with the reason, rather than inside the first forward
        import megatron.core.extensions.transformer_engine as te
        import megatron.core.extensions.transformer_engine_spec_provider as provider

        provider.TEColumnParallelGroupedLinear = TorchColumnGroupedLinear
        provider.TERowParallelGroupedLinear = TorchRowGroupedLinear
        if not te.HAVE_TE:
            _local_spec_uses_grouped_mlp()
    return impl


def _local_spec_uses_grouped_mlp() -> None:
    """No Transformer Engine (CPU): the local spec's experts become TEGroupedMLP around the torch linears.
    TEGroupedMLP itself needs TE only for FP8/FP4 and the fused op path (moe/experts.py:323, 336)."""
    from functools import partial

    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.transformer.moe.experts import GroupedMLPSubmodules, TEGroupedMLP

    def grouped_mlp_modules(self, moe_use_grouped_gemm: bool):
        return partial(TEGroupedMLP, submodules=GroupedMLPSubmodules(
            linear_fc1=TorchColumnGroupedLinear, linear_fc2=TorchRowGroupedLinear, activation_func=None))
    LocalSpecProvider.grouped_mlp_modules = grouped_mlp_modules
