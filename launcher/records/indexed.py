"""Megatron's indexed data files (PREFIX.bin / PREFIX.idx) and their moe-prepare-data summary, read
without torch or megatron: the login node checks them before launch (plan/rules/data.py) and rank 0 checks
them on the compute node before the model is built (recipes/data.py). Both may import records; neither
may import the other, so the one reader lives here.

The .idx layout (megatron/core/datasets/indexed_dataset.py, IndexedDatasetBuilder.finalize / _IndexReader):
  9 bytes  b"MMIDIDX\\x00\\x00"
  8 bytes  version, little-endian uint64, == 1
  1 byte   dtype code (DType: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
  8 bytes  sequence count S
  8 bytes  document count D (document_indices has D entries: 0 and the end of every document)
  S x int32 sequence lengths, S x int64 sequence pointers (byte offsets into .bin), D x int64 document indices,
  and S x int8 sequence modes for multimodal data only.
So a sound pair has len(.idx) == 34 + 12 S + 8 D (+ S), and .bin ends where the last sequence ends:
pointer[S-1] + length[S-1] * itemsize == len(.bin) (the builder writes the .bin sequences back to back).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HEADER = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34  # 9 magic + 8 version + 1 dtype + 8 sequence count + 8 document count
ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # DType code -> bytes per token
SUMMARY_SUFFIX = ".summary.json"  # what launcher/tools/prepare_data.py writes beside the pair


class IndexedDataError(ValueError):
    """One sentence saying what is wrong with a prefix's files (the caller adds the field and the fix)."""


@dataclass(frozen=True)
class IdxHeader:
    itemsize: int
    sequences: int
    documents: int
    tokens: int
    """Tokens in .bin according to the index (its last pointer and length)."""


def read_idx(prefix: str) -> IdxHeader:
    """The header of PREFIX.idx, checked against its own size and PREFIX.bin's size."""
    idx, bin_ = Path(f"{prefix}.idx").expanduser(), Path(f"{prefix}.bin").expanduser()
    for p in (bin_, idx):
        if not p.is_file():
            raise IndexedDataError(f"{p} does not exist")
        if p.stat().st_size == 0:
            raise IndexedDataError(f"{p} is empty (Megatron cannot mmap an empty file)")
    size = idx.stat().st_size
    with idx.open("rb") as f:
        head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES or head[:9] != HEADER:
            raise IndexedDataError(f"{idx} is not a Megatron index (no MMIDIDX header)")
        version, code, seqs, docs = struct.unpack("<QBQQ", head[9:])
        if version != 1 or code not in ITEMSIZE:
            raise IndexedDataError(f"{idx} has version {version} and dtype code {code} (Megatron reads version 1, "
                                   f"codes 1-8)")
        if size not in (HEADER_BYTES + 12 * seqs + 8 * docs, HEADER_BYTES + 13 * seqs + 8 * docs):
            raise IndexedDataError(f"{idx} says {seqs} sequences and {docs} documents but has {size} bytes "
                                   f"(expected {HEADER_BYTES + 12 * seqs + 8 * docs}): truncated or not finalized")
        if seqs == 0:
            raise IndexedDataError(f"{idx} holds no sequences")
        f.seek(HEADER_BYTES + 4 * (seqs - 1))
        (last_len,) = struct.unpack("<i", f.read(4))
        f.seek(HEADER_BYTES + 4 * seqs + 8 * (seqs - 1))
        (last_ptr,) = struct.unpack("<q", f.read(8))
    itemsize = ITEMSIZE[code]
    end = last_ptr + last_len * itemsize
    if end != bin_.stat().st_size:
        raise IndexedDataError(f"{bin_} has {bin_.stat().st_size} bytes but {idx} ends its last sequence at byte "
                               f"{end}: the pair does not belong together or .bin is truncated")
    return IdxHeader(itemsize, seqs, docs, end // itemsize)


def read_summary(prefix: str) -> Optional[dict[str, Any]]:
    """PREFIX.summary.json as moe-prepare-data wrote it, or None when there is none or it is not readable
    (data made by another tool has no summary; its vocabulary is then not known here)."""
    path = Path(f"{prefix}{SUMMARY_SUFFIX}").expanduser()
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("tokenizer"), dict) else None


def parse_blend(items: list[str]) -> list[tuple[Optional[float], str]]:
    """Megatron's blend list (get_blend_from_list), one item per argv word: either prefixes only, or weight
    prefix pairs ([0.3, /a, 0.7, /b]). A prefix may hold spaces. Raises IndexedDataError."""
    words = [str(item) for item in items]
    if not words:
        return []

    def number(w: str) -> Optional[float]:
        try:
            return float(w)
        except ValueError:
            return None
    if number(words[0]) is None:  # no weights: every item is a prefix
        if any(number(w) is not None for w in words):
            raise IndexedDataError("mixes weighted and unweighted entries")
        return [(None, w) for w in words]
    if len(words) % 2:
        raise IndexedDataError("a weighted blend alternates weight and prefix, and has an odd number of items")
    out = []
    for w, p in zip(words[0::2], words[1::2]):
        weight = number(w)
        if weight is None or number(p) is not None:
            raise IndexedDataError(f"expected 'weight prefix' pairs, got {w!r} {p!r}")
        if not weight > 0 or weight == float("inf"):
            raise IndexedDataError(f"weight {w} of {p} must be a positive finite number")
        out.append((weight, p))
    return out
