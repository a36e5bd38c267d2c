"""A run that asked for a logger which wrote nothing is not `ok` (records/record.py silent_logger)."""
from __future__ import annotations

from pathlib import Path

from launcher.records.record import silent_logger


def test_tensorboard_dir_without_events_is_logger_wrote_nothing(tmp_path: Path):
    config = {"train": {"tensorboard_dir": "tb"}}
    failure = silent_logger(tmp_path, config)
    assert failure is not None and failure.cls == "logger_wrote_nothing"
    assert "train.tensorboard_dir" in failure.summary
    (tmp_path / "tb").mkdir()
    assert silent_logger(tmp_path, config) is not None  # an empty directory is still nothing
    (tmp_path / "tb" / "events.out.tfevents.1.host").write_bytes(b"\x00" * 16)
    assert silent_logger(tmp_path, config) is None


def test_wandb_default_directory_is_under_the_run(tmp_path: Path):
    config = {"train": {"wandb_project": "moe"}}
    assert silent_logger(tmp_path, config).cls == "logger_wrote_nothing"
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-1" / "run-1.wandb").write_bytes(b"x")
    assert silent_logger(tmp_path, config) is None


def test_no_logger_asked_is_fine(tmp_path: Path):
    assert silent_logger(tmp_path, {"train": {}}) is None and silent_logger(tmp_path, None) is None
