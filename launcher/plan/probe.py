"""Facts about the machine that launches a local run, found without importing torch."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MachineProbe:
    """What the launching machine offers. Tests pass a fixed probe so output does not depend on it."""

    gpus: int = 0
    """GPUs visible to this process (nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES)."""
    transformer_engine: bool = False
    apex_fused_wgrad: bool = False
    """APEX's fused_weight_gradient_mlp_cuda, needed by --gradient-accumulation-fusion."""
    deep_ep: bool = False
    cpu_count: int = 1


def _has_module(name: str) -> bool:
    # find_spec locates the package without importing it (no CUDA initialisation here)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _count_gpus(dev: Path = Path("/dev")) -> int:
    """nvidia-smi's list; without nvidia-smi (a container image that lacks it) the driver's device files
    /dev/nvidia0, /dev/nvidia1, ... (none at all: no NVIDIA driver, so no GPU CUDA could use)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return 0
        n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    else:
        n = sum(1 for f in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", f.name))
    if visible:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def detect() -> MachineProbe:
    """Probe this machine (the local executor runs here)."""
    return MachineProbe(
        gpus=_count_gpus(),
        transformer_engine=_has_module("transformer_engine"),
        apex_fused_wgrad=_has_module("fused_weight_gradient_mlp_cuda"),
        deep_ep=_has_module("deep_ep"),
        cpu_count=os.cpu_count() or 1,
    )
