"""Megatron log parsing on real logs (tests/data/logs/, see its README for where each came from)."""
from __future__ import annotations

import math
from pathlib import Path

from launcher.records.logparse import parse_file, parse_iteration_line, parse_log
from launcher.records.steady import series_of, steady_state

LOGS = Path(__file__).resolve().parents[2] / "data" / "logs"
QWEN = LOGS / "ok_gpu_h200x2_qwen3_30b_a3b_8l_ep2_forced_balance.log"
# iteration 20 of the real 2x H200 forced-balance run, read from the log itself
LINE = next(line for line in QWEN.read_text().splitlines() if "iteration       20/" in line)


def test_real_gpu_log_iterations_memory_and_end():
    log = parse_file(QWEN)
    assert [it["iteration"] for it in log.iterations] == list(range(1, 21))
    assert log.train_iters == 20 and log.last_iteration == 20
    first = log.iterations[0]
    assert {"step_ms", "tflops_per_gpu", "loss", "load_balancing_loss", "grad_norm", "lr", "global_batch_size",
            "skipped", "nan_iterations", "consumed_samples", "loss_scale"} <= set(first)
    assert all(it["global_batch_size"] == 32 and it["nan_iterations"] == 0 for it in log.iterations)
    assert log.memory_by_rank.keys() == {0}          # Megatron reports memory on rank 0 only here
    assert log.memory_mb["max_allocated_mb"] == max(r["max_allocated_mb"] for r in log.memory_reports)
    assert log.theoretical_memory_mb["total"] > log.theoretical_memory_mb["weight_and_optimizer"] > 0
    assert log.done == {"iteration": 20, "train_iters": 20, "seconds": log.done["seconds"], "device": "cuda",
                        "world": 2}


def test_iteration_line_fields_verbatim():
    rec = parse_iteration_line(LINE)
    assert rec["iteration"] == 20 and rec["train_iters"] == 20
    assert rec["step_ms"] == 1389.7 and rec["tflops_per_gpu"] == 254.2
    assert rec["loss"] == 8.807283 and rec["grad_norm"] == 0.506 and rec["load_balancing_loss"] == 1.000219


def test_rank_prefix_nan_and_unknown_fields():
    line = "[rank1]: " + LINE.replace("lm loss: 8.807283E+00", "lm loss: nan").replace(
        "loss scale: 1.0", "mtp_1 loss: 2.5E+00 | loss scale: 1.0")
    rec = parse_iteration_line(line)
    assert math.isnan(rec["loss"]) and rec["mtp_1_loss"] == 2.5
    assert parse_iteration_line("iteration 3/10 without the timing field") is None


def test_duplicate_iteration_lines_kept_once():
    log = parse_log(LINE + "\n" + LINE.replace("1389.7", "1390.0") + "\n")
    assert len(log.iterations) == 1 and log.iterations[0]["step_ms"] == 1390.0


def test_steady_state_window_of_a_real_log():
    # the one steady-state computation (launcher.records.record), fed by this parser
    log = parse_file(QWEN)
    series = series_of(log.iterations, seq=4096, world=2, peak=989.0)
    s = steady_state(series, warmup=3, last=None, memory=log.memory_mb)
    step = s["step_time_ms"]
    assert len(log.iterations) == 20 and step["min"] <= step["median"] <= step["max"]
    assert series[-1]["loss"] < series[0]["loss"]
