"""Where a relaunch resumes: the newest complete checkpoint of the run's checkpoint directory (the directory
itself is read by launcher/records/checkpoint_dir.py, which the ranks' keep-last-N shares)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher.plan.checkpoint import ResumePoint
from launcher.records.checkpoint_buckets import read_saved_buckets
from launcher.records.checkpoint_model import read_saved_model
from launcher.records.checkpoint_schedule import read_saved_schedule
from launcher.records.checkpoint_dir import is_complete, iterations, tracker_iteration


def find_resume(ckpt_dir: Optional[Path]) -> Optional[ResumePoint]:
    """The newest complete checkpoint in ckpt_dir, with the newer incomplete ones it skips; None if none."""
    if ckpt_dir is None:
        return None
    skipped: list[str] = []
    for it, path in reversed(iterations(ckpt_dir)):
        if is_complete(path):
            return ResumePoint(directory=str(ckpt_dir), iteration=it, tracker=tracker_iteration(ckpt_dir),
                               skipped=tuple(skipped), buckets=read_saved_buckets(path),
                               schedule=read_saved_schedule(path), model=read_saved_model(path))
        skipped.append(path.name)
    return None
