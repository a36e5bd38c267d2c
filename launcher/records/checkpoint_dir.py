"""A checkpoint directory as files: its iter_* folders, which are complete, the tracker, and pruning old ones.
Read by the launcher (launcher/run/resume.py: where a relaunch resumes; after a run: pruning) and by rank 0
during a run (recipes/retention.py: keep-last-N while the run goes on).

Megatron's distributed checkpoint (torch_dist) writes metadata.json last, in the save's finalize step
(megatron/core/dist_checkpointing/serialization.py: "metadata.json is written only" after every shard), and
only then the tracker file latest_checkpointed_iteration.txt (training/checkpointing.py iter_finalize_fn);
an async save does both once its background write is complete.
Megatron FSDP's fsdp_dtensor format is torch DCP, whose coordinator writes .metadata last. An iter_*
directory without its closing file is a save that was killed, or one still being written: it is skipped.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

TRACKER = "latest_checkpointed_iteration.txt"
ITER_DIR = re.compile(r"iter_(\d{7,})")
CLOSING_FILES = ("metadata.json", ".metadata")

def iterations(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Every iter_* directory, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := ITER_DIR.fullmatch(p.name))]
    return sorted(found)


def is_complete(path: Path) -> bool:
    return any((path / name).is_file() for name in CLOSING_FILES)


def tracker_iteration(ckpt_dir: Path) -> Optional[int]:
    try:
        return int((ckpt_dir / TRACKER).read_text().strip())
    except (OSError, ValueError):
        return None  # missing, "release", or half written


def prune(ckpt_dir: Path, keep_last: Optional[int]) -> list[Path]:
    """Delete complete checkpoints older than the newest keep_last (Megatron 0.19.2 has no keep-last-N,
    only save_retain_interval). Incomplete directories newer than the kept ones are left for a look; older
    incomplete ones go too. Returns what was deleted."""
    if not keep_last:
        return []
    found = iterations(ckpt_dir)
    complete = [it for it, p in found if is_complete(p)]
    if len(complete) <= keep_last:
        return []
    oldest_kept = complete[-keep_last]
    gone = [p for it, p in found if it < oldest_kept]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
