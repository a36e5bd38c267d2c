"""launch.max_restarts: a bounded automatic restart from the newest complete checkpoint, after a failure that a
restart can fix. moe-launch keeps the run directory's lock, re-plans (the resume point moved), keeps the failed
attempt in attempts/<n>/ as a relaunch by hand would, and runs again, at most launch.max_restarts times.

What a restart can fix: a rank killed by a signal (the host's OOM killer, a GPU or node fault, a stray kill), and a
collective or rendezvous timeout (a hung peer). What it cannot: a rank that raised (the same code and data raise
again: torchrun's error file says what), out of memory, NaN, a bad config, a missing backend, and a stop asked
for from outside (interrupted, preempted, killed: the launcher was told to stop).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def _failure(run_dir: Path) -> Optional[dict]:
    """The failure of the attempt that just ended, from its record ({} when none); None without a record."""
    try:
        return json.loads((Path(run_dir) / "record.json").read_text()).get("failure") or {}
    except (OSError, ValueError):
        return None


def restart_reason(run_dir: Path) -> Optional[str]:
    """Why the attempt that just ended may be restarted (one phrase), or None when it must not be."""
    failure = _failure(run_dir) or {}
    cls, kind = failure.get("class"), failure.get("kind")
    if cls == "rank_died" and kind == "signal":
        return f"rank {failure.get('rank')} was killed by a signal"
    if cls == "timeout":
        return f"a {kind or 'collective'} timeout"
    return None


def not_restarted(run_dir: Path) -> str:
    """The failure class that ends the run without a restart, for the one line that says so."""
    failure = _failure(run_dir)
    if failure is None:
        return "no run record"
    return f"{failure.get('class', 'unknown')}" + (f" ({failure['kind']})" if failure.get("kind") else "")
