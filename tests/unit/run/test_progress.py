"""The live status line, and the local executor around it: train.log stays the untouched full log,
MOE_RUN_DIR reaches the job, and the record is written when the run ends (success or failure)."""
from __future__ import annotations

import io
import re
import json
import shutil
from pathlib import Path

from launcher.run.local import run_local
from launcher.run.progress import CLEAR, Progress

ROOT = Path(__file__).resolve().parents[3]
LOGS = Path(__file__).resolve().parents[2] / "data" / "logs"
QWEN = LOGS / "ok_gpu_h200x2_qwen3_30b_a3b_8l_ep2_forced_balance.log"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0  # one second per iteration line read
        return self.t


def _feed(progress: Progress, text: str) -> None:
    for line in text.splitlines(keepends=True):
        progress.line(line)
    progress.close()


def test_plain_periodic_lines_when_not_a_terminal():
    out = io.StringIO()
    text = QWEN.read_text()
    _feed(Progress(out, tty=False, interval_s=5, seq_length=4096, world_size=2, clock=Clock(), enabled=True), text)
    got = out.getvalue()
    status = [line for line in got.splitlines() if line.startswith("[moe-launch] iter")]
    assert status[0].startswith("[moe-launch] iter 1/20 5%")
    assert status[-1].startswith("[moe-launch] iter 20/20 100%") and "ETA 0:00:00" in status[-1]
    assert 2 < len(status) < 20                                        # periodic, not one per iteration
    assert "TFLOP/s/GPU" in status[-1] and "tok/s/GPU" in status[-1] and "loss 8.807" in status[-1]
    raw = "".join(line for line in got.splitlines(keepends=True) if not line.startswith("[moe-launch] iter"))
    assert raw == text                                                 # every raw line, unchanged, in order


def test_rewritten_in_place_on_a_terminal():
    out = io.StringIO()
    text = QWEN.read_text()
    _feed(Progress(out, tty=True, enabled=True), text)
    got = out.getvalue()
    assert CLEAR in got and got.endswith("\n")
    final = got.rsplit(CLEAR, 1)[1]
    assert final.startswith("[moe-launch] iter 20/20") and final.count("\n") == 1
    # each status is drawn after a raw line and wiped (CLEAR) before the next: removing them gives the log
    body = got[:got.rindex(CLEAR) + len(CLEAR)]
    assert re.sub(r"\[moe-launch\] iter [^\n\r\x1b]*" + re.escape(CLEAR), "", body) == text


def test_eta_from_recent_steps():
    p = Progress(io.StringIO(), tty=False, enabled=True)
    for n in (1, 2, 3):
        p.line(f" iteration {n:8d}/     100 | elapsed time per iteration (ms): {1000 * n if n > 1 else 9999} | "
               "lm loss: 1.0E+00 |\n")
    assert "ETA 0:04:02" in p.status()      # 97 iterations left x median(2 s, 3 s); iteration 1 is set-up


def test_disabled_passes_lines_through(monkeypatch):
    monkeypatch.setenv("MOE_PROGRESS", "0")
    out = io.StringIO()
    _feed(Progress(out, tty=True), QWEN.read_text())
    assert out.getvalue() == QWEN.read_text()


def _fake_run(tmp_path: Path, log: Path, rc: int) -> Path:
    """A run directory whose command.sh replays a real log (and records MOE_RUN_DIR), then exits rc."""
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(ROOT / "perf_results" / "runs" / "qwen3_30b_a3b_8l_ep2_forced_balance" / "plan.json", d)
    script = d / "command.sh"
    script.write_text(f'#!/usr/bin/env bash\necho "$MOE_RUN_DIR" > "{d}/seen_run_dir"\ncat "{log}"\nexit {rc}\n')
    return script


def test_executor_keeps_the_full_log_and_writes_the_record(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOE_RUN_DIR", "/somewhere/stale")     # a stale export must not redirect versions.json
    script = _fake_run(tmp_path, QWEN, 0)
    assert run_local(script) == 0
    d = script.parent
    assert (d / "train.log").read_text() == QWEN.read_text()
    assert (d / "seen_run_dir").read_text().strip() == str(d.resolve())
    r = json.loads((d / "record.json").read_text())
    assert r["status"] == "ok" and r["steady_state"]["window"]["iterations"] == 17
    assert "moe-launch: record" in capsys.readouterr().out


def test_executor_records_a_failed_run(tmp_path, capsys):
    script = _fake_run(tmp_path, LOGS / "timeout_cpu_gloo_stopped_rank_ep2.log", 1)
    assert run_local(script) == 1
    r = json.loads((script.parent / "record.json").read_text())
    assert r["status"] == "failed" and r["failure"]["class"] == "timeout"
    assert "FAILED [timeout/gloo]" in capsys.readouterr().err


def test_wandb_and_tensorboard_stay_megatrons_own_options(monkeypatch):
    from conftest import plan_for
    from launcher.plan.rules import train

    monkeypatch.setattr(train, "_installed", lambda module: True)  # the `logging` extra, installed or not here
    plan = plan_for(["train.wandb_project=moe", "train.wandb_exp_name=run1", "train.tensorboard_dir=tb"])
    argv = plan.argv
    for flag, value in (("--wandb-project", "moe"), ("--wandb-exp-name", "run1"), ("--tensorboard-dir", "tb")):
        assert argv[argv.index(flag) + 1] == value
    assert "--log-throughput" in argv        # the status line and the record read Megatron's own count
