"""Run megatron.training.pretrain on a machine with no GPU (gloo, local spec). Isolated here.

Megatron-Core 0.19.2 assumes CUDA in a few places that matter even for a tiny model on CPU. Each patch
below names the call it answers; they act only when torch.cuda.is_available() is False, so GPU runs
never see them. The launcher adds the matching flags (--transformer-impl local, --use-cpu-initialization,
--distributed-backend gloo, --no-rope-fusion, --no-persist-layer-norm). Numerics are CPU kernels: this
path proves plumbing and learning, not GPU numerics or speed.
"""
from __future__ import annotations

import functools

import torch

_CUDA_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "rand", "randn", "arange")


class _NoStream:
    """Stands in for torch.cuda.Stream / Event: every method is a no-op returning another one."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: _NoStream()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _is_cuda(device) -> bool:
    return ((isinstance(device, int) and not isinstance(device, bool))
            or (isinstance(device, str) and device.startswith("cuda"))
            or (isinstance(device, torch.device) and device.type == "cuda"))


def _on_cpu(factory):
    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)
    return wrapper


def _cuda_type_names(orig):
    # distrib_optimizer.py / optimizer.py / clip_grads.py compare param.type() with 'torch.cuda.FloatTensor'
    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = orig(self)
            return "torch.cuda." + name[len("torch."):] if self.device.type == "cpu" else name
        return orig(self, dtype, non_blocking, **kwargs)
    return type_


def apply_torch() -> bool:
    """Before importing megatron. Returns True when the patches were applied (no CUDA here)."""
    if torch.cuda.is_available():
        return False
    cpu = torch.device("cpu")
    torch.cuda.current_device = lambda: cpu                # ~200 call sites allocate on current_device()
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.device_count = lambda: 1                    # 0 would skip model-parallel init (initialize.py)
    torch.cuda.Stream = torch.cuda.Event = _NoStream       # alltoall dispatcher and DDP create streams
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    torch.cuda.stream = lambda *a, **k: _NoStream()
    torch.cuda.synchronize = lambda *a, **k: None
    # activation recompute and the RNG tracker save/restore the "CUDA" generator: use the CPU one
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": None
    for name in _CUDA_FACTORIES:                           # device="cuda" hard-coded in optimizer/schedules
        setattr(torch, name, _on_cpu(getattr(torch, name)))
    torch.Tensor.type = _cuda_type_names(torch.Tensor.type)
    return True


def apply_megatron() -> None:
    """After importing megatron.training (only when apply_torch() returned True)."""
    import megatron.core.tensor_parallel.random as mrandom
    import megatron.core.transformer.moe.token_dispatcher as dispatcher
    import megatron.training.initialize as minit
    import megatron.training.training as mtraining

    # pretrain() -> initialize_megatron() asserts CUDA unless allow_no_cuda
    mtraining.initialize_megatron = functools.partial(minit.initialize_megatron, allow_no_cuda=True)
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: None

    # the alltoall dispatcher turns split sizes into numpy only for CUDA tensors (moe_utils.py:1184)
    def split_sizes(tensor, as_numpy=False, record_stream=False):
        return tensor.detach().numpy() if as_numpy and torch.is_tensor(tensor) else tensor
    dispatcher.maybe_move_tensor_to_cpu = split_sizes
