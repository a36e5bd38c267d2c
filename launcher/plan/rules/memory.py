"""Will it fit: the estimated peak memory of every pipeline rank (launcher/plan/estimate_memory.py) against
the device the run will use (hardware.memory_gib on GPUs, this machine's memory for CPU runs). Last in
RULES: the estimate assumes a layout the other rules accepted."""
from __future__ import annotations

from launcher.config.schema import RunConfig
from launcher.plan.estimate_table import check_fits
from launcher.plan.resolve import Resolved


def check_memory_fits(cfg: RunConfig, res: Resolved) -> None:
    """Refuse, with the breakdown and the cheapest fixes, a run predicted to run out of memory (the kernel's
    OOM killer on CPU, CUDA OOM on a GPU), unless launch.skip_memory_check says to launch anyway."""
    check_fits(cfg, res, skip=cfg.launch.skip_memory_check)
