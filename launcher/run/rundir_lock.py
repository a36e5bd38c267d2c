"""A run directory belongs to one launch at a time, and keeps every earlier attempt.

  lock_run_dir     fcntl.flock on <run_dir>/.lock, held until moe-launch exits (the kernel drops it when the
                   process dies, so a killed launcher never leaves a stale lock); a second launch is refused
  archive_attempt  a relaunch moves the earlier attempt's files into attempts/<n>/ (n = 1, 2, ...; a number
                   is never reused), so no log, exit.json or record is ever overwritten
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from launcher.errors import ConfigError, make_dir
from launcher.records.error_file import NAME as ERROR_FILE, RANK_ERRORS

LOCK = ".lock"
ATTEMPTS = "attempts"
# what one attempt writes into the run directory (checkpoints/ stays: the next attempt resumes from it)
ATTEMPT_FILES = ("config.yaml", "plan.json", "argv.txt", "estimate.json", "command.sh", "sbatch.sh", "container.sh",
                 "train.log", "exit.json", "record.json", "record.md", "versions.json", "job.json",
                 ERROR_FILE, RANK_ERRORS)
RAN = ("train.log", "exit.json", "job.json")  # an attempt that started (a dry run writes none of these)


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Take the run directory's lock or stop with one line; keep the returned file open for the whole run."""
    make_dir(run_dir, "launch.run_dir")  # e.g. under /proc, or a read-only mount that os.access called writable
    fh = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise ConfigError("launch.run_dir", str(run_dir), f"is in use by a running moe-launch ({holder})",
                          "wait for it to end, or pick another launch.run_dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}\n")
    fh.flush()
    return fh


def next_attempt(run_dir: Path) -> int:
    root = run_dir / ATTEMPTS
    numbers = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return max(numbers, default=0) + 1


def archive_attempt(run_dir: Path) -> Path | None:
    """Move the previous attempt's files to attempts/<n>/ when that attempt ran; returns the folder, or None."""
    if not any((run_dir / name).exists() for name in RAN):
        return None
    dest = run_dir / ATTEMPTS / str(next_attempt(run_dir))
    dest.mkdir(parents=True)  # exist_ok=False: an attempt folder is never written twice
    for name in ATTEMPT_FILES:
        src = run_dir / name
        if src.exists():
            os.replace(src, dest / name)
    return dest
