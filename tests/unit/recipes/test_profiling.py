"""recipes.profiling: the iteration window, finish(), the rank filter, the env check, and a real export."""
from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest

from recipes import profiling


class FakeProfiler:
    """Stands in for torch.profiler.profile: records start/stop, exports a one-kernel GPU trace."""

    made: list["FakeProfiler"] = []

    def __init__(self, log):
        self.log, self.started, self.stopped = log, False, False
        FakeProfiler.made.append(self)

    def start(self):
        self.started = True
        self.log.append("start")

    def stop(self):
        self.stopped = True
        self.log.append("stop")

    def export_chrome_trace(self, path):
        events = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 5,
                   "dur": 1, "args": {"correlation": 1}},
                  {"ph": "X", "cat": "cpu_op", "name": "_GroupedLinear", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
                  {"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "pid": 0, "tid": 7, "ts": 20, "dur": 30,
                   "args": {"correlation": 1, "device": 0, "stream": 7}}]
        with gzip.open(path, "wt") as f:
            json.dump({"traceEvents": events}, f)
        self.log.append(f"export {path}")


@pytest.fixture
def log(monkeypatch, tmp_path):
    """Fresh module state, a fake profiler, a recorded synchronize, MOE_RUN_DIR in tmp_path."""
    events: list[str] = []
    profiling.reset()
    FakeProfiler.made = []
    monkeypatch.setattr(profiling, "_make_profiler", lambda: FakeProfiler(events))
    monkeypatch.setattr(profiling, "_synchronize", lambda: events.append("sync"))
    monkeypatch.setenv("MOE_RUN_DIR", str(tmp_path))
    for var in ("MOE_PROFILE_STEPS", "MOE_PROFILE_ALL_RANKS", "RANK"):
        monkeypatch.delenv(var, raising=False)
    yield events
    profiling.reset()


def train(iters: int, micro_batches: int, log: list[str], rank: int = 0, first: int = 1, finish: bool = True):
    """Megatron's loop as recipes.profiling sees it: curr_iteration = iterations completed, forward_step
    (which calls maybe_step) once per micro-batch, then pretrain returns and main calls finish()."""
    args = SimpleNamespace(rank=rank, train_iters=iters, curr_iteration=0)
    for iteration in range(first, iters + 1):
        args.curr_iteration = iteration - 1
        for mb in range(micro_batches):
            log.append(f"fwd {iteration}.{mb}")
            profiling.maybe_step(args)
    if finish:
        profiling.finish()


def _between(log, first, last):
    return log[log.index(first) + 1:log.index(last)]


def test_window_holds_whole_iterations(log, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "2:4")
    train(6, 3, log)
    # starts at the first forward of iteration 2, stops at the first forward of iteration 5, syncing first
    assert _between(log, "fwd 1.2", "fwd 2.1") == ["fwd 2.0", "sync", "start"]
    assert _between(log, "fwd 4.2", "fwd 5.1")[:3] == ["fwd 5.0", "sync", "stop"]
    assert log.count("start") == 1 and log.count("stop") == 1 and len(FakeProfiler.made) == 1
    trace = tmp_path / "profile" / "trace_rank0.json.gz"
    assert f"export {trace}" in log
    summary = json.loads((tmp_path / "profile" / "summary_rank0.json").read_text())
    assert summary["steps"] == 3 and summary["categories"]["expert_gemm"]["count"] == 1
    assert summary["trace"] == str(trace)
    assert "expert_gemm" in (tmp_path / "profile" / "summary_rank0.md").read_text()


def test_single_iteration_window_and_one_micro_batch(log, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "1:1")
    train(3, 1, log)
    assert log[:4] == ["fwd 1.0", "sync", "start", "fwd 2.0"]
    assert log[4:6] == ["sync", "stop"]
    assert json.loads((tmp_path / "profile" / "summary_rank0.json").read_text())["steps"] == 1


def test_finish_stops_a_window_that_training_ended_inside(log, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "5:8")
    train(6, 2, log, finish=False)
    assert "start" in log and "stop" not in log
    profiling.finish()
    assert log[-3:-1] == ["sync", "stop"] and log[-1].startswith("export")
    # iterations 5 and 6 ran inside the window
    assert json.loads((tmp_path / "profile" / "summary_rank0.json").read_text())["steps"] == 2
    n = len(log)
    profiling.finish()  # idempotent
    assert len(log) == n


def test_finish_without_window_or_after_stop_does_nothing(log, monkeypatch, tmp_path):
    profiling.finish()  # env unset, never started
    monkeypatch.setenv("MOE_PROFILE_STEPS", "1:2")
    train(4, 1, log)   # stopped at iteration 3; finish() in train() must not stop again
    assert log.count("stop") == 1 and log.count("start") == 1


def test_unset_env_is_a_no_op(log, monkeypatch, tmp_path):
    monkeypatch.setattr(profiling, "_make_profiler", lambda: pytest.fail("profiler made without MOE_PROFILE_STEPS"))
    train(3, 2, log)
    monkeypatch.setenv("MOE_PROFILE_STEPS", "")
    profiling.reset()
    train(3, 2, log)
    assert "start" not in log and not (tmp_path / "profile").exists()


def test_window_after_last_iteration_warns_and_profiles_nothing(log, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "10:12")
    train(3, 1, log)
    assert "start" not in log
    assert "starts after the last iteration (3)" in capsys.readouterr().err


def test_resumed_run_inside_window_counts_only_what_ran(log, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "3:5")
    train(8, 1, log, first=4)  # resumed from a checkpoint at iteration 3
    assert log[:3] == ["fwd 4.0", "sync", "start"]
    assert json.loads((tmp_path / "profile" / "summary_rank0.json").read_text())["steps"] == 2


def test_only_rank_zero_writes_unless_all_ranks(log, monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_PROFILE_STEPS", "1:1")
    train(2, 1, log, rank=1)
    assert "start" in log and "stop" in log  # every rank profiles, so every rank pays the same overhead
    assert not any(e.startswith("export") for e in log) and not (tmp_path / "profile").exists()
    profiling.reset()
    monkeypatch.setenv("MOE_PROFILE_ALL_RANKS", "1")
    train(2, 1, log, rank=1)
    assert (tmp_path / "profile" / "trace_rank1.json.gz").exists()
    assert (tmp_path / "profile" / "summary_rank1.json").exists()
    assert (tmp_path / "profile" / "summary_rank1.md").exists()
    assert not (tmp_path / "profile" / "trace_rank0.json.gz").exists()


@pytest.mark.parametrize("value", ["5", "a:b", "3:2", "0:2", "1:2:3", "-1:2", "2:"])
def test_bad_env_value_is_a_clear_error(log, monkeypatch, value):
    monkeypatch.setenv("MOE_PROFILE_STEPS", value)
    with pytest.raises(ValueError) as err:
        profiling.maybe_step(SimpleNamespace(rank=0, train_iters=5, curr_iteration=0))
    msg = str(err.value)
    assert "MOE_PROFILE_STEPS" in msg and repr(value) in msg and "START:END" in msg


def test_parse_steps_accepts_spaces():
    assert profiling.parse_steps(" 5:7 ") == (5, 7) and profiling.parse_steps("3:3") == (3, 3)


def test_export_failure_does_not_stop_training(log, monkeypatch, tmp_path, capsys):
    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(FakeProfiler, "export_chrome_trace", broken)
    monkeypatch.setenv("MOE_PROFILE_STEPS", "1:1")
    train(3, 1, log)
    assert log[-1] == "fwd 3.0"  # training went on
    err = capsys.readouterr().err
    assert "writing the profile of rank 0 failed" in err and "disk full" in err


def test_real_torch_profiler_on_cpu(monkeypatch, tmp_path, capsys):
    """No fakes: torch.profiler over a CPU computation; the trace is written gzipped and the summary
    says there were no GPU kernels."""
    torch = pytest.importorskip("torch")
    profiling.reset()
    monkeypatch.setenv("MOE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("MOE_PROFILE_STEPS", "2:2")
    monkeypatch.delenv("MOE_PROFILE_ALL_RANKS", raising=False)
    model = torch.nn.Linear(16, 16)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    args = SimpleNamespace(rank=0, train_iters=3, curr_iteration=0)
    for it in range(3):
        args.curr_iteration = it
        profiling.maybe_step(args)
        torch.softmax(model(torch.randn(4, 16)), -1).sum().backward()
        opt.step()
        opt.zero_grad()
    profiling.finish()
    profiling.reset()
    trace = tmp_path / "profile" / "trace_rank0.json.gz"
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(e.get("name", "").startswith("Optimizer.step#AdamW.step") for e in events)
    summary = json.loads((tmp_path / "profile" / "summary_rank0.json").read_text())
    assert summary["status"] == "no_gpu_kernels" and summary["steps"] == 1 and summary["cpu_ops"] > 0
    assert "no GPU kernels in trace" in capsys.readouterr().out
