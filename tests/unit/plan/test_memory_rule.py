"""A run that cannot fit is refused on the login node, before anything starts (the last of RULES): the
numbers, and the cheapest fixes. The machine's memory is fixed here so the outcome does not depend on it."""
from __future__ import annotations

import pytest

from launcher.errors import ConfigError
from launcher.plan import estimate_memory

GiB = 2 ** 30


@pytest.fixture
def machine_24gb(monkeypatch):
    """The CPU machine of the report: 23.5 GiB MemTotal (a '24 GB' machine)."""
    monkeypatch.setattr(estimate_memory, "host_memory_bytes", lambda meminfo="/proc/meminfo": int(23.5 * GiB))


def _plan(overrides):
    from conftest import make_cfg, PROBE
    from launcher.plan.plan import build_plan

    return build_plan(make_cfg([*overrides, "launch.megatron_validate=false"]), PROBE)


def test_two_qwen3_30b_layers_do_not_fit_a_24gb_cpu_machine(machine_24gb):
    """Killed by the OOM killer at 19 GB after 158 s, recorded `unknown` (the report): now one line."""
    with pytest.raises(ConfigError) as ei:
        _plan(["model=qwen3_30b_a3b", "model.num_layers=2", "train.train_iters=3"])
    e = ei.value
    assert e.field == "memory" and "host memory" in e.rule and "optimizer" in e.rule
    assert "launch.skip_memory_check=true" in e.fix and "\n" not in str(e)


def test_the_tiny_model_fits(machine_24gb):
    plan = _plan([])
    assert plan.estimate["fits"] and plan.estimate["peak_bytes"] < 0.1 * GiB


def test_the_check_can_be_skipped(machine_24gb):
    plan = _plan(["model=qwen3_30b_a3b", "model.num_layers=2", "train.train_iters=3", "launch.skip_memory_check=true"])
    assert not plan.estimate["fits"]  # still estimated and written to estimate.json, not refused


def test_gpu_runs_are_checked_against_the_hardware():
    """Qwen3-30B-A3B on one 8-GPU H100 node, EP8: the experts' Adam state is not sharded (expert DP 1)."""
    with pytest.raises(ConfigError) as ei:
        _plan(["model=qwen3_30b_a3b", "parallel=ep8", "train=pretrain", "hardware=h100", "cluster.gpus_per_node=8",
               "train.global_batch_size=256"])
    assert "hardware.memory_gib" in ei.value.rule and "optimizer_offload" in ei.value.fix
    plan = _plan(["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"])  # the preset offloads the optimizer
    assert plan.estimate["fits"]
