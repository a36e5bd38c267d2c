"""The tiny MoE trains on CPU through the real megatron.training.pretrain loop, launched by moe-launch
exactly as a user would (torchrun, gloo, local spec), and its loss goes down."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher.records.logparse import parse_file

pytestmark = pytest.mark.slow


def _launch(run_dir, *overrides):
    proc = subprocess.run([sys.executable, "-m", "launcher", *overrides, f"launch.run_dir={run_dir}",
                           "data.num_workers=0", "train.seq_length=128"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return parse_file(run_dir / "train.log")


def test_tiny_moe_loss_goes_down_on_cpu(tmp_path):
    log = _launch(tmp_path / "run", "train.train_iters=12")
    losses = [it["loss"] for it in log.iterations]
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 1.0, losses       # ln(512) = 6.24 at start; it learns the mock tokens
    assert all(it["nan_iterations"] == 0 for it in log.iterations)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert (plan["resolved"]["device"], plan["resolved"]["transformer_impl"]) == ("cpu", "local")
    assert json.loads((tmp_path / "run" / "exit.json").read_text())["returncode"] == 0


def test_tiny_moe_expert_parallel_alltoall_on_two_cpu_ranks(tmp_path):
    # 2 ranks: dp 2, ep 2 -> 4 of the 8 experts per rank, tokens exchanged by the alltoall dispatcher
    log = _launch(tmp_path / "run", "parallel=ep2", "cluster.nproc_cpu=2", "train.train_iters=6")
    losses = [it["loss"] for it in log.iterations]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_a_console_reader_that_goes_away_does_not_stop_the_run(tmp_path):
    """`moe-launch ... | head -3`: the next print raised BrokenPipeError inside moe-launch, which died with its
    workers and wrote no exit.json or record (launcher/run/console.py). Now the run ends as it would have."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", f"launch.run_dir={run_dir}", "data.num_workers=0",
                             "train.seq_length=128", "train.train_iters=4", "train.checkpoint.enabled=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().startswith("moe-launch: tiny_moe")
    proc.stdout.close()  # the reader goes away, as head does after its lines
    assert proc.wait(timeout=600) == 0
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == 0
    assert json.loads((run_dir / "record.json").read_text())["status"] == "ok"
    assert [it["iteration"] for it in parse_file(run_dir / "train.log").iterations] == [1, 2, 3, 4]
