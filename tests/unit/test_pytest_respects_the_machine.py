"""A plain test run as root, without CI=true or MOE_TEST_SLURM=1, never starts the real-Slurm test: nothing is
installed and /etc is left as it was (issue 15)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _etc() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (Path("/etc"), Path("/etc/slurm"), Path("/etc/munge")) if p.exists()}


def test_the_slurm_test_skips_and_touches_nothing_without_ci():
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MOE_TEST_SLURM")}
    before = _etc()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "slurm", "-p", "no:cacheprovider",
                           "tests/e2e/test_slurm_cluster.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "skipped" in proc.stdout and "passed" not in proc.stdout and "failed" not in proc.stdout
    assert _etc() == before
