"""Failure classes on real logs: every tests/data/logs/<class>_*.log must classify as <class>
(ok_*.log as no failure). Logs added later join the parametrisation by their name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.records.failures import CLASSES, classify, root_cause

LOGS = Path(__file__).resolve().parents[2] / "data" / "logs"
RUNS = Path(__file__).resolve().parents[2] / "data" / "runs"


def _expected(path: Path):
    name = path.name
    if name.startswith("ok_"):
        return None
    return next(c for c in CLASSES if name.startswith(c + "_"))


def _returncode(path: Path):
    """exit code when the log came with an exit.json (<log stem>.exit.json) or a run dir, else 1/0 by name."""
    sidecar = path.with_suffix(".exit.json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())["returncode"]
    return 0 if path.name.startswith("ok_") else 1


ALL_LOGS = sorted(LOGS.glob("*.log"))


def test_there_is_a_real_log_of_each_class():
    assert {_expected(p) for p in ALL_LOGS} == {None, *CLASSES}


@pytest.mark.parametrize("path", ALL_LOGS, ids=[p.stem for p in ALL_LOGS])
def test_each_log_classifies_as_its_name_says(path):
    info = classify(path.read_text(errors="replace"), _returncode(path))
    expected = _expected(path)
    if expected is None:
        assert info is None
        assert classify(path.read_text(errors="replace"), None) is None  # no exit code: the text alone
        return
    assert info is not None and info.cls == expected, (info.as_dict() if info else None)
    assert info.summary and info.evidence


def test_cpu_gloo_timeout_names_rank_kind_and_iteration():
    info = classify((LOGS / "timeout_cpu_gloo_stopped_rank_ep2.log").read_text(), 1)
    assert (info.cls, info.kind, info.rank) == ("timeout", "gloo", 0)
    assert info.iteration == 11                        # iterations 1-10 were logged before rank 1 stopped
    assert "Timed out waiting 60000ms" in info.evidence[0]


def test_cpu_nan_is_nan_not_the_checkpoint_error_that_follows():
    info = classify((LOGS / "nan_cpu_lr1e4_tiny.log").read_text(), 1)
    assert info.cls == "nan" and info.iteration == 4 and info.rank == 0
    assert "found NaN in local grad norm" in info.summary
    # Megatron then tries to save a checkpoint with no --save and dies with a TypeError: not the cause
    assert "TypeError" not in info.summary


def test_cpu_sigkill_is_unknown_with_torchrun_root_cause():
    text = (LOGS / "unknown_cpu_sigkill_rank1_ep2.log").read_text()
    assert root_cause(text.splitlines())["exitcode"] == -9
    info = classify(text, 1)
    assert info.cls == "unknown" and info.rank == 1 and "SIGKILL" in info.summary


def test_launcher_config_error_line():
    info = classify((LOGS / "bad_config_launcher_ep8_on_4gpus.log").read_text(), 2)
    assert info.cls == "bad_config" and info.kind == "launcher"
    assert "not divisible by ep*etp*pp=8" in info.summary


def test_root_cause_outranks_its_consequences():
    # constructed from real lines: the NaN log's error line, then the gloo timeout of another run
    nan = next(line for line in (LOGS / "nan_cpu_lr1e4_tiny.log").read_text().splitlines() if "found NaN" in line)
    tmo = next(line for line in (LOGS / "timeout_cpu_gloo_stopped_rank_ep2.log").read_text().splitlines()
               if "Timed out waiting" in line)
    info = classify(nan + "\n" + tmo + "\n", 1)
    assert info.cls == "nan" and info.also == ["timeout"]


def test_gpu_oom_says_where():
    info = classify((LOGS / "oom_qwen3_4l_1gpu_mbs4.log").read_text(), 1)
    assert (info.cls, info.rank, info.iteration) == ("oom", 0, 2)   # iteration 1 was logged
    assert info.where["tried_to_allocate"] == "9.27 GiB" and info.where["gpu"] == 0
    assert info.where["phase"] == "forward"
    assert info.where["frame"].startswith("megatron/core/tensor_parallel/cross_entropy.py:")
    assert "out of GPU memory in iteration 2, rank 0, forward, tried to allocate 9.27 GiB" in info.summary


def test_gpu_missing_and_incompatible_backends():
    deepep = classify((LOGS / "missing_backend_deepep.log").read_text(), 3)
    assert (deepep.cls, deepep.kind) == ("missing_backend", "not installed") and "deep_ep" in deepep.summary
    ncclep = classify((LOGS / "missing_backend_ncclep.log").read_text(), 3)
    assert (ncclep.cls, ncclep.kind) == ("missing_backend", "incompatible") and "num_topk" in ncclep.summary


def test_gpu_nan_and_megatron_setup_assert():
    nan = classify((LOGS / "nan_tiny_lr1e9.log").read_text(), 1)
    assert nan.cls == "nan" and "found NaN in local grad norm" in nan.summary
    bad = classify((LOGS / "bad_config_lr_warmup_assert.log").read_text(), 1)
    assert (bad.cls, bad.kind) == ("bad_config", "megatron check")
    assert "assert self.lr_warmup_steps < self.lr_decay_steps" in bad.summary
    assert "megatron/core/optimizer_param_scheduler.py:" in bad.summary


def test_oom_where_from_a_torch_oom_traceback():
    # torch's OutOfMemoryError message format (torch/csrc/.../CUDACachingAllocator.cpp), in Megatron's
    # expert forward, under a rank prefix; the real GPU-host OOM log is tested by the parametrisation above
    text = "\n".join([
        " [2026-11-23 04:39:30.054837] iteration        1/      20 | consumed samples: 8 | elapsed time per "
        "iteration (ms): 13272.9 | global batch size: 8 | lm loss: 1.2E+01 |",
        "[rank5]: Traceback (most recent call last):",
        '[rank5]:   File "/tmp/site/megatron/training/training.py", line 1423, in pretrain',
        '[rank5]:   File "/tmp/site/megatron/core/pipeline_parallel/schedules.py", line 420, in forward_step',
        '[rank5]:   File "/tmp/site/megatron/core/transformer/moe/experts.py", line 310, in forward',
        "[rank5]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.50 GiB. GPU 5 has a total "
        "capacity of 79.19 GiB of which 1.21 GiB is free. Including non-PyTorch memory, this process has 77.97 GiB "
        "memory in use."])
    info = classify(text, 1, {"world_size": 8, "tp": 1, "cp": 1, "ep": 2, "pp": 2, "dp": 4})
    assert info.cls == "oom" and info.rank == 5 and info.iteration == 2
    assert info.where["gpu"] == 5 and info.where["tried_to_allocate"] == "3.50 GiB"
    assert info.where["phase"] == "forward" and info.where["pp_stage"] == 1
    assert info.where["frame"] == "megatron/core/transformer/moe/experts.py:310 in forward"
    assert "rank 5 (PP stage 1)" in info.summary


def test_success_is_not_a_failure():
    assert classify("anything at all", 0) is None
    assert classify("", None) is None


def test_failed_run_dirs_have_logs():
    for d in ("cpu_timeout", "cpu_nan", "cpu_killed"):
        assert json.loads((RUNS / d / "exit.json").read_text())["returncode"] == 1
