"""Which code a run used: the project's git commit (and whether the tree had local changes).

Written by the launcher into plan.json when the run directory is made (login side, no torch).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional


def _git(workdir: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(workdir), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(workdir: Path) -> dict:
    """{"commit": full sha or None, "short": 8 chars, "dirty": bool or None, "branch": name or None}."""
    commit = _git(workdir, "rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "short": None, "dirty": None, "branch": None}
    status = _git(workdir, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "short": commit[:8], "dirty": bool(status) if status is not None else None,
            "branch": _git(workdir, "rev-parse", "--abbrev-ref", "HEAD")}


def describe(code: Optional[dict]) -> Optional[str]:
    """'moe-recipes 1a2b3c4d' (+ '-dirty'), or None when unknown."""
    if not code or not code.get("short"):
        return None
    return f"moe-recipes {code['short']}" + ("-dirty" if code.get("dirty") else "")
