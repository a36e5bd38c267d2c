"""QAT and distillation with nvidia-modelopt through the real megatron.training.pretrain loop on CPU (issue 19).

One BF16 run of the tiny MoE (4 layers) saves a checkpoint at iteration 6. It is
  - continued into FP8 QAT (train.load=<its checkpoints>, quant=fp8) to iteration 12, saving at 9 and 12: the
    use case, and the uninterrupted QAT reference;
  - resumed from a copy of that run's iteration 9 (what a kill at ~10 leaves): the quantizers come back from
    the checkpoint, not from a new calibration, with the saved amax values, and the losses after resume are the
    uninterrupted run's (Megatron's first logged iteration after a resume is the mean of two: see
    tests/e2e/test_checkpoint_resume.py);
  - the teacher of a 2-layer student distilled for 12 iterations (logit KL falling).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.records.logparse import parse_file

pytestmark = pytest.mark.slow

# the ranks validate the argv with Megatron's own parser anyway: the login-side copy of that check (a Megatron import,
# several seconds on 2 shared cores) is left to the other e2e tests
TINY = ("data.num_workers=0", "train.seq_length=128", "train.lr_warmup_iters=1", "launch.megatron_validate=false")
# continuing another run's checkpoint with a schedule of its own (12 iterations, not 6): Megatron's way
NEW_SCHEDULE = "megatron.raw=[--override-opt_param-scheduler]"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "launcher", *TINY, f"launch.run_dir={run_dir}",
                           f"cluster.master_port={_port()}", *extra], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _losses(run_dir: Path, key: str = "lm loss") -> dict[int, float]:
    text = (run_dir / "train.log").read_text()
    out = {}
    for line in text.splitlines():
        if " iteration " in line and f"| {key}: " in line:
            n = int(line.split(" iteration ")[1].split("/")[0])
            out[n] = float(line.split(f"| {key}: ")[1].split(" ")[0])
    return out


def _quantizers(run_dir: Path) -> dict:
    return json.loads((run_dir / "quantizers.json").read_text())


@pytest.fixture(scope="module")
def bf16(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bf16")
    _launch(root / "run", "train.train_iters=6", f"train.save={root / 'ckpt'}")
    return root / "ckpt"


@pytest.fixture(scope="module")
def qat(bf16, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qat")
    _launch(root / "run", "quant=fp8", "quant.calib_batches=2", "train.train_iters=12", "train.save_interval=3",
            f"train.save={root / 'ckpt'}", f"train.load={bf16}", NEW_SCHEDULE)
    return root


def test_a_bf16_checkpoint_continues_into_fp8_qat(qat):
    log = (qat / "run" / "train.log").read_text()
    assert "loading distributed checkpoint from" in log  # the BF16 weights first, then quantize + calibrate
    q = _quantizers(qat / "run")
    assert q["event"].startswith("fp8 fake quantization, calibrated on 2 micro batches")
    # tiny_moe: 4 layers x (qkv, proj, 8 experts x (fc1, fc2)) = 72 linears, weight + input quantizer each;
    # the router and output_layer are excluded
    assert len(q["amax"]) == 144 and all(v > 0 for v in q["amax"].values())
    assert not any("router" in k or "output_layer" in k for k in q["amax"])
    losses = _losses(qat / "run")
    assert sorted(losses) == list(range(7, 13))  # continues the BF16 run's iteration count
    for it in ("iter_0000009", "iter_0000012"):
        assert (qat / "ckpt" / it / "modelopt_state").is_dir()


def test_resumed_qat_restores_the_saved_quantizers_and_continues_exactly(qat, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copytree(qat / "ckpt" / "iter_0000009", ckpt / "iter_0000009")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("9")
    _launch(tmp_path / "run", "quant=fp8", "quant.calib_batches=2", "train.train_iters=12", "train.save_interval=3",
            f"train.save={ckpt}", f"train.load={ckpt}", NEW_SCHEDULE)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"quantizers restored from {ckpt / 'iter_0000009'}" in log
    assert "calibrated on" not in log  # no re-calibration on resume
    assert _quantizers(tmp_path / "run")["amax"] == _quantizers(qat / "run")["amax"]
    reference, resumed = _losses(qat / "run"), _losses(tmp_path / "run")
    assert sorted(resumed) == [10, 11, 12]
    assert resumed[10] == reference[10] and resumed[12] == reference[12]
    assert resumed[11] == pytest.approx((reference[10] + reference[11]) / 2, rel=2e-6)
    ref_it = {it["iteration"]: it for it in parse_file(qat / "run" / "train.log").iterations}
    res_it = {it["iteration"]: it for it in parse_file(tmp_path / "run" / "train.log").iterations}
    assert [res_it[n]["grad_norm"] for n in (10, 11, 12)] == [ref_it[n]["grad_norm"] for n in (10, 11, 12)]


def test_a_two_layer_student_distills_from_the_four_layer_teacher(bf16, tmp_path):
    out = _launch(tmp_path / "run", "distill=kd", f"distill.teacher_checkpoint={bf16}", "model.num_layers=2",
                  "train.train_iters=12", "train.checkpoint.enabled=false",
                  "distill.layer_pairs=[[decoder.layers.1,decoder.layers.3]]", "distill.layer_weight=0.5")
    assert "distill:  teacher" in out  # the plan says what will happen
    log = (tmp_path / "run" / "train.log").read_text()
    assert "recipes.distill: teacher 4 layers" in log
    kd, layer, lm = (_losses(tmp_path / "run", k) for k in ("kd logits loss", "kd layer loss", "lm loss"))
    total = _losses(tmp_path / "run", "kd total loss")
    assert sorted(kd) == list(range(1, 13))
    # what is trained: logit KL + 0.5 x layer loss (lm_loss_weight 0), as printed
    assert total[12] == pytest.approx(kd[12] + 0.5 * layer[12], rel=1e-4)
    assert kd[12] < 0.7 * kd[1] and layer[12] < layer[1]
    assert lm[12] < lm[1]  # the student learns the language through the teacher alone
