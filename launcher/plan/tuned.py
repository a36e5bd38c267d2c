"""The tuned choices (issue 17): every `auto` performance knob resolved to the fastest measured choice where the
stack, hardware and config allow it, else to the safe one. One function per knob; each returns its value and a
note naming the measurement it rests on (a record under perf_results/), which plan.json keeps with the other
resolved notes. A value the user pins (true/false, te/torch) is kept as written and checked by the rules.

What was measured and not kept stays off: CUDA graphs (attn, moe_router, moe_preprocess) gave no gain on the
2x H200 EP2 chain (perf_results/tuning/qwen3_30b_a3b_8l_ep2_h200x2/03_cuda_graphs), so they are no rule here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from launcher.config.choices import CrossEntropyImpl, GroupedGemmImpl, Switch
from launcher.config.schema import RunConfig
from launcher.errors import ConfigError

TUNING = "perf_results/tuning/README.md"
TORCH_EXPERTS = ("perf_results/runs/qwen3_30b_a3b_4l_1gpu_torch_experts_mbs4 (344.1 TFLOP/s/GPU vs 209.8 with TE's "
                 "per-expert GEMMs), perf_results/runs/qwen3_30b_a3b_8l_ep2_torch_experts_dropless (308.6 vs 213.8)")
FUSIONS = "perf_results/tuning/qwen3_30b_a3b_4l_1gpu_h200/01_fusions (kept: +1.9% tokens/s over 00_baseline)"
A2A_OVERLAP = ("perf_results/runs/qwen3_30b_a3b_8l_ep2_torch_experts_a2a_overlap_dropless (323.6 TFLOP/s/GPU vs "
               "310.6 without, +4.2%; forced balance +4.0%)")
LEAN_LOSS = ("perf_results/runs/qwen3_30b_a3b_4l_1gpu_lean_loss_mbs8 (107,260 tokens/s/GPU, peak 85.4 GiB) vs "
             "perf_results/runs/qwen3_30b_a3b_4l_1gpu_native_loss_mbs8 (99,327, 113.2 GiB): +8.0%")
GRAD_OVERLAP = ("perf_results/runs/qwen3_30b_a3b_4l_1gpu_mbs16_allgather_no_overlap (124,215 tokens/s/GPU vs 121,837 "
                "with it, perf_results/runs/qwen3_30b_a3b_4l_1gpu_mbs16_allgather_base: +2.0%; every one-GPU family "
                "proxy 1.03-1.13x, perf_results/tuning/README.md)")
ALLOCATOR = ("no throughput cost measured; the OOM records perf_results/runs/qwen3_30b_a3b_4l_1gpu_mbs4 and "
             "perf_results/tuning/qwen3_30b_a3b_8l_ep2_h200x2/01_micro_batch_mbs8 ask for it against fragmentation")

HOST_REGISTER = ("perf_results/issue13/saves_1gpu_2l_every45_pinreg (a first async save held training 6.9 s vs 18.6 "
                 "s in perf_results/issue13/saves_1gpu_2l_every45_default, 26.2 GB; perf_results/issue13/d2h_h200.txt:"
                 " 24 GiB to new pinned memory in 3.7 s vs 18.1 s)")


@dataclass(frozen=True)
class Tuned:
    """The concrete value of every tuned knob for this launch."""

    moe_grouped_gemm_impl: str
    permute_fusion: bool
    router_fusion: bool
    cross_entropy_loss_fusion: bool
    overlap_moe_expert_parallel_comm: bool
    expandable_segments: bool
    # defaults: plan.json files written before these knobs rebuild unchanged (what they were then)
    cross_entropy_fusion_impl: str = "native"
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    host_register: bool = False


SAFE = Tuned(moe_grouped_gemm_impl="te", permute_fusion=False, router_fusion=False, cross_entropy_loss_fusion=False,
             overlap_moe_expert_parallel_comm=False, expandable_segments=False, cross_entropy_fusion_impl="native")
"""Every knob's safe choice (what the schema defaulted to before issue 17)."""


@dataclass(frozen=True)
class Stack:
    """What the knobs depend on beyond the config: resolved in launcher/plan/resolve.py before them."""

    device: str
    transformer_impl: str
    world_size: int

    @property
    def te_gpu(self) -> bool:
        return self.device == "cuda" and self.transformer_impl == "transformer_engine"


def switch(field: str, value: Union[bool, str]) -> Optional[bool]:
    """A Switch field as written: True/False, or None for auto; any other string is refused."""
    if isinstance(value, bool):
        return value
    if value not in tuple(Switch):
        raise ConfigError(field, value, "must be auto, true or false", f"set {field}=auto (the tuned default)")
    return None if value == Switch.auto else value == Switch.true


def _hopper(cfg: RunConfig) -> bool:
    return cfg.hardware.compute_capability.split(".")[0] == "9"


def grouped_gemm_impl(cfg: RunConfig, stack: Stack) -> tuple[str, Optional[str]]:
    """torch's grouped_mm where recipes/experts.py supports the config (what check_torch_grouped_gemm refuses
    is excluded here) on Hopper, where TE's GroupedLinear runs one GEMM per expert below cuBLASLt 13.4."""
    m, field = cfg.model, "moe_grouped_gemm_impl"
    if m.moe_grouped_gemm_impl != GroupedGemmImpl.auto:
        return str(m.moe_grouped_gemm_impl), None
    blockers = (
        ("no Transformer Engine GPU run", not stack.te_gpu),
        ("model.moe_grouped_gemm=false", not m.moe_grouped_gemm),
        (f"precision {cfg.precision.name} (the torch experts are BF16 only)",
         cfg.precision.params_dtype != "bf16" or cfg.precision.fp8_format is not None),
        (f"parallel.etp={cfg.parallel.etp}", cfg.parallel.etp != 1),
        ("Megatron FSDP (its fsdp_dtensor checkpoints name TE's per-expert weights)", cfg.parallel.use_megatron_fsdp),
        ("expert biases (model.add_bias_linear)", m.add_bias_linear),
        ("dispatcher.delay_wgrad_compute", cfg.dispatcher.delay_wgrad_compute),
        (f"compute capability {cfg.hardware.compute_capability} (measured on Hopper only)", not _hopper(cfg)),
        # modelopt quantizes TE's grouped linears; it has no quantized module for recipes/experts.py's
        (f"quant.qat={cfg.quant.qat} (modelopt quantizes TE's grouped experts only)", cfg.quant.qat != "none"),
    )
    for reason, bad in blockers:
        if bad:
            return "te", f"{field}=auto -> te: {reason}"
    return "torch", f"{field}=auto -> torch: one grouped_mm per projection; measured {TORCH_EXPERTS}"


def te_fusion(cfg: RunConfig, stack: Stack, field: str) -> tuple[bool, Optional[str]]:
    """dispatcher.permute_fusion / router_fusion: TE kernels, on wherever TE runs on a GPU."""
    pinned = switch(f"dispatcher.{field}", getattr(cfg.dispatcher, field))
    if pinned is not None:
        return pinned, None
    if not stack.te_gpu:
        return False, f"{field}=auto -> false: the fused kernels come from Transformer Engine on a GPU"
    return True, f"{field}=auto -> true: Transformer Engine on a GPU; measured {FUSIONS}"


def cross_entropy_loss_fusion(cfg: RunConfig, stack: Stack) -> tuple[bool, Optional[str]]:
    """Megatron's fused vocab-parallel cross entropy: on for GPU runs (TE's implementation only when TE runs,
    model_parallel_config.py refuses it otherwise)."""
    t, field = cfg.train, "cross_entropy_loss_fusion"
    pinned = switch(f"train.{field}", t.cross_entropy_loss_fusion)
    if pinned is not None:
        return pinned, None
    if stack.device != "cuda":
        return False, f"{field}=auto -> false: CPU run (the fused kernel is a GPU path)"
    if t.cross_entropy_fusion_impl == "te" and stack.transformer_impl != "transformer_engine":
        return False, f"{field}=auto -> false: cross_entropy_fusion_impl=te without Transformer Engine"
    return True, f"{field}=auto -> true: GPU run (a fused vocab-parallel loss); measured {FUSIONS}"


def cross_entropy_impl(cfg: RunConfig, stack: Stack, fused: bool) -> tuple[str, Optional[str]]:
    """train.cross_entropy_fusion_impl: the lean loss (recipes/loss.py) where the fused loss is on and a GPU runs
    it, else Megatron's native one (what a fused loss meant before)."""
    field, written = "cross_entropy_fusion_impl", cfg.train.cross_entropy_fusion_impl
    if written != CrossEntropyImpl.auto:
        return str(written), None
    if not fused:
        return "native", None  # no fused loss: the implementation is not used (no note)
    if stack.device != "cuda":
        return "native", f"{field}=auto -> native: CPU run (the lean loss is measured on GPUs)"
    if cfg.distill.enabled:
        return "native", f"{field}=auto -> native: distillation (the lean loss is not measured with modelopt's)"
    return "lean", f"{field}=auto -> lean: no FP32 copy of the logits; measured {LEAN_LOSS}"


def _reduce_ranks(cfg: RunConfig, stack: Stack) -> tuple[int, int]:
    """Ranks that reduce each dense gradient (data x context parallel: context-parallel ranks hold the same weights)
    and each expert gradient (expert data parallel). A degree < 1 is refused by the rules later."""
    p, world = cfg.parallel, stack.world_size
    return max(world // max(p.tp * p.pp, 1), 1), max(world // max(p.ep * p.etp * p.pp, 1), 1)


def _microbatches(cfg: RunConfig, stack: Stack) -> int:
    p, t = cfg.parallel, cfg.train
    dp = max(stack.world_size // max(p.tp * p.pp * p.cp, 1), 1)  # a degree < 1 is refused by the rules later
    return t.global_batch_size // max(t.micro_batch_size * dp, 1)


def _overlap_blocker(cfg: RunConfig, stack: Stack) -> Optional[str]:
    """Why the 1F1B EP A2A overlap is not turned on: its prerequisites (check_ep_overlap_layout and
    check_ep_overlap_conflicts, TransformerConfig) and where it cannot pay."""
    p, d, r, t = cfg.parallel, cfg.dispatcher, cfg.recompute, cfg.train
    graphs_moe = t.cuda_graph_impl == "transformer_engine" and {"moe", "mlp"} & set(t.cuda_graph_modules)
    blockers = (
        ("no Transformer Engine GPU run", not stack.te_gpu),
        (f"parallel.ep={p.ep} (no expert-parallel all-to-all)", p.ep < 2),
        ("distillation (its forward step runs student and teacher whole)", cfg.distill.enabled),
        (f"dispatcher {d.type}", d.type not in ("alltoall", "flex")),
        # transformer_config.py: ncclep without static shapes syncs with the host and loses the overlap
        ("the ncclep backend", d.type == "flex" and d.flex_backend == "ncclep"),
        ("pp > 1 without virtual pipeline stages", p.pp > 1 and (p.vpp or 1) < 2),
        (f"recompute {r.granularity} ({', '.join(map(str, r.modules)) or 'whole layers'})",
         r.granularity == "full" or "moe" in r.modules),
        (f"params {cfg.precision.params_dtype}", cfg.precision.params_dtype not in ("bf16", "fp16")),
        ("dispatcher.shared_expert_overlap", d.shared_expert_overlap),
        ("more than one MTP layer", (cfg.model.mtp_num_layers or 0) > 1),
        ("CUDA graphs of moe/mlp", bool(graphs_moe)),
        # arguments.py: on Hopper and older TP/CP communication competes with the overlapped streams
        (f"tp={p.tp} cp={p.cp} before Blackwell", (p.tp > 1 or p.cp > 1)
         and int(cfg.hardware.compute_capability.split(".")[0]) < 10),
        ("Megatron FSDP (not measured)", p.use_megatron_fsdp),
        ("one micro batch per step (nothing to overlap with)", _microbatches(cfg, stack) < 2),
    )
    return next((reason for reason, bad in blockers if bad), None)


def ep_overlap(cfg: RunConfig, stack: Stack) -> tuple[bool, Optional[str]]:
    """dispatcher.overlap_moe_expert_parallel_comm: on where EP > 1 and its prerequisites hold."""
    field = "overlap_moe_expert_parallel_comm"
    pinned = switch(f"dispatcher.{field}", cfg.dispatcher.overlap_moe_expert_parallel_comm)
    if pinned is not None:
        return pinned, None
    blocker = _overlap_blocker(cfg, stack)
    if blocker:
        return False, f"{field}=auto -> false: {blocker}"
    return True, f"{field}=auto -> true: EP {cfg.parallel.ep}, prerequisites hold; measured {A2A_OVERLAP}"


def grad_overlap(cfg: RunConfig, stack: Stack) -> tuple[bool, bool, Optional[str]]:
    """parallel.overlap_grad_reduce and overlap_param_gather: on (Megatron's choice for data-parallel runs), off
    where every gradient-reduce group has one rank (data x context parallel for dense weights, expert data parallel
    for experts). There the overlap hides no communication and costs: each of its
    gradient buckets runs Megatron's NaN/Inf check of the bucket's norm (param_and_grad_buffer.check_grads) when
    the bucket is ready, a host sync in the middle of backward (20 a step on the 4-layer Qwen3-30B-A3B shape, GPU
    idle 7.3% of the step; 2.7% without). Without the overlap Megatron keeps one bucket and checks it once."""
    p = cfg.parallel
    grad = switch("parallel.overlap_grad_reduce", p.overlap_grad_reduce)
    param = switch("parallel.overlap_param_gather", p.overlap_param_gather)
    note = None
    if grad is None:
        grad, why = _grad_overlap_auto(*_reduce_ranks(cfg, stack), gpu=stack.device == "cuda")
        note = f"overlap_grad_reduce=auto -> {str(grad).lower()}: {why}"
    if param is None:
        param = grad and p.use_distributed_optimizer  # Megatron's prerequisites (plan/rules/features.py)
    return grad, param, note


def _grad_overlap_auto(dense: int, expert: int, gpu: bool) -> tuple[bool, str]:
    if not gpu:
        return True, "CPU run (Megatron's default; the one-rank case is measured on GPUs)"
    if dense > 1 or expert > 1:
        return True, (f"gradients reduce over {dense} ranks (dense) and {expert} (experts): Megatron's default; the "
                      f"one-rank case is measured in {TUNING}")
    return False, ("every gradient-reduce group has one rank: nothing to overlap, one NaN check instead of one per "
                   f"bucket; measured {GRAD_OVERLAP}")


def expandable_segments(cfg: RunConfig, stack: Stack) -> tuple[bool, Optional[str]]:
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: on for GPU runs, off with TE CUDA graphs (Megatron
    asserts against it there unless NCCL_GRAPH_REGISTER=0: arguments.py, cuda_graphs.py)."""
    field = "expandable_segments"
    pinned = switch(f"train.{field}", cfg.train.expandable_segments)
    if pinned is not None:
        return pinned, None
    if stack.device != "cuda":
        return False, f"{field}=auto -> false: CPU run"
    if cfg.train.cuda_graph_impl == "transformer_engine":
        return False, f"{field}=auto -> false: Megatron refuses it with TE CUDA graphs"
    return True, f"{field}=auto -> true: GPU run; {ALLOCATOR}"


def async_saves(cfg: RunConfig, device: str) -> bool:
    """Whether the run's checkpoints are written in the background (launcher/plan/checkpoint.py): as pinned, else
    on GPUs in torch_dist (Megatron FSDP saves fsdp_dtensor, which has no async path; async save hangs on gloo)."""
    ck = cfg.train.checkpoint
    if not ck.enabled:
        return False
    return ck.async_save if ck.async_save is not None else device != "cpu" and not cfg.parallel.use_megatron_fsdp


def host_register(cfg: RunConfig, stack: Stack) -> tuple[bool, Optional[str]]:
    """torch's pinned host allocator registering malloc'd pages with 8 threads instead of one cudaHostAlloc per
    block: the async save's device-to-host copy (Megatron's preload_tensors, tensor.to("cpu", non_blocking=True))
    allocates its pinned memory on the first save (1.3 GiB/s on H200; with registration 6.5 GiB/s), and a later
    save reuses the cached blocks (51 GiB/s) once the previous write has finished."""
    field = "train.checkpoint.host_register"
    pinned = switch(field, cfg.train.checkpoint.host_register)
    if pinned is not None:
        return pinned, None
    if stack.device != "cuda":
        return False, f"{field}=auto -> false: CPU run"
    if not async_saves(cfg, stack.device):
        return False, f"{field}=auto -> false: no background checkpoint saves"
    return True, f"{field}=auto -> true: async checkpoint saves copy to pinned host memory; measured {HOST_REGISTER}"


def resolve_tuned(cfg: RunConfig, stack: Stack) -> tuple[Tuned, list[str]]:
    """Every tuned knob's value, and the notes of those that were auto."""
    impl, n1 = grouped_gemm_impl(cfg, stack)
    permute, n2 = te_fusion(cfg, stack, "permute_fusion")
    router, n3 = te_fusion(cfg, stack, "router_fusion")
    ce, n4 = cross_entropy_loss_fusion(cfg, stack)
    ce_impl, n7 = cross_entropy_impl(cfg, stack, ce)
    overlap, n5 = ep_overlap(cfg, stack)
    alloc, n6 = expandable_segments(cfg, stack)
    grad, param, n8 = grad_overlap(cfg, stack)
    register, n9 = host_register(cfg, stack)
    tuned = Tuned(moe_grouped_gemm_impl=impl, permute_fusion=permute, router_fusion=router,
                  cross_entropy_loss_fusion=ce, overlap_moe_expert_parallel_comm=overlap, expandable_segments=alloc,
                  cross_entropy_fusion_impl=ce_impl, overlap_grad_reduce=grad, overlap_param_gather=param,
                  host_register=register)
    return tuned, [n for n in (n1, n2, n3, n4, n7, n5, n6, n8, n9) if n]


def _concrete(written, value):
    """The written value where the user pinned one, else the tuned value."""
    return value if str(written) == "auto" else written


def tuned_config(cfg: RunConfig, tuned: Tuned) -> RunConfig:
    """A copy of the config with every `auto` knob replaced by its tuned value: what the rules, the flag table,
    run_env and the estimates read, so an `auto` never reaches them (the user's config is not changed).
    Pinned values stay as written, so applying it twice, or to a config that has none, changes nothing."""
    m, d, t, p = cfg.model, cfg.dispatcher, cfg.train, cfg.parallel
    model = dataclasses.replace(m, moe_grouped_gemm_impl=GroupedGemmImpl(
        _concrete(m.moe_grouped_gemm_impl, tuned.moe_grouped_gemm_impl)))
    disp = dataclasses.replace(
        d, permute_fusion=_bool(_concrete(d.permute_fusion, tuned.permute_fusion)),
        router_fusion=_bool(_concrete(d.router_fusion, tuned.router_fusion)),
        overlap_moe_expert_parallel_comm=_bool(_concrete(d.overlap_moe_expert_parallel_comm,
                                                         tuned.overlap_moe_expert_parallel_comm)))
    train = dataclasses.replace(
        t, cross_entropy_loss_fusion=_bool(_concrete(t.cross_entropy_loss_fusion, tuned.cross_entropy_loss_fusion)),
        cross_entropy_fusion_impl=CrossEntropyImpl(_concrete(t.cross_entropy_fusion_impl,
                                                             tuned.cross_entropy_fusion_impl)),
        expandable_segments=_bool(_concrete(t.expandable_segments, tuned.expandable_segments)))
    par = dataclasses.replace(
        p, overlap_grad_reduce=_bool(_concrete(p.overlap_grad_reduce, tuned.overlap_grad_reduce)),
        overlap_param_gather=_bool(_concrete(p.overlap_param_gather, tuned.overlap_param_gather)))
    train = dataclasses.replace(train, checkpoint=dataclasses.replace(
        t.checkpoint, host_register=_bool(_concrete(t.checkpoint.host_register, tuned.host_register))))
    return dataclasses.replace(cfg, model=model, dispatcher=disp, train=train, parallel=par)


def _bool(value: Union[bool, str]) -> bool:
    # a pinned "true"/"false" string (written through the Python API) becomes the bool the table reads
    return value if isinstance(value, bool) else value == Switch.true
