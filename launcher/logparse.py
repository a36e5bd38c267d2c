"""Parse Megatron's training log (train.log in a run directory) into per-iteration records.

Megatron 0.19.2 prints, on the last pipeline rank, one line per logged iteration:
  [2026-...] iteration   10/  30 | consumed samples: 320 | elapsed time per iteration (ms): 1712.3 |
  throughput per GPU (TFLOP/s/GPU): 205.1 | learning rate: ... | lm loss: 9.1E+00 |
  load_balancing_loss: 1.0E+00 | loss scale: 1.0 | grad norm: 2.3 | ...
and, on rank 0 after the first iterations, a memory line:
  [Rank 0] (after 1 iterations) memory (MB) | allocated: ... | max allocated: ... | reserved: ... | max reserved: ...
"""
from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

_ITER = re.compile(r"iteration\s+(\d+)/\s*(\d+)\s*\|(.*)")
_FIELD = re.compile(r"\s*([^:|]+?):\s*([-+0-9.eEnaN]+)\s*(?=\||$)")
_MEM = re.compile(r"\[Rank (\d+)\] \(after (\d+) iterations\) memory \(MB\)(.*)")

KEYS = {
    "elapsed time per iteration (ms)": "step_ms",
    "throughput per GPU (TFLOP/s/GPU)": "tflops_per_gpu",
    "lm loss": "loss",
    "load_balancing_loss": "load_balancing_loss",
    "grad norm": "grad_norm",
    "learning rate": "lr",
    "number of skipped iterations": "skipped",
    "number of nan iterations": "nan_iterations",
    "global batch size": "global_batch_size",
}


@dataclass
class LogSummary:
    iterations: list[dict] = field(default_factory=list)
    """One dict per logged iteration: iteration, step_ms, tflops_per_gpu, loss, ..."""
    memory_mb: dict = field(default_factory=dict)
    """Largest 'max allocated' / 'max reserved' seen on any rank (MB)."""
    train_iters: Optional[int] = None

    def steady(self, skip: int) -> list[dict]:
        """Iterations after the first `skip` (warm-up: allocator growth, autotuning, NCCL setup)."""
        return [it for it in self.iterations if it["iteration"] > skip]

    def summary(self, skip: int = 3) -> dict:
        steady = self.steady(skip) or self.iterations
        out: dict = {"logged_iterations": len(self.iterations), "warmup_skipped": skip,
                     "train_iters": self.train_iters, **self.memory_mb}
        for key in ("step_ms", "tflops_per_gpu"):
            values = [it[key] for it in steady if key in it]
            if values:
                out[f"{key}_median"] = round(statistics.median(values), 2)
                out[f"{key}_min"] = round(min(values), 2)
                out[f"{key}_max"] = round(max(values), 2)
        losses = [it for it in self.iterations if "loss" in it]
        if losses:
            out["loss_first"], out["loss_last"] = losses[0]["loss"], losses[-1]["loss"]
        return out


def parse_log(text: str) -> LogSummary:
    out = LogSummary()
    for line in text.splitlines():
        m = _ITER.search(line)
        if m and "elapsed time per iteration" in line:
            rec: dict = {"iteration": int(m.group(1))}
            out.train_iters = int(m.group(2))
            for name, value in _FIELD.findall(m.group(3)):
                key = KEYS.get(name.strip())
                if key:
                    rec[key] = float(value)
            out.iterations.append(rec)
            continue
        m = _MEM.search(line)
        if m:
            for name, value in _FIELD.findall(m.group(3)):
                key = name.strip().replace(" ", "_") + "_mb"
                if key in ("max_allocated_mb", "max_reserved_mb"):
                    out.memory_mb[key] = max(out.memory_mb.get(key, 0.0), float(value))
    return out


def parse_file(path: Path) -> LogSummary:
    return parse_log(Path(path).read_text(errors="replace"))


def as_dict(summary: LogSummary) -> dict:
    return asdict(summary)
