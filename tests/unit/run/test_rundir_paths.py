"""Directories a run writes are checked before anything starts: one line each, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_cfg
from launcher.errors import ConfigError
from launcher.run.rundir import check_run_dir
from launcher.run.rundir_lock import lock_run_dir


def test_a_run_directory_that_cannot_be_created_is_one_line():
    # os.access calls /proc writable for root, and mkdir then fails: was a FileNotFoundError traceback
    with pytest.raises(ConfigError, match="cannot be created") as e:
        lock_run_dir(Path("/proc/moe-launch-test/run"))
    assert e.value.field == "launch.run_dir" and "Fix:" in str(e.value)


def test_a_local_runs_save_directory_is_checked_like_its_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is a file") as e:
        check_run_dir(tmp_path / "run", make_cfg([f"train.save={blocker}/ckpt"]))
    assert e.value.field == "train.save"
    check_run_dir(tmp_path / "run", make_cfg([f"train.save={tmp_path}/ckpt"]))
    # a Slurm run's save directory lives on the cluster: its ranks check it (recipes/checkpoint.py check_paths)
    check_run_dir(tmp_path / "run", make_cfg(["cluster=slurm", f"train.save={blocker}/ckpt"]))
