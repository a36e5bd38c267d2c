"""The vocabulary the estimate counts (launcher/plan/vocab.py) is the one Megatron builds the embedding with:
model.vocab_size with NullTokenizer, the tokenizer's own with a Hugging Face tokenizer (Megatron ignores
--vocab-size then), padded to make_vocab_size_divisible_by x TP."""
import json
from pathlib import Path

import pytest

from launcher.config.compose import compose
from launcher.plan.estimate_memory import estimate_memory
from launcher.plan.resolve import Resolved
from launcher.plan.vocab import embedding_vocab, padded, padded_vocab

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train([str(REPO / "README.md")], trainers.BpeTrainer(vocab_size=500, special_tokens=["<eos>"],
              show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = tmp_path_factory.mktemp("tok")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "eos_token": "<eos>"}))
    return out


def _cfg(*overrides):
    return compose(["model=qwen3_30b_a3b", "model.num_layers=4", "train=pretrain", *overrides])[1]


def test_padding_is_megatrons():
    assert padded(32768, 128, 1) == 32768 and padded(32769, 128, 1) == 32896 and padded(151936, 128, 2) == 152064


def test_null_tokenizer_counts_the_models_vocabulary():
    cfg = _cfg()
    assert embedding_vocab(cfg) == 151936 and padded_vocab(cfg) == 151936


def test_a_tokenizer_directory_sets_the_embedding(tok_dir):
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(str(tok_dir)))
    cfg = _cfg("data=indexed", f"data.tokenizer_model={tok_dir}", "data.paths=[/x/a_text_document]")
    assert embedding_vocab(cfg) == size < 151936
    assert padded_vocab(cfg) == padded(size, 128, 1)


def test_the_estimate_shrinks_with_the_tokenizers_vocabulary(tok_dir):
    """The issue 14 run: the same layers with a 32,768-token tokenizer came out 1.65x before (151,936 counted)."""
    mock = _cfg("hardware=h200")
    real = _cfg("hardware=h200", "data=indexed", f"data.tokenizer_model={tok_dir}", "data.paths=[/x/a_text_document]")
    res = Resolved(device="cuda", nproc_per_node=1, world_size=1, transformer_impl="transformer_engine",
                   sequence_parallel=False, pipeline_layout=None, gradient_accumulation_fusion=False)
    a, b = (estimate_memory(c, res) for c in (mock, real))
    # embedding + output layer, BF16 weights + FP32 grads/params/moments on one GPU: > 2 GiB fewer
    assert a.peak_after(5) - b.peak_after(5) > 2 * 2**30


def test_a_tokenizer_not_on_this_machine_falls_back_to_data_vocab_size():
    cfg = _cfg("data=indexed", "data.tokenizer_model=/nowhere/tok", "data.paths=[/x/a_text_document]",
               "data.vocab_size=32768")
    assert embedding_vocab(cfg) == 32768
