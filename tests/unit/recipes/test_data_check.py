"""Rank 0's check of the data files before the model is built (recipes/data.py check_files): the paths the
login node could not see (Slurm, containers) are judged on the compute node, in one line."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))
from data_fixture import prepared  # noqa: E402,F401 - the session fixture


def _args(**kw) -> SimpleNamespace:
    base = {"mock_data": False, "data_path": None, "train_data_path": None, "valid_data_path": None,
            "test_data_path": None}
    return SimpleNamespace(**{**base, **kw})


def test_rank0_check_passes_sound_blends_and_names_the_broken_prefix(prepared, tmp_path):  # noqa: F811
    from recipes.data import check_files

    a, b = str(prepared["a"]), str(prepared["b"])
    assert check_files(_args(data_path=["0.6", a, "0.4", b])) is None
    assert check_files(_args(train_data_path=[a], valid_data_path=[b])) is None
    assert check_files(_args(mock_data=True)) is None
    gone = str(tmp_path / "gone_text_document")
    line = check_files(_args(data_path=["0.6", a, "0.4", gone]))
    assert line and gone in line and "does not exist" in line and "Fix:" in line and "\n" not in line
    shutil.copy(f"{a}.idx", tmp_path / "x.idx")
    (tmp_path / "x.bin").write_bytes(b"")
    line = check_files(_args(train_data_path=[str(tmp_path / "x")]))
    assert line and "empty" in line
