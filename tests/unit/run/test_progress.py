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
    _feed(Progress(out, tty=False, interval_s=5, seq_length=4096, world_size=2, clock=Clock(), enabled=True,
                   verbose=True), text)
    got = out.getvalue()
    status = [line for line in got.splitlines() if line.startswith("[moe-launch] iter")]
    assert status[0].startswith("[moe-launch] iter 1/20 5%")
    assert status[-1].startswith("[moe-launch] iter 20/20 100%") and "ETA 0:00:00" in status[-1]
    assert 2 < len(status) < 20                                        # periodic, not one per iteration
    assert "TFLOP/s/GPU" in status[-1] and "tok/s/GPU" in status[-1] and "loss 8.807" in status[-1]
    raw = "".join(line for line in got.splitlines(keepends=True) if not line.startswith("[moe-launch] "))
    assert raw == text                                                 # every raw line, unchanged, in order


def test_rewritten_in_place_on_a_terminal():
    out = io.StringIO()
    text = QWEN.read_text()
    _feed(Progress(out, tty=True, enabled=True, verbose=True), text)
    got = out.getvalue()
    assert CLEAR in got and got.endswith("\n")
    final = got.rsplit(CLEAR, 1)[1]
    assert final.startswith("[moe-launch] iter 20/20") and final.count("\n") == 1
    # each status is drawn after a raw line and wiped (CLEAR) before the next: removing them gives the log
    body = re.sub(r"\[moe-launch\] note: [^\n]*\n", "", got[:got.rindex(CLEAR) + len(CLEAR)])  # explained once
    assert re.sub(r"\[moe-launch\] iter [^\n\r\x1b]*" + re.escape(CLEAR), "", body) == text


def test_quiet_by_default_shows_only_the_status_and_our_own_lines(monkeypatch):
    monkeypatch.delenv("MOE_VERBOSE", raising=False)
    out = io.StringIO()
    text = QWEN.read_text() + "recipes.pretrain: done, iteration 20/20, 31.4s\n"
    _feed(Progress(out, tty=False, interval_s=5, seq_length=4096, world_size=2, clock=Clock(), enabled=True), text)
    got = out.getvalue().splitlines()
    own = [line for line in text.splitlines() if line.startswith("recipes.pretrain:")]
    assert [line for line in got if not line.startswith("[moe-launch] iter")] == own  # ours, in order
    assert got[-1] == "recipes.pretrain: done, iteration 20/20, 31.4s" and 2 < len(got) - len(own) < 20


def test_quiet_terminal_keeps_one_line_in_place(monkeypatch):
    monkeypatch.delenv("MOE_VERBOSE", raising=False)
    out = io.StringIO()
    text = QWEN.read_text()
    _feed(Progress(out, tty=True, enabled=True), text)
    got = out.getvalue()
    own = [line for line in text.splitlines() if line.startswith("recipes.pretrain:")]
    assert got.count("\n") == 1 + len(own) and got.endswith("\n")      # one finished line + our own lines
    assert "lm loss" not in got and "UserWarning" not in got             # no raw Megatron output
    assert "[moe-launch] starting (1 lines in train.log)" in got        # a sign of life before iteration 1
    assert got.rsplit(CLEAR, 1)[1].startswith("[moe-launch] iter 20/20 100%")


def test_verbose_from_the_environment_explains_known_warnings_once(monkeypatch):
    monkeypatch.setenv("MOE_VERBOSE", "1")
    out = io.StringIO()
    warning = "UserWarning: Only transformer-engine>=1.7.0 supports MoE experts, but your version is 0.0.0.\n"
    _feed(Progress(out, tty=False, enabled=True), warning * 3)
    got = out.getvalue()
    assert got.count(warning) == 3 and got.count("[moe-launch] note:") == 1 and "hybrid_layer_specs" in got


def test_flops_from_megatrons_count_not_its_rounded_zero():
    line = (" iteration        5/      20 | elapsed time per iteration (ms): 600.0 | throughput per GPU (TFLOP/s/GPU): "
            "0.0 | global batch size:     8 | lm loss: 4.7E+00 |\n")
    tiny = Progress(io.StringIO(), tty=False, enabled=True, seq_length=256, world_size=1,
                    flops_per_sequence=1207959552.0)
    tiny.line(line)
    assert "16.1 GFLOP/s/GPU" in tiny.status()         # 1.208e9 FLOP x 8 sequences / 0.6 s
    unknown = Progress(io.StringIO(), tty=False, enabled=True)
    unknown.line(line)
    assert "FLOP/s" not in unknown.status()            # Megatron's "0.0" says nothing: hidden
    big = Progress(io.StringIO(), tty=False, enabled=True, seq_length=4096, world_size=2,
                   flops_per_sequence=3.0e14)
    big.line(line)
    assert "2000.0 TFLOP/s/GPU" in big.status()        # 3e14 x 8 / 0.6 s / 2 GPUs


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


def test_a_quiet_failed_run_shows_the_end_of_its_log(tmp_path, capsys, monkeypatch):
    from launcher.run.local import LocalExecutor
    from conftest import make_cfg

    monkeypatch.delenv("MOE_VERBOSE", raising=False)
    log = LOGS / "timeout_cpu_gloo_stopped_rank_ep2.log"
    script = _fake_run(tmp_path, log, 1)
    assert LocalExecutor().run(make_cfg([]), script) == 1
    err = capsys.readouterr().err
    assert f"the last 20 lines of {script.parent / 'train.log'}" in err
    assert log.read_text().splitlines()[-1] in err and "FAILED (exit 1)" in err


def test_wandb_and_tensorboard_stay_megatrons_own_options(monkeypatch):
    from conftest import plan_for
    from launcher.plan.rules import train

    monkeypatch.setattr(train, "_installed", lambda module: True)  # the `logging` extra, installed or not here
    plan = plan_for(["train.wandb_project=moe", "train.wandb_exp_name=run1", "train.tensorboard_dir=tb"])
    argv = plan.argv
    for flag, value in (("--wandb-project", "moe"), ("--wandb-exp-name", "run1"), ("--tensorboard-dir", "tb")):
        assert argv[argv.index(flag) + 1] == value
    assert "--log-throughput" in argv        # the status line and the record read Megatron's own count
