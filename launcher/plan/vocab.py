"""The vocabulary Megatron builds the embedding and output layer with.

With NullTokenizer (mock data, or prepared data without a tokenizer) it is --vocab-size, i.e. model.vocab_size.
With any other tokenizer Megatron ignores --vocab-size: build_tokenizer sets args.padded_vocab_size from
tokenizer.vocab_size (megatron/core/tokenizers/utils/build_tokenizer.py), and gpt_config_from_args builds the model
with it (measured: the issue 14 run, Qwen3-30B-A3B layers with a 32,768-token tokenizer, had a 32,768-row
embedding, not model.vocab_size's 151,936). Both are then padded to a multiple of make_vocab_size_divisible_by x TP.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError


def padded(vocab: int, divisible_by: int, tp: int) -> int:
    """Megatron's vocab_size_with_padding: up to a multiple of make_vocab_size_divisible_by x TP."""
    multiple = divisible_by * tp
    return math.ceil(vocab / multiple) * multiple


@functools.lru_cache(maxsize=16)
def _hf_vocab(path: str) -> int:
    """len(AutoTokenizer) of a local directory (Megatron's HuggingFaceTokenizer.vocab_size); loaded once per path
    (the planner estimates thousands of layouts of one config)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(path))


def tokenizer_vocab(cfg: RunConfig) -> Optional[int]:
    """The tokenizer's vocabulary where this node can load it: a local Hugging Face directory (transformers,
    imported here only), data.vocab_size, or None (a hub id, or Megatron's other types)."""
    d = cfg.data
    if d.tokenizer_type == "NullTokenizer":
        return d.vocab_size or cfg.model.vocab_size  # Megatron's NullTokenizer takes --vocab-size
    if d.tokenizer_type != "HuggingFaceTokenizer" or not d.tokenizer_model:
        return d.vocab_size
    path = Path(d.tokenizer_model).expanduser()
    if not path.is_dir():
        if path.exists() or str(d.tokenizer_model).startswith(("/", ".", "~")):
            raise ConfigError("data.tokenizer_model", d.tokenizer_model, "is not a tokenizer directory",
                              "give the directory holding tokenizer.json (or a hub id)")
        return d.vocab_size  # a hub id: loaded by the ranks
    try:
        import transformers  # noqa: F401  (its absence is one line)
    except ImportError:
        raise ConfigError("data.tokenizer_model", d.tokenizer_model, "loading a Hugging Face tokenizer needs "
                          "transformers", "pip install -e '.[data]'") from None
    try:
        size = _hf_vocab(str(path.resolve()))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("data.tokenizer_model", d.tokenizer_model, f"does not load ({first})",
                          "give a directory AutoTokenizer.from_pretrained loads") from None
    if d.vocab_size is not None and d.vocab_size != size:
        raise ConfigError("data.vocab_size", d.vocab_size, f"the tokenizer in {path} has {size} tokens",
                          f"set data.vocab_size={size} or leave it unset")
    return size


def embedding_vocab(cfg: RunConfig) -> int:
    """The unpadded vocabulary of the model Megatron will build: model.vocab_size with NullTokenizer, else the
    tokenizer's (data.vocab_size where it cannot be loaded here, e.g. a recorded run's tokenizer on another
    machine), else model.vocab_size (a hub id: the ranks load it)."""
    if cfg.data.tokenizer_type == "NullTokenizer":
        return cfg.model.vocab_size
    try:
        return tokenizer_vocab(cfg) or cfg.model.vocab_size
    except ConfigError:  # the rules say so before any estimate of a launch; an estimate falls back
        return cfg.data.vocab_size or cfg.model.vocab_size


def tokenizer_rows(cfg: RunConfig, tp: int) -> int:
    """The embedding rows at TP `tp` of the tokenizer's vocabulary where this node loads it, else model.vocab_size;
    a tokenizer that does not load is the ConfigError tokenizer_vocab raises (the rules' answer, not a fallback)."""
    return padded(tokenizer_vocab(cfg) or cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, tp)


def check_rows(cfg: RunConfig, rows: int, where: str) -> None:
    """A checkpoint's embedding of `rows` rows loads only into the same rows: Megatron sizes the embedding from its
    tokenizer, padded to a multiple of make_vocab_size_divisible_by x TP (so a resume at another TP can move it)."""
    ours = tokenizer_rows(cfg, cfg.parallel.tp)
    if ours != rows:
        per_tp = (rows & -rows) // cfg.parallel.tp  # largest power of two dividing the rows, over TP
        fix = (f"set model.make_vocab_size_divisible_by={per_tp}" if per_tp >= 1
               else "use a TP size that divides the vocabulary")
        raise ConfigError("model.make_vocab_size_divisible_by", cfg.model.make_vocab_size_divisible_by,
                          f"pads the vocabulary to {ours} rows at TP {cfg.parallel.tp}; {where} has {rows}", fix)


def padded_vocab(cfg: RunConfig) -> int:
    """The embedding's rows: embedding_vocab padded as Megatron pads it."""
    return padded(embedding_vocab(cfg), cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)
