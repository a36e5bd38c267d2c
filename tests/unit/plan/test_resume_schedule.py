"""A resume whose learning-rate schedule Megatron's scheduler would refuse on every rank is refused on the login node
(launcher/plan/resume_schedule.py), from checkpoints written by Megatron's dist_checkpointing with the saving run's
arguments; the real failure it replaces: relaunching a finished run with a larger train.train_iters reached
"OptimizerParamScheduler: class input value ... do not match" on the ranks."""
from __future__ import annotations

import pytest

from conftest import make_cfg
from launcher.errors import ConfigError
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.plan.resume_schedule import this_runs_schedule
from launcher.records.checkpoint_schedule import Schedule, read_saved_schedule
from launcher.run.resume import find_resume
from saved_checkpoint import write_checkpoint

CPU = MachineProbe(gpus=0, transformer_engine=False, apex_fused_wgrad=False, deep_ep=False, cpu_count=2)


def _saved_as(cfg) -> dict:
    """Megatron's saved arguments for a run of cfg (what validate_args leaves: decay iters = train_iters)."""
    t = cfg.train
    return dict(train_iters=t.train_iters, global_batch_size=t.global_batch_size, lr=t.lr, min_lr=t.min_lr,
                lr_warmup_iters=t.lr_warmup_iters, lr_warmup_fraction=None, lr_decay_iters=t.train_iters,
                lr_decay_style=t.lr_decay_style, weight_decay=t.weight_decay, start_weight_decay=t.weight_decay,
                end_weight_decay=t.weight_decay, weight_decay_incr_style="constant")


def _plan(tmp_path, monkeypatch, saved_overrides=(), overrides=()):
    run_dir = tmp_path / "run"
    saved = _saved_as(make_cfg(list(saved_overrides)))
    point = find_resume(write_checkpoint(run_dir / "checkpoints", monkeypatch, **saved))
    cfg = make_cfg(list(overrides))
    cfg.launch.megatron_validate = False
    return build_plan(cfg, CPU, run_dir, point)


def test_the_schedule_is_megatrons_in_samples(gloo_world, tmp_path, monkeypatch):
    cfg = make_cfg(["train.train_iters=20", "train.global_batch_size=8", "train.lr_warmup_iters=2"])
    s = read_saved_schedule(write_checkpoint(tmp_path / "c", monkeypatch, **_saved_as(cfg)) / "iter_0000010")
    assert (s.total_number_of_iterations, s.warmup_iterations, s.total_number_of_weight_decay_iterations) == \
        (160, 16, 160)
    assert s == this_runs_schedule(cfg) and s.given["train_iters"] == 20
    assert Schedule.of(object()) is None and read_saved_schedule(tmp_path / "missing") is None


def test_the_same_command_resumes(gloo_world, tmp_path, monkeypatch):
    plan = _plan(tmp_path, monkeypatch)
    assert plan.checkpoint.resumed_from == 10


def test_a_longer_run_is_refused_with_both_fixes(gloo_world, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        _plan(tmp_path, monkeypatch, overrides=["train.train_iters=40"])
    assert (e.value.field, e.value.value) == ("train.train_iters", 40)
    assert "total number of iterations: 160 there, 320 here" in e.value.rule
    assert e.value.fix == ("keep train.train_iters=20 to continue that schedule, or add "
                           "'megatron.raw=[--override-opt_param-scheduler]' to follow this run's schedule from the "
                           "resumed iteration on")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, field", [(["train.global_batch_size=16"], "train.global_batch_size"),
                                              (["train.lr=0.001"], "train.lr"),
                                              (["train.lr_decay_style=linear"], "train.lr_decay_style"),
                                              (["train.weight_decay=0.0"], "train.weight_decay")])
def test_each_scheduler_value_is_named_by_its_field(gloo_world, tmp_path, monkeypatch, overrides, field):
    with pytest.raises(ConfigError) as e:
        _plan(tmp_path, monkeypatch, overrides=overrides)
    assert e.value.field == field


@pytest.mark.parametrize("hatch", ["megatron.raw=[--override-opt_param-scheduler]",
                                   "megatron.raw=[--use-checkpoint-opt_param-scheduler]",
                                   "megatron.raw=[--no-load-optim]"])
def test_a_run_that_says_which_schedule_wins_is_left_to_megatron(gloo_world, tmp_path, monkeypatch, hatch):
    plan = _plan(tmp_path, monkeypatch, overrides=["train.train_iters=40", hatch])
    assert plan.checkpoint.resumed_from == 10


def test_a_start_from_another_runs_checkpoint_is_checked_too(gloo_world, tmp_path, monkeypatch):
    other = write_checkpoint(tmp_path / "other", monkeypatch, **_saved_as(make_cfg([])))
    cfg = make_cfg([f"train.load={other}", "train.train_iters=40"])
    cfg.launch.megatron_validate = False
    with pytest.raises(ConfigError, match=r"the checkpoint it resumes \(train.load=") as e:
        build_plan(cfg, CPU, tmp_path / "new")
    assert e.value.field == "train.train_iters"


def test_moe_launch_says_it_in_one_line(gloo_world, tmp_path, monkeypatch):
    """Reading the checkpoint imports megatron on the login node: its warnings (no CUDA runtime, no TE/Apex, torch
    loading in one process) came before the refusal's line."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    write_checkpoint(run_dir / "checkpoints", monkeypatch, **_saved_as(make_cfg([])))
    proc = subprocess.run([sys.executable, "-m", "launcher", f"launch.run_dir={run_dir}", "train.train_iters=40",
                           "launch.megatron_validate=false"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("moe-launch: error: train.train_iters=40:"), \
        proc.stderr
