"""recipes/checkpoint.py check_paths: what the ranks check of --load and --save before the model is built."""
from __future__ import annotations

from argparse import Namespace

import pytest

from recipes import checkpoint


def _args(**kw) -> Namespace:
    return Namespace(**{"load": None, "save": None, "ckpt_step": None, **kw})


def test_another_directory_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="train.load=.*holds no Megatron checkpoint.*Fix:"):
        checkpoint.check_paths(_args(load=str(tmp_path / "typo"), save=str(tmp_path / "ckpt")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(checkpoint.CheckpointError, match="holds no Megatron checkpoint"):  # the tracker's iter_ is gone
        checkpoint.check_paths(_args(load=str(tmp_path / "other")))
    (tmp_path / "other" / "iter_0000007").mkdir()
    checkpoint.check_paths(_args(load=str(tmp_path / "other")))


def test_its_own_empty_save_directory_is_a_fresh_start_and_is_created(tmp_path):
    own = tmp_path / "ckpt"
    checkpoint.check_paths(_args(load=str(own), save=str(own) + "/"))
    assert own.is_dir()


def test_a_save_directory_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(checkpoint.CheckpointError, match="train.save=.*cannot be written here.*Fix:"):
        checkpoint.check_paths(_args(save=str(blocker / "ckpt")))
