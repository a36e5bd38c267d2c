"""Shared helpers: a fixed machine probe and one-call config/plan builders.

Every test builds plans with PROBE, never with launcher.plan.probe.detect(), so results do not depend on
the machine the suite runs on (GPUs, Transformer Engine, APEX, DeepEP).
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from launcher.config.compose import compose
from launcher.plan.plan import LaunchPlan, build_plan
from launcher.plan.probe import MachineProbe
from launcher.config.schema import RunConfig

# Megatron's validation memo (launcher/plan/megatron/validate_cache.py) lives in this session's own temporary
# directory (inherited by the moe-launch subprocesses of the tests), never in the user's ~/.cache
os.environ["MOE_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe-test-cache-")
atexit.register(shutil.rmtree, os.environ["MOE_CACHE_DIR"], True)

@pytest.fixture(scope="module")
def gloo_world():
    """A one-rank gloo process group (what Megatron's dist_checkpointing needs to save and load on CPU), on a free
    port; destroyed after the module when this fixture started it, since pytest-xdist mixes test files in one
    process and the next one starts its own."""
    import socket

    import torch

    started = not torch.distributed.is_initialized()
    if started:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    yield
    if started:
        torch.distributed.destroy_process_group()


PROBE = MachineProbe(gpus=0, transformer_engine=False, apex_fused_wgrad=False, deep_ep=False, cpu_count=2)

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None

# Megatron's TransformerConfig asks whether Transformer Engine kernels are *installed here* (rope
# fusion, fused permute, TE version for FP8). launcher/plan/megatron/validator.py stands in for the target GPU's
# arch and capability but not for TE, so on a machine without TE every transformer_engine argv is
# rejected with one of these messages (see the report: megatron_check TE stand-in bug).
TE_MISSING = re.compile(r"Please install TE|transformer-engine>=|your version is 0\.0\.0")


def make_cfg(overrides: list[str]) -> RunConfig:
    """Compose conf/ with the overrides; the typed RunConfig."""
    _, cfg = compose(list(overrides))
    return cfg


def plan_for(overrides: list[str], validate_megatron: bool = True) -> LaunchPlan:
    """build_plan with the fixed PROBE; validate_megatron toggles launch.megatron_validate."""
    cfg = make_cfg(overrides)
    cfg.launch.megatron_validate = validate_megatron
    return build_plan(cfg, PROBE)


E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e is slow (real training, real Slurm): not in the default `pytest`."""
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """Test files are imported by their base name (no __init__.py): two with one name would shadow each other."""
    seen: dict[str, Path] = {}
    for path in sorted(Path(__file__).resolve().parent.rglob("test_*.py")):
        if path.name in seen:
            raise pytest.UsageError(f"two test files named {path.name}: {seen[path.name]} and {path}; rename one")
        seen[path.name] = path
