"""Keep-last-N while the run goes on (train.checkpoint.keep_last): rank 0 deletes older complete checkpoints as
soon as a newer one is complete, so a six-week run holds N checkpoints, not one per interval (Megatron 0.19.2 has
no keep-last-N; its --save-retain-interval keeps every K-th besides the latest). The launcher prunes again after
the run (launcher/run/local.py), which also covers a run that ended between two looks.

Environment (set by the launcher's plan): MOE_KEEP_LAST=N. A checkpoint counts as complete once Megatron has
written its closing metadata and then the tracker file (launcher/records/checkpoint_dir.py); the thread looks at
the tracker every MOE_KEEP_LAST_POLL_S seconds (default 10: a save takes longer than that to be followed by the
next), on rank 0 only (the directory is shared by all ranks). It never touches the newest N complete
checkpoints nor a save still being written (newer than the newest complete one).
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Optional

ENV = "MOE_KEEP_LAST"
ENV_POLL = "MOE_KEEP_LAST_POLL_S"


def prune_once(ckpt_dir: Path, keep: int) -> list[str]:
    """One pass: what was removed (folder names), said in one line on stdout (train.log)."""
    from launcher.records.checkpoint_dir import prune

    gone = [p.name for p in prune(ckpt_dir, keep)]
    if gone:
        print(f"recipes.retention: removed {', '.join(gone)} from {ckpt_dir} (train.checkpoint.keep_last={keep})",
              flush=True)
    return gone


def _watch(ckpt_dir: Path, keep: int, every_s: float, stop: threading.Event, seen: Optional[int]) -> None:
    from launcher.records.checkpoint_dir import tracker_iteration

    while not stop.wait(every_s):
        now = tracker_iteration(ckpt_dir)
        if now is not None and now != seen:
            seen = now
            try:
                prune_once(ckpt_dir, keep)
            except OSError as e:  # a shared file system's hiccup: the next save, or the launcher, tries again
                print(f"recipes.retention: could not prune {ckpt_dir}: {e}", file=sys.stderr, flush=True)


def start(save_dir: Optional[str], rank: int) -> Optional[threading.Event]:
    """Start the watcher on rank 0 when MOE_KEEP_LAST is set and the run saves; returns its stop event."""
    keep = int(os.environ.get(ENV) or 0)
    if keep < 1 or not save_dir or rank != 0:
        return None
    from launcher.records.checkpoint_dir import tracker_iteration

    stop = threading.Event()
    every_s = float(os.environ.get(ENV_POLL) or 10)
    # the tracker as training starts (what a resume started from was pruned by the launcher before the run), read
    # here, not in the thread: a thread scheduled late would take a save made meanwhile for the starting point
    seen = tracker_iteration(Path(save_dir))
    threading.Thread(target=_watch, args=(Path(save_dir), keep, every_s, stop, seen), name="moe-keep-last",
                     daemon=True).start()
    return stop
