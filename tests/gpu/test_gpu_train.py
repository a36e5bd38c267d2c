"""GPU tests (run on the GPU host: `python -m pytest -m gpu tests/gpu`). Each launches moe-launch for
real and reads the run directory it wrote."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.gpu


def _record(run_dir: Path) -> dict:
    """The record the local executor writes when a run ends (launcher.records.record)."""
    return json.loads((run_dir / "record.json").read_text())


def _gpus() -> int:
    import torch
    return torch.cuda.device_count()


def _launch(tmp_path: Path, *overrides: str) -> tuple[int, Path, str]:
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "launcher", *overrides, f"launch.run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, run_dir, proc.stdout + proc.stderr


@pytest.mark.skipif("_gpus() < 1")
def test_tiny_moe_trains_on_one_gpu_with_transformer_engine(tmp_path):
    rc, run_dir, out = _launch(tmp_path, "cluster.gpus_per_node=1", "train.train_iters=15")
    assert rc == 0, out[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["resolved"]["device"] == "cuda"
    assert plan["resolved"]["transformer_impl"] == "transformer_engine"
    record = _record(run_dir)
    assert record["iterations"]["logged"] == 15
    series = record["series"]
    assert series[-1]["loss"] < series[0]["loss"] - 0.5, [it["loss"] for it in series]
    assert record["memory"]["max_allocated_mb"] > 0


@pytest.mark.skipif("_gpus() < 2")
@pytest.mark.parametrize("extra", [
    [],
    # EP all-to-all overlap: Megatron's combined 1F1B schedule asks the forward step for a schedule plan
    # (GBS 8 = 2 micro batches per rank: one's dispatch/combine runs beside the other's compute)
    ["dispatcher.overlap_moe_expert_parallel_comm=true", "train.global_batch_size=8"],
    # the flex dispatcher with DeepEP's kernels and with HybridEP's (issue 16): needs a deep_ep build matching
    # megatron-core 0.19.2 (container/README.md); both measured in perf_results/README.md "Dispatchers"
    ["dispatcher=deepep"],
    ["dispatcher=hybridep"],
], ids=["alltoall", "a2a_overlap", "deepep", "hybridep"])
def test_qwen3_shape_ep2_trains_on_two_gpus(tmp_path, extra):
    if any(e.startswith("dispatcher=") for e in extra) and importlib.util.find_spec("deep_ep") is None:
        pytest.skip("deep_ep is not installed here")
    rc, run_dir, out = _launch(tmp_path, "model=qwen3_30b_a3b", "model.num_layers=2", "parallel=ep2",
                               "train.seq_length=1024", "train.global_batch_size=4", "train.train_iters=5",
                               "cluster.gpus_per_node=2", *extra)
    assert rc == 0, out[-3000:]
    record = _record(run_dir)
    assert record["iterations"]["logged"] == 5 and record["steady_state"]["tflops_per_gpu"]["median"] > 0
    if extra[:1] in (["dispatcher=deepep"], ["dispatcher=hybridep"]):  # what ran is what was asked, no fallback
        assert record["dispatcher"] == extra[0].split("=")[1] and record["versions"]["deep_ep"], record["versions"]


@pytest.mark.skipif("_gpus() < 2")
def test_missing_deepep_fails_clearly_instead_of_falling_back(tmp_path):
    """DeepEP needs expert TP x EP > 1, which the login side refuses first at EP 1 (launcher/plan/rules/dispatcher.py;
    on one GPU this test met that refusal, 2026-12-01): at EP 2 the ranks find deep_ep missing."""
    pytest.importorskip("transformer_engine")
    try:
        import deep_ep  # noqa: F401
        pytest.skip("deep_ep is installed here")
    except ImportError:
        pass
    rc, _, out = _launch(tmp_path, "cluster.gpus_per_node=2", "parallel=ep2", "dispatcher=deepep",
                         "train.train_iters=2", "train.lr_warmup_iters=1")
    assert rc != 0
    assert "dispatcher=deepep needs the 'deep_ep' package" in out
    assert "iteration        1/" not in out  # nothing trained on another dispatcher
