"""Memory of one GPU per pipeline stage, predicted from the config before anything runs (CPU only, no
torch or megatron import): what `torch.cuda.max_memory_allocated` reports for that rank.

Static (for the whole run; estimate_static.py): weights in the DDP parameter buffer, main gradients in the DDP gradient
buffer (FP32 unless grad_reduce_in_bf16 / main_grads_dtype=bf16: megatron.training.arguments sets
accumulate_allreduce_grads_in_fp32, core/distributed/param_and_grad_buffer.py allocates grad_data in
that dtype), FP32 main parameters and the two Adam moments (sharded over DP x CP for dense parameters and
over expert-DP for experts with the distributed optimizer; precision-aware dtypes; moved to the host by
optimizer CPU offload; Megatron FSDP shards weights and gradients too), and TE's cached FP8 weights.
Moments appear at the first optimizer step (the fused Adam creates its state lazily), so a memory report
after iteration 1 peaks without them during that iteration's forward and backward.

Dynamic: saved activations of the micro batches in flight at the schedule's peak (1F1B: PP - rank;
interleaved: Megatron's warmup count + 1, +1 with the EP A2A overlap), the logits on the loss stage,
the largest one-layer backward temporaries, and fixed workspaces (cuBLAS, Transformer Engine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from launcher.plan.resolve import Resolved, linear_attention_pattern, moe_layer_pattern
from launcher.errors import ConfigError
from launcher.plan import estimate_activations as acts
from launcher.plan.estimate_static import (dtype_bytes, first_layers, layer_positions, padded_vocab, rank_params,
                                          stage_layouts,
                                           static_memory)
from launcher.config.schema import RunConfig
from launcher.plan.tuned import tuned_config

MiB = 2 ** 20
# Transformer Engine's cuBLAS workspace on Hopper and later (get_cublas_workspace_size_bytes: 32 MiB for
# sm >= 9.0); grouped GEMMs add one per extra stream (_num_cublas_streams = 4).
TE_WORKSPACE = 32 * MiB
TE_GROUPED_STREAMS = 4
# What every CUDA rank allocates whatever the model: PyTorch's own cuBLAS/cuBLASLt workspaces, Megatron's
# start-up warm-up kernels, RNG states, the micro batch. Measured once, on the smallest GPU run
# (perf_results/runs/tiny_moe_1gpu_local: 148.0 MiB peak, of which this model accounts for 47 MiB), not per run.
CUDA_FLOOR = 101 * MiB


@dataclass(frozen=True)
class StageMemory:
    """One pipeline rank (all its virtual stages), bytes."""

    rank: int
    chunks: tuple[str, ...]
    weights: int
    grads: int
    main_params: int
    moments: int
    fp8_weights: int
    activations: int
    """Saved activations of the micro batches in flight at the peak."""
    logits: int
    transient: int
    """Largest one-layer backward temporaries (recomputed activations, gradient buffers)."""
    workspace: int
    inflight: int
    dropless_extra: int = 0
    """Dropless routing: extra bytes when one MoE layer's dispatch sends this rank the most routed tokens
    it can receive (every token of the EP group picks this rank's experts); a spike, not included in
    the peak (forced balance and a trained router stay near the balanced share)."""
    host_optimizer: int = 0
    """Optimizer state moved to the host by optimizer CPU offload."""
    fsdp_buffers: int = 0
    """Megatron FSDP: unsharded weights and gradients of the running layer and the prefetched next one."""
    chunk_activations: tuple[int, ...] = ()
    """Saved activations of one micro batch through each virtual stage of this rank."""

    @property
    def static(self) -> int:
        return self.weights + self.grads + self.main_params + self.moments + self.fp8_weights

    @property
    def dynamic(self) -> int:
        return self.activations + max(self.logits, self.transient) + self.workspace + self.fsdp_buffers

    @property
    def peak(self) -> int:
        """Steady state: optimizer state allocated, one iteration's forward and backward on top."""
        return self.static + self.dynamic

    @property
    def peak_first_step(self) -> int:
        """Peak over iteration 1 (moments appear only at its optimizer step)."""
        return max(self.static - self.moments + self.dynamic, self.static + self.workspace)


@dataclass(frozen=True)
class MemoryEstimate:
    stages: tuple[StageMemory, ...]
    device: str
    capacity: int
    """Bytes one device offers (hardware.memory_gib, or host memory for CPU runs)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.peak)

    @property
    def peak(self) -> int:
        return self.worst.peak

    def peak_after(self, iteration: int) -> int:
        """What Megatron's memory report after `iteration` iterations shows (max over stages)."""
        if iteration <= 1:
            return max(s.peak_first_step for s in self.stages)
        return self.peak


def act_context(cfg: RunConfig, res: Resolved) -> acts.ActContext:
    p, pr = cfg.parallel, cfg.precision
    act = 4 if pr.params_dtype == "fp32" else 2
    gemm_in: float = act
    if pr.fp8_recipe is not None:
        gemm_in = 1 + (FP32_PER_BLOCK if pr.fp8_recipe in ("blockwise", "mxfp8") else 0)
    modules = frozenset(cfg.recompute.modules) if cfg.recompute.granularity == "selective" else frozenset()
    return acts.ActContext(m=cfg.model, seq=cfg.train.seq_length // p.cp, tp=p.tp,
                           sp_div=p.tp if res.sequence_parallel else 1, etp=p.etp, act=act, gemm_in=gemm_in,
                           modules=modules, fused_attention=res.transformer_impl == "transformer_engine")


FP32_PER_BLOCK = 4 / 128  # one FP32 scale per 128 elements (1x128 blocks; MXFP8: one E8M0 per 32 -> 1/32)


def logits_per_token(cfg: RunConfig, res: Resolved) -> tuple[float, float]:
    """(peak while the loss runs, what stays saved) in bytes per token, per vocabulary entry of this TP
    rank. Unfused (tensor_parallel/cross_entropy.py): the BF16 logits and their FP32 copy (.float(), exp and
    softmax in place), saved as the softmax; the BF16 gradient made from it at the start of backward.
    Megatron's native fused loss (fusions/fused_cross_entropy.py, torch.compile'd): one FP32 copy more at
    the peak. That term is measured, not derived: the seven GPU runs with the fused loss peak 4 B x vocab x
    tokens above the same shapes without it, independent of the layer count (4 and 8 layers); on CPU the
    compiled functions work in place (checked), so the extra FP32 buffer comes from the GPU (Triton) path.
    TE's fused loss works in place on the BF16 logits. The lean loss (recipes/loss.py) keeps the BF16 logits and
    writes the BF16 gradient next to them in backward (measured on an H200: 2.00 B per entry above the logits,
    perf_results/gpu_test_loss_h200.log). This is the one place that knows these figures (plan._costs_memory asks
    it whether the fused loss costs memory)."""
    t = cfg.train
    act = 4 if cfg.precision.params_dtype == "fp32" else 2
    if act == 4:
        return 8.0, 4.0
    if t.cross_entropy_loss_fusion and t.cross_entropy_fusion_impl in ("te", "lean"):
        return 4.0, 2.0
    if t.cross_entropy_loss_fusion:
        return 10.0, 4.0
    return 6.0, 4.0


def _inflight_chunks(cfg: RunConfig, rank: int, microbatches: int) -> list[int]:
    """Virtual-stage index of each micro batch chunk held at the rank's peak (Megatron's
    get_pp_rank_microbatches warm-up count, plus the first steady-state forward)."""
    p = cfg.parallel
    vpp = p.vpp or 1
    total = microbatches * vpp
    if p.pp == 1:
        warmup = 0
    elif vpp == 1:
        warmup = p.pp - rank - 1
    else:
        warmup = (p.pp - rank - 1) * 2 + (vpp - 1) * p.pp
        warmup += 1 if cfg.dispatcher.overlap_moe_expert_parallel_comm else 0
    n = min(total, warmup + 1)
    return [(k // p.pp) % vpp for k in range(n)]


def _workspace(cfg: RunConfig, res: Resolved) -> int:
    if res.device != "cuda":
        return 0
    if res.transformer_impl != "transformer_engine":
        return CUDA_FLOOR
    grouped_te = cfg.model.moe_grouped_gemm and cfg.model.moe_grouped_gemm_impl == "te"
    return CUDA_FLOOR + TE_WORKSPACE * (1 + (TE_GROUPED_STREAMS if grouped_te else 0))


def _max_expert_imbalance(cfg: RunConfig) -> float:
    """The most routed copies one EP rank can receive over the balanced share: every token of the EP
    group picks min(top-k, local experts) of this rank's experts."""
    m, p = cfg.model, cfg.parallel
    local = m.num_experts // p.ep
    return min(m.moe_router_topk, local) * p.ep / m.moe_router_topk


def wgrad_temporary(cfg: RunConfig, res: Resolved, moe: bool) -> int:
    """Bytes of the weight gradient a layer's largest GEMM produces before it is added into main_grad:
    without gradient-accumulation fusion TE (and torch's grouped_mm) return a BF16 gradient of the whole
    weight, for grouped GEMMs all local experts' fc1 at once."""
    if res.gradient_accumulation_fusion:
        return 0
    m, p = cfg.model, cfg.parallel
    act = 4 if cfg.precision.params_dtype == "fp32" else 2
    gated = 2 if m.swiglu else 1
    if moe:
        return act * (m.num_experts // p.ep) * gated * m.moe_ffn_hidden_size // p.etp * m.hidden_size
    return act * gated * m.ffn_hidden_size // p.tp * m.hidden_size


def _chunk_activations(cfg: RunConfig, res: Resolved, c: acts.ActContext, chunk: str, first_layer: int,
                       tokens: int) -> tuple[float, float, float]:
    """(saved bytes per token, largest transient in bytes, routed-token bytes per token of its largest MoE
    layer) of one micro batch through one virtual stage."""
    m = cfg.model
    moe, linear = moe_layer_pattern(cfg), linear_attention_pattern(cfg)
    full = cfg.recompute.granularity == "full"
    block = cfg.recompute.method == "block"
    saved = transient = routed = 0.0
    i = first_layer
    recomputed_here = 0
    for sym in chunk:
        if sym not in "tm":
            continue
        is_moe = bool(moe[i] if sym == "t" else moe[-1])
        lin = bool(linear[i]) if sym == "t" else False
        one = acts.layer(c, is_moe, lin)
        if full and block and recomputed_here < (cfg.recompute.num_layers or 0):
            one = acts.full_recompute_layer(c, one)  # block: the stage's first N layers, one at a time
            recomputed_here += 1
        elif full and not block:
            one = acts.full_recompute_layer(c, one, cfg.recompute.num_layers or 1)
        extra = c.act * 4 * m.hidden_size / c.sp_div if sym == "m" else 0.0  # MTP: norms and eh_proj input
        saved += one.saved + extra
        transient = max(transient, one.transient * tokens + wgrad_temporary(cfg, res, is_moe))
        if is_moe and not full:
            routed = max(routed, acts.moe_block(c, 1.0)[0] - acts.moe_block(c, 0.0)[0])
        i += 1 if sym == "t" else 0
    if "L" in chunk:
        saved += 2 * c.act * m.hidden_size / c.sp_div  # final norm input and the output layer's input
    return saved, transient, routed


def fsdp_working_set(cfg: RunConfig, chunks: list[str], positions: dict[int, int]) -> int:
    """Megatron FSDP gathers a layer's weights before it runs (the next one prefetched) and its full
    gradients before the reduce-scatter: two of the rank's largest layers, BF16 weights + main grads."""
    p, pr = cfg.parallel, cfg.precision
    grad_b = 2 if pr.grad_reduce_in_bf16 or dtype_bytes(pr.main_grads_dtype, 4) == 2 else 4
    layers = [rank_params(cfg, ["t"], {0: i}) for i in positions.values()]
    if not layers:
        return 0
    largest = max((x.sharded / p.tp + x.replicated + x.experts / (p.ep * p.etp)) for x in layers)
    return int(2 * largest * (2 + grad_b))


def _check_grid(cfg: RunConfig, res: Resolved) -> None:
    """The estimate divides by the data-parallel sizes: refuse degrees that do not tile the GPUs (the
    launcher's rules say the same at launch; the planner calls this on candidates)."""
    p = cfg.parallel
    for names, size in (("tp x cp x pp", p.tp * p.cp * p.pp), ("ep x etp x pp", p.ep * p.etp * p.pp)):
        if size < 1 or res.world_size % size:
            raise ConfigError("parallel", f"{names}={size}", f"must divide the {res.world_size} GPUs",
                              "change the degrees or cluster.nodes / cluster.gpus_per_node")


def estimate_memory(cfg: RunConfig, res: Resolved, microbatches: Optional[int] = None,
                    capacity: Optional[int] = None) -> MemoryEstimate:
    """Per-stage memory of one GPU (the most loaded rank of each pipeline stage)."""
    cfg = tuned_config(cfg, res.tuned)  # the tuned knobs (fused loss, overlap, expert GEMMs) as resolved
    _check_grid(cfg, res)
    p, t = cfg.parallel, cfg.train
    layouts = stage_layouts(cfg, res)
    positions = layer_positions(layouts, p.pp)
    dp = res.world_size // (p.tp * p.pp * p.cp)
    if microbatches is None:
        microbatches = max(1, t.global_batch_size // (t.micro_batch_size * max(dp, 1)))
    c = act_context(cfg, res)
    tokens = cfg.train.seq_length // p.cp * t.micro_batch_size
    vocab = padded_vocab(cfg) / p.tp
    peak_l, saved_l = logits_per_token(cfg, res)
    mtp = cfg.model.mtp_num_layers or 0
    worst = _max_expert_imbalance(cfg) if t.routing == "dropless" and p.ep > 1 else 1.0
    stages = []
    first_layer = first_layers(layouts, p.pp)
    for r, chunks in enumerate(layouts):
        static = static_memory(cfg, res, rank_params(cfg, chunks, positions[r]))
        fsdp = fsdp_working_set(cfg, chunks, positions[r]) if p.use_megatron_fsdp else 0
        per_chunk = [_chunk_activations(cfg, res, c, ch, first_layer[(v, r)], tokens)
                     for v, ch in enumerate(chunks)]
        inflight = _inflight_chunks(cfg, r, microbatches)
        per_mb = tuple(int(pc[0] * tokens) for pc in per_chunk)
        held = sum(per_chunk[v][0] for v in inflight) * tokens
        routed = max(pc[2] for pc in per_chunk) * tokens
        transient = max(pc[1] for pc in per_chunk)
        loss_chunks = [v for v in inflight if "L" in chunks[v]]
        logits = 0.0
        if loss_chunks:
            # the chunk running its loss at the peak, plus saved softmaxes of earlier in-flight ones;
            # each MTP layer computes (and keeps) its own logits first
            logits = tokens * vocab * (peak_l + saved_l * (len(loss_chunks) - 1 + mtp))
        stages.append(StageMemory(rank=r, chunks=tuple(chunks), activations=int(held), logits=int(logits),
                                  transient=int(transient), workspace=_workspace(cfg, res),
                                  inflight=len(inflight), dropless_extra=int(routed * (worst - 1)),
                                  fsdp_buffers=fsdp, chunk_activations=per_mb, **static))
    if capacity is None:
        capacity = device_capacity(cfg, res)
    return MemoryEstimate(stages=tuple(stages), device=res.device, capacity=capacity)


def host_memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    """MemTotal of this machine (CPU runs keep everything in host memory)."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo} has no MemTotal line")


def device_capacity(cfg: RunConfig, res: Resolved) -> int:
    """Bytes of one GPU (hardware.memory_gib) or, for CPU runs, this host's share per process (the
    processes of one node share its memory)."""
    if res.device == "cpu":
        return host_memory_bytes() // max(1, res.nproc_per_node)
    return int(cfg.hardware.memory_gib * 2 ** 30)
