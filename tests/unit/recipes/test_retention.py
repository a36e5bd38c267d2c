"""Keep-last-N during a run (recipes/retention.py): rank 0's watcher prunes when the tracker moves, never the
newest N complete checkpoints nor a save still being written; off unless MOE_KEEP_LAST is set and the run saves."""
from __future__ import annotations

import time
from pathlib import Path

from recipes import retention


def _save(ckpt: Path, it: int, complete: bool = True) -> None:
    d = ckpt / f"iter_{it:07d}"
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(b"x" * 16)
    if complete:
        (d / "metadata.json").write_text("{}")
        (ckpt / "latest_checkpointed_iteration.txt").write_text(str(it))


def _names(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.glob("iter_*"))


def _until(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_watcher_prunes_as_saves_complete(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, 10)
    _save(ckpt, 20)
    monkeypatch.setenv("MOE_KEEP_LAST", "2")
    monkeypatch.setenv("MOE_KEEP_LAST_POLL_S", "0.02")
    stop = retention.start(str(ckpt), rank=0)
    try:
        _save(ckpt, 30)
        assert _until(lambda: _names(ckpt) == ["iter_0000020", "iter_0000030"])
        _save(ckpt, 40, complete=False)  # being written: neither counted nor touched
        time.sleep(0.2)
        assert _names(ckpt) == ["iter_0000020", "iter_0000030", "iter_0000040"]
        (ckpt / "iter_0000040" / "metadata.json").write_text("{}")
        (ckpt / "latest_checkpointed_iteration.txt").write_text("40")
        assert _until(lambda: _names(ckpt) == ["iter_0000030", "iter_0000040"])
    finally:
        stop.set()
    out = capsys.readouterr().out
    assert "recipes.retention: removed iter_0000010" in out and "train.checkpoint.keep_last=2" in out


def test_off_without_the_variable_a_save_directory_or_rank_0(tmp_path, monkeypatch):
    monkeypatch.delenv("MOE_KEEP_LAST", raising=False)
    assert retention.start(str(tmp_path), rank=0) is None
    monkeypatch.setenv("MOE_KEEP_LAST", "2")
    assert retention.start(None, rank=0) is None
    assert retention.start(str(tmp_path), rank=1) is None


def test_prune_once_keeps_the_newest_complete(tmp_path, capsys):
    for it in (5, 10, 15):
        _save(tmp_path, it)
    assert retention.prune_once(tmp_path, 1) == ["iter_0000005", "iter_0000010"]
    assert _names(tmp_path) == ["iter_0000015"] and retention.prune_once(tmp_path, 1) == []
