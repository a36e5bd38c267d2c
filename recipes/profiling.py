"""A torch.profiler window over whole training iterations, and its GPU-time summary.

Environment (read on the compute node):
  MOE_PROFILE_STEPS="START:END"  1-based iterations, inclusive (e.g. "5:7"); unset or empty: no-op
  MOE_RUN_DIR                    the run directory (set by the launcher's executors); unset: the cwd
  MOE_PROFILE_ALL_RANKS=1        every rank writes its trace, not only global rank 0

Wiring (two calls, made by recipes/data.py and recipes/pretrain.py):
  recipes/data.py      forward_step(): `profiling.maybe_step(get_args())` first thing, every micro-batch
  recipes/pretrain.py  main(): `profiling.finish()` after megatron's pretrain() returns

Megatron sets args.curr_iteration to the number of iterations completed, so iteration k (1-based)
runs with curr_iteration == k-1. The profiler starts at the first forward of iteration START and stops
at the first forward of iteration END+1 (torch.cuda.synchronize() before each, so no kernel of a
neighbouring iteration leaks in or out): the window holds whole iterations, their backward passes and
optimizer steps included (it is shifted by the work Megatron does before an iteration's first forward:
the gradient-buffer zeroing of START is outside, that of END+1 inside, so still one per iteration).
finish() stops it when training ends inside the window. Every rank profiles
(equal overhead keeps ranks in step); the selected ranks then write, under $MOE_RUN_DIR/profile/:
  trace_rank{R}.json.gz   the Chrome trace (chrome://tracing, Perfetto, launcher.records.trace_summary)
  summary_rank{R}.json    launcher.records.trace_summary's numbers, steps = iterations in the window
  summary_rank{R}.md      the same as a readable report
A failure to write them is reported on stderr and does not stop training.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

ENV_STEPS = "MOE_PROFILE_STEPS"
ENV_ALL_RANKS = "MOE_PROFILE_ALL_RANKS"


class _State:
    """What the profiler is doing in this process (one window per process)."""
    window: Optional[tuple[int, int]] = None
    parsed = False
    profiler: Any = None
    first_iteration: Optional[int] = None
    last_iteration: Optional[int] = None
    checked = False
    done = False
    rank = 0


_S = _State()


def parse_steps(value: str) -> tuple[int, int]:
    """'START:END' -> (START, END), 1 <= START <= END; anything else is a ValueError naming the variable."""
    # the launcher's parser of the same window (train.kernel_profile)
    from launcher.records.steady import iteration_window

    try:
        return iteration_window(value)
    except ValueError:
        raise ValueError(f"{ENV_STEPS}={value!r}: expected 'START:END', 1-based training iterations with "
                         f"1 <= START <= END (inclusive), e.g. {ENV_STEPS}=5:7") from None


def window() -> Optional[tuple[int, int]]:
    """The requested window, parsed once; None when MOE_PROFILE_STEPS is unset or empty."""
    if not _S.parsed:
        value = os.environ.get(ENV_STEPS, "")
        _S.window = parse_steps(value) if value.strip() else None
        _S.parsed = True
    return _S.window


def reset() -> None:
    """Forget all state (tests; a second training run in one process)."""
    global _S
    _S = _State()


def _rank(args) -> int:
    rank = getattr(args, "rank", None)
    return int(rank if rank is not None else os.environ.get("RANK", 0))


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _make_profiler():
    """torch.profiler over CPU and CUDA; no shapes or stacks, which cost time and make traces huge."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    return profile(activities=activities, record_shapes=False, with_stack=False)


def maybe_step(args) -> None:
    """Call at the top of every micro-batch forward: starts or stops the profiler at iteration edges."""
    win = window()
    if win is None or _S.done:
        return
    start, end = win
    iteration = int(args.curr_iteration) + 1  # 1-based number of the iteration this forward belongs to
    _S.rank = _rank(args)
    if not _S.checked:
        _S.checked = True
        train_iters = getattr(args, "train_iters", None)
        if train_iters and start > train_iters and _S.rank == 0:
            print(f"recipes.profiling: warning: {ENV_STEPS}={start}:{end} starts after the last iteration "
                  f"({train_iters}); nothing will be profiled", file=sys.stderr, flush=True)
    if _S.profiler is not None and iteration <= end:
        _S.last_iteration = iteration
    if _S.profiler is None and start <= iteration <= end:
        # a resumed run may begin inside the window: profile what is left of it, and count only that
        _synchronize()
        _S.profiler = _make_profiler()
        _S.profiler.start()
        _S.first_iteration = _S.last_iteration = iteration
        if _S.rank == 0:
            print(f"recipes.profiling: profiling iterations {iteration}-{end}", flush=True)
    elif _S.profiler is not None and iteration > end:
        _stop(end - _S.first_iteration + 1)
    elif _S.profiler is None and iteration > end:
        _S.done = True  # started past the window (a resumed run): nothing to profile
        if _S.rank == 0:
            print(f"recipes.profiling: {ENV_STEPS}={start}:{end} is before the first iteration run "
                  f"({iteration}); nothing profiled", file=sys.stderr, flush=True)


def finish() -> None:
    """Call once training returned: stops a window that training ended inside, counting the iterations
    that ran in it (training returned, so the last one begun was completed)."""
    if _S.profiler is None or _S.done:
        return
    _stop(_S.last_iteration - _S.first_iteration + 1)


def _stop(steps: int) -> None:
    _synchronize()
    prof, _S.profiler, _S.done = _S.profiler, None, True
    prof.stop()
    if _S.rank == 0 or os.environ.get(ENV_ALL_RANKS) == "1":
        try:
            export(prof, _S.rank, steps)
        except Exception:  # noqa: BLE001 - evidence lost must not cost the training run: say so, go on
            print(f"recipes.profiling: error: writing the profile of rank {_S.rank} failed:\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)


def export(prof, rank: int, steps: int, run_dir: Optional[Path] = None) -> Path:
    """Write the gzipped Chrome trace and its summary (.json, .md) under RUN_DIR/profile/; the trace path."""
    from launcher.records import trace_summary  # repo root is on PYTHONPATH on compute nodes

    out = Path(run_dir or os.environ.get("MOE_RUN_DIR") or ".") / "profile"
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"trace_rank{rank}.json.gz"
    prof.export_chrome_trace(str(trace))  # torch gzips when the name ends in .gz
    summary = trace_summary.summarize(trace, steps=steps)
    (out / f"summary_rank{rank}.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = trace_summary.to_markdown(summary)
    (out / f"summary_rank{rank}.md").write_text(text)
    if summary["status"] == "ok":
        top = list(summary["categories"].items())[:3]
        shares = ", ".join(f"{name} {100 * c['share_of_busy']:.0f}%" for name, c in top)
        print(f"recipes.profiling: rank {rank}: {trace} ({steps} steps): GPU idle "
              f"{100 * summary['idle_share']:.0f}% of wall; of busy time: {shares}", flush=True)
    else:
        print(f"recipes.profiling: rank {rank}: {trace}: {summary['message']}", flush=True)
    return trace
