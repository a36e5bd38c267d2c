"""Prepared data for the data rules: a BPE tokenizer trained here with `tokenizers` on the README, and two
small datasets made from the README's and the schema's text by moe-prepare-data (one worker)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
EOS = "<|endoftext|>"
TOKENIZER_VOCAB = 400


def train_tokenizer(out: Path, vocab: int = TOKENIZER_VOCAB) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(REPO / "README.md")], trainer)
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "eos_token": EOS}))
    return out


def prepare(text_file: Path, prefix: Path, tok: Path) -> Path:
    from launcher.tools import prepare_data

    rc = prepare_data.main(["--input", str(text_file), "--output-prefix", str(prefix), "--tokenizer-model",
                            str(tok), "--workers", "1"])
    assert rc == 0
    return prefix


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """tok: tokenizer directory (400 tokens); a, b: prefixes (README lines, schema.py lines); big_tok: a
    tokenizer of 600 tokens; big: data made with it."""
    root = tmp_path_factory.mktemp("prepared")
    (root / "data").mkdir()
    tok = train_tokenizer(root / "tok")
    big_tok = train_tokenizer(root / "big_tok", 600)
    out = {"tok": tok, "big_tok": big_tok, "root": root}
    for name, src in (("a", REPO / "README.md"), ("b", REPO / "launcher" / "config" / "schema.py")):
        lines = [line for line in src.read_text().splitlines() if line.strip()]
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
        out[name] = prepare(root / f"{name}.txt", root / "data" / f"{name}_text_document", tok)
    out["big"] = prepare(root / "a.txt", root / "data" / "big_text_document", big_tok)
    return out
