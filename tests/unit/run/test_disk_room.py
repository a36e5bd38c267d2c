"""Room for a run's checkpoints (launcher/run/disk_room.py): the size against a measured checkpoint, how many
may coexist, and the one warning line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config.compose import compose
from launcher.plan.checkpoint import Checkpointing
from launcher.run import disk_room

ROOT = Path(__file__).resolve().parents[3]
# the run of perf_results/issue13/saves_1gpu_2l_default (2 layers of Qwen3-30B-A3B, BF16, Adam)
MEASURED_2L = ("model=qwen3_30b_a3b", "model.num_layers=2", "train=pretrain")
MEASURED_GIB = 25  # `du -sh` of its complete iter_0000040 (perf_results/issue13/README.md)


def _cfg(*overrides: str):
    return compose(list(overrides))[1]


def test_the_size_matches_the_measured_checkpoint():
    size = disk_room.checkpoint_bytes(_cfg(*MEASURED_2L))
    assert disk_room.bytes_per_parameter(_cfg(*MEASURED_2L)) == 14  # BF16 weight, FP32 main copy, two FP32 moments
    assert size / 2 ** 30 == pytest.approx(MEASURED_GIB, rel=0.05)


def test_fp32_params_have_no_separate_main_copy_and_bf16_moments_halve_theirs():
    assert disk_room.bytes_per_parameter(_cfg("precision=fp32")) == 12
    assert disk_room.bytes_per_parameter(_cfg("precision.use_precision_aware_optimizer=true",
                                              "precision.exp_avg_dtype=bf16", "precision.exp_avg_sq_dtype=bf16")) == 10


@pytest.mark.parametrize("keep_last, async_save, iters, expected", [
    (1, True, 60, 3),     # the 2026-12-01 disk: saves 20, 40 and 60 at once
    (1, False, 60, 2),    # synchronous: the kept one and the one being written
    (None, True, 60, 3),  # keeping all: every save of the run (20, 40, 60)
    (5, True, 40, 2),     # fewer saves in the whole run than keep_last allows
])
def test_how_many_checkpoints_coexist(keep_last, async_save, iters, expected):
    cfg = _cfg(f"train.train_iters={iters}")
    c = Checkpointing(save="/x", interval=20, keep_last=keep_last, async_save=async_save)
    assert disk_room.checkpoints_at_once(cfg, c) == expected


def test_the_warning_names_sizes_free_space_and_the_fix(tmp_path):
    cfg = _cfg(*MEASURED_2L, "train.train_iters=60")
    c = Checkpointing(save=str(tmp_path / "ckpt"), interval=20, keep_last=1, async_save=True)
    size = disk_room.checkpoint_bytes(cfg)
    assert disk_room.room_warning(cfg, c, free=3 * size) is None
    line = disk_room.room_warning(cfg, c, free=63 * 10 ** 9)
    assert line.startswith("warning: train.checkpoint: up to 3 checkpoint(s) of about 26.2 GB")
    assert "63.0 GB are free at" in line and str(tmp_path) in line and "Fix:" in line and "\n" not in line


def test_no_warning_without_saves_or_where_nothing_of_the_path_exists():
    cfg = _cfg(*MEASURED_2L)
    assert disk_room.room_warning(cfg, Checkpointing(save=None), free=0) is None
    assert disk_room.room_warning(cfg, Checkpointing(save="/no/such/root/ckpt", interval=20)) is None


def test_moe_launch_prints_it_in_a_dry_run(tmp_path):
    """A real dry run whose save path lies on this machine's disk: Qwen3-30B-A3B's checkpoints (427 GB each) do
    not fit a CI machine's disk."""
    import shutil

    free = shutil.disk_usage(tmp_path).free
    if free > 3 * 427e9:
        pytest.skip(f"{free / 1e9:.0f} GB free here: room for the checkpoints")
    out = subprocess.run([sys.executable, "-m", "launcher", "preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16",
                          "launch.dry_run=true", f"launch.run_dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stderr.splitlines() if "train.checkpoint: up to" in ln]
    assert len(lines) == 1 and "GB are free at" in lines[0], out.stdout[-2000:] + out.stderr[-2000:]
