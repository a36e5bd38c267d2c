"""Checkpoint saves read from real GPU logs (perf_results/issue13/: the 8-layer Qwen3-30B-A3B EP2 run on 2x H200
that saved at 100 and was killed at 149, and its relaunch that resumed from 100), and the steady-state window of
a resumed run."""
from __future__ import annotations

from pathlib import Path

from launcher.records.logparse import parse_file
from launcher.records.saves import advice, checkpoint_summary, describe, parse_saves
from launcher.records.steady import series_of, steady_state

RUNS = Path(__file__).resolve().parents[3] / "perf_results" / "issue13"
FIRST, RESUMED = RUNS / "issue13_kill_attempt1" / "train.log", RUNS / "issue13_kill_attempt2" / "train.log"


def test_async_save_wait_and_background_write_from_the_log():
    (save,) = parse_saves(FIRST.read_text())
    assert save["iteration"] == 100 and save["complete"]
    assert save["blocking_s"] == 64.1                  # the save-checkpoint timer's max over the two ranks
    assert save["written_after_s"] == 54.8             # 19:44:27.7 scheduled -> 19:45:22.5 saved
    c = checkpoint_summary(FIRST.read_text(), interval=100, step_ms=1145.6)
    assert c["blocking_share_of_interval"] == round(64.1 / (100 * 1.1456), 4)
    assert c["typical_from"] == "the only save" and c["first_blocking_s"] == c["typical_blocking_s"] == 64.1
    assert "training waited 64.1 s, written 54.8 s later" in describe(c) and "56.0%" in describe(c)


def test_sync_save_and_a_save_that_never_completed():
    text = ("[2026-01-01 10:00:00.0] saving checkpoint at iteration      10 to /c in torch_dist format\n"
            "    save-checkpoint ................................: (900.00, 1500.00)\n"
            "  [2026-01-01 10:00:02.0] successfully saved checkpoint from iteration      10 to /c [ t 1/1 ]\n"
            "[2026-01-01 10:01:00.0] saving checkpoint at iteration      20 to /c in torch_dist format\n")
    first, second = parse_saves(text)
    assert first["blocking_s"] == 1.5 and first["complete"] and first["written_after_s"] is None
    assert not second["complete"] and second["blocking_s"] is None
    assert "iteration 20: wait not logged (never completed)" in describe(checkpoint_summary(text, 10, 1000.0))


def test_the_share_uses_the_later_saves_when_the_first_paid_the_set_up(tmp_path):
    text = "".join(f"[2026-01-01 10:0{i}:00.0] saving checkpoint at iteration {10 * i} to /c in torch_dist\n"
                   f"    save-checkpoint ....: (1.0, {ms:.2f})\n" for i, ms in enumerate([3000, 300, 200, 250], 1))
    for name, size in (("iter_0000030", 2_500_000), ("iter_0000040", 3_000_000_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.distcp").write_bytes(b"")
        with open(tmp_path / name / "f.distcp", "wb") as f:
            f.truncate(size)  # sparse: the size counts, not the blocks
    c = checkpoint_summary(text, 10, 1000.0, str(tmp_path))
    assert c["first_blocking_s"] == 3.0 and c["typical_blocking_s"] == 0.2 and c["blocking_share_of_interval"] == 0.02
    assert "(later saves' median) is 2.0%" in describe(c)
    assert "iter_0000030 2.5 MB, iter_0000040 3.0 GB" in describe(c)
    assert checkpoint_summary("no saves here", 10, 1000.0) is None


def test_a_resumed_run_skips_its_own_warm_up_after_the_checkpoint():
    log = parse_file(RESUMED)
    assert log.start_iteration == 100 and log.iterations[0]["iteration"] == 101
    assert log.iterations[0]["step_ms"] > 10_000        # the first step after a resume pays the warm-up again
    s = steady_state(series_of(log.iterations, 4096, 2, None), warmup=3, last=None, memory=log.memory_mb,
                     start=log.start_iteration)
    assert s["window"]["first"] == 104 and s["window"]["resumed_from"] == 100
    assert s["step_time_ms"]["max"] < 1500
    fresh = parse_file(FIRST)
    assert fresh.start_iteration == 0                   # no checkpoint found: a fresh start


def test_advice_names_the_interval_that_keeps_saves_under_two_percent():
    c = checkpoint_summary(FIRST.read_text(), interval=100, step_ms=1145.6)
    # 64.1 s / (0.02 * 1.1456 s) = 2797.7 -> 2798 iterations
    assert advice(c, 1145.6) == ("checkpoint saves held training 64.1 s each (the only save), 56.0% of the training "
                                 "between saves; train.save_interval=2798 or more keeps it under 2%")
    assert advice(None, 1145.6) is None and advice(c, None) is None
    cheap = ("[2026-01-01 10:00:00.0] saving checkpoint at iteration 100 to /c\n"
             "    save-checkpoint ....: (1.0, 2000.0)\n")
    assert advice(checkpoint_summary(cheap, interval=100, step_ms=1145.6), 1145.6) is None  # 1.7%: under 2%


def test_a_save_off_the_interval_is_listed_but_not_projected():
    """The default job: 20 iterations, interval 100, so its one save is the end's (and a signal's save is any
    iteration): neither recurs every interval, so no share and no advice to save less often."""
    end = ("[2026-01-01 10:00:00.0] saving checkpoint at iteration 20 to /c\n    save-checkpoint ....: (1.0, 2400.0)\n"
           "[2026-01-01 10:00:02.4] successfully saved checkpoint from iteration 20 to /c [ t 1/1 ]\n")
    c = checkpoint_summary(end, interval=100, step_ms=832.0)
    assert c["first_blocking_s"] == 2.4 and c["typical_blocking_s"] is None and c["blocking_share_of_interval"] is None
    assert advice(c, 832.0) is None and describe(c) == "iteration 20: training waited 2.4 s"
