"""The facts of a launch, written into plan.json ("facts") so records, results, tables and the progress
line read them instead of parsing the Megatron argv back (launcher/records/legacy_argv.py does that only for
run directories written before plan.json carried facts). Same keys and values as the argv readers give."""
from __future__ import annotations

import dataclasses
from typing import Any

from launcher.config.schema import RunConfig
from launcher.plan.resolve import Resolved


def precision_facts(cfg: RunConfig) -> dict:
    """name, label and the tensor-core peak (conf/hardware) MFU divides by."""
    pr = cfg.precision
    if pr.fp8_format is not None:
        recipe = pr.fp8_recipe or "delayed"  # Megatron's default recipe
        return {"name": f"fp8-{recipe}", "label": f"FP8 ({recipe}, {pr.fp8_format})", "peak": "fp8"}
    return {"bf16": {"name": "bf16", "label": "BF16", "peak": "bf16"},
            "fp16": {"name": "fp16", "label": "FP16", "peak": "bf16"},  # same tensor-core peak as BF16
            "fp32": {"name": "fp32", "label": "FP32", "peak": None}}[pr.params_dtype]  # CPU smoke precision


def recompute_label(cfg: RunConfig) -> str:
    r = cfg.recompute
    if r.granularity == "none":
        return "none"
    if r.granularity == "full":
        return "full" + (f" ({r.method}, {r.num_layers})" if r.method else "")
    return ", ".join(r.modules) if r.modules else "core_attn"  # Megatron's default selective module


def layout_facts(cfg: RunConfig, res: Resolved, megatron: dict) -> dict:
    p, world = cfg.parallel, res.world_size
    vpp = megatron.get("virtual_pipeline_model_parallel_size") or (p.vpp if p.vpp and p.vpp > 1 else None)
    return {"world_size": world, "tp": p.tp, "pp": p.pp, "vpp": vpp, "cp": p.cp, "ep": p.ep, "etp": p.etp,
            "dp": megatron.get("data_parallel_size") or world // (p.tp * p.pp * p.cp),
            "edp": world // (p.ep * p.etp * p.pp), "fsdp": p.use_megatron_fsdp,
            "sequence_parallel": res.sequence_parallel}


def launch_facts(cfg: RunConfig, res: Resolved, megatron: dict) -> dict[str, Any]:
    """model, parallel layout, batch, dispatcher, routing, precision, recompute, nodes and target hardware."""
    m, t, d, hw = cfg.model, cfg.train, cfg.dispatcher, cfg.hardware
    layout = layout_facts(cfg, res, megatron)
    return {
        "model": {"name": m.name, "num_layers": m.num_layers, "num_experts": m.num_experts,
                  "topk": m.moe_router_topk, "hidden_size": m.hidden_size},
        "parallel": layout,
        "batch": {"seq_length": t.seq_length, "micro_batch_size": t.micro_batch_size,
                  "global_batch_size": t.global_batch_size,
                  "grad_accum": megatron.get("num_microbatches")
                  or t.global_batch_size // (t.micro_batch_size * layout["dp"]),
                  "train_iters": t.train_iters},
        "dispatcher": str(d.flex_backend or "flex") if d.type == "flex" else str(d.type),
        "routing": str(t.routing),
        "precision": precision_facts(cfg),
        "recompute": recompute_label(cfg),
        "nodes": cfg.cluster.nodes,
        "tuned": dataclasses.asdict(res.tuned),  # the tuned knobs as resolved (why: resolved.notes)
        "hardware": {"name": hw.name, "gpu": hw.gpu, "memory_gib": hw.memory_gib,
                     "peak_tflops_bf16": hw.peak_tflops_bf16, "peak_tflops_fp8": hw.peak_tflops_fp8,
                     "nvlink_domain": hw.nvlink_domain, "compute_capability": hw.compute_capability},
    }
