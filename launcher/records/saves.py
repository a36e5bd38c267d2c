"""Checkpoint saves as a run's train.log tells them, and what they cost the training (issue 13).

Megatron 0.19.2 prints, on rank 0, for every save:
  [2026-11-30 19:43:23.549567] saving checkpoint at iteration     100 to /ckpt in torch_dist format
then, with --async-save, once the tensors are handed to the background writer (training resumes here):
  [2026-11-30 19:44:27.675686] scheduled an async checkpoint save at iteration     100 to /ckpt
its timer (min, max over ranks, ms) of the part training waited for:
  save-checkpoint ................................: (61789.32, 64133.51)
and once the files are complete (for an async save, some iterations later):
  [2026-11-30 19:45:22.513266] successfully saved checkpoint from iteration     100 to /ckpt [ t 1/1, ... ]

What a save costs the run is the time training waited (the timer's max: every rank waits for the slowest at
the next collective) plus the slower steps while an async writer runs; over an interval of N iterations at a
median step of s seconds the first is wait / (N * s), which this module reports, since it dominates: on
2x H200, 8-layer Qwen3-30B-A3B EP2, 74 GB, the wait was 64.1 s and the steps during the 55 s of background
writing added 2.3 s in all (perf_results/issue13/). A run's first save also pays one-time costs (the save
strategy, its sharding validation, the writer's start: on CPU the tiny model's first save waited 3.0 s, the
next four 0.2-0.3 s), so the share uses the median wait of the later saves where there are any.
Text only: no torch, no megatron.
"""
from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Optional

from launcher.records.checkpoint_dir import iterations

_TS = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\]"
_START = re.compile(_TS + r" saving checkpoint at iteration\s+(\d+)")
_SCHEDULED = re.compile(_TS + r" scheduled an async checkpoint save at iteration\s+(\d+)")
_DONE = re.compile(_TS + r" successfully saved checkpoint from iteration\s+(\d+)")
_TIMER = re.compile(r"\bsave-checkpoint \.+: \(([0-9.]+), ([0-9.]+)\)")


def _seconds(a: Optional[str], b: Optional[str]) -> Optional[float]:
    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)


def parse_saves(text: str) -> list[dict]:
    """One dict per save, in log order: iteration, started, scheduled (async), completed, blocking_s (the
    timer's max over ranks), written_after_s (async: completion minus scheduling), complete (bool)."""
    saves: list[dict] = []
    by_iteration: dict[int, dict] = {}
    for line in text.splitlines():
        m = _START.search(line)
        if m:
            save = {"iteration": int(m.group(2)), "started": m.group(1), "scheduled": None, "completed": None,
                    "blocking_s": None}
            saves.append(save)
            by_iteration[save["iteration"]] = save
            continue
        m = _TIMER.search(line)
        if m and saves and saves[-1]["blocking_s"] is None:
            saves[-1]["blocking_s"] = round(float(m.group(2)) / 1000, 1)
            continue
        for pattern, key in ((_SCHEDULED, "scheduled"), (_DONE, "completed")):
            m = pattern.search(line)
            if m and int(m.group(2)) in by_iteration:
                by_iteration[int(m.group(2))][key] = m.group(1)
    for s in saves:
        s["complete"] = s["completed"] is not None
        s["written_after_s"] = _seconds(s["scheduled"], s["completed"])
    return saves


def checkpoint_summary(text: str, interval: Optional[int], step_ms: Optional[float],
                       save_dir: Optional[str] = None) -> Optional[dict]:
    """The record's "checkpoints": the saves, a typical wait (the later saves' median, else the only one) and its
    share of an interval of training (None when the run saved nothing). Only the saves at multiples of the interval
    recur with it: the save at the end of a run shorter than one interval, or one a signal asked for, is listed but
    not projected (the default 20-step job's end save once read "2.9% ...; train.save_interval=145 or more").
    Sizes of the save directory's iter_* folders where they still exist."""
    saves = parse_saves(text)
    if not saves:
        return None
    waits = [s["blocking_s"] for s in saves if s["blocking_s"] is not None]
    periodic = [s["blocking_s"] for s in saves if s["blocking_s"] is not None and interval
                and s["iteration"] % interval == 0]
    later = sorted(periodic[1:])
    typical = later[len(later) // 2] if later else (periodic[0] if periodic else None)
    share = (round(typical / (interval * step_ms / 1000), 4) if typical is not None and interval and step_ms
             else None)
    return {"interval": interval, "saves": saves, "first_blocking_s": waits[0] if waits else None,
            "typical_blocking_s": typical, "typical_from": "later saves' median" if later else "the only save",
            "blocking_share_of_interval": share, "sizes_bytes": _sizes(save_dir)}


def _sizes(save_dir: Optional[str]) -> dict:
    """iter_* folder -> bytes, for what is still on disk."""
    found = iterations(Path(save_dir)) if save_dir else []
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for _, d in found}


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe(c: dict) -> str:
    """One line for record.md: each save's wait and background write, and the share of the interval."""
    parts = []
    for s in c["saves"]:
        wait = f"training waited {s['blocking_s']:.1f} s" if s["blocking_s"] is not None else "wait not logged"
        bg = f", written {s['written_after_s']:.1f} s later" if s["written_after_s"] is not None else ""
        state = "" if s["complete"] else " (never completed)"
        parts.append(f"iteration {s['iteration']}: {wait}{bg}{state}")
    share = c.get("blocking_share_of_interval")
    tail = (f"; a wait ({c['typical_from']}) is {100 * share:.1f}% of the training between saves (every "
            f"{c['interval']} iterations at the median step)") if share is not None else ""
    sizes = ", ".join(f"{k} {_size(v)}" for k, v in c.get("sizes_bytes", {}).items())
    return "; ".join(parts) + tail + (f"; on disk: {sizes}" if sizes else "")


MAX_SHARE = 0.02  # issue 13: checkpointing may cost at most 2% of a run's steps


def advice(c: Optional[dict], step_ms: Optional[float]) -> Optional[str]:
    """One line when a save's wait is more than MAX_SHARE of the training between saves: the wait, its share,
    and the train.save_interval that would bring it under (wait / (MAX_SHARE * step)); None otherwise."""
    share = (c or {}).get("blocking_share_of_interval")
    if share is None or share <= MAX_SHARE or not step_ms:
        return None
    wait = c["typical_blocking_s"]
    interval = math.ceil(wait / (MAX_SHARE * step_ms / 1000))
    return (f"checkpoint saves held training {wait:.1f} s each ({c['typical_from']}), {100 * share:.1f}% of the "
            f"training between saves; train.save_interval={interval} or more keeps it under {100 * MAX_SHARE:.0f}%")
