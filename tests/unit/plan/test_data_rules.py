"""Data configs on prepared data: one dataset, a weighted blend (the default split works with it), separate
train/valid/test blends, the .idx header reader against Megatron's own reader, paths the login node cannot
see (Slurm), and the vocabulary check's accepting side."""
from __future__ import annotations

import pytest

from conftest import PROBE, make_cfg
from data_fixture import prepared  # noqa: F401 - the session fixture
from launcher.plan.plan import build_plan
from launcher.records.indexed import parse_blend, read_idx

CPU = ["cluster.device=cpu", "model.transformer_impl=local", "precision=fp32", "data=indexed"]


def _plan(overrides: list[str], validate_megatron: bool = True):
    cfg = make_cfg([*CPU, *overrides])
    cfg.launch.megatron_validate = validate_megatron
    return build_plan(cfg, PROBE)


def _after(argv: list[str], flag: str, n: int = 1) -> list[str]:
    i = argv.index(flag)
    return argv[i + 1:i + 1 + n]


def test_idx_header_agrees_with_megatrons_reader(prepared):  # noqa: F811
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for name in ("a", "b", "big"):
        head, ds = read_idx(str(prepared[name])), IndexedDataset(str(prepared[name]))
        assert (head.sequences, head.documents) == (len(ds), len(ds.document_indices))
        assert head.tokens == int(ds.sequence_lengths.sum()) and head.itemsize == ds.index.dtype_size


def test_one_dataset(prepared):  # noqa: F811
    plan = _plan([f"data.paths=[{prepared['a']}]", f"data.tokenizer_model={prepared['tok']}"])
    assert _after(plan.argv, "--data-path") == [str(prepared["a"])]
    assert _after(plan.argv, "--split") == ["100,0,0"]  # no evaluation: no 0-sample validation split
    assert _after(plan.argv, "--tokenizer-model") == [str(prepared["tok"])]


def test_weighted_blend_with_the_default_split(prepared):  # noqa: F811
    plan = _plan([f"data.paths=[0.7,{prepared['a']},0.3,{prepared['b']}]", f"data.tokenizer_model={prepared['tok']}"])
    assert _after(plan.argv, "--data-path", 4) == ["0.7", str(prepared["a"]), "0.3", str(prepared["b"])]
    assert _after(plan.argv, "--split") == ["100,0,0"]
    assert any(n.startswith("data.split=100,0,0") for n in plan.resolved.notes)
    with_eval = _plan([f"data.paths=[0.7,{prepared['a']},0.3,{prepared['b']}]", "train.eval_iters=2",
                       f"data.tokenizer_model={prepared['tok']}"])
    assert _after(with_eval.argv, "--split") == ["99,1,0"]


def test_separate_train_valid_test_blends(prepared):  # noqa: F811
    plan = _plan(["data=splits", f"data.train_paths=[0.5,{prepared['a']},0.5,{prepared['b']}]",
                  f"data.valid_paths=[{prepared['b']}]", f"data.test_paths=[{prepared['a']}]", "train.eval_iters=1",
                  f"data.tokenizer_model={prepared['tok']}"])
    argv = plan.argv
    assert _after(argv, "--train-data-path", 4) == ["0.5", str(prepared["a"]), "0.5", str(prepared["b"])]
    assert _after(argv, "--valid-data-path") == [str(prepared["b"])]
    assert _after(argv, "--test-data-path") == [str(prepared["a"])]
    assert "--split" not in argv and "--data-path" not in argv  # Megatron refuses a split beside them


def test_slurm_paths_the_login_node_cannot_see_are_a_note(prepared):  # noqa: F811
    plan = _plan(["cluster=slurm", "data.paths=[/lustre/not/here/corpus_text_document]",
                  f"data.tokenizer_model={prepared['tok']}"], validate_megatron=False)
    assert any("not visible from this node" in n and "rank 0" in n for n in plan.resolved.notes)


def test_a_visible_missing_prefix_is_refused_on_slurm_too(prepared, tmp_path):  # noqa: F811
    from launcher.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        _plan(["cluster=slurm", f"data.paths=[{tmp_path / 'gone_text_document'}]",
               f"data.tokenizer_model={prepared['tok']}"], validate_megatron=False)


def test_null_tokenizer_data_within_the_model_vocab(prepared):  # noqa: F811
    # 400-token data, NullTokenizer with the tiny model's 512: fits (ids < 512)
    plan = _plan([f"data.paths=[{prepared['a']}]", "data.tokenizer_type=NullTokenizer"])
    assert _after(plan.argv, "--vocab-size") == ["512"]


def test_parse_blend_keeps_prefixes_with_spaces():
    assert parse_blend(["0.7", "/data/my corpus/a", "0.3", "/b"]) == [(0.7, "/data/my corpus/a"), (0.3, "/b")]
    assert parse_blend(["/a", "/b"]) == [(None, "/a"), (None, "/b")]
