"""What the run actually ran on, written by rank 0 into the run directory as versions.json.

The compute node is the only place that knows the package versions, the GPU model and the NCCL build
that a run used; the launcher's record (launcher/records/record.py) reads this file. The run directory comes
from MOE_RUN_DIR, which the launcher's executor sets; without it nothing is written.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

RUN_DIR_ENV = "MOE_RUN_DIR"
ENV_PREFIXES = ("NCCL_", "CUDA_", "NVTE_", "TORCH_", "PYTORCH_", "NVSHMEM_", "OMP_", "SLURM_JOB_", "SLURM_NNODES",
                "SLURM_NTASKS", "MASTER_", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "UB_", "CUBLAS_", "TRITON_")
"""Environment variables that change how a run performs; recorded with their values."""


def _version(module: str, *dists: str) -> Optional[str]:
    """The installed distribution's version (None when the module does not import here). The module's own
    __version__ is the fallback only: megatron-core's appends `git rev-parse HEAD` of whatever repository
    encloses it (a venv inside this project reports this project's commit)."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - not installed, or a broken build
        return None
    found = next((v for v in map(_dist_version, dists) if v is not None), None)
    return found or str(getattr(mod, "__version__", "unknown"))


def _dist_version(dist: str) -> Optional[str]:
    """An installed distribution's version without importing it (tilelang's import loads TVM, seconds)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_smi(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout).strip() if out.returncode == 0 else None  # no ANSI styling


def collect() -> dict:
    """Versions, GPU, hosts and environment of this process (call on rank 0 after torch is imported)."""
    import torch

    info: dict = {
        "schema": "moe-recipes/versions/1",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "megatron_core": _version("megatron.core", "megatron-core"),
        "transformer_engine": _version("transformer_engine", "transformer-engine", "transformer_engine"),
        # DeepEP's setup.py appends the short git commit of its build (1.2.1+17cfb81): the commit a run used
        "deep_ep": _version("deep_ep", "deep_ep", "deep-ep"),
        "nvshmem": _dist_version("nvidia-nvshmem-cu13") or _dist_version("nvidia-nvshmem-cu12"),
        "apex": _version("apex", "apex"),
        # the kernel compilers and libraries behind gated delta net (Qwen3-Next): flash-linear-attention's
        # Hopper backward needs Triton >= 3.7.1 or tilelang (recipes/backends.py check_fla_triton)
        "triton": _dist_version("triton"),
        "fla_core": _dist_version("fla-core"),
        "tilelang": _dist_version("tilelang"),
    }
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a CUDA build without NCCL, or no driver: the record says unknown
        info["nccl"] = None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    info.update({
        "world_size": world,
        "local_world_size": local,
        "nodes": max(1, world // max(1, local)),
        "hostname": socket.gethostname(),
        "slurm_nodelist": os.environ.get("SLURM_JOB_NODELIST"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    })
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({
            "gpu_name": torch.cuda.get_device_name(0),
            "gpus_visible": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
        })
        smi = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
        info["driver"] = smi.splitlines()[0].strip() if smi else None
        info["topology"] = _nvidia_smi("topo", "-m")
    info["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    return info


def write(run_dir: Optional[str] = None) -> Optional[Path]:
    """Write versions.json into MOE_RUN_DIR (or run_dir); never fails the run."""
    target = run_dir or os.environ.get(RUN_DIR_ENV)
    if not target:
        return None
    try:
        path = Path(target) / "versions.json"
        path.write_text(json.dumps(collect(), indent=2) + "\n")
        return path
    except Exception as e:  # noqa: BLE001 - a record is worth less than the run it describes
        print(f"recipes.pretrain: warning: could not write versions.json: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        return None
