"""Tokenizers of moe-prepare-data: loaded once in the main process (vocabulary size, end-of-document id,
every refusal), then rebuilt in each worker from a small picklable spec.

Types, named as Megatron names them (so the summary maps onto data.tokenizer_type / tokenizer_model):
- HuggingFaceTokenizer: a local directory (tokenizer.json, tokenizer_config.json) or a hub id, through
  transformers' AutoTokenizer, the loader Megatron's own HuggingFaceTokenizer uses at training time. Ids
  are what `tokenizer(text).input_ids` gives (special tokens included, as Megatron's text_to_ids does);
  the vocabulary size is len(tokenizer), Megatron's definition; the end of document is the eos token.
- NullTokenizer: Megatron's NullTokenizer; the text is already token ids separated by single spaces.
"""
from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional
from urllib.parse import urlparse

from launcher.errors import ConfigError, closest

TOKENIZER_TYPES = ("HuggingFaceTokenizer", "NullTokenizer")
HUB_TIMEOUT_S = 5.0
PROBE_TEXT = "Hello world.\n  Tokens, numbers 1234 and ünïcödé!"


@dataclass(frozen=True)
class TokenizerInfo:
    type: str                 # one of TOKENIZER_TYPES
    model: Optional[str]      # directory or hub id (HuggingFaceTokenizer), None for NullTokenizer
    source: str               # local, cache, hub, or builtin
    name: str                 # class of the loaded tokenizer
    vocab_size: int
    eod_id: Optional[int]
    eod_token: Optional[str]
    spec: tuple               # what a worker needs to rebuild it (small, picklable)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def _hub_reachable() -> bool:
    """A TCP connection to the hub endpoint within HUB_TIMEOUT_S; transformers would otherwise retry for
    about a minute before failing."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=HUB_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _auto(model: str, **kw: Any):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the refusal below is the one line the user gets
    return AutoTokenizer.from_pretrained(model, **kw)


def _load_local(model: str, path: Path):
    if path.is_file():
        raise ConfigError("--tokenizer-model", model, "is a file; a Hugging Face tokenizer is a directory "
                          "(tokenizer.json, tokenizer_config.json)", f"--tokenizer-model {path.parent}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError("--tokenizer-model", model, "is not a readable directory", "fix its permissions")
    try:
        return _auto(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError... for a bad directory
        raise ConfigError("--tokenizer-model", model, f"could not be loaded as a Hugging Face tokenizer "
                          f"({_first_line(e)})", "point at a directory holding tokenizer.json "
                          "(and tokenizer_config.json naming its eos_token)") from None


def _load_hub(model: str):
    try:
        return _auto(model, local_files_only=True), "cache"
    except Exception:  # noqa: BLE001 - any failure means: not in the local cache
        pass  # not in the local hub cache: try the hub itself
    if not _hub_reachable():
        raise ConfigError("--tokenizer-model", model, "is not a local directory, is not in the Hugging Face "
                          "cache, and the hub cannot be reached from here",
                          f"download it where the hub is reachable (hf download {model} --local-dir DIR) "
                          "and pass --tokenizer-model DIR")
    try:
        return _auto(model), "hub"
    except Exception as e:  # noqa: BLE001 - the hub client raises many types; all mean: not loadable
        raise ConfigError("--tokenizer-model", model, f"could not be loaded from the hub ({_first_line(e)})",
                          "check the id (org/name) and your access to it") from None


def _hf_eod(tok: Any, model: str, eod_token: Optional[str]) -> tuple[Optional[int], Optional[str]]:
    if eod_token is None:
        return tok.eos_token_id, tok.eos_token
    vocab = tok.get_vocab()
    if eod_token not in vocab:
        hint = closest(eod_token, tok.all_special_tokens or vocab)
        raise ConfigError("--eod-token", eod_token, f"is not a token of {model}",
                          f"--eod-token {hint}" if hint else "name one of its special tokens")
    return vocab[eod_token], eod_token


def _hf_spec(tok: Any, model: str) -> tuple:
    """Workers rebuild the fast tokenizer from its JSON (no transformers import, about a second saved per
    worker) when that gives the same ids as the loaded tokenizer; otherwise they load it as it was loaded."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        rebuilt = Tokenizer.from_str(backend.to_str())
        if rebuilt.encode(PROBE_TEXT, add_special_tokens=True).ids == tok(PROBE_TEXT).input_ids:
            return ("hf-json", backend.to_str())
    return ("hf-auto", model)


def _load_huggingface(model: Optional[str], eod_token: Optional[str]) -> TokenizerInfo:
    if not model:
        raise ConfigError("--tokenizer-model", model, "is required with --tokenizer-type HuggingFaceTokenizer",
                          "pass the tokenizer's directory (or a hub id where the hub is reachable)")
    try:
        import transformers  # noqa: F401  (the loader; imported here so its absence is one line)
    except ImportError:
        raise ConfigError("--tokenizer-type", "HuggingFaceTokenizer", "needs transformers, which is not installed",
                          "pip install 'moe-recipes[data]'") from None
    path = Path(model).expanduser()
    if path.exists():
        tok, source = _load_local(model, path), "local"
    elif model.startswith(("/", ".", "~")) or model.count("/") > 1:  # a path, not an org/name id
        raise ConfigError("--tokenizer-model", model, "does not exist",
                          "give the tokenizer's directory (tokenizer.json inside), or a hub id org/name")
    else:
        tok, source = _load_hub(model)
    eod_id, eod_tok = _hf_eod(tok, model, eod_token)
    resolved = str(path.resolve()) if source == "local" else model
    return TokenizerInfo("HuggingFaceTokenizer", resolved, source, type(tok).__name__, len(tok),
                         eod_id, eod_tok, _hf_spec(tok, str(path) if source == "local" else model))


def _load_null(vocab_size: Optional[int], eod_token: Optional[str]) -> TokenizerInfo:
    if vocab_size is None or vocab_size < 2:
        raise ConfigError("--vocab-size", vocab_size, "NullTokenizer needs the vocabulary size (at least 2)",
                          "pass --vocab-size N (the model's model.vocab_size)")
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    eod = None
    if eod_token is not None:
        if not eod_token.isdigit() or int(eod_token) >= vocab_size:
            raise ConfigError("--eod-token", eod_token, f"NullTokenizer's end of document is an id below "
                              f"--vocab-size {vocab_size}", f"--eod-token {vocab_size - 1} (its default)")
        eod = int(eod_token)
    tok = NullTokenizer(vocab_size, eod_id=eod)
    return TokenizerInfo("NullTokenizer", None, "builtin", type(tok).__name__, tok.vocab_size, tok.eod, None,
                         ("null", vocab_size, tok.eod))


def load_tokenizer(tokenizer_type: str, model: Optional[str], vocab_size: Optional[int],
                   eod_token: Optional[str]) -> TokenizerInfo:
    """The tokenizer's facts, or one ConfigError line saying why it cannot be used."""
    if tokenizer_type == "HuggingFaceTokenizer":
        return _load_huggingface(model, eod_token)
    if tokenizer_type == "NullTokenizer":
        return _load_null(vocab_size, eod_token)
    hint = closest(tokenizer_type, TOKENIZER_TYPES)
    raise ConfigError("--tokenizer-type", tokenizer_type, f"is not one of {', '.join(TOKENIZER_TYPES)} "
                      "(Megatron's other types need files or libraries not installed here)",
                      f"--tokenizer-type {hint or 'HuggingFaceTokenizer'}")


# ---- worker side: one tokenizer per process, built once by init_worker ----

class Encoded(NamedTuple):
    tokens: Any        # numpy array of every kept document's ids (+ eod), concatenated, output dtype
    lengths: Any       # numpy int64 array, one length per kept document
    text_bytes: int    # UTF-8 bytes of the chunk's text (the MB/s of the progress line)
    skipped: int       # documents that tokenized to nothing (no eod appended): left out
    error: Optional[tuple[str, str, str, str]]  # (field, value, rule, fix): ConfigError does not pickle


_WORKER: dict[str, Any] = {}


def _encoder(spec: tuple) -> Callable[[list[str]], list[list[int]]]:
    kind = spec[0]
    if kind == "hf-json":
        from tokenizers import Tokenizer

        fast = Tokenizer.from_str(spec[1])
        return lambda texts: [e.ids for e in fast.encode_batch_fast(texts, add_special_tokens=True)]
    if kind == "hf-auto":
        tok = _auto(spec[1])
        return lambda texts: tok(texts).input_ids
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    null = NullTokenizer(spec[1], eod_id=spec[2])
    return lambda texts: [null.text_to_ids(t) for t in texts]


def init_worker(spec: tuple, eod_id: Optional[int], dtype_name: str, vocab_size: int) -> None:
    # one core per worker: the tokenizers library would otherwise start its own thread pool in each
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import numpy as np

    _WORKER.update(encode=_encoder(spec), eod=eod_id, dtype=np.dtype(dtype_name), vocab=vocab_size)


def init_pool_worker(spec: tuple, eod_id: Optional[int], dtype_name: str, vocab_size: int) -> None:
    """init_worker in a pool process, which leaves Ctrl-C to the main process: it stops the pool and
    removes the partial outputs (otherwise every worker prints its own KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(spec, eod_id, dtype_name, vocab_size)


def _ids_error(texts: list[str], e: Exception) -> tuple[str, str, str, str]:
    return ("--input", texts[0][:40] + "...", f"is not token ids separated by single spaces, as "
            f"NullTokenizer reads text ({_first_line(e)})", "use --tokenizer-type HuggingFaceTokenizer for text")


def encode_chunk(texts: list[str]) -> Encoded:
    """Tokenize one chunk in order; ids outside the vocabulary are an error, not a wrap-around."""
    import numpy as np

    try:
        ids = _WORKER["encode"](texts)
    except ValueError as e:  # NullTokenizer: int() of a word
        return Encoded(None, None, 0, 0, _ids_error(texts, e))
    eod = _WORKER["eod"]
    flat: list[int] = []
    lengths: list[int] = []
    for doc in ids:
        if eod is not None:
            doc = doc + [eod]
        if doc:
            flat.extend(doc)
            lengths.append(len(doc))
    arr = np.asarray(flat, dtype=np.int64)
    vocab = _WORKER["vocab"]
    if arr.size and (arr.min() < 0 or arr.max() >= vocab):
        bad = int(arr.max() if arr.max() >= vocab else arr.min())
        return Encoded(None, None, 0, 0, ("--input", str(bad), f"a token id outside the vocabulary "
                                           f"[0, {vocab})", "tokenize with the tokenizer of the vocabulary"))
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return Encoded(arr.astype(_WORKER["dtype"]), np.asarray(lengths, dtype=np.int64), text_bytes,
                   len(ids) - len(lengths), None)
