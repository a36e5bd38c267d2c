"""Checkpoints by default, resume, and the rule for every train.save/save_interval/checkpoint combination
(launcher/plan/checkpoint.py, rules/train.py check_checkpoint). Megatron's own validator checks the argv."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.plan.checkpoint import ResumePoint, checkpointing, default_interval, describe
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.plan.resolve import resolve

GPU = MachineProbe(gpus=2, transformer_engine=False, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)


def _plan(overrides: list[str], run_dir: Path | None = Path("/runs/r1"), resume=None, probe=PROBE):
    return build_plan(make_cfg(overrides), probe, run_dir, resume)


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_a_launch_saves_into_its_run_directory_and_megatron_accepts_it():
    plan = _plan([])  # build_plan runs Megatron's validator on the argv
    assert _flag(plan.argv, "--save") == "/runs/r1/checkpoints" == _flag(plan.argv, "--load")
    assert _flag(plan.argv, "--save-interval") == "100"  # the tiny train group: 20 iterations
    assert "--exit-signal-handler" in plan.argv and "--async-save" not in plan.argv  # CPU: never async
    assert _flag(plan.argv, "--distributed-timeout-minutes") == "5"
    assert plan.megatron  # the validator ran and derived its sizes


def test_without_a_run_directory_the_argv_is_the_layouts_alone():
    argv = _plan([], run_dir=None).argv
    assert not {"--save", "--load", "--exit-signal-handler", "--distributed-timeout-minutes"} & set(argv)


@pytest.mark.parametrize("iters,interval", [(20, 100), (1000, 100), (5000, 500), (100000, 1000)])
def test_default_interval_is_a_tenth_between_100_and_1000(iters, interval):
    assert default_interval(iters) == interval


def test_train_save_alone_gets_an_interval_instead_of_megatrons_assertion():
    plan = _plan(["train.save=/shared/ckpt"])
    assert _flag(plan.argv, "--save") == "/shared/ckpt" and _flag(plan.argv, "--save-interval") == "100"


def test_save_interval_alone_uses_the_run_directory():
    plan = _plan(["train.save_interval=7"])
    assert _flag(plan.argv, "--save") == "/runs/r1/checkpoints" and _flag(plan.argv, "--save-interval") == "7"


def test_checkpoints_off():
    plan = _plan(["train.checkpoint.enabled=false"])
    assert not {"--save", "--load", "--save-interval"} & set(plan.argv)
    assert describe(plan.checkpoint).startswith("checkpoints: none")


def test_gpu_runs_save_asynchronously_with_the_mcore_strategy():
    cfg = make_cfg(["cluster.gpus_per_node=2", "model.transformer_impl=local", "train.train_iters=5000"])
    ck = checkpointing(cfg, resolve(cfg, GPU), Path("/runs/r1"))
    assert ck.async_save and ck.interval == 500
    from launcher.plan.checkpoint import checkpoint_flags

    flags = checkpoint_flags(ck)
    assert flags[flags.index("--async-save"):flags.index("--async-save") + 4] == [
        "--async-save", "--async-strategy", "mcore", "--use-persistent-ckpt-worker"]


def test_resume_from_the_newest_complete_checkpoint():
    point = ResumePoint(directory="/runs/r1/checkpoints", iteration=10, tracker=10)
    plan = _plan([], resume=point)
    assert _flag(plan.argv, "--load") == "/runs/r1/checkpoints" and "--ckpt-step" not in plan.argv
    assert "resumes from iteration 10" in describe(plan.checkpoint)


def test_an_incomplete_newer_checkpoint_is_skipped_with_ckpt_step():
    point = ResumePoint(directory="/runs/r1/checkpoints", iteration=10, tracker=20, skipped=("iter_0000020",))
    plan = _plan([], resume=point)
    assert _flag(plan.argv, "--ckpt-step") == "10"
    assert any(n.startswith("warning: skipping incomplete checkpoint iter_0000020") for n in plan.checkpoint.notes)


def test_explicit_load_starts_from_another_run_but_the_runs_own_checkpoint_wins(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "latest_checkpointed_iteration.txt").write_text("10\n")
    assert _flag(_plan([f"train.load={other}"]).argv, "--load") == str(other)
    point = ResumePoint(directory="/runs/r1/checkpoints", iteration=10, tracker=10)
    # resuming its own checkpoint, the run no longer reads train.load, which may since have gone
    assert _flag(_plan(["train.load=/gone/ckpt"], resume=point).argv, "--load") == "/runs/r1/checkpoints"


def test_a_load_directory_without_a_checkpoint_is_refused_not_a_silent_fresh_start(tmp_path):
    """Megatron 0.19.2 warns and starts from random weights when --load has no tracker file."""
    for path in (tmp_path / "typo", tmp_path):
        with pytest.raises(ConfigError, match="holds no Megatron checkpoint") as e:
            _plan([f"train.load={path}"])
        assert e.value.field == "train.load" and "Fix:" in str(e.value)
    # its own save directory, empty at a fresh start: the usual save=load idiom
    same = tmp_path / "ckpt"
    assert _flag(_plan([f"train.save={same}", f"train.load={same}"]).argv, "--load") == str(same)
    # a Slurm run's path that does not exist here may be the cluster's: the ranks check it (recipes/checkpoint.py)
    slurm = _plan(["cluster=slurm", "cluster.gpus_per_node=1", "train.load=/lustre/other/ckpt"])
    assert _flag(slurm.argv, "--load") == "/lustre/other/ckpt"


@pytest.mark.parametrize("overrides,field", [
    (["train.save_interval=0"], "train.save_interval"),
    (["train.checkpoint.enabled=false", "train.save=/x"], "train.save"),
    (["train.checkpoint.enabled=false", "train.save_interval=5"], "train.save_interval"),
    (["train.checkpoint.keep_last=0"], "train.checkpoint.keep_last"),
    (["train.checkpoint.async_save=true"], "train.checkpoint.async_save"),  # CPU: hangs on gloo
    (["train.distributed_timeout_minutes=0"], "train.distributed_timeout_minutes"),
    (["cluster.stop_grace_s=-1"], "cluster.stop_grace_s"),
    (["cluster.master_port=80"], "cluster.master_port"),
])
def test_bad_checkpoint_settings_stop_with_one_line(overrides, field):
    with pytest.raises(ConfigError) as e:
        _plan(overrides)
    assert e.value.field == field and "Fix:" in str(e.value) and "\n" not in str(e.value)


def test_the_escape_hatch_cannot_set_the_checkpoint_flags_twice():
    with pytest.raises(ConfigError, match="megatron.extra"):
        _plan(["megatron.extra={save_interval: 5}"])


def test_megatron_keeps_async_save_on_with_the_persistent_worker():
    # validate_args turns --async-save off (with a warning) unless --use-persistent-ckpt-worker is set
    plan = _plan(["cluster.gpus_per_node=2", "model.transformer_impl=local", "train.train_iters=5000"], probe=GPU)
    assert "--async-save" in plan.argv and "--use-persistent-ckpt-worker" in plan.argv
    assert _flag(plan.argv, "--distributed-timeout-minutes") == "30"


def test_explicit_directories_count_without_a_run_directory():
    argv = _plan(["train.save=/shared/ckpt"], run_dir=None).argv
    assert _flag(argv, "--save") == "/shared/ckpt" == _flag(argv, "--load")


def test_keep_last_reaches_the_ranks_only_when_the_run_saves():
    assert _plan([]).env["MOE_KEEP_LAST"] == "3"  # the default: rank 0 prunes during the run (recipes/retention.py)
    assert _plan(["train.checkpoint.keep_last=1"]).env["MOE_KEEP_LAST"] == "1"
    assert "MOE_KEEP_LAST" not in _plan(["train.checkpoint.enabled=false"]).env
    assert "MOE_KEEP_LAST" not in _plan(["train.checkpoint.keep_last=null"]).env
