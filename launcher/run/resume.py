"""Where a relaunch resumes: the newest complete checkpoint of the run's checkpoint directory (the directory
itself is read by launcher/records/checkpoint_dir.py, which the ranks' keep-last-N shares)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher.plan.checkpoint import ResumePoint, point_at
from launcher.records.checkpoint_dir import is_complete, iterations, tracker_iteration


def find_resume(ckpt_dir: Optional[Path]) -> Optional[ResumePoint]:
    """The newest complete checkpoint in ckpt_dir, with the newer incomplete ones it skips; None if none."""
    if ckpt_dir is None:
        return None
    skipped: list[str] = []
    for it, path in reversed(iterations(ckpt_dir)):
        if is_complete(path):
            return point_at(ckpt_dir, it, tracker_iteration(ckpt_dir), tuple(skipped))
        skipped.append(path.name)
    return None
