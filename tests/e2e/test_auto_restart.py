"""launch.max_restarts on CPU through the real pretrain loop: the only rank is SIGKILLed (as a host OOM killer
would) after the checkpoint of iteration 10; moe-launch records the attempt (rank_died), keeps it in attempts/1,
restarts by itself from iteration 10 and finishes the run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from launcher.records.logparse import parse_file, parse_iteration_line

pytestmark = pytest.mark.slow


def _worker(launcher_pid: int) -> psutil.Process | None:
    for p in psutil.Process(launcher_pid).children(recursive=True):
        cmd = " ".join(p.cmdline())
        if "recipes.pretrain" in cmd and "torch.distributed.run" not in cmd:  # the rank, not torchrun
            return p
    return None


def test_a_rank_killed_by_a_signal_is_restarted_from_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    out = open(tmp_path / "launcher.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "data.num_workers=0", "train.seq_length=128",
                             "train.train_iters=20", "train.save_interval=10", "launch.max_restarts=1",
                             f"launch.run_dir={run_dir}"], stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # iteration 13 logged: the checkpoint of 10 is complete (sync save on CPU)
        log = run_dir / "train.log"
        if log.exists() and any((it := parse_iteration_line(line)) and it["iteration"] >= 13
                                for line in log.read_text().splitlines()):
            break
        assert proc.poll() is None, (tmp_path / "launcher.out").read_text()[-3000:]
        time.sleep(0.2)
    worker = _worker(proc.pid)
    assert worker is not None
    os.kill(worker.pid, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, (tmp_path / "launcher.out").read_text()[-4000:]
    text = (tmp_path / "launcher.out").read_text()
    assert "restart 1/1: rank 0 was killed by a signal" in text and "resuming from iteration 10" in text, text[-3000:]
    first = json.loads((run_dir / "attempts" / "1" / "record.json").read_text())
    assert first["failure"]["class"] == "rank_died" and first["failure"]["kind"] == "signal", first["failure"]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "ok"
    assert sorted(it["iteration"] for it in parse_file(run_dir / "train.log").iterations) == list(range(11, 21))


def test_a_rank_that_raises_is_not_restarted(tmp_path):
    """The same code raises again: one line says why, the run ends with its failure (no attempts/ folder)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "launcher", "data.num_workers=0", "train.seq_length=128",
                           "train.train_iters=3", "train.lr_warmup_iters=1", "launch.max_restarts=2",
                           f"launch.run_dir={run_dir}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MOE_GROUPED_GEMM_IMPL": "bogus"})  # recipes/experts.py raises
    assert proc.returncode != 0
    assert "not restarting: the failure is rank_died (exit)" in proc.stderr, proc.stderr[-3000:]
    assert not (run_dir / "attempts").exists()
    assert "ValueError: MOE_GROUPED_GEMM_IMPL='bogus'" in json.loads((run_dir / "record.json").read_text())[
        "failure"]["summary"]
