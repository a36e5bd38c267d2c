"""Parse Megatron's training log (train.log in a run directory) into per-iteration records.

Megatron 0.19.2 prints, on the last pipeline rank, one line per logged iteration:
  [2026-...] iteration   10/  30 | consumed samples: 320 | elapsed time per iteration (ms): 1712.3 |
  throughput per GPU (TFLOP/s/GPU): 205.1 | learning rate: ... | lm loss: 9.1E+00 |
  load_balancing_loss: 1.0E+00 | loss scale: 1.0 | grad norm: 2.3 | ...
on rank 0 (with --log-memory-interval or after the first iterations) a memory line:
  [Rank 0] (after 1 iterations) memory (MB) | allocated: ... | max allocated: ... | reserved: ... | max reserved: ...
and its memory estimate:
  Theoretical memory footprints: weight and optimizer=50346.40 MB, activation=14225.53 MB, total=64571.93 MB
after loading a checkpoint (a resume, train.load; --finetune prints iteration 0):
  successfully loaded checkpoint from /ckpt [ t 1/1, gtp_remat 1/1, p 1/1 ] at iteration 100
The training entry (recipes/pretrain.py) ends a run that returned normally with
  recipes.pretrain: done, iteration 20/20, 51.8s (cuda, world 2)

Lines may carry a launcher prefix ("[rank1]: ", "[default0]:", "0: "); the patterns search, not match.
This module reads text only: it imports neither torch nor megatron.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

_ITER = re.compile(r"\biteration\s+(\d+)/\s*(\d+)\s*\|(.*)")
_FIELD = re.compile(r"\s*([^:|]+?):\s*([-+0-9.eE]+|nan|inf|-inf|NaN|Inf)\s*(?=\||$)")
_MEM = re.compile(r"\[Rank (\d+)\] \(after (\d+) iterations\) memory \(MB\)(.*)")
_THEORY = re.compile(r"Theoretical memory footprints: weight and optimizer=([0-9.]+) MB, "
                     r"activation=([0-9.]+) MB, total=([0-9.]+) MB")
_LOADED = re.compile(r"successfully loaded checkpoint from .* at iteration (\d+)")
_DONE = re.compile(r"recipes\.pretrain: done, iteration (\d+)/(\d+), ([0-9.]+)s \((\w+), world (\d+)\)")

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
    "consumed samples": "consumed_samples",
    "loss scale": "loss_scale",
}
"""Megatron's field names -> our keys; any other numeric field keeps a snake_case form of its name
(z_loss, mtp_1 loss -> mtp_1_loss, num zeros -> num_zeros)."""


def _key(name: str) -> str:
    name = name.strip()
    return KEYS.get(name) or re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _num(text: str) -> float:
    return float(text)  # float() reads nan / inf in any case


def parse_iteration_line(line: str) -> Optional[dict]:
    """One Megatron iteration line -> {"iteration": N, "train_iters": M, "step_ms": ..., ...}; else None."""
    m = _ITER.search(line)
    if not m or "elapsed time per iteration" not in line:
        return None
    rec: dict = {"iteration": int(m.group(1)), "train_iters": int(m.group(2))}
    for name, value in _FIELD.findall(m.group(3)):
        rec[_key(name)] = _num(value)
    return rec


@dataclass
class LogSummary:
    iterations: list[dict] = field(default_factory=list)
    """One dict per logged iteration: iteration, step_ms, tflops_per_gpu, loss, ... (train_iters removed)."""
    memory_mb: dict = field(default_factory=dict)
    """Largest 'max allocated' / 'max reserved' seen on any rank (MB)."""
    memory_by_rank: dict = field(default_factory=dict)
    """rank -> {"max_allocated_mb", "max_reserved_mb", "after_iteration"} (largest seen per rank)."""
    memory_reports: list[dict] = field(default_factory=list)
    """Every memory line: rank, after_iteration, allocated_mb, max_allocated_mb, reserved_mb, max_reserved_mb."""
    theoretical_memory_mb: Optional[dict] = None
    """Megatron's estimate: weight_and_optimizer, activation, total (MB)."""
    train_iters: Optional[int] = None
    done: Optional[dict] = None
    """The training entry's closing line: iteration, train_iters, seconds, device, world."""
    start_iteration: int = 0
    """The iteration training continued from: the loaded checkpoint's (0 for a fresh start or --finetune)."""

    @property
    def last_iteration(self) -> int:
        return self.iterations[-1]["iteration"] if self.iterations else 0


def parse_log(text: str) -> LogSummary:
    out = LogSummary()
    seen: dict[int, int] = {}
    for line in text.splitlines():
        rec = parse_iteration_line(line)
        if rec is not None:
            out.train_iters = rec.pop("train_iters")
            if rec["iteration"] in seen:  # the same iteration printed twice (two last-stage ranks): keep the last
                out.iterations[seen[rec["iteration"]]] = rec
            else:
                seen[rec["iteration"]] = len(out.iterations)
                out.iterations.append(rec)
            continue
        m = _MEM.search(line)
        if m:
            rank, after = int(m.group(1)), int(m.group(2))
            report = {"rank": rank, "after_iteration": after}
            for name, value in _FIELD.findall(m.group(3)):
                report[name.strip().replace(" ", "_") + "_mb"] = float(value)
            out.memory_reports.append(report)
            per = out.memory_by_rank.setdefault(rank, {})
            for key in ("max_allocated_mb", "max_reserved_mb"):
                if key in report:
                    out.memory_mb[key] = max(out.memory_mb.get(key, 0.0), report[key])
                    per[key] = max(per.get(key, 0.0), report[key])
            per["after_iteration"] = max(per.get("after_iteration", 0), after)
            continue
        m = _THEORY.search(line)
        if m:
            out.theoretical_memory_mb = {"weight_and_optimizer": float(m.group(1)),
                                         "activation": float(m.group(2)), "total": float(m.group(3))}
            continue
        m = _LOADED.search(line)
        if m:
            out.start_iteration = int(m.group(1))
            continue
        m = _DONE.search(line)
        if m:
            out.done = {"iteration": int(m.group(1)), "train_iters": int(m.group(2)),
                        "seconds": float(m.group(3)), "device": m.group(4), "world": int(m.group(5))}
    out.iterations.sort(key=lambda it: it["iteration"])
    return out


def parse_file(path: Path) -> LogSummary:
    return parse_log(Path(path).read_text(errors="replace"))


def as_dict(summary: LogSummary) -> dict:
    return asdict(summary)
