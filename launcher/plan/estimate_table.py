"""The estimate as a table per pipeline stage, and the pre-launch check that refuses a config predicted
not to fit, with the cheapest changes that would make it fit.

Override: the check takes `skip`; the proposed config field is `launch.skip_memory_check` (bool, default
false), passed by the rule that calls check_fits before any GPU is allocated.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Optional

from launcher.plan.resolve import Resolved, balanced_layout
from launcher.errors import ConfigError
from launcher.plan.estimate_flops import Flops, estimate_flops
from launcher.plan.estimate_memory import MemoryEstimate, StageMemory, estimate_memory
from launcher.config.schema import RunConfig

GiB = 2 ** 30
# What the estimate predicts is torch's max_memory_allocated; the device also holds the CUDA context and
# NCCL buffers (outside the allocator) and the caching allocator reserves more than it hands out: the GPU
# run records show max reserved 2-20% above max allocated (perf_results/estimate_vs_measured.md). A peak
# above 90% of the device is therefore refused too (a margin, not a model of fragmentation).
ALLOCATOR_MARGIN = 0.10


def usable(capacity: int) -> int:
    return int(capacity * (1 - ALLOCATOR_MARGIN))
_COLUMNS = ("rank", "stages", "weights", "grads", "optimizer", "fp8 w", "activations", "in flight", "logits",
            "bwd temp", "workspace", "peak", "")


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _row(s: StageMemory, capacity: int, worst: bool) -> list[str]:
    mark = ("OVER " if s.peak > usable(capacity) else "") + ("<- peak" if worst else "")
    return [str(s.rank), "|".join(s.chunks), _gib(s.weights), _gib(s.grads), _gib(s.main_params + s.moments),
            _gib(s.fp8_weights), _gib(s.activations), str(s.inflight), _gib(s.logits), _gib(s.transient),
            _gib(s.workspace), _gib(s.peak), mark.strip()]


def render_table(est: MemoryEstimate, flops: Optional[Flops] = None, title: str = "") -> str:
    """Markdown table, GiB per GPU; the most loaded stage marked, and every stage over the device."""
    worst = est.worst
    rows = [_row(s, est.capacity, s is worst) for s in est.stages]
    lines = [title] if title else []
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    where = "host memory" if est.device == "cpu" else "GPU memory"
    verdict = "fits" if est.peak <= usable(est.capacity) else (
        "DOES NOT FIT" if est.peak > est.capacity else "too tight (over the allocator margin)")
    lines.append(f"\nPeak {_gib(est.peak)} GiB on pipeline rank {worst.rank} of {_gib(est.capacity)} GiB "
                 f"{where}: {verdict} ({100 * est.peak / est.capacity:.0f}%; at most "
                 f"{100 * (1 - ALLOCATOR_MARGIN):.0f}% passes). First iteration (before the optimizer state "
                 f"exists): {_gib(est.peak_after(1))} GiB.")
    if worst.fsdp_buffers:
        lines.append(f"Megatron FSDP working set (unsharded weights and gradients of two layers), in the peak: "
                     f"{_gib(worst.fsdp_buffers)} GiB.")
    if worst.dropless_extra:
        lines.append(f"Dropless routing, worst case (one MoE layer's dispatch sends this rank every token of "
                     f"the EP group it can take): +{_gib(worst.dropless_extra)} GiB for that layer.")
    if worst.host_optimizer:
        lines.append(f"Optimizer state offloaded to the host: {_gib(worst.host_optimizer)} GiB per GPU.")
    if flops is not None:
        lines.append(f"Model FLOPs (Megatron's formula): {flops.per_token:.4g} per token, {flops.per_step:.4g} "
                     f"per step.")
    return "\n".join(lines)


def _with(cfg: RunConfig, change: Callable[[RunConfig], None]) -> RunConfig:
    new = copy.deepcopy(cfg)
    change(new)
    return new


def _relayout(cfg: RunConfig, res: Resolved) -> Resolved:
    """Resolved facts after a PP change (the auto layout follows pp)."""
    p, m = cfg.parallel, cfg.model
    vpp, mtp = p.vpp or 1, m.mtp_num_layers or 0
    if p.pp == 1 and not mtp or m.num_layers % (p.pp * vpp) == 0 and not mtp:
        return dataclasses.replace(res, pipeline_layout=None)
    return dataclasses.replace(res, pipeline_layout=balanced_layout(m.num_layers, p.pp, vpp, mtp))


def _grid_ok(cfg: RunConfig, world: int) -> bool:
    """The degrees tile the GPUs (Megatron's world % (TP*CP*PP) and world % (EP*ETP*PP) rules)."""
    p = cfg.parallel
    return (world % (p.tp * p.cp * p.pp) == 0 and world % (p.ep * p.etp * p.pp) == 0
            and cfg.model.num_experts % p.ep == 0 and cfg.model.num_layers >= p.pp * (p.vpp or 1))


def _candidates(cfg: RunConfig, res: Resolved) -> list[tuple[str, RunConfig, Resolved]]:
    """Changes in the order they cost least throughput: recompute, model parallelism, MBS, offload."""
    out: list[tuple[str, RunConfig, Resolved]] = []
    r, p, t = cfg.recompute, cfg.parallel, cfg.train

    def set_recompute(granularity: str, modules: list[str]) -> Callable[[RunConfig], None]:
        def change(c: RunConfig) -> None:
            c.recompute.granularity, c.recompute.modules = granularity, modules
            if granularity == "full":
                c.recompute.method, c.recompute.num_layers = "uniform", 1
        return change

    if r.granularity == "none":
        out.append(("recompute=norm_act", _with(cfg, set_recompute("selective", ["layernorm", "moe_act"])), res))
    if r.granularity != "full":
        out.append(("recompute=full", _with(cfg, set_recompute("full", [])), res))
    more_pp = _with(cfg, lambda c: setattr(c.parallel, "pp", p.pp * 2))
    if _grid_ok(more_pp, res.world_size):
        out.append((f"parallel.pp={p.pp * 2}", more_pp, _relayout(more_pp, res)))
    more_ep = _with(cfg, lambda c: setattr(c.parallel, "ep", p.ep * 2))
    if _grid_ok(more_ep, res.world_size):
        out.append((f"parallel.ep={p.ep * 2}", more_ep, res))
    if t.micro_batch_size > 1:
        half = t.micro_batch_size // 2
        out.append((f"train.micro_batch_size={half}",
                    _with(cfg, lambda c: setattr(c.train, "micro_batch_size", half)), res))
    if not t.optimizer_cpu_offload:
        def offload(c: RunConfig) -> None:
            c.train.optimizer_cpu_offload = True
            c.precision.use_precision_aware_optimizer = True
        out.append(("+preset/with=optimizer_offload", _with(cfg, offload), res))
    return out


def cheapest_fixes(cfg: RunConfig, res: Resolved, capacity: int) -> list[tuple[str, int]]:
    """(override, predicted peak) of single changes, those that fit first, each group in cost order."""
    scored = []
    for text, new_cfg, new_res in _candidates(cfg, res):
        peak = estimate_memory(new_cfg, new_res, capacity=capacity).peak
        scored.append((text, peak))
    limit = usable(capacity)
    return [s for s in scored if s[1] <= limit] + [s for s in scored if s[1] > limit]


def check_fits(cfg: RunConfig, res: Resolved, est: Optional[MemoryEstimate] = None, skip: bool = False) -> None:
    """Raise ConfigError (breakdown + cheapest fixes) when the predicted peak exceeds the device."""
    est = est or estimate_memory(cfg, res)
    limit = usable(est.capacity)
    if skip or est.peak <= limit:
        return
    s = est.worst
    parts = (f"weights {_gib(s.weights)} + grads {_gib(s.grads)} + optimizer {_gib(s.main_params + s.moments)}"
             + (f" + FP8 weights {_gib(s.fp8_weights)}" if s.fp8_weights else "")
             + f" + activations {_gib(s.activations)} ({s.inflight} micro batch chunks in flight)"
             + f" + max(logits {_gib(s.logits)}, backward temporaries {_gib(s.transient)})"
             + f" + workspace {_gib(s.workspace)} GiB")
    fixes = cheapest_fixes(cfg, res, est.capacity)
    fits = [f"{text} (-> {_gib(peak)} GiB)" for text, peak in fixes if peak <= limit]
    rest = [f"{text} (-> {_gib(peak)} GiB, still over)" for text, peak in fixes if peak > limit]
    fix = "; ".join(fits or rest) or "use more GPUs"
    where = "host memory" if est.device == "cpu" else "hardware.memory_gib"
    raise ConfigError("memory", f"{_gib(est.peak)} GiB",
                      f"predicted peak on pipeline rank {s.rank} exceeds {_gib(limit)} GiB, "
                      f"{100 * (1 - ALLOCATOR_MARGIN):.0f}% of {_gib(est.capacity)} GiB ({where}): "
                      f"{parts}", f"{'one of: ' if fits else 'none fits alone: '}{fix}; or set "
                      f"launch.skip_memory_check=true to launch anyway")


def estimate_record(cfg: RunConfig, res: Resolved) -> dict:
    """Everything the estimate found, as JSON-ready data (what a run directory's estimate.json holds)."""
    est = estimate_memory(cfg, res)
    flops = estimate_flops(cfg)
    return {"capacity_bytes": est.capacity, "peak_bytes": est.peak, "peak_first_step_bytes": est.peak_after(1),
            "fits": est.peak <= usable(est.capacity), "worst_rank": est.worst.rank,
            "stages": [dict(dataclasses.asdict(s), peak=s.peak, peak_first_step=s.peak_first_step)
                       for s in est.stages],
            "flops_per_token": flops.per_token, "flops_per_step": flops.per_step}
