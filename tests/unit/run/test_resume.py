"""The newest complete checkpoint, skipping a save that was killed, and keep-last-N (launcher/run/resume.py)."""
from __future__ import annotations

from launcher.records.checkpoint_dir import prune
from launcher.run.resume import find_resume


def _ckpt(root, it, complete=True):
    d = root / f"iter_{it:07d}"
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(b"x")
    if complete:
        (d / "metadata.json").write_text("{}")  # written last by Megatron's dist checkpoint save
    return d


def test_no_checkpoint_no_resume(tmp_path):
    assert find_resume(tmp_path / "missing") is None
    _ckpt(tmp_path, 10, complete=False)
    assert find_resume(tmp_path) is None


def test_newest_complete_checkpoint_and_the_tracker(tmp_path):
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 20)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("20")
    point = find_resume(tmp_path)
    assert (point.iteration, point.tracker, point.skipped) == (20, 20, ())


def test_a_killed_save_is_skipped(tmp_path):
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 20, complete=False)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    point = find_resume(tmp_path)
    assert (point.iteration, point.skipped) == (10, ("iter_0000020",))


def test_fsdp_dtensor_checkpoints_count_by_their_dcp_metadata(tmp_path):
    d = _ckpt(tmp_path, 30, complete=False)
    (d / ".metadata").write_bytes(b"m")
    assert find_resume(tmp_path).iteration == 30


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for it in (10, 20, 30, 40):
        _ckpt(tmp_path, it)
    _ckpt(tmp_path, 50, complete=False)  # newer and incomplete: left for a look
    gone = prune(tmp_path, 2)
    assert sorted(p.name for p in gone) == ["iter_0000010", "iter_0000020"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000030", "iter_0000040", "iter_0000050"]
    assert prune(tmp_path, None) == [] and prune(tmp_path, 5) == []
