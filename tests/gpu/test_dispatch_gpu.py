"""On the 2-GPU host (`python -m pytest -m gpu tests/gpu`): the doctor and the dispatcher benchmark on real GPUs
(issue 16). Not run yet: written on a CPU machine.

- moe-doctor for alltoall passes on the host; for deepep/hybridep it passes where a DeepEP build matching
  megatron-core 0.19.2 is importable, and otherwise says in one line that deep_ep does not import.
- the two H200s reach each other peer-to-peer (what DeepEP's Buffer asserts through NVML).
- moe-dispatch-bench on the EP2 bench shape (Qwen3-30B-A3B: hidden 2048, 128 experts, top-8, 16384 tokens per
  rank) with NCCL: every case equals all_to_all_single's tokens, and deepep/hybridep run when deep_ep imports.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

SHAPE = ("model=qwen3_30b_a3b", "model.num_layers=8", "parallel=ep2", "train=pretrain", "train.micro_batch_size=4",
         "cluster.gpus_per_node=2")
HAVE_DEEP_EP = importlib.util.find_spec("deep_ep") is not None


def _two_gpus() -> None:
    import torch
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")


def _doctor(dispatcher: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.tools.doctor", *SHAPE, f"dispatcher={dispatcher}"],
                          capture_output=True, text=True, timeout=300)


def test_doctor_on_the_gpu_host():
    _two_gpus()
    ok = _doctor("alltoall")
    assert ok.returncode == 0 and "ready" in ok.stdout and "not checked" not in ok.stdout, ok.stderr
    for flex in ("deepep", "hybridep"):
        proc = _doctor(flex)
        if HAVE_DEEP_EP:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode == 3 and "deep_ep does not import" in proc.stderr


def test_the_two_gpus_are_peer_to_peer():
    _two_gpus()
    from recipes.preflight import check_nvlink

    assert check_nvlink("deepep", [0, 1]) == []


def test_dispatch_bench_on_two_gpus(tmp_path):
    _two_gpus()
    backends = "alltoall,allgather,deepep,hybridep" if HAVE_DEEP_EP else "alltoall,allgather"
    proc = subprocess.run([sys.executable, "-m", "launcher.tools.dispatch_bench", "--name", "gpu_test", "--iters",
                           "5", "--out-dir", str(tmp_path), "--backends", backends, *SHAPE],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_test.json").read_text())
    assert record["device"] == "cuda" and record["world_size"] == 2
    assert record["shapes"] == {"hidden": 2048, "experts": 128, "topk": 8, "tokens": 16384, "dtype": "bf16"}
    assert all(r["correct"] for r in record["results"])
    assert {r["backend"] for r in record["results"]} == set(backends.split(","))
    print((tmp_path / "gpu_test.md").read_text())
