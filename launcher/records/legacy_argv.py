"""Facts of a run read back from its Megatron argv: the way records learnt a run's layout, precision,
recompute and dispatcher before plan.json carried them (`facts`, written at launch by launcher.plan.facts.launch_facts).
Only run directories without plan.json's facts go through here."""
from __future__ import annotations

from typing import Optional


def _flag(argv: list[str], flag: str, default=None):
    if flag not in argv:
        return default
    i = argv.index(flag)
    return argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True


def _flag_list(argv: list[str], flag: str) -> list[str]:
    if flag not in argv:
        return []
    out = []
    for tok in argv[argv.index(flag) + 1:]:
        if tok.startswith("--"):
            break
        out.append(tok)
    return out


def _int(value, default: Optional[int] = None) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def precision_of(argv: list[str]) -> dict:
    """{"name": "bf16" | "fp16" | "fp32" | "fp8-<recipe>", "label": "BF16" ..., "peak": "bf16" | "fp8" | None}."""
    if "--fp8-format" in argv:
        recipe = _flag(argv, "--fp8-recipe", "delayed")
        return {"name": f"fp8-{recipe}", "label": f"FP8 ({recipe}, {_flag(argv, '--fp8-format')})", "peak": "fp8"}
    if "--bf16" in argv:
        return {"name": "bf16", "label": "BF16", "peak": "bf16"}
    if "--fp16" in argv:
        return {"name": "fp16", "label": "FP16", "peak": "bf16"}  # same tensor-core peak as BF16
    return {"name": "fp32", "label": "FP32", "peak": None}  # CPU smoke precision: no tensor-core peak


def recompute_of(argv: list[str]) -> str:
    g = _flag(argv, "--recompute-granularity")
    if not g:
        return "none"
    if g == "full":
        method, n = _flag(argv, "--recompute-method"), _flag(argv, "--recompute-num-layers")
        return "full" + (f" ({method}, {n})" if method else "")
    mods = _flag_list(argv, "--recompute-modules")
    return ", ".join(mods) if mods else "core_attn"  # Megatron's default selective module


def dispatcher_of(argv: list[str]) -> str:
    d = _flag(argv, "--moe-token-dispatcher-type", "allgather")
    return _flag(argv, "--moe-flex-dispatcher-backend", "flex") if d == "flex" else d


def layout_of(argv: list[str], plan: dict) -> dict:
    world = plan["resolved"]["world_size"]
    tp = _int(_flag(argv, "--tensor-model-parallel-size"), 1)
    pp = _int(_flag(argv, "--pipeline-model-parallel-size"), 1)
    cp, ep = _int(_flag(argv, "--context-parallel-size"), 1), _int(_flag(argv, "--expert-model-parallel-size"), 1)
    etp = _int(_flag(argv, "--expert-tensor-parallel-size"), tp)
    vpp = plan.get("megatron", {}).get("virtual_pipeline_model_parallel_size") \
        or _int(_flag(argv, "--num-virtual-stages-per-pipeline-rank"))
    dp = plan.get("megatron", {}).get("data_parallel_size") or world // (tp * pp * cp)
    return {"world_size": world, "tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "ep": ep, "etp": etp, "dp": dp,
            "edp": world // (ep * etp * pp), "fsdp": "--use-megatron-fsdp" in argv,
            "sequence_parallel": "--sequence-parallel" in argv}


def legacy_facts(argv: list[str], plan: dict) -> dict:
    """plan.json's `facts` (launcher.plan.facts.launch_facts) rebuilt from the argv of an older run."""
    layout = layout_of(argv, plan)
    seq = _int(_flag(argv, "--seq-length"))
    gbs, mbs = _int(_flag(argv, "--global-batch-size")), _int(_flag(argv, "--micro-batch-size"))
    return {
        "model": {"name": None, "num_layers": _int(_flag(argv, "--num-layers")),
                  "num_experts": _int(_flag(argv, "--num-experts")), "topk": _int(_flag(argv, "--moe-router-topk")),
                  "hidden_size": _int(_flag(argv, "--hidden-size"))},
        "parallel": layout,
        "batch": {"seq_length": seq, "micro_batch_size": mbs, "global_batch_size": gbs,
                  "grad_accum": plan.get("megatron", {}).get("num_microbatches")
                  or (gbs // (mbs * layout["dp"]) if gbs and mbs else None),
                  "train_iters": _int(_flag(argv, "--train-iters"))},
        "dispatcher": dispatcher_of(argv),
        "routing": "forced_balance" if "--moe-router-force-load-balancing" in argv else "dropless",
        "precision": precision_of(argv),
        "recompute": recompute_of(argv),
        "nodes": _int(_flag(plan.get("command", []), "--nnodes")) or 1,
        "hardware": None,
    }
