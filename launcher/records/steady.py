"""Iteration windows, steady state and throughput: the one place that turns iteration rows into tokens/s
and medians (records, results, moe-bench, moe-tune and the live progress line read them here)."""
from __future__ import annotations

import math
import statistics
from typing import Optional

DEFAULT_WARMUP = 3
"""Iterations left out at the start of every steady-state window (allocator warm-up, JIT, autotuning)."""


def iteration_window(text: str) -> tuple[int, int]:
    """'START:END', 1-based training iterations, inclusive -> (START, END); ValueError unless two integers
    with 1 <= START <= END. The one parser of profile windows (train.kernel_profile, moe-bench --profile,
    MOE_PROFILE_STEPS on the compute node); each caller words its own error."""
    parts = str(text).strip().split(":")
    if len(parts) != 2:
        raise ValueError(text)
    start, end = int(parts[0]), int(parts[1])
    if not 1 <= start <= end:
        raise ValueError(text)
    return start, end


def stats(values: list[float]) -> Optional[dict]:
    """median and spread of a steady-state series."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    med = statistics.median(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "median": _r(med), "mean": _r(statistics.fmean(values)), "stdev": _r(sd),
            "min": _r(min(values)), "max": _r(max(values)), "p10": _r(q[0]), "p90": _r(q[-1]),
            "cv_pct": _r(100 * sd / statistics.fmean(values)) if statistics.fmean(values) else None}


def _r(x: Optional[float], nd: int = 6) -> Optional[float]:
    if x is None:
        return None
    return float(f"{x:.{nd}g}") if abs(x) < 1e5 else round(x, 1)


def tokens_per_s_per_gpu(global_batch_size: int, seq_length: int, step_ms: float, world_size: int) -> float:
    """Tokens one optimizer step consumes (GBS x sequence), per second of step time, per GPU."""
    return global_batch_size * seq_length / (step_ms / 1000) / world_size


def series_of(iterations: list[dict], seq: int, world: int, peak: Optional[float]) -> list[dict]:
    """Megatron's logged iterations with tokens/s/GPU and MFU added."""
    out = []
    for it in iterations:
        row = dict(it)
        gbs, ms = it.get("global_batch_size"), it.get("step_ms")
        if gbs and ms:
            row["tokens_per_s_per_gpu"] = round(tokens_per_s_per_gpu(gbs, seq, ms, world), 1)
        if peak and it.get("tflops_per_gpu") is not None:
            row["mfu"] = round(it["tflops_per_gpu"] / peak, 5)
        out.append(row)
    return out


def steady_state(series: list[dict], warmup: int, last: Optional[int], memory: dict,
                 skip: Optional[tuple[int, int]] = None, start: int = 0) -> dict:
    """The declared window: iterations after `warmup` up to `last`, minus those Megatron counted as skipped
    or NaN and minus `skip` (START, END), a profiled window whose iterations carry the profiler's overhead.
    `start` is the iteration a resumed run continued from: its warm-up is the `warmup` iterations after it
    (a resume pays allocator growth and autotuning again: 20 s for its first step on 2x H200)."""
    first = start + warmup + 1
    window = {"warmup_iterations": warmup, "last": last, **({"resumed_from": start} if start else {}),
              "rule": f"iterations {first}..{last if last else 'last logged'}, "
                      "leaving out those Megatron counted as skipped or NaN"
                      + (f" and the profiled iterations {skip[0]}..{skip[1]}" if skip else "")}
    rows = [r for r in series if r["iteration"] >= first and (last is None or r["iteration"] <= last)]
    profiled = [r["iteration"] for r in rows if skip and skip[0] <= r["iteration"] <= skip[1]]
    dropped = [r["iteration"] for r in rows if r.get("skipped") or r.get("nan_iterations")]
    rows = [r for r in rows if r["iteration"] not in dropped and r["iteration"] not in profiled]
    window.update(first=rows[0]["iteration"] if rows else None, last=rows[-1]["iteration"] if rows else last,
                  iterations=len(rows), left_out=dropped)
    if skip:
        window["profiled"] = profiled
    if not rows:
        return {"window": window, "reason": f"no logged iteration after the {warmup} warm-up iterations"
                                            + (f" that followed iteration {start}" if start else "")}
    col = lambda key: [r.get(key) for r in rows]  # noqa: E731
    return {
        "window": window,
        "step_time_ms": stats(col("step_ms")),
        "tokens_per_s_per_gpu": stats(col("tokens_per_s_per_gpu")),
        "tflops_per_gpu": stats(col("tflops_per_gpu")),
        "mfu": stats(col("mfu")),
        "peak_memory_mb": {k: memory.get(k) for k in ("max_allocated_mb", "max_reserved_mb")},
        "loss": {"first": rows[0].get("loss"), "last": rows[-1].get("loss")},
    }


def steady_medians(ss: dict) -> dict:
    """The medians of a steady state (steady_state's result), the figures a tuning or benchmark table shows."""
    med = lambda k: (ss.get(k) or {}).get("median")  # noqa: E731
    return {"tokens_per_s_per_gpu": med("tokens_per_s_per_gpu"), "tflops_per_gpu": med("tflops_per_gpu"),
            "step_time_ms": med("step_time_ms"), "mfu": med("mfu"),
            "iterations": (ss.get("window") or {}).get("iterations")}
