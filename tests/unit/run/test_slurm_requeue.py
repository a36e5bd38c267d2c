"""Slurm requeue and a signal ahead of the time limit from config; PREEMPTED is not final with requeue."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.run import slurm
from launcher.run.registry import launch_plan

BASE = ["cluster=slurm", "cluster.nodes=1", "cluster.device=cpu", "cluster.nproc_cpu=2",
        "launch.megatron_validate=false"]


def _sbatch(overrides: list[str]) -> str:
    cfg = make_cfg([*BASE, *overrides])
    return slurm.render_sbatch(cfg, launch_plan(cfg, PROBE), Path("/runs/r1"), Path("/work"))


def test_requeue_and_signal_become_directives():
    text = _sbatch(["cluster.requeue=true", "cluster.signal=TERM@300"])
    assert "#SBATCH --requeue\n#SBATCH --open-mode=append\n#SBATCH --signal=TERM@300\n" in text


def test_without_them_the_script_is_unchanged():
    text = _sbatch([])
    assert "--requeue" not in text and "--signal" not in text and "--open-mode" not in text


@pytest.mark.parametrize("value", ["TERM@300", "B:USR1@300", "SIGTERM", "10@60"])
def test_valid_signals(value):
    _sbatch([f"cluster.signal={value}"])


@pytest.mark.parametrize("value", ["TERM 300", "TERM@5m", "$(x)", "FOO@100", "99@60"])
def test_invalid_signal_is_one_line(value):
    with pytest.raises(ConfigError) as e:
        _sbatch([f"cluster.signal='{value}'"])
    assert e.value.field == "cluster.signal"


def test_follow_waits_through_preemption_when_requeue_is_on(monkeypatch):
    states = iter(["RUNNING", "PREEMPTED", "PENDING", "RUNNING", "COMPLETED"])
    monkeypatch.setattr(slurm, "job_state", lambda job_id: (next(states), "0:0"))
    assert slurm.follow("7", 60, poll_s=0, requeue=True)[0] == "COMPLETED"
    states = iter(["RUNNING", "PREEMPTED", "PENDING"])
    assert slurm.follow("7", 60, poll_s=0, requeue=False)[0] == "PREEMPTED"
