"""Run megatron.training.pretrain on a machine with no GPU (gloo, local spec). Isolated here.

Megatron-Core 0.19.2 assumes CUDA in a few places that matter even for a tiny model on CPU. Each patch
below names the call it answers; they act only when torch.cuda.is_available() is False, so GPU runs
never see them (apply_torch_adam acts when Megatron's optimizer falls back to torch's Adam, no TE and
no Apex: every CPU run). The launcher adds the matching flags (--transformer-impl local, --use-cpu-initialization,
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
    # the fully reshardable optimizer checkpoint gathers its shards with tensor.cuda() (distrib_optimizer.py:1371)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # Megatron's jit_fuser is torch.compile (core/jit.py): on CPU, inductor turns the fused elementwise functions
    # (swiglu and its backward, bias-dropout-add) into C++ on every rank of every run, about 10 s of CPU per rank
    # even with inductor's cache warm (measured, a 6-iteration tiny_moe run on 2 shared cores: 25 s of CPU with it,
    # 15 s without). They run as plain torch instead: the same math, and CPU numerics either way
    torch.compiler.set_stance("force_eager")
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


def apply_torch_adam() -> bool:
    """After importing megatron. Megatron's DistributedOptimizer falls back to torch.optim.Adam when neither
    Transformer Engine nor Apex is installed (distrib_optimizer.py:20-35: every CPU run here, and a GPU
    without TE). Three gaps of that fallback break checkpoint resume; returns True when they were patched."""
    import megatron.core.optimizer.distrib_optimizer as dopt

    if dopt.HAVE_APEX_OR_TE:
        return False
    cls = dopt.DistributedOptimizer
    cls.state_dict = _fresh_adam_state_dict(cls.state_dict)
    cls.load_state_dict = _own_step_tensors(cls.load_state_dict)
    cls._set_main_param_and_optimizer_states = _step_not_required(cls._set_main_param_and_optimizer_states)
    return True


def _fresh_adam_state_dict(orig):
    # distrib_optimizer.py:837-839 reads 'step' from every parameter's torch Adam state and asserts one value.
    # load_checkpoint builds the optimizer's sharded state dict (sharded_state_dict -> state_dict) before the
    # first step, when that state is still empty: no value, AssertionError. A fresh Adam has taken 0 steps;
    # the loaded checkpoint's step replaces it (load_state_dict, after dist_checkpointing.load).
    @functools.wraps(orig)
    def state_dict(self):
        if len(self.optimizer.state) > 0:
            return orig(self)
        inner = self.optimizer.state_dict()
        out = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
        for group in out["optimizer"]["param_groups"]:
            del group["params"]
            group["step"] = 0
        if self.grad_scaler:
            out["grad_scaler"] = self.grad_scaler.state_dict()
        return out
    return state_dict


def _own_step_tensors(orig):
    # The checkpoint's Adam step is the one in its param_groups (state_dict() above writes it there). Two
    # things in load_state_dict lose it: distrib_optimizer.py:1029-1032 gives every parameter's state the SAME
    # step tensor, which torch keeps as given, so Adam's in-place `step += 1` would then count once per
    # parameter per iteration; and the bucket formats' parameter-state load (_set_main_param_and_optimizer_
    # states, :1222-1225) copies into it the 'step' of the state dict built for loading, i.e. the fresh
    # optimizer's 0 (measured: every step 0 after resume, so Adam's bias corrections restart and the loss
    # curve leaves the uninterrupted one at the first update). Give each parameter its own step, from the
    # checkpoint's param_groups.
    @functools.wraps(orig)
    def load_state_dict(self, state_dict):
        orig(self, state_dict)
        groups = state_dict.get("optimizer", {}).get("param_groups", [])
        steps = {float(g["step"]) for g in groups if g.get("step") is not None}
        if len(steps) != 1:
            return  # Megatron's own load (distrib_optimizer.py:1026) asserts exactly one
        step = steps.pop()
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.float32)
    return load_state_dict


def _step_not_required(orig):
    # The fully_reshardable format's load leaves 'step' out of the tensors it passes on (distrib_optimizer.py:
    # 2389-2392: "Handle torch Adam step separately"), but _set_main_param_and_optimizer_states copies every
    # tensor of the parameter's torch Adam state, 'step' included (:1222-1225): KeyError 'step'. A value that is
    # not a tensor is skipped there (:1223); the step itself comes from param_groups (_own_step_tensors).
    @functools.wraps(orig)
    def set_states(self, model_param, tensors):
        if "step" not in tensors:
            tensors = {**tensors, "step": None}
        return orig(self, model_param, tensors)
    return set_states
