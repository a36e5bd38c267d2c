"""Rules of the data group, checked before any rank starts: what each data kind needs, the blends, the split,
the files behind every prefix (where this node can see them), the tokenizer, and the vocabulary against the
model's padded vocabulary. One function each, raising ConfigError(field, value, rule, fix)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.plan.vocab import padded, tokenizer_vocab
from launcher.records.indexed import IndexedDataError, parse_blend, read_idx, read_summary

BLEND_FIELDS = ("data.paths", "data.train_paths", "data.valid_paths", "data.test_paths")
PREPARE_FIX = "prepare it with moe-prepare-data (it writes PREFIX.bin, PREFIX.idx and PREFIX.summary.json)"


def _lists(cfg: RunConfig) -> dict[str, list[str]]:
    d = cfg.data
    return {"data.paths": d.paths, "data.train_paths": d.train_paths, "data.valid_paths": d.valid_paths,
            "data.test_paths": d.test_paths}


def _blend(field: str, items: list[str]) -> list[tuple[Optional[float], str]]:
    try:
        return parse_blend(items)
    except IndexedDataError as e:
        raise ConfigError(field, list(items), f"is not a blend: {e}",
                          f"write {field}=[/data/a] or {field}=[0.3,/data/a,0.7,/data/b] (positive weights)") from None


def prefixes(cfg: RunConfig) -> list[tuple[str, str]]:
    """(field, prefix) of every data prefix the config names."""
    return [(f, p) for f, items in _lists(cfg).items() for _, p in _blend(f, items)]


def visible(prefix: str) -> bool:
    """The login node can judge a prefix when its directory exists here (always expected for local runs)."""
    return Path(prefix).expanduser().parent.is_dir()


def check_data(cfg: RunConfig, res: Resolved) -> None:
    """What each data kind needs."""
    d = cfg.data
    per_split = d.train_paths or d.valid_paths or d.test_paths
    if d.kind == "mock" and (d.paths or per_split):
        field = "data.paths" if d.paths else next(f for f, v in _lists(cfg).items() if v)
        raise ConfigError(field, list(_lists(cfg)[field]), "mock data reads no files", "set data=indexed")
    if d.kind == "indexed" and not (d.paths or per_split):
        raise ConfigError("data.paths", [], "indexed data needs at least one .bin/.idx prefix",
                          "set data.paths=[/path/to/prefix] (or data.train_paths=[...]) or data=mock")
    if d.paths and per_split:
        raise ConfigError("data.train_paths", list(d.train_paths or d.valid_paths or d.test_paths),
                          "one blend divided by data.split (data.paths) or one blend per split, not both "
                          "(Megatron: a single data source)", "drop data.paths or the per-split paths")
    if d.kind == "indexed" and per_split and not d.train_paths:
        raise ConfigError("data.train_paths", [], "per-split blends need a training blend",
                          "set data.train_paths=[...]")
    if d.tokenizer_type != "NullTokenizer" and not d.tokenizer_model:
        # Megatron's build_tokenizer would only fail once every rank has started
        raise ConfigError("data.tokenizer_model", None, f"{d.tokenizer_type} needs a tokenizer model",
                          "set data.tokenizer_model (e.g. a Hugging Face id or a path)")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers", d.num_workers, "must be >= 0 (0 loads batches in the training "
                          "process)", "set data.num_workers=2")


def check_blends(cfg: RunConfig, res: Resolved) -> None:
    """Every list parses as Megatron's blend; a prefix named twice in one blend is a typo or a double count."""
    for field, items in _lists(cfg).items():
        names = [p for _, p in _blend(field, items)]
        dup = next((p for p in names if names.count(p) > 1), None)
        if dup:
            raise ConfigError(field, list(items), f"names {dup} twice",
                              "name each prefix once and give it the summed weight")


def _split_parts(text: str) -> list[float]:
    """Megatron's --split: 1 to 3 comma- or slash-separated non-negative weights (parse_and_normalize_split)."""
    words = text.replace("/", ",").split(",")
    parts = [float(w) for w in words]  # ValueError for the caller
    if not 1 <= len(parts) <= 3 or any(not (math.isfinite(p) and p >= 0) for p in parts):
        raise ValueError(text)
    return parts + [0.0] * (3 - len(parts))


def check_split(cfg: RunConfig, res: Resolved) -> None:
    d = cfg.data
    if d.split is None:
        return
    fix = "write train,valid,test weights, e.g. data.split=99,1,0 (or 100,0,0 without evaluation)"
    try:
        train, valid, test = _split_parts(d.split)
    except ValueError:
        raise ConfigError("data.split", d.split, "is not 1-3 non-negative numbers separated by commas",
                          fix) from None
    if train <= 0:
        raise ConfigError("data.split", d.split, "gives training no share of the data", fix)
    if d.kind == "indexed" and d.train_paths:
        raise ConfigError("data.split", d.split, "divides data.paths; per-split blends are not divided "
                          "(Megatron refuses a split beside them)", "drop data.split")
    several = len(prefixes(cfg)) > 1
    if d.kind == "indexed" and several and (valid > 0 or test > 0) and cfg.train.eval_iters == 0:
        # blended_megatron_dataset_builder sizes each split of a blend by the samples asked: eval_iters x
        # batch = 0, a 0-sample BlendedDataset, and MegatronPretrainingSampler asserts "no sample to consume: 0"
        raise ConfigError("data.split", d.split, "gives validation/test a share while train.eval_iters=0: Megatron "
                          "then builds 0-sample blends and stops with 'no sample to consume: 0'",
                          "set data.split=100,0,0 (or leave it unset), or train.eval_iters > 0")


def check_eval_blends(cfg: RunConfig, res: Resolved) -> None:
    for field in ("data.valid_paths", "data.test_paths"):
        items = _lists(cfg)[field]
        if items and cfg.train.eval_iters == 0:
            raise ConfigError(field, list(items), "is read only with evaluation (train.eval_iters=0 asks it for "
                              "0 samples: Megatron's sampler asserts 'no sample to consume: 0')",
                              f"set train.eval_iters > 0 or drop {field}")


def check_data_files(cfg: RunConfig, res: Resolved) -> None:
    """Every visible prefix: .bin and .idx exist, are non-empty and agree (launcher/records/indexed.py reads
    the .idx header). Prefixes whose directory this node cannot see (Slurm, containers) are checked on
    rank 0 before the model is built (recipes/data.py); resolve's notes say which."""
    local = cfg.cluster.executor == "local"
    for field, prefix in prefixes(cfg):
        if not (local or visible(prefix)):
            continue
        if prefix.endswith((".bin", ".idx")):
            raise ConfigError(field, prefix, "is a file name; Megatron wants the prefix without .bin/.idx",
                              f"write {prefix[:-4]}")
        try:
            read_idx(prefix)
        except IndexedDataError as e:
            raise ConfigError(field, prefix, str(e), PREPARE_FIX) from None


def _padded(cfg: RunConfig) -> int:
    """model.vocab_size padded as Megatron pads it (the model's own vocabulary, which the tokenizer must fit)."""
    return padded(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp)


def check_vocab(cfg: RunConfig, res: Resolved) -> None:
    """Token ids index the embedding: an id >= the model's padded vocabulary is the IndexError ranks hit
    after start-up. The tokenizer, and every prefix's data (its moe-prepare-data summary), must fit."""
    if cfg.data.vocab_size is not None and cfg.data.vocab_size <= 0:
        raise ConfigError("data.vocab_size", cfg.data.vocab_size, "must be positive", "leave it unset")
    padded = _padded(cfg)
    fix_model = "set model.vocab_size={} (or use the tokenizer the model was made for)"
    vocab = tokenizer_vocab(cfg)
    if vocab is not None and vocab > padded:
        raise ConfigError("data.tokenizer_model" if cfg.data.tokenizer_model else "data.vocab_size",
                          cfg.data.tokenizer_model or vocab,
                          f"the tokenizer's {vocab} tokens exceed the model's vocabulary (model.vocab_size="
                          f"{cfg.model.vocab_size}, padded to {padded})", fix_model.format(vocab))
    if cfg.data.kind != "indexed":
        return
    for field, prefix in prefixes(cfg):
        summary = read_summary(prefix)
        if summary is None:
            continue
        data_vocab = summary["tokenizer"].get("vocab_size")
        if not isinstance(data_vocab, int):
            continue
        if data_vocab > padded:
            raise ConfigError(field, prefix, f"was tokenized with {data_vocab} tokens, more than the model's "
                              f"vocabulary (model.vocab_size={cfg.model.vocab_size}, padded to {padded})",
                              fix_model.format(data_vocab))
        if vocab is not None and cfg.data.tokenizer_type != "NullTokenizer" and data_vocab != vocab:
            raise ConfigError(field, prefix, f"was tokenized with a {data_vocab}-token vocabulary, but "
                              f"data.tokenizer_model has {vocab}",
                              "use the tokenizer the data was prepared with (its summary.json names it)")


DATA_RULES = (check_data, check_blends, check_split, check_eval_blends, check_data_files, check_vocab)
