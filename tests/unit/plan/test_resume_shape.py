"""A resume into another model shape is refused on the login node (launcher/plan/resume_shape.py). No family may
be refused resuming its own checkpoint: the arguments each family's checkpoint holds are taken from Megatron's own
parse and validate_args of the argv we plan (what the ranks save), and compared with the config that planned it.
The real failure it replaces: tests/data/logs/bad_config_cpu_resume_other_hidden_size.log."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from conftest import make_cfg
from launcher.errors import ConfigError
from launcher.plan.megatron.validator import HOPPER, _target_gpu, _target_te
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.plan.resume_shape import check_shape
from launcher.records.checkpoint_model import SHAPE_ARGS, read_saved_model
from launcher.run.resume import find_resume
from saved_checkpoint import write_checkpoint

H200 = MachineProbe(gpus=1, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
ROOT = Path(__file__).resolve().parents[3]
PROXIES = {line.split()[0]: line.split()[1:]
           for line in (ROOT / "perf_results" / "proxies.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}


def _saved_by_megatron(cfg) -> dict:
    """The shaping arguments a rank would save for this config: Megatron's parser and validate_args on our argv."""
    from launcher.plan.megatron.parser import parser
    from megatron.training.arguments import validate_args

    plan = build_plan(cfg, H200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _ = parser().parse_known_args(plan.argv)
        args.rank, args.world_size = 0, 1
        args._is_global_batch_size_explicitly_specified = True
        with _target_gpu(plan.env, HOPPER), _target_te(plan.argv):
            validate_args(args, {})
    return {k: getattr(args, k) for k in SHAPE_ARGS if hasattr(args, k)}


@pytest.mark.parametrize("family", sorted(PROXIES))
def test_every_family_resumes_its_own_checkpoint_and_not_another_shape(family):
    cfg = make_cfg([*PROXIES[family], "hardware=h200", "cluster.gpus_per_node=1", "train.global_batch_size=4",
                    "train.micro_batch_size=1"])
    cfg.launch.megatron_validate = False
    saved = _saved_by_megatron(cfg)
    check_shape(cfg, saved, "its own", own=True)  # no false refusal
    with pytest.raises(ConfigError) as e:
        check_shape(make_cfg([*PROXIES[family], f"model.num_layers={cfg.model.num_layers + 1}"]), saved, "x", True)
    assert e.value.field == "model.num_layers" and "Fix: set model.num_layers=" in str(e.value)


def test_a_relaunch_with_another_shape_is_refused_and_the_same_one_plans(gloo_world, tmp_path, monkeypatch):
    cfg = make_cfg([])
    saved = {k: getattr(cfg.model, k) for k in SHAPE_ARGS if hasattr(cfg.model, k)}
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir / "checkpoints", monkeypatch, padded_vocab_size=512, **saved)
    point = find_resume(run_dir / "checkpoints")
    assert point.model == {**saved, "padded_vocab_size": 512}
    assert read_saved_model(tmp_path / "missing") is None
    for overrides, field in ((["model.hidden_size=256"], "model.hidden_size"),
                             (["model.make_vocab_size_divisible_by=1024"], "model.make_vocab_size_divisible_by")):
        with pytest.raises(ConfigError) as e:
            build_plan(make_cfg(overrides), MachineProbe(gpus=0, transformer_engine=False, apex_fused_wgrad=False,
                                                         deep_ep=False, cpu_count=2), run_dir, point)
        assert e.value.field == field, str(e.value)
