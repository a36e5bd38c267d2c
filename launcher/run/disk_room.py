"""Room for the checkpoints a run will write: one warning line before anything starts (login side).

Why: a save that meets a full disk ends a run hours in, after the step that filled it (measured on the one-H200
host, 2026-12-01: perf_results/issue13/README.md, the failure class checkpoint_save). The arithmetic:
  size   per parameter, the model weight in params_dtype (2 bytes in BF16/FP16, 4 in FP32) and, for Adam, its two
         moments and, below FP32 params, the FP32 main copy: 4 + 4 each (the precision-aware optimizer's dtypes
         where set); SGD keeps one momentum. BF16 + Adam = 14 bytes: the 2-layer Qwen3-30B-A3B shape's 1.87B
         parameters make 26.2 GB, and `du` said 25G (GiB, 26.8 GB) for its complete checkpoint.
  count  with train.checkpoint.keep_last=K: K kept, one being written, and with async saves one more, the oldest,
         pruned only once the newest complete one is finalized at the next save (K + 2: the 2026-12-01 disk
         held saves 20, 40 and 60 at once with K = 1); keeping all: every save of the run.
Free space is read at the nearest existing directory of the save path (a shared file system seen from the login
node; a container's mount is not seen here, so nothing is said when only "/" exists). A warning, not a refusal:
old checkpoints may be moved away while the run goes on.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.plan.checkpoint import Checkpointing
from launcher.plan.estimate_static import dtype_bytes, master_and_moment_bytes
from launcher.plan.params import count


def bytes_per_parameter(cfg: RunConfig) -> int:
    """What one parameter costs in a checkpoint with its optimizer state (see the module docstring); the same
    per-parameter terms as the memory estimate's optimizer state (estimate_static.master_and_moment_bytes)."""
    main, moments = master_and_moment_bytes(cfg.precision)
    if cfg.train.optimizer != "adam":
        moments = 4  # SGD's momentum
    return dtype_bytes(cfg.precision.params_dtype, 2) + main + moments


def checkpoint_bytes(cfg: RunConfig) -> int:
    """One checkpoint of the whole model (all ranks together), MTP layers included."""
    return count(cfg).total_with_mtp * bytes_per_parameter(cfg)


def checkpoints_at_once(cfg: RunConfig, c: Checkpointing) -> int:
    """How many checkpoints may be on disk together during the run."""
    saves = math.ceil(cfg.train.train_iters / c.interval) if c.interval else 1  # the last one at the end
    if not c.keep_last:
        return saves
    return min(saves, c.keep_last + (2 if c.async_save else 1))


def _nearest_existing(path: Path) -> Optional[Path]:
    for p in (path, *path.parents):
        if p.exists():
            return None if p == Path(p.anchor) else p
    return None


def room_warning(cfg: RunConfig, c: Checkpointing, free: Optional[int] = None) -> Optional[str]:
    """One warning line when the checkpoints may not fit the free space; None when they fit or nobody can tell.
    free: bytes free at the save path (read from the file system when not given)."""
    if c.save is None:
        return None
    where = _nearest_existing(Path(c.save).absolute())
    if free is None:
        if where is None:
            return None
        free = shutil.disk_usage(where).free
    n, size = checkpoints_at_once(cfg, c), checkpoint_bytes(cfg)
    if n * size <= free:
        return None
    gb = 1e9
    return (f"warning: train.checkpoint: up to {n} checkpoint(s) of about {size / gb:.1f} GB may be on disk at once "
            f"({n * size / gb:.1f} GB), and {free / gb:.1f} GB are free at {where or c.save}: a save would fail "
            f"with a full disk. Fix: free space there, point train.save at larger storage, or lower "
            f"train.checkpoint.keep_last / raise train.save_interval")
