"""moe-prepare-data: text (JSONL, plain text, Parquet) -> Megatron indexed data (<prefix>.bin/.idx).

  moe-prepare-data --input corpus/ --output-prefix /data/corpus_text_document \\
      --tokenizer-model /models/qwen3-tokenizer [--workers 16]

Writes <prefix>.bin and <prefix>.idx through megatron-core's IndexedDatasetBuilder (one document per
input document, the end-of-document token appended), and <prefix>.summary.json (documents, tokens,
inputs, tokenizer, vocabulary size, eod id, dtype, wall time, workers); read_summary(prefix) reads it.

Documents: a JSONL line's --text-field (default text), a Parquet row's --text-field column, a plain text
line (--text-mode line, the default: streaming) or a whole text file (--text-mode file). Empty
documents are skipped and counted. The output is byte-identical whatever --workers is: workers tokenize
chunks in parallel and the main process writes them back in input order.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from launcher.errors import ConfigError
from launcher.tools import data_sources as src
from launcher.tools import data_tokenizer as tk
from launcher.tools.data_progress import Progress

SUMMARY_SUFFIX = ".summary.json"
SUMMARY_KIND = "moe-recipes indexed data"
SUMMARY_VERSION = 1
PARTIAL = ".partial"  # outputs are written under this suffix and renamed only when complete
IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: keeps every worker busy, bounds memory


class _Parser(argparse.ArgumentParser):
    """argparse's own refusals (a missing flag, a non-integer) in one line too, not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"moe-prepare-data: error: {message}. Fix: see moe-prepare-data --help", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="moe-prepare-data", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--input", nargs="+", required=True, metavar="PATH",
                    help="files or directories (recursive, sorted; files of a known ending)")
    ap.add_argument("--output-prefix", required=True, help="writes PREFIX.bin, PREFIX.idx, PREFIX.summary.json")
    ap.add_argument("--format", default="auto", help="auto (from the ending: .jsonl .json .ndjson .txt .text "
                    ".parquet, .gz for the line formats), jsonl, text or parquet")
    ap.add_argument("--text-field", default="text", help="the JSONL field / Parquet column of the text")
    ap.add_argument("--text-mode", default="line", help="plain text: line (one document per line) or file")
    ap.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", help=", ".join(tk.TOKENIZER_TYPES))
    ap.add_argument("--tokenizer-model", help="HuggingFaceTokenizer: its directory, or a hub id")
    ap.add_argument("--vocab-size", type=int, help="NullTokenizer: the vocabulary size")
    ap.add_argument("--eod-token", help="end-of-document token (default: the tokenizer's eos token; "
                    "NullTokenizer: an id, default vocab_size - 1)")
    ap.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                    help="do not append the end-of-document token")
    ap.add_argument("--workers", type=int, default=_cores(), help="tokenizing processes (default: all cores; "
                    "1: tokenize in this process)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.bin/.idx")
    return ap


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_workers(n: int) -> None:
    if n < 1:
        raise ConfigError("--workers", n, "must be at least 1", f"--workers {_cores()} (the cores here)")


def _check_output(prefix: str, overwrite: bool) -> Path:
    """The prefix's directory exists and is writable; existing outputs are replaced only when asked."""
    out = Path(prefix).expanduser()
    if not out.name or prefix.endswith(("/", os.sep)):
        raise ConfigError("--output-prefix", prefix, "names a directory, not a file prefix",
                          f"--output-prefix {prefix.rstrip('/')}/corpus_text_document")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError("--output-prefix", prefix, f"its directory {parent} does not exist",
                          f"mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("--output-prefix", prefix, f"its directory {parent} is not writable",
                          "pick a writable directory")
    taken = [p for p in (f"{out}.bin", f"{out}.idx") if os.path.exists(p)]
    if taken and not overwrite:
        raise ConfigError("--output-prefix", prefix, f"{taken[0]} exists", "pass --overwrite, or another prefix")
    return out


def _encoded(chunks: Iterable[list[str]], workers: int, init: tuple) -> Iterator[tk.Encoded]:
    """Encoded chunks in input order. With several workers at most IN_FLIGHT_PER_WORKER x workers chunks
    are read ahead (so memory stays bounded whatever the corpus size), and results are taken in
    submission order (so the output does not depend on which worker finishes first)."""
    if workers == 1:
        tk.init_worker(*init)
        yield from map(tk.encode_chunk, chunks)
        return
    import multiprocessing as mp

    # spawn: workers start clean (no copy of a parent that holds transformers' and torch's threads)
    with mp.get_context("spawn").Pool(workers, initializer=tk.init_pool_worker, initargs=init) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(tk.encode_chunk, (chunk,)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _megatron_indexed() -> tuple[Any, Any]:
    """megatron-core's indexed dataset module, imported without its CPU-machine warnings (no Transformer
    Engine, no CUDA): they concern training, not writing .bin/.idx files."""
    import logging
    import warnings

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    return DType, IndexedDatasetBuilder


def _write(builder: Any, enc: tk.Encoded) -> int:
    """Append one chunk's documents to the builder: one add_document per document."""
    offset = 0
    for n in enc.lengths.tolist():
        builder.add_document(enc.tokens[offset:offset + n], [n])
        offset += n
    return offset


def _convert(builder: Any, encoded: Iterable[tk.Encoded], progress: Progress) -> dict[str, int]:
    """Write the encoded chunks as they come (in input order); the running counts."""
    counts = {"documents": 0, "tokens": 0, "text_bytes": 0, "skipped": 0}
    for enc in encoded:
        if enc.error:
            raise ConfigError(*enc.error)
        counts["tokens"] += _write(builder, enc)
        counts["documents"] += len(enc.lengths)
        counts["text_bytes"] += enc.text_bytes
        counts["skipped"] += enc.skipped
        progress.update(counts["documents"], counts["tokens"], counts["text_bytes"])
    return counts


def _remove_partials(out: Path) -> None:
    for ext in (".bin", ".idx", SUMMARY_SUFFIX):
        Path(f"{out}{ext}{PARTIAL}").unlink(missing_ok=True)


def _tokenizer_facts(tok: tk.TokenizerInfo, append_eod: bool) -> dict[str, Any]:
    return {"type": tok.type, "model": tok.model, "source": tok.source, "class": tok.name,
            "vocab_size": tok.vocab_size, "eod_id": tok.eod_id, "eod_token": tok.eod_token,
            "append_eod": append_eod}


def _summary(a: argparse.Namespace, out: Path, files: list[src.InputFile], tok: tk.TokenizerInfo,
             dtype: Any, counts: dict[str, int], wall: float) -> dict[str, Any]:
    wall = max(wall, 1e-9)
    return {
        "kind": SUMMARY_KIND, "version": SUMMARY_VERSION,
        "prefix": str(out.resolve()), "bin": f"{out.resolve()}.bin", "idx": f"{out.resolve()}.idx",
        "documents": counts["documents"], "tokens": counts["tokens"], "text_bytes": counts["text_bytes"],
        "skipped_documents": counts["skipped"],
        "inputs": [{"path": str(Path(f.path).resolve()), "format": f.format, "bytes": f.size} for f in files],
        "text_field": a.text_field, "text_mode": a.text_mode,
        "tokenizer": _tokenizer_facts(tok, a.append_eod), "dtype": dtype.__name__,
        "workers": a.workers, "wall_s": round(wall, 3),
        "documents_per_s": round(counts["documents"] / wall, 1), "tokens_per_s": round(counts["tokens"] / wall, 1),
        "mb_per_s": round(counts["text_bytes"] / 1e6 / wall, 3),
    }


def _check_eod(tok: tk.TokenizerInfo, append_eod: bool) -> None:
    if append_eod and tok.eod_id is None:
        raise ConfigError("--tokenizer-model", tok.model, "the tokenizer has no eos token to end documents with",
                          "name one with --eod-token TOKEN, or pass --no-append-eod")


def prepare(a: argparse.Namespace, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Every check first (one ConfigError line each), then the streaming conversion; the summary dict."""
    _check_workers(a.workers)
    out = _check_output(a.output_prefix, a.overwrite)
    files = src.expand_inputs(a.input, a.format)
    opts = src.ReadOptions(text_field=a.text_field, text_mode=a.text_mode)
    src.preflight(files, opts)
    tok = tk.load_tokenizer(a.tokenizer_type, a.tokenizer_model, a.vocab_size, a.eod_token)
    _check_eod(tok, a.append_eod)
    DType, IndexedDatasetBuilder = _megatron_indexed()
    dtype = DType.optimal_dtype(tok.vocab_size)  # uint16 below 65,500 ids, else int32 (Megatron's rule)
    init = (tok.spec, tok.eod_id if a.append_eod else None, dtype.__name__, tok.vocab_size)
    progress = progress or Progress(sys.stderr)
    skipped = [0]
    start = time.monotonic()
    builder = IndexedDatasetBuilder(f"{out}.bin{PARTIAL}", dtype=dtype)
    try:
        counts = _convert(builder, _encoded(src.chunks(src.documents(files, opts, skipped)), a.workers, init),
                          progress)
        builder.finalize(f"{out}.idx{PARTIAL}")
        counts["skipped"] += skipped[0]
        if counts["documents"] == 0:
            raise ConfigError("--input", " ".join(a.input), "holds no non-empty document",
                              f"check the files and --text-field {a.text_field}")
        summary = _summary(a, out, files, tok, dtype, counts, time.monotonic() - start)
        Path(f"{out}{SUMMARY_SUFFIX}{PARTIAL}").write_text(json.dumps(summary, indent=2) + "\n")
    except BaseException:
        builder.data_file.close()
        _remove_partials(out)
        raise
    # all three complete: only now do they replace what the prefix named before
    for ext in (".bin", ".idx", SUMMARY_SUFFIX):
        os.replace(f"{out}{ext}{PARTIAL}", f"{out}{ext}")
    progress.finish(counts["documents"], counts["tokens"], counts["text_bytes"])
    return summary


def read_summary(prefix: str) -> dict[str, Any]:
    """The summary moe-prepare-data wrote beside PREFIX.bin/.idx (documents, tokens, tokenizer with
    vocab_size and eod_id, dtype, ...), or one ConfigError line when it is missing or not ours."""
    path = Path(f"{prefix}{SUMMARY_SUFFIX}").expanduser()
    if not path.is_file():
        raise ConfigError("data.paths", prefix, f"has no {path.name} beside it",
                          "prepare the data with moe-prepare-data (it writes the summary)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError("data.paths", prefix, f"{path} cannot be read as JSON ({e})",
                          "re-run moe-prepare-data for it") from None
    if not isinstance(summary, dict) or summary.get("kind") != SUMMARY_KIND:
        raise ConfigError("data.paths", prefix, f"{path} is not a moe-prepare-data summary",
                          "re-run moe-prepare-data for it")
    if summary.get("version") != SUMMARY_VERSION:
        raise ConfigError("data.paths", prefix, f"{path} has summary version {summary.get('version')!r}, "
                          f"this launcher reads {SUMMARY_VERSION}", "re-run moe-prepare-data for it")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    try:
        a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or argparse's refusal, already printed in one line (2)
        return int(e.code or 0)
    try:
        s = prepare(a)
    except ConfigError as e:
        print(f"moe-prepare-data: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moe-prepare-data: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    print(f"moe-prepare-data: {s['documents']:,} documents, {s['tokens']:,} tokens "
          f"({s['dtype']}, vocabulary {s['tokenizer']['vocab_size']:,}, eod {s['tokenizer']['eod_id']}) "
          f"-> {s['prefix']}.bin/.idx in {s['wall_s']:.1f} s; summary {s['prefix']}{SUMMARY_SUFFIX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
