"""moe-dispatch-bench end to end on CPU: 2 gloo processes run megatron-core's alltoall and allgather dispatchers
on the tiny MoE's shapes, every case checked against all_to_all_single; the results file and summary are written
and a recipe plans with dispatcher.tuned=<that file>. deepep/hybridep are refused here with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import PROBE, make_cfg
from launcher.plan.plan import build_plan

REPO = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.tools.dispatch_bench", "--out-dir", str(tmp_path),
                           *args], cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=600)


def test_cpu_dispatch_bench_end_to_end(tmp_path):
    proc = _bench(tmp_path, "--name", "tiny_cpu", "--iters", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "tiny_cpu.json").read_text())
    assert record["world_size"] == 2 and record["device"] == "cpu"
    assert record["shapes"] == {"hidden": 128, "experts": 8, "topk": 2, "tokens": 512, "dtype": "bf16"}
    assert [r["backend"] for r in record["results"]] == ["alltoall", "allgather"]
    assert all(r["correct"] and r["dispatch_ms"] > 0 and r["combine_ms"] > 0 for r in record["results"])
    summary = (tmp_path / "tiny_cpu.md").read_text()
    assert "| alltoall | best |" in summary and "Fastest:" in summary and summary in proc.stdout
    cfg = make_cfg([f"dispatcher.tuned={tmp_path / 'tiny_cpu.json'}", "launch.megatron_validate=false"])
    assert build_plan(cfg, PROBE).argv  # alltoall has no knobs: the tuned record plans unchanged


def test_flex_backends_are_refused_on_cpu(tmp_path):
    proc = _bench(tmp_path, "--backends", "alltoall,hybridep")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "needs CUDA GPUs" in proc.stderr
