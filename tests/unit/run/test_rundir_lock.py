"""One launch per run directory, every attempt kept (launcher/run/rundir_lock.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.errors import ConfigError
from launcher.run.rundir_lock import archive_attempt, lock_run_dir


def test_a_second_launch_into_a_directory_in_use_is_refused(tmp_path):
    held = lock_run_dir(tmp_path / "run")
    try:
        with pytest.raises(ConfigError) as e:
            lock_run_dir(tmp_path / "run")  # flock: a second open file description conflicts, even here
        assert e.value.field == "launch.run_dir" and "in use" in str(e.value) and "\n" not in str(e.value)
    finally:
        held.close()
    lock_run_dir(tmp_path / "run").close()  # free again once the holder closed it


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (f"from launcher.run.rundir_lock import lock_run_dir; import os, signal; lock_run_dir(__import__('pathlib')"
            f".Path({str(tmp_path / 'run')!r})); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    lock_run_dir(tmp_path / "run").close()  # the kernel dropped the dead process's lock


def _attempt(run_dir, text):
    for name in ("train.log", "exit.json", "plan.json", "record.json"):
        (run_dir / name).write_text(f"{text} {name}")


def test_each_relaunch_moves_the_previous_attempt_to_its_own_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").mkdir()
    _attempt(run_dir, "first")
    (run_dir / "rank_errors" / "0").mkdir(parents=True)  # a Slurm attempt's per-rank error files
    (run_dir / "rank_errors" / "0" / "rank_1.json").write_text("{}")
    assert archive_attempt(run_dir) == run_dir / "attempts" / "1"
    assert (run_dir / "attempts" / "1" / "rank_errors" / "0" / "rank_1.json").exists()
    assert not (run_dir / "rank_errors").exists()  # the next attempt's record reads only its own
    _attempt(run_dir, "second")
    assert archive_attempt(run_dir) == run_dir / "attempts" / "2"
    assert (run_dir / "attempts" / "1" / "train.log").read_text() == "first train.log"
    assert (run_dir / "attempts" / "2" / "exit.json").read_text() == "second exit.json"
    assert not (run_dir / "train.log").exists() and (run_dir / "checkpoints").is_dir()  # checkpoints stay


def test_a_directory_that_never_ran_is_not_archived(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text("{}")  # a dry run's files: nothing ran
    assert archive_attempt(run_dir) is None and (run_dir / "plan.json").exists()
