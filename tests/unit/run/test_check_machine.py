"""A local GPU run on a machine without enough GPUs is one line and exit 2 before anything is written (its ranks
would die in Megatron's validate_args with a traceback); a dry run, a CPU run and Slurm are not checked here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_cfg
from launcher.errors import ConfigError
from launcher.plan.probe import MachineProbe
from launcher.run.base import Executor
from launcher.run.container import ContainerExecutor
from launcher.run.local import LocalExecutor

REPO = Path(__file__).resolve().parents[3]


class _Plan:
    def __init__(self, device: str, nproc: int):
        self.resolved = type("R", (), {"device": device, "nproc_per_node": nproc})()


@pytest.mark.parametrize("executor", [LocalExecutor(), ContainerExecutor()], ids=["local", "container"])
def test_too_few_gpus_is_refused_naming_the_field(executor):
    with pytest.raises(ConfigError) as e:
        executor.check_machine(make_cfg(["cluster.gpus_per_node=2"]), _Plan("cuda", 2), MachineProbe(gpus=1))
    assert e.value.field == "cluster.gpus_per_node" and "shows 1 GPU(s)" in str(e.value)
    assert "ask for at most 1 GPU(s)" in e.value.fix
    executor.check_machine(make_cfg(["cluster.gpus_per_node=1"]), _Plan("cuda", 1), MachineProbe(gpus=1))  # enough


def test_cpu_runs_and_slurm_are_not_checked():
    none = MachineProbe(gpus=0)
    LocalExecutor().check_machine(make_cfg([]), _Plan("cpu", 2), none)
    Executor().check_machine(make_cfg(["cluster.gpus_per_node=8"]), _Plan("cuda", 8), none)  # Slurm: compute nodes


def test_moe_launch_refuses_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever machine runs the test
    base = [sys.executable, "-m", "launcher", "cluster.gpus_per_node=1", "launch.megatron_validate=false",
            f"launch.run_dir={run_dir}"]
    proc = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moe-launch: error: cluster.gpus_per_node=1: a local run of 1 GPU")
    assert "Traceback" not in proc.stdout + proc.stderr and not run_dir.exists()
    dry = subprocess.run([*base, "launch.dry_run=true"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0 and (run_dir / "command.sh").exists(), dry.stderr


def test_gpu_count_without_nvidia_smi_reads_the_driver_device_files(tmp_path, monkeypatch):
    from launcher.plan import probe

    monkeypatch.setattr(probe.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert probe._count_gpus(tmp_path) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert probe._count_gpus(tmp_path) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe._count_gpus(tmp_path) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert probe._count_gpus(tmp_path / "empty") == 0  # no driver: no GPU
