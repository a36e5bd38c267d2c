"""moe-doctor (launcher/tools/doctor.py): the login-side rules, then recipes/preflight.py in a child python with
the run's environment. The deep_ep it finds is one written to tmp_path (tests/fake_deep_ep.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from fake_deep_ep import NO_NON_BLOCKING, write_deep_ep
from launcher.plan.resolve import resolve
from launcher.tools.doctor import preflight_argv

REPO = Path(__file__).resolve().parents[3]
EP2 = ["model=qwen3_30b_a3b", "model.num_layers=8", "parallel=ep2", "train=pretrain", "cluster.gpus_per_node=2",
       "hardware=h200"]


@pytest.mark.parametrize("overrides, expected", [
    (["parallel=ep2", "dispatcher=hybridep"], ["hybridep", "none", "2", "2", "1"]),
    (["parallel=tp2_ep8", "parallel.etp=2", "dispatcher=deepep", "cluster.nodes=2"],
     ["deepep", "none", "16", "8", "2"]),
    (["parallel=ep2", "dispatcher=alltoall", "precision=mxfp8", "hardware=b200"], ["none", "mxfp8", "2", "2", "1"]),
    (["parallel=ep2", "dispatcher=hybridep", "+megatron.extra.moe_hybridep_num_blocks_permute=32"],
     ["hybridep", "none", "2", "2", "1", "fused"]),
])
def test_preflight_arguments_come_from_the_resolved_config(overrides, expected):
    gpus = "cluster.gpus_per_node=8" if "cluster.nodes=2" in overrides else "cluster.gpus_per_node=2"
    cfg = make_cfg([*overrides, gpus])
    assert preflight_argv(cfg, resolve(cfg, PROBE)) == expected


def _doctor(tmp_path: Path, overrides: list[str], deep_ep_root: Path | None) -> subprocess.CompletedProcess:
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True, exist_ok=True)
    (cuda / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (cuda / "bin" / "nvcc").chmod(0o755)
    path = [str(deep_ep_root)] if deep_ep_root else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)]), "CUDA_HOME": str(cuda),
           "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("HYBRID_EP_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "launcher.tools.doctor", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a subprocess run (seconds): CI runs it, the fast set leaves it out
def test_doctor_passes_a_matching_deep_ep_and_refuses_one_without_non_blocking(tmp_path):
    good = _doctor(tmp_path, [*EP2, "dispatcher=hybridep"], write_deep_ep(tmp_path / "good"))
    assert good.returncode == 0, good.stderr
    assert "login-side rules passed" in good.stdout and "ready" in good.stdout and "not checked" in good.stdout
    bad = _doctor(tmp_path, [*EP2, "dispatcher=hybridep"], write_deep_ep(tmp_path / "bad", NO_NON_BLOCKING))
    assert bad.returncode == 3
    (line,) = bad.stderr.splitlines()
    assert line.startswith("moe-doctor: error: dispatcher=hybridep:") and "non_blocking" in line and "Fix:" in line
    # deepep does not call dispatch_with_permute: the same package is fine for it
    assert _doctor(tmp_path, [*EP2, "dispatcher=deepep"], tmp_path / "bad").returncode == 0


def test_doctor_reports_the_environment_the_run_gets(tmp_path):
    """cluster.env reaches the checks: HybridEP's NVLink domain variable must divide the EP group."""
    proc = _doctor(tmp_path, [*EP2, "dispatcher=hybridep", "+cluster.env.NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN=4"],
                   write_deep_ep(tmp_path / "good"))
    assert proc.returncode == 3 and "NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN=4" in proc.stderr


def test_doctor_stops_at_a_login_side_rule(tmp_path):
    proc = _doctor(tmp_path, ["dispatcher=hybridep", "parallel=ep2", "cluster.gpus_per_node=1"], None)
    assert proc.returncode == 2 and proc.stderr.startswith("moe-doctor: error: parallel=")
    assert "Traceback" not in proc.stderr
