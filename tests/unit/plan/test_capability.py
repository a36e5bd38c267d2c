"""Megatron's validator sees the target GPU of cfg.hardware, not a Hopper constant."""
from __future__ import annotations

import pytest

from launcher.plan.plan import compute_capability
from launcher.plan.megatron.validator import _target_gpu


@pytest.mark.parametrize("hardware, cap", [("h100", (9, 0)), ("h200", (9, 0)), ("b200", (10, 0)),
                                           ("gb200", (10, 0)), ("gb300", (10, 3))])
def test_capability_comes_from_the_hardware_group(hardware, cap):
    from conftest import make_cfg

    assert compute_capability(make_cfg([f"hardware={hardware}"])) == cap


def test_megatrons_device_questions_get_the_target_answer():
    import torch
    import megatron.training.arguments as margs

    if torch.cuda.is_available():
        pytest.skip("a real GPU answers for itself")
    with _target_gpu({}, (10, 0)):
        assert margs.get_device_arch_version() == 10 and torch.cuda.get_device_capability() == (10, 0)
    with _target_gpu({}, (9, 0)):
        assert margs.get_device_arch_version() == 9
